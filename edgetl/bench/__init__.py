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


The package: :mod:`~edgetl.bench.results` (settings, runtimes, rows: data only), :mod:`~edgetl.bench.targets`
(targets, evaluation images, the label check), :mod:`~edgetl.bench.jobs` (the plan, availability probes,
opening runners), :mod:`~edgetl.bench.core` (``run_bench`` and each row's measurement),
:mod:`~edgetl.bench.notes` (the recommendation and the notes). ``from edgetl.bench import X`` works for all.
"""

from edgetl.bench.core import _latency_batch, accuracy_metrics, run_bench  # noqa: F401 - _latency_batch: tests use it
from edgetl.bench.jobs import has_tflite_metadata, plan_jobs
from edgetl.bench.notes import choose_best, client_agreement, speed_notes
from edgetl.bench.results import (
    FORMAT_ORDER,
    INTEGER_PRECISIONS,
    MEANINGFUL_SPEEDUP,
    PRECISION_ORDER,
    RUNTIMES,
    BenchResult,
    BenchRow,
    BenchSettings,
    Target,
    parse_runtimes,
)
from edgetl.bench.targets import EvalSet, LabelMismatchError, check_labels_up_front, discover_targets, eval_set_for, majority_for
from edgetl.runtime.timing import latency_stats, quick_latency, timed_runs  # the one timer (re-exported)

__all__ = [
    "FORMAT_ORDER", "INTEGER_PRECISIONS", "MEANINGFUL_SPEEDUP", "PRECISION_ORDER", "RUNTIMES", "BenchResult", "BenchRow",
    "BenchSettings", "EvalSet", "LabelMismatchError", "Target", "accuracy_metrics", "check_labels_up_front", "choose_best",
    "client_agreement", "discover_targets", "eval_set_for", "has_tflite_metadata", "latency_stats", "majority_for",
    "parse_runtimes", "plan_jobs", "quick_latency", "run_bench", "speed_notes", "timed_runs",
]
