"""Runs ``.tflite`` files with LiteRT (``ai_edge_litert``), never TensorFlow.

XNNPACK is LiteRT's default CPU delegate; the thread count is always passed explicitly.
Quantized inputs are quantized and outputs dequantized with each tensor's own scale and
zero point, so uint8-IO, int8-IO and float-IO (int8 inside) models all take uint8 pixels
and return float32 probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.errors import ModelFileError, first_line
from edgetl.preprocess import Preprocessing
from edgetl.runtime.base import as_batch, default_threads
from edgetl.runtime.env import RuntimeUnavailableError
from edgetl.runtime.fileinfo import file_info, read_edgetl_json

TFLITE_IDENTIFIER = b"TFL3"


def feed_pixels(pixels: np.ndarray, dtype: Any, quantization: tuple[float, int]) -> np.ndarray:
    """uint8 pixels (N, H, W, 3) -> what a TFLite input of ``dtype`` / ``(scale, zero point)`` takes.

    float inputs get the pixels as floats; a uint8 input gets the raw pixel bytes (MediaPipe's
    convention; edgetl's int8 files either have scale 1 / zero point 0 or carry the normalization
    in their input quantization, e.g. 1/128 and 127); other integer inputs are quantized with the
    tensor's own scale and zero point. The one rule the runner and export verification share.
    """
    x = np.asarray(pixels)
    dt = np.dtype(dtype)
    if dt == np.float32 or dt == np.float16:
        return x.astype(dt, copy=False)
    scale, zp = quantization
    if scale and dt != np.uint8:
        q = np.round(x.astype(np.float32) / scale + zp)
        info = np.iinfo(dt)
        return np.clip(q, info.min, info.max).astype(dt)
    return x.astype(dt)


def check_tflite_file(p: Path) -> None:
    """Cheap checks before handing the file to LiteRT: exists, non-empty, TFLite flatbuffer identifier."""
    if not p.is_file():
        raise ModelFileError(f"model file not found: {p}")
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(8)
    if size < 16 or head[4:8] != TFLITE_IDENTIFIER:
        what = "empty" if size == 0 else ("an ONNX/protobuf or other file" if head[4:8] != TFLITE_IDENTIFIER else "too short")
        raise ModelFileError(f"{p}: not a TFLite model ({what}; no 'TFL3' flatbuffer identifier)")


def io_details(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input and first output tensor details (dtype, shape, quantization) of a ``.tflite`` file,
    read with LiteRT without allocating tensors: for runners on other runtimes (OpenVINO, LiteRT's
    CompiledModel) that take the file's quantized inputs and outputs as they are."""
    Interpreter, _ = _interpreter_class()
    try:
        it = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as exc:
        first = first_line(exc, 200)
        raise ModelFileError(f"{path}: LiteRT cannot read this model (truncated or corrupt?): {first}") from None
    return it.get_input_details()[0], it.get_output_details()[0]


def dequantize(y: np.ndarray, dtype: Any, quantization: tuple[float, int]) -> np.ndarray:
    """A TFLite output as float32: integer outputs with the tensor's own scale and zero point."""
    if np.dtype(dtype) in (np.uint8, np.int8, np.int16):
        scale, zp = quantization
        return ((y.astype(np.float32) - zp) * (scale or 1.0)).astype(np.float32)
    return np.asarray(y).astype(np.float32, copy=False)


def inspect_interpreter(model_bytes: bytes) -> Any:
    """A LiteRT ``Interpreter`` over a model's bytes, not allocated: for reading tensor and op details
    (export checks), not for running."""
    Interpreter, _ = _interpreter_class()
    try:
        return Interpreter(model_content=bytes(model_bytes))
    except (ValueError, RuntimeError) as exc:
        first = first_line(exc, 200)
        raise ModelFileError(f"LiteRT cannot read this model: {first}") from None


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate
    except Exception as exc:  # noqa: BLE001 - any import failure means the runtime is unavailable
        raise RuntimeUnavailableError(f"ai-edge-litert is not installed or not importable ({type(exc).__name__}: {exc})") from None
    return Interpreter, load_delegate


class TFLiteRunner:
    """A ``.tflite`` file behind the :class:`~edgetl.runtime.base.Runner` protocol."""

    format = "tflite"
    runtime = "litert"

    def __init__(self, path: str | Path | bytes, threads: int | None = None, use_gpu: bool = False, max_batch: int = 32):
        """``path``: a ``.tflite`` file, or a model's bytes (export verification before a file exists;
        labels and preprocessing then come from the embedded metadata or the input shape only)."""
        content = bytes(path) if isinstance(path, (bytes, bytearray)) else None
        self.path = Path("<memory>.tflite") if content is not None else Path(path)
        if content is None:
            check_tflite_file(self.path)
        elif len(content) < 16 or content[4:8] != TFLITE_IDENTIFIER:
            raise ModelFileError("not a TFLite model (no 'TFL3' flatbuffer identifier)")
        Interpreter, _ = _interpreter_class()
        self.threads = int(threads) if threads else default_threads()
        delegates = []
        self.device = "cpu"
        self.delegate = "xnnpack"
        if use_gpu:
            from edgetl.runtime.env import load_gpu_delegate

            delegates.append(load_gpu_delegate())
            self.device, self.delegate = "gpu", "gpu"
        try:
            source = {"model_content": content} if content is not None else {"model_path": str(self.path)}
            self.interpreter = Interpreter(**source, num_threads=self.threads, experimental_delegates=delegates or None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = first_line(exc, 200)
            raise ModelFileError(f"{self.path}: LiteRT cannot load this model (truncated or corrupt?): {first}") from None
        ins = self.interpreter.get_input_details()
        outs = self.interpreter.get_output_details()
        if len(ins) != 1 or len(outs) < 1:
            raise ModelFileError(f"{self.path}: expected one image input, found {len(ins)} input(s)")
        self._in = ins[0]
        self._out = outs[0]
        shape = [int(v) for v in self._in["shape"]]
        sig = [int(v) for v in self._in.get("shape_signature", self._in["shape"])]
        if len(shape) != 4 or shape[-1] != 3:
            raise ModelFileError(f"{self.path}: expected an NHWC RGB input, found shape {shape}")
        self.dynamic_batch = sig[0] == -1
        self.max_batch = max_batch
        self._batch = shape[0]
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        self.num_classes = int(self._out["shape"][-1])
        info = file_info(self.path, (shape[1], shape[2]), self.num_classes,
                         metadata=read_edgetl_json(content) if content is not None else None, guess=self._guess_precision)
        self.metadata = info.metadata
        self.labels = info.labels
        self.preprocessing: Preprocessing = info.preprocessing
        self.precision = info.precision
        self.io_type = self.input_dtype.name

    # ------------------------------------------------------------------ internals

    def _guess_precision(self) -> str:
        """From the tensors themselves: mostly int8 -> int8, some int8 (weights) -> dynamic, fp16 weights -> fp16."""
        if self.input_dtype in (np.uint8, np.int8):
            return "int8"
        dtypes = [np.dtype(t["dtype"]) for t in self.interpreter.get_tensor_details()]
        n_q = sum(d in (np.int8, np.uint8) for d in dtypes)
        if n_q > len(dtypes) / 2:
            return "int8"
        if n_q:
            return "dynamic"
        if any(d == np.float16 for d in dtypes):
            return "fp16"
        return "fp32"

    def _quantize_input(self, pixels: np.ndarray) -> np.ndarray:
        return feed_pixels(pixels, self.input_dtype, self._in["quantization"])

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        return dequantize(y, self.output_dtype, self._out["quantization"])

    def _ensure_batch(self, n: int) -> None:
        if n == self._batch:
            return
        if not self.dynamic_batch and n != int(self._in["shape"][0]):
            raise ValueError(f"model has a fixed batch of {int(self._in['shape'][0])}")
        self.interpreter.resize_tensor_input(self._in["index"], [n, *[int(v) for v in self._in["shape"][1:]]])
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self._batch = n

    def _run(self, feed: np.ndarray) -> np.ndarray:
        self._ensure_batch(len(feed))
        self.interpreter.set_tensor(self._in["index"], feed)
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self._out["index"]))

    # ------------------------------------------------------------------ protocol

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, C); batches of up to ``max_batch`` when the batch is dynamic."""
        x = as_batch(pixels)
        n = len(x)
        if n == 0:
            return np.zeros((0, self.num_classes), np.float32)
        step = self.max_batch if self.dynamic_batch else int(self._in["shape"][0])
        # The input conversion (floats: 4x the pixels) one step at a time, never for the whole set at once.
        outs = [self._run(self._quantize_input(x[i:i + step])) for i in range(0, n, step)]
        return np.concatenate(outs).reshape(n, -1)

    def timer(self, pixels: np.ndarray) -> Callable[[], Any]:
        """Set a batch of inputs once and return the zero-argument call to time (``interpreter.invoke``).

        Quantization and ``set_tensor`` happen here, outside the timed region; ``get_tensor`` is
        not timed either, exactly like a bare ``interpreter.invoke()`` loop and ``benchmark_model``.
        """
        feed = self._quantize_input(np.asarray(pixels))
        self._ensure_batch(len(feed))
        self.interpreter.set_tensor(self._in["index"], feed)
        return self.interpreter.invoke

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "runtime": self.runtime, "precision": self.precision, "threads": self.threads,
                "device": self.device, "delegate": self.delegate, "input_dtype": self.input_dtype.name,
                "output_dtype": self.output_dtype.name, "input_quantization": list(self._in["quantization"]),
                "has_metadata": bool(self.metadata)}
