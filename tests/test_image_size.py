"""``edgetl train --image-size``: the size flows through config.json to export (file input shape),
predict, bench and MediaPipe, with no other flag; sizes outside a backbone's range are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_image
from edgetl.cli import main
from edgetl.errors import UsageError

CLI_FAST = ["--backbone", "tiny_cnn", "--weights", "none", "--lr", "0.03", "--batch-size", "16", "--quiet",
            "--strategy", "feature-extraction", "--epochs", "4"]


def test_spec_at_size():
    from edgetl.models import get_spec
    from edgetl.models.weights import keras_weights_filename

    lite = get_spec("efficientnet_lite0")
    small = lite.at_size(160)
    assert small.input_size == (160, 160) and lite.input_size == (224, 224)
    assert small.preprocessing.mean == lite.preprocessing.mean and small.name == lite.name
    assert lite.at_size((192, 160)).input_size == (192, 160) and lite.at_size(None) is lite
    with pytest.raises(UsageError, match="outside what efficientnet_lite0 supports"):
        lite.at_size(64)
    # MobileNetV2 starts from the Keras weights trained nearest to the size asked for
    mnv2 = get_spec("mobilenet_v2")
    assert keras_weights_filename(mnv2.at_size(150)).endswith("_1.0_160_no_top.h5")
    assert keras_weights_filename(mnv2.at_size(320)).endswith("_1.0_224_no_top.h5")


def test_image_size_flows_to_export_predict_bench(image_folder, tmp_path, capsys):
    run = tmp_path / "run48"
    assert main(["train", str(image_folder), "--out", str(run), "--image-size", "48", *CLI_FAST]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preprocessing"]["input_size"] == [48, 48] and cfg["train_config"]["image_size"] == [48, 48]
    import keras

    assert keras.saving.load_model(run / "model.keras", compile=False).input_shape[1:3] == (48, 48)

    assert main(["export", str(run), "--formats", "tflite_fp32,tflite_int8,onnx_fp32", "--calib-samples", "8",
                 "--no-quant-report", "--no-doctor"]) == 0
    from ai_edge_litert.interpreter import Interpreter

    for name in ("tiny_cnn_fp32.tflite", "tiny_cnn_int8.tflite"):
        it = Interpreter(model_path=str(run / "export" / name))
        assert list(it.get_input_details()[0]["shape"]) == [1, 48, 48, 3], name
    from edgetl.runtime.loader import runner_for

    onnx = runner_for(run / "export" / "tiny_cnn_fp32.onnx")
    assert tuple(onnx.preprocessing.input_size) == (48, 48)
    capsys.readouterr()

    img = tmp_path / "a.png"
    make_image(0, 90, seed=7).save(img)  # any size: predict resizes to the run's 48 px
    assert main(["predict", str(run / "export" / "tiny_cnn_int8.tflite"), str(img), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["labels"][0] in ("alpha", "beta")

    assert main(["bench", str(run), "--runtimes", "tensorflow,litert,onnxruntime", "--threads", "1", "--min-runs", "3",
                 "--min-time", "0", "--warmup-runs", "1", "--warmup-time", "0", "--json", "--out", str(tmp_path / "b")]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows and all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    assert all(r["agreement"] is not None for r in rows)


def test_mediapipe_classifies_with_a_resized_model(image_folder, tmp_path):
    pytest.importorskip("mediapipe")
    try:
        import mediapipe as mp
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"mediapipe tasks not importable: {exc}")
    run = tmp_path / "run40"
    assert main(["train", str(image_folder), "--out", str(run), "--image-size", "40", *CLI_FAST]) == 0
    assert main(["export", str(run), "--formats", "tflite_int8", "--calib-samples", "8", "--no-quant-report",
                 "--no-doctor"]) == 0
    path = run / "export" / "tiny_cnn_int8.tflite"
    opts = vision.ImageClassifierOptions(base_options=mp_tasks.BaseOptions(model_asset_path=str(path)), max_results=2)
    with vision.ImageClassifier.create_from_options(opts) as clf:
        pix = np.ascontiguousarray(np.asarray(make_image(1, 64, seed=3).convert("RGB")))
        cats = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pix)).classifications[0].categories
    assert {c.category_name for c in cats} == {"alpha", "beta"}


@pytest.mark.parametrize("arg,msg", [("8", "outside what tiny_cnn supports (16-256 px per side)"),
                                     ("abc", "--image-size must be N or HxW"),
                                     ("32x32x3", "--image-size must be N or HxW")])
def test_bad_image_size_is_one_line(image_folder, tmp_path, capsys, arg, msg):
    code = main(["train", str(image_folder), "--out", str(tmp_path / "r"), "--image-size", arg, *CLI_FAST])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
