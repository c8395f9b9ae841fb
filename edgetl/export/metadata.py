"""Metadata inside exported models: what a runner on a device needs, and nothing it must guess.

Every exported model takes RGB pixels at the run's input size with the backbone's
normalization folded into the graph: float models take float32 pixels in [0, 255]
(N, H, W, 3); full-integer TFLite models take uint8 pixels (raw pixels go straight in: the
input quantization is scale 1 / zero point 0, or carries the normalization, e.g. 1/128 and
127 for EfficientNet-Lite) unless exported with ``--io-type int8|float32``.

TFLite (``.tflite``)
    * ``TFLITE_METADATA`` entry of the model's ``metadata`` list: a TFLite Model Metadata
      flatbuffer (schema 1.0.0, readable by MediaPipe Tasks' ``ImageClassifier``), always
      written: it is built with the ``flatbuffers`` package alone (a dependency of
      ai-edge-litert), from the slot numbers of the public ``metadata_schema.fbs``, so
      neither mediapipe nor tflite-support is needed to write or read it. It holds
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

Read them back with :func:`read_tflite_metadata` (the flatbuffer alone: :func:`parse_metadata_buffer`)
and :func:`read_onnx_metadata`.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from edgetl import __version__

METADATA_FIELD_NAME = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
TFLITE_FILE_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"  # ImageProperties, NormalizationOptions, Stats, TENSOR_AXIS_LABELS
LABELS_NAME = "labels.txt"
EDGETL_JSON = "edgetl.json"
from edgetl.runtime.fileinfo import ONNX_PREFIX  # noqa: E402 - the one spelling, shared with the runtimes


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


# The subset of the TFLite Model Metadata schema (``metadata_schema.fbs`` of TFLite Support and
# MediaPipe, file identifier ``M001``) that edgetl writes and reads, written with the plain
# ``flatbuffers`` package (a dependency of ai-edge-litert and tensorflow). A table's fields are
# numbered slots in declaration order; a union field ``x`` is two slots, ``x_type`` then ``x``.
# The field lists are complete (not only the fields edgetl uses) so each table has the schema's
# field count, and the bytes are the same as those of the schema's generated code.
_TABLES: dict[str, tuple[str, ...]] = {
    "ModelMetadata": ("name", "description", "version", "subgraph_metadata", "author", "license",
                      "associated_files", "min_parser_version"),
    "SubGraphMetadata": ("name", "description", "input_tensor_metadata", "output_tensor_metadata",
                         "associated_files", "input_process_units", "output_process_units",
                         "input_tensor_groups", "output_tensor_groups", "custom_metadata"),
    "TensorMetadata": ("name", "description", "dimension_names", "content", "process_units", "stats",
                       "associated_files"),
    "Content": ("content_properties_type", "content_properties", "range"),
    "ImageProperties": ("color_space", "default_size"),
    "FeatureProperties": (),
    "ProcessUnit": ("options_type", "options"),
    "NormalizationOptions": ("mean", "std"),
    "Stats": ("max", "min"),
    "AssociatedFile": ("name", "description", "type", "locale", "version"),
}
# Scalar fields and their flatbuffers type (every other field is an offset: string, vector or table).
_SCALAR_FIELDS = {
    "content_properties_type": "Uint8",  # union type tag (ubyte)
    "options_type": "Uint8",  # union type tag (ubyte)
    "color_space": "Int8",  # enum ColorSpaceType : byte
    "type": "Int8",  # enum AssociatedFileType : byte
}


class AssociatedFileType(IntEnum):
    UNKNOWN = 0
    DESCRIPTIONS = 1
    TENSOR_AXIS_LABELS = 2
    TENSOR_VALUE_LABELS = 3
    TENSOR_AXIS_SCORE_CALIBRATION = 4
    VOCABULARY = 5
    SCANN_INDEX_FILE = 6


class ColorSpaceType(IntEnum):
    UNKNOWN = 0
    RGB = 1
    GRAYSCALE = 2


class ContentProperties(IntEnum):
    """Members of the ``ContentProperties`` union (the value of ``content_properties_type``)."""

    NONE = 0
    FeatureProperties = 1
    ImageProperties = 2
    BoundingBoxProperties = 3
    AudioProperties = 4


class ProcessUnitOptions(IntEnum):
    """Members of the ``ProcessUnitOptions`` union (the value of ``options_type``)."""

    NONE = 0
    NormalizationOptions = 1
    ScoreCalibrationOptions = 2
    ScoreThresholdingOptions = 3
    BertTokenizerOptions = 4
    SentencePieceTokenizerOptions = 5
    RegexTokenizerOptions = 6


class _Writer:
    """``flatbuffers.Builder`` with the schema's slot numbers.

    Flatbuffers are built bottom-up: strings, vectors and child tables first, then the table
    that points at them. :meth:`table` takes the children as keyword arguments, which Python
    evaluates left to right, so writing the fields in schema order builds the children in the
    same order as the generated ``Pack`` methods do.
    """

    def __init__(self) -> None:
        import flatbuffers

        self.b = flatbuffers.Builder(1024)

    def string(self, text: str) -> int:
        return self.b.CreateString(text)

    def floats(self, values: list[float]) -> int:
        self.b.StartVector(4, len(values), 4)
        for v in reversed(values):
            self.b.PrependFloat32(float(v))
        return self.b.EndVector()

    def tables(self, offsets: list[int]) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()

    def table(self, kind: str, **fields: int) -> int:
        slots = _TABLES[kind]
        unknown = set(fields) - set(slots)
        if unknown:
            raise ValueError(f"{kind} has no field {sorted(unknown)}")
        self.b.StartObject(len(slots))
        for slot, name in enumerate(slots):
            value = fields.get(name)
            if value is None:
                continue
            if name in _SCALAR_FIELDS:  # like generated code: a value equal to the default (0) is not stored
                getattr(self.b, f"Prepend{_SCALAR_FIELDS[name]}Slot")(slot, int(value), 0)
            else:
                self.b.PrependUOffsetTRelativeSlot(slot, value, 0)
        return self.b.EndObject()

    def finish(self, root: int, file_identifier: bytes) -> bytes:
        self.b.Finish(root, file_identifier)
        return bytes(self.b.Output())


def _image_tensor(w: _Writer, facts: ModelFacts) -> int:
    h, wd = facts.preprocessing["input_size"]
    return w.table(
        "TensorMetadata",
        name=w.string("image"),
        description=w.string(f"Input image: {input_description(facts.io_type, (h, wd))}. "
                             "Resize the whole image (no crop), RGB."),
        content=w.table("Content",
                        content_properties_type=ContentProperties.ImageProperties,
                        content_properties=w.table("ImageProperties", color_space=ColorSpaceType.RGB)),
        # Normalization is inside the graph: tell MediaPipe to feed pixels unchanged (mean 0, std 1).
        process_units=w.tables([w.table(
            "ProcessUnit",
            options_type=ProcessUnitOptions.NormalizationOptions,
            options=w.table("NormalizationOptions", mean=w.floats([0.0, 0.0, 0.0]), std=w.floats([1.0, 1.0, 1.0])),
        )]),
        stats=w.table("Stats", max=w.floats([255.0]), min=w.floats([0.0])),
    )


def _probability_tensor(w: _Writer, facts: ModelFacts) -> int:
    return w.table(
        "TensorMetadata",
        name=w.string("probability"),
        description=w.string(f"Probabilities of the {len(facts.labels)} classes (softmax)."),
        content=w.table("Content",
                        content_properties_type=ContentProperties.FeatureProperties,
                        content_properties=w.table("FeatureProperties")),
        stats=w.table("Stats", max=w.floats([1.0]), min=w.floats([0.0])),
        associated_files=w.tables([w.table(
            "AssociatedFile",
            name=w.string(LABELS_NAME),
            description=w.string("Class names, one per line, in output order."),
            type=AssociatedFileType.TENSOR_AXIS_LABELS,
        )]),
    )


def build_metadata_buffer(facts: ModelFacts) -> bytes:
    """The TFLite Model Metadata flatbuffer (``M001``) for an image classifier."""
    w = _Writer()
    root = w.table(
        "ModelMetadata",
        name=w.string(f"edgetl {facts.backbone} {facts.precision}"),
        description=w.string(
            f"Image classifier ({len(facts.labels)} classes) exported by edgetl {facts.version} "
            f"from backbone {facts.backbone}; precision {facts.precision}; input {facts.input}."),
        version=w.string(facts.version),
        subgraph_metadata=w.tables([w.table(
            "SubGraphMetadata",
            input_tensor_metadata=w.tables([_image_tensor(w, facts)]),
            output_tensor_metadata=w.tables([_probability_tensor(w, facts)]),
        )]),
        author=w.string("edgetl"),
        associated_files=w.tables([w.table(
            "AssociatedFile",
            name=w.string(EDGETL_JSON),
            description=w.string("edgetl facts: labels, preprocessing, version, backbone, input, precision (JSON)."),
            type=AssociatedFileType.DESCRIPTIONS,
        )]),
        min_parser_version=w.string(MIN_PARSER_VERSION),
    )
    return w.finish(root, METADATA_FILE_IDENTIFIER)


@dataclass
class AssociatedFileInfo:
    """One ``AssociatedFile`` entry of the metadata."""

    name: str | None
    description: str | None
    type: int  # AssociatedFileType
    locale: str | None = None


@dataclass
class TensorMetadataInfo:
    """One ``TensorMetadata`` entry (what edgetl writes; other fields are not read)."""

    name: str | None
    description: str | None
    content_type: int  # ContentProperties
    color_space: int | None  # ColorSpaceType, for ImageProperties content
    process_units: list[int]  # ProcessUnitOptions of each process unit
    normalization_mean: list[float] | None  # of the first NormalizationOptions unit
    normalization_std: list[float] | None
    stats_max: list[float] | None
    stats_min: list[float] | None
    associated_files: list[AssociatedFileInfo]


@dataclass
class ModelMetadataInfo:
    """The ``ModelMetadata`` root table; inputs/outputs are those of the first (only) subgraph."""

    name: str | None
    description: str | None
    version: str | None
    author: str | None
    license: str | None
    min_parser_version: str | None
    inputs: list[TensorMetadataInfo]
    outputs: list[TensorMetadataInfo]
    associated_files: list[AssociatedFileInfo]


class _Reader:
    """Read access to one table of a metadata flatbuffer, by field name."""

    def __init__(self, kind: str, buf: bytes, pos: int) -> None:
        from flatbuffers.table import Table

        self.kind, self.buf, self.t = kind, buf, Table(buf, pos)

    def _offset(self, name: str) -> int:
        return self.t.Offset(4 + 2 * _TABLES[self.kind].index(name))  # vtable: 2 uint16 sizes, then one per slot

    def string(self, name: str) -> str | None:
        off = self._offset(name)
        return self.t.String(self.t.Pos + off).decode("utf-8") if off else None

    def scalar(self, name: str) -> int:
        from flatbuffers import number_types

        off = self._offset(name)
        flags = getattr(number_types, f"{_SCALAR_FIELDS[name]}Flags")
        return self.t.Get(flags, self.t.Pos + off) if off else 0

    def table(self, name: str, kind: str) -> _Reader | None:
        off = self._offset(name)
        return _Reader(kind, self.buf, self.t.Indirect(self.t.Pos + off)) if off else None

    def tables(self, name: str, kind: str) -> list[_Reader]:
        off = self._offset(name)
        if not off:
            return []
        start = self.t.Vector(off)
        return [_Reader(kind, self.buf, self.t.Indirect(start + 4 * i)) for i in range(self.t.VectorLen(off))]

    def floats(self, name: str) -> list[float] | None:
        from flatbuffers import number_types

        off = self._offset(name)
        if not off:
            return None
        start = self.t.Vector(off)
        return [self.t.Get(number_types.Float32Flags, start + 4 * i) for i in range(self.t.VectorLen(off))]


def _read_files(r: _Reader) -> list[AssociatedFileInfo]:
    return [AssociatedFileInfo(f.string("name"), f.string("description"), f.scalar("type"), f.string("locale"))
            for f in r.tables("associated_files", "AssociatedFile")]


def _read_tensor(r: _Reader) -> TensorMetadataInfo:
    content = r.table("content", "Content")
    content_type = content.scalar("content_properties_type") if content else ContentProperties.NONE
    color_space = None
    if content is not None and content_type == ContentProperties.ImageProperties:
        props = content.table("content_properties", "ImageProperties")
        color_space = props.scalar("color_space") if props else ColorSpaceType.UNKNOWN
    units, mean, std = [], None, None
    for unit in r.tables("process_units", "ProcessUnit"):
        units.append(unit.scalar("options_type"))
        if units[-1] == ProcessUnitOptions.NormalizationOptions and mean is None:
            norm = unit.table("options", "NormalizationOptions")
            if norm is not None:
                mean, std = norm.floats("mean"), norm.floats("std")
    stats = r.table("stats", "Stats")
    return TensorMetadataInfo(
        name=r.string("name"), description=r.string("description"), content_type=content_type,
        color_space=color_space, process_units=units, normalization_mean=mean, normalization_std=std,
        stats_max=stats.floats("max") if stats else None, stats_min=stats.floats("min") if stats else None,
        associated_files=_read_files(r),
    )


def parse_metadata_buffer(buf: bytes) -> ModelMetadataInfo:
    """Read a TFLite Model Metadata flatbuffer (the ``TFLITE_METADATA`` entry of a model)."""
    buf = bytes(buf)
    if len(buf) < 8 or buf[4:8] != METADATA_FILE_IDENTIFIER:
        raise ValueError(f"not a TFLite Model Metadata flatbuffer (file identifier {buf[4:8]!r}, "
                         f"expected {METADATA_FILE_IDENTIFIER!r})")
    root = _Reader("ModelMetadata", buf, struct.unpack_from("<I", buf, 0)[0])
    subgraphs = root.tables("subgraph_metadata", "SubGraphMetadata")
    sub = subgraphs[0] if subgraphs else None
    return ModelMetadataInfo(
        name=root.string("name"), description=root.string("description"), version=root.string("version"),
        author=root.string("author"), license=root.string("license"),
        min_parser_version=root.string("min_parser_version"),
        inputs=[_read_tensor(t) for t in sub.tables("input_tensor_metadata", "TensorMetadata")] if sub else [],
        outputs=[_read_tensor(t) for t in sub.tables("output_tensor_metadata", "TensorMetadata")] if sub else [],
        associated_files=_read_files(root),
    )


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
        (new model bytes, warnings). The list is empty: the metadata flatbuffer needs only the
        ``flatbuffers`` package, so it is always written; the tuple is what callers unpack.
    """
    out = _set_model_metadata(model_buf, METADATA_FIELD_NAME, build_metadata_buffer(facts))
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
    return bio.getvalue(), []


@dataclass
class TFLiteMetadata:
    """What :func:`read_tflite_metadata` finds in a ``.tflite`` file."""

    metadata: ModelMetadataInfo | None  # None: the file has no TFLITE_METADATA entry
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
    """Parse the metadata flatbuffer and the packed files (needs only ``flatbuffers``)."""
    data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()
    raw = get_metadata_buffer(bytes(data))
    meta = parse_metadata_buffer(raw) if raw is not None else None
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
    from edgetl.runtime.fileinfo import onnx_metadata

    out: dict[str, Any] = {}
    for key, value in onnx_metadata(path).items():
        if key.startswith(ONNX_PREFIX):
            key = key[len(ONNX_PREFIX):]
            out[key] = json.loads(value) if key in ("labels", "preprocessing") else value
    return out
