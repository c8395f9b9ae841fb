"""edgetl/metrics.py: the scores every report shares (issue 23), checked by hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl import metrics as M


def test_scores_by_hand():
    # class 0: 4 images, 3 right; class 1: 2 images, 1 right; class 2: 2 images, 2 right (1 wrong answer "2")
    y = [0, 0, 0, 0, 1, 1, 2, 2]
    p = [0, 0, 0, 1, 1, 2, 2, 2]
    s = M.scores(y, p, 3)
    assert s["accuracy"] == pytest.approx(6 / 8) and (s["correct"], s["total"]) == (6, 8)
    assert s["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 2 / 2) / 3)
    f1 = [2 * 1 * 0.75 / 1.75, 2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1 / (2 / 3 + 1)]
    assert s["macro_f1"] == pytest.approx(np.mean(f1))
    assert M.balanced_accuracy(y, p, 3) == s["balanced_accuracy"] and M.macro_f1(y, p, 3) == s["macro_f1"]


def test_class_never_predicted_counts_as_zero():
    # always answering class 0 on 9:1 data: 90 % accuracy, 50 % balanced, F1 of class 1 is 0
    y = [0] * 9 + [1]
    p = [0] * 10
    s = M.scores(y, p, 2)
    assert s["accuracy"] == pytest.approx(0.9)
    assert s["balanced_accuracy"] == pytest.approx(0.5)
    assert s["macro_f1"] == pytest.approx((2 * 0.9 * 1.0 / 1.9 + 0.0) / 2)


def test_absent_class_is_left_out():
    # class 2 exists in the model but not in these labels, and is never predicted: it does not
    # drag balanced accuracy or macro-F1 down
    y, p = [0, 0, 1, 1], [0, 0, 1, 1]
    s = M.scores(y, p, 3)
    assert s["balanced_accuracy"] == 1.0 and s["macro_f1"] == 1.0
    # ...but a wrong answer naming the absent class counts in macro-F1 (its F1 is 0)
    s = M.scores([0, 0, 1, 1], [0, 0, 1, 2], 3)
    assert s["balanced_accuracy"] == pytest.approx(0.75)
    assert s["macro_f1"] == pytest.approx((1.0 + 2 * 1 * 0.5 / 1.5 + 0.0) / 3)


def test_empty_and_mismatched_inputs():
    s = M.scores([], [], 2)
    assert s["accuracy"] is None and s["balanced_accuracy"] is None and s["macro_f1"] is None and s["total"] == 0
    with pytest.raises(ValueError, match="labels"):
        M.scores([0, 1], [0], 2)


def test_majority_baseline_and_ratio():
    b = M.majority_baseline([5, 50, 10], [0, 1, 1, 2])
    assert b["class_index"] == 1 and b["accuracy"] == 0.5 and b["correct"] == 2 and b["total"] == 4
    assert b["balanced_accuracy"] == pytest.approx(1 / 3)
    assert M.majority_baseline([5, 50], []) is None
    assert M.imbalance_ratio([5, 50, 10]) == 10 and M.imbalance_ratio([0, 3]) is None


def test_balanced_sample_weights_make_classes_equal():
    y = np.array([0] * 6 + [1] * 2 + [3] * 2)  # class 2 absent
    w = M.balanced_sample_weights(y, 4)
    assert w.mean() == pytest.approx(1.0)
    assert [w[y == c].sum() for c in (0, 1, 3)] == pytest.approx([10 / 3] * 3)
    loss = np.where(y == 0, 0.1, np.where(y == 1, 1.0, 2.0))
    assert np.mean(loss * w) == pytest.approx((0.1 + 1.0 + 2.0) / 3)


def test_objective_score():
    m = {"accuracy": 0.9, "balanced_accuracy": 0.5}
    assert M.objective_score(m, "accuracy") == 0.9 and M.objective_score(m, "balanced") == 0.5
    with pytest.raises(ValueError, match="objective"):
        M.objective_score(m, "f1")


def test_choose_weighting_rule():
    from edgetl.imbalance import choose_weighting

    def cand(name, acc, bal):
        return {"weighting": name, "val": {"accuracy": acc, "balanced_accuracy": bal, "macro_f1": bal, "correct": 1, "total": 2}}

    cands = [cand("off", 0.90, 0.60), cand("sqrt", 0.90, 0.70), cand("on", 0.85, 0.80)]
    assert choose_weighting(cands, "accuracy")["chosen"] == "off"  # a tie keeps the lighter weighting
    doc = choose_weighting(cands, "balanced")
    assert doc["chosen"] == "on" and doc["reason"] == "highest val balanced accuracy: off 60.00 %, sqrt 70.00 %, on 80.00 %"
    assert [c["val_balanced_accuracy"] for c in doc["candidates"]] == [0.60, 0.70, 0.80]
