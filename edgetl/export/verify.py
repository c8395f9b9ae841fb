"""Prove each exported file against the float Keras model, with the file's own runtime.

TFLite files run in ai-edge-litert's ``Interpreter``, ONNX files in ONNX Runtime with
all graph optimizations on: the same engines a device uses, through the same runners as
``edgetl bench`` (:mod:`edgetl.runtime`), so export and bench cannot disagree on how a file is fed. Inputs are the uint8
pixels of :func:`edgetl.preprocess.prepare`; quantized inputs/outputs are converted
with the tensor's own scale and zero point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.errors import ModelFileError


@dataclass
class Verification:
    """How an artifact compares with the float model on the same images.

    Attributes:
        n: images compared.
        accuracy: top-1 accuracy of the artifact in percent (None without labels).
        agreement: percent of images where the artifact's top-1 equals the float model's.
        max_abs_diff: largest absolute difference of any class probability.
        mean_abs_diff: mean absolute difference over all probabilities.
    """

    n: int
    accuracy: float | None
    agreement: float
    max_abs_diff: float
    mean_abs_diff: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_tflite(model: str | Path | bytes, pixels: np.ndarray, threads: int | None = None, batch: int = 32) -> np.ndarray:
    """Probabilities (N, C) float32 from a TFLite model (path or bytes) on uint8 pixels (N, H, W, 3),
    via the bench's runner (:class:`~edgetl.runtime.tflite_runner.TFLiteRunner`)."""
    from edgetl.runtime.tflite_runner import TFLiteRunner

    return TFLiteRunner(model, threads=threads, max_batch=batch).predict(pixels)


def run_onnx(path: str | Path, pixels: np.ndarray, threads: int | None = None, exact_int8: bool = True) -> np.ndarray:
    """Probabilities (N, C) float32 from an ONNX model on uint8 pixels (N, H, W, 3), via the bench's runner.

    ``exact_int8=False`` opens the session with ONNX Runtime's defaults, as a user's own code would.
    """
    from edgetl.runtime.onnx_runner import OnnxRunner

    return OnnxRunner(path, threads=threads, providers=["cpu"], exact_int8=exact_int8).predict(pixels)


def run_file(path: str | Path, pixels: np.ndarray, threads: int | None = None, exact_int8: bool = True,
             progress: Callable[[int, int], None] | None = None, chunk: int = 64) -> np.ndarray:
    """Run a ``.tflite`` or ``.onnx`` file on uint8 pixels (``progress(done, total)`` after each ``chunk`` images)."""
    p = Path(path)
    if p.suffix not in (".tflite", ".onnx"):
        raise ModelFileError(f"{p}: not a .tflite or .onnx file")
    if progress is None or len(pixels) <= chunk:
        if p.suffix == ".tflite":
            return run_tflite(p, pixels, threads)
        return run_onnx(p, pixels, threads, exact_int8=exact_int8)
    if p.suffix == ".tflite":
        from edgetl.runtime.tflite_runner import TFLiteRunner

        runner: Any = TFLiteRunner(p, threads=threads, max_batch=32)
    else:
        from edgetl.runtime.onnx_runner import OnnxRunner

        runner = OnnxRunner(p, threads=threads, providers=["cpu"], exact_int8=exact_int8)
    out = []
    for start in range(0, len(pixels), chunk):
        out.append(runner.predict(pixels[start : start + chunk]))
        progress(min(start + chunk, len(pixels)), len(pixels))
    return np.concatenate(out)


def compare(probs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> Verification:
    """Agreement and probability differences between an artifact and the float model."""
    probs = np.asarray(probs, np.float32)
    reference = np.asarray(reference, np.float32)
    if probs.shape != reference.shape:
        raise ModelFileError(f"exported model outputs shape {probs.shape[1:]}, the Keras model {reference.shape[1:]}")
    n = len(probs)
    if n == 0:
        return Verification(0, None, 0.0, 0.0, 0.0)
    top = probs.argmax(-1)
    ref_top = reference.argmax(-1)
    diff = np.abs(probs - reference)
    acc = None if labels is None else float(100.0 * np.mean(top == np.asarray(labels)))
    return Verification(n, acc, float(100.0 * np.mean(top == ref_top)), float(diff.max()), float(diff.mean()))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(100.0 * np.mean(np.asarray(probs).argmax(-1) == np.asarray(labels))) if len(labels) else 0.0


#: a float prediction whose top-2 probability margin is below this is a near-tie (int8 noise can flip it)
LOW_MARGIN = 0.05


def low_margin(reference: np.ndarray, threshold: float = LOW_MARGIN) -> dict[str, Any] | None:
    """The float model's near-ties on the verification images: share (percent) and count of images whose
    top-2 probability margin is below ``threshold``; where int8 agreement is hardest to keep."""
    p = np.asarray(reference, np.float64)
    if p.ndim != 2 or len(p) == 0 or p.shape[1] < 2:
        return None
    top2 = np.sort(p, axis=1)[:, -2:]
    k = int(np.sum(top2[:, 1] - top2[:, 0] < threshold))
    return {"threshold": threshold, "images": int(len(p)), "low_margin": k, "share_pct": round(100 * k / len(p), 2)}
