"""Class weighting that has to earn its place on val (no TensorFlow here; edgetl/train/head.py fits the heads).

Inverse-frequency class weights trade the large classes' accuracy for the small classes' recall.
Whether that trade pays depends on the data (on a 14:1 inspection set they cost 21 points of test
accuracy and gained nothing on the balanced metrics, issue 23), so ``--class-weights auto`` does
not decide from the class counts alone: on unbalanced classes it trains the head (cheap, on cached
embeddings) once per candidate weighting, unweighted first, and keeps the one with the best val
objective (accuracy or balanced accuracy); a tie keeps the lighter weighting. ``metrics.json``
records every candidate's val figures and the reason.
"""

from __future__ import annotations

from typing import Any, Sequence

from edgetl.metrics import imbalance_ratio, objective_score

#: Weighting name -> exponent of the inverse class frequency (0: unweighted, 0.5: softened, 1: balanced).
WEIGHTINGS = {"off": 0.0, "sqrt": 0.5, "on": 1.0}
#: The candidates ``auto`` tries on unbalanced classes, lightest first (ties keep the earlier one).
#: Measured on sign_digits and hymenoptera at 10:1: better than unweighted on test accuracy and balanced
#: accuracy, or equal, in every run (benchmarks/results/imbalance_20261205-*.md).
AUTO_CANDIDATES = ("off", "sqrt", "on")
MODES = ("auto", "off", "sqrt", "on")


def weights_for(counts: Sequence[int], weighting: str) -> dict[int, float] | None:
    """Per-class weights ``(n / n_c) ** p`` scaled so the weighted image count equals ``n`` (None: unweighted).

    ``on`` gives scikit-learn's ``balanced`` weights ``n / (k * n_c)``; ``sqrt`` the softened ``p = 0.5``.
    """
    counts = [int(c) for c in counts]
    p = WEIGHTINGS[weighting]
    if p == 0 or not counts or min(counts) == 0:
        return None
    n = sum(counts)
    raw = [(n / c) ** p for c in counts]
    scale = n / sum(r * c for r, c in zip(raw, counts))
    return {i: r * scale for i, r in enumerate(raw)}


def weighting_candidates(counts: Sequence[int], mode: str, ratio: float) -> list[str]:
    """The weightings to train: ``auto`` tries :data:`AUTO_CANDIDATES` above ``ratio``, else none;
    any other mode is the one given."""
    if mode != "auto":
        return [mode]
    r = imbalance_ratio(counts)
    return list(AUTO_CANDIDATES) if r is not None and r > ratio else ["off"]


def choose_weighting(candidates: Sequence[dict[str, Any]], objective: str) -> dict[str, Any]:
    """The candidate with the best val objective; ties keep the lighter weighting (the earlier one).

    Args:
        candidates: ``{"weighting", "val": metrics dict with accuracy/balanced_accuracy/macro_f1}``,
            lightest first.
        objective: ``accuracy`` or ``balanced``.

    Returns:
        ``{"chosen", "objective", "reason", "candidates": [{weighting, val_accuracy, val_balanced_accuracy,
        val_macro_f1, val_correct, val_total, ...}]}``.
    """
    if not candidates:
        raise ValueError("no weighting candidate")
    best = candidates[0]
    for c in candidates[1:]:
        if objective_score(c["val"], objective) > objective_score(best["val"], objective):
            best = c
    key = "accuracy" if objective == "accuracy" else "balanced accuracy"
    rows = []
    for c in candidates:
        v = c["val"]
        rows.append({"weighting": c["weighting"], "val_accuracy": v.get("accuracy"), "val_correct": v.get("correct"),
                     "val_total": v.get("total"), "val_balanced_accuracy": v.get("balanced_accuracy"),
                     "val_macro_f1": v.get("macro_f1"), **{k: c[k] for k in ("epochs", "class_weights") if k in c}})
    if len(candidates) == 1:
        reason = "one candidate"
    else:
        fig = ", ".join(f"{c['weighting']} {100 * objective_score(c['val'], objective):.2f} %" for c in candidates)
        first = candidates[0]
        if best is first:
            reason = f"no weighting beat {first['weighting']} on val {key}: {fig} (a tie keeps the lighter weighting)"
        else:
            reason = f"highest val {key}: {fig}"
    return {"chosen": best["weighting"], "objective": objective, "reason": reason, "candidates": rows}


def imbalance_lines(m: dict[str, Any]) -> list[str]:
    """Summary lines for unbalanced classes: the majority-class baseline and the class-weight choice."""
    lines = []
    base = m.get("majority_baseline")
    if base:
        figs = ", ".join(f"{split} {100 * base[split]['accuracy']:.2f} % ({base[split]['correct']}/{base[split]['total']})"
                         for split in ("val", "test") if base.get(split))
        lines.append(f"unbalanced classes ({base['imbalance_ratio']:.1f}:1 in train): always answering "
                     f"{base['class']!r} would score {figs}")
    cw = m.get("class_weighting")
    if cw and len(cw.get("candidates", [])) > 1:
        lines.append(f"class weights {cw['chosen']}: {cw['reason']}")
    return lines
