"""Export a run to TFLite and ONNX (float, float16, dynamic range, int8), each proven against the float model.

The public API is :func:`export_run` with an :class:`ExportConfig`; the format table
:data:`FORMATS` is shared with ``edgetl bench``. Importing this package is cheap:
TensorFlow, tf2onnx and ONNX Runtime load only when an export runs.
"""

from __future__ import annotations

from edgetl.formats import DEFAULT_FORMATS, FORMATS, INT8_FORMATS, ExportFormat, get_format, parse_formats

__all__ = [
    "DEFAULT_FORMATS", "FORMATS", "INT8_FORMATS", "ExportFormat", "get_format", "parse_formats",
    "ExportConfig", "ExportResult", "Artifact", "export_run",
]


def __getattr__(name: str):
    if name in ("ExportConfig", "ExportResult", "Artifact", "export_run"):
        from edgetl.export import api

        return getattr(api, name)
    raise AttributeError(name)
