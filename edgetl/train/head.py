"""Phase 1: the classifier head on the cached embeddings, and the class-weight choice (a head per
candidate weighting, the best on the val objective kept; :mod:`edgetl.imbalance`)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgetl.imbalance import choose_weighting, weights_for
from edgetl.metrics import classification_metrics
from edgetl.report import atomic_write_text
from edgetl.run import read_config
from edgetl.train.checkpoints import _fit_phase, _make_phase_callback, _NoCheckpoints, _resume_point
from edgetl.train.distribute import _multi_worker_build_fix, _scope
from edgetl.train.graphs import _compile
from edgetl.train.state import _log, _Run


WEIGHTING_FILE = "class_weighting.json"  # the class-weight choice, beside the checkpoints (a resumed fine-tune reads it)


def _sample_weights(r: _Run, y: np.ndarray) -> np.ndarray | None:
    return np.array([r.cw[int(c)] for c in y], np.float32) if r.cw else None


def _train_data(r: _Run, sample_weight: np.ndarray | None) -> Any:
    """The head's training batches: from ``r.emb_tr``, or in a sharded multi-worker run each worker's
    own embeddings through ``distribute_datasets_from_function`` (no training row crosses workers:
    only the gradients are all-reduced)."""
    from edgetl.data import training_dataset
    from edgetl.train.distribute import shard_rows, sharded_train_data

    cfg = r.cfg

    def make(batch: int) -> Any:
        return training_dataset(r.emb_tr, r.y_views, r.n_cls, batch, cfg.seed, sample_weight=sample_weight)

    if r.shard is None:
        return make(cfg.batch_size)
    views = len(r.emb_tr) // max(1, len(shard_rows(len(r.ytr), *r.shard)))
    ds, steps = sharded_train_data(r.strategy, r.shard, len(r.ytr), views, cfg.batch_size, make)
    _log(cfg, f"worker {r.shard[0]}: the head trains on its own {len(r.emb_tr)} embeddings, {steps} steps per epoch "
              f"(global batch {cfg.batch_size} over {r.strategy.num_replicas_in_sync} replicas)")
    return ds


def _fit_head(r: _Run) -> None:
    """Phase 1: the classifier on the cached embeddings (then copied into the one-graph model)."""
    import tensorflow as tf

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
            train_ds = _train_data(r, _sample_weights(r, r.y_views))
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


def _fit_candidate_head(r: _Run, weighting: str, cw: dict[int, float] | None) -> tuple[Any, int]:
    """A fresh head fitted on the cached embeddings with ``cw`` (same settings and early stopping as the
    head phase, no checkpoints); returns (model, epochs run)."""
    import keras
    import tensorflow as tf

    cfg = r.cfg
    keras.utils.set_random_seed(cfg.seed)
    with _scope(r.strategy):
        head = keras.models.clone_model(r.head)
        _compile(head, cfg.lr, cfg, jit=False, steps_per_execution=32 if r.strategy is None else 1)
    if r.plan.distribute == "multi-worker":
        _multi_worker_build_fix(head, r.strategy)
    sw = np.array([cw[int(c)] for c in r.y_views], np.float32) if cw else None
    train_ds = _train_data(r, sw)
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
