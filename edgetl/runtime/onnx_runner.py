"""Runs ``.onnx`` files with ONNX Runtime, never TensorFlow.

Session settings follow ``onnxruntime_perf_test``: explicit ``intra_op_num_threads``,
``inter_op_num_threads = 1``, sequential execution, all graph optimizations. Execution
providers: CPU, plus CUDA / TensorRT when this ONNX Runtime build offers them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgetl.errors import ModelFileError, first_line
from edgetl.preprocess import Preprocessing
from edgetl.runtime.base import as_batch, default_threads
from edgetl.runtime.env import RuntimeUnavailableError
from edgetl.runtime.fileinfo import file_info

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}
_AUTO_GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
#: ONNX Runtime session settings that make int8 results the same on every x86 CPU. Without VNNI
#: (AVX2 and plain AVX-512), MLAS multiplies uint8 activations by int8 weights with ``vpmaddubsw``,
#: which saturates pairs of products in int16: measured on an AVX2-only CPU, a sign_digits Lite0
#: int8 file agreed with the float model on 73.5 % of images by default and on 98.1 % with this
#: option (the exact QDQ reference: 98.1 %), at 20.6 vs 17.2 ms. The option turns every int8
#: weight into uint8 (U8U8 kernels) on *any* x86 CPU, also where VNNI (``vpdpbusd``, int32
#: accumulation, no saturation) is exact already: measured on a Xeon with AVX-512 VNNI and AMX, a
#: Lite0 int8 file ran 0.53-0.68x its fp32 p50 without it and 1.4-2.0x with it, with the same predictions
#: (``benchmarks/results/onnx_int8_20261205-*.md``).
#: So edgetl applies it only on x86 CPUs without VNNI (:func:`needs_exact_int8_config`), and writes
#: it into the file's metadata (``edgetl.ort_session_config``) for code that runs the file there.
EXACT_INT8_CONFIG = {"session.x64quantprecision": "1"}
ORT_CONFIG_KEY = "edgetl.ort_session_config"
#: metadata key of an int8 file whose conv/dense weights are on the 7-bit grid (``export`` with the
#: overflow fix, :attr:`edgetl.quant.QuantizationConfig.overflow_fix`): no pair of products can
#: saturate, so ORT's default kernels are exact on every x86 CPU and the option above is not needed
OVERFLOW_SAFE_KEY = "edgetl.int8_overflow_safe"


def overflow_safe(path: str | Path) -> bool:
    """True when the ``.onnx`` file says its int8 weights cannot saturate (:data:`OVERFLOW_SAFE_KEY`).

    Reads the file's ``metadata_props`` with the ``onnx`` package (False when it is missing or the
    file cannot be parsed: the runner then keeps the exact option, which is never wrong, only slower).
    """
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - ImportError, bad file: the session reports a bad file itself
        return False
    return any(p.key == OVERFLOW_SAFE_KEY for p in proto.metadata_props)


def needs_exact_int8_config(machine: str | None = None, vnni: bool | None = None) -> bool:
    """True when ONNX Runtime's default int8 kernels may saturate here: x86-64 without VNNI.

    ``vnni`` defaults to this CPU's ``/proc/cpuinfo`` (AVX-512 VNNI, AVX-VNNI or AMX; unreadable
    flags count as none: the option is then exact, only slower). Other architectures (ARM) do not
    read the option.
    """
    import platform

    from edgetl.runtime.env import cpu_info

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return False
    return not (cpu_info()["vnni_or_dotprod"] if vnni is None else vnni)


def session_options(threads: int | None = None, *, exact_int8: bool = True, spinning: bool | None = None,
                    config: dict[str, str] | None = None) -> Any:
    """The one ``SessionOptions`` recipe edgetl uses (bench, verify, embedding).

    Args:
        threads: intra-op threads (default: :func:`default_threads`).
        exact_int8: apply :data:`EXACT_INT8_CONFIG` where this CPU needs it (x86 without VNNI:
            :func:`needs_exact_int8_config`), so that int8 results are exact everywhere.
        spinning: set ``session.intra_op.allow_spinning`` (None leaves ORT's default).
        config: further session config entries (e.g. a file's ``edgetl.ort_session_config``).
    """
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads) if threads else default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    entries = dict(EXACT_INT8_CONFIG) if exact_int8 and needs_exact_int8_config() else {}
    entries.update(config or {})
    if spinning is not None:
        entries["session.intra_op.allow_spinning"] = "1" if spinning else "0"
    for k, v in entries.items():
        so.add_session_config_entry(k, str(v))
    return so


def session(model: bytes | str | Path, threads: int | None = None, **options: Any) -> Any:
    """A CPU ``InferenceSession`` with :func:`session_options` (``options`` passed on) for a file or a
    serialized model: the one place outside :class:`OnnxRunner` that opens ONNX Runtime sessions
    (graph inspection, embedding). Raises ModelFileError when ONNX Runtime cannot load the model."""
    ort = _ort()
    src = model if isinstance(model, (bytes, bytearray)) else str(model)
    try:
        return ort.InferenceSession(src, sess_options=session_options(threads, **options), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        first = first_line(exc, 300)
        raise ModelFileError(f"ONNX Runtime cannot load the model: {type(exc).__name__}: {first}") from None


#: compute ops of ORT's optimized graph: quantized kernels, and the float ones they replace
QUANTIZED_KERNELS = frozenset({"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm",
                               "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
FLOAT_KERNELS = frozenset({"Conv", "ConvTranspose", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm"})


def kernel_counts(model: bytes | str | Path, threads: int | None = 1, **options: Any) -> dict[str, Any]:
    """Which kernels ONNX Runtime runs for ``model`` on this CPU, read from its optimized graph.

    Opens a session like :func:`session` with ``optimized_model_filepath`` set and counts the
    graph's compute ops: ``quantized`` (QLinearConv, QGemm ...: the int8 kernels ran) and ``float``
    (Conv, MatMul ...: Q/DQ left unfused, so the op ran in float between a DequantizeLinear and a
    QuantizeLinear), plus the Q/DQ nodes left. Raises ModelFileError when the model cannot load.
    """
    import collections
    import tempfile

    import onnx

    ort = _ort()
    src = model if isinstance(model, (bytes, bytearray)) else str(model)
    with tempfile.TemporaryDirectory(prefix="edgetl-ortopt-") as tmp:
        so = session_options(threads, **options)
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        try:
            ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
            graph = onnx.load(so.optimized_model_filepath).graph
        except Exception as exc:  # noqa: BLE001
            raise ModelFileError(f"ONNX Runtime cannot load the model: {type(exc).__name__}: {first_line(exc, 300)}") from None
    ops = collections.Counter(n.op_type for n in graph.node)
    quant = {k: v for k, v in sorted(ops.items()) if k in QUANTIZED_KERNELS}
    flt = {k: v for k, v in sorted(ops.items()) if k in FLOAT_KERNELS}
    return {"quantized": quant, "float": flt, "quantize_linear": ops.get("QuantizeLinear", 0),
            "dequantize_linear": ops.get("DequantizeLinear", 0)}


def kernel_summary(counts: dict[str, Any]) -> str:
    """One line of :func:`kernel_counts`, e.g. ``ORT kernels: 50/50 compute ops quantized (QGemm 1, QLinearConv 49)``."""
    q, f = sum(counts["quantized"].values()), sum(counts["float"].values())
    parts = ", ".join(f"{k} {v}" for k, v in {**counts["quantized"], **counts["float"]}.items())
    return (f"ORT kernels: {q}/{q + f} compute ops quantized ({parts}); "
            f"{counts['quantize_linear']} QuantizeLinear, {counts['dequantize_linear']} DequantizeLinear left")


_TYPES = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(float)": np.float32, "tensor(float16)": np.float16}


def provider_name(p: str) -> str:
    return PROVIDER_NAMES.get(p.lower(), p)


def _ort():
    try:
        import onnxruntime as ort
    except Exception as exc:  # noqa: BLE001
        raise RuntimeUnavailableError(f"onnxruntime is not installed or not importable ({type(exc).__name__}: {exc})") from None
    return ort


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    """Full provider names to use; requested ones that this build lacks raise RuntimeUnavailableError."""
    ort = _ort()
    available = ort.get_available_providers()
    if not requested:
        return [p for p in _AUTO_GPU if p in available] + ["CPUExecutionProvider"]
    names = [provider_name(p) for p in requested]
    missing = [n for n in names if n not in available]
    if missing:
        have = ", ".join(a.replace("ExecutionProvider", "") for a in available)
        raise RuntimeUnavailableError(f"{', '.join(missing)} not available in this onnxruntime build (have: {have})")
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")  # fallback for ops the accelerator lacks, as ORT itself does
    return names


def check_onnx_file(p: Path) -> None:
    if not p.is_file():
        raise ModelFileError(f"model file not found: {p}")
    size = p.stat().st_size
    if size == 0:
        raise ModelFileError(f"{p}: not an ONNX model (empty file)")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head[:4] == b"PK\x03\x04" or head[4:8] == b"TFL3" or head[:4] == b"\x89HDF":
        raise ModelFileError(f"{p}: not an ONNX model (looks like a {'Keras/zip' if head[:2] == b'PK' else 'TFLite/HDF5'} file)")


class OnnxRunner:
    """An ``.onnx`` file behind the :class:`~edgetl.runtime.base.Runner` protocol."""

    format = "onnx"
    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 exact_int8: bool = True):
        self.path = Path(path)
        check_onnx_file(self.path)
        ort = _ort()
        self.providers_requested = resolve_providers(providers)
        self.threads = int(threads) if threads else default_threads()
        # a file that cannot saturate runs on ORT's default (fast) kernels everywhere
        self.exact_int8 = exact_int8 and not (needs_exact_int8_config() and overflow_safe(self.path))
        so = session_options(self.threads, exact_int8=self.exact_int8)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=self.providers_requested)
        except Exception as exc:  # noqa: BLE001 - InvalidProtobuf, Fail, InvalidGraph ... all mean "bad file"
            first = first_line(exc, 200)
            raise ModelFileError(f"{self.path}: ONNX Runtime cannot load this model (truncated or corrupt?): {first}") from None
        self.providers = list(self.session.get_providers())
        self.device = "gpu" if any(p in _AUTO_GPU for p in self.providers[:1]) else "cpu"
        ins = self.session.get_inputs()
        outs = self.session.get_outputs()
        if len(ins) != 1:
            raise ModelFileError(f"{self.path}: expected one image input, found {len(ins)}")
        self._in = ins[0]
        self._out_names = [outs[0].name]
        self.input_dtype = np.dtype(_TYPES.get(self._in.type, np.float32))
        shape = list(self._in.shape)
        if len(shape) != 4:
            raise ModelFileError(f"{self.path}: expected a 4-D image input, found shape {shape}")
        # tf2onnx keeps NHWC; a channels-first export (N,3,H,W) is accepted too.
        self.channels_first = shape[1] == 3 and shape[3] != 3
        hw = (shape[2], shape[3]) if self.channels_first else (shape[1], shape[2])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        out_shape = outs[0].shape
        self.num_classes = int(out_shape[-1]) if out_shape and isinstance(out_shape[-1], int) else 0
        try:
            self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        except Exception:  # noqa: BLE001
            self.metadata = {}
        info = file_info(self.path, hw, self.num_classes, metadata=self.metadata, guess=self._guess_precision)
        self.labels = info.labels
        self.preprocessing: Preprocessing = info.preprocessing
        self.precision = info.precision

    def _guess_precision(self) -> str:
        """Looks for quantization ops with the ``onnx`` package when it is installed; else 'unknown'."""
        try:
            import onnx  # optional: not part of the base install
        except ImportError:
            return "unknown"
        try:
            m = onnx.load(str(self.path), load_external_data=False)
        except Exception:  # noqa: BLE001
            return "unknown"
        ops = {n.op_type for n in m.graph.node}
        if ops & {"QLinearConv", "QLinearMatMul", "QuantizeLinear", "ConvInteger", "MatMulInteger"}:
            return "dynamic" if "DynamicQuantizeLinear" in ops else "int8"
        if any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer):
            return "fp16"
        return "fp32"

    def _feed(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[None]
        x = x.astype(self.input_dtype, copy=False)
        if self.channels_first:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return {self._in.name: x}

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        x = as_batch(pixels)
        n = len(x)
        if n == 0:
            return np.zeros((0, self.num_classes), np.float32)
        step = self.fixed_batch or 32
        outs = [self.session.run(self._out_names, self._feed(x[i:i + step]))[0] for i in range(0, n, step)]
        return np.concatenate(outs).astype(np.float32, copy=False).reshape(n, -1)

    def timer(self, pixels: np.ndarray) -> Callable[[], Any]:
        """The zero-argument call to time: ``session.run(outputs, feed)`` with the feed built beforehand.

        ``session.run`` copies the input in and the output out, so (unlike TFLite's ``invoke``) those
        copies are inside the timed region - the same as a bare ``session.run`` loop and ``onnxruntime_perf_test``.
        """
        return partial(self.session.run, self._out_names, self._feed(pixels))

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "runtime": self.runtime, "precision": self.precision, "threads": self.threads,
                "device": self.device, "providers": self.providers, "input_dtype": self.input_dtype.name,
                "has_metadata": bool(self.metadata), "exact_int8": self.exact_int8,
                "ort_u8u8": bool(self.exact_int8 and needs_exact_int8_config()), **self._kernels()}

    def _kernels(self) -> dict[str, Any]:
        """For quantized files on the CPU: which kernels ran (:func:`kernel_counts`), as a ``kernels`` line."""
        if self.precision in ("fp32", "fp16") or self.providers[:1] != ["CPUExecutionProvider"]:
            return {}
        try:
            return {"kernels": kernel_summary(kernel_counts(self.path, self.threads, exact_int8=self.exact_int8))}
        except Exception:  # noqa: BLE001 - a note, never a failed row
            return {"kernels": "unknown (no optimized graph to read)"}
