"""What a model file says about itself, read without its runtime: the contract between export and runtimes.

edgetl's metadata (the ``edgetl.json`` zip appended to a ``.tflite``; ``edgetl.*`` ``metadata_props``
of an ``.onnx``), then the sidecar files when a file carries none: labels from a sibling
``labels.txt`` (else ``class_0..``), preprocessing from a sibling ``export.json`` or the run's
``config.json`` (else the input tensor's size), precision from the ``<backbone>_<precision>.<ext>``
file name. Every runner reads a file through :func:`file_info`; this module imports no runner
and nothing from ``export``/``train``/``bench`` except the data-only format table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgetl.errors import ModelFileError
from edgetl.preprocess import Preprocessing

SUFFIXES = (".keras", ".tflite", ".onnx")
#: ONNX ``metadata_props`` keys edgetl writes start with this (``edgetl.labels``, ``edgetl.preprocessing`` ...).
ONNX_PREFIX = "edgetl."

_PRECISION_RE = re.compile(r"_(fp32|fp16|float16|float32|dynamic|qat_int8|int16x8|int8|uint8|int16)$", re.I)


def _varint(fh: Any) -> int:
    shift = result = 0
    while True:
        b = fh.read(1)
        if not b:
            raise ValueError("truncated varint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` (what ONNX Runtime's ``custom_metadata_map`` returns), read without
    loading the model: the top-level protobuf fields are walked and the graph is skipped with a seek.

    Raises:
        ValueError, OSError: not a readable ONNX protobuf.
    """
    import io
    import os

    out: dict[str, str] = {}
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        while fh.tell() < size:
            key = _varint(fh)
            field_no, wire = key >> 3, key & 7
            if wire == 0:
                _varint(fh)
            elif wire == 1:
                fh.seek(8, 1)
            elif wire == 5:
                fh.seek(4, 1)
            elif wire == 2:
                n = _varint(fh)
                if fh.tell() + n > size:
                    raise ValueError("truncated field")
                if field_no != 14:  # ModelProto.metadata_props
                    fh.seek(n, 1)
                    continue
                entry = io.BytesIO(fh.read(n))
                kv = {1: "", 2: ""}
                while entry.tell() < n:
                    k = _varint(entry)
                    if k & 7 != 2:
                        raise ValueError("unexpected metadata entry")
                    kv[k >> 3] = entry.read(_varint(entry)).decode("utf-8")
                out[kv[1]] = kv[2]
            else:
                raise ValueError(f"unexpected protobuf wire type {wire}")
    return out


@dataclass
class FileInfo:
    labels: list[str]
    preprocessing: Preprocessing
    precision: str
    metadata: dict[str, Any]


def read_edgetl_json(path: str | Path | bytes) -> dict[str, Any]:
    """The ``edgetl.json`` (and ``labels.txt``) packed in the zip appended to a .tflite file (a path or
    the file's bytes); {} when absent."""
    import io
    import zipfile

    out: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else path) as zf:
            names = set(zf.namelist())
            if "edgetl.json" in names:
                d = json.loads(zf.read("edgetl.json").decode("utf-8"))
                if isinstance(d, dict):
                    out.update(d)
            if "labels.txt" in names and "labels" not in out:
                out["labels"] = [ln.strip() for ln in zf.read("labels.txt").decode("utf-8").splitlines() if ln.strip()]
    except (zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError, KeyError):
        return {}
    return out


def file_info(path: str | Path, input_hw: tuple[Any, Any], num_classes: int, metadata: dict[str, Any] | None = None,
              guess: Callable[[], str] | None = None) -> FileInfo:
    """Labels, preprocessing and precision of a ``.tflite`` or ``.onnx`` file: its embedded edgetl
    metadata first (``metadata``: already read, e.g. from a model's bytes), then the sidecar files
    and the naming scheme, then ``guess()`` (a runner looking at the tensors) for the precision."""
    p = Path(path)
    if p.suffix.lower() == ".tflite":
        md = read_edgetl_json(p) if metadata is None else metadata
        labels, pre, prec = md.get("labels"), md.get("preprocessing"), md.get("precision")
    else:
        if metadata is None:
            try:
                metadata = onnx_metadata(p)
            except (OSError, ValueError):
                metadata = {}
        md = metadata
        labels, pre, prec = (md.get(ONNX_PREFIX + k) for k in ("labels", "preprocessing", "precision"))
    return FileInfo(
        labels=labels_from_meta(labels, num_classes) or sidecar_labels(p, num_classes),
        preprocessing=(preprocessing_from_meta(pre) if pre else None) or sidecar_preprocessing(p, input_hw),
        precision=str(prec or precision_from_name(p) or (guess() if guess else "unknown")),
        metadata=md,
    )


def sidecar_labels(path: Path, num_classes: int) -> list[str]:
    """Labels from ``labels.txt`` beside the model (or in the run folder above ``export/``), else ``class_i``."""
    for cand in (path.parent / "labels.txt", path.parent.parent / "labels.txt"):
        if cand.is_file():
            try:
                labels = [ln.strip() for ln in cand.read_text(encoding="utf-8").splitlines() if ln.strip()]
            except (OSError, UnicodeDecodeError):
                continue
            if not num_classes or len(labels) == num_classes:
                return labels
    return [f"class_{i}" for i in range(num_classes)]


def sidecar_preprocessing(path: Path, input_hw: tuple[Any, Any]) -> Preprocessing:
    """Preprocessing from ``export.json``/``config.json`` near the model, else from the input shape."""
    for cand in (path.parent / "export.json", path.parent / "config.json", path.parent.parent / "config.json"):
        if not cand.is_file():
            continue
        try:
            d = json.loads(cand.read_text(encoding="utf-8"))
            pre = Preprocessing.from_dict(d["preprocessing"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if all(isinstance(v, int) for v in input_hw) and tuple(pre.input_size) != tuple(input_hw):
            continue  # describes another model
        return pre
    h, w = input_hw
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ModelFileError(f"{path}: input size unknown (dynamic input shape and no edgetl metadata)")
    return Preprocessing(input_size=(h, w))


def preprocessing_from_meta(d: Any) -> Preprocessing | None:
    try:
        return Preprocessing.from_dict(json.loads(d) if isinstance(d, str) else d)
    except (ValueError, KeyError, TypeError):
        return None


def labels_from_meta(d: Any, num_classes: int) -> list[str] | None:
    try:
        labels = json.loads(d) if isinstance(d, str) else d
    except ValueError:
        return None
    if isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels) and (not num_classes or len(labels) == num_classes):
        return labels
    return None


def precision_from_name(path: Path) -> str | None:
    """``lite0_int8.tflite`` -> ``int8`` (the export naming scheme); None when the name says nothing."""
    from edgetl.formats import format_for_path  # data only (no TensorFlow): the naming table

    fmt = format_for_path(str(path))
    if fmt is not None:
        return fmt.precision
    m = _PRECISION_RE.search(path.stem)
    if not m:
        return None
    v = m.group(1).lower()
    return {"float32": "fp32", "float16": "fp16"}.get(v, v)
