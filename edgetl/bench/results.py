"""What bench measures and returns: :class:`BenchSettings`, the runtimes it knows, :class:`Target`,
:class:`BenchRow` and :class:`BenchResult` (data only, no measuring)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgetl.errors import UsageError


PRECISION_ORDER = {"fp32": 0, "fp16": 1, "dynamic": 2, "int16x8": 3, "int8": 4, "qat_int8": 5}
#: File precisions whose arithmetic is integer: a device's float default (bf16/f16) changes little in them,
#: so OpenVINO runs them only as told (f32 for whatever is not integer), with no extra default-precision row.
INTEGER_PRECISIONS = ("int8", "qat_int8", "int16x8")
FORMAT_ORDER = {"keras": 0, "tflite": 1, "onnx": 2}
#: int8 must beat fp32 p50 by at least this fraction to be called faster.
MEANINGFUL_SPEEDUP = 0.10


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and how long; defaults follow ``benchmark_model`` (50 runs, >= 1 s)."""

    threads: tuple[int, ...] = (1,)
    batch: int = 1
    warmup_runs: int = 5
    warmup_time: float = 0.5
    min_runs: int = 50
    min_time: float = 1.0
    max_time: float = 30.0
    samples: int | None = None
    seed: int = 0
    keras: bool = True
    providers: tuple[str, ...] | None = None  # ONNX Runtime EPs; None: CPU (+ CUDA/TensorRT when present)
    gpu: bool | None = None  # LiteRT GPU delegate: None = when available, True = always try (skipped row if absent)
    runtimes: tuple[str, ...] | None = None  # "litert", "openvino:gpu" ...; None: every runtime installed here
    min_accuracy: float | None = None  # top-1 floor in percent (1 means 1 %) for "best"; None: reference top-1 - 1 point
    min_agreement: float = 99.0  # and top-1 agreement with the float reference, in percent (export's default budget)
    accept_changed_data: bool = False  # go on (warning in bench.json) when the run's folder no longer gives its split

    def __post_init__(self) -> None:
        if not self.threads or any(int(t) < 1 for t in self.threads):
            raise UsageError("--threads must be a list of positive integers, e.g. 1,2,4")
        if self.batch < 1:
            raise UsageError("--batch must be >= 1")
        if not 0.0 <= self.min_agreement <= 100.0:
            raise UsageError(f"--min-agreement is a percentage between 0 and 100, got {self.min_agreement}")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 100.0:
            raise UsageError(f"--min-accuracy is a top-1 percentage between 0 and 100 (1 means 1 %), got {self.min_accuracy}")
        if self.min_runs < 1 or self.warmup_runs < 0:
            raise UsageError("--min-runs must be >= 1 and --warmup-runs >= 0")
        if min(self.warmup_time, self.min_time) < 0 or self.max_time <= 0:
            raise UsageError("--warmup-time/--min-time must be >= 0 and --max-time > 0")
        if self.runtimes is not None:
            if not self.runtimes:
                raise UsageError("--runtimes needs at least one runtime")
            parse_runtimes(self.runtimes)


@dataclass
class Target:
    """One model to bench: a Keras model or an exported file."""

    path: Path
    format: str  # keras, tflite, onnx
    run_dir: Path | None = None
    precision_hint: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def size_mb(self) -> float | None:
        try:
            return self.path.stat().st_size / 1e6
        except OSError:
            return None


@dataclass
class BenchRow:
    model: str
    path: str
    format: str
    runtime: str
    precision: str
    threads: int | None
    device: str = "cpu"
    batch: int = 1
    size_mb: float | None = None
    status: str = "ok"
    # accuracy (percent / percentage points)
    n_images: int | None = None
    correct: int | None = None
    top1: float | None = None
    balanced_accuracy: float | None = None  # mean per-class recall, percent (edgetl/metrics.py)
    macro_f1: float | None = None  # 0-1
    top5: float | None = None
    top1_delta_pt: float | None = None
    agreement: float | None = None
    max_prob_diff: float | None = None
    per_class_recall: dict[str, float] | None = None
    confusion_matrix: list[list[int]] | None = None
    # latency (ms) and resources
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    runs: int | None = None
    warmup_runs: int | None = None
    fps: float | None = None
    load_ms: float | None = None
    first_ms: float | None = None
    peak_mem_mb: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class BenchResult:
    rows: list[BenchRow]
    environment: dict[str, Any]
    settings: BenchSettings
    data: dict[str, Any]
    reference: str | None
    best: dict[str, Any] | None
    notes: list[str]

    def failure(self) -> str | None:
        """One line when the run measured nothing (no row ok: every row an error or skipped);
        None otherwise. ``edgetl bench`` then exits non-zero: nothing measured, nothing passed."""
        if any(r.ok for r in self.rows):
            return None
        n = len(self.rows)
        if n == 0:
            return "no bench row to run: no model or runtime matched"
        errors = [r for r in self.rows if r.status.startswith("error")]
        if not errors:
            first = f"{self.rows[0].model} [{self.rows[0].runtime}:{self.rows[0].device}]: {self.rows[0].status}"
            return f"all {n} bench row(s) were skipped, nothing was measured; first: {first}"
        first = f"{errors[0].model} [{errors[0].device}]: {errors[0].status[len('error:'):].strip()}"
        if len(errors) == n:
            return f"all {n} bench row(s) failed, nothing was measured; first error: {first}"
        return (f"no bench row measured anything ({len(errors)} of {n} failed, the others were skipped); "
                f"first error: {first}")

    def to_dict(self) -> dict[str, Any]:
        s = asdict(self.settings)
        return {"edgetl_bench": 1, "settings": s, "environment": self.environment, "data": self.data,
                "reference": self.reference, "best": self.best, "notes": self.notes,
                "rows": [r.to_dict() for r in self.rows]}


#: The runtimes ``bench`` can run, the file formats each reads, and the devices it can be asked for
#: (``--runtimes NAME`` or ``NAME:DEVICE``). ``onnxruntime`` devices are its execution providers.
RUNTIMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "tensorflow": (("keras",), ("cpu",)),
    "litert": (("tflite",), ("cpu", "gpu")),
    "litert-compiled": (("tflite",), ("cpu", "gpu", "npu")),
    "onnxruntime": (("onnx",), ("cpu", "cuda", "tensorrt", "openvino", "coreml", "xnnpack")),
    "openvino": (("tflite", "onnx"), ("cpu", "gpu", "npu", "auto")),
    # The client itself (MediaPipe Tasks' ImageClassifier): its own resize from the original images.
    "mediapipe": (("tflite",), ("cpu",)),
}


def parse_runtimes(spec: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """``["litert", "openvino:gpu"]`` -> ``(("litert", None), ("openvino", "gpu"))``; UsageError on unknown names."""
    out = []
    for item in spec:
        name, _, dev = str(item).strip().lower().partition(":")
        if name not in RUNTIMES:
            raise UsageError(f"unknown runtime {name!r} in --runtimes; valid: {', '.join(RUNTIMES)} (optionally NAME:DEVICE)")
        if dev and dev not in RUNTIMES[name][1]:
            raise UsageError(f"unknown device {dev!r} for runtime {name}; valid: {', '.join(RUNTIMES[name][1])}")
        out.append((name, dev or None))
    return tuple(out)


def _precision_hint(t: Target) -> str:
    from edgetl.runtime.fileinfo import precision_from_name

    return precision_from_name(t.path) or ("fp32" if t.format == "keras" else "unknown")
