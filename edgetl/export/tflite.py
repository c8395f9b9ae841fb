"""Keras -> TFLite: float32, float16, dynamic range, full-integer int8 and int16x8.

The model takes pixels in [0, 255] with normalization in the graph, so full-integer
models get a uint8 input with scale 1 and zero point 0: raw image bytes go straight
in, exactly. When that normalization is itself exact on the int8 grid (EfficientNet-Lite's
``(x - 127) / 128``), edgetl takes it out of the graph first (:mod:`edgetl.export.ptq`) and the
uint8 input's quantization carries it (scale 1/128, zero point 127): still raw bytes in. To make the converter choose exactly that scale, the representative
dataset always spans the full pixel range (see :func:`representative_dataset`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgetl.errors import EdgetlError, first_line
from edgetl.quant import QuantizationConfig


def representative_dataset(pixels: np.ndarray, affine: Any = None) -> Callable[[], Iterator[list[np.ndarray]]]:
    """Calibration generator over uint8 (N, H, W, 3) images, yielded as float32 pixels [0, 255].

    One extra sample, a copy of the first image with one pixel at 0 and one at 255,
    pins the observed input range to exactly [0, 255] (-> uint8 input scale 1, zero point 0)
    even when no calibration image contains both a black and a white pixel.

    ``affine`` (:class:`edgetl.export.ptq.InputAffine`): the model takes normalized input
    (its normalization was moved into the input quantization); each sample is mapped
    through it, and the anchor then pins exactly the affine image of [0, 255].
    """
    x = np.asarray(pixels)

    def prep(a: np.ndarray) -> np.ndarray:
        return affine.apply(a) if affine is not None else a.astype(np.float32)

    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(len(x)):
            yield [prep(x[i : i + 1])]
        anchor = x[:1].astype(np.float32).copy()
        anchor[0, 0, 0, :] = 0.0
        anchor[0, 0, -1, :] = 255.0
        yield [prep(anchor)]

    return gen


def _converter(model: Any):
    import tensorflow as tf

    try:
        return tf.lite.TFLiteConverter.from_keras_model(model)
    except Exception:  # noqa: BLE001 - fall back to a concrete function (same graph)
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="image")
        fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
        return tf.lite.TFLiteConverter.from_concrete_functions([fn], model)


_TF_TYPES = {"uint8": "uint8", "int8": "int8", "float32": "float32"}


def convert(model: Any, quant: QuantizationConfig, calib_pixels: np.ndarray | None = None, affine: Any = None,
            calibrated: Callable[[Callable[[], Any]], bytes] | None = None) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer.

    Args:
        model: Keras model, float32 pixels [0, 255] -> probabilities.
        quant: what to do (``QuantizationConfig.for_int8()`` etc.); ``quant.float_nodes`` keeps
            those layers in float (through TFLite's quantization debugger).
        calib_pixels: uint8 (N, H, W, 3) training images, required for ``int8``/``int16x8``.
        affine: the pixel -> model-input map when the model's normalization was taken out
            of the graph (:func:`edgetl.export.ptq.split_input_normalization`), else None.
        calibrated: int8 only: returns the calibrated model for a converter factory (a cache, so
            that the int8 file, its per-layer report and the doctor's selections of float layers
            share one calibration pass).

    Raises:
        EdgetlError: calibration images missing, or the converter failed.
    """
    if quant.float_nodes and quant.mode != "int8":
        raise EdgetlError("layers can be kept in float only in an int8 TFLite model")
    if quant.mode == "int8" and (quant.float_nodes or calibrated):
        # calibrate (slow, cached by the caller) + MLIR quantization with the denylist (about 1 s)
        factory = lambda: converter_for(model, quant, calib_pixels, affine)  # noqa: E731
        raw = tflite_denylisted_model(factory, list(quant.float_nodes), affine=affine,
                                      calibrated=calibrated(factory) if calibrated else None)
        if quant.float_nodes or not float_op_outputs(raw):
            return raw
        # an op the int8 quantizer left in float: the converter's own path refuses or quantizes it
    conv = converter_for(model, quant, calib_pixels, affine)
    try:
        return bytes(conv.convert())
    except Exception as exc:  # noqa: BLE001 - converter errors are long MLIR dumps: keep one line
        first = first_line(exc, 300)
        raise EdgetlError(f"TFLite conversion ({quant.mode}) failed: {type(exc).__name__}: {first}") from None


def converter_for(model: Any, quant: QuantizationConfig, calib_pixels: np.ndarray | None = None,
                  affine: Any = None) -> Any:
    """A configured ``TFLiteConverter`` for ``quant`` (what :func:`convert` runs; the debugger reuses it)."""
    import tensorflow as tf

    conv = _converter(model)
    mode = quant.mode
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode in ("int8", "int16x8"):
        if calib_pixels is None or len(calib_pixels) == 0:
            raise EdgetlError(f"{mode} quantization needs calibration images and none were found")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative_dataset(calib_pixels, affine)
        if mode == "int8":
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if quant.io_type != "float32":
                dtype = getattr(tf, _TF_TYPES[quant.io_type])
                conv.inference_input_type = dtype
                conv.inference_output_type = dtype
        else:
            conv.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
    elif mode != "float32":
        raise EdgetlError(f"TFLite export does not support mode {mode!r}")
    return conv


def io_details(model_bytes: bytes) -> dict[str, Any]:
    """Input/output dtype and (scale, zero point) of a TFLite model, for export.json and checks."""
    from edgetl.runtime.tflite_runner import inspect_interpreter

    it = inspect_interpreter(model_bytes)
    i = it.get_input_details()[0]
    o = it.get_output_details()[0]
    return {
        "input_dtype": np.dtype(i["dtype"]).name,
        "input_quantization": [float(i["quantization"][0]), int(i["quantization"][1])],
        "output_dtype": np.dtype(o["dtype"]).name,
        "output_quantization": [float(o["quantization"][0]), int(o["quantization"][1])],
    }


# --------------------------------------------------------------------------- int8 with chosen layers in float
# (the quantization report, edgetl.export.quant_report, measures which ones; these build the model)


def _debug_converter(converter_factory: Callable[[], Any], calib_pixels: np.ndarray | None, affine: Any = None) -> Any:
    """A fresh converter from ``converter_factory`` with what the debugger needs added."""
    import tensorflow as tf

    conv = converter_factory()
    if calib_pixels is not None:
        if len(calib_pixels) == 0:
            raise EdgetlError("quantization report: calib_pixels is empty")
        conv.representative_dataset = representative_dataset(calib_pixels, affine)
    if not conv.optimizations or conv.representative_dataset is None:
        raise EdgetlError("quantization report: the converter is not set up for full-integer quantization "
                          "(optimizations and representative_dataset must be set)")
    # NumericVerify ops and denylisted layers stay float: with TFLITE_BUILTINS_INT8 alone the
    # converter would refuse them. Input/output types are left as the caller set them.
    ops = conv.target_spec.supported_ops
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if builtins not in ops:
        conv.target_spec.supported_ops = ({*ops, builtins} if isinstance(ops, (set, frozenset))
                                          else [*ops, builtins])
    return conv


def tflite_calibrated_model(converter_factory: Callable[[], Any], calib_pixels: np.ndarray | None = None,
                            affine: Any = None) -> bytes:
    """The calibrated float model (every tensor's range recorded, nothing quantized yet).

    The slow half of a full-int8 conversion (a pass over the calibration images); the other
    half, :func:`tflite_denylisted_model`'s MLIR quantization, takes about a second. Computed
    once, it serves every selection of float layers the doctor tries.
    """
    conv = _debug_converter(converter_factory, calib_pixels, affine)
    conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True  # noqa: SLF001 - what QuantizationDebugger does
    try:
        return bytes(conv.convert())
    except Exception as exc:  # noqa: BLE001 - converter errors are long MLIR dumps: keep one line
        first = first_line(exc, 300)
        raise EdgetlError(f"TFLite calibration failed: {type(exc).__name__}: {first}") from None


def tflite_denylisted_model(converter_factory: Callable[[], Any], nodes: Sequence[str], affine: Any = None,
                            calibrated: bytes | None = None) -> bytes:
    """Build the full-int8 TFLite model with the named layers kept in float.

    The usual fix once :func:`tflite_layer_report` has named the layers that add the error:
    everything else stays int8, the input/output types stay what the converter asked for
    (e.g. uint8 in and out for edgetl's int8 files).

    Args:
        converter_factory: as for :func:`tflite_layer_report`; its representative dataset calibrates.
        nodes: ``name`` values of :func:`tflite_layer_report` rows (empty: plain int8 model).
        affine: pixel -> model-input map of a model whose normalization is in its input
            quantization (:func:`edgetl.export.ptq.split_input_normalization`), else None.
        calibrated: :func:`tflite_calibrated_model` of the same factory, to skip the calibration pass.

    Returns:
        The ``.tflite`` flatbuffer.

    Raises:
        EdgetlError: conversion failed, or a name did not become a float layer (not a name
            from the report), or the input/output type could not be kept.
    """
    import tensorflow as tf

    conv = _debug_converter(converter_factory, None)
    nodes = list(nodes)
    if calibrated is None:
        calibrated = tflite_calibrated_model(converter_factory, None, affine)
    in_type = conv.inference_input_type or tf.float32
    out_type = conv.inference_output_type or tf.float32
    try:
        # The converter sets the IO types inside the same MLIR quantization call, so call it as the
        # converter does (rewriting IO afterwards falls back to float IO when a denylisted layer is
        # the first or the last one). With float IO this is QuantizationDebugger's non-debug model.
        from tensorflow.lite.python import convert as tf_convert

        model = tf_convert.mlir_quantize(
            calibrated,
            disable_per_channel=conv._experimental_disable_per_channel,  # noqa: SLF001
            input_data_type=in_type,
            output_data_type=out_type,
            denylisted_nodes=nodes or None,
            disable_per_channel_for_dense_layers=getattr(
                conv, "_experimental_disable_per_channel_quantization_for_dense_layers", False),
        )
    except Exception as exc:  # noqa: BLE001
        first = first_line(exc, 300)
        raise EdgetlError(f"TFLite quantization with denylisted nodes failed: {type(exc).__name__}: {first}") from None
    model = bytes(model)
    got = io_details(model)
    want = (np.dtype(in_type.as_numpy_dtype).name, np.dtype(out_type.as_numpy_dtype).name)
    if (got["input_dtype"], got["output_dtype"]) != want:
        raise EdgetlError(f"denylisted TFLite model has {got['input_dtype']}/{got['output_dtype']} input/output, "
                          f"the converter asked for {want[0]}/{want[1]}")
    floats = float_op_outputs(model)
    missing = [n for n in nodes if not _kept_float(n, floats)]
    if missing:
        raise EdgetlError(f"not kept in float (not a layer name from the report?): {', '.join(missing)}")
    return model


def float_op_outputs(model_bytes: bytes) -> dict[str, str]:
    """Output tensor name -> op name of every op of a TFLite model that computes in float32.

    Quantize/Dequantize ops are left out: they only convert. Used to check that a
    denylisted layer really is float in the file.
    """
    from edgetl.runtime.tflite_runner import inspect_interpreter

    it = inspect_interpreter(model_bytes)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    out: dict[str, str] = {}
    for op in it._get_ops_details():  # noqa: SLF001 - the only per-op view the interpreter offers
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        for i in op["outputs"]:
            if i >= 0 and np.dtype(tensors[i]["dtype"]) == np.float32:
                out[tensors[i]["name"]] = op["op_name"]
    return out


def _kept_float(name: str, float_outputs: dict[str, str]) -> bool:
    # The converter may add a digit to keep a tensor name unique (the debugger strips one).
    return any(t == name or (t.startswith(name) and t[len(name):].isdigit()) for t in float_outputs)
