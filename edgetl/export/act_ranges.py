"""Activation ranges chosen per tensor from a histogram (MSE or percentile) instead of the calibration min/max.

Both converters give every activation tensor the range [min, max] seen on the calibration images,
so one extreme value anywhere in the calibration set coarsens that tensor's step for every image.
Here each tensor's values are histogrammed over the calibration images and its range is chosen:

* ``mse``: the clipping range [lo, hi] (each end searched between 10 % and 100 % of the observed
  min / max) that minimises the expected quantization error of the tensor's values: rounding noise
  ``step^2 / 12`` for the values inside, the exact clipping error for the ones outside;
* ``percentile``: the 0.01 % and 99.99 % quantiles of the values (:data:`PERCENTILE`).

TFLite: the converter's calibration pass writes each activation tensor's min and max into a float
"calibrated" flatbuffer and its MLIR quantizer derives every scale and zero point from them (each
kernel computes its multipliers from the tensor scales when the model is prepared).
:func:`tflite_ranges` runs that calibrated model over the calibration images (the converter's own
representative dataset), histograms every recorded tensor and writes the chosen min / max back
before the quantizer runs. The input (its quantization carries the normalization) and the graph
outputs keep their ranges.

ONNX: :func:`onnx_ranges` histograms with ONNX Runtime's own collector (signed values, 2048 bins)
and hands the chosen ranges to ``quantize_static`` as a MinMax calibration cache.

``edgetl export`` uses :data:`AUTO`: percentile ranges in the TFLite file, min/max in the ONNX file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

#: range choices besides the converters' own min/max
METHODS = ("mse", "percentile")
BINS = 2048
#: two-sided percentile of :func:`percentile_range`
PERCENTILE = 99.99
#: fractions of the observed min / max that :func:`mse_range` tries for each end
FRACTIONS = np.linspace(0.1, 1.0, 46)
LEVELS = 256
#: what ``calib_method="auto"`` (the export default) means per converter: on 5 sign_digits feature-extraction
#: runs (3 ordinary, 2 low-margin) percentile ranges never lost an image against min/max in the TFLite file
#: and gained 12 of 1550 val and 11 of 1570 test images; in the ONNX file MSE ranges lost images on 4 of 5
#: runs and ORT's own Percentile did not help (README, "Activation ranges";
#: benchmarks/results/act_ranges_sign_digits_fe_20261205-233615-merged.md)
AUTO = {"tflite": "percentile", "onnx": "minmax"}


def resolve(calib_method: str, family: str) -> str:
    """The range method a converter family uses for ``calib_method`` (``auto`` -> :data:`AUTO`)."""
    return AUTO[family] if calib_method == "auto" else calib_method


def mse_range(hist: np.ndarray, edges: np.ndarray, levels: int = LEVELS) -> tuple[float, float]:
    """The [lo, hi] (lo <= 0 <= hi) minimising the expected squared quantization error of a histogram.

    Values inside the range cost ``step^2 / 12`` each (uniform rounding noise, ``step = (hi - lo) /
    (levels - 1)``), values outside cost their distance to the range end, squared (bin centres).
    The observed range (fraction 1 at both ends) is among the candidates, so the chosen range is
    never worse than min/max by this measure.
    """
    hist = np.asarray(hist, np.float64)
    edges = np.asarray(edges, np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    nz = hist > 0
    if not nz.any():
        return float(min(edges[0], 0.0)), float(max(edges[-1], 0.0))
    c, n = centres[nz], hist[nz]
    used = np.flatnonzero(nz)  # the occupied span (ORT's histograms are symmetric around 0)
    lo0, hi0 = min(float(edges[used[0]]), 0.0), max(float(edges[used[-1] + 1]), 0.0)
    los = FRACTIONS * lo0 if lo0 < 0 else np.zeros(1)
    his = FRACTIONS * hi0 if hi0 > 0 else np.zeros(1)
    best, best_err = (lo0, hi0), np.inf
    for lo in los:
        span = his - lo  # (K,)
        ok = span > 0
        if not ok.any():
            continue
        step = np.where(ok, span, 1.0) / (levels - 1)
        below = np.minimum(c[None, :] - lo, 0.0)                # (K, B) negative distances under lo
        above = np.maximum(c[None, :] - his[:, None], 0.0)      # over hi
        inside = (below == 0) & (above == 0)
        err = ((below ** 2 + above ** 2) * n).sum(1) + (inside * n).sum(1) * step ** 2 / 12
        err = np.where(ok, err, np.inf)
        k = int(np.argmin(err))
        if err[k] < best_err:
            best_err, best = err[k], (float(lo), float(his[k]))
    return best


def percentile_range(hist: np.ndarray, edges: np.ndarray, percentile: float = PERCENTILE) -> tuple[float, float]:
    """The ``100 - percentile`` and ``percentile`` quantiles of a histogram (bin edges), widened to hold 0."""
    hist = np.asarray(hist, np.float64)
    edges = np.asarray(edges, np.float64)
    total = hist.sum()
    if total <= 0:
        return float(min(edges[0], 0.0)), float(max(edges[-1], 0.0))
    cdf = np.cumsum(hist) / total
    tail = (100.0 - percentile) / 100.0
    lo = edges[int(np.searchsorted(cdf, tail, side="right"))]  # left edge of the bin where the tail ends
    hi = edges[int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1]
    return float(min(lo, 0.0)), float(max(hi, 0.0))


def choose_range(method: str, hist: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    if method == "mse":
        return mse_range(hist, edges)
    if method == "percentile":
        return percentile_range(hist, edges)
    raise ValueError(f"unknown activation range method {method!r}; valid: {', '.join(METHODS)}")


# --------------------------------------------------------------------------- TFLite


def _recorded(model: Any) -> dict[int, tuple[float, float]]:
    """Tensor index -> calibrated (min, max) of the activation tensors whose range may change."""
    sg = model.subgraphs[0]
    fixed = {int(i) for i in sg.inputs} | {int(i) for i in sg.outputs}
    out = {}
    for i, t in enumerate(sg.tensors):
        q = t.quantization
        if i in fixed or q is None or q.min is None or q.max is None or len(q.min) != 1 or len(q.max) != 1:
            continue
        lo, hi = float(q.min[0]), float(q.max[0])
        if hi > lo:
            out[i] = (lo, hi)
    return out


def tflite_histograms(calibrated: bytes, samples: Iterable[list[np.ndarray]], bins: int = BINS
                      ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, str]]:
    """(tensor index -> (counts, edges) over its calibrated [min, max], tensor index -> name), from the
    calibrated float model run over ``samples`` (what the converter's representative dataset yields)."""
    from tensorflow.lite.tools import flatbuffer_utils

    from edgetl.runtime.tflite_runner import _interpreter_class

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    ranges = _recorded(model)
    names = {i: model.subgraphs[0].tensors[i].name for i in ranges}
    names = {i: n.decode() if isinstance(n, bytes) else str(n) for i, n in names.items()}
    Interpreter, _ = _interpreter_class()
    it = Interpreter(model_content=bytes(calibrated), experimental_preserve_all_tensors=True, num_threads=None)
    inp = it.get_input_details()[0]["index"]
    counts = {i: np.zeros(bins, np.int64) for i in ranges}
    shape = None
    for sample in samples:
        x = np.asarray(sample[0], np.float32)
        if shape != x.shape:
            it.resize_tensor_input(inp, x.shape)
            it.allocate_tensors()
            shape = x.shape
        it.set_tensor(inp, x)
        it.invoke()
        for i, (lo, hi) in ranges.items():
            a = it.get_tensor(i).ravel()
            idx = np.clip(((a - lo) * (bins / (hi - lo))).astype(np.int64), 0, bins - 1)
            counts[i] += np.bincount(idx, minlength=bins)
    return {i: (counts[i], np.linspace(lo, hi, bins + 1)) for i, (lo, hi) in ranges.items()}, names


def rewrite_ranges(calibrated: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """The calibrated flatbuffer with the recorded min / max of the given tensors replaced."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    tensors = model.subgraphs[0].tensors
    for i, (lo, hi) in ranges.items():
        q = tensors[i].quantization
        q.min = np.array([lo], np.float32)
        q.max = np.array([hi], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite_ranges(calibrated: bytes, samples: Callable[[], Iterable[list[np.ndarray]]], method: str
                  ) -> tuple[bytes, dict[str, Any]]:
    """(calibrated flatbuffer with ``method``'s ranges, a summary): see the module doc."""
    hists, names = tflite_histograms(calibrated, samples())
    ranges, shrink = {}, []
    for i, (h, e) in hists.items():
        lo, hi = choose_range(method, h, e)
        ranges[i] = (lo, hi)
        shrink.append((hi - lo) / max(e[-1] - e[0], 1e-30))
    summary = {"method": method, "tensors": len(ranges),
               "median_range_fraction": round(float(np.median(shrink)), 4) if shrink else None,
               "min_range_fraction": round(float(np.min(shrink)), 4) if shrink else None}
    return rewrite_ranges(calibrated, ranges), summary


def representative_samples(converter: Any) -> Callable[[], Iterable[list[np.ndarray]]]:
    """The generator function of a converter's representative dataset (set directly or wrapped by TF)."""
    rd = converter.representative_dataset
    return getattr(rd, "input_gen", rd)


# --------------------------------------------------------------------------- ONNX


def onnx_ranges(method: str, src: Path, tmp: Path, reader_for: Callable[[np.ndarray], Any], calib_pixels: np.ndarray,
                chunk: int) -> tuple[Path, dict[str, Any]]:
    """A MinMax calibration cache (json, for ``quantize_static(calibration_cache_path=...)``) with ``method``'s
    ranges, from ONNX Runtime's signed-value histograms; and a summary."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization import calibrate as ort_calibrate

    cal = ort_calibrate.create_calibrator(
        Path(src), None, augmented_model_path=str(tmp / f"{method}_hist_augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": BINS, "num_quantized_bins": 128, "symmetric": False})
    for start in range(0, len(calib_pixels), chunk):
        cal.collect_data(reader_for(calib_pixels[start:start + chunk]))
    data, shrink = {}, []
    for name, entry in cal.collector.histogram_dict.items():
        hist, edges, vmin, vmax = entry[0], entry[1], float(entry[2]), float(entry[3])
        lo, hi = choose_range(method, hist, edges)
        lo, hi = max(lo, min(vmin, 0.0)), min(hi, max(vmax, 0.0))  # never wider than what was seen
        data[name] = (np.array(lo, np.float32), np.array(hi, np.float32))
        if vmax > vmin:
            shrink.append((hi - lo) / (max(vmax, 0.0) - min(vmin, 0.0)))
    path = tmp / f"{method}_ranges_minmax.json"
    ort_calibrate.save_tensors_data(ort_calibrate.TensorsData(CalibrationMethod.MinMax, data), path)
    summary = {"method": method, "tensors": len(data),
               "median_range_fraction": round(float(np.median(shrink)), 4) if shrink else None}
    return path, summary
