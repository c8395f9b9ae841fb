"""Classification scores shared by train, sweep and bench (pure numpy, no TensorFlow).

Three scores sit side by side wherever edgetl reports a result, because accuracy alone misleads on
unbalanced classes (always answering the largest class can score high):

* accuracy: the share of images predicted right;
* balanced accuracy: the mean of the per-class recalls, over the classes present in the labels
  (scikit-learn's ``balanced_accuracy_score``); 1/k for a constant answer on k classes;
* macro-F1: the mean of the per-class F1 scores over every class present in the labels or in the
  predictions (a class never predicted has F1 0; a class in neither is left out).

:func:`majority_baseline` is the accuracy of always answering the largest training class.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

OBJECTIVES = ("accuracy", "balanced")


def confusion(labels: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """``cm[true, predicted]`` counts (int64, ``n_classes`` x ``n_classes``)."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(pred, dtype=np.int64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels but {len(p)} predictions")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    if len(y):
        np.add.at(cm, (y, np.clip(p, 0, n_classes - 1)), 1)
    return cm


def scores_from_confusion(cm: np.ndarray | Sequence[Sequence[int]]) -> dict[str, Any]:
    """Accuracy, balanced accuracy and macro-F1 (fractions, None on no images) with per-class figures."""
    cm = np.asarray(cm, dtype=np.int64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    total = int(cm.sum())
    recall = np.divide(tp, support, out=np.zeros(len(tp)), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(len(tp)), where=denom > 0)
    present = support > 0
    in_f1 = present | (predicted > 0)
    return {
        "accuracy": float(tp.sum() / total) if total else None,
        "correct": int(tp.sum()),
        "total": total,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else None,
        "macro_f1": float(f1[in_f1].mean()) if in_f1.any() else None,
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
    }


def scores(labels: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, n_classes: int) -> dict[str, Any]:
    """:func:`scores_from_confusion` of ``labels`` vs ``pred``."""
    return scores_from_confusion(confusion(labels, pred, n_classes))


def balanced_accuracy(labels: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, n_classes: int) -> float | None:
    return scores(labels, pred, n_classes)["balanced_accuracy"]


def macro_f1(labels: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, n_classes: int) -> float | None:
    return scores(labels, pred, n_classes)["macro_f1"]


def imbalance_ratio(counts: Sequence[int]) -> float | None:
    """Largest over smallest class count (None when a class is empty or there are no classes)."""
    counts = [int(c) for c in counts]
    return max(counts) / min(counts) if counts and min(counts) > 0 else None


def majority_baseline(train_counts: Sequence[int], labels: Sequence[int] | np.ndarray) -> dict[str, Any] | None:
    """The scores of always answering the largest training class, on ``labels``.

    Returns ``{"class_index", "accuracy", "correct", "total", "balanced_accuracy"}`` or None without labels.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(train_counts) or not len(y):
        return None
    top = int(np.argmax(np.asarray(train_counts)))
    s = scores(y, np.full(len(y), top), len(train_counts))
    return {"class_index": top, "accuracy": s["accuracy"], "correct": s["correct"], "total": s["total"],
            "balanced_accuracy": s["balanced_accuracy"]}


def objective_score(m: dict[str, Any], objective: str) -> float:
    """The figure a selection maximises: ``accuracy`` or ``balanced_accuracy`` of a metrics dict."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    v = m.get("accuracy" if objective == "accuracy" else "balanced_accuracy")
    return float("-inf") if v is None else float(v)


def balanced_sample_weights(labels: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """Per-image weights that make every class present in ``labels`` count equally, with mean 1.

    A weighted mean of per-image losses with these weights is the mean over classes of each class's
    mean loss (the smooth counterpart of balanced accuracy).
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    k = int((counts > 0).sum())
    w = np.zeros(len(y), np.float32)
    if k:
        w = (len(y) / (k * counts[y])).astype(np.float32)
    return w


def score_line(m: dict[str, Any], name: str) -> str:
    """``"val accuracy 91.20 % (114/125), balanced accuracy 88.10 %, macro-F1 0.874"``."""
    parts = [f"{name} accuracy {100 * m['accuracy']:.2f} % ({m['correct']}/{m['total']})"]
    if m.get("balanced_accuracy") is not None:
        parts.append(f"balanced accuracy {100 * m['balanced_accuracy']:.2f} %")
    if m.get("macro_f1") is not None:
        parts.append(f"macro-F1 {m['macro_f1']:.3f}")
    return ", ".join(parts)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """What train reports for a split: accuracy (with counts), balanced accuracy, macro-F1, plain and class-balanced
    cross-entropy, per-class precision/recall/F1, confusion matrix."""
    n = len(classes)
    labels = np.asarray(labels, dtype=np.int64)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    cm = confusion(labels, pred, n)
    s = scores_from_confusion(cm)
    eps = 1e-7
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)) if len(labels) else np.zeros(0)
    per_class = {c: {"precision": s["precision"][i], "recall": s["recall"][i], "f1": s["f1"][i],
                     "support": int(s["support"][i])} for i, c in enumerate(classes)}
    return {
        "accuracy": s["accuracy"] if s["accuracy"] is not None else 0.0,
        "correct": s["correct"],
        "total": int(len(labels)),
        "balanced_accuracy": s["balanced_accuracy"],
        "macro_f1": s["macro_f1"],
        "loss": float(nll.mean()) if len(labels) else float("nan"),
        "balanced_loss": float(np.mean(nll * balanced_sample_weights(labels, n))) if len(labels) else float("nan"),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
