"""Runs ``.onnx`` and ``.tflite`` files with Intel OpenVINO (``pip install edgetl[openvino]``).

OpenVINO reads both file types directly (its ONNX and TFLite frontends) and compiles them for a
device: ``CPU`` (any x86-64 with AVX2, and ARM), ``GPU`` (Intel integrated/discrete), ``NPU``
(Intel Core Ultra), or ``AUTO``. Settings follow ``benchmark_app -hint latency``: performance hint
LATENCY, one stream, and on CPU an explicit thread count (``INFERENCE_NUM_THREADS``).

Precision: by default a file is compiled with ``INFERENCE_PRECISION_HINT`` f32, so that an fp32 file
runs fp32 (without it, OpenVINO's CPU plugin runs bf16 on CPUs with AMX / avx512_bf16, and its GPU
plugin f16). ``inference_precision=None`` keeps the device's own default instead. Either way the
runner's ``precision`` says what the compiled model reports it runs: the file's precision when that
is f32 (``fp32``, ``int8``), else ``<file precision>-><reported>`` (``fp32->bf16``), and
``<file precision>->?`` when the device does not report it (AUTO).

The file is compiled with a static batch (OpenVINO needs the dynamic batch dimension fixed, or it
raises on the shape); a batch of another size recompiles once and is cached. The inputs and
outputs are the file's own: a TFLite int8 file takes raw uint8 pixels and returns uint8 scores,
dequantized here with the tensor's scale and zero point, exactly as the LiteRT runner does.
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
from edgetl.runtime.onnx_runner import check_onnx_file
from edgetl.runtime.tflite_runner import check_tflite_file, dequantize, feed_pixels, io_details

DEVICES = ("CPU", "GPU", "NPU", "AUTO")


def _ov() -> Any:
    try:
        import openvino as ov
    except Exception as exc:  # noqa: BLE001 - any import failure means the runtime is unavailable
        raise RuntimeUnavailableError(f"OpenVINO is not installed (pip install 'edgetl[openvino]'; "
                                      f"{type(exc).__name__}: {str(exc)[:120]})") from None
    return ov


def available_devices() -> list[str]:
    """The devices this OpenVINO install can compile for here (``CPU``, ``GPU.0`` ...); [] when not installed."""
    try:
        return list(_ov().Core().available_devices)
    except Exception:  # noqa: BLE001
        return []


def _type_name(value: Any) -> str:
    """``<Type: 'bfloat16'>`` -> ``bf16`` (OpenVINO's short element-type names: f32, bf16, f16)."""
    return value.to_string() if hasattr(value, "to_string") else str(value)


def compiled_precision(compiled: Any) -> str | None:
    """The ``INFERENCE_PRECISION_HINT`` a compiled model reports (``f32``, ``bf16``, ``f16``); None when
    the device does not report it (AUTO)."""
    try:
        return _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except Exception:  # noqa: BLE001 - not every device reports it
        return None


def default_precision(device: str) -> str | None:
    """The inference precision a device runs when not told (CPU: bf16 with AMX/avx512_bf16, else f32;
    GPU: f16); None when OpenVINO is missing or the device does not say (AUTO)."""
    try:
        return _type_name(_ov().Core().get_property(device.upper(), "INFERENCE_PRECISION_HINT"))
    except Exception:  # noqa: BLE001
        return None


def precision_label(file_precision: str, inference_precision: str | None) -> str:
    """What a row is labelled: the file's precision when it ran f32, else ``<file>-><what ran>``."""
    if inference_precision == "f32":
        return file_precision
    return f"{file_precision}->{inference_precision or '?'}"


class OpenVINORunner:
    """A ``.onnx`` or ``.tflite`` file on OpenVINO, behind the :class:`~edgetl.runtime.base.Runner` protocol."""

    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "CPU",
                 inference_precision: str | None = "f32"):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".onnx", ".tflite"):
            raise ModelFileError(f"{self.path}: OpenVINO runs .onnx and .tflite files, not {suffix or '(no suffix)'}")
        if not self.path.is_file():
            raise ModelFileError(f"model file not found: {self.path}")
        self.format = suffix[1:]
        ov = _ov()
        self._ov = ov
        self.core = ov.Core()
        dev = device.upper()
        if dev not in DEVICES:
            raise ModelFileError(f"unknown OpenVINO device {device!r}; expected one of {', '.join(DEVICES)}")
        have = list(self.core.available_devices)
        if dev != "AUTO" and not any(d.split(".")[0] == dev for d in have):
            raise RuntimeUnavailableError(f"OpenVINO device {dev} not available here (have: {', '.join(have) or 'none'})")
        self.device = dev.lower()
        self.ov_device = dev
        # thread count only applies to the CPU plugin; other devices record None
        self.threads = (int(threads) if threads else default_threads()) if dev == "CPU" else None
        self.inference_precision_hint = inference_precision  # what was asked for (None: the device's default)
        if self.format == "tflite":
            check_tflite_file(self.path)
            in_d, out_d = io_details(self.path)
            self._in_q = tuple(in_d["quantization"])
            self._out_q = tuple(out_d["quantization"])
        else:
            check_onnx_file(self.path)
            self._in_q = self._out_q = (0.0, 0)
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as exc:  # noqa: BLE001 - the frontends raise RuntimeError with pages of text
            first = first_line(exc, 200, last=True)
            raise ModelFileError(f"{self.path}: OpenVINO cannot read this model (truncated or corrupt?): {first}") from None
        if len(self.model.inputs) != 1:
            raise ModelFileError(f"{self.path}: expected one image input, found {len(self.model.inputs)}")
        shape = self.model.inputs[0].get_partial_shape()
        if shape.rank.get_length() != 4:
            raise ModelFileError(f"{self.path}: expected a 4-D image input, found shape {shape}")
        dims = [d.get_length() if d.is_static else None for d in shape]
        self.channels_first = dims[1] == 3 and dims[3] != 3
        self._dims = dims
        hw = (dims[2], dims[3]) if self.channels_first else (dims[1], dims[2])
        self.fixed_batch = dims[0]
        out = self.model.outputs[0].get_partial_shape()
        self.num_classes = out[out.rank.get_length() - 1].get_length() if out[out.rank.get_length() - 1].is_static else 0
        info = file_info(self.path, hw, self.num_classes)
        self.labels, self.preprocessing, self.metadata = info.labels, info.preprocessing, info.metadata
        self.file_precision = info.precision
        if hw[0] is None:
            hw = tuple(self.preprocessing.input_size)
        self._hw = hw
        self._compiled: dict[int, Any] = {}
        first = self._request(self.fixed_batch or 1)  # compile now: a device that cannot run the file fails here
        self.input_dtype = np.dtype(first.model_inputs[0].get_element_type().to_dtype())
        self.output_dtype = np.dtype(first.model_outputs[0].get_element_type().to_dtype())
        self.inference_precision = compiled_precision(first.get_compiled_model())
        self.precision = precision_label(self.file_precision, self.inference_precision)

    def _request(self, n: int) -> Any:
        """An infer request of a model compiled for batch ``n`` (compiled once per batch size)."""
        if n not in self._compiled:
            if self.fixed_batch and n != self.fixed_batch:
                raise ValueError(f"model has a fixed batch of {self.fixed_batch}")
            h, w = self._hw
            shape = [n, 3, h, w] if self.channels_first else [n, h, w, 3]
            self.model.reshape({self.model.inputs[0]: self._ov.PartialShape(shape)})
            config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
            if self.ov_device == "CPU":
                config["INFERENCE_NUM_THREADS"] = int(self.threads or 1)
            if self.inference_precision_hint:
                config["INFERENCE_PRECISION_HINT"] = self.inference_precision_hint
            try:
                compiled = self.core.compile_model(self.model, self.ov_device, config)
            except Exception as exc:  # noqa: BLE001
                first = first_line(exc, 200, last=True)
                hint = f" with INFERENCE_PRECISION_HINT {self.inference_precision_hint}" if self.inference_precision_hint else ""
                raise RuntimeUnavailableError(f"OpenVINO {self.ov_device} cannot compile {self.path.name}{hint}: {first}") from None
            self._compiled[n] = compiled.create_infer_request()
        return self._compiled[n]

    def _feed(self, pixels: np.ndarray) -> np.ndarray:
        x = feed_pixels(pixels, self.input_dtype, self._in_q)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.channels_first else np.ascontiguousarray(x)

    def _output(self, req: Any) -> np.ndarray:
        y = np.array(req.get_output_tensor(0).data, copy=True)
        return dequantize(y, self.output_dtype, self._out_q) if self.format == "tflite" else y.astype(np.float32, copy=False)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, C), one compiled batch of the file's size at a time (1 when dynamic)."""
        x = as_batch(pixels)
        n = len(x)
        if n == 0:
            return np.zeros((0, self.num_classes), np.float32)
        step = self.fixed_batch or 1
        req = self._request(step)
        outs = []
        for i in range(0, n, step):
            req.set_input_tensor(self._ov.Tensor(self._feed(x[i:i + step])))
            req.infer()
            outs.append(self._output(req))
        return np.concatenate(outs).reshape(n, -1)

    def timer(self, pixels: np.ndarray) -> Callable[[], Any]:
        """The zero-argument call to time: a synchronous ``infer()`` on inputs set beforehand.

        Like LiteRT's ``invoke``, the input copy and the output read are outside the timed region
        (``benchmark_app`` times the same ``infer`` call).
        """
        x = self._feed(as_batch(pixels))
        req = self._request(len(x))
        req.set_input_tensor(self._ov.Tensor(x))
        return partial(req.infer, None, share_outputs=True)  # outputs shared, not copied: like invoke()

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "runtime": self.runtime, "precision": self.precision, "threads": self.threads,
                "device": self.device, "openvino": self._ov.__version__.split("-")[0],
                "file_precision": self.file_precision, "inference_precision": self.inference_precision,
                "inference_precision_hint": self.inference_precision_hint or "device default",
                "input_dtype": self.input_dtype.name, "has_metadata": bool(self.metadata)}
