"""Feature extraction and fine-tuning: image folder in, run directory out.

How it stays fast on a CPU:

* fine-tuning decodes and resizes every image once (thread pool) into uint8 arrays in RAM;
  feature extraction keeps no decoded image: the files are checked once, then decoded a shard
  at a time for the frozen-base pass, whose embeddings go to an on-disk cache
  (:mod:`edgetl.embed_cache`: resumable shard by shard, reused when only head settings change);
* the frozen base runs once per image view, not once per epoch: the head is trained on
  cached pooled embeddings of the clean images plus ``augment.views`` augmented views;
* for fine-tuning, the same forward pass also caches the activations at the input of the
  first unfrozen block; BatchNormalization stays in inference mode, so the frozen part
  is a fixed function and training the unfrozen tail on those cached activations is
  exactly training the whole model on the same views, at a fraction of the cost. When
  the cache would not fit in ``cache_limit_mb`` the tail is trained on images instead.

The saved ``model.keras`` is always one graph (pixels -> base -> head -> ``probs``):
the head and the fine-tuned blocks are layers of that graph, trained in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetl import __version__, quiet
from edgetl.config import TrainConfig
from edgetl.embed import FrozenForward, frozen_forward
from edgetl.errors import EdgetlError, UsageError
from edgetl.imbalance import choose_weighting, imbalance_lines, weighting_candidates, weights_for
from edgetl.locking import LOCK_NAME, DirLock, check_output_dir
from edgetl.metrics import balanced_sample_weights, classification_metrics, majority_baseline, score_line
from edgetl.models.registry import block_index
from edgetl.report import atomic_write_text, csv_text, write_json
from edgetl.run import CONFIG_FILE, LABELS_FILE, MODEL_FILE, read_config, write_config

CHECKPOINT_DIR = "checkpoints"
WEIGHTING_FILE = "class_weighting.json"  # the class-weight choice, beside the checkpoints (a resumed fine-tune reads it)
HISTORY_COLUMNS = ["phase", "epoch", "phase_epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "train_seconds", "epoch_seconds"]


# --------------------------------------------------------------------------- devices


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


def _set_precision(plan: DevicePlan) -> None:
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16" if plan.mixed_precision else "float32")


# --------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    config: TrainConfig
    warnings: list[str] = field(default_factory=list)
    resumed: bool = False

    @property
    def val_accuracy(self) -> float:
        return float(self.metrics["val"]["accuracy"])

    def summary(self) -> str:
        m = self.metrics
        v = m["val"]
        lines = [f"run: {self.run_dir}", f"{score_line(v, 'val')}, val loss {v['loss']:.4f}"]
        if m.get("test"):
            lines.append(score_line(m["test"], "test"))
        lines.extend(imbalance_lines(m))
        ips = m.get("fine_tune_images_per_s")
        lines.append(
            f"strategy {m['strategy']}, {m['epochs_run']['head']} head + {m['epochs_run']['fine_tune']} fine-tune epochs, "
            f"wall time {m['train_wall_seconds']:.1f} s" + (f", fine-tune {ips:.1f} images/s" if ips else "")
        )
        if m.get("fine_tune"):
            lines.append(fine_tune_summary(m["fine_tune"]))
        if m.get("num_skipped"):
            lines.append(f"skipped files: {m['num_skipped']}")
        dev = m.get("device_plan") or {}
        if dev.get("distribute", "none") != "none":
            task = dev.get("task")
            lines.append(f"distributed: {dev['distribute']}, {dev.get('replicas')} replicas in sync"
                         + (f", this process: {task}" if task else "")
                         + (" (only the chief writes the run directory)" if task and not task.startswith("chief") else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _log(cfg: TrainConfig, msg: str) -> None:
    # quiet.console(): the real terminal even while the CLI captures TensorFlow's output (edgetl/quiet.py)
    if cfg.verbose:
        quiet.say(msg)


def _warn(cfg: TrainConfig, msg: str, sink: list[str]) -> None:
    sink.append(msg)
    quiet.say(f"warning: {msg}")


def progress_mode(verbose: int) -> str:
    """How training shows progress: ``bars`` (Keras progress bars), ``lines`` or ``off``.

    Progress bars (carriage returns, ANSI codes) only with ``verbose=1`` on an interactive terminal;
    elsewhere (CI logs, ``nohup``, ``| tee``) and with ``verbose=2``: one plain line per epoch and per
    frozen-base pass.
    """
    if verbose == 0:
        return "off"
    return "bars" if verbose == 1 and quiet.on_terminal() else "lines"


def _epoch_lines(cfg: TrainConfig, phase: str, total: int) -> Any:
    """A Keras callback printing one plain line per epoch (no carriage return, no escape codes)."""
    import keras

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            parts = [f"{k} {float(logs[k]):.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if logs.get(k) is not None]
            _log(cfg, f"{phase} epoch {epoch + 1}/{total}: {', '.join(parts)} ({time.perf_counter() - self._t0:.1f} s)")

    return EpochLine()


def unfrozen_layer_names(layer_names: Sequence[str], k: int) -> set[str]:
    """Layers of the top ``k`` blocks (by the ``block{N}_`` prefix) plus the ``top_*`` layers."""
    indices = sorted({i for i in (block_index(n) for n in layer_names) if i is not None})
    chosen = set(indices[len(indices) - k:]) if k > 0 else set()
    return {n for n in layer_names if n.startswith("top_") or block_index(n) in chosen} if k > 0 else set()


def _two_losses(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with 4 decimals, or more (up to 8) until they read differently."""
    for digits in range(4, 9):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if sa != sb:
            break
    return sa, sb


def fine_tune_choice(history: Sequence[dict[str, Any]], head_only: dict[str, Any] | None,
                     cfg: TrainConfig | None = None) -> dict[str, Any]:
    """The keep/restore decision of the fine-tune phase, as recorded in ``metrics.json["fine_tune"]``.

    The rule (the one training applies: early stopping counts the head-only model as epoch 0 of the
    fine-tune phase and restores the best epoch): the fine-tune epoch with the lowest val loss is kept
    only if its val loss is strictly lower than the head-only model's; otherwise the head-only model is
    restored. Val loss is the training loss evaluated on val (cross-entropy, plus label smoothing and the
    classifier's L2 penalty when set); with ``objective="balanced"`` each val image is weighted so that
    every class counts equally (:func:`edgetl.metrics.balanced_sample_weights`). Test images never take part.

    Args:
        history: the run's history rows (``phase``, ``phase_epoch``, ``val_loss``, ``val_accuracy``).
        head_only: ``{"val_loss", "val_accuracy"}`` of the head-only model, or None when unknown
            (a run resumed from a checkpoint written before edgetl recorded it).
        cfg: the run's settings (only to describe the loss and the objective).
    """
    rows = [r for r in history if r.get("phase") == "fine-tune" and r.get("val_loss") is not None
            and np.isfinite(float(r["val_loss"]))]
    best = min(rows, key=lambda r: float(r["val_loss"])) if rows else None  # the first minimum, as the callback
    loss_terms = ["cross-entropy"]
    if cfg is not None and cfg.label_smoothing > 0:
        loss_terms[0] = f"cross-entropy with label smoothing {cfg.label_smoothing:g}"
    if cfg is None or cfg.head_l2 > 0:
        loss_terms.append("the classifier's L2 penalty")
    objective = cfg.objective if cfg is not None else "accuracy"
    on_val = "on val, each class weighted equally (objective balanced)" if objective == "balanced" else "on val"
    doc: dict[str, Any] = {
        "kept": None,
        "reason": "",
        "objective": objective,
        "rule": ("keep the fine-tuned weights (the fine-tune epoch with the lowest val loss) only if their val loss "
                 "is lower than the head-only model's, else restore the head-only model; val loss: the training "
                 "loss (" + " + ".join(loss_terms) + f") {on_val}; test is never used for the choice"),
        "head_only": {"val_loss": None if head_only is None else head_only.get("val_loss"),
                      "val_accuracy": None if head_only is None else head_only.get("val_accuracy")},
        "fine_tuned": {"epoch": None if best is None else best.get("phase_epoch"),
                       "val_loss": None if best is None else float(best["val_loss"]),
                       "val_accuracy": None if best is None else best.get("val_accuracy")},
    }
    ho_loss = doc["head_only"]["val_loss"]
    if ho_loss is None:
        doc["reason"] = ("unknown: the head-only model's val loss was not recorded "
                         "(run resumed from a checkpoint of an older edgetl)")
    elif best is None:
        doc["kept"] = False
        doc["reason"] = "no fine-tune epoch gave a finite val loss"
    else:
        ft, ho = _two_losses(float(best["val_loss"]), float(ho_loss))
        doc["kept"] = float(best["val_loss"]) < float(ho_loss)
        loss = "class-balanced val loss" if objective == "balanced" else "val loss"
        if doc["kept"]:
            doc["reason"] = f"{loss} {ft} < {ho} of the head-only model"
        else:
            doc["reason"] = f"best fine-tune epoch {best.get('phase_epoch')}: {loss} {ft} >= {ho} of the head-only model"
    return doc


def _add_candidate_metrics(cand: dict[str, Any], val: dict[str, Any], test: dict[str, Any] | None) -> None:
    """Fill a candidate of the fine-tune choice with metrics computed from its own predictions."""
    cand.update({"val_accuracy": val["accuracy"], "val_correct": val["correct"], "val_total": val["total"],
                 "val_balanced_accuracy": val["balanced_accuracy"], "val_macro_f1": val["macro_f1"],
                 "val_cross_entropy": val["loss"], "val_balanced_cross_entropy": val["balanced_loss"]})
    if test is not None:
        cand.update({"test_accuracy": test["accuracy"], "test_correct": test["correct"], "test_total": test["total"],
                     "test_balanced_accuracy": test["balanced_accuracy"], "test_macro_f1": test["macro_f1"]})


def fine_tune_summary(doc: dict[str, Any]) -> str:
    """One line: whether the fine-tuned weights were kept, with the two val losses."""
    if doc.get("kept") is None:
        return f"fine-tune choice {doc.get('reason')}"
    if doc["kept"]:
        return f"fine-tuned weights kept: {doc['reason']}"
    return f"fine-tuning did not help on val: head-only model restored ({doc['reason']})"


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"edgetl": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


# --------------------------------------------------------------------------- run directory


def _prepare_run_dir(cfg: TrainConfig) -> tuple[Path, bool]:
    """Create/clear the run directory and prove it is writable. Returns (path, created_now)."""
    run_dir = cfg.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} exists and is not a folder")
    existing = run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir())
    if cfg.resume:
        if not (run_dir / CHECKPOINT_DIR / "latest.json").is_file():
            raise EdgetlError(f"nothing to resume in {run_dir}: no checkpoint found (start a new run without --resume)")
        return run_dir, False
    if existing:
        if not cfg.overwrite:
            raise EdgetlError(f"run directory {run_dir} already exists; pass --overwrite to replace it or --resume to continue it")
        if not ((run_dir / CONFIG_FILE).is_file() or (run_dir / CHECKPOINT_DIR).is_dir()):
            raise EdgetlError(f"{run_dir} is not empty and is not an edgetl run; refusing to delete it (choose another --out)")
        for child in run_dir.iterdir():  # not the lock file this process holds
            if child.name != LOCK_NAME:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise EdgetlError(f"cannot write to the run directory {run_dir}: {exc.strerror or exc}") from None
    return run_dir, created


class _Checkpoints:
    """One complete checkpoint per epoch: ``checkpoints/<phase>-<epoch>/`` + ``latest.json``.

    A checkpoint folder is written under a temporary name and renamed into place, and
    ``latest.json`` is replaced atomically after it, so an interruption at any moment
    leaves the previous checkpoint intact.
    """

    def __init__(self, root: Path, strategy: Any = None):
        self.root = root
        self.strategy = strategy  # optimizer slots are created under the training strategy

    def save(self, model: Any, state: dict[str, Any], best_weights: list[np.ndarray] | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{state['phase']}-{state['epoch']:04d}"
        tmp = self.root / f".tmp-{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        np.savez(tmp / "weights.npz", *model.get_weights())
        opt = model.optimizer
        np.savez(tmp / "optimizer.npz", *[np.asarray(v.numpy()) for v in opt.variables])
        if best_weights is not None:
            np.savez(tmp / "best.npz", *best_weights)
        write_json(tmp / "state.json", state)
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_json(self.root / "latest.json", {"checkpoint": name})
        for old in self.root.iterdir():
            if old.is_dir() and old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> tuple[dict[str, Any], Path] | None:
        try:
            name = json.loads((self.root / "latest.json").read_text())["checkpoint"]
            path = self.root / name
            return json.loads((path / "state.json").read_text()), path
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def arrays(path: Path) -> list[np.ndarray]:
        try:
            with np.load(path) as z:
                return [z[f"arr_{i}"] for i in range(len(z.files))]
        except Exception as exc:  # noqa: BLE001 - zip/npy/pickle errors all mean a damaged checkpoint
            raise EdgetlError(f"checkpoint file {path} is damaged ({type(exc).__name__}); "
                              f"start a new run with --overwrite") from None

    def restore(self, model: Any, path: Path) -> list[np.ndarray] | None:
        """Load weights and optimizer state into ``model`` (compiled); return the best weights."""
        model.set_weights(self.arrays(path / "weights.npz"))
        opt = model.optimizer
        with _scope(self.strategy):
            opt.build(model.trainable_variables)
        saved = self.arrays(path / "optimizer.npz")
        if len(saved) != len(opt.variables):
            raise EdgetlError(f"checkpoint {path} does not match this model's optimizer ({len(saved)} vs {len(opt.variables)} variables)")
        for var, val in zip(opt.variables, saved):
            var.assign(val)
        best = path / "best.npz"
        return self.arrays(best) if best.is_file() else None


def _make_phase_callback(phase: str, total_epochs: int, epoch_offset: int, patience: int, ckpt: _Checkpoints,
                         history: list[dict[str, Any]], n_train: int, state: dict[str, Any] | None,
                         best_weights: list[np.ndarray] | None) -> Any:
    import keras

    class PhaseCallback(keras.callbacks.Callback):
        """Early stopping on val loss with best-weights restore, history rows and a checkpoint per epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.best = float(state["best"]) if state and state.get("best") is not None else float("inf")
            self.wait = int(state["wait"]) if state else 0
            self.best_weights = best_weights
            # The best epoch of this phase alone (the starting point excluded): the fine-tuned candidate
            # of the keep/restore choice, reported beside the head-only model even when it loses.
            self.phase_best = float("inf")
            self.phase_best_weights: list[np.ndarray] | None = None
            # Saved with every checkpoint, so a resumed run still knows it (the head-only val metrics).
            self.extra_state: dict[str, Any] = dict(state.get("extra") or {}) if state else {}
            self.train_seconds: list[float] = []
            self.stopped_early = False

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t0 = time.perf_counter()
            self._t_train: float | None = None

        def on_test_begin(self, logs: Any = None) -> None:
            if getattr(self, "_t0", None) is not None and self._t_train is None:
                self._t_train = time.perf_counter() - self._t0

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = dict(logs or {})
            elapsed = time.perf_counter() - self._t0
            t_train = self._t_train if self._t_train is not None else elapsed
            self.train_seconds.append(t_train)
            try:
                lr = float(np.asarray(self.model.optimizer.learning_rate))
            except Exception:  # noqa: BLE001 - logging only
                lr = None
            row = {
                "phase": phase, "epoch": epoch_offset + epoch + 1, "phase_epoch": epoch + 1,
                "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
                "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
                "lr": lr, "train_seconds": round(t_train, 3), "epoch_seconds": round(elapsed, 3),
                "train_images_per_s": round(n_train / t_train, 2) if t_train > 0 else None,
            }
            history.append({k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in row.items()})
            val_loss = logs.get("val_loss")
            weights = None
            if val_loss is not None and float(val_loss) < self.best:
                self.best, self.wait = float(val_loss), 0
                self.best_weights = weights = self.model.get_weights()
            else:
                self.wait += 1
            if val_loss is not None and float(val_loss) < self.phase_best:
                self.phase_best = float(val_loss)
                self.phase_best_weights = weights if weights is not None else self.model.get_weights()
            if patience and self.wait >= patience:
                self.model.stop_training = True
                self.stopped_early = True
            done = self.model.stop_training or epoch + 1 >= total_epochs
            ckpt.save(self.model, {"phase": phase, "epoch": epoch + 1, "done": bool(done), "best": self.best,
                                   "wait": self.wait, "history": history, "extra": self.extra_state}, self.best_weights)

        def on_train_end(self, logs: Any = None) -> None:
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return PhaseCallback()


# --------------------------------------------------------------------------- models


def _boundary_tensor(base: Any, unfrozen: set[str]) -> Any | None:
    """The input tensor of the first unfrozen layer (in graph order), or None."""
    for layer in base.layers:
        if layer.name in unfrozen:
            inp = layer.input
            return None if isinstance(inp, (list, tuple)) else inp
    return None


def _optimizer(lr: Any, weight_decay: float) -> Any:
    import keras

    if weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)
    return keras.optimizers.Adam(learning_rate=lr)


def _compile(model: Any, lr: Any, cfg: TrainConfig, jit: bool, steps_per_execution: int = 1) -> None:
    import keras

    model.compile(
        optimizer=_optimizer(lr, cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit,
        steps_per_execution=steps_per_execution,
    )


def _predict(model: Any, x: Any, batch: int, verbose: int = 0) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(x).batch(batch).map(lambda b: tf.cast(b, tf.float32)).prefetch(2)
    return model.predict(ds, verbose=verbose)


# --------------------------------------------------------------------------- train


def run_spec(config: TrainConfig) -> Any:
    """The backbone spec a run trains: the backbone at ``--image-size``, resized with ``--resize``."""
    from dataclasses import replace

    from edgetl.models import get_spec

    spec = get_spec(config.backbone).at_size(config.image_size)
    return replace(spec, preprocessing=replace(spec.preprocessing, resize=config.resize))


def train(config: TrainConfig, *, extra_callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train a classifier on an image folder and write a complete run directory.

    Args:
        config: every setting (validated here).
        extra_callbacks: Keras callbacks added to every ``fit`` after the checkpointing one
            (tests use one that raises to simulate an interrupted run).

    Raises:
        UsageError: a setting is out of range or the backbone is unknown.
        EdgetlError: bad data folder, existing run, unwritable output, nothing to resume.
    """
    from edgetl.models import get_spec

    config.validate()
    spec = run_spec(config)
    distribute = requested_distribution()
    role = cluster_role() if distribute in ("auto", "multi-worker") else None
    if distribute == "multi-worker" and role is None:
        raise UsageError(f"{DISTRIBUTE_ENV}=multi-worker needs TF_CONFIG describing a cluster of two or more workers")
    data_dir = Path(config.data_dir)
    if not data_dir.exists():
        raise UsageError(f"data folder not found: {data_dir}")
    if not data_dir.is_dir():
        raise UsageError(f"not a folder: {data_dir} (expected DATA_DIR/<class>/ or DATA_DIR/train/<class>/)")
    if config.weights not in ("imagenet", "none", "None", "") and not Path(config.weights).is_file():
        raise UsageError(f"--weights must be imagenet, none or a weights file; file not found: {config.weights}")
    if role is not None and not role.chief:
        return _train_as_worker(config, spec, role, distribute, extra_callbacks)
    # Before any long work: an impossible or full output folder fails now, and a second
    # process writing the same run directory is refused (edgetl/locking.py).
    check_output_dir(config.run_dir)
    created = not config.run_dir.exists()
    lock = DirLock(config.run_dir, what="training run").acquire()
    try:
        run_dir, _ = _prepare_run_dir(config)
        if config.resume:
            config = _resumed_config(run_dir, config)
            spec = run_spec(config)
        return _train(config, spec, run_dir, (*extra_callbacks, *_test_hooks()), distribute=distribute, role=role)
    except BaseException:
        # A run that failed before its first checkpoint leaves nothing behind to block a retry.
        if created and not (config.run_dir / CHECKPOINT_DIR / "latest.json").is_file():
            shutil.rmtree(config.run_dir, ignore_errors=True)
        raise
    finally:
        lock.release()


def _train_as_worker(config: TrainConfig, spec: Any, role: WorkerRole, distribute: str,
                     extra_callbacks: Sequence[Any]) -> TrainResult:
    """A non-chief worker of a multi-worker run: trains in step with the chief, writes only to a scratch folder.

    Every worker runs the same program (the collective ops need all of them), but only the chief
    writes the run directory; the others write their checkpoints and model to a temporary folder
    that is deleted at the end (the layout of TensorFlow's multi-worker Keras tutorial). To resume,
    a worker starts from the chief's checkpoint, so the run directory must be visible to every worker.
    """
    import tempfile

    shared = config.run_dir
    scratch = Path(tempfile.mkdtemp(prefix=f"edgetl-worker{role.index}-"))
    try:
        local = config.replace(out=str(scratch / "run"), overwrite=False, resume=False)
        if config.resume:
            if not (shared / CHECKPOINT_DIR / "latest.json").is_file() or not (shared / CONFIG_FILE).is_file():
                raise EdgetlError(f"{role.describe()}: cannot resume: no checkpoint of the chief in {shared} "
                                  "(multi-worker --resume needs the run directory on a filesystem every worker sees)")
            (scratch / "run").mkdir()
            shutil.copytree(shared / CHECKPOINT_DIR, scratch / "run" / CHECKPOINT_DIR)
            shutil.copy2(shared / CONFIG_FILE, scratch / "run" / CONFIG_FILE)
            local = local.replace(resume=True)
        run_dir, _ = _prepare_run_dir(local)
        if local.resume:
            local = _resumed_config(run_dir, local)
        result = _train(local, spec, run_dir, (*extra_callbacks, *_test_hooks()), distribute=distribute, role=role)
        result.run_dir = shared
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _test_hooks() -> list[Any]:
    """Test-only slowdown: ``EDGETL_TEST_EPOCH_DELAY=<seconds>`` sleeps at the start of every epoch.

    Lets the reliability tests (tests/test_reliability.py) kill or interrupt a real run
    mid-epoch, after a checkpoint exists. Unset (always, outside tests): no callback at all.
    """
    delay = float(os.environ.get("EDGETL_TEST_EPOCH_DELAY") or 0)
    if delay <= 0:
        return []
    import keras

    class _EpochDelay(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            time.sleep(delay)

    return [_EpochDelay()]


def _resumed_config(run_dir: Path, given: TrainConfig) -> TrainConfig:
    try:
        saved = read_config(run_dir)["train_config"]
        cfg = TrainConfig.from_dict(saved)
    except (EdgetlError, ValueError, KeyError, TypeError) as exc:
        raise EdgetlError(f"cannot resume {run_dir}: {CONFIG_FILE} is missing or unreadable ({type(exc).__name__})") from None
    # The saved settings win (same run); only how it is shown may change.
    return cfg.replace(resume=True, overwrite=False, verbose=given.verbose, out=str(run_dir), workers=given.workers)


@dataclass
class _Run:
    """One training run's shared state, filled step by step by :func:`_train`'s named steps."""

    cfg: TrainConfig
    spec: Any
    run_dir: Path
    extra_callbacks: Sequence[Any]
    warnings: list[str] = field(default_factory=list)
    t_start: float = field(default_factory=time.perf_counter)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    # devices and checkpoints (_setup)
    plan: Any = None
    strategy: Any = None
    device_doc: dict[str, Any] = field(default_factory=dict)
    ckpt: Any = None
    resume_state: Any = None
    # data (_load_data)
    ds: Any = None
    xtr: Any = None
    ytr: Any = None
    xva: Any = None
    yva: Any = None
    classes: list[str] = field(default_factory=list)
    cw: dict[int, float] | None = None
    train_counts: list[int] = field(default_factory=list)
    weightings: list[str] = field(default_factory=lambda: ["off"])  # class-weight candidates, lightest first
    weighting_doc: dict[str, Any] | None = None  # the class-weight choice (_choose_weighting)
    va_sw: Any = None  # val sample weights of the objective (None: plain val loss)
    decode_seconds: float = 0.0
    config_doc: dict[str, Any] = field(default_factory=dict)
    # graphs (_build_graphs)
    base: Any = None
    full: Any = None
    head: Any = None
    tail: Any = None
    extractor: Any = None
    boundary: Any = None
    unfrozen: set[str] = field(default_factory=set)
    fine_tune: bool = False
    k: int = 0
    feat_dim: int = 0
    n_views: int = 1
    cache_bytes: int = 0
    # embeddings (_embed_views)
    augmenter: Any = None
    forward: Any = None
    mode: str = "off"
    emb_tr: Any = None
    act_tr: Any = None
    emb_va: Any = None
    act_va: Any = None
    y_views: Any = None
    view_seconds: list[float] = field(default_factory=list)
    resize_view_seconds: float = 0.0  # decoding + client resizes of the resize-robust views (inside view_seconds)
    embed_seconds: float = 0.0
    n_embedded: int = 0
    embed_cache: Any = None  # the on-disk shards of a streamed pass (edgetl.embed_cache.ShardCache)
    # phases
    head_epochs_run: int = 0
    ft_epochs_run: int = 0
    ft_mode: str | None = None
    ft_train_seconds: float = 0.0
    ft_images: int = 0
    ft_cb: Any = None
    ft_model: Any = None
    head_only_w: list[np.ndarray] | None = None  # the head-only candidate's weights (known unless resumed mid-phase)
    head_only_doc: dict[str, Any] | None = None  # its val loss/accuracy, as the keep/restore rule saw them
    agree: float = 0.0
    fine_tune_doc: dict[str, Any] | None = None

    @property
    def n_cls(self) -> int:
        return len(self.classes)

    @property
    def resumed_phase(self) -> str | None:
        return self.resume_state[0]["phase"] if self.resume_state else None


def _train(cfg: TrainConfig, spec: Any, run_dir: Path, extra_callbacks: Sequence[Any], *,
           distribute: str = "auto", role: WorkerRole | None = None) -> TrainResult:
    """The training steps in order; each step reads and fills the shared :class:`_Run`."""
    quiet.quiet_env()
    r = _Run(cfg, spec, run_dir, extra_callbacks)
    _setup(r, distribute, role)
    _load_data(r)
    _build_graphs(r)
    _embed_views(r)
    _fit_head(r)
    if r.fine_tune:
        _fit_fine_tune(r)
    _evaluate(r)
    return _write_run(r)


def _setup(r: _Run, distribute: str, role: WorkerRole | None) -> None:
    """Device plan, distribution strategy, precision, seed, checkpoints (and the state to resume)."""
    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing notices from predicting several views
    r.plan = plan_devices(tf.config.list_physical_devices("GPU"), distribute, role)
    # Before any other TensorFlow op: MultiWorkerMirroredStrategy configures the collective ops at start-up.
    r.strategy = _make_strategy(r.plan)
    _set_precision(r.plan)
    if r.strategy is not None:
        where = f", {role.describe()}" if role is not None else ""
        _log(r.cfg, f"distributed training: {type(r.strategy).__name__}, {r.strategy.num_replicas_in_sync} replicas in sync{where}")
    r.device_doc = {**r.plan.to_dict(), "replicas": r.strategy.num_replicas_in_sync if r.strategy is not None else 1,
                    "task": role.describe() if role is not None else None}
    keras.utils.set_random_seed(r.cfg.seed)
    r.ckpt = _Checkpoints(r.run_dir / CHECKPOINT_DIR, r.strategy)
    r.resume_state = r.ckpt.latest() if r.cfg.resume else None
    if r.resume_state:
        r.history.extend(r.resume_state[0].get("history", []))


def _streams(cfg: TrainConfig) -> bool:
    """Whether the images are decoded a shard at a time from the files (feature extraction: only the
    embeddings are kept) instead of all at once into RAM (fine-tuning on images or activations)."""
    return cfg.strategy != "fine-tune" or cfg.fine_tune_epochs == 0


def _load_data(r: _Run) -> None:
    """Decode + resize every image once; class weights; the run's ``config.json`` (status running)."""
    from edgetl.data import load_dataset, summarize_skipped

    cfg = r.cfg
    _log(cfg, f"loading images from {cfg.data_dir} ...")
    t0 = time.perf_counter()
    stream = _streams(cfg)
    r.ds = ds = load_dataset(cfg.data_dir, val_split=cfg.val_split, seed=cfg.seed, max_pixels=cfg.max_pixels or None,
                             preprocessing=None if stream else r.spec.preprocessing, workers=cfg.workers,
                             progress=quiet.Progress("checking images" if stream else "decoding images").update if cfg.verbose else None)
    r.decode_seconds = time.perf_counter() - t0
    msg = summarize_skipped(ds.skipped)
    if msg:
        _warn(cfg, msg, r.warnings)
    if stream:  # the frozen-base pass decodes the files a shard at a time (_embed_streamed)
        r.ytr, r.yva = (np.asarray(sp.labels, np.int32) for sp in (ds.train, ds.val))
    else:
        r.xtr, r.ytr = ds.arrays("train")
        r.xva, r.yva = ds.arrays("val")
    r.classes = classes = ds.classes
    fingerprint = ds.fingerprint()
    if r.resume_state:
        old = read_config(r.run_dir).get("data", {})
        if old.get("files_sha256") != fingerprint["files_sha256"]:
            raise EdgetlError(f"cannot resume {r.run_dir}: the images in {cfg.data_dir} changed since the run started")
    r.train_counts = counts = [int(c) for c in ds.train.counts().values()]
    # The first candidate is the head phase's own (checkpointed); the others are tried after it.
    r.weightings = weighting_candidates(counts, cfg.class_weights, cfg.imbalance_ratio)
    r.cw = cw = weights_for(counts, r.weightings[0])
    r.va_sw = balanced_sample_weights(r.yva, len(classes)) if cfg.objective == "balanced" else None
    if len(r.weightings) > 1 or cw:
        _log(cfg, "unbalanced classes " + ", ".join(f"{c}={n}" for c, n in zip(classes, counts))
             + (f"; class weights {r.weightings[0]}" if len(r.weightings) == 1 else
                f"; the head is trained with class weights {', '.join(r.weightings)} and the best on val {cfg.objective} kept"))
    _log(cfg, f"{len(r.ytr)} train / {len(r.yva)} val images, {r.n_cls} classes, decoded in {r.decode_seconds:.1f} s")
    r.config_doc = {
        "edgetl_version": __version__,
        "backbone": r.spec.name,
        "preprocessing": r.spec.preprocessing.to_dict(),
        "labels": classes,
        "num_classes": r.n_cls,
        "data_dir": str(Path(cfg.data_dir).resolve()),
        "val_split": cfg.val_split,
        "seed": cfg.seed,
        "data": fingerprint,
        "strategy": cfg.strategy,
        "weights": cfg.weights,
        "train_config": cfg.to_dict(),
        "versions": _versions(),
        "device_plan": r.device_doc,
        "class_weights": {classes[i]: w for i, w in cw.items()} if cw else None,
        "objective": cfg.objective,
        "num_skipped": len(ds.skipped),
        "status": "running",
    }
    if not r.resume_state:
        write_config(r.run_dir, r.config_doc)


def _head_layers(keras: Any, x: Any, cfg: TrainConfig, n_cls: int) -> Any:
    """Dropout + Dense softmax classifier on ``x`` (the same L2 penalty in both phases: a no-op for
    inference and export). Built once on the pooled features and once on cached embeddings."""
    reg = keras.regularizers.L2(cfg.head_l2) if cfg.head_l2 > 0 else None
    dropped = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    return keras.layers.Dense(n_cls, activation="softmax", dtype="float32", name="probs", kernel_regularizer=reg)(dropped)


def _build_graphs(r: _Run) -> None:
    """The one-graph classifier, the head on embeddings, the frozen extractor, and (fine-tuning on
    cached activations) the trainable tail after the frozen part."""
    import keras

    from edgetl.models import build

    cfg, spec = r.cfg, r.spec
    with _scope(r.strategy):
        r.base = base = build(spec, weights=cfg.weights, include_top=False)
        layer_names = [layer.name for layer in base.layers]
        r.k = spec.unfreeze_blocks if cfg.unfreeze is None else cfg.unfreeze
        r.fine_tune = cfg.strategy == "fine-tune" and cfg.fine_tune_epochs > 0 and r.k > 0
        r.unfrozen = unfrozen_layer_names(layer_names, r.k) if r.fine_tune else set()
        if r.fine_tune and not r.unfrozen:
            raise EdgetlError(f"backbone {spec.name} has no block{{N}}_ / top_ layers to unfreeze")
        base.trainable = False
        pooled = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
        r.full = keras.Model(base.input, _head_layers(keras, pooled, cfg, r.n_cls), name=f"{spec.name}_classifier")
        r.feat_dim = int(pooled.shape[-1])
        emb_in = keras.Input((r.feat_dim,), name="embedding")
        r.head = keras.Model(emb_in, _head_layers(keras, emb_in, cfg, r.n_cls), name="head")

        # Fine-tuning on cached activations: only when the frozen part ends cleanly at one tensor.
        r.boundary = _boundary_tensor(base, r.unfrozen) if r.fine_tune else None
        r.tail = None
        if r.boundary is not None:
            try:
                r.tail = keras.Model(r.boundary, r.full.output, name="tail")
                extra = {layer.name for layer in r.tail.layers if not isinstance(layer, keras.layers.InputLayer)} - r.unfrozen - {
                    "head_pool", "head_dropout", "probs"}
                if extra:
                    r.tail = None
            except Exception:  # noqa: BLE001 - any graph the split cannot express falls back to images
                r.tail = None
        r.n_views = 1 + (cfg.augment.views if cfg.augment.enabled else 0)
        if r.tail is not None:
            r.cache_bytes = int(np.prod(r.boundary.shape[1:])) * 2 * (r.n_views * len(r.ytr) + len(r.yva))
            if r.cache_bytes > cfg.cache_limit_mb * 2**20:
                _log(cfg, f"activation cache would need {r.cache_bytes / 2**20:.0f} MB > {cfg.cache_limit_mb} MB: fine-tuning on images")
                r.tail = None
        outputs = [pooled] + ([r.boundary] if r.tail is not None else [])
        r.extractor = keras.Model(base.input, outputs, name="extractor")
    if r.plan.distribute == "multi-worker":
        for m in (r.head, r.full, r.tail):
            if m is not None:
                _multi_worker_build_fix(m, r.strategy)


def _extract(r: _Run, x: np.ndarray, aug: Any | None, view: int, label: str,
             first_batch: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """One forward pass of the frozen base over ``x`` (from batch ``first_batch`` of its split):
    (embeddings, float16 tail activations or None)."""
    import keras

    from edgetl.data import pixel_batches, pixels_dataset

    bs = max(r.cfg.batch_size, 32)
    tp = time.perf_counter()
    embs: list[np.ndarray] = []
    acts: list[np.ndarray] = []
    with quiet.to_console() if r.mode == "bars" else contextlib.nullcontext():
        bar = keras.utils.Progbar(int(np.ceil(len(x) / bs))) if r.mode == "bars" else None
        if r.forward.engine == "onnxruntime":  # uses every core: no TF work alongside it
            batches = pixel_batches(x, bs, aug, view, first_batch=first_batch)
        else:
            batches = (b.numpy() for b in pixels_dataset(x, bs, aug, view=view, first_batch=first_batch))
        for i, b in enumerate(batches):
            out = r.forward(b)
            embs.append(out[0])
            if len(out) > 1:
                acts.append(out[1].astype(np.float16))
            if bar is not None:
                bar.update(i + 1)
    if r.mode == "lines":
        _log(r.cfg, f"frozen-base pass {label}: {len(x)} images in {time.perf_counter() - tp:.1f} s")
    emb = np.concatenate(embs) if embs else np.zeros((0, r.feat_dim), np.float32)
    return emb, (np.concatenate(acts) if acts else None)


def _resize_view(r: _Run, view: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """The train images ``[start:stop]`` of one augmented view, each resized by a randomly drawn client resize."""
    from edgetl.data import resize_views

    t0 = time.perf_counter()
    x = resize_views(r.ds.train.paths[start:stop], r.spec.preprocessing, r.cfg.seed, view, workers=r.cfg.workers,
                     max_pixels=r.cfg.max_pixels or None, start=start)
    r.resize_view_seconds += time.perf_counter() - t0
    return x


def _embed_views(r: _Run) -> None:
    """The frozen base runs once per view: clean + augmented train views, then val."""
    from edgetl.data import build_augmenter

    cfg = r.cfg
    r.augmenter = build_augmenter(cfg.augment, cfg.seed)
    t0 = time.perf_counter()
    r.mode = progress_mode(cfg.verbose)
    n_passes = 2 + (cfg.augment.views if r.augmenter is not None else 0)
    cache = _open_embed_cache(r) if r.xtr is None else None
    parts = [(f"train_v{v}", len(r.ytr)) for v in range(n_passes - 1)] + [("val", len(r.yva))]
    if cache is not None and cache.complete(parts):  # nothing to embed: no engine to set up
        r.forward = FrozenForward("cached", run=lambda b: [])
        _log(cfg, f"every embedding is in the cache {cache.folder}")
    else:
        _start_forward(r)
    forward, n_notes = r.forward, len(r.forward.notes)
    if cache is not None:
        _embed_streamed(r, n_passes, cache)
        r.n_embedded = cache.rows_computed
    else:
        _embed_in_memory(r, n_passes)
        r.n_embedded = len(r.emb_tr) + len(r.emb_va)
    r.embed_seconds = time.perf_counter() - t0
    for note in forward.notes[n_notes:]:  # a fallback decided on the first batch
        _warn(cfg, note, r.warnings)
    if r.n_embedded:
        _log(cfg, f"embedded {r.n_embedded} views in {r.embed_seconds:.1f} s ({r.n_embedded / r.embed_seconds:.1f} images/s, {forward.engine}"
                  + (f", max |difference| vs TensorFlow {forward.max_abs_diff:.1e}" if forward.max_abs_diff is not None else "") + ")")


def _start_forward(r: _Run) -> None:
    """The frozen base as a batch function (on ONNX Runtime when it reproduces TensorFlow)."""
    cfg = r.cfg
    r.forward = forward = frozen_forward(r.extractor, cfg.embed_engine, gpu=bool(r.plan.gpus))
    for note in forward.notes:
        _warn(cfg, note, r.warnings)
    _log(cfg, f"embedding {len(r.ytr)} train images x {r.n_views} view(s) + {len(r.yva)} val images with the frozen {r.spec.name} "
              f"({forward.engine}{f', converted in {forward.convert_seconds:.1f} s' if forward.convert_seconds else ''}) ...")


def _pass_label(view: int, n_passes: int) -> str:
    return f"{view + 1}/{n_passes} (train, " + (f"augmented view {view})" if view else "clean)")


def _embed_in_memory(r: _Run, n_passes: int) -> None:
    """The views from the decoded images in RAM (fine-tuning keeps them for its own phase)."""
    cfg = r.cfg
    tr_parts = []
    for view in range(0, n_passes - 1):
        tv = time.perf_counter()
        label = _pass_label(view, n_passes)
        x = r.xtr
        if view and cfg.augment.resize:
            x = _resize_view(r, view)
        tr_parts.append(_extract(r, x, r.augmenter if view else None, view, label))
        del x
        r.view_seconds.append(time.perf_counter() - tv)
    tv = time.perf_counter()
    r.emb_va, r.act_va = _extract(r, r.xva, None, 0, f"{n_passes}/{n_passes} (val)")
    r.view_seconds.append(time.perf_counter() - tv)
    r.emb_tr = np.concatenate([p[0] for p in tr_parts])
    r.act_tr = np.concatenate([p[1] for p in tr_parts]) if r.tail is not None else None
    r.y_views = np.tile(r.ytr, len(tr_parts))


def _open_embed_cache(r: _Run) -> Any:
    from edgetl import embed_cache

    key = embed_cache.key_doc(r.spec, r.cfg, r.extractor.get_weights(), r.ds, augmented=r.augmenter is not None)
    try:
        r.embed_cache = embed_cache.ShardCache(key)
    except EdgetlError as exc:  # e.g. a read-only home: the run folder is writable (checked at start)
        _warn(r.cfg, f"{exc}; caching the embeddings in the run folder instead", r.warnings)
        r.embed_cache = embed_cache.ShardCache(key, root=r.run_dir / "embed_cache")
    return r.embed_cache


def _embed_streamed(r: _Run, n_passes: int, cache: Any) -> None:
    """The views from the files, a shard at a time, through the on-disk cache (only shards not on
    disk yet are decoded and embedded); the embeddings are read back memory-mapped."""
    from edgetl.data import decode_paths

    cfg, pre = r.cfg, r.spec.preprocessing
    bs = max(cfg.batch_size, 32)

    def shard(paths: Sequence[str], view: int, label: str) -> Any:
        def compute(start: int, stop: int) -> np.ndarray:
            if view and cfg.augment.resize:
                x = _resize_view(r, view, start, stop)
            else:
                x = decode_paths(paths[start:stop], pre, cfg.workers, cfg.max_pixels or None)
            return _extract(r, x, r.augmenter if view else None, view, f"{label} [{start}:{stop}]", first_batch=start // bs)[0]
        return compute

    for view in range(0, n_passes - 1):
        tv = time.perf_counter()
        cache.fill(f"train_v{view}", len(r.ytr), shard(r.ds.train.paths, view, _pass_label(view, n_passes)))
        r.view_seconds.append(time.perf_counter() - tv)
    tv = time.perf_counter()
    cache.fill("val", len(r.yva), shard(r.ds.val.paths, 0, f"{n_passes}/{n_passes} (val)"))
    r.view_seconds.append(time.perf_counter() - tv)
    r.emb_tr = cache.read([f"train_v{v}" for v in range(n_passes - 1)], len(r.ytr), r.feat_dim)
    r.emb_va = cache.read(["val"], len(r.yva), r.feat_dim)
    r.y_views = np.tile(r.ytr, n_passes - 1)
    if cache.reused:
        _log(cfg, f"embedding cache {cache.folder}: {cache.reused} shard(s) reused, {cache.computed} computed")


def _sample_weights(r: _Run, y: np.ndarray) -> np.ndarray | None:
    return np.array([r.cw[int(c)] for c in y], np.float32) if r.cw else None


def _fit_phase(r: _Run, phase: str, model: Any, train_ds: Any, val: Any, epochs: int, epoch_offset: int, n_train: int,
               state: Any, best_w: Any, start: int, prepare: Any = None) -> Any:
    """``model.fit`` for one phase with its checkpoint/early-stopping callback; returns the callback.
    ``prepare(cb)`` runs before fitting (the fine-tune phase seeds the callback with the head's val loss)."""
    cb = _make_phase_callback(phase, epochs, epoch_offset, r.cfg.patience, r.ckpt, r.history, n_train,
                              state[0] if state else None, best_w)
    if prepare is not None:
        prepare(cb)
    lines = [_epoch_lines(r.cfg, phase, epochs)] if r.mode == "lines" else []
    with quiet.to_console() if r.mode == "bars" else contextlib.nullcontext():
        model.fit(train_ds, validation_data=val, epochs=epochs, initial_epoch=start,
                  callbacks=[cb, *lines, *r.extra_callbacks], verbose=1 if r.mode == "bars" else 0, shuffle=False)
    return cb


def _resume_point(r: _Run, phase: str, model: Any) -> tuple[Any, Any, int]:
    """(checkpoint state of ``phase`` or None, its best weights restored into ``model``, first epoch)."""
    state = r.resume_state if r.resumed_phase == phase else None
    if not state:
        return None, None, 0
    best_w = r.ckpt.restore(model, state[1])
    start = int(state[0]["epoch"])
    if phase != "head" or not state[0].get("done"):
        _log(r.cfg, f"resuming the {phase} phase after epoch {start}")
    return state, best_w, start


def _fit_head(r: _Run) -> None:
    """Phase 1: the classifier on the cached embeddings (then copied into the one-graph model)."""
    import tensorflow as tf

    from edgetl.data import training_dataset

    cfg = r.cfg
    # The head's steps are tiny (one Dense layer): 32 steps per graph call removes the per-step
    # Python overhead (2-3x faster head epochs on 2 CPU cores, same updates, same results).
    # Under a tf.distribute strategy Keras 3.15's multi-step loop fails ("You must feed a value for
    # placeholder tensor ..."): one step per call there.
    with _scope(r.strategy):  # the optimizer belongs to the strategy it is created under
        _compile(r.head, cfg.lr, cfg, jit=False, steps_per_execution=32 if r.strategy is None else 1)
    if r.resumed_phase == "fine-tune":
        r.head_epochs_run = sum(1 for h in r.history if h["phase"] == "head")
    else:
        state, best_w, start = _resume_point(r, "head", r.head)
        if state and state[0].get("done"):
            if best_w is not None:
                r.head.set_weights(best_w)
            r.head_epochs_run = int(state[0]["epoch"])
        else:
            train_ds = training_dataset(r.emb_tr, r.y_views, r.n_cls, cfg.batch_size, cfg.seed,
                                        sample_weight=_sample_weights(r, r.y_views))
            _log(cfg, f"training the head for up to {cfg.epochs} epochs on {len(r.emb_tr)} embeddings")
            _fit_phase(r, "head", r.head, train_ds, _val_data(r, r.emb_va, tf.one_hot(r.yva, r.n_cls)), cfg.epochs, 0,
                       len(r.emb_tr), state, best_w, start)
            r.head_epochs_run = sum(1 for h in r.history if h["phase"] == "head")
    _choose_weighting(r)
    r.full.get_layer("probs").set_weights(r.head.get_layer("probs").get_weights())


def _val_data(r: _Run, x: Any, y1h: Any) -> tuple[Any, ...]:
    """Keras ``validation_data``: with per-image weights when the objective is ``balanced``, so the val
    loss that early stopping and the fine-tune keep/restore read counts every class equally."""
    return (x, y1h) if r.va_sw is None else (x, y1h, r.va_sw)


class _NoCheckpoints:
    """The checkpoint sink of a candidate head fit (only the chosen head is checkpointed)."""

    def save(self, model: Any, state: dict[str, Any], best_weights: Any) -> None:
        pass


def _fit_candidate_head(r: _Run, weighting: str, cw: dict[int, float] | None) -> tuple[Any, int]:
    """A fresh head fitted on the cached embeddings with ``cw`` (same settings and early stopping as the
    head phase, no checkpoints); returns (model, epochs run)."""
    import keras
    import tensorflow as tf

    from edgetl.data import training_dataset

    cfg = r.cfg
    keras.utils.set_random_seed(cfg.seed)
    with _scope(r.strategy):
        head = keras.models.clone_model(r.head)
        _compile(head, cfg.lr, cfg, jit=False, steps_per_execution=32 if r.strategy is None else 1)
    if r.plan.distribute == "multi-worker":
        _multi_worker_build_fix(head, r.strategy)
    sw = np.array([cw[int(c)] for c in r.y_views], np.float32) if cw else None
    train_ds = training_dataset(r.emb_tr, r.y_views, r.n_cls, cfg.batch_size, cfg.seed, sample_weight=sw)
    rows: list[dict[str, Any]] = []
    cb = _make_phase_callback(f"head ({weighting} class weights)", cfg.epochs, 0, cfg.patience, _NoCheckpoints(), rows,
                              len(r.emb_tr), None, None)
    head.fit(train_ds, validation_data=_val_data(r, r.emb_va, tf.one_hot(r.yva, r.n_cls)), epochs=cfg.epochs,
             callbacks=[cb], verbose=0, shuffle=False)
    return head, len(rows)


def _choose_weighting(r: _Run) -> None:
    """Class weights that earn their place: with several candidates (``--class-weights auto`` on
    unbalanced classes) a head is fitted per other candidate and the best on the val objective is
    kept (edgetl/imbalance.py); the choice is saved beside the checkpoints for a resumed fine-tune."""
    cfg, classes = r.cfg, r.classes
    path = r.ckpt.root / WEIGHTING_FILE
    if r.resumed_phase == "fine-tune" and path.is_file():
        r.weighting_doc = json.loads(path.read_text())
        r.cw = weights_for(r.train_counts, r.weighting_doc["chosen"])
        return
    if r.resumed_phase == "fine-tune":  # a checkpoint of an edgetl before the choice: the weights its config.json recorded
        old = read_config(r.run_dir).get("class_weights") or {}
        r.cw = {i: float(old[c]) for i, c in enumerate(classes) if c in old} or None
        return

    def named(cw: dict[int, float] | None) -> dict[str, float] | None:
        return {classes[i]: w for i, w in cw.items()} if cw else None

    def val_of(model: Any) -> dict[str, Any]:
        return classification_metrics(np.asarray(model.predict(r.emb_va, batch_size=256, verbose=0), np.float32), r.yva, classes)

    cands = [{"weighting": r.weightings[0], "val": val_of(r.head), "epochs": r.head_epochs_run, "class_weights": named(r.cw)}]
    heads = {r.weightings[0]: r.head.get_weights()}
    for name in r.weightings[1:]:
        cw = weights_for(r.train_counts, name)
        model, epochs = _fit_candidate_head(r, name, cw)
        cands.append({"weighting": name, "val": val_of(model), "epochs": epochs, "class_weights": named(cw)})
        heads[name] = model.get_weights()
    for c in cands if len(cands) > 1 else []:  # one line per candidate when there is a choice
        v = c["val"]
        _log(cfg, f"head with class weights {c['weighting']}: on val {100 * v['accuracy']:.2f} % right ({v['correct']}/{v['total']}), "
                  f"balanced {100 * v['balanced_accuracy']:.2f} %, macro-F1 {v['macro_f1']:.3f} ({c['epochs']} epochs)")
    doc = choose_weighting(cands, cfg.objective)
    if len(cands) == 1:
        doc["reason"] = (f"--class-weights {cfg.class_weights}" if cfg.class_weights != "auto" else
                         f"classes balanced within {cfg.imbalance_ratio:g}:1 (--class-weights auto)")
    r.weighting_doc = doc
    r.cw = weights_for(r.train_counts, doc["chosen"])
    r.head.set_weights(heads[doc["chosen"]])
    if len(cands) > 1:
        _log(cfg, f"class weights {doc['chosen']}: {doc['reason']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=2))


def _fine_tune_data(r: _Run) -> tuple[Any, Any, int]:
    """(training dataset, validation data, training examples): cached activations, or images."""
    import tensorflow as tf

    from edgetl.data import training_dataset

    cfg = r.cfg
    yva_1h = tf.one_hot(r.yva, r.n_cls)
    if r.tail is not None:
        ft_ds = training_dataset(r.act_tr, r.y_views, r.n_cls, cfg.batch_size, cfg.seed + 1,
                                 sample_weight=_sample_weights(r, r.y_views))
        return ft_ds, _val_data(r, r.act_va, yva_1h), len(r.y_views)
    ft_ds = training_dataset(r.xtr, r.ytr, r.n_cls, cfg.batch_size, cfg.seed + 1, sample_weight=_sample_weights(r, r.ytr),
                             augmenter=r.augmenter)
    ft_val = tf.data.Dataset.from_tensor_slices(_val_data(r, r.xva, yva_1h)).batch(cfg.batch_size).map(
        lambda a, *rest: (tf.cast(a, tf.float32), *rest)).prefetch(2)
    return ft_ds, ft_val, len(r.ytr)


def _fit_fine_tune(r: _Run) -> None:
    """Phase 2: the top ``k`` blocks (BatchNorm frozen) at a low learning rate with warm-up and cosine
    decay; the head-only model is epoch 0, so a fine-tune that does not lower the val loss is undone."""
    import keras

    cfg = r.cfg
    r.base.trainable = True  # resets every layer; the choice below is applied after it
    for layer in r.base.layers:
        layer.trainable = layer.name in r.unfrozen and not isinstance(layer, keras.layers.BatchNormalization)
    r.ft_model = model = r.tail if r.tail is not None else r.full
    r.ft_mode = "cached-activations" if r.tail is not None else "images"
    ft_ds, ft_val, n_train = _fine_tune_data(r)
    steps = int(np.ceil(n_train / cfg.batch_size)) * cfg.fine_tune_epochs
    warm = int(steps * cfg.warmup_fraction)
    peak = cfg.resolved_fine_tune_lr
    schedule = keras.optimizers.schedules.CosineDecay(0.0 if warm else peak, max(steps - warm, 1), alpha=0.0,
                                                      warmup_target=peak if warm else None, warmup_steps=warm)
    with _scope(r.strategy):  # a fresh scope object: one cannot be entered twice
        _compile(model, schedule, cfg, jit=r.plan.jit_compile)
    state, best_w, start = _resume_point(r, "fine-tune", model)
    if not (state and state[0].get("done")):
        n_trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        _log(cfg, f"fine-tuning {r.k} top block(s) ({n_trainable:,} weights, BatchNorm frozen) for up to "
                  f"{cfg.fine_tune_epochs} epochs, peak lr {peak:g}, on {r.ft_mode}")
        start_loss: list[float] = []

        def seed_with_head(cb: Any) -> None:
            if state:
                return
            # Early stopping counts the starting point (the best head) as epoch 0: when no
            # fine-tune epoch lowers the val loss, the restore keeps the head unchanged.
            ev = (model.evaluate(ft_val[0], ft_val[1], sample_weight=ft_val[2] if len(ft_val) > 2 else None, verbose=0)
                  if isinstance(ft_val, tuple) else model.evaluate(ft_val, verbose=0))
            loss = float(ev[0] if isinstance(ev, (list, tuple)) else ev)
            acc = float(ev[1]) if isinstance(ev, (list, tuple)) and len(ev) > 1 else None
            cb.best, cb.best_weights = loss, model.get_weights()
            r.head_only_w = cb.best_weights
            cb.extra_state["head_only"] = {"val_loss": loss, "val_accuracy": acc}
            start_loss.append(loss)

        r.ft_cb = cb = _fit_phase(r, "fine-tune", model, ft_ds, ft_val, cfg.fine_tune_epochs, r.head_epochs_run, n_train,
                                  state, best_w, start, prepare=seed_with_head)
        if start_loss and cb.best >= start_loss[0]:
            _log(cfg, f"no fine-tune epoch lowered the val loss below the head's ({start_loss[0]:.4f}): kept the head")
        r.ft_train_seconds = float(sum(cb.train_seconds))
        r.ft_images = n_train * len(cb.train_seconds)
    elif best_w is not None:
        model.set_weights(best_w)
    r.ft_epochs_run = sum(1 for h in r.history if h["phase"] == "fine-tune")
    r.head_only_doc = r.ft_cb.extra_state.get("head_only") if r.ft_cb is not None else (
        (state[0].get("extra") or {}).get("head_only") if state else None)


def _predict_val(r: _Run) -> np.ndarray:
    """Val probabilities on the fast path (tail on cached activations, head on embeddings)."""
    if r.fine_tune and r.tail is not None:
        probs = r.tail.predict(r.act_va.astype(np.float32), batch_size=256, verbose=0)
    elif r.fine_tune:
        probs = _predict(r.full, r.xva, r.cfg.batch_size)
    else:
        probs = r.head.predict(r.emb_va, batch_size=256, verbose=0)
    return np.asarray(probs, np.float32)


def _evaluate(r: _Run) -> None:
    """Val (fast path, then a check that the one-graph model agrees) and test metrics; for a fine-tune,
    both candidates (fine-tuned, head-only) are evaluated and the keep/restore decision recorded."""
    cfg, classes = r.cfg, r.classes
    val_probs = _predict_val(r)
    n_check = min(32, len(r.yva))
    full_probs = _predict_images(r, r.xva, r.ds.val.paths[:n_check], n_check)
    r.agree = float(np.max(np.abs(full_probs - val_probs[:n_check]))) if n_check else 0.0
    if r.agree > 1e-2:
        raise EdgetlError(f"internal check failed: the saved graph and the training path disagree by {r.agree:.4f}")
    r.metrics["val"] = classification_metrics(val_probs, r.yva, classes)
    test = None
    if r.ds.test is not None:  # decoded a chunk at a time when the run streams its images
        test = r.ds.arrays("test") if r.xtr is not None else (None, np.asarray(r.ds.test.labels, np.int32))

    def test_metrics() -> dict[str, Any] | None:
        if test is None:
            return None
        return classification_metrics(_predict_images(r, test[0], r.ds.test.paths, len(test[1])), test[1], classes)

    if test is not None:
        r.metrics["test"] = test_metrics()
    r.metrics["majority_baseline"] = _majority_doc(r, test[1] if test is not None else None)
    if not r.fine_tune:
        return
    r.fine_tune_doc = doc = fine_tune_choice(r.history, r.head_only_doc, cfg)
    kept = doc["kept"]
    if kept is None:
        return
    # The saved model is one candidate; the other is evaluated with its own weights (val, and
    # test for reporting only), then the saved model's weights are put back unchanged.
    cb = r.ft_cb
    phase_w = cb.phase_best_weights if cb is not None and cb.phase_best == doc["fine_tuned"]["val_loss"] else None
    other, other_w = ("head_only", r.head_only_w) if kept else ("fine_tuned", phase_w)
    _add_candidate_metrics(doc["fine_tuned" if kept else "head_only"], r.metrics["val"], r.metrics.get("test"))
    if other_w is not None:
        final_w = r.ft_model.get_weights()
        r.ft_model.set_weights(other_w)
        try:
            o_val = classification_metrics(_predict_val(r), r.yva, classes)
            o_test = test_metrics()
        finally:
            r.ft_model.set_weights(final_w)
        _add_candidate_metrics(doc[other], o_val, o_test)


def _predict_images(r: _Run, x: np.ndarray | None, paths: Sequence[str], n: int) -> np.ndarray:
    """The one-graph model's probabilities on the first ``n`` images: of ``x`` when decoded in RAM,
    else decoded from ``paths`` a chunk at a time."""
    from edgetl.data import decode_paths
    from edgetl.embed_cache import SHARD_BATCHES

    bs = r.cfg.batch_size
    if x is not None:
        return np.asarray(_predict(r.full, x[:n], bs), np.float32)
    chunk = max(bs, 32) * SHARD_BATCHES
    parts = [np.asarray(_predict(r.full, decode_paths(paths[i:min(n, i + chunk)], r.spec.preprocessing, r.cfg.workers,
                                                      r.cfg.max_pixels or None), bs), np.float32) for i in range(0, n, chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, r.n_cls), np.float32)


def _majority_doc(r: _Run, y_test: np.ndarray | None) -> dict[str, Any] | None:
    """Always answering the largest training class, on val and test: reported when the training
    classes are unbalanced beyond ``imbalance_ratio`` (None otherwise)."""
    from edgetl.metrics import imbalance_ratio

    ratio = imbalance_ratio(r.train_counts)
    if ratio is None or ratio <= r.cfg.imbalance_ratio:
        return None
    val = majority_baseline(r.train_counts, r.yva)
    test = majority_baseline(r.train_counts, y_test) if y_test is not None else None
    return {"class": r.classes[val["class_index"]] if val else r.classes[int(np.argmax(r.train_counts))],
            "imbalance_ratio": ratio, "train_counts": dict(zip(r.classes, r.train_counts)), "val": val, "test": test}


def _write_run(r: _Run) -> TrainResult:
    """model.keras, labels.txt, history.csv, metrics.json, config.json (status complete) and the plots."""
    cfg, run_dir, classes = r.cfg, r.run_dir, r.classes
    wall = time.perf_counter() - r.t_start
    tmp_model = run_dir / f".{MODEL_FILE}.tmp.keras"
    r.full.save(tmp_model)
    os.replace(tmp_model, run_dir / MODEL_FILE)
    atomic_write_text(run_dir / LABELS_FILE, "\n".join(classes) + "\n")
    atomic_write_text(run_dir / "history.csv", csv_text(r.history, HISTORY_COLUMNS + ["train_images_per_s"]))
    ft_rows = [h for h in r.history if h["phase"] == "fine-tune" and h.get("train_images_per_s")]
    ips = r.ft_images / r.ft_train_seconds if r.ft_train_seconds > 0 else (
        float(np.mean([h["train_images_per_s"] for h in ft_rows])) if ft_rows else None)
    metrics = r.metrics
    metrics.update({
        "strategy": cfg.strategy,
        "backbone": r.spec.name,
        "val_accuracy": metrics["val"]["accuracy"],
        "val_loss": metrics["val"]["loss"],
        "train_wall_seconds": wall,
        "decode_seconds": r.decode_seconds,
        "embed_seconds": r.embed_seconds,
        "embed_images_per_s": r.n_embedded / r.embed_seconds if r.embed_seconds > 0 and r.n_embedded else None,
        "embed_engine": r.forward.to_dict(),
        "embed_cache": r.embed_cache.to_dict() if r.embed_cache is not None else None,
        "resize_views": {"enabled": bool(r.cfg.augment.resize and r.augmenter is not None and r.cfg.augment.views),
                         "decode_resize_seconds": round(r.resize_view_seconds, 2)},
        "embed_seconds_per_pass": {"train_clean": r.view_seconds[0],
                                   "train_augmented": r.view_seconds[1:-1], "val": r.view_seconds[-1]},
        "views_per_train_image": r.n_views,
        "fine_tune_mode": r.ft_mode,
        "fine_tune_images_per_s": ips,
        "fine_tune_train_seconds": r.ft_train_seconds or None,
        "fine_tune_unfrozen_blocks": r.k if r.fine_tune else 0,
        "activation_cache_mb": round(r.cache_bytes / 2**20, 1) if r.ft_mode == "cached-activations" else None,
        "epochs_run": {"head": r.head_epochs_run, "fine_tune": r.ft_epochs_run},
        "fine_tune": r.fine_tune_doc,
        "class_weights": {classes[i]: w for i, w in r.cw.items()} if r.cw else None,
        "class_weighting": r.weighting_doc,
        "objective": cfg.objective,
        "num_skipped": len(r.ds.skipped),
        "skipped": [p for p, _ in r.ds.skipped],
        "graph_check_max_abs_diff": r.agree,
        "resumed": bool(r.resume_state),
        "device_plan": r.device_doc,
    })
    write_json(run_dir / "metrics.json", metrics)
    r.config_doc["class_weights"] = metrics["class_weights"]  # the weighting kept (auto chooses during training)
    r.config_doc["status"] = "complete"
    write_config(run_dir, r.config_doc)
    from edgetl.plots import plot_confusion, plot_curves

    plot_curves(r.history, run_dir / "curves.png")
    plot_confusion(metrics["val"]["confusion_matrix"], classes, run_dir / "confusion_matrix.png")
    # The CLI prints result.summary() once, on stdout; the API returns it.
    return TrainResult(run_dir, metrics, r.history, cfg, r.warnings, bool(r.resume_state))
