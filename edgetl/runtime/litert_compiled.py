"""Runs ``.tflite`` files with LiteRT 2.x's ``CompiledModel`` API and its hardware-accelerator choice.

``CompiledModel`` is LiteRT's newer entry point (``ai_edge_litert.compiled_model``): the file is
compiled for an accelerator set (CPU through XNNPACK, GPU through OpenCL/WebGPU/Metal, NPU through
a vendor dispatch library) and run on tensor buffers. On a machine without the GPU/NPU the
compilation fails, and that becomes a ``skipped`` row naming the accelerator, never a crash.
GPU and NPU are compiled strictly (no CPU fallback), so a row labelled ``gpu`` really ran there.

Inputs and outputs are the file's own (uint8 pixels in, uint8 scores out for an int8 file),
quantized and dequantized with the tensor's scale and zero point like the Interpreter runner.
The compiled batch is the file's (1 for edgetl's files); larger batches run image by image.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.errors import ModelFileError, first_line
from edgetl.runtime.base import as_batch, default_threads
from edgetl.runtime.env import RuntimeUnavailableError
from edgetl.runtime.fileinfo import file_info
from edgetl.runtime.tflite_runner import check_tflite_file, dequantize, feed_pixels, io_details

ACCELERATORS = ("cpu", "gpu", "npu")


def _api() -> tuple[Any, Any, Any, Any]:
    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.cpu_options import CpuOptions
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import Options
    except Exception as exc:  # noqa: BLE001 - older ai-edge-litert (1.x) has no CompiledModel
        raise RuntimeUnavailableError(f"LiteRT CompiledModel API not available (ai-edge-litert >= 2.0 needed; "
                                      f"{type(exc).__name__}: {str(exc)[:120]})") from None
    return CompiledModel, CpuOptions, HardwareAccelerator, Options


class CompiledModelRunner:
    """A ``.tflite`` file on LiteRT's ``CompiledModel``, behind the :class:`~edgetl.runtime.base.Runner` protocol."""

    format = "tflite"
    runtime = "litert-compiled"

    def __init__(self, path: str | Path, threads: int | None = None, accelerator: str = "cpu"):
        self.path = Path(path)
        check_tflite_file(self.path)
        acc = accelerator.lower()
        if acc not in ACCELERATORS:
            raise ModelFileError(f"unknown LiteRT accelerator {accelerator!r}; expected one of {', '.join(ACCELERATORS)}")
        CompiledModel, CpuOptions, HW, Options = _api()
        in_d, out_d = io_details(self.path)
        self._in_q, self._out_q = tuple(in_d["quantization"]), tuple(out_d["quantization"])
        self.input_dtype, self.output_dtype = np.dtype(in_d["dtype"]), np.dtype(out_d["dtype"])
        shape = [int(v) for v in in_d["shape"]]
        if len(shape) != 4 or shape[-1] != 3:
            raise ModelFileError(f"{self.path}: expected an NHWC RGB input, found shape {shape}")
        self.batch = shape[0]
        self.num_classes = int(out_d["shape"][-1])
        self.device = acc
        self.threads = (int(threads) if threads else default_threads()) if acc == "cpu" else None
        opts = Options(hardware_accelerators=getattr(HW, acc.upper()),
                       cpu_options=CpuOptions(num_threads=self.threads) if acc == "cpu" else None)
        try:
            self.model = CompiledModel.from_file(str(self.path), options=opts)
        except Exception as exc:  # noqa: BLE001 - RuntimeError whose text is the native log
            if acc != "cpu":
                raise RuntimeUnavailableError(f"LiteRT {acc.upper()} accelerator cannot run {self.path.name} here "
                                              f"(no {acc.upper()} or not every op supported)") from None
            first = first_line(exc, 200, last=True)
            raise ModelFileError(f"{self.path}: LiteRT CompiledModel cannot load this model: {first}") from None
        self._inputs = self.model.create_input_buffers(0)
        self._outputs = self.model.create_output_buffers(0)
        info = file_info(self.path, (shape[1], shape[2]), self.num_classes)
        self.labels, self.preprocessing, self.precision, self.metadata = info.labels, info.preprocessing, info.precision, info.metadata
        self.fully_accelerated = bool(self.model.is_fully_accelerated())

    def _run(self, feed: np.ndarray) -> np.ndarray:
        self._inputs[0].write(np.ascontiguousarray(feed))
        self.model.run_by_index(0, self._inputs, self._outputs)
        y = self._outputs[0].read(self.batch * self.num_classes, self.output_dtype)
        return dequantize(np.asarray(y).reshape(self.batch, -1), self.output_dtype, self._out_q)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, C), one compiled batch at a time."""
        x = as_batch(pixels)
        n = len(x)
        if n == 0:
            return np.zeros((0, self.num_classes), np.float32)
        if n % self.batch:
            raise ValueError(f"model has a fixed batch of {self.batch}")
        outs = [self._run(feed_pixels(x[i:i + self.batch], self.input_dtype, self._in_q)) for i in range(0, n, self.batch)]
        return np.concatenate(outs).reshape(n, -1)

    def timer(self, pixels: np.ndarray) -> Callable[[], Any]:
        """Write the inputs once and return the call to time: ``run_by_index`` on the same buffers."""
        x = as_batch(pixels)
        if len(x) != self.batch:
            raise ValueError(f"LiteRT CompiledModel runs this file at its compiled batch of {self.batch}")
        self._inputs[0].write(np.ascontiguousarray(feed_pixels(x, self.input_dtype, self._in_q)))
        return partial(self.model.run_by_index, 0, self._inputs, self._outputs)

    def close(self) -> None:
        """Release the buffers, the compiled model and its LiteRT environment now (the native library
        logs as it tears them down: better inside the caller's output capture than at interpreter exit)."""
        model = getattr(self, "model", None)
        if model is None:
            return
        env = getattr(model, "_environment", None)
        self._inputs = self._outputs = []
        model.close()
        self.model = None
        if env is not None:
            env.close()

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "runtime": self.runtime, "precision": self.precision, "threads": self.threads,
                "device": self.device, "fully_accelerated": self.fully_accelerated,
                "input_dtype": self.input_dtype.name, "output_dtype": self.output_dtype.name,
                "has_metadata": bool(self.metadata)}
