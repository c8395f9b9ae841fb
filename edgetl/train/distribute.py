"""Devices and tf.distribute: the device plan, the multi-worker role from ``TF_CONFIG``, the strategy,
mixed precision, the shards of a multi-worker run (which rows each worker embeds, the head's
per-worker datasets, gathering small arrays) and the two Keras 3 fixes that let ``fit`` run under
MultiWorkerMirroredStrategy (:func:`keras_private_names` lists the private names they rely on)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

from edgetl.errors import EdgetlError, UsageError


DISTRIBUTE_ENV = "EDGETL_DISTRIBUTE"
DISTRIBUTE_CHOICES = ("auto", "none", "mirrored", "multi-worker")


@dataclass(frozen=True)
class DevicePlan:
    """How to use the accelerators that are present (decided from the device list only)."""

    gpus: int
    mixed_precision: bool
    jit_compile: bool
    distribute: str  # "none", "mirrored" or "multi-worker"

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": self.gpus, "mixed_precision": self.mixed_precision, "jit_compile": self.jit_compile, "distribute": self.distribute}


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in a multi-worker cluster described by ``TF_CONFIG``."""

    index: int  # position in the cluster (the chief is 0)
    workers: int  # processes that train (chief + workers)
    chief: bool  # the one process that writes the run directory

    def describe(self) -> str:
        return f"{'chief' if self.chief else 'worker'} {self.index} of {self.workers}"


def cluster_role(env: dict[str, str] | None = None) -> WorkerRole | None:
    """The multi-worker role from the standard ``TF_CONFIG`` variable, or None for one process.

    ``TF_CONFIG`` is ``{"cluster": {"worker": ["host:port", ...], "chief": [...]}, "task": {"type": "worker", "index": 0}}``.
    The chief is the ``chief`` task, or worker 0 when the cluster has no ``chief`` (the TensorFlow convention).

    Raises:
        UsageError: TF_CONFIG is not valid JSON or does not name this task.
    """
    raw = (os.environ if env is None else env).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        cluster = doc.get("cluster") or {}
        chiefs = list(cluster.get("chief") or [])
        workers = list(cluster.get("worker") or [])
        task = doc.get("task") or {}
        ttype, tindex = str(task.get("type", "worker")), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"TF_CONFIG is not a valid cluster description ({type(exc).__name__}: {exc})") from None
    n = len(chiefs) + len(workers)
    if n <= 1:
        return None
    if ttype not in ("chief", "worker") or tindex < 0 or tindex >= len(chiefs if ttype == "chief" else workers):
        raise UsageError(f"TF_CONFIG task {ttype}:{tindex} is not in its cluster (chief: {len(chiefs)}, worker: {len(workers)}); "
                         "edgetl trains on chief and worker tasks only")
    index = tindex if ttype == "chief" else len(chiefs) + tindex
    return WorkerRole(index, n, ttype == "chief" or (not chiefs and tindex == 0))


def requested_distribution(env: dict[str, str] | None = None) -> str:
    """``EDGETL_DISTRIBUTE`` (auto, none, mirrored, multi-worker); ``auto`` when unset.

    Raises:
        UsageError: an unknown value.
    """
    value = (os.environ if env is None else env).get(DISTRIBUTE_ENV, "").strip().lower() or "auto"
    if value not in DISTRIBUTE_CHOICES:
        raise UsageError(f"{DISTRIBUTE_ENV} must be one of {', '.join(DISTRIBUTE_CHOICES)}, got {value!r}")
    return value


def plan_devices(gpus: Sequence[Any], distribute: str = "auto", role: WorkerRole | None = None) -> DevicePlan:
    """Mixed precision and XLA on a GPU, MirroredStrategy on several; plain float32 on CPU.

    On CPU, XLA recompiles for every input shape and oneDNN kernels are already fast, so it stays off.
    ``distribute`` overrides the strategy (``auto``: multi-worker when ``role`` is a cluster, mirrored
    with several GPUs, else none); a mirrored run on a CPU uses every logical CPU device.
    """
    n = len(gpus)
    if distribute == "auto":
        distribute = "multi-worker" if role is not None else ("mirrored" if n > 1 else "none")
    if distribute == "multi-worker" and role is None:
        raise UsageError(f"{DISTRIBUTE_ENV}=multi-worker needs TF_CONFIG describing a cluster of two or more workers")
    return DevicePlan(n, n > 0, n > 0, distribute)


def _make_strategy(plan: DevicePlan) -> Any:
    """The tf.distribute strategy of ``plan`` (None: the default, one device).

    A strategy's ``scope()`` is a one-shot context manager: every ``with`` needs a fresh one (:func:`_scope`).
    """
    import tensorflow as tf

    if plan.distribute == "multi-worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _fix_keras_multi_worker_reduce()
        return strategy
    if plan.distribute == "mirrored":
        if plan.gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    return None


def _scope(strategy: Any) -> Any:
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _multi_worker_build_fix(model: Any, strategy: Any) -> None:
    """Let Keras 3 ``fit``/``evaluate`` start under MultiWorkerMirroredStrategy.

    Keras 3 (3.15 here) learns the input shapes by all-reducing the first distributed batch
    (``_maybe_symbolic_build``), which fails across workers with "Attempt to convert a value
    (PerReplica ...) to a Tensor" (keras-team/keras#20585). Shapes are all it needs, so this model
    builds from this worker's local batch instead: no cross-worker op, same variables.
    """
    import types

    import tensorflow as tf

    if not (hasattr(model, "_maybe_symbolic_build") and hasattr(model, "_symbolic_build")):
        return

    def local(v: Any) -> Any:
        return strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(_maybe_symbolic_build, model)


def _fix_keras_multi_worker_reduce() -> None:
    """Let Keras 3 report scalar logs under MultiWorkerMirroredStrategy (process-wide, idempotent).

    Keras 3 (3.15 here) averages each step's logs across workers with ``strategy.reduce("MEAN", v, axis=0)``,
    which fails on scalars ("Invalid reduction dimension 0 for input with 0 dimensions";
    keras-team/keras#20585). Scalars are averaged with ``axis=None`` instead; everything else goes
    to Keras unchanged. Installed only when a multi-worker strategy is created.
    """
    import tensorflow as tf

    try:
        from keras.src.backend.tensorflow import trainer as kt
    except ImportError:  # pragma: no cover - another Keras layout: nothing to fix here
        return
    original = getattr(kt, "reduce_per_replica", None)
    multi = getattr(kt, "_collective_all_reduce_multi_worker", None)
    if original is None or multi is None or getattr(original, "_edgetl_fixed", False):
        return

    def rank(v: Any) -> int | None:
        v = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
        shape = getattr(v, "shape", None)
        return None if shape is None else len(shape)

    def reduce_per_replica(values: Any, strategy: Any, reduction: Any) -> Any:
        if reduction in ("auto", "mean") and multi(strategy):
            return tf.nest.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None) if rank(v) == 0 else original(v, strategy, reduction), values)
        return original(values, strategy, reduction)

    reduce_per_replica._edgetl_fixed = True  # type: ignore[attr-defined]
    kt.reduce_per_replica = reduce_per_replica


def shard_rows(n: int, index: int, count: int) -> range:
    """The rows of worker ``index`` of ``count`` among ``n``: every ``count``-th from ``index`` (the
    ``InputContext.shard`` convention; strided, so each worker gets every class of a class-sorted list)."""
    return range(index, n, count)


def gather_shards(strategy: Any, local: Any, n: int, count: int) -> Any:
    """The ``n`` rows of every worker's :func:`shard_rows` part, in their original order, on every worker.

    ``local`` is this worker's part. Public tf.distribute only: each worker's part, zero-padded to the
    largest, becomes the value of its first local replica (``experimental_distribute_values_from_function``)
    and ``strategy.gather`` all-gathers them (a collective: every worker must call it, in the same order).
    """
    import numpy as np
    import tensorflow as tf

    local = np.asarray(local)
    if n == 0:  # the same on every worker: no collective to skip on one side only
        return local[:0]
    sizes = [len(shard_rows(n, k, count)) for k in range(count)]
    rows = max(sizes)
    padded = np.zeros((rows, *local.shape[1:]), local.dtype)
    padded[:len(local)] = local
    replicas = strategy.num_replicas_in_sync
    per_worker = max(1, replicas // count)
    value = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(padded))
    every = np.asarray(strategy.gather(value, axis=0)).reshape(replicas, rows, *local.shape[1:])
    out = np.empty((n, *local.shape[1:]), local.dtype)
    for k in range(count):
        out[k::count] = every[k * per_worker][:sizes[k]]
    return out


def combine_check(names: Sequence[str], local: Sequence[str | None], index: int, count: int, gather: Any) -> list[str | None]:
    """Every listed file's check result from each worker's share (worker ``index`` of ``count`` checked
    the files :func:`shard_rows` gives it; ``local``: its reasons, None for a good file), identical on
    every worker: what one process checking every file would have found.

    ``gather(array, n)`` all-gathers the workers' :func:`shard_rows` parts of ``n`` rows in their original
    order (:func:`gather_shards`); it is called the same number of times, with the same shapes, on every
    worker: (1) each worker's file count and a hash of ``names``, so workers that list different files
    fail alike instead of hanging in the next collective; (2) every file's reason length (0: good);
    (3) only when a file is bad, each worker's reasons as UTF-8 codes, padded to the largest.

    Raises:
        EdgetlError: the workers list different files (the same message on every worker).
    """
    import hashlib

    import numpy as np

    n = len(names)
    rows = shard_rows(n, index, count)
    if len(local) != len(rows):
        raise ValueError(f"worker {index} of {count} has {len(local)} results for its {len(rows)} files")
    digest = hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).digest()
    listed = gather(np.array([[n, *np.frombuffer(digest[:8], np.int32)]], np.int32), count)
    differ = [k for k in range(count) if tuple(listed[k]) != tuple(listed[0])]
    if differ:
        k = differ[0]
        raise EdgetlError(f"the workers list different image files: worker {k} lists {listed[k][0]}, worker 0 lists "
                          f"{listed[0][0]}{' (same count, other names)' if listed[k][0] == listed[0][0] else ''}; "
                          "DATA_DIR must hold the same files on every worker")
    codes = [None if reason is None else reason.encode("utf-8", "surrogateescape") for reason in local]
    lengths = gather(np.array([0 if c is None else len(c) + 1 for c in codes], np.int32), n)
    bad = [[i for i in shard_rows(n, k, count) if lengths[i]] for k in range(count)]
    most = max(len(b) for b in bad)
    out: list[str | None] = [None] * n
    if most == 0:  # the same on every worker: no third collective anywhere
        return out
    block = np.zeros((most, max(1, int(lengths.max()) - 1)), np.int32)
    for j, c in enumerate(c for c in codes if c is not None):
        block[j, :len(c)] = np.frombuffer(c, np.uint8)
    every = gather(block, most * count)  # row j * count + k: worker k's j-th bad file
    for k in range(count):
        for j, i in enumerate(bad[k]):
            out[i] = bytes(every[j * count + k][:lengths[i] - 1].astype(np.uint8)).decode("utf-8", "surrogateescape")
    return out


def check_combiner(strategy: Any, index: int, count: int) -> Any:
    """``combine(names, reasons)`` of :class:`edgetl.data.CheckShard` for worker ``index`` of ``count``:
    :func:`combine_check` through ``strategy``'s all-gather (:func:`gather_shards`)."""
    return lambda names, local: combine_check(names, local, index, count,
                                              lambda a, n: gather_shards(strategy, a, n, count))


def distributed_train_data(strategy: Any, count: int, smallest: int, global_batch: int,
                           make: Any) -> tuple[Any, int]:
    """The head's training input of a multi-worker run: each worker's dataset from its own rows.

    ``make(batch)`` builds this worker's shuffled, batched dataset at the per-replica batch
    (``InputContext.get_per_replica_batch_size``). Every worker takes the same number of steps per epoch
    (collectives deadlock on unequal counts): as many as the smallest worker's ``smallest`` rows need,
    each worker repeating its rows (a larger shard drops a few random rows per epoch).
    Returns (distributed dataset, steps per epoch).
    """
    replicas = strategy.num_replicas_in_sync
    per_replica = max(1, global_batch // replicas)
    local_replicas = max(1, replicas // count)
    steps = max(1, math.ceil(smallest / (per_replica * local_replicas)))

    def fn(ctx: Any) -> Any:
        return make(ctx.get_per_replica_batch_size(per_replica * replicas)).repeat().take(steps * local_replicas)

    return strategy.distribute_datasets_from_function(fn), steps


def sharded_train_data(strategy: Any, shard: tuple[int, int], n: int, views: int, global_batch: int,
                       make: Any) -> tuple[Any, int]:
    """:func:`distributed_train_data` of worker ``shard[0]`` of ``shard[1]`` whose rows are its
    :func:`shard_rows` of ``n`` (``views`` training rows each): the head's and the fine-tune's input.
    Returns (distributed dataset, steps per epoch, the same on every worker)."""
    workers = shard[1]
    smallest = min(len(shard_rows(n, k, workers)) for k in range(workers)) * views
    return distributed_train_data(strategy, workers, smallest, global_batch, make)


def keras_private_names() -> dict[str, bool]:
    """The private Keras names the two multi-worker fixes below rely on, and whether this Keras has
    them (tests/test_distributed.py fails when the pinned Keras renames one)."""
    import keras

    try:
        from keras.src.backend.tensorflow import trainer as kt
    except ImportError:  # pragma: no cover
        kt = None
    return {"keras.src.backend.tensorflow.trainer.reduce_per_replica": hasattr(kt, "reduce_per_replica"),
            "keras.src.backend.tensorflow.trainer._collective_all_reduce_multi_worker": hasattr(kt, "_collective_all_reduce_multi_worker"),
            "keras.Model._maybe_symbolic_build": hasattr(keras.Model, "_maybe_symbolic_build"),
            "keras.Model._symbolic_build": hasattr(keras.Model, "_symbolic_build")}


def _set_precision(plan: DevicePlan) -> None:
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16" if plan.mixed_precision else "float32")
