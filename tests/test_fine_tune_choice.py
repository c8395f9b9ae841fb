"""Fine-tune transparency (issue 13): metrics.json says whether the fine-tuned weights were kept.

Two tiny real runs (tiny_cnn, random init) force each branch of the keep/restore rule through their
settings: a barely trained head that fine-tuning clearly improves (kept), and a fine-tune learning rate
so large that every fine-tune epoch is worse on val (head-only model restored).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import make_image_folder
from edgetl.config import AugmentConfig, TrainConfig
from edgetl.train import fine_tune_choice, fine_tune_summary

FAST = dict(backbone="tiny_cnn", weights="none", lr=0.03, epochs=20, fine_tune_epochs=3, batch_size=16, verbose=0,
            augment=AugmentConfig(views=1), strategy="fine-tune")
CANDIDATE_KEYS = {"val_loss", "val_accuracy", "val_correct", "val_total", "val_cross_entropy",
                  "test_accuracy", "test_correct", "test_total"}


@pytest.fixture(scope="module")
def folder_with_test(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data_test"), n_test=5)


def _head_only_capture():
    """A callback that records the fine-tune model's weights when its fit starts (= the head-only model)."""
    import keras

    class Capture(keras.callbacks.Callback):
        weights: dict[str, list[np.ndarray]] = {}

        def on_train_begin(self, logs=None):
            if self.model.name == "tail":
                Capture.weights = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in self.model.layers
                                   if layer.get_weights()}

    return Capture()


def _run(folder, out, **kw):
    from edgetl.train import train

    cap = _head_only_capture()
    res = train(TrainConfig(data_dir=str(folder), out=str(out), **{**FAST, **kw}), extra_callbacks=[cap])
    assert res.metrics["fine_tune_mode"] == "cached-activations"
    assert type(cap).weights, "the fine-tune fit did not start"
    m = json.loads((res.run_dir / "metrics.json").read_text())
    return res, m, type(cap).weights


def _check_doc(m, history):
    ft = m["fine_tune"]
    assert isinstance(ft["kept"], bool) and ft["reason"] and "test is never used" in ft["rule"]
    for name in ("head_only", "fine_tuned"):
        assert CANDIDATE_KEYS <= set(ft[name]), (name, ft[name])
        assert ft[name]["val_total"] == m["val"]["total"] and ft[name]["test_total"] == m["test"]["total"]
        assert math.isfinite(ft[name]["val_loss"])
    # the rule: the kept candidate has the strictly lower val loss; a tie or worse restores the head
    ho, fl = ft["head_only"]["val_loss"], ft["fine_tuned"]["val_loss"]
    assert ft["kept"] == (fl < ho)
    chosen = ft["fine_tuned" if ft["kept"] else "head_only"]
    # the saved model is the chosen candidate: its val and test figures are the run's
    assert chosen["val_accuracy"] == m["val"]["accuracy"] and chosen["val_correct"] == m["val"]["correct"]
    assert chosen["val_cross_entropy"] == pytest.approx(m["val"]["loss"], abs=1e-6)
    assert chosen["test_accuracy"] == m["test"]["accuracy"] and chosen["test_correct"] == m["test"]["correct"]
    # the best fine-tune epoch's val loss is the one history recorded
    rows = [r for r in history if r["phase"] == "fine-tune"]
    assert fl == pytest.approx(min(r["val_loss"] for r in rows), rel=1e-9)
    return ft


def test_fine_tuned_weights_kept_when_they_help_on_val(folder_with_test, tmp_path):
    import keras

    # One epoch of a slow head: fine-tuning (head included) then lowers the val loss a lot.
    res, m, head_only = _run(folder_with_test, tmp_path / "kept", epochs=1, lr=0.001, fine_tune_lr=0.03)
    ft = _check_doc(m, res.history)
    assert ft["kept"] is True, ft
    assert ft["fine_tuned"]["val_loss"] < ft["head_only"]["val_loss"]
    assert ft["reason"].startswith("val loss ") and "< " in ft["reason"] and "head-only" in ft["reason"]
    assert f"fine-tuned weights kept: {ft['reason']}" in res.summary().splitlines()
    saved = keras.saving.load_model(res.run_dir / "model.keras")
    for name in ("block1_conv", "probs"):  # fine-tuned layers differ from the head-only model's
        assert not np.array_equal(saved.get_layer(name).get_weights()[0], head_only[name][0]), name


def test_head_only_model_restored_when_fine_tuning_hurts_val(folder_with_test, tmp_path):
    import keras

    # A well-trained head, then a fine-tune learning rate far too large: every fine-tune epoch is worse.
    res, m, head_only = _run(folder_with_test, tmp_path / "restored", fine_tune_lr=10.0)
    ft = _check_doc(m, res.history)
    assert ft["kept"] is False, ft
    assert ft["fine_tuned"]["val_loss"] >= ft["head_only"]["val_loss"]
    assert ">= " in ft["reason"] and "head-only" in ft["reason"]
    line = f"fine-tuning did not help on val: head-only model restored ({ft['reason']})"
    assert line in res.summary().splitlines()
    # the saved model is exactly the head-only model: same weights in every layer the fine-tune phase trained
    saved = keras.saving.load_model(res.run_dir / "model.keras")
    for name, weights in head_only.items():
        for a, b in zip(saved.get_layer(name).get_weights(), weights):
            np.testing.assert_array_equal(a, b, err_msg=name)
    # ... so are its val predictions: the saved model's val cross-entropy plus its classifier's L2 penalty
    # is the val loss Keras measured for the head-only model before the first fine-tune step
    penalty = res.config.head_l2 * float(np.sum(saved.get_layer("probs").get_weights()[0].astype(np.float64) ** 2))
    assert m["val"]["loss"] + penalty == pytest.approx(ft["head_only"]["val_loss"], rel=1e-4)
    # the discarded candidate was measured with its own weights, not the saved model's: its val loss
    # (with its L2 term, the rule's measure) is worse; its cross-entropy alone differs, and can be lower
    # (lr 10 blows the classifier weights up: near-certain predictions, a huge L2 term), so only !=
    assert ft["fine_tuned"]["val_cross_entropy"] != pytest.approx(ft["head_only"]["val_cross_entropy"], rel=1e-3)


def test_choice_rule_without_training():
    def rows(*losses):
        return [{"phase": "head", "phase_epoch": 1, "val_loss": 0.1, "val_accuracy": 1.0}] + [
            {"phase": "fine-tune", "phase_epoch": i + 1, "val_loss": v, "val_accuracy": 0.5 + i / 10}
            for i, v in enumerate(losses)]

    doc = fine_tune_choice(rows(0.50, 0.40, 0.40, 0.45), {"val_loss": 0.45, "val_accuracy": 0.9})
    assert doc["kept"] is True and doc["fine_tuned"]["epoch"] == 2  # the first minimum, as early stopping picks it
    assert doc["reason"] == "val loss 0.4000 < 0.4500 of the head-only model"
    assert fine_tune_summary(doc) == "fine-tuned weights kept: val loss 0.4000 < 0.4500 of the head-only model"
    # a tie keeps the head (strictly lower needed); losses equal to 4 digits get more digits, up to 8
    doc = fine_tune_choice(rows(0.45381, float("nan")), {"val_loss": 0.45381, "val_accuracy": 0.9})
    assert doc["kept"] is False and "0.45381000 >= 0.45381000" in doc["reason"]  # equal to 8 digits
    doc = fine_tune_choice(rows(0.453812), {"val_loss": 0.453811, "val_accuracy": 0.9})
    assert doc["kept"] is False and "0.453812 >= 0.453811" in doc["reason"]
    assert fine_tune_summary(doc).startswith("fine-tuning did not help on val: head-only model restored (")
    # no finite fine-tune val loss: the head stays
    doc = fine_tune_choice(rows(float("nan")), {"val_loss": 0.3, "val_accuracy": 0.9})
    assert doc["kept"] is False and doc["fine_tuned"]["val_loss"] is None
    # unknown head-only loss (old checkpoint): no claim
    assert fine_tune_choice(rows(0.2), None)["kept"] is None


@pytest.mark.parametrize("objective", ["accuracy", "balanced"])
def test_keep_restore_follows_the_objective(tmp_path, objective):
    """The val loss the keep/restore rule compares is the objective's: plain cross-entropy, or the
    class-balanced one (each class counting equally) with ``objective="balanced"``."""
    folder = make_image_folder(tmp_path / "data", n_train=4, n_test=5)
    make_image_folder(tmp_path / "data", classes=("alpha",), n_train=12, n_val=18)  # val: alpha 18, beta 6
    res, m, _ = _run(folder, tmp_path / "run", objective=objective, class_weights="off", head_l2=0.0, epochs=3)
    ft = _check_doc(m, res.history)
    assert ft["objective"] == objective and (("each class weighted equally" in ft["rule"]) == (objective == "balanced"))
    key, other = ("val_balanced_cross_entropy", "val_cross_entropy") if objective == "balanced" else (
        "val_cross_entropy", "val_balanced_cross_entropy")
    for name in ("head_only", "fine_tuned"):
        c = ft[name]
        assert c["val_loss"] == pytest.approx(c[key], rel=1e-3), (name, c)
        assert c[key] != pytest.approx(c[other], rel=1e-3), (name, c)
    assert json.loads((res.run_dir / "config.json").read_text())["objective"] == objective
    for split in ("val", "test"):
        assert {"balanced_accuracy", "macro_f1"} <= set(m[split]) and 0 <= m[split]["balanced_accuracy"] <= 1
