"""Metadata in exported models: TFLite Model Metadata (parsed with MediaPipe's schema) plus the
packed zip, ONNX metadata_props, and MediaPipe Tasks' ImageClassifier reading our labels."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image

FORMATS = ("tflite_fp32", "tflite_int8", "onnx_fp32", "onnx_int8")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    from edgetl.export.api import ExportConfig, export_run

    res = export_run(tiny_run, ExportConfig(formats=FORMATS, out_dir=str(tmp_path_factory.mktemp("meta")), doctor=False))
    assert not res.failed, [a.error for a in res.failed]
    return res


def _mediapipe_schema():
    return pytest.importorskip("mediapipe.tasks.metadata.metadata_schema_py_generated")


@pytest.mark.parametrize("fmt,io_type", [("tflite_fp32", "float32"), ("tflite_int8", "uint8")])
def test_tflite_metadata_flatbuffer(exported, fmt, io_type):
    mfb = _mediapipe_schema()
    from edgetl.export.metadata import read_tflite_metadata

    path = exported.artifact(fmt).path
    md = read_tflite_metadata(path)
    meta = md.metadata
    assert meta is not None
    assert meta.name.decode() == f"edgetl tiny_cnn {exported.artifact(fmt).precision}"
    assert meta.version.decode() and meta.minParserVersion.decode() == "1.0.0"
    (sub,) = meta.subgraphMetadata
    (inp,) = sub.inputTensorMetadata
    assert inp.content.contentPropertiesType == mfb.ContentProperties.ImageProperties
    assert inp.content.contentProperties.colorSpace == mfb.ColorSpaceType.RGB
    (norm,) = inp.processUnits
    assert norm.optionsType == mfb.ProcessUnitOptions.NormalizationOptions
    assert list(norm.options.mean) == [0.0] * 3 and list(norm.options.std) == [1.0] * 3
    assert list(inp.stats.min) == [0.0] and list(inp.stats.max) == [255.0]
    (out,) = sub.outputTensorMetadata
    (labels_file,) = out.associatedFiles
    assert labels_file.name.decode() == "labels.txt"
    assert labels_file.type == mfb.AssociatedFileType.TENSOR_AXIS_LABELS
    assert list(out.stats.max) == [1.0]
    # the packed files are a plain zip appended to the model
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == {"labels.txt", "edgetl.json"}
        assert zf.read("labels.txt").decode().split() == ["alpha", "beta"]
        facts = json.loads(zf.read("edgetl.json"))
    assert facts["labels"] == ["alpha", "beta"] and facts["backbone"] == "tiny_cnn"
    assert facts["io_type"] == io_type and facts["input"].startswith(io_type + " RGB pixels 0-255 NHWC")
    assert facts["preprocessing"]["input_size"] == [32, 32] and facts["preprocessing"]["normalization_in_graph"]
    assert md.labels == ["alpha", "beta"] and md.edgetl == facts


def test_tflite_with_metadata_still_runs_in_litert(exported):
    from edgetl.export.verify import run_tflite

    data = Path(exported.artifact("tflite_int8").path).read_bytes()
    probs = run_tflite(data, np.zeros((2, 32, 32, 3), np.uint8))
    assert probs.shape == (2, 2)


def test_populate_replaces_existing_metadata():
    """Populating twice keeps one TFLITE_METADATA entry (re-export over an old file)."""
    _mediapipe_schema()
    from edgetl.export.metadata import METADATA_FIELD_NAME, ModelFacts, _set_model_metadata, _tflite_schema

    import tensorflow as tf

    m = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    raw = tf.lite.TFLiteConverter.from_keras_model(m).convert()
    once = _set_model_metadata(raw, METADATA_FIELD_NAME, b"abc")
    twice = _set_model_metadata(once, METADATA_FIELD_NAME, b"defg")
    schema = _tflite_schema()
    model = schema.Model.GetRootAsModel(twice, 0)
    names = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    assert names.count(METADATA_FIELD_NAME) == 1
    _ = ModelFacts


@pytest.mark.parametrize("fmt,precision", [("onnx_fp32", "fp32"), ("onnx_int8", "int8")])
def test_onnx_metadata_props(exported, fmt, precision):
    import onnx

    from edgetl.export.metadata import read_onnx_metadata

    path = exported.artifact(fmt).path
    model = onnx.load(path)
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["edgetl.labels"]) == ["alpha", "beta"]
    pre = json.loads(props["edgetl.preprocessing"])
    assert pre["input_size"] == [32, 32] and pre["mean"] == [127.5] * 3
    assert props["edgetl.backbone"] == "tiny_cnn"
    assert props["edgetl.input"] == "float32 RGB pixels 0-255 NHWC"
    assert props["edgetl.precision"] == precision
    from edgetl import __version__

    assert props["edgetl.version"] == __version__
    md = read_onnx_metadata(path)
    assert md["labels"] == ["alpha", "beta"] and md["format"] == fmt


# --------------------------------------------------------------------------- MediaPipe Tasks client


def _classifier(path: str):
    pytest.importorskip("mediapipe")
    try:
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"mediapipe tasks not importable: {exc}")
    opts = vision.ImageClassifierOptions(base_options=mp_tasks.BaseOptions(model_asset_path=path), max_results=2)
    return vision.ImageClassifier.create_from_options(opts)


def _mp_image(pil):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(np.asarray(pil.convert("RGB"))))


@pytest.mark.parametrize("fmt", ["tflite_fp32", "tflite_int8"])
def test_mediapipe_image_classifier_returns_label_names(exported, fmt):
    names = ["alpha", "beta"]
    hits = total = 0
    with _classifier(exported.artifact(fmt).path) as clf:
        for kind in (0, 1):
            for seed in range(5):
                res = clf.classify(_mp_image(make_image(kind, 32, seed=1000 + seed)))
                cats = res.classifications[0].categories
                assert {c.category_name for c in cats} == set(names)
                hits += cats[0].category_name == names[kind]
                total += 1
    assert hits >= total - 1, f"{hits}/{total}"


def _lite0_export_dir() -> Path | None:
    env = os.environ.get("EDGETL_LITE0_RUN")
    candidates = [Path(env)] if env else sorted(Path(__file__).resolve().parents[1].glob("runs/*lite0*"))
    for run in candidates:
        if (run / "export" / "efficientnet_lite0_int8.tflite").is_file():
            return run / "export"
    return None


@pytest.mark.shared
def test_mediapipe_on_real_lite0_export():
    """MediaPipe on a real Lite0 int8 export (set EDGETL_LITE0_RUN or have runs/*lite0*/export)."""
    from conftest import shared_dataset

    data = shared_dataset("cats_dogs")
    export = _lite0_export_dir()
    if export is None:
        pytest.skip("no exported Lite0 run (set EDGETL_LITE0_RUN)")
    from PIL import Image

    labels = (export / "labels.txt").read_text().split()
    hits = total = 0
    with _classifier(str(export / "efficientnet_lite0_int8.tflite")) as clf:
        for label in labels:
            files = sorted((data / "val" / label).iterdir())[:10]
            for f in files:
                res = clf.classify(_mp_image(Image.open(f)))
                hits += res.classifications[0].categories[0].category_name == label
                total += 1
    assert hits >= 0.9 * total, f"{hits}/{total}"
