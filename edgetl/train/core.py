"""``train()``: checks, the run directory and its lock, resume, multi-worker roles, and the training
steps in order (setup, data, graphs, embeddings, head, fine-tune, evaluation, writing)."""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetl import __version__, quiet
from edgetl.config import TrainConfig
from edgetl.errors import EdgetlError, UsageError
from edgetl.imbalance import weighting_candidates, weights_for
from edgetl.locking import LOCK_NAME, DirLock, check_output_dir
from edgetl.metrics import balanced_sample_weights
from edgetl.run import CONFIG_FILE, read_config, write_config
from edgetl.train.activations import close_stores
from edgetl.train.checkpoints import CHECKPOINT_DIR, _Checkpoints
from edgetl.train.distribute import (
    DISTRIBUTE_ENV,
    WorkerRole,
    _make_strategy,
    _set_precision,
    cluster_role,
    plan_devices,
    requested_distribution,
)
from edgetl.train.embed import _embed_views
from edgetl.train.evaluate import TrainResult, _evaluate, _write_run
from edgetl.train.finetune import _fit_fine_tune
from edgetl.train.graphs import _build_graphs
from edgetl.train.head import _fit_head
from edgetl.train.state import _log, _Run, _warn


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"edgetl": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


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


def _train(cfg: TrainConfig, spec: Any, run_dir: Path, extra_callbacks: Sequence[Any], *,
           distribute: str = "auto", role: WorkerRole | None = None) -> TrainResult:
    """The training steps in order; each step reads and fills the shared :class:`_Run`."""
    quiet.quiet_env()
    r = _Run(cfg, spec, run_dir, extra_callbacks)
    _setup(r, distribute, role)
    _load_data(r)
    _build_graphs(r)
    try:
        _embed_views(r)
        _fit_head(r)
        if r.fine_tune:
            _fit_fine_tune(r)
        _evaluate(r)
    finally:
        close_stores(r)  # the fine-tune activation cache, and its files when it spilled to disk
        if r.embed_cache is not None:
            r.embed_cache.close()  # its in-use lock: other runs may evict the folder from now on
    return _write_run(r)


def _setup(r: _Run, distribute: str, role: WorkerRole | None) -> None:
    """Device plan, distribution strategy, precision, seed, checkpoints (and the state to resume)."""
    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing notices from predicting several views
    r.plan = plan_devices(tf.config.list_physical_devices("GPU"), distribute, role)
    r.role = role if r.plan.distribute == "multi-worker" else None
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


def _load_data(r: _Run) -> None:
    """Check every image once (undecodable files skipped) and keep the labelled file lists, not the
    pixels: the frozen-base pass and fine-tuning on images decode the files as they read them
    (edgetl/train/embed.py, edgetl/data/stream.py); class weights; ``config.json`` (status running)."""
    from edgetl.data import CheckShard, load_dataset, summarize_skipped

    cfg = r.cfg
    _log(cfg, f"loading images from {cfg.data_dir} ...")
    t0 = time.perf_counter()
    # Multi-worker: each worker checks its share of the files, the results are all-gathered (the same on every worker).
    shard, what = None, "checking images"
    if r.role is not None:
        from edgetl.train.distribute import check_combiner

        shard = CheckShard(r.role.index, r.role.workers, check_combiner(r.strategy, r.role.index, r.role.workers))
        what = f"checking images ({r.role.describe()}: its share)"
    r.ds = ds = load_dataset(cfg.data_dir, val_split=cfg.val_split, seed=cfg.seed, max_pixels=cfg.max_pixels or None,
                             workers=cfg.workers, progress=quiet.Progress(what).update if cfg.verbose else None,
                             check_shard=shard)
    r.decode_seconds = time.perf_counter() - t0
    r.checked_images = ds.checked
    if r.role is not None:
        listed = sum(len(sp.samples) + len(sp.skipped) for sp in (ds.train, ds.val, ds.test) if sp is not None)
        _log(cfg, f"{r.role.describe()}: checked its {ds.checked} of the {listed} listed files in {r.decode_seconds:.1f} s "
                  "(the others' results gathered)")
    msg = summarize_skipped(ds.skipped)
    if msg:
        _warn(cfg, msg, r.warnings)
    r.ytr, r.yva = (np.asarray(sp.labels, np.int32) for sp in (ds.train, ds.val))
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
    _log(cfg, f"{len(r.ytr)} train / {len(r.yva)} val images, {r.n_cls} classes, checked in {r.decode_seconds:.1f} s")
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
