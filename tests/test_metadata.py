"""Metadata in exported models: TFLite Model Metadata (written and read with plain flatbuffers,
checked against MediaPipe's generated schema) plus the packed zip, ONNX metadata_props, and
MediaPipe Tasks' ImageClassifier reading our labels, also from an export made without mediapipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    from edgetl.export.metadata import (AssociatedFileType, ColorSpaceType, ContentProperties, ProcessUnitOptions,
                                        read_tflite_metadata)

    path = exported.artifact(fmt).path
    md = read_tflite_metadata(path)
    meta = md.metadata
    assert meta is not None
    assert meta.name == f"edgetl tiny_cnn {exported.artifact(fmt).precision}"
    assert meta.version and meta.min_parser_version == "1.0.0" and meta.author == "edgetl"
    (inp,) = meta.inputs
    assert inp.name == "image" and inp.description.startswith(f"Input image: {io_type} RGB pixels 0-255 NHWC (N,32,32,3)")
    assert inp.content_type == ContentProperties.ImageProperties and inp.color_space == ColorSpaceType.RGB
    assert inp.process_units == [ProcessUnitOptions.NormalizationOptions]
    assert inp.normalization_mean == [0.0] * 3 and inp.normalization_std == [1.0] * 3
    assert inp.stats_min == [0.0] and inp.stats_max == [255.0]
    (out,) = meta.outputs
    assert out.name == "probability" and out.content_type == ContentProperties.FeatureProperties
    (labels_file,) = out.associated_files
    assert labels_file.name == "labels.txt" and labels_file.type == AssociatedFileType.TENSOR_AXIS_LABELS
    assert out.stats_max == [1.0] and out.stats_min == [0.0]
    (facts_file,) = meta.associated_files
    assert facts_file.name == "edgetl.json" and facts_file.type == AssociatedFileType.DESCRIPTIONS
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


# --------------------------------------------------------------------------- plain flatbuffers vs MediaPipe's schema

SAMPLE_FACTS = [
    dict(labels=["alpha", "beta"], backbone="tiny_cnn", precision="fp32", format="tflite_fp32", io_type="float32",
         preprocessing={"input_size": [32, 32], "mean": [127.5] * 3, "std": [127.5] * 3}),
    dict(labels=["chat noir", "café", "犬"], backbone="efficientnet_lite0", precision="int8", format="tflite_int8",
         io_type="uint8", version="9.8.7", preprocessing={"input_size": [224, 240], "mean": [0.0] * 3, "std": [1.0] * 3}),
]


def _reference_buffer(mfb, facts) -> bytes:
    """The metadata built with MediaPipe's generated object API (what edgetl did while it needed mediapipe)."""
    import flatbuffers

    from edgetl.export.metadata import input_description

    h, w = facts.preprocessing["input_size"]
    inp = mfb.TensorMetadataT()
    inp.name = "image"
    inp.description = f"Input image: {input_description(facts.io_type, (h, w))}. Resize the whole image (no crop), RGB."
    inp.content = mfb.ContentT()
    inp.content.contentPropertiesType = mfb.ContentProperties.ImageProperties
    inp.content.contentProperties = mfb.ImagePropertiesT()
    inp.content.contentProperties.colorSpace = mfb.ColorSpaceType.RGB
    norm = mfb.ProcessUnitT()
    norm.optionsType = mfb.ProcessUnitOptions.NormalizationOptions
    norm.options = mfb.NormalizationOptionsT()
    norm.options.mean, norm.options.std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    inp.processUnits = [norm]
    inp.stats = mfb.StatsT()
    inp.stats.max, inp.stats.min = [255.0], [0.0]
    out = mfb.TensorMetadataT()
    out.name = "probability"
    out.description = f"Probabilities of the {len(facts.labels)} classes (softmax)."
    out.content = mfb.ContentT()
    out.content.contentPropertiesType = mfb.ContentProperties.FeatureProperties
    out.content.contentProperties = mfb.FeaturePropertiesT()
    out.stats = mfb.StatsT()
    out.stats.max, out.stats.min = [1.0], [0.0]
    labels_file = mfb.AssociatedFileT()
    labels_file.name = "labels.txt"
    labels_file.description = "Class names, one per line, in output order."
    labels_file.type = mfb.AssociatedFileType.TENSOR_AXIS_LABELS
    out.associatedFiles = [labels_file]
    sub = mfb.SubGraphMetadataT()
    sub.inputTensorMetadata, sub.outputTensorMetadata = [inp], [out]
    meta = mfb.ModelMetadataT()
    meta.name = f"edgetl {facts.backbone} {facts.precision}"
    meta.description = (f"Image classifier ({len(facts.labels)} classes) exported by edgetl {facts.version} "
                        f"from backbone {facts.backbone}; precision {facts.precision}; input {facts.input}.")
    meta.version = facts.version
    meta.author = "edgetl"
    meta.minParserVersion = "1.0.0"
    facts_file = mfb.AssociatedFileT()
    facts_file.name = "edgetl.json"
    facts_file.description = "edgetl facts: labels, preprocessing, version, backbone, input, precision (JSON)."
    facts_file.type = mfb.AssociatedFileType.DESCRIPTIONS
    meta.associatedFiles = [facts_file]
    meta.subgraphMetadata = [sub]
    b = flatbuffers.Builder(0)
    b.Finish(meta.Pack(b), b"M001")
    return bytes(b.Output())


@pytest.mark.parametrize("kw", SAMPLE_FACTS, ids=["tiny_fp32", "lite0_int8_unicode"])
def test_plain_flatbuffers_writer_matches_mediapipe_schema(kw):
    """Our writer (flatbuffers only) gives MediaPipe's bytes, and MediaPipe's generated reader reads it back."""
    mfb = _mediapipe_schema()
    from edgetl.export.metadata import ModelFacts, build_metadata_buffer

    facts = ModelFacts(**kw)
    buf = build_metadata_buffer(facts)
    assert buf == _reference_buffer(mfb, facts)
    assert mfb.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    meta = mfb.ModelMetadataT.InitFromObj(mfb.ModelMetadata.GetRootAsModelMetadata(buf, 0))
    assert meta.name.decode() == f"edgetl {facts.backbone} {facts.precision}"
    assert meta.version.decode() == facts.version and meta.author.decode() == "edgetl"
    assert meta.minParserVersion.decode() == "1.0.0" and meta.license is None
    assert [f.name.decode() for f in meta.associatedFiles] == ["edgetl.json"]
    assert meta.associatedFiles[0].type == mfb.AssociatedFileType.DESCRIPTIONS
    (sub,) = meta.subgraphMetadata
    (inp,) = sub.inputTensorMetadata
    assert inp.name.decode() == "image" and f"(N,{kw['preprocessing']['input_size'][0]}," in inp.description.decode()
    assert inp.content.contentPropertiesType == mfb.ContentProperties.ImageProperties
    assert inp.content.contentProperties.colorSpace == mfb.ColorSpaceType.RGB
    (norm,) = inp.processUnits
    assert norm.optionsType == mfb.ProcessUnitOptions.NormalizationOptions
    assert list(norm.options.mean) == [0.0] * 3 and list(norm.options.std) == [1.0] * 3
    assert list(inp.stats.min) == [0.0] and list(inp.stats.max) == [255.0]
    (out,) = sub.outputTensorMetadata
    assert out.name.decode() == "probability" and out.processUnits is None
    assert out.content.contentPropertiesType == mfb.ContentProperties.FeatureProperties
    (labels_file,) = out.associatedFiles
    assert labels_file.name.decode() == "labels.txt" and labels_file.type == mfb.AssociatedFileType.TENSOR_AXIS_LABELS
    assert list(out.stats.max) == [1.0] and list(out.stats.min) == [0.0]


@pytest.mark.parametrize("kw", SAMPLE_FACTS, ids=["tiny_fp32", "lite0_int8_unicode"])
def test_plain_flatbuffers_reader_reads_mediapipe_buffer(kw):
    """Our reader on a buffer written by MediaPipe's generated code (independent of our writer)."""
    mfb = _mediapipe_schema()
    from edgetl.export.metadata import (AssociatedFileType, ColorSpaceType, ContentProperties, ModelFacts,
                                        ProcessUnitOptions, parse_metadata_buffer)

    facts = ModelFacts(**kw)
    meta = parse_metadata_buffer(_reference_buffer(mfb, facts))
    assert meta.name == f"edgetl {facts.backbone} {facts.precision}" and meta.version == facts.version
    assert meta.min_parser_version == "1.0.0" and meta.author == "edgetl" and meta.license is None
    assert f"({len(facts.labels)} classes)" in meta.description
    (inp,) = meta.inputs
    assert inp.name == "image" and inp.content_type == ContentProperties.ImageProperties
    assert inp.color_space == ColorSpaceType.RGB and inp.process_units == [ProcessUnitOptions.NormalizationOptions]
    assert inp.normalization_mean == [0.0] * 3 and inp.normalization_std == [1.0] * 3
    assert inp.stats_max == [255.0] and inp.stats_min == [0.0] and inp.associated_files == []
    (out,) = meta.outputs
    assert out.name == "probability" and out.content_type == ContentProperties.FeatureProperties
    assert out.color_space is None and out.process_units == [] and out.normalization_mean is None
    assert [(f.name, f.type) for f in out.associated_files] == [("labels.txt", AssociatedFileType.TENSOR_AXIS_LABELS)]
    assert [(f.name, f.type) for f in meta.associated_files] == [("edgetl.json", AssociatedFileType.DESCRIPTIONS)]


def test_metadata_reader_rejects_other_flatbuffers():
    from edgetl.export.metadata import _tflite_schema, parse_metadata_buffer

    import flatbuffers

    schema = _tflite_schema()
    b = flatbuffers.Builder(0)
    b.Finish(schema.ModelT().Pack(b), b"TFL3")
    with pytest.raises(ValueError, match="M001"):
        parse_metadata_buffer(bytes(b.Output()))


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


NO_MEDIAPIPE = '''
import sys

class _NoMediaPipe:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mediapipe":
            raise ImportError(f"{name} is blocked: simulated README install without mediapipe")
        return None

sys.meta_path.insert(0, _NoMediaPipe())
'''

EXPORT_SCRIPT = '''
import json, sys
try:
    import mediapipe
except ImportError as exc:
    assert "blocked" in str(exc), exc
else:
    raise SystemExit("mediapipe is importable: the blocker did not work")
from edgetl.export.api import ExportConfig, export_run
res = export_run(sys.argv[1], ExportConfig(formats=("tflite_fp32", "tflite_int8"), out_dir=sys.argv[2], doctor=False))
print(json.dumps({
    "failed": [a.error for a in res.failed],
    "paths": {a.format: a.path for a in res.artifacts},
    "warnings": res.warnings + [w for a in res.artifacts for w in a.warnings],
    "mediapipe_modules": sorted(m for m in sys.modules if m.split(".")[0] == "mediapipe"),
}))
'''


def test_export_without_mediapipe_has_metadata_mediapipe_reads(tiny_run, tmp_path):
    """The README install has no mediapipe: export there, then MediaPipe's ImageClassifier names the classes."""
    pytest.importorskip("mediapipe")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_MEDIAPIPE)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(tiny_run), str(tmp_path / "export")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["failed"] == [] and res["mediapipe_modules"] == []
    assert not [w for w in res["warnings"] if "mediapipe" in w.lower() or "metadata" in w.lower()], res["warnings"]

    from edgetl.export.metadata import read_tflite_metadata

    labels = (tiny_run / "labels.txt").read_text().split()
    assert labels == ["alpha", "beta"]
    for fmt in ("tflite_fp32", "tflite_int8"):
        path = res["paths"][fmt]
        md = read_tflite_metadata(path)
        assert md.metadata is not None and md.metadata.outputs[0].associated_files[0].name == "labels.txt"
        hits = total = 0
        with _classifier(path) as clf:
            for kind in (0, 1):
                for seed in range(3):
                    cats = clf.classify(_mp_image(make_image(kind, 32, seed=2000 + seed))).classifications[0].categories
                    assert sorted(c.category_name for c in cats) == labels, fmt
                    hits += cats[0].category_name == labels[kind]
                    total += 1
        assert hits >= total - 1, f"{fmt}: {hits}/{total}"


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
