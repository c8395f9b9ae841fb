"""``runner_for(path)``: the right runner for a run directory or a ``.keras``/``.tflite``/``.onnx`` file.

Only the runtime a file needs is imported: a ``.tflite`` or ``.onnx`` file never imports
TensorFlow, so ``predict`` and ``bench`` work on a device with the base install.

What a file says about itself (metadata, sidecar files, naming) is read by
:mod:`edgetl.runtime.fileinfo`, which imports no runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgetl.errors import ModelFileError
from edgetl.runtime.base import Runner
from edgetl.runtime.fileinfo import SUFFIXES, sidecar_labels, sidecar_preprocessing


def runner_for(path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
               runtime: str | None = None, **kwargs: Any) -> Runner:
    """Open ``path`` with the runtime its suffix calls for.

    Args:
        path: a run directory (its ``model.keras``), or a ``.keras``, ``.tflite`` or ``.onnx`` file.
        threads: CPU threads for LiteRT / ONNX Runtime (None: all usable cores, recorded explicitly).
        providers: ONNX Runtime execution providers (``cpu``, ``cuda``, ``tensorrt`` or full names);
            None: CPU plus CUDA/TensorRT when present.
        runtime: force a runtime (``litert``, ``litert-compiled``, ``onnxruntime``, ``openvino``,
            ``tensorflow``, ``mediapipe``: MediaPipe Tasks' ImageClassifier, which takes images, not pixels)
            instead of the suffix.
        **kwargs: passed to the runner (``use_gpu=True`` for LiteRT; ``device=`` for OpenVINO
            (cpu, gpu, npu, auto) and LiteRT's CompiledModel (cpu, gpu, npu); ``inference_precision=``
            for OpenVINO: ``f32`` by default, None for the device's own default, e.g. bf16).

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

        return OpenVINORunner(p, threads=threads, device=kwargs.get("device") or "cpu",
                              inference_precision=kwargs.get("inference_precision", "f32"))
    if kind in ("litert-compiled", "compiled"):
        from edgetl.runtime.litert_compiled import CompiledModelRunner

        return CompiledModelRunner(p, threads=threads, accelerator=kwargs.get("device") or "cpu")
    if kind == "mediapipe":
        from edgetl.runtime.mediapipe_runner import MediaPipeRunner

        return MediaPipeRunner(p)
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
