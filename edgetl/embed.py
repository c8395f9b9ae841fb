"""The frozen part of the network as a batch function, on the fastest engine that reproduces it.

Feature extraction and cached-activation fine-tuning run the frozen base once per image view. On a
CPU, ONNX Runtime runs EfficientNet-Lite0 about 2x faster than TensorFlow's eager/graph executor
(measured on 2 cores at batch 32: ~210 vs ~110 images/s), so ``engine="auto"`` converts the frozen
extractor to ONNX in memory (tf2onnx, ~3 s) and runs it there, after checking on the first batch
that every output matches TensorFlow's. Any failure (conversion, session, or a mismatch) falls back
to TensorFlow with a logged reason, so the engine can only change the speed, never the numbers
beyond float32 rounding. With a GPU, TensorFlow runs it.
"""

from __future__ import annotations

from edgetl.errors import first_line, one_line

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

ENGINES = ("auto", "tensorflow", "onnxruntime")
# max |onnxruntime - tensorflow| allowed, relative to max(1, max |tensorflow|); measured ~1e-5.
TOLERANCE = 1e-3
CHECK_IMAGES = 8  # images of the first batch compared between the engines


@dataclass
class FrozenForward:
    """``run(batch) -> [outputs]`` (numpy, float32) and how it runs."""

    engine: str
    run: Callable[[np.ndarray], list[np.ndarray]]
    max_abs_diff: float | None = None
    convert_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    _pending_check: Callable[[np.ndarray], None] | None = None

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._pending_check is not None:
            check, self._pending_check = self._pending_check, None
            check(batch)
        return self.run(batch)

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "max_abs_diff_vs_tensorflow": self.max_abs_diff,
                "convert_seconds": self.convert_seconds, "notes": list(self.notes)}


def _tf_runner(model: Any) -> Callable[[np.ndarray], list[np.ndarray]]:
    import tensorflow as tf

    # A bare tf.function loop: ~1.4x the throughput of Keras predict() on 2 CPU cores (measured).
    @tf.function(reduce_retracing=True)
    def _fn(b: Any) -> Any:
        out = model(b, training=False)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return lambda b: [np.asarray(o, np.float32) for o in _fn(b)]


def _ort_session(model: Any, threads: int | None) -> tuple[Any, str]:
    from edgetl.export.onnx import convert
    from edgetl.runtime.onnx_runner import session

    proto = convert(model)
    # No busy-waiting between ops: with TensorFlow's threads in the same process (decoding,
    # augmentation) spinning cost up to half the throughput on 2 cores; without it Lite0 ran
    # ~210 vs ~155 images/s on clean batches (measured). A float graph: no int8 setting needed.
    sess = session(proto.SerializeToString(), threads, exact_int8=False, spinning=False)
    return sess, sess.get_inputs()[0].name


def frozen_forward(model: Any, engine: str = "auto", *, gpu: bool = False, threads: int | None = None) -> FrozenForward:
    """A batch function for the frozen Keras ``model`` (one input; one or more outputs).

    Args:
        model: the frozen extractor (inference only).
        engine: ``auto`` (ONNX Runtime without a GPU, else TensorFlow), ``tensorflow`` or ``onnxruntime``
            (ONNX Runtime on the CPU even with a GPU; still falls back when it cannot reproduce TF).
        gpu: whether TensorFlow sees a GPU.
        threads: ONNX Runtime intra-op threads (default: every core).
    """
    import time

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    tf_run = _tf_runner(model)
    if engine == "tensorflow" or (engine == "auto" and gpu):
        return FrozenForward("tensorflow", tf_run)
    t0 = time.perf_counter()
    try:
        sess, name = _ort_session(model, threads)
    except Exception as exc:  # noqa: BLE001 - any conversion or session failure keeps TensorFlow
        first = first_line(exc, 200)
        return FrozenForward("tensorflow", tf_run, notes=[f"onnxruntime unavailable ({type(exc).__name__}: {first}); "
                                                           "running the frozen base with TensorFlow"])
    fwd = FrozenForward("onnxruntime", lambda b: [np.asarray(o, np.float32) for o in sess.run(None, {name: np.asarray(b, np.float32)})],
                        convert_seconds=time.perf_counter() - t0)
    ort_run = fwd.run

    def check(batch: np.ndarray) -> None:
        """Compare every output on the first real images; switch to TensorFlow on any mismatch."""
        batch = np.asarray(batch[:CHECK_IMAGES], np.float32)
        out = model(batch, training=False)  # eager: no graph tracing for one small batch (~0.5 s for Lite0)
        ref = [np.asarray(o, np.float32) for o in (out if isinstance(out, (list, tuple)) else [out])]
        try:
            got = ort_run(batch)
        except Exception as exc:  # noqa: BLE001
            got, why = None, f"{one_line(exc, 200)}"
        else:
            # tf2onnx keeps the Keras output order (checked for tiny_cnn and Lite0 with a boundary
            # output); anything else is a mismatch and falls back like one.
            why = "" if [g.shape for g in got] == [r.shape for r in ref] else \
                f"output shapes {[g.shape for g in got]} != {[r.shape for r in ref]}"
        if got is not None and not why:
            diff = max(float(np.max(np.abs(g - r))) if r.size else 0.0 for g, r in zip(got, ref))
            scale = max([1.0] + [float(np.max(np.abs(r))) for r in ref if r.size])
            fwd.max_abs_diff = diff
            if diff <= TOLERANCE * scale:
                return
            why = f"max |difference| {diff:.3g} > {TOLERANCE:g} x {scale:.3g}"
        fwd.engine, fwd.run = "tensorflow", tf_run
        fwd.notes.append(f"onnxruntime does not reproduce TensorFlow on this model ({why}); running the frozen base with TensorFlow")

    fwd._pending_check = check
    return fwd
