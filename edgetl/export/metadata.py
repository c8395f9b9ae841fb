"""Metadata inside exported models: what a runner on a device needs, and nothing it must guess.

Every exported model takes RGB pixels at the run's input size with the backbone's
normalization folded into the graph: float models take float32 pixels in [0, 255]
(N, H, W, 3); full-integer TFLite models take uint8 pixels (scale 1, zero point 0,
so raw pixels go straight in) unless exported with ``--io-type int8|float32``.

TFLite (``.tflite``)
    * ``TFLITE_METADATA`` entry of the model's ``metadata`` list: a TFLite Model Metadata
      flatbuffer (schema 1.0.0, readable by MediaPipe Tasks' ``ImageClassifier``):
      name, description, version (edgetl version); one input tensor with
      ``ImageProperties`` (RGB), ``NormalizationOptions`` mean 0 / std 1 (the real
      normalization is in the graph) and ``Stats`` min 0 / max 255; one output tensor
      (``probability``) with ``Stats`` min 0 / max 1 and the associated file
      ``labels.txt`` (type ``TENSOR_AXIS_LABELS``).
    * A zip archive appended to the flatbuffer (exactly as TFLite Support's
      ``MetadataPopulator`` does; ``zipfile.ZipFile(path)`` opens it) holding:

      - ``labels.txt``: class names, one per line, in output order;
      - ``edgetl.json``: the same facts as the ONNX keys below, as one JSON object:
        ``{"labels": [...], "preprocessing": {...}, "version": "0.1.0", "backbone": "...",
        "input": "...", "precision": "...", "format": "...", "io_type": "uint8|int8|float32"}``.

ONNX (``.onnx``), ``ModelProto.metadata_props`` (all values are strings):
    * ``edgetl.labels``: JSON list of class names in output order;
    * ``edgetl.preprocessing``: JSON of :meth:`edgetl.preprocess.Preprocessing.to_dict`;
    * ``edgetl.version``: edgetl version that wrote the file;
    * ``edgetl.backbone``: backbone registry name;
    * ``edgetl.input``: e.g. ``"float32 RGB pixels 0-255 NHWC"``;
    * ``edgetl.precision``: ``fp32`` or ``int8``;
    * ``edgetl.format``: export format name (``onnx_fp32``, ``onnx_int8``).

Read them back with :func:`read_tflite_metadata` and :func:`read_onnx_metadata`.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl import __version__

METADATA_FIELD_NAME = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
TFLITE_FILE_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"  # ImageProperties, NormalizationOptions, Stats, TENSOR_AXIS_LABELS
LABELS_NAME = "labels.txt"
EDGETL_JSON = "edgetl.json"
ONNX_PREFIX = "edgetl."


def input_description(dtype: str, input_size: tuple[int, int] | list[int]) -> str:
    """``"uint8 RGB pixels 0-255 NHWC"``-style text for metadata and tables."""
    h, w = input_size
    return f"{dtype} RGB pixels 0-255 NHWC (N,{h},{w},3), normalization in the graph"


@dataclass
class ModelFacts:
    """What the metadata says about one exported model."""

    labels: list[str]
    preprocessing: dict[str, Any]
    backbone: str
    precision: str
    format: str
    io_type: str = "float32"
    version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input(self) -> str:
        return input_description(self.io_type, self.preprocessing["input_size"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "preprocessing": self.preprocessing,
            "version": self.version,
            "backbone": self.backbone,
            "input": self.input,
            "precision": self.precision,
            "format": self.format,
            "io_type": self.io_type,
            **self.extra,
        }


# --------------------------------------------------------------------------- TFLite


def _tflite_schema():
    try:
        from ai_edge_litert import schema_py_generated as schema  # base dependency: always present
    except ImportError:  # pragma: no cover
        from tensorflow.lite.python import schema_py_generated as schema  # type: ignore[no-redef]
    return schema


def _metadata_schema():
    """MediaPipe's pure-Python metadata flatbuffer schema (None when mediapipe is missing)."""
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as mfb
    except Exception:  # noqa: BLE001 - any import failure means "cannot write TFLite metadata"
        return None
    return mfb


def metadata_available() -> bool:
    return _metadata_schema() is not None


def build_metadata_buffer(facts: ModelFacts) -> bytes:
    """The TFLite Model Metadata flatbuffer (``M001``) for an image classifier."""
    import flatbuffers

    mfb = _metadata_schema()
    if mfb is None:
        raise RuntimeError("mediapipe's metadata schema is not importable")
    h, w = facts.preprocessing["input_size"]

    inp = mfb.TensorMetadataT()
    inp.name = "image"
    inp.description = f"Input image: {input_description(facts.io_type, (h, w))}. Resize the whole image (no crop), RGB."
    inp.content = mfb.ContentT()
    inp.content.contentPropertiesType = mfb.ContentProperties.ImageProperties
    props = mfb.ImagePropertiesT()
    props.colorSpace = mfb.ColorSpaceType.RGB
    inp.content.contentProperties = props
    # Normalization is inside the graph: tell MediaPipe to feed pixels unchanged (mean 0, std 1).
    norm = mfb.ProcessUnitT()
    norm.optionsType = mfb.ProcessUnitOptions.NormalizationOptions
    norm.options = mfb.NormalizationOptionsT()
    norm.options.mean = [0.0, 0.0, 0.0]
    norm.options.std = [1.0, 1.0, 1.0]
    inp.processUnits = [norm]
    inp.stats = mfb.StatsT()
    inp.stats.max = [255.0]
    inp.stats.min = [0.0]

    out = mfb.TensorMetadataT()
    out.name = "probability"
    out.description = f"Probabilities of the {len(facts.labels)} classes (softmax)."
    out.content = mfb.ContentT()
    out.content.contentPropertiesType = mfb.ContentProperties.FeatureProperties
    out.content.contentProperties = mfb.FeaturePropertiesT()
    out.stats = mfb.StatsT()
    out.stats.max = [1.0]
    out.stats.min = [0.0]
    labels_file = mfb.AssociatedFileT()
    labels_file.name = LABELS_NAME
    labels_file.description = "Class names, one per line, in output order."
    labels_file.type = mfb.AssociatedFileType.TENSOR_AXIS_LABELS
    out.associatedFiles = [labels_file]

    sub = mfb.SubGraphMetadataT()
    sub.inputTensorMetadata = [inp]
    sub.outputTensorMetadata = [out]

    meta = mfb.ModelMetadataT()
    meta.name = f"edgetl {facts.backbone} {facts.precision}"
    meta.description = (
        f"Image classifier ({len(facts.labels)} classes) exported by edgetl {facts.version} "
        f"from backbone {facts.backbone}; precision {facts.precision}; input {facts.input}."
    )
    meta.version = facts.version
    meta.author = "edgetl"
    meta.minParserVersion = MIN_PARSER_VERSION
    edgetl_file = mfb.AssociatedFileT()
    edgetl_file.name = EDGETL_JSON
    edgetl_file.description = "edgetl facts: labels, preprocessing, version, backbone, input, precision (JSON)."
    edgetl_file.type = mfb.AssociatedFileType.DESCRIPTIONS
    meta.associatedFiles = [edgetl_file]
    meta.subgraphMetadata = [sub]

    b = flatbuffers.Builder(0)
    b.Finish(meta.Pack(b), METADATA_FILE_IDENTIFIER)
    return bytes(b.Output())


def _set_model_metadata(model_buf: bytes, name: str, data: bytes) -> bytes:
    """Put ``data`` in the model's ``metadata`` list under ``name`` (replacing an old entry)."""
    import flatbuffers
    import numpy as np

    schema = _tflite_schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_buf, 0))
    buf = schema.BufferT()
    buf.data = np.frombuffer(data, dtype=np.uint8)
    model.metadata = model.metadata or []
    model.buffers = model.buffers or []
    for entry in model.metadata:
        entry_name = entry.name.decode("utf-8") if isinstance(entry.name, bytes) else entry.name
        if entry_name == name:
            model.buffers[entry.buffer] = buf
            break
    else:
        model.buffers.append(buf)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    b = flatbuffers.Builder(max(1024, len(model_buf) + len(data) + 4096))
    b.Finish(model.Pack(b), TFLITE_FILE_IDENTIFIER)
    return bytes(b.Output())


def populate_tflite(model_buf: bytes, facts: ModelFacts) -> tuple[bytes, list[str]]:
    """Model bytes with TFLite metadata and the associated files appended as a zip.

    Returns:
        (new model bytes, warnings). Without mediapipe the metadata flatbuffer is
        skipped (one warning) but ``labels.txt`` and ``edgetl.json`` are still packed.
    """
    warnings: list[str] = []
    out = model_buf
    if metadata_available():
        out = _set_model_metadata(model_buf, METADATA_FIELD_NAME, build_metadata_buffer(facts))
    else:
        warnings.append("mediapipe is not installed: TFLite Model Metadata (for MediaPipe Tasks) not written; "
                        "labels.txt and edgetl.json are still packed in the file")
    files = {
        LABELS_NAME: ("\n".join(facts.labels) + "\n").encode("utf-8"),
        EDGETL_JSON: json.dumps(facts.to_dict(), indent=2).encode("utf-8"),
    }
    bio = io.BytesIO()
    bio.write(out)
    # Appending a zip after the flatbuffer: the interpreter ignores trailing bytes, zip readers
    # find the central directory at the end (this is what MetadataPopulator does).
    with zipfile.ZipFile(bio, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return bio.getvalue(), warnings


@dataclass
class TFLiteMetadata:
    """What :func:`read_tflite_metadata` finds in a ``.tflite`` file."""

    metadata: Any | None  # mediapipe ModelMetadataT, or None
    files: dict[str, bytes]

    @property
    def labels(self) -> list[str]:
        raw = self.files.get(LABELS_NAME, b"").decode("utf-8")
        return [line for line in raw.splitlines() if line.strip()]

    @property
    def edgetl(self) -> dict[str, Any]:
        raw = self.files.get(EDGETL_JSON)
        return json.loads(raw.decode("utf-8")) if raw else {}


def get_metadata_buffer(model_buf: bytes) -> bytes | None:
    """The raw ``TFLITE_METADATA`` flatbuffer of a model, or None."""
    schema = _tflite_schema()
    model = schema.Model.GetRootAsModel(model_buf, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode("utf-8") == METADATA_FIELD_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def read_tflite_metadata(path_or_bytes: str | Path | bytes) -> TFLiteMetadata:
    """Parse the metadata flatbuffer (with mediapipe's schema, if installed) and the packed files."""
    data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()
    meta = None
    raw = get_metadata_buffer(bytes(data))
    mfb = _metadata_schema()
    if raw is not None and mfb is not None:
        meta = mfb.ModelMetadataT.InitFromObj(mfb.ModelMetadata.GetRootAsModelMetadata(raw, 0))
    files: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in zf.namelist():
                files[name] = zf.read(name)
    except zipfile.BadZipFile:
        pass
    return TFLiteMetadata(meta, files)


# --------------------------------------------------------------------------- ONNX


def onnx_props(facts: ModelFacts) -> dict[str, str]:
    """The ``metadata_props`` written into every exported ONNX model."""
    return {
        ONNX_PREFIX + "labels": json.dumps(list(facts.labels)),
        ONNX_PREFIX + "preprocessing": json.dumps(facts.preprocessing),
        ONNX_PREFIX + "version": facts.version,
        ONNX_PREFIX + "backbone": facts.backbone,
        ONNX_PREFIX + "input": input_description(facts.io_type, facts.preprocessing["input_size"]).split(" (")[0],
        ONNX_PREFIX + "precision": facts.precision,
        ONNX_PREFIX + "format": facts.format,
    }


def set_onnx_props(model: Any, facts: ModelFacts) -> Any:
    """Replace the edgetl keys in ``model.metadata_props`` (other keys are kept)."""
    props = onnx_props(facts)
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for k, v in keep + list(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "edgetl"
    model.producer_version = facts.version
    model.doc_string = f"edgetl {facts.backbone} {facts.precision}: {len(facts.labels)} classes, input {props[ONNX_PREFIX + 'input']}"
    return model


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The edgetl keys of an ONNX file, JSON values decoded (``labels``, ``preprocessing``, ...)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        if p.key.startswith(ONNX_PREFIX):
            key = p.key[len(ONNX_PREFIX):]
            out[key] = json.loads(p.value) if key in ("labels", "preprocessing") else p.value
    return out
