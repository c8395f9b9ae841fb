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
        overflow = {}
        if quant.overflow_fix:
            # round-to-nearest weights have no pair budget: the 7-bit grid is the only safe one for them
            overflow = overflow_fix_options(onnx.load(str(src)), None if quant.rounding == "gptq" else "7bit")
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
                nodes_to_exclude=list(dict.fromkeys([*quant.float_nodes, *float_edges(onnx.load(str(src)))])) or None,
                extra_options=extra,
                **cache,
                **overflow,
            )
        except Exception as exc:  # noqa: BLE001
            raise EdgetlError(f"ONNX int8 quantization failed: {one_line(exc, 300)}") from None
        out = onnx.load(str(q8))
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
