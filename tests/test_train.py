"""edgetl train: both strategies end to end on tiny data (tiny_cnn, random init), resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_image_folder
from edgetl.cli import main
from edgetl.config import AugmentConfig, TrainConfig
from edgetl.errors import EdgetlError, UsageError
from edgetl.imbalance import weighting_candidates, weights_for
from edgetl.train import DevicePlan, plan_devices, unfrozen_layer_names

FAST = dict(backbone="tiny_cnn", weights="none", lr=0.03, epochs=20, fine_tune_epochs=3, batch_size=16, verbose=0,
            augment=AugmentConfig(views=1))
RUN_FILES = {"model.keras", "labels.txt", "config.json", "history.csv", "metrics.json", "curves.png", "confusion_matrix.png"}
CLI_FAST = ["--backbone", "tiny_cnn", "--weights", "none", "--lr", "0.03", "--batch-size", "16", "--quiet"]


def _train(data, out, **kw):
    from edgetl.train import train

    return train(TrainConfig(data_dir=str(data), out=str(out), **{**FAST, **kw}))


@pytest.fixture(scope="module")
def fe_result(image_folder, tmp_path_factory):
    return _train(image_folder, tmp_path_factory.mktemp("runs") / "fe", strategy="feature-extraction")


@pytest.fixture(scope="module")
def ft_result(image_folder, tmp_path_factory):
    return _train(image_folder, tmp_path_factory.mktemp("runs") / "ft", strategy="fine-tune")


def _check_run(run_dir, image_folder, strategy):
    from edgetl.preprocess import prepare_batch
    from edgetl.run import load_run

    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    run = load_run(run_dir)
    cfg = run.config
    for key in ("edgetl_version", "backbone", "preprocessing", "labels", "num_classes", "data_dir", "val_split", "seed", "data"):
        assert key in cfg, key
    assert cfg["strategy"] == strategy and cfg["labels"] == ["alpha", "beta"] and cfg["num_classes"] == 2
    assert {"tensorflow", "keras", "edgetl"} <= set(cfg["versions"])
    assert cfg["train_config"]["batch_size"] == 16 and cfg["status"] == "complete"
    model = run.load_model()
    assert model.layers[-1].name == "probs" and tuple(model.input.shape[1:]) == (32, 32, 3)
    x = prepare_batch(sorted((image_folder / "val" / "beta").glob("*.png"))[:3], run.preprocessing).astype("float32")
    probs = np.asarray(model.predict(x, verbose=0))
    assert probs.dtype == np.float32 and probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert set(m["val"]) >= {"accuracy", "loss", "per_class", "confusion_matrix", "correct", "total"}
    assert m["val"]["total"] == 12 and m["num_skipped"] == 0 and m["train_wall_seconds"] > 0
    assert (run_dir / "history.csv").read_text().startswith("phase,epoch,")
    return m


def test_feature_extraction_learns(fe_result, image_folder):
    assert fe_result.val_accuracy >= 0.9
    m = _check_run(fe_result.run_dir, image_folder, "feature-extraction")
    assert m["epochs_run"]["fine_tune"] == 0 and m["views_per_train_image"] == 2 and m["fine_tune"] is None
    # the augmented view was decoded again and resized by drawn clients (resize-robust training, the default)
    assert m["resize_views"]["enabled"] is True and m["resize_views"]["decode_resize_seconds"] > 0
    cfg = json.loads((fe_result.run_dir / "config.json").read_text())
    assert cfg["preprocessing"]["resize"] == "mediapipe" and cfg["train_config"]["augment"]["resize"] is True
    # no GPU here: the frozen base ran on ONNX Runtime, checked against TensorFlow on the first batch
    assert m["embed_engine"]["engine"] == "onnxruntime" and m["embed_engine"]["max_abs_diff_vs_tensorflow"] < 1e-3
    assert {r["phase"] for r in fe_result.history} == {"head"}


def test_fine_tune_learns(ft_result, image_folder):
    assert ft_result.val_accuracy >= 0.9
    m = _check_run(ft_result.run_dir, image_folder, "fine-tune")
    assert m["fine_tune_mode"] == "cached-activations" and m["fine_tune_images_per_s"] > 0
    phases = [r["phase"] for r in ft_result.history]
    assert phases[-1] == "fine-tune" and m["epochs_run"]["fine_tune"] >= 1
    epochs = [r["epoch"] for r in ft_result.history]
    assert epochs == list(range(1, len(epochs) + 1))
    assert m["graph_check_max_abs_diff"] < 1e-3
    assert isinstance(m["fine_tune"]["kept"], bool) and "test_accuracy" not in m["fine_tune"]["head_only"]  # no test/


def test_fine_tune_through_images_changes_only_top_block(image_folder, tmp_path):
    """Without the activation cache: the whole graph on augmented images; frozen block and BN stay put."""
    import keras

    from edgetl.models import build

    res = _train(image_folder, tmp_path / "img", strategy="fine-tune", cache_limit_mb=0, epochs=10, fine_tune_epochs=1)
    assert res.metrics["fine_tune_mode"] == "images" and res.metrics["fine_tune_images_per_s"] > 0
    keras.utils.set_random_seed(0)
    fresh = build("tiny_cnn", weights=None)  # same seed -> the same initial weights
    model = keras.saving.load_model(res.run_dir / "model.keras")
    for name in ("block0_conv", "block0_bn", "block1_bn"):
        for a, b in zip(fresh.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(fresh.get_layer("block1_conv").get_weights()[0], model.get_layer("block1_conv").get_weights()[0])


def test_cli_both_strategies(image_folder, tmp_path, capsys):
    for strategy in ("feature-extraction", "fine-tune"):
        out = tmp_path / strategy
        code = main(["train", str(image_folder), "--strategy", strategy, "--out", str(out), "--epochs", "3",
                     "--fine-tune-epochs", "1", *CLI_FAST[:-1]])  # not --quiet: progress goes to stderr
        assert code == 0
        assert RUN_FILES <= {p.name for p in out.iterdir()}
        captured = capsys.readouterr()
        # the end-of-run summary exactly once, on stdout
        assert (captured.out + captured.err).count("val accuracy") == 1 and "val accuracy" in captured.out


def test_refuses_overwrite(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", str(image_folder), "--out", str(out), "--epochs", "1", "--fine-tune-epochs", "0", *CLI_FAST]
    assert main(args) == 0
    before = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "metrics.json").read_text() == before
    assert main(args + ["--overwrite"]) == 0
    # A folder that is not a run is never deleted.
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["train", str(image_folder), "--out", str(other), "--overwrite", *CLI_FAST]) == 1
    assert (other / "notes.txt").is_file()


class _Interrupt(Exception):
    pass


def _stop_after(phase_epochs: int):
    import keras

    class Stop(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.n = 0

        def on_epoch_end(self, epoch, logs=None):
            self.n += 1
            if self.n >= phase_epochs:
                raise _Interrupt()

    return Stop()


@pytest.mark.parametrize("stop_at", [2, 5])  # during the head phase, during the fine-tune phase
def test_resume_after_interruption(image_folder, tmp_path, stop_at):
    from edgetl.train import train

    out = tmp_path / "run"
    cfg = TrainConfig(data_dir=str(image_folder), out=str(out), strategy="fine-tune",
                      **{**FAST, "epochs": 4, "fine_tune_epochs": 3, "patience": 0})
    with pytest.raises(_Interrupt):
        train(cfg, extra_callbacks=[_stop_after(stop_at)])
    state = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert state["checkpoint"] == (f"head-{stop_at:04d}" if stop_at <= 4 else f"fine-tune-{stop_at - 4:04d}")
    assert not (out / "model.keras").exists()
    with pytest.raises(EdgetlError, match="already exists"):
        train(cfg)
    res = train(cfg.replace(resume=True))
    assert res.resumed
    rows = [(r["phase"], r["phase_epoch"]) for r in res.history]
    assert rows == [("head", i) for i in range(1, 5)] + [("fine-tune", i) for i in range(1, 4)]
    assert [r["epoch"] for r in res.history] == list(range(1, 8))
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert res.metrics["epochs_run"] == {"head": 4, "fine_tune": 3}
    # the keep/restore choice survives the interruption (the head-only val loss is saved with the checkpoint)
    ft = res.metrics["fine_tune"]
    assert isinstance(ft["kept"], bool) and ft["head_only"]["val_loss"] is not None
    assert ft["kept"] == (ft["fine_tuned"]["val_loss"] < ft["head_only"]["val_loss"])


def test_resume_in_fine_tune_keeps_the_class_weight_choice(tmp_path):
    from edgetl.train import train

    data = make_image_folder(tmp_path / "data", n_train=4)
    make_image_folder(tmp_path / "data", classes=("alpha",), n_train=12)
    cfg = TrainConfig(data_dir=str(data), out=str(tmp_path / "run"), strategy="fine-tune",
                      **{**FAST, "epochs": 4, "fine_tune_epochs": 2, "patience": 0})
    with pytest.raises(_Interrupt):
        train(cfg, extra_callbacks=[_stop_after(5)])  # 4 head epochs, then 1 fine-tune epoch
    saved = json.loads((tmp_path / "run" / "checkpoints" / "class_weighting.json").read_text())
    assert len(saved["candidates"]) == 3
    res = train(cfg.replace(resume=True))
    assert res.resumed and res.metrics["class_weighting"] == saved  # not chosen again
    assert (res.metrics["class_weights"] is None) == (saved["chosen"] == "off")


def test_resume_without_checkpoint(image_folder, tmp_path):
    with pytest.raises(EdgetlError, match="nothing to resume"):
        _train(image_folder, tmp_path / "none", resume=True)


def test_corrupt_files_skipped_and_counted(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data")
    (data / "train" / "alpha" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (data / "val" / "beta" / "empty.png").write_bytes(b"")
    res = _train(data, tmp_path / "run", strategy="feature-extraction", epochs=2)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 1 and "broken.jpg" in warnings[0] and "empty.png" in warnings[0] and "skipped 2 file(s)" in warnings[0]
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["num_skipped"] == 2 and cfg["data"]["num_skipped"] == 2 and res.metrics["num_skipped"] == 2


@pytest.mark.parametrize("objective", ["accuracy", "balanced"])
def test_class_weights_auto_picks_by_val(tmp_path, objective):
    from edgetl.metrics import objective_score

    data = make_image_folder(tmp_path / "data", n_train=4)
    make_image_folder(tmp_path / "data", classes=("alpha",), n_train=12)  # alpha: 12, beta: 4
    res = _train(data, tmp_path / "run", strategy="feature-extraction", epochs=3, objective=objective)
    m = json.loads((res.run_dir / "metrics.json").read_text())
    doc = m["class_weighting"]
    assert doc["objective"] == objective and [c["weighting"] for c in doc["candidates"]] == ["off", "sqrt", "on"]
    key = "val_accuracy" if objective == "accuracy" else "val_balanced_accuracy"
    figs = [c[key] for c in doc["candidates"]]
    assert doc["chosen"] == doc["candidates"][figs.index(max(figs))]["weighting"]  # the best on val, first on ties
    chosen = next(c for c in doc["candidates"] if c["weighting"] == doc["chosen"])
    # the saved model is the chosen head: its val figures are the run's
    assert chosen["val_correct"] == m["val"]["correct"] and chosen[key] == pytest.approx(
        objective_score(m["val"], objective) if objective == "balanced" else m["val"]["accuracy"])
    assert m["class_weights"] == chosen["class_weights"]
    assert (m["class_weights"] is None) == (doc["chosen"] == "off")
    if m["class_weights"]:
        assert m["class_weights"]["beta"] > 1 > m["class_weights"]["alpha"]
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["objective"] == objective and cfg["class_weights"] == m["class_weights"]
    base = m["majority_baseline"]
    assert base["class"] == "alpha" and base["imbalance_ratio"] == pytest.approx(3.0)
    assert base["val"]["correct"] == sum(1 for _ in (data / "val" / "alpha").iterdir())
    summary = res.summary().splitlines()
    assert "always answering 'alpha'" in res.summary() and "balanced accuracy" in summary[1] and "macro-F1" in summary[1]
    assert any(line.startswith(f"class weights {doc['chosen']}: ") for line in summary)


def test_class_weights_off_trains_one_head(tmp_path):
    data = make_image_folder(tmp_path / "data", n_train=4)
    make_image_folder(tmp_path / "data", classes=("alpha",), n_train=12)
    res = _train(data, tmp_path / "run", strategy="feature-extraction", epochs=2, class_weights="off")
    doc = res.metrics["class_weighting"]
    assert doc["chosen"] == "off" and len(doc["candidates"]) == 1 and res.metrics["class_weights"] is None


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--val-split", "1.5"], "--val-split"),
        (["--label-smoothing", "1"], "--label-smoothing"),
        (["--unfreeze", "-1"], "--unfreeze"),
        (["--patience", "-1"], "--patience"),
        (["--fine-tune-epochs", "-2"], "--fine-tune-epochs"),
        (["--max-pixels", "-5"], "--max-pixels"),
        (["--seed", "-1"], "--seed"),
        (["--strategy", "bogus"], "--strategy"),
        (["--backbone", "nope"], "unknown backbone"),
        (["--epochs", "many"], "epochs"),
        (["--embed-engine", "tpu"], "--embed-engine"),
    ],
)
def test_bad_numbers_exit_2(image_folder, tmp_path, capsys, args, needle):
    code = main(["train", str(image_folder), "--out", str(tmp_path / "r"), *CLI_FAST, *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_bad_data_dirs(tmp_path, capsys):
    cases = []
    cases.append((tmp_path / "missing", 2, "not found"))
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    cases.append((f, 2, "not a folder"))
    cases.append((make_image_folder(tmp_path / "one", classes=("solo",)), 1, "at least two"))
    empty = make_image_folder(tmp_path / "empty")
    for p in (empty / "train" / "beta").iterdir():
        p.unlink()
    cases.append((empty, 1, "no valid image in class 'beta'"))
    for data, code, needle in cases:
        out = tmp_path / f"run-{data.name}"
        assert main(["train", str(data), "--out", str(out), *CLI_FAST]) == code, data
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()  # a failed start leaves nothing behind


def test_unwritable_out(image_folder, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["train", str(image_folder), "--out", str(blocker / "run"), *CLI_FAST]) == 1
    assert "cannot write to the run directory" in capsys.readouterr().err


def test_plan_devices():
    assert plan_devices([]) == DevicePlan(0, False, False, "none")
    one = plan_devices(["/gpu:0"])
    assert one.mixed_precision and one.jit_compile and one.distribute == "none"
    assert plan_devices(["/gpu:0", "/gpu:1"]).distribute == "mirrored"


def test_unfrozen_layers_and_class_weights():
    names = ["pixels", "stem_conv", "block0_conv", "block1_conv", "block1_bn", "block2_add", "block10_conv", "top_conv", "top_bn"]
    assert unfrozen_layer_names(names, 2) == {"block2_add", "block10_conv", "top_conv", "top_bn"}
    assert unfrozen_layer_names(names, 0) == set()
    assert "stem_conv" not in unfrozen_layer_names(names, 99)
    assert weighting_candidates([10, 10], "auto", 1.5) == ["off"]
    assert weighting_candidates([15, 10], "auto", 1.5) == ["off"]
    assert weighting_candidates([30, 10], "auto", 1.5) == ["off", "sqrt", "on"]
    assert weighting_candidates([30, 10], "on", 1.5) == ["on"]
    assert weights_for([30, 10], "on") == pytest.approx({0: 40 / 60, 1: 40 / 20})
    assert weights_for([10, 10], "on") == {0: 1.0, 1: 1.0}
    assert weights_for([30, 10], "off") is None
    soft = weights_for([30, 10], "sqrt")  # softer than "on", still summing to the image count
    assert 40 / 60 < soft[0] < 1 < soft[1] < 2 and 30 * soft[0] + 10 * soft[1] == pytest.approx(40)


def test_config_validation():
    TrainConfig(data_dir="x").validate()
    with pytest.raises(UsageError, match="augment-views"):
        TrainConfig(data_dir="x", augment=AugmentConfig(views=99)).validate()
    cfg = TrainConfig(data_dir="x", fine_tune_lr=None, lr=2e-3)
    assert cfg.resolved_fine_tune_lr == pytest.approx(2e-4)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
