"""``edgetl bench``: accuracy and latency of every artifact on every runtime (measuring only, no printing).

Method (after TFLite ``benchmark_model`` and ``onnxruntime_perf_test``):

* the thread count is explicit and recorded for every row; one row per thread count;
* inputs are real images, decoded, resized and (for quantized inputs) quantized *before* timing;
  a batch is set once, then only the inference call is timed with ``time.perf_counter_ns``:
  ``interpreter.invoke()`` for LiteRT (``set_tensor``/``get_tensor`` outside, as in ``benchmark_model``),
  ``session.run(outputs, feed)`` for ONNX Runtime (its input/output copies are part of ``run``),
  a compiled ``tf.function`` call (with the result fetched) for Keras;
* warm-up until both ``warmup_runs`` and ``warmup_time`` are met, then time runs until both
  ``min_runs`` and ``min_time`` are met, or ``max_time`` is reached;
* p50/p90/p99, mean, std, throughput (batch / mean), load time, first-inference time and the
  peak resident memory added while loading and running (``/proc/self/status``, peak reset
  through ``/proc/self/clear_refs`` where the kernel allows it).

A runtime that is not installed becomes a ``skipped: <reason>`` row; any other failure an
``error: ...`` row; neither aborts the table. Runners whose native code can kill the process
(LiteRT CompiledModel, the GPU delegate, OpenVINO) are first tried in a child process, once per
machine (:mod:`edgetl.runtime.probe`): one that crashes there is a ``skipped: SIGILL: ...`` row. Two cases are not a table: ``--data`` whose class
folders match none of the models' labels is one error before any row (``check_labels_up_front``),
and ``BenchResult.failure()`` says when no row measured anything (``edgetl bench`` exits 1).
TensorFlow is imported only for Keras rows.
"""

from __future__ import annotations

import gc
import importlib.util
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgetl.errors import EdgetlError, ModelFileError, UsageError, one_line
from edgetl.runtime.env import RuntimeUnavailableError
from edgetl.runtime.fileinfo import onnx_metadata
from edgetl.runtime.timing import latency_stats, quick_latency, timed_runs  # noqa: F401 - the one timer (re-exported)

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


# --------------------------------------------------------------------------- statistics


def accuracy_metrics(probs: np.ndarray, y: np.ndarray, labels: Sequence[str],
                     ref_probs: np.ndarray | None = None) -> dict[str, Any]:
    """Top-1, balanced accuracy (percent) and macro-F1 (edgetl/metrics.py), top-5 when > 5 classes,
    per-class recall, confusion matrix, agreement with a reference."""
    from edgetl.metrics import scores

    y = np.asarray(y, dtype=np.int64)
    n_cls = len(labels)
    pred = probs.argmax(axis=1)
    s = scores(y, pred, n_cls)
    out: dict[str, Any] = {"n_images": int(len(y)), "correct": int((pred == y).sum()),
                           "top1": float(100.0 * np.mean(pred == y)) if len(y) else None,
                           "balanced_accuracy": 100.0 * s["balanced_accuracy"] if s["balanced_accuracy"] is not None else None,
                           "macro_f1": s["macro_f1"]}
    if n_cls > 5 and len(y):
        top5 = np.argsort(-probs, axis=1)[:, :5]
        out["top5"] = float(100.0 * np.mean((top5 == y[:, None]).any(axis=1)))
    cm = np.zeros((n_cls, n_cls), dtype=np.int64)
    np.add.at(cm, (y, np.clip(pred, 0, n_cls - 1)), 1)
    support = cm.sum(axis=1)
    out["per_class_recall"] = {labels[i]: (float(100.0 * cm[i, i] / support[i]) if support[i] else None) for i in range(n_cls)}
    out["confusion_matrix"] = cm.tolist()
    if ref_probs is not None and len(ref_probs) == len(probs):
        out["agreement"] = float(100.0 * np.mean(ref_probs.argmax(axis=1) == pred))
        out["max_prob_diff"] = float(np.max(np.abs(ref_probs - probs))) if probs.shape == ref_probs.shape else None
    return out


# --------------------------------------------------------------------------- memory


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _MemoryProbe:
    """Peak RSS added since construction (MB), from /proc; None where /proc is missing."""

    def __init__(self) -> None:
        self.reset_ok = _reset_peak_rss()
        self.start = _status_kb("VmRSS")
        if not self.reset_ok:
            self.start_hwm = _status_kb("VmHWM")

    def peak_delta_mb(self) -> float | None:
        hwm = _status_kb("VmHWM")
        if hwm is None or self.start is None:
            return None
        if not self.reset_ok and self.start_hwm is not None and hwm <= self.start_hwm:
            rss = _status_kb("VmRSS") or self.start  # peak unknown: fall back to the current RSS delta
            return max(0.0, (rss - self.start) / 1024.0)
        return max(0.0, (hwm - self.start) / 1024.0)


# --------------------------------------------------------------------------- targets and data


def discover_targets(items: Sequence[str | Path], keras: bool = True) -> tuple[list[Target], Any]:
    """Run directories expand to their Keras model and every ``export/*.tflite|*.onnx``; files stay as given.

    Returns (targets, the first run's RunInfo or None).
    """
    from edgetl.run import load_run

    targets: list[Target] = []
    first_run = None
    for item in items:
        p = Path(item)
        if not p.exists():
            raise UsageError(f"not found: {p}")
        if p.is_dir() and not (p / "model.keras").exists():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".tflite", ".onnx") and f.is_file())
            if files:  # a folder of exported files (e.g. RUN_DIR/export copied to a device)
                targets += [Target(f, f.suffix.lower()[1:]) for f in files]
                continue
        if p.is_dir():
            info = load_run(p)
            first_run = first_run or info
            found: list[Target] = []
            if keras:
                found.append(Target(info.model_path, "keras", p, "fp32"))
            if info.export_dir.is_dir():
                for f in sorted(info.export_dir.iterdir()):
                    if f.suffix.lower() in (".tflite", ".onnx") and f.is_file():
                        found.append(Target(f, f.suffix.lower()[1:], p))
            if not found:
                raise EdgetlError(f"{p}: nothing to bench (no export/ artifacts and --no-keras); run 'edgetl export {p}' first")
            targets += found
        else:
            fmt = p.suffix.lower()[1:]
            if fmt not in ("tflite", "onnx", "keras"):
                raise ModelFileError(f"{p}: unsupported model file type {p.suffix!r}; expected .tflite, .onnx or .keras")
            if fmt == "keras" and not keras:
                continue
            targets.append(Target(p, fmt))
    if not targets:
        raise UsageError("nothing to bench")
    from edgetl.runtime.fileinfo import precision_from_name

    def order(t: Target) -> tuple:
        prec = t.precision_hint or precision_from_name(t.path) or "zz"
        return (FORMAT_ORDER.get(t.format, 9), PRECISION_ORDER.get(prec, 5), str(t.path))

    seen: set[Path] = set()
    unique = []
    for t in sorted(targets, key=order):
        key = t.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(t)
    return unique, first_run


@dataclass
class EvalSet:
    paths: list[str]
    y: np.ndarray
    classes: list[str]
    source: str
    note: str | None = None
    split_sha256: str | None = None  # of the whole split the images come from (data.split_sha256 in config.json)
    warning: str | None = None


def majority_for(run: Any, labels: Sequence[str], y: np.ndarray) -> dict[str, Any] | None:
    """What always answering the run's largest training class scores on these images (percent), when
    its training classes were unbalanced (``config.json`` counts, the run's ``imbalance_ratio``); else None."""
    from edgetl.metrics import imbalance_ratio, majority_baseline

    counts = (((run.config.get("data") or {}).get("counts") or {}).get("train") or {}) if run is not None else {}
    if not counts or list(run.labels) != list(labels):
        return None
    train = [int(counts.get(c, 0)) for c in labels]
    ratio = imbalance_ratio(train)
    if ratio is None or ratio <= float((run.config.get("train_config") or {}).get("imbalance_ratio", 1.5)):
        return None
    b = majority_baseline(train, y)
    if b is None:
        return None
    return {"class": labels[b["class_index"]], "imbalance_ratio": ratio, "top1": 100.0 * b["accuracy"],
            "balanced_accuracy": 100.0 * b["balanced_accuracy"]}


def eval_set_for(labels: Sequence[str], data: str | Path | None, run: Any, samples: int | None, seed: int,
                 accept_changed: bool = False,
                 decode_progress: Callable[[str], Callable[[int, int], None]] | None = None) -> EvalSet | None:
    """Labelled validation images for a model with ``labels``.

    With ``data``: ``data/val/<class>/`` when present, else ``data/<class>/``; class folders are matched to
    the model's labels by name (models without labels, i.e. ``class_0..``, take the sorted folder names).
    Without it: the run's own test split when its data has one, else its validation split, rebuilt
    exactly as training built it and checked against config.json. None when there is neither.

    Raises:
        DataChangedError: the run's folder no longer gives the recorded split (unless ``accept_changed``).
    """
    from edgetl.data import scan_folder, split_sha256, stratified_sample

    labels = list(labels)
    note = warning = None
    if data is None:
        if run is None or list(run.labels) != labels:
            return None
        # Every choice of the run (early stopping, keeping the fine-tuned weights, the doctor) looked at
        # val; a test split, when the data has one, is what no choice saw: report on it.
        ds, warning = run.checked_dataset(accept_changed=accept_changed,
                                          **({"progress": decode_progress("checking the run's images")} if decode_progress else {}))
        root = ds.root
        use_test = ds.test is not None and bool(ds.test.samples)
        split = ds.test if use_test else ds.val
        source = (f"{run.config.get('data_dir') or (run.config.get('data') or {}).get('root')} "
                  f"(the run's {'test' if use_test else 'validation'} split)")
    else:
        root, folders = _data_classes(data, labels)
        classes = labels
        if not set(folders) & set(labels):
            if _matched_by_order(labels, folders):
                note = f"the model carries no labels; class folders matched by sorted name: {', '.join(folders)}"
                split = scan_folder(root, folders)
                split.classes = labels
            else:
                raise LabelMismatchError(_mismatch_message(data, folders, [labels]))
        else:
            extra = sorted(set(folders) - set(labels))
            if extra:
                note = f"ignored class folders the model does not know: {', '.join(extra[:8])}"
            split = scan_folder(root, classes)
        source = str(root)
    samples_ = stratified_sample(split.samples, samples, seed=seed) if samples else list(split.samples)
    if not samples_:
        raise EdgetlError(f"no labelled images for bench in {source}")
    return EvalSet([s.path for s in samples_], np.array([s.label for s in samples_], dtype=np.int64), labels, source, note,
                   split_sha256(split, root), warning)


class LabelMismatchError(EdgetlError):
    """The ``--data`` class folders match none of a model's labels: its rows cannot measure accuracy."""


def _data_classes(data: str | Path, labels: Sequence[str]) -> tuple[Path, list[str]]:
    """The folder ``eval_set_for`` reads (``data/val/`` or ``data/validation/`` when present) and its class folders."""
    root = Path(data)
    if not root.is_dir():
        raise UsageError(f"--data folder not found: {root}")
    for sub in ("val", "validation"):
        if (root / sub).is_dir() and any((root / sub / c).is_dir() for c in list(labels) + _folders(root / sub)):
            root = root / sub
            break
    folders = _folders(root)
    if not folders:
        raise UsageError(f"--data {data}: no class folders found")
    return root, folders


def _matched_by_order(labels: Sequence[str], folders: Sequence[str]) -> bool:
    """A model without labels (``class_0..``) takes the sorted folder names when the counts agree."""
    return list(labels) == [f"class_{i}" for i in range(len(labels))] and len(folders) == len(labels)


def _label_mismatch(labels: Sequence[str], folders: Sequence[str]) -> bool:
    return not set(folders) & set(labels) and not _matched_by_order(labels, folders)


def _names(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _mismatch_message(data: str | Path, folders: Sequence[str], label_sets: Sequence[Sequence[str]]) -> str:
    first = list(label_sets[0])
    more = f" (and {len(label_sets) - 1} other label set(s), none matching either)" if len(label_sets) > 1 else ""
    return (f"--data {data}: class folders ({_names(list(folders))}) match none of the model's labels "
            f"({_names(first)}){more}: no accuracy can be measured; pass a folder whose class folders are named like "
            f"the labels")


def _target_labels(target: Target) -> list[str] | None:
    """The labels a target's runner will report, read without loading the model (run directory, labels
    embedded in a TFLite or ONNX file); None when only the model can tell (labels.txt vs class count)."""
    from edgetl.runtime.fileinfo import labels_from_meta

    try:
        if target.format == "keras" and target.run_dir is not None:
            from edgetl.run import load_run

            return list(load_run(target.run_dir).labels)  # what runner_for(run_dir) uses
        if target.format == "tflite":
            from edgetl.runtime.fileinfo import read_edgetl_json

            return labels_from_meta(read_edgetl_json(target.path).get("labels"), 0)
        if target.format == "onnx":
            return labels_from_meta(onnx_metadata(target.path).get("edgetl.labels"), 0)
    except Exception:  # noqa: BLE001 - unknown here; the row itself will say what is wrong
        return None
    return None


def _opened_labels(target: Target) -> list[str] | None:
    """The labels of a target by opening it (only used while every target so far is doomed)."""
    from edgetl.runtime.loader import runner_for

    try:
        if target.format == "onnx":
            runner = runner_for(target.path, threads=1, providers=("cpu",))
        else:
            runner = runner_for(target.run_dir or target.path, threads=1)
        return list(runner.labels)
    except Exception:  # noqa: BLE001 - not a label problem: the row will report it
        return None


def check_labels_up_front(targets: Sequence[Target], data: str | Path) -> None:
    """Raise :class:`LabelMismatchError` once, before any row, when ``data`` matches no target's labels.

    Labels are read without loading the models where the files carry them (run directory, edgetl's
    TFLite/ONNX metadata); when one of those matches, the check ends there, so a normal bench pays
    nothing. A target whose labels need the model is opened only while every other target is doomed;
    one that cannot be opened ends the check (its row will report its own error).
    """
    known = [(t, _target_labels(t)) for t in targets]
    folders: list[str] | None = None
    seen: list[list[str]] = []

    def doomed(labels: list[str]) -> bool:
        nonlocal folders
        if folders is None:
            _, folders = _data_classes(data, labels)  # no class folders at all dooms every row too
        if not _label_mismatch(labels, folders):
            return False
        if labels not in seen:
            seen.append(labels)
        return True

    for _, labels in known:
        if labels is not None and not doomed(labels):
            return
    for t, labels in known:
        if labels is None:
            labels = _opened_labels(t)
            if labels is None or not doomed(labels):
                return
    if seen and folders is not None:
        raise LabelMismatchError(_mismatch_message(data, folders, seen))


def _folders(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


# --------------------------------------------------------------------------- the benchmark


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


@dataclass
class _Job:
    target: Target
    threads: int | None
    device: str  # cpu, gpu, npu, cuda, ...
    providers: tuple[str, ...] | None = None  # ONNX Runtime
    skip: str | None = None
    runtime: str = ""
    ov_default: str | None = None  # OpenVINO: run at the device's default precision (e.g. "bf16"); None: f32


class _Availability:
    """What this machine can run, probed once per plan (each probe is cheap but not free).

    Runners whose native code could kill the process (:mod:`edgetl.runtime.probe`) are first run
    on a tiny model in a child process, once per machine; OpenVINO even before its devices are listed.
    """

    def __init__(self, targets: Sequence[Target], settings: BenchSettings):
        from edgetl.runtime import env

        self.ort = env.onnxruntime_providers()
        self.gpu_ok, self.gpu_reason = (False, "")
        if any(t.format == "tflite" for t in targets) and settings.gpu is not False:
            self.gpu_ok, self.gpu_reason = env.litert_gpu_delegate()
        from edgetl.runtime.openvino_runner import available_devices

        self._probes: dict[tuple[str, str], str | None] = {}
        self.openvino_crash: str | None = None
        wanted = settings.runtimes is None or any(r == "openvino" for r, _ in parse_runtimes(settings.runtimes))
        if wanted and env.package_version("openvino") and any(t.format in ("tflite", "onnx") for t in targets):
            self.openvino_crash = self.probe("openvino", "cpu")  # listing the devices loads the plugins
        self.openvino = [] if self.openvino_crash else available_devices()  # [] when OpenVINO is not installed
        self.mediapipe = importlib.util.find_spec("mediapipe") is not None  # importing it is left to the row
        self._ov_default: dict[str, str | None] = {}

    def probe(self, runtime: str, device: str) -> str | None:
        """None when the runner survives a child-process run here (cached per machine), else the reason."""
        if (runtime, device) not in self._probes:
            from edgetl.runtime.probe import probe

            self._probes[(runtime, device)] = probe(runtime, device)
        return self._probes[(runtime, device)]

    def openvino_default(self, device: str) -> str | None:
        """The precision an OpenVINO device runs by default (CPU with AMX/avx512_bf16: bf16; GPU: f16)."""
        if device not in self._ov_default:
            from edgetl.runtime.openvino_runner import default_precision

            self._ov_default[device] = default_precision(device)
        return self._ov_default[device]


def has_tflite_metadata(path: str | Path) -> bool:
    """Whether a ``.tflite`` file has a ``TFLITE_METADATA`` entry (MediaPipe's ImageClassifier needs one for a
    float input): the entry's name is stored as a plain string in the flatbuffer."""
    try:
        return b"TFLITE_METADATA" in Path(path).read_bytes()
    except OSError:
        return False


def _runtime_jobs(t: Target, runtime: str, device: str | None, settings: BenchSettings, av: _Availability,
                  explicit: bool) -> list[_Job]:
    """The jobs of one target on one runtime (``device`` None: the runtime's default devices)."""
    cpu = [th for th in settings.threads]
    if runtime == "tensorflow":
        return [_Job(t, max(settings.threads), "cpu", runtime=runtime)]
    if runtime == "litert":
        jobs = [_Job(t, th, "cpu", runtime=runtime) for th in cpu] if device in (None, "cpu") else []
        if device == "gpu" or (device is None and (settings.gpu is True or (settings.gpu is None and av.gpu_ok))):
            jobs.append(_Job(t, None, "gpu", skip=None if av.gpu_ok else f"skipped: {av.gpu_reason}", runtime=runtime))
        return jobs
    if runtime == "mediapipe":  # one row per file: ImageClassifierOptions has no thread setting
        skip = None if av.mediapipe else "skipped: MediaPipe is not installed (pip install 'edgetl[mediapipe]')"
        if skip is None and not has_tflite_metadata(t.path):
            if not explicit:
                return []  # not a file for the phone's client (run_bench notes it)
            skip = "skipped: no TFLite metadata in this file (MediaPipe needs it; edgetl export writes it)"
        return [_Job(t, None, "cpu", runtime=runtime, skip=skip)]
    if runtime == "litert-compiled":
        if device in (None, "cpu"):
            return [_Job(t, th, "cpu", runtime=runtime) for th in cpu]
        return [_Job(t, None, device, runtime=runtime)]  # compiled strictly: fails (skipped) without that accelerator
    if runtime == "openvino":
        if av.openvino_crash:
            return [_Job(t, None, device or "cpu", runtime=runtime, skip=f"skipped: {av.openvino_crash}")]
        if not av.openvino:
            if not explicit:
                return []  # not installed: a note, not a skipped row per file
            return [_Job(t, None, device or "cpu", runtime=runtime,
                         skip="skipped: OpenVINO is not installed (pip install 'edgetl[openvino]')")]
        have = sorted({d.split(".")[0].lower() for d in av.openvino})
        devices = [device] if device else have
        jobs = []
        for dev in devices:
            if dev != "auto" and dev not in have:
                jobs.append(_Job(t, None, dev, runtime=runtime,
                                 skip=f"skipped: OpenVINO device {dev.upper()} not available here (have: {', '.join(av.openvino)})"))
                continue
            # the file's own precision (forced f32), then, where the device would run lower, its default as its own row
            lower = av.openvino_default(dev) if dev != "auto" and _precision_hint(t) not in INTEGER_PRECISIONS else None
            for ov_default in (None, lower) if lower not in (None, "f32") else (None,):
                if dev == "cpu":
                    jobs += [_Job(t, th, "cpu", runtime=runtime, ov_default=ov_default) for th in cpu]
                else:
                    jobs.append(_Job(t, None, dev, runtime=runtime, ov_default=ov_default))
        return jobs
    # onnxruntime: one job per execution provider
    from edgetl.runtime.onnx_runner import provider_name

    if device:
        names = [provider_name(device)]
    elif settings.providers:
        names = [provider_name(p) for p in settings.providers]
    else:
        names = ["CPUExecutionProvider"] + [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in av.ort]
    jobs = []
    for name in names:
        dev = name.replace("ExecutionProvider", "").lower()
        if name not in av.ort:
            have = ", ".join(a.replace("ExecutionProvider", "") for a in av.ort) or "onnxruntime not installed"
            jobs.append(_Job(t, None, dev, (name,), skip=f"skipped: {name} not available (have: {have})", runtime=runtime))
        elif name == "CPUExecutionProvider":
            jobs += [_Job(t, th, "cpu", (name,), runtime=runtime) for th in cpu]
        else:
            jobs.append(_Job(t, max(settings.threads), dev, (name,), runtime=runtime))
    return jobs


def plan_jobs(targets: Sequence[Target], settings: BenchSettings) -> list[_Job]:
    """One job per (target, runtime, device/provider, thread count); unavailable ones become skip jobs.

    Without ``settings.runtimes`` every runtime that reads the file and is installed here runs it
    (OpenVINO only when installed); with it, exactly the runtimes (and devices) named.
    """
    av = _Availability(targets, settings)
    explicit = settings.runtimes is not None
    selected = parse_runtimes(settings.runtimes) if explicit else tuple((r, None) for r in RUNTIMES)
    jobs: list[_Job] = []
    for t in targets:
        for runtime, device in selected:
            if t.format in RUNTIMES[runtime][0]:
                jobs += _runtime_jobs(t, runtime, device, settings, av, explicit)
    from edgetl.runtime.probe import needs_probe

    for j in jobs:  # a runner that would crash this process is a skipped row, never a dead bench
        if j.skip is None and needs_probe(j.runtime, j.device):
            reason = av.probe(j.runtime, j.device)
            j.skip = f"skipped: {reason}" if reason else None
    return jobs


def _open(job: _Job) -> Any:
    from edgetl.runtime.loader import keras_file_runner, runner_for

    t = job.target
    if job.runtime == "tensorflow":
        _set_tf_threads(job.threads)
        return runner_for(t.run_dir) if t.run_dir else keras_file_runner(t.path)
    if job.runtime == "litert":
        return runner_for(t.path, threads=job.threads, use_gpu=job.device == "gpu")
    if job.runtime == "onnxruntime":
        return runner_for(t.path, threads=job.threads, providers=job.providers)
    if job.runtime == "openvino":
        return runner_for(t.path, threads=job.threads, runtime=job.runtime, device=job.device,
                          inference_precision=None if job.ov_default else "f32")
    return runner_for(t.path, threads=job.threads, runtime=job.runtime, device=job.device)


def _set_tf_threads(n: int | None) -> None:
    try:
        import tensorflow as tf
    except Exception as exc:  # noqa: BLE001
        raise RuntimeUnavailableError(f"TensorFlow is not installed ({type(exc).__name__}); Keras rows need the 'train' extra") from None
    if n:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TensorFlow already initialized: the row records the setting actually in force


def _latency_batch(pixels: Any, batch: int) -> Any:
    if isinstance(pixels, list):  # image files for a runner that resizes itself
        return (pixels * -(-batch // len(pixels)))[:batch]
    reps = -(-batch // len(pixels))
    return np.concatenate([pixels] * reps)[:batch] if reps > 1 else pixels[:batch]


@dataclass
class _BenchState:
    """What the rows of one bench share: the data, and caches so that each label set's images are
    loaded and decoded once, each file's accuracy measured once per device, and one reference."""

    settings: BenchSettings
    data: str | Path | None
    run: Any
    notes: list[str] = field(default_factory=list)
    data_info: dict[str, Any] = field(default_factory=dict)
    eval_sets: dict[tuple, Any] = field(default_factory=dict)  # labels -> EvalSet | EdgetlError | None
    pixels: dict[tuple, np.ndarray] = field(default_factory=dict)  # (labels, size, resize) -> uint8 images
    accuracy: dict[tuple, dict[str, Any]] = field(default_factory=dict)  # (file, runtime, device, precision) -> metrics
    ref: dict[tuple, tuple[str, np.ndarray, float | None]] = field(default_factory=dict)  # labels -> (name, probs, top1)
    decode_progress: Callable[[str], Callable[[int, int], None]] | None = None  # what -> progress(done, total) of a decode
    top1: dict[tuple, np.ndarray] = field(default_factory=dict)  # (file, runtime, device, precision) -> predicted classes

    def eval_set(self, labels: list[str]) -> EvalSet | None:
        """The labelled images for a label set (found once; a data problem is raised for every row)."""
        key = tuple(labels)
        if key not in self.eval_sets:
            try:
                es = eval_set_for(labels, self.data, self.run, self.settings.samples, self.settings.seed,
                                  self.settings.accept_changed_data, self.decode_progress)
            except EdgetlError as exc:  # the same data problem for every model with these labels: found once
                self.eval_sets[key] = exc
                raise
            self.eval_sets[key] = es
            if es is not None:
                self.data_info.setdefault("sources", []).append(
                    {"source": es.source, "images": len(es.paths), "classes": es.classes, "note": es.note,
                     "split_sha256": es.split_sha256, **({"warning": es.warning} if es.warning else {})})
                self.data_info["sources"][-1]["majority_baseline"] = majority_for(self.run, labels, es.y)
                for line in (es.warning, es.note):
                    if line:
                        self.notes.append(line)
        es = self.eval_sets[key]
        if isinstance(es, EdgetlError):
            raise es
        return es

    def images(self, name: str, labels: list[str], pre: Any, es: EvalSet | None) -> tuple[np.ndarray, bool]:
        """(uint8 images at ``pre``'s size, whether they were decoded just now)."""
        from edgetl.preprocess import prepare_batch

        key = (tuple(labels), tuple(pre.input_size), pre.resize)
        if key in self.pixels:
            return self.pixels[key], False
        if es is not None:
            self.pixels[key] = prepare_batch(es.paths, pre, progress=self.decode_progress(
                f"decoding {len(es.paths)} images at {pre.input_size[0]}x{pre.input_size[1]}") if self.decode_progress else None)
        else:
            h, w = pre.input_size
            n = max(self.settings.batch, 1)
            self.pixels[key] = np.random.default_rng(self.settings.seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            self.notes.append(f"{name}: no labelled data (pass --data DIR): accuracy not measured, latency on random pixels")
        return self.pixels[key], True


def run_bench(items: Sequence[str | Path], settings: BenchSettings = BenchSettings(), data: str | Path | None = None,
              progress: Callable[[int, int, str], None] | None = None,
              decode_progress: Callable[[str], Callable[[int, int], None]] | None = None) -> BenchResult:
    """Bench every target in ``items`` (run directories and/or model files) and return the rows.

    Args:
        items: run directories (their Keras model and every export) and/or model files.
        settings: threads, batch, timing budget, sample count, accuracy floor.
        data: labelled images (``DIR/<class>/`` or ``DIR/val/<class>/``); default: the run's test split, else its validation split.
        progress: called as ``progress(i, n, label)`` before each row (for a progress indicator).
        decode_progress: ``decode_progress(what)`` returns the ``progress(done, total)`` of one decoding step
            (checking the run's images, decoding the evaluation images): the CLI prints it, bench does not.
    """
    from edgetl.runtime.env import environment

    targets, run = discover_targets(items, keras=settings.keras)
    if data is not None:
        check_labels_up_front(targets, data)
    jobs = plan_jobs(targets, settings)
    env = environment()
    state = _BenchState(settings, data, run, decode_progress=decode_progress)
    if data is None and run is not None:
        from edgetl.data import DataChangedError

        try:  # the run's own split, checked against config.json before anything is measured
            state.eval_set(list(run.labels))
        except DataChangedError:
            raise
        except EdgetlError:
            pass  # a row reports it
    no_md = [t.name for t in targets if t.format == "tflite" and not any(j.target is t and j.runtime == "mediapipe" for j in jobs)]
    if settings.runtimes is None and no_md and importlib.util.find_spec("mediapipe") is not None:
        state.notes.append(f"MediaPipe rows: none for {', '.join(no_md)} (no TFLite metadata, which MediaPipe needs)")
    if settings.runtimes is None and any(t.format in ("tflite", "onnx") for t in targets) \
            and not any(j.runtime == "openvino" for j in jobs):
        state.notes.append("OpenVINO rows: OpenVINO is not installed (pip install 'edgetl[openvino]' adds them)")

    # Reference candidates (Keras, then fp32 artifacts) run first so every other row can be compared
    # with them; rows are put back in table order (format, precision) at the end.
    order = sorted(range(len(jobs)), key=lambda j: (jobs[j].target.format != "keras",
                                                     _precision_hint(jobs[j].target) != "fp32" or jobs[j].ov_default is not None, j))
    done: dict[int, BenchRow] = {}
    for i, jidx in enumerate(order):
        job = jobs[jidx]
        if progress:
            th = "" if job.threads is None else f", {job.threads} thread(s)"
            progress(i + 1, len(jobs), f"{job.target.name} [{job.runtime}, {job.device}{th}]")
        done[jidx] = _bench_row(job, state)
    rows = [done[j] for j in range(len(jobs))]

    ref_names = sorted({v[0] for v in state.ref.values()})
    notes = state.notes + client_agreement(rows, state.top1) + speed_notes(rows, env)
    floor, best, why = choose_best(rows, settings.min_accuracy, [v[2] for v in state.ref.values()], settings.min_agreement)
    if best is None and any(r.ok for r in rows):
        notes.append(why)
    low = sorted({f"{r.model} on {r.runtime}" for r in rows if r.ok and r.agreement is not None and r.agreement < settings.min_agreement})
    if low:
        notes.append(f"not recommended, top-1 agreement with the float model under {settings.min_agreement:g} %: {', '.join(low)}")
    state.data_info["floor_top1"] = floor
    return BenchResult(rows, env, settings, state.data_info, ", ".join(ref_names) or None, best, notes)


def _bench_row(job: _Job, state: _BenchState) -> BenchRow:
    """One row: open the file on the job's runtime, time it, measure its accuracy; never raises."""
    t, settings = job.target, state.settings
    precision = t.precision_hint or _precision_hint(t)
    row = BenchRow(model=t.name, path=str(t.path), format=t.format, runtime=job.runtime,
                   precision=f"{precision}->{job.ov_default}" if job.ov_default else precision, threads=job.threads,
                   device=job.device, batch=settings.batch, size_mb=t.size_mb)
    if job.providers:
        row.detail["providers"] = list(job.providers)
    if job.skip:
        row.status = job.skip
        return row
    runner = None
    try:
        gc.collect()
        mem = _MemoryProbe()
        t0 = time.perf_counter_ns()
        runner = _open(job)
        row.load_ms = (time.perf_counter_ns() - t0) / 1e6
        row.precision = getattr(runner, "precision", row.precision)
        if t.format == "keras":
            row.threads = runner.threads
        row.detail.update(runner.describe())
        labels = list(runner.labels)
        es = state.eval_set(labels)
        if getattr(runner, "input_kind", "pixels") == "images":  # the client resizes: it gets the image files
            pixels = list(es.paths) if es is not None else list(state.images(t.name, labels, runner.preprocessing, es)[0])
            new_pixels = False
        else:
            pixels, new_pixels = state.images(t.name, labels, runner.preprocessing, es)
        _time_row(row, runner, pixels, settings)
        peak = mem.peak_delta_mb()
        cache_mb = pixels.nbytes / 2**20 if new_pixels and isinstance(pixels, np.ndarray) else 0.0  # not the model's memory
        row.peak_mem_mb = None if peak is None else max(0.0, peak - cache_mb)
        if es is not None:
            _accuracy_row(row, runner, pixels, es, labels, state, (str(t.path), job.runtime, job.device, row.precision))
    except RuntimeUnavailableError as exc:
        row.status = f"skipped: {exc}"
    except Exception as exc:  # noqa: BLE001 - one failing runtime never aborts the table
        row.status = f"error: {one_line(exc)}"
    finally:
        if runner is not None and hasattr(runner, "close"):
            runner.close()
        del runner
    return row


def _time_row(row: BenchRow, runner: Any, pixels: np.ndarray, settings: BenchSettings) -> None:
    """Latency first, on the runtime as loaded: resizing an interpreter for the batched accuracy pass
    and back measurably slows XNNPACK (~3 %), which a bare invoke() loop would not see."""
    fn = runner.timer(_latency_batch(pixels, settings.batch))
    t0 = time.perf_counter_ns()
    fn()
    row.first_ms = (time.perf_counter_ns() - t0) / 1e6
    n_warm, times = timed_runs(fn, settings.warmup_runs, settings.warmup_time, settings.min_runs,
                               settings.min_time, settings.max_time)
    for k, v in latency_stats(times, settings.batch).items():
        setattr(row, k, v)
    row.warmup_runs = n_warm
    if len(times) < settings.min_runs:
        row.detail["note"] = f"--max-time reached after {len(times)} runs (< --min-runs {settings.min_runs})"


def _accuracy_row(row: BenchRow, runner: Any, pixels: np.ndarray, es: EvalSet, labels: list[str],
                  state: _BenchState, key: tuple) -> None:
    """Accuracy once per (file, runtime, device, precision that ran); the reference is the first model of each
    label set that ran fp32 (a ``fp32->bf16`` row never is: it is compared with it, like int8)."""
    ekey = tuple(labels)
    if key not in state.accuracy:
        probs = runner.predict(pixels)
        state.top1[key] = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, np.int64)
        rref = state.ref.get(ekey)
        m = accuracy_metrics(probs, es.y, labels, rref[1] if rref else None)
        if rref is None and (row.format == "keras" or row.precision == "fp32") and row.runtime != "mediapipe":
            state.ref[ekey] = (row.model, probs, m["top1"])
            m["agreement"] = 100.0
            m["max_prob_diff"] = 0.0
            m["is_reference"] = True
        state.accuracy[key] = m
    m = state.accuracy[key]
    for k in ("n_images", "correct", "top1", "balanced_accuracy", "macro_f1", "top5", "agreement", "max_prob_diff",
              "per_class_recall", "confusion_matrix"):
        setattr(row, k, m.get(k))
    rref = state.ref.get(ekey)
    if rref is not None and m.get("top1") is not None and rref[2] is not None:
        row.top1_delta_pt = m["top1"] - rref[2]
        row.detail["reference"] = rref[0]


def client_agreement(rows: Sequence[BenchRow], top1: dict[tuple, np.ndarray]) -> list[str]:
    """Per file with a MediaPipe row: its top-1 agreement with the LiteRT row (CPU) of the same file, set on the
    MediaPipe row (``detail["agreement_vs_litert"]``) and returned as notes: what the phone app says vs edgetl."""
    notes = []
    for r in rows:
        if r.runtime != "mediapipe" or not r.ok:
            continue
        mine = top1.get((r.path, "mediapipe", r.device, r.precision))
        lite = next((v for k, v in top1.items() if k[:3] == (r.path, "litert", "cpu")), None)  # the file's own precision
        if mine is None or lite is None or len(mine) != len(lite) or not len(mine):
            continue
        k = int((mine == lite).sum())
        r.detail["agreement_vs_litert"] = round(100.0 * k / len(mine), 3)
        r.detail["agreement_vs_litert_count"] = [k, len(mine)]
        notes.append(f"{r.model}: MediaPipe ImageClassifier vs LiteRT (edgetl's resize, "
                     f"{r.detail.get('edgetl_resize', '?')}) top-1 agreement {100.0 * k / len(mine):.2f} % ({k}/{len(mine)})")
    return notes


def _precision_hint(t: Target) -> str:
    from edgetl.runtime.fileinfo import precision_from_name

    return precision_from_name(t.path) or ("fp32" if t.format == "keras" else "unknown")


def choose_best(rows: Sequence[BenchRow], min_accuracy: float | None, ref_top1: Sequence[float | None] = (),
                min_agreement: float | None = None) -> tuple[float | None, dict[str, Any] | None, str | None]:
    """(floor, best, why not): the fastest p50 among rows that meet the top-1 floor (percent) and
    agree with the float reference's top-1 on at least ``min_agreement`` % of the images.

    Top-1 alone is not enough: a file can score as well as the float model while disagreeing with it
    on several images (OpenVINO's int8 kernels on AVX2 gave 80 % agreement); it is not the model
    that was verified. So nothing is recommended without a float reference, and a row whose
    agreement is unknown is never picked; ``why not`` says why when nothing is. Without
    ``min_accuracy`` the floor is the reference's top-1 minus one point.
    """
    known = [r for r in ref_top1 if r is not None]
    floor = float(min_accuracy) if min_accuracy is not None else ((min(known) - 1.0) if known else None)
    timed = [r for r in rows if r.ok and r.p50_ms is not None]
    if not timed:
        return floor, None, "no row was measured"
    if not known:
        return floor, None, ("no recommendation: no float reference (the Keras model or an fp32 file) was measured on "
                             "labelled images, so no row's agreement with the float model is known")
    ok = [r for r in timed if r.agreement is not None and r.top1 is not None]
    unknown = sorted({f"{r.model} on {r.runtime}" for r in timed if r.agreement is None or r.top1 is None})
    if min_agreement is not None:
        ok = [r for r in ok if r.agreement + 1e-9 >= min_agreement]
    if floor is not None:
        ok = [r for r in ok if r.top1 + 1e-9 >= floor]
    if not ok:
        why = f"no row reaches the top-1 floor of {floor:.2f} %" + (
            f" with >= {min_agreement:g} % agreement" if min_agreement is not None else "")
        if unknown:
            why += f" (agreement unknown, never recommended: {', '.join(unknown[:6])})"
        return floor, None, why
    b = min(ok, key=lambda r: (r.p50_ms, -(r.top1 or 0)))
    return floor, {"model": b.model, "path": b.path, "format": b.format, "runtime": b.runtime, "precision": b.precision,
                   "threads": b.threads, "device": b.device, "p50_ms": b.p50_ms, "top1": b.top1, "floor_top1": floor,
                   "agreement": b.agreement, "min_agreement": min_agreement}, None


def speed_notes(rows: Sequence[BenchRow], env: dict[str, Any]) -> list[str]:
    """Say plainly how int8 compares with fp32 on the same runtime and threads; never claim an unmeasured speed-up."""
    from edgetl.runtime.env import int8_fast_path

    notes = []
    fast = int8_fast_path(env)
    flags = env.get("cpu", {}).get("flags", {})
    have = ", ".join(k for k in ("avx512_vnni", "avx_vnni", "amx", "dotprod", "i8mm") if flags.get(k))
    groups: dict[tuple, dict[str, BenchRow]] = {}
    for r in rows:
        if r.ok and r.p50_ms:
            groups.setdefault((r.format, r.runtime, r.device, r.threads, r.batch), {})[r.precision] = r
    for (fmt, rt, dev, th, _), by in sorted(groups.items(), key=lambda kv: str(kv[0])):
        where = f"{fmt}/{rt}, {th} thread(s)" if dev == "cpu" else f"{fmt}/{rt} on {dev}"
        notes += _lowered_notes(by, where)
        q = next((p for p in ("int8", "qat_int8") if p in by), None)
        if q is None or "fp32" not in by:
            continue
        a, b = by[q].p50_ms, by["fp32"].p50_ms
        ratio = a / b
        if ratio <= 1.0 - MEANINGFUL_SPEEDUP:
            notes.append(f"{q} is {b / a:.2f}x faster than fp32 ({where}: p50 {a:.3g} vs {b:.3g} ms).")
        else:
            verdict = "slower than" if ratio > 1.02 else "not meaningfully faster than"
            why = ("this CPU has no int8 dot-product instructions (VNNI/dotprod), so int8 runs at about float speed here; "
                   "the gain is mainly the ~4x smaller file (ARM CPUs with dotprod typically run XNNPACK int8 2-3x faster)"
                   if not fast else f"even though this CPU has {have or 'int8 dot-product instructions'}, no int8 speed-up was measured for this model and runtime")
            notes.append(f"{q} is {verdict} fp32 ({where}: p50 {a:.3g} vs {b:.3g} ms, ratio {ratio:.2f}): {why}.")
    return notes


def _lowered_notes(by: dict[str, BenchRow], where: str) -> list[str]:
    """A row the device ran below the file's precision (``fp32->bf16``) against the same file run as told."""
    notes = []
    for label, r in sorted(by.items()):
        base, _, ran = label.partition("->")
        if not ran or base not in by:
            continue
        agree = f"; top-1 agreement with the float model {r.agreement:.2f} %" if r.agreement is not None else ""
        notes.append(f"{label}: the device's default precision ({ran}) instead of the file's; p50 {r.p50_ms:.3g} vs "
                     f"{by[base].p50_ms:.3g} ms as {base} ({where}, ratio {r.p50_ms / by[base].p50_ms:.2f}){agree}.")
    return notes
