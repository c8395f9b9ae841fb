"""``runner_for(path)``: the right runner for a run directory or a ``.keras``/``.tflite``/``.onnx`` file.

Only the runtime a file needs is imported: a ``.tflite`` or ``.onnx`` file never imports
TensorFlow, so ``predict`` and ``bench`` work on a device with the base install.

Also holds what the TFLite and ONNX runners share when a file carries no edgetl metadata:
labels from a sibling ``labels.txt`` (else ``class_0..``), preprocessing from a sibling
``export.json`` or the run's ``config.json`` (else the input tensor's size), precision
from the ``<backbone>_<precision>.<ext>`` file name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from edgetl.errors import ModelFileError
from edgetl.preprocess import Preprocessing
from edgetl.runtime.base import Runner

SUFFIXES = (".keras", ".tflite", ".onnx")
PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "uint8", "int16")

_PRECISION_RE = re.compile(r"_(fp32|fp16|float16|float32|dynamic|qat_int8|int16x8|int8|uint8|int16)$", re.I)


def runner_for(path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
               runtime: str | None = None, **kwargs: Any) -> Runner:
    """Open ``path`` with the runtime its suffix calls for.

    Args:
        path: a run directory (its ``model.keras``), or a ``.keras``, ``.tflite`` or ``.onnx`` file.
        threads: CPU threads for LiteRT / ONNX Runtime (None: all usable cores, recorded explicitly).
        providers: ONNX Runtime execution providers (``cpu``, ``cuda``, ``tensorrt`` or full names);
            None: CPU plus CUDA/TensorRT when present.
        runtime: force a runtime (``litert``, ``litert-compiled``, ``onnxruntime``, ``openvino``,
            ``tensorflow``) instead of the suffix.
        **kwargs: passed to the runner (``use_gpu=True`` for LiteRT; ``device=`` for OpenVINO
            (cpu, gpu, npu, auto) and LiteRT's CompiledModel (cpu, gpu, npu)).

    Raises:
        ModelFileError: missing, corrupt, truncated or unsupported file (one line).
        RuntimeUnavailableError: the runtime or a requested provider is not installed.
    """
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"model not found: {p}")
    if p.is_dir():
        from edgetl.run import MODEL_FILE, load_run

        if not (p / MODEL_FILE).is_file():
            found = sorted(q.name for q in p.iterdir() if q.suffix.lower() in SUFFIXES)
            hint = f"; model files here: {', '.join(found)}" if found else ""
            raise ModelFileError(f"{p} is not a run directory ({MODEL_FILE} is missing){hint}")
        info = load_run(p)
        from edgetl.runtime.keras_runner import KerasRunner

        return KerasRunner(info.load_model(), info.labels, info.preprocessing)
    kind = (runtime or {".tflite": "litert", ".onnx": "onnxruntime", ".keras": "tensorflow"}.get(p.suffix.lower(), "")).lower()
    if kind in ("litert", "tflite"):
        from edgetl.runtime.tflite_runner import TFLiteRunner

        return TFLiteRunner(p, threads=threads, **kwargs)
    if kind in ("onnxruntime", "onnx", "ort"):
        from edgetl.runtime.onnx_runner import OnnxRunner

        return OnnxRunner(p, threads=threads, providers=providers, **kwargs)
    if kind == "openvino":
        from edgetl.runtime.openvino_runner import OpenVINORunner

        return OpenVINORunner(p, threads=threads, device=kwargs.get("device") or "cpu")
    if kind in ("litert-compiled", "compiled"):
        from edgetl.runtime.litert_compiled import CompiledModelRunner

        return CompiledModelRunner(p, threads=threads, accelerator=kwargs.get("device") or "cpu")
    if kind in ("tensorflow", "keras"):
        return keras_file_runner(p)
    raise ModelFileError(f"{p}: unsupported model file type {p.suffix or '(no suffix)'!r}; expected a run directory or {', '.join(SUFFIXES)}")


def keras_file_runner(p: Path) -> Runner:
    """A bare ``.keras`` file: labels/preprocessing from the sibling run files when present."""
    from edgetl.runtime.keras_runner import KerasRunner, load_keras_model

    model = load_keras_model(p)
    shape = tuple(model.input_shape[1:3]) if getattr(model, "input_shape", None) else (None, None)
    pre = sidecar_preprocessing(p, shape)
    n = int(model.output_shape[-1]) if getattr(model, "output_shape", None) else 0
    return KerasRunner(model, sidecar_labels(p, n), pre)


# --------------------------------------------------------------------------- shared fallbacks


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
    try:  # the export format table is the source of truth for file names
        from edgetl.export.formats import format_for_path

        fmt = format_for_path(str(path))
        if fmt is not None:
            return fmt.precision
    except Exception:  # noqa: BLE001 - the table is optional here; fall back to the naming pattern
        pass
    m = _PRECISION_RE.search(path.stem)
    if not m:
        return None
    v = m.group(1).lower()
    return {"float32": "fp32", "float16": "fp16"}.get(v, v)
