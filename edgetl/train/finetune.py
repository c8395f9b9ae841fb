"""Phase 2: fine-tuning the top blocks (on cached activations or on images streamed from the files), and the keep/restore
decision against the head-only model as recorded in ``metrics.json["fine_tune"]``."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgetl.config import TrainConfig
from edgetl.train.checkpoints import _fit_phase, _resume_point
from edgetl.train.distribute import _scope
from edgetl.train.graphs import _compile
from edgetl.train.head import _sample_weights
from edgetl.train.state import _log, _Run


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


def _fine_tune_data(r: _Run) -> tuple[Any, Any, int, int]:
    """(training dataset, validation dataset, training examples, steps per epoch): cached activations read
    back a batch at a time (:mod:`edgetl.train.activations`), or images decoded from the files as they are
    read (:func:`edgetl.data.files_dataset`); nothing holds every decoded image. In a sharded multi-worker
    run each worker trains only on its own rows (its :func:`shard_rows`, the rows it embedded: its
    activation store, or its files), through the head's :func:`sharded_train_data`: per-replica batch,
    the same steps on every worker. The val set is every val row on every worker (gathered activations,
    or every val file): the same val loss everywhere, as in the head phase."""
    from edgetl.data import files_dataset
    from edgetl.train.activations import activation_dataset
    from edgetl.train.distribute import shard_rows, sharded_train_data

    cfg = r.cfg
    if r.tail is not None:
        def make_act(batch: int) -> Any:
            return activation_dataset(r.act_tr, r.y_views, r.n_cls, batch, cfg.seed + 1,
                                      sample_weight=_sample_weights(r, r.y_views))

        ft_val = activation_dataset(r.act_va, r.yva, r.n_cls, cfg.batch_size, 0, shuffle=False, sample_weight=r.va_sw)
        if r.shard is None:
            return make_act(cfg.batch_size), ft_val, len(r.y_views), int(np.ceil(len(r.y_views) / cfg.batch_size))
        mine = len(shard_rows(len(r.ytr), *r.shard))
        views = len(r.y_views) // max(1, mine)
        ft_ds, steps = sharded_train_data(r.strategy, r.shard, len(r.ytr), views, cfg.batch_size, make_act)
        _log(cfg, f"worker {r.shard[0]}: fine-tunes on the cached activations of its own {mine} of {len(r.ytr)} train "
                  f"images x {views} view(s), {steps} steps per epoch (global batch {cfg.batch_size} over "
                  f"{r.strategy.num_replicas_in_sync} replicas)")
        return ft_ds, ft_val, views * len(r.ytr), steps
    pre, max_px = r.spec.preprocessing, cfg.max_pixels or None
    rows = list(shard_rows(len(r.ytr), *r.shard)) if r.shard is not None else list(range(len(r.ytr)))
    paths, y = [r.ds.train.paths[i] for i in rows], r.ytr[rows]

    def make(batch: int) -> Any:
        return files_dataset(paths, y, r.n_cls, batch, cfg.seed + 1, pre, max_px,
                             sample_weight=_sample_weights(r, y), augmenter=r.augmenter)

    ft_val = files_dataset(r.ds.val.paths, r.yva, r.n_cls, cfg.batch_size, 0, pre, max_px, shuffle=False,
                           sample_weight=r.va_sw)
    if r.shard is None:
        return make(cfg.batch_size), ft_val, len(r.ytr), int(np.ceil(len(r.ytr) / cfg.batch_size))
    ft_ds, steps = sharded_train_data(r.strategy, r.shard, len(r.ytr), 1, cfg.batch_size, make)
    _log(cfg, f"worker {r.shard[0]}: fine-tunes on its own {len(paths)} of {len(r.ytr)} train images, {steps} steps "
              f"per epoch (global batch {cfg.batch_size} over {r.strategy.num_replicas_in_sync} replicas)")
    return ft_ds, ft_val, len(r.ytr), steps


def _fit_fine_tune(r: _Run) -> None:
    """Phase 2: the top ``k`` blocks (BatchNorm frozen) at a low learning rate with warm-up and cosine
    decay; the head-only model is epoch 0, so a fine-tune that does not lower the val loss is undone."""
    import keras
    import tensorflow as tf

    from edgetl.data.stream import decode_error

    cfg = r.cfg
    r.base.trainable = True  # resets every layer; the choice below is applied after it
    for layer in r.base.layers:
        layer.trainable = layer.name in r.unfrozen and not isinstance(layer, keras.layers.BatchNormalization)
    r.ft_model = model = r.tail if r.tail is not None else r.full
    r.ft_mode = "cached-activations" if r.tail is not None else "images"
    ft_ds, ft_val, n_train, epoch_steps = _fine_tune_data(r)
    steps = epoch_steps * cfg.fine_tune_epochs
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
            ev = model.evaluate(ft_val, verbose=0)
            loss = float(ev[0] if isinstance(ev, (list, tuple)) else ev)
            acc = float(ev[1]) if isinstance(ev, (list, tuple)) and len(ev) > 1 else None
            cb.best, cb.best_weights = loss, model.get_weights()
            r.head_only_w = cb.best_weights
            cb.extra_state["head_only"] = {"val_loss": loss, "val_accuracy": acc}
            start_loss.append(loss)

        try:
            r.ft_cb = cb = _fit_phase(r, "fine-tune", model, ft_ds, ft_val, cfg.fine_tune_epochs, r.head_epochs_run,
                                      n_train, state, best_w, start, prepare=seed_with_head)
        except tf.errors.OpError as exc:  # a file that stopped decoding: one line, not TensorFlow's trace
            err = decode_error(exc)
            if err is None:
                raise
            raise err from None
        if start_loss and cb.best >= start_loss[0]:
            _log(cfg, f"no fine-tune epoch lowered the val loss below the head's ({start_loss[0]:.4f}): kept the head")
        r.ft_train_seconds = float(sum(cb.train_seconds))
        r.ft_images = n_train * len(cb.train_seconds)
    elif best_w is not None:
        model.set_weights(best_w)
    r.ft_epochs_run = sum(1 for h in r.history if h["phase"] == "fine-tune")
    r.head_only_doc = r.ft_cb.extra_state.get("head_only") if r.ft_cb is not None else (
        (state[0].get("extra") or {}).get("head_only") if state else None)
