"""Evaluation (val, test, the graph check, both fine-tune candidates, the majority baseline) and
writing the run directory (:class:`TrainResult`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetl.config import TrainConfig
from edgetl.errors import EdgetlError
from edgetl.imbalance import imbalance_lines
from edgetl.metrics import classification_metrics, majority_baseline, score_line
from edgetl.report import atomic_write_text, csv_text, write_json
from edgetl.run import LABELS_FILE, MODEL_FILE, write_config
from edgetl.train.finetune import _add_candidate_metrics, fine_tune_choice, fine_tune_summary
from edgetl.train.graphs import _predict
from edgetl.train.state import _Run


HISTORY_COLUMNS = ["phase", "epoch", "phase_epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "train_seconds", "epoch_seconds"]


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


def _predict_val(r: _Run) -> np.ndarray:
    """Val probabilities on the fast path (tail on cached activations, head on embeddings)."""
    if r.fine_tune and r.tail is not None:
        from edgetl.train.activations import predict_tail

        probs = predict_tail(r, r.act_va)
    elif r.fine_tune:
        probs = _predict_images(r, None, r.ds.val.paths, len(r.yva))
    else:
        probs = r.head.predict(r.emb_va, batch_size=256, verbose=0)
    return np.asarray(probs, np.float32)


def _evaluate(r: _Run) -> None:
    """Val (fast path, then a check that the one-graph model agrees) and test metrics; for a fine-tune,
    both candidates (fine-tuned, head-only) are evaluated and the keep/restore decision recorded."""
    cfg, classes = r.cfg, r.classes
    val_probs = _predict_val(r)
    n_check = min(32, len(r.yva))
    full_probs = _predict_images(r, None, r.ds.val.paths[:n_check], n_check)
    r.agree = float(np.max(np.abs(full_probs - val_probs[:n_check]))) if n_check else 0.0
    if r.agree > 1e-2:
        raise EdgetlError(f"internal check failed: the saved graph and the training path disagree by {r.agree:.4f}")
    r.metrics["val"] = classification_metrics(val_probs, r.yva, classes)
    test = None
    if r.ds.test is not None:  # decoded a chunk at a time
        test = (None, np.asarray(r.ds.test.labels, np.int32))

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


def _activation_cache_doc(r: _Run) -> dict[str, Any] | None:
    """Where the fine-tune activation cache was (ram/disk) and the bytes its RAM budget counted."""
    plan = r.act_plan
    if plan is None or r.ft_mode != "cached-activations":
        return None
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731
    return {"where": plan["where"], "store_mb": mb(plan["store_bytes"]), "in_flight_mb": mb(plan["transient_bytes"]),
            "ram_mb_counted": mb(plan["ram_bytes"]), "budget_mb": mb(plan["budget_bytes"])}


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
        "activation_cache": _activation_cache_doc(r),
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
