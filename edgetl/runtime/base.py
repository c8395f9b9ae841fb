"""The small protocol every runner follows, whatever the file format.

A runner takes uint8 RGB pixels (N, H, W, 3) at the model's input size, exactly
as :func:`edgetl.preprocess.prepare` makes them, and returns float32 class
probabilities (N, C). Quantization of inputs and dequantization of outputs with
the tensor's own scale and zero point happen inside the runner.

One exception, marked ``input_kind = "images"``: a runner that is a deployment client doing its own
resize (MediaPipe Tasks) takes the original images (files or RGB arrays of any size) in ``predict``
and ``timer``; callers check ``getattr(runner, "input_kind", "pixels")``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from edgetl.preprocess import Preprocessing


class Runner(Protocol):
    format: str  # "keras", "tflite", "onnx"
    runtime: str  # "tensorflow", "litert", "litert-compiled", "onnxruntime", "openvino", "mediapipe"
    precision: str  # "fp32", "fp16", "dynamic", "int8", ...
    device: str  # "cpu", "gpu", "npu", "cuda", ...
    threads: int | None  # CPU threads in force (None: not a CPU setting)
    labels: list[str]
    preprocessing: Preprocessing

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 probabilities (N, C)."""
        ...

    def timer(self, pixels: np.ndarray) -> Callable[[], Any]:
        """Set ``pixels`` up as the input once; return the zero-argument call ``bench`` times."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a bench row records about how the file ran (runtime, threads, device, ...)."""
        ...


def default_threads() -> int:
    """Cores this process may run on (the affinity mask, not the machine's core count): the one rule
    every runtime uses when no thread count is given."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def as_batch(pixels: np.ndarray) -> np.ndarray:
    """One image (H, W, 3) or a batch (N, H, W, 3) as a batch. A decoded set (:class:`edgetl.pixels.PixelStore`
    or a view of one) is passed through as it is: runners slice it a batch at a time, never read it whole."""
    from edgetl.pixels import is_pixels

    if is_pixels(pixels):
        return pixels
    x = np.asarray(pixels)
    return x[None] if x.ndim == 3 else x


@dataclass
class TopK:
    file: str
    indices: list[int]
    labels: list[str]
    scores: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "indices": self.indices, "labels": self.labels, "scores": self.scores, **self.extra}


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[tuple[list[int], list[str], list[float]]]:
    """Top-k (indices, labels, scores) for each row of ``probs``."""
    k = max(1, min(k, probs.shape[-1]))
    out = []
    for row in probs:
        idx = np.argsort(-row, kind="stable")[:k]
        out.append(([int(i) for i in idx], [labels[i] if i < len(labels) else str(i) for i in idx], [float(row[i]) for i in idx]))
    return out
