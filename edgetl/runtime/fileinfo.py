"""What a model file says about itself, read without its runtime: edgetl's metadata, labels,
preprocessing and precision for ``.tflite`` and ``.onnx`` files, falling back to the sidecar files.

Runners on other runtimes (OpenVINO, LiteRT's CompiledModel) and ``bench`` read the same
contract as the LiteRT and ONNX Runtime runners, through :func:`file_info`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.preprocess import Preprocessing
from edgetl.runtime import loader


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


def file_info(path: str | Path, input_hw: tuple[Any, Any], num_classes: int) -> FileInfo:
    """Labels, preprocessing and precision of a ``.tflite`` or ``.onnx`` file: its embedded edgetl
    metadata first, then the sidecar files and the naming scheme (:mod:`edgetl.runtime.loader`)."""
    p = Path(path)
    if p.suffix.lower() == ".tflite":
        from edgetl.runtime.tflite_runner import read_tflite_metadata

        md = read_tflite_metadata(p)
        labels, pre, prec = md.get("labels"), md.get("preprocessing"), md.get("precision")
    else:
        try:
            md = onnx_metadata(p)
        except (OSError, ValueError):
            md = {}
        labels, pre, prec = md.get("edgetl.labels"), md.get("edgetl.preprocessing"), md.get("edgetl.precision")
    return FileInfo(
        labels=loader.labels_from_meta(labels, num_classes) or loader.sidecar_labels(p, num_classes),
        preprocessing=(loader.preprocessing_from_meta(pre) if pre else None) or loader.sidecar_preprocessing(p, input_hw),
        precision=str(prec or loader.precision_from_name(p) or "unknown"),
        metadata=md,
    )
