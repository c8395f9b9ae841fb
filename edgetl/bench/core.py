"""``run_bench``: each job's row (load, latency, peak memory, accuracy against the float reference),
never aborting the table."""

from __future__ import annotations

import gc
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgetl.bench.jobs import _Job, _open, plan_jobs
from edgetl.bench.notes import choose_best, client_agreement, contention_note, saturation_notes, speed_notes
from edgetl.bench.results import BenchResult, BenchRow, BenchSettings, _precision_hint
from edgetl.bench.targets import EvalSet, check_labels_up_front, discover_targets, eval_set_for, majority_for
from edgetl.errors import EdgetlError, one_line
from edgetl.runtime.env import RuntimeUnavailableError
from edgetl.runtime.timing import CpuContention, latency_stats, timed_runs


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


def _latency_batch(pixels: Any, batch: int) -> Any:
    """The timed batch: the first ``batch`` images (repeated when there are fewer), as one array."""
    if isinstance(pixels, list):  # image files for a runner that resizes itself
        return (pixels * -(-batch // len(pixels)))[:batch]
    first = np.asarray(pixels[:batch])  # a slice: read from a PixelStore, never the whole set
    reps = -(-batch // len(first))
    return np.concatenate([first] * reps)[:batch] if reps > 1 else first


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
    pixels: dict[tuple, Any] = field(default_factory=dict)  # (labels, size, resize) -> uint8 images (PixelStore)
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

    def images(self, name: str, labels: list[str], pre: Any, es: EvalSet | None) -> tuple[Any, bool]:
        """(uint8 images at ``pre``'s size, whether they were decoded just now): decoded once per label set,
        size and resize into a :class:`edgetl.pixels.PixelStore` (in RAM within the pixel budget, else in a
        temporary file) that every runner reads a batch at a time."""
        from edgetl.pixels import decode_store

        key = (tuple(labels), tuple(pre.input_size), pre.resize)
        if key in self.pixels:
            return self.pixels[key], False
        if es is not None:
            self.pixels[key] = decode_store(es.paths, pre, progress=self.decode_progress(
                f"decoding {len(es.paths)} images at {pre.input_size[0]}x{pre.input_size[1]}") if self.decode_progress else None)[0]
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
    from edgetl.pixels import closing_stores

    with closing_stores():  # the decoded images (RAM or a temporary file) are freed when the bench ends, also on an error
        return _run_bench(items, settings, data, progress, decode_progress)


def _run_bench(items: Sequence[str | Path], settings: BenchSettings, data: str | Path | None,
               progress: Callable[[int, int, str], None] | None,
               decode_progress: Callable[[str], Callable[[int, int], None]] | None) -> BenchResult:
    """:func:`run_bench` inside its pixel scope."""
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
    notes = (state.notes + client_agreement(rows, state.top1) + speed_notes(rows, env) + contention_note(rows, env)
             + saturation_notes(rows, env, settings.min_agreement))
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
        cache_mb = getattr(pixels, "ram_bytes", getattr(pixels, "nbytes", 0)) / 2**20 if new_pixels else 0.0  # decoded images: not the model's memory
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
    with CpuContention() as busy:
        n_warm, times = timed_runs(fn, settings.warmup_runs, settings.warmup_time, settings.min_runs,
                                   settings.min_time, settings.max_time)
    if busy.result is not None:
        row.detail["cpu_others_cores"] = round(busy.result["others_cores"], 2)
        row.detail["cpu_steal_cores"] = round(busy.result["steal_cores"], 2)
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
