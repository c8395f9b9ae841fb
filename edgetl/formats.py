"""The one table of export formats, read by ``edgetl export`` and ``edgetl bench``.

Each row is data only (no TensorFlow import): the exporter that makes a format is
picked by :attr:`ExportFormat.kind` in :mod:`edgetl.export.api`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from edgetl.errors import UsageError


@dataclass(frozen=True)
class ExportFormat:
    """One exportable artifact type.

    Attributes:
        name: CLI name (``--formats tflite_int8,onnx_fp32``).
        suffix: file suffix, ``.tflite`` or ``.onnx``.
        runtime: runtime that runs it (``litert`` or ``onnxruntime``).
        precision: short precision tag, also the file-name tag: ``<backbone>_<precision><suffix>``.
        description: one line for tables and ``--help``.
        quantized: weights (and maybe activations) are integers: held to ``--max-drop``.
        needs_calibration: the exporter needs training images (representative dataset).
        input_dtype: what the exported model takes by default (``float32`` pixels 0-255 or ``uint8``).
    """

    name: str
    suffix: str
    runtime: str
    precision: str
    description: str
    quantized: bool = False
    needs_calibration: bool = False
    input_dtype: str = "float32"

    @property
    def family(self) -> str:
        return "tflite" if self.suffix == ".tflite" else "onnx"

    def file_name(self, backbone: str) -> str:
        return f"{backbone}_{self.precision}{self.suffix}"


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("tflite_fp32", ".tflite", "litert", "fp32", "TFLite, float32 weights and activations"),
        ExportFormat("tflite_fp16", ".tflite", "litert", "fp16", "TFLite, float16 weights (dequantized to float32 at load)"),
        ExportFormat("tflite_dynamic", ".tflite", "litert", "dynamic", "TFLite, int8 weights, float activations (dynamic range, no calibration)", quantized=True),
        ExportFormat("tflite_int8", ".tflite", "litert", "int8", "TFLite, full-integer int8 (calibrated), uint8 image input by default", quantized=True, needs_calibration=True, input_dtype="uint8"),
        ExportFormat("tflite_int16x8", ".tflite", "litert", "int16x8", "TFLite, int16 activations + int8 weights (calibrated)", quantized=True, needs_calibration=True),
        ExportFormat("tflite_qat", ".tflite", "litert", "qat_int8", "TFLite, full-integer int8 after quantization-aware fine-tuning", quantized=True, needs_calibration=True, input_dtype="uint8"),
        ExportFormat("onnx_fp32", ".onnx", "onnxruntime", "fp32", "ONNX, float32"),
        ExportFormat("onnx_int8", ".onnx", "onnxruntime", "int8", "ONNX, QDQ int8 (static, per-channel weights, calibrated)", quantized=True, needs_calibration=True),
    )
}

#: What ``edgetl export`` writes without options.
DEFAULT_FORMATS: tuple[str, ...] = ("tflite_fp32", "onnx_fp32")
#: What ``--int8`` adds.
INT8_FORMATS: tuple[str, ...] = ("tflite_int8", "onnx_int8")


def get_format(name: str) -> ExportFormat:
    """Look a format up by name.

    Raises:
        UsageError: unknown name; the message lists the valid ones.
    """
    key = name.strip().lower()
    if key not in FORMATS:
        raise UsageError(f"unknown export format {name!r}; valid: {', '.join(FORMATS)}")
    return FORMATS[key]


def parse_formats(spec: str | Iterable[str]) -> list[ExportFormat]:
    """``"a,b"`` or ``["a", "b"]`` -> formats in table order, duplicates removed."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() for s in items if s and s.strip()]
    if not names:
        raise UsageError(f"--formats is empty; valid: {', '.join(FORMATS)}")
    chosen = {get_format(n).name for n in names}
    return [f for f in FORMATS.values() if f.name in chosen]


def format_for_path(path: str) -> ExportFormat | None:
    """Best guess of the format of an exported file from its name (``lite0_int8.tflite``)."""
    from pathlib import Path

    p = Path(path)
    for f in sorted(FORMATS.values(), key=lambda g: -len(g.precision)):  # "qat_int8" before "int8"
        if p.suffix == f.suffix and p.stem.endswith("_" + f.precision):
            return f
    return None
