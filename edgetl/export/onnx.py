"""Keras -> ONNX (tf2onnx), and static int8 quantization with ONNX Runtime (QDQ).

The ONNX models keep the Keras input contract: float32 RGB pixels [0, 255], NHWC,
input named ``image``, dynamic batch; the int8 model quantizes internally (QDQ).

The int8 layout is chosen so that runtimes fuse every Q/DQ pair into an int8 kernel (see
:data:`ACTIVATION_TYPE`): uint8 activations, int8 per-channel weights, float input
normalization and float softmax at the two ends.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import EdgetlError, first_line, one_line
from edgetl.quant import QuantizationConfig

DEFAULT_OPSET = 17
INPUT_NAME = "image"


def convert(model: Any, opset: int = DEFAULT_OPSET) -> Any:
    """Keras model -> ``onnx.ModelProto`` (float32), checked with ``onnx.checker``.

    Raises:
        EdgetlError: tf2onnx failed both from the Keras model and from a concrete function.
    """
    import tensorflow as tf
    import tf2onnx

    h, w = model.input_shape[1:3]
    spec = [tf.TensorSpec((None, h, w, 3), tf.float32, name=INPUT_NAME)]
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    except Exception as first:  # noqa: BLE001 - retry through a plain tf.function
        try:
            fn = tf.function(lambda image: model(image, training=False), input_signature=spec)
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
        except Exception as exc:  # noqa: BLE001
            raise EdgetlError(
                f"ONNX conversion failed: {one_line(first, 200)}; "
                f"retry via tf.function: {one_line(exc, 200)}"
            ) from None
    check(proto)
    return proto


def check(proto: Any) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001
        raise EdgetlError(f"exported ONNX model fails onnx.checker: {first_line(exc, 300)}") from None


class _Reader:
    """onnxruntime CalibrationDataReader over uint8 images (fed as float32 pixels)."""

    def __init__(self, input_name: str, pixels: np.ndarray):
        self.input_name = input_name
        self.pixels = pixels
        self.i = 0

    def get_next(self):
        if self.i >= len(self.pixels):
            return None
        x = self.pixels[self.i : self.i + 1].astype(np.float32)
        self.i += 1
        return {self.input_name: x}

    def rewind(self) -> None:
        self.i = 0


_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "mse": "MinMax"}

#: Histogram bins for Entropy (KL) calibration, as TensorRT's calibrator uses: 2048 bins searched for
#: the 128-bin window that loses the least information. ONNX Runtime's ``quantize_static`` uses 128
#: and 128, which leaves one candidate threshold (the full range): measured, its "Entropy" model was
#: byte-identical to MinMax. ORT has no option for the bins, so edgetl calibrates and hands the
#: ranges over through ``calibration_cache_path``.
ENTROPY_BINS = (2048, 128)
PERCENTILE = 99.999
#: Images per histogram update. ORT's histogram calibrators keep every intermediate tensor of every
#: image until ``collect_data`` returns: ~40 MB per 224 px Lite0 image, 12 GB for 300 images (seen).
HISTOGRAM_CHUNK = 8


def _histogram_ranges(method: str, src: Path, tmp: Path, input_name: str, calib_pixels: np.ndarray,
                      notes: list[str]) -> dict[str, Any]:
    """Entropy or Percentile ranges, collected in chunks, as ``quantize_static`` keyword arguments ({} = ORT's own)."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization import calibrate as ort_calibrate

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters or not hasattr(ort_calibrate, "save_tensors_data"):
        notes.append(f"this onnxruntime cannot take calibration ranges: {method} calibration ran inside quantize_static")
        return {}
    if method == "entropy":
        extra = {"num_bins": ENTROPY_BINS[0], "num_quantized_bins": ENTROPY_BINS[1], "symmetric": False}
    else:
        extra = {"num_bins": 2048, "percentile": PERCENTILE, "symmetric": True}
    cal = ort_calibrate.create_calibrator(
        Path(src), None, augmented_model_path=str(tmp / f"{method}_augmented.onnx"),
        calibrate_method=getattr(CalibrationMethod, _METHODS[method]), extra_options=extra)
    for start in range(0, len(calib_pixels), HISTOGRAM_CHUNK):
        cal.collect_data(_Reader(input_name, calib_pixels[start:start + HISTOGRAM_CHUNK]))
    path = tmp / f"{method}_ranges.json"
    ort_calibrate.save_tensors_data(cal.compute_data(), path)
    return {"calibration_cache_path": str(path)}


#: Activations uint8 (asymmetric), weights int8 (symmetric, per channel): "U8S8", the layout x86
#: int8 kernels take (``vpdpbusd``/AMX multiply unsigned by signed bytes) and the one ONNX Runtime's
#: quantizer recommends for x86. With int8 activations ("S8S8", edgetl before) ORT on x86 first
#: rewrites each int8 Q/DQ pair to uint8, but only where the QuantizeLinear has one consumer: in
#: EfficientNet-Lite0 the 14 convs behind a residual branch point then stayed float between DQ and
#: Q (35 of 49 fused, 29 layout transposes), and OpenVINO's CPU plugin refused the S8S8 file
#: ("No suitable implementations") while it compiles the U8S8 one with every conv on u8 kernels.
#: Agreement with the float model was the same for both (measured on sign_digits val+test).
ACTIVATION_TYPE = "QUInt8"
WEIGHT_TYPE = "QInt8"
#: elementwise ops of an input normalization (``x * a + b`` on the raw pixels) kept in float
_AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def float_edges(proto: Any) -> list[str]:
    """Names of the nodes at the two ends of the graph that stay float in the int8 file.

    * the input normalization: the chain of Mul/Add/Sub/Div with a constant operand that the
      graph input flows through before the first other op (quantizing it would put an int8
      Mul and Add on raw pixels; in float it is one cheap pass and the first QuantizeLinear
      lands on the normalized tensor, where the first conv reads it);
    * Softmax ops that produce a graph output (the file's scores stay float probabilities,
      not uint8 steps of 1/255 in which near-tied classes tie).
    """
    consts = {t.name for t in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    names: list[str] = []
    tensor = proto.graph.input[0].name if proto.graph.input else None
    while tensor is not None:
        nxt = consumers.get(tensor, [])
        if len(nxt) != 1 or nxt[0].op_type not in _AFFINE_OPS or len(nxt[0].input) != 2:
            break
        node = nxt[0]
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        if other not in consts:
            break
        names.append(node.name)
        tensor = node.output[0]
    outputs = {o.name for o in proto.graph.output}
    names += [n.name for n in proto.graph.node if n.op_type == "Softmax" and set(n.output) & outputs]
    return [n for n in names if n]


def overflow_fix_options(proto: Any, mode: str | None = None) -> dict[str, Any]:
    """``quantize_static`` arguments for :attr:`QuantizationConfig.overflow_fix`.

    The Keras model was GPTQ-rounded onto the grids of :func:`edgetl.export.ptq.overflow_grid`, with the
    largest weight of each channel kept, so ORT finds the same scales and re-rounds nothing. Weights
    that grid puts on 7 bits get ORT's ``reduce_range`` ([-64, 64], ``scale = max|w| / 64``) by a
    per-tensor override: the convolutions that are neither 1x1 nor depthwise in ``pairs`` mode (1x1
    and dense weights stay 8-bit, their pairs kept within budget by GPTQ); every convolution but the
    depthwise ones, and the dense weights, in ``7bit`` mode. Activations are never reduced.
    """
    from edgetl.export import ptq

    mode = mode or ptq.OVERFLOW_MODE
    consts = {t.name for t in proto.graph.initializer}
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    if mode == "7bit":  # everything on 7 bits but the depthwise weights
        depthwise = [n.input[1] for n in proto.graph.node
                     if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in consts
                     and next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
        overrides = {name: [{"axis": 0, "reduce_range": False}] for name in depthwise}
        return {"reduce_range": True, "extra_options": {"TensorQuantOverrides": overrides} if overrides else {}}
    seven = [n.input[1] for n in proto.graph.node
             if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in consts
             and next((a.i for a in n.attribute if a.name == "group"), 1) == 1
             and len(shapes[n.input[1]]) == 4 and shapes[n.input[1]][2:] != [1, 1]]
    overrides = {name: [{"axis": 0, "reduce_range": True}] for name in seven}
    return {"reduce_range": False, "extra_options": {"TensorQuantOverrides": overrides} if overrides else {}}


def _weight_dqs(proto: Any) -> list[tuple[Any, Any, str]]:
    """(DequantizeLinear of an int8 weight, its consumer, kind) for every conv / dense weight:
    kind ``depthwise``, ``conv1x1``, ``conv`` (kxk) or ``dense`` (Gemm / MatMul)."""
    from onnx import TensorProto

    inits = {t.name: t for t in proto.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = []
    for n in proto.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits or inits[n.input[0]].data_type != TensorProto.INT8:
            continue
        for c in consumers.get(n.output[0], []):
            if c.op_type == "Conv" and len(c.input) > 1 and c.input[1] == n.output[0]:
                group = next((a.i for a in c.attribute if a.name == "group"), 1)
                dims = list(inits[n.input[0]].dims)
                kind = "depthwise" if group > 1 else ("conv1x1" if dims[2:] in ([1, 1], []) else "conv")
            elif c.op_type in ("Gemm", "MatMul") and len(c.input) > 1 and c.input[1] == n.output[0]:
                kind = "dense"
            else:
                continue
            out.append((n, c, kind))
    return out


def _k_axis(consumer: Any, kind: str) -> int:
    """The axis of a weight along which a GEMM kernel reduces (input channels / features)."""
    if kind == "dense":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0) if consumer.op_type == "Gemm" else 0
        return 1 if trans_b else 0
    return 1  # Conv (O, I, kh, kw)


def overflow_violations(proto: Any) -> list[str]:
    """The conv / dense weights of an int8 QDQ model that a ``vpmaddubsw`` kernel could saturate on:
    a pair of adjacent input channels (per tap) with ``|q1| + |q2| > 128`` (1x1 convs, dense), or any
    ``|q| > 64`` (other non-depthwise convs, whose im2col order pairs differently per runtime).
    Empty: the file is exact on every x86 int8 kernel (see :func:`edgetl.export.ptq.overflow_grid`)."""
    from onnx import numpy_helper

    from edgetl.export.ptq import PAIR_MAX, QMAX_7BIT

    inits = {t.name: t for t in proto.graph.initializer}
    bad = []
    for dq, c, kind in _weight_dqs(proto):
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int64)
        if kind == "depthwise":
            continue
        if kind == "conv":
            if np.abs(q).max() > QMAX_7BIT:
                bad.append(c.name)
            continue
        a = np.abs(np.moveaxis(q, _k_axis(c, kind), -1))
        d = a.shape[-1] // 2 * 2
        if d and (a[..., 0:d:2] + a[..., 1:d:2]).max() > PAIR_MAX:
            bad.append(c.name)
    return bad


def _clamp_pairs(qc: np.ndarray) -> int:
    """Last resort of :func:`_regrid`, in place: cut any pair of adjacent columns of ``qc`` (channels,
    input channels) still over the budget by lowering its smaller member (degenerate channels whose
    float weights were on no grid). Returns the pairs cut."""
    from edgetl.export.ptq import PAIR_MAX

    d = qc.shape[1] // 2 * 2
    if not d:
        return 0
    x, y = qc[:, 0:d:2], qc[:, 1:d:2]
    over = np.abs(x) + np.abs(y) - PAIR_MAX
    hit = over > 0
    if hit.any():
        small_x = np.abs(x) <= np.abs(y)
        qc[:, 0:d:2] = np.where(hit & small_x, np.sign(x) * (np.abs(x) - over), x)
        qc[:, 1:d:2] = np.where(hit & ~small_x, np.sign(y) * (np.abs(y) - over), y)
    return int(hit.sum())


def _regrid(out: Any, src: Any) -> tuple[int, int]:
    """Put each 1x1 conv / dense weight of the quantized ``out`` back on the per-channel grid GPTQ chose.

    ORT's quantizer rounds every weight with ``scale = max|w| / 127``. The adaptive overflow grid
    (:func:`edgetl.export.ptq.pair_qmax`) rounded some channels onto ``max|w| / k`` with k < 127: the
    float weights in ``src`` are exact multiples of that step, so k is found per channel (the smallest
    in 64..127 on which they all are integers: the same values, the safest steps) and the int8 values are recomputed from the float ones,
    exactly GPTQ's integers. The bias (int32 at input scale x weight scale) is rescaled with the weight
    scale so that ORT still fuses the triple into one int8 kernel. Returns (channels regridded, pairs
    clamped by :func:`_clamp_pairs`)."""
    from onnx import numpy_helper

    from edgetl.export.ptq import QMAX, QMAX_7BIT

    floats = {t.name: t for t in src.graph.initializer}
    inits = {t.name: t for t in out.graph.initializer}
    producer = {o: n for n in out.graph.node for o in n.output}
    changed = clamped = 0
    for dq, c, kind in _weight_dqs(out):
        if kind not in ("conv1x1", "dense"):
            continue
        name = dq.input[0][: -len("_quantized")] if dq.input[0].endswith("_quantized") else None
        if name not in floats or len(dq.input) < 2 or dq.input[1] not in inits:
            continue
        w = numpy_helper.to_array(floats[name]).astype(np.float64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if scale.ndim != 1 or w.ndim < 2 or w.shape[axis] != scale.shape[0]:
            continue
        wc = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        amax = np.abs(wc).max(axis=1)
        live = amax > 0
        safe_amax = np.where(live, amax, 1.0)
        ks = np.zeros(len(amax), np.int64)  # the smallest grid (fewest steps) the weights lie on exactly
        for k in range(QMAX_7BIT, QMAX + 1):
            steps = wc * (k / safe_amax)[:, None]
            fits = (np.abs(steps - np.round(steps)).max(axis=1) < 1e-3) & (ks == 0)
            ks[fits] = k
        lost = live & (ks == 0)  # on no grid (degenerate channels): the finest grid its pairs allow
        if lost.any():
            from edgetl.export.ptq import pair_qmax

            ks[lost] = pair_qmax(wc[lost])  # wc: (channels, input channels) for 1x1 conv and dense alike
        ks[~live] = QMAX
        new_scale = np.where(live, amax / ks, scale)
        qc = np.clip(np.round(wc / new_scale[:, None]), -QMAX, QMAX)
        cut = _clamp_pairs(qc)
        if np.all(ks == QMAX) and not cut:
            continue  # ORT's own 8-bit values are GPTQ's already
        clamped += cut
        q = np.moveaxis(qc.reshape(np.moveaxis(w, axis, 0).shape), 0, axis).astype(np.int8)
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(q, dq.input[0]))
        inits[dq.input[1]].CopyFrom(numpy_helper.from_array(new_scale.astype(np.float32), dq.input[1]))
        bias_dq = producer.get(c.input[2]) if len(c.input) > 2 else None
        if bias_dq is not None and bias_dq.op_type == "DequantizeLinear" and bias_dq.input[0] in inits:
            qb = numpy_helper.to_array(inits[bias_dq.input[0]]).astype(np.float64)
            sb = numpy_helper.to_array(inits[bias_dq.input[1]]).astype(np.float64)
            sb2 = sb * (new_scale / scale)
            inits[bias_dq.input[0]].CopyFrom(numpy_helper.from_array(np.round(qb * sb / sb2).astype(np.int32), bias_dq.input[0]))
            inits[bias_dq.input[1]].CopyFrom(numpy_helper.from_array(sb2.astype(np.float32), bias_dq.input[1]))
        changed += int(np.sum(ks != QMAX))
    return changed, clamped


def quantize(proto: Any, calib_pixels: np.ndarray, quant: QuantizationConfig) -> tuple[Any, list[str]]:
    """Static QDQ int8 quantization (per-channel weights by default), calibrated on ``calib_pixels``.

    Runs ``quant_pre_process`` (shape inference + graph optimization) first; if that fails the
    float model is quantized as it is and a note says so.

    Returns:
        (quantized ``onnx.ModelProto``, notes)
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calib_pixels is None or len(calib_pixels) == 0:
        raise EdgetlError("int8 ONNX quantization needs calibration images and none were found")
    notes: list[str] = []
    input_name = proto.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="edgetl-onnx-") as tmp:
        f32 = Path(tmp) / "fp32.onnx"
        pre = Path(tmp) / "fp32_pre.onnx"
        q8 = Path(tmp) / "int8.onnx"
        onnx.save(proto, str(f32))
        src = f32
        try:
            quant_pre_process(str(f32), str(pre), skip_symbolic_shape=False)
            src = pre
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimization, not a requirement
            notes.append(f"quant_pre_process failed ({type(exc).__name__}); quantized the plain float graph")
        extra = {}
        from edgetl.export.act_ranges import resolve

        method = resolve(quant.calib_method, "onnx")
        if method == "percentile":
            extra["CalibPercentile"] = PERCENTILE
        cache: dict[str, Any] = {}
        if method in ("entropy", "percentile"):
            cache = _histogram_ranges(method, src, Path(tmp), input_name, calib_pixels, notes)
        elif method == "mse":  # edgetl's per-tensor choice from ORT's histograms, as a MinMax cache
            from edgetl.export import act_ranges

            path, summary = act_ranges.onnx_ranges("mse", src, Path(tmp), lambda px: _Reader(input_name, px),
                                                   calib_pixels, HISTOGRAM_CHUNK)
            cache = {"calibration_cache_path": str(path)}
            notes.append(f"activation ranges: mse per tensor ({summary['tensors']} tensors, median range "
                         f"{summary['median_range_fraction']:.2f} of min/max)")
        src_proto = onnx.load(str(src))  # the float graph ORT quantizes, read once for the steps below
        overflow = {}
        if quant.overflow_fix:
            mode = None if quant.rounding == "gptq" else "7bit"  # nearest-rounded weights have no pair budget
            overflow = overflow_fix_options(src_proto, mode)
            extra = {**extra, **overflow.pop("extra_options")}
        try:
            quantize_static(
                str(src),
                str(q8),
                _Reader(input_name, calib_pixels),
                quant_format=QuantFormat.QDQ,
                per_channel=quant.per_channel,
                activation_type=getattr(QuantType, ACTIVATION_TYPE),
                weight_type=getattr(QuantType, WEIGHT_TYPE),
                calibrate_method=getattr(CalibrationMethod, _METHODS[method]),
                nodes_to_exclude=list(dict.fromkeys([*quant.float_nodes, *float_edges(src_proto)])) or None,
                extra_options=extra,
                **cache,
                **overflow,
            )
        except Exception as exc:  # noqa: BLE001
            raise EdgetlError(f"ONNX int8 quantization failed: {one_line(exc, 300)}") from None
        out = onnx.load(str(q8))
        if quant.overflow_fix:
            from edgetl.export import ptq

            if (mode or ptq.OVERFLOW_MODE) == "adaptive":
                n, clamped = _regrid(out, src_proto)
                notes.append(f"overflow fix: {n} 1x1 conv/dense channels on their own grid (64-127 steps)"
                             + (f", {clamped} pairs of degenerate channels clamped" if clamped else ""))
    check(out)
    notes.append(_kernel_note(out))
    return out, notes


def _kernel_note(proto: Any) -> str:
    """Which kernels ONNX Runtime runs for the int8 file on this CPU (a note; "unknown" if it cannot tell)."""
    from edgetl.runtime.onnx_runner import kernel_counts, kernel_summary

    try:
        return kernel_summary(kernel_counts(proto.SerializeToString()))
    except Exception:  # noqa: BLE001 - informative only
        return "ORT kernels: unknown (no optimized graph to read)"
