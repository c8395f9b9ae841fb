"""The named resize implementations (preprocess.resize_array) against OpenCV and MediaPipe itself, and
the ``--resize`` run setting flowing from train to config.json, the exported file and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgetl.errors import EdgetlError
from edgetl.preprocess import RESIZES, Preprocessing, prepare, resize_array

# (source h, w) -> (tensor H, W): downscale by odd factors, upscale, tall/wide, equal size
CASES = [((240, 320), (24, 17)), ((37, 53), (24, 17)), ((10, 13), (24, 17)), ((300, 7), (24, 17)), ((24, 17), (24, 17))]


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    """Random pixels: any sub-pixel error in the sampling position shows (a 1/32 px shift moves a value by up to 8)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like smooth image with an edge, gray content in one channel pattern."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    g = 128 + 100 * np.sin(xx / max(w, 1) * 6 + rng.uniform(0, 3)) * np.cos(yy / max(h, 1) * 4)
    g[: h // 3] = 30
    return np.clip(np.stack([g, g * 0.8, 255 - g], -1), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- against OpenCV


def test_mediapipe_resize_is_opencv_fixed_point_remap():
    """OpenCV's fixed-point bilinear: the 1/32-pixel maps (CV_16SC2) of a corner-to-corner stretch."""
    cv2 = pytest.importorskip("cv2")
    for (h, w), (oh, ow) in CASES + [((1000, 750), (224, 224)), ((5, 300), (224, 224))]:
        src = _noise(h, w, h * w)
        mx, my = np.meshgrid(np.arange(ow) * (w / ow), np.arange(oh) * (h / oh))
        m1, m2 = cv2.convertMaps(mx.astype(np.float32), my.astype(np.float32), cv2.CV_16SC2)
        ref = cv2.remap(src, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        np.testing.assert_array_equal(resize_array(src, (oh, ow), "mediapipe"), ref, err_msg=str((h, w, oh, ow)))


def test_gpu_resize_is_half_pixel_bilinear_without_antialias():
    cv2 = pytest.importorskip("cv2")
    for (h, w), (oh, ow) in CASES:
        src = _smooth(h, w, 1)
        ref = cv2.resize(src, (ow, oh), interpolation=cv2.INTER_LINEAR)  # half-pixel, 11-bit fixed point
        assert np.abs(resize_array(src, (oh, ow), "gpu").astype(int) - ref).max() <= 1, (h, w)
    # an exact 2x downscale with half-pixel centres is the mean of each 2x2 block (no antialias needed)
    src = _noise(8, 8, 3)
    want = src.reshape(4, 2, 4, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(resize_array(src, (4, 4), "gpu") - want).max() <= 0.5


def test_pillow_resize_is_pillow_bilinear_and_names_are_checked():
    src = _noise(37, 53, 4)
    want = np.asarray(Image.fromarray(src).resize((17, 24), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resize_array(src, (24, 17), "pillow"), want)
    outs = {m: resize_array(src, (24, 17), m) for m in RESIZES}
    assert not np.array_equal(outs["mediapipe"], outs["gpu"]) and not np.array_equal(outs["mediapipe"], outs["pillow"])
    with pytest.raises(EdgetlError, match="unknown resize"):
        resize_array(src, (24, 17), "lanczos")


def test_preprocessing_resize_names(tmp_path):
    """prepare() resizes with the file's named resize; a file without the field keeps Pillow."""
    src = _smooth(90, 120, 5)
    path = tmp_path / "im.png"
    Image.fromarray(src).save(path)
    for name in RESIZES:
        pre = Preprocessing(input_size=(24, 17), resize=name)
        np.testing.assert_array_equal(prepare(path, pre), resize_array(src, (24, 17), name))
        assert Preprocessing.from_dict(pre.to_dict()).resize == name
    old = Preprocessing(input_size=(24, 17)).to_dict()
    old.pop("resize")
    np.testing.assert_array_equal(prepare(path, Preprocessing.from_dict(old)), resize_array(src, (24, 17), "pillow"))


# --------------------------------------------------------------------------- against MediaPipe itself


def pixel_echo_tflite(h: int, w: int) -> bytes:
    """A float-input .tflite "classifier" whose h*w*3 output scores are its input pixels (one RESHAPE),
    with edgetl's metadata (mean 0 / std 1): MediaPipe's ImageClassifier returns the tensor it fed."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as S

    from edgetl.export.metadata import ModelFacts, populate_tflite

    n = h * w * 3

    def tensor(name, shape, ttype, buf):
        t = S.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), ttype, buf
        return t

    code = S.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = S.BuiltinOperator.RESHAPE
    code.version = 1
    shape_buf = S.BufferT()
    shape_buf.data = list(np.array([1, n], np.int32).tobytes())
    op = S.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType = S.BuiltinOptions.ReshapeOptions
    op.builtinOptions = S.ReshapeOptionsT()
    op.builtinOptions.newShape = [1, n]
    sg = S.SubGraphT()
    sg.tensors = [tensor("image", [1, h, w, 3], S.TensorType.FLOAT32, 0), tensor("shape", [2], S.TensorType.INT32, 1),
                  tensor("probability", [1, n], S.TensorType.FLOAT32, 0)]
    sg.inputs, sg.outputs, sg.operators, sg.name = [0], [2], [op], "main"
    model = S.ModelT()
    model.version, model.description = 3, "pixel echo"
    model.operatorCodes, model.buffers, model.subgraphs = [code], [S.BufferT(), shape_buf], [sg]
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), b"TFL3")
    pre = Preprocessing(input_size=(h, w), mean=(0.0,) * 3, std=(1.0,) * 3)
    facts = ModelFacts(labels=[str(i) for i in range(n)], preprocessing=pre.to_dict(), backbone="echo",
                       precision="fp32", format="tflite_fp32")
    return populate_tflite(bytes(b.Output()), facts)[0]


def _mediapipe_vision():
    pytest.importorskip("mediapipe")
    try:
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"mediapipe tasks not importable: {exc}")
    return mp_tasks, vision


def test_mediapipe_resize_matches_mediapipe_output_pixels(tmp_path):
    """The pixels MediaPipe Tasks' ImageClassifier feeds a model are the ``mediapipe`` resize's (<= 1 grey level)."""
    import mediapipe as mp

    mp_tasks, vision = _mediapipe_vision()
    oh, ow = 24, 17
    model = tmp_path / "echo.tflite"
    model.write_bytes(pixel_echo_tflite(oh, ow))
    opts = vision.ImageClassifierOptions(base_options=mp_tasks.BaseOptions(model_asset_path=str(model)), max_results=-1)
    worst = {m: 0 for m in RESIZES}
    with vision.ImageClassifier.create_from_options(opts) as clf:
        for i, ((h, w), _) in enumerate(CASES):
            for src in (_noise(h, w, 10 + i), _smooth(h, w, 20 + i)):
                cats = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(src))).classifications[0].categories
                assert len(cats) == oh * ow * 3
                fed = np.zeros(oh * ow * 3)
                for c in cats:
                    fed[c.index] = c.score
                fed = fed.reshape(oh, ow, 3)
                for m in RESIZES:
                    worst[m] = max(worst[m], float(np.abs(resize_array(src, (oh, ow), m).astype(np.float64) - fed).max()))
    assert worst["mediapipe"] <= 1.0, worst
    # the check can fail: the other resizes are far from what MediaPipe feeds
    assert worst["gpu"] > 8 and worst["pillow"] > 8, worst


# --------------------------------------------------------------------------- the run setting


def test_train_resize_flows_to_config_export_and_predict(image_folder, tmp_path, capsys):
    from edgetl.cli import main
    from edgetl.export.metadata import read_tflite_metadata
    from edgetl.predict import open_runner

    run = tmp_path / "run"
    assert main(["train", str(image_folder), "--strategy", "feature-extraction", "--out", str(run), "--epochs", "2",
                 "--backbone", "tiny_cnn", "--weights", "none", "--augment-views", "0", "--resize", "gpu", "--quiet"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preprocessing"]["resize"] == "gpu" and cfg["train_config"]["resize"] == "gpu"
    assert main(["export", str(run), "--formats", "tflite_fp32", "--no-doctor"]) == 0
    path = next((run / "export").glob("*_fp32.tflite"))
    assert read_tflite_metadata(path).edgetl["preprocessing"]["resize"] == "gpu"
    assert open_runner(str(path)).preprocessing.resize == "gpu"
    assert main(["train", str(image_folder), "--out", str(tmp_path / "bad"), "--resize", "lanczos", "--quiet"]) == 2
    assert "--resize must be one of mediapipe, gpu, pillow" in capsys.readouterr().err


def test_default_resize_is_mediapipe():
    from edgetl.config import TrainConfig

    assert TrainConfig(data_dir="x").resize == "mediapipe"
    assert TrainConfig.from_dict({"data_dir": "x"}).resize == "pillow"  # a run saved before the setting


def test_grayscale_and_transparent_images_through_predict(tiny_run, tmp_path):
    """A 1-channel (L), LA, RGBA or palette image is converted to RGB as the README tells app authors to
    (gray copied to R, G, B; transparency composited on white): the same top-k as that RGB file."""
    from edgetl.predict import predict_files

    gray = Image.fromarray(_smooth(40, 40, 7)[..., 0], "L")
    rgba = Image.fromarray(_smooth(40, 40, 8)).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 40).astype(np.uint8), (40, 1))))
    cases = {"gray.png": (gray, gray.convert("RGB")), "la.png": (gray.convert("LA"), gray.convert("RGB")),
             "pal.png": (gray.convert("P"), gray.convert("P").convert("RGB"))}
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    cases["rgba.png"] = (rgba, Image.alpha_composite(white, rgba).convert("RGB"))
    for name, (im, rgb) in cases.items():
        im.save(tmp_path / name)
        rgb.save(tmp_path / f"rgb_{name}")
    res = {r.file.split("/")[-1]: r for r in predict_files(str(tiny_run), [tmp_path], k=2)}
    assert len(res) == 8
    for name in cases:
        assert res[name].labels == res[f"rgb_{name}"].labels, name
        np.testing.assert_allclose(res[name].scores, res[f"rgb_{name}"].scores, atol=1e-6, err_msg=name)
    assert Image.open(tmp_path / "gray.png").mode == "L"


def test_resize_variants_draw_every_client_and_repeat(tmp_path):
    from edgetl.data import resize_views
    from edgetl.preprocess import resize_variant

    src = _smooth(90, 120, 9)
    outs = [resize_variant(src, (24, 17), np.random.default_rng(s)) for s in range(24)]
    assert all(o.shape == (24, 17, 3) and o.dtype == np.uint8 for o in outs)
    plain = {m: resize_array(src, (24, 17), m) for m in RESIZES}
    assert len({o.tobytes() for o in outs}) > 12  # methods x crops: many different views
    assert np.array_equal(resize_variant(src, (24, 17), np.random.default_rng(3)), outs[3])
    # no jitter: exactly one of the three clients' resizes, and all three are drawn
    drawn = {next(m for m in RESIZES if np.array_equal(resize_variant(src, (24, 17), np.random.default_rng(s), 0.0), plain[m]))
             for s in range(24)}
    assert drawn == set(RESIZES)
    paths = []
    for i in range(3):
        Image.fromarray(_smooth(60 + i, 80, i)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    pre = Preprocessing(input_size=(24, 17))
    a, b, c = (resize_views(paths, pre, seed=0, view=v, workers=2) for v in (1, 1, 2))
    assert a.shape == (3, 24, 17, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
