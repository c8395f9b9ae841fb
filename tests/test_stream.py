"""Fine-tuning streams its images from the files (same pixels, order and views as the decoded arrays),
never decodes a whole split at once, and its activation cache spills to disk past its RAM budget with
the same training result."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_image_folder
from edgetl.config import AugmentConfig, TrainConfig
from edgetl.errors import EdgetlError

FAST = dict(backbone="tiny_cnn", weights="none", lr=0.03, epochs=3, fine_tune_epochs=2, batch_size=16, verbose=0,
            strategy="fine-tune", embed_engine="tensorflow", patience=0, augment=AugmentConfig(views=1))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 60 train + 16 val images: more than one 32-image chunk per split (SHARD_BATCHES=1 below)
    return make_image_folder(tmp_path_factory.mktemp("data"), n_train=30, n_val=8, n_test=2)


def _train(data, out, **kw):
    from edgetl.train import train

    return train(TrainConfig(data_dir=str(data), out=str(out), **{**FAST, **kw}))


def test_files_dataset_equals_decoded_arrays(data):
    """Same seed: the streamed batches equal those of the decoded arrays, bit for bit, over two epochs
    (same file order, same preprocessing with the run's resize, same augmented views)."""
    from edgetl.data import build_augmenter, decode_paths, files_dataset, load_dataset, training_dataset
    from edgetl.models import get_spec

    from dataclasses import replace

    ds = load_dataset(data)
    pre = replace(get_spec("tiny_cnn").preprocessing, resize="mediapipe")  # the numpy resize, inside the tf.data map
    paths, y = ds.train.paths, np.asarray(ds.train.labels, np.int32)
    w = np.linspace(0.5, 2.0, len(y)).astype(np.float32)
    aug = build_augmenter(AugmentConfig(), seed=3)
    ref = training_dataset(decode_paths(paths, pre), y, 2, 16, seed=5, sample_weight=w, augmenter=aug)
    got = files_dataset(paths, y, 2, 16, seed=5, pre=pre, sample_weight=w, augmenter=aug)
    epochs_ref = [[[t.numpy() for t in b] for b in ref] for _ in range(2)]
    epochs_got = [[[t.numpy() for t in b] for b in got] for _ in range(2)]
    assert not np.array_equal(epochs_ref[0][0][1], epochs_ref[1][0][1])  # reshuffled each epoch
    for e_ref, e_got in zip(epochs_ref, epochs_got):
        assert len(e_ref) == len(e_got) == 4
        for b_ref, b_got in zip(e_ref, e_got):
            for t_ref, t_got in zip(b_ref, b_got):
                np.testing.assert_array_equal(t_ref, t_got)


def test_fine_tune_never_decodes_a_whole_split(data, tmp_path, small_shards, monkeypatch):
    """Both fine-tune modes: no pixels kept at load time, no ds.arrays(), decodes at most a chunk at a
    time, and images decoded one by one by the pipeline (on images)."""
    from edgetl.data import folders, stream

    seen = {"chunks": [], "streamed": 0, "preprocessing": []}
    decode_paths, load_pixels, load_dataset = folders.decode_paths, stream.load_pixels, folders.load_dataset

    def chunk_spy(paths, *a, **kw):
        seen["chunks"].append(len(paths))
        return decode_paths(paths, *a, **kw)

    def pixels_spy(*a, **kw):
        seen["streamed"] += 1
        return load_pixels(*a, **kw)

    def load_spy(*a, **kw):
        seen["preprocessing"].append(kw.get("preprocessing"))
        return load_dataset(*a, **kw)

    def no_arrays(self, split):
        raise AssertionError(f"decoded the whole {split} split")

    monkeypatch.setattr(folders.Dataset, "arrays", no_arrays)
    monkeypatch.setattr(folders, "decode_paths", chunk_spy)
    monkeypatch.setattr("edgetl.data.decode_paths", chunk_spy)
    monkeypatch.setattr("edgetl.data.load_dataset", load_spy)
    monkeypatch.setattr(stream, "load_pixels", pixels_spy)
    act = _train(data, tmp_path / "act", fine_tune_epochs=1)
    assert act.metrics["fine_tune_mode"] == "cached-activations" and seen["streamed"] == 0
    assert act.metrics["activation_cache"]["where"] == "ram"
    img = _train(data, tmp_path / "img", cache_limit_mb=0, fine_tune_epochs=2)
    assert img.metrics["fine_tune_mode"] == "images" and img.metrics["epochs_run"]["fine_tune"] == 2
    assert seen["preprocessing"] == [None, None]  # the folder is only checked, no pixels kept
    assert seen["chunks"] and max(seen["chunks"]) <= 32  # chunks of 32 with SHARD_BATCHES=1, never a split
    # the fine-tune epochs on images (+ val each epoch + head-only val) decoded every file as they read it
    assert seen["streamed"] >= 2 * 60 + 3 * 16
    assert img.metrics["test"]["total"] == 4 and img.metrics["graph_check_max_abs_diff"] < 1e-3


def test_activation_spill_matches_ram(data, tmp_path, small_shards):
    """A 1 MB budget spills the activation cache to disk: the run still trains, gives the same history
    and weights as the cache in RAM (same seed), and leaves no spilled file behind."""
    import keras

    ram = _train(data, tmp_path / "ram", cache_limit_mb=2048)
    disk = _train(data, tmp_path / "disk", cache_limit_mb=1)
    c_ram, c_disk = ram.metrics["activation_cache"], disk.metrics["activation_cache"]
    assert c_ram["where"] == "ram" and c_disk["where"] == "disk"
    assert c_ram["ram_mb_counted"] > c_ram["store_mb"] > 0  # the copies in flight are counted too
    assert c_disk["ram_mb_counted"] == c_disk["in_flight_mb"] < c_ram["ram_mb_counted"]
    assert disk.metrics["fine_tune_mode"] == "cached-activations" and disk.metrics["epochs_run"]["fine_tune"] == 2
    assert not (disk.run_dir / "activations").exists()
    rows = lambda res: [(h["phase"], h["loss"], h["val_loss"]) for h in res.history]  # noqa: E731
    for (p1, l1, v1), (p2, l2, v2) in zip(rows(ram), rows(disk), strict=True):
        assert p1 == p2 and l1 == pytest.approx(l2, rel=1e-5, abs=1e-6) and v1 == pytest.approx(v2, rel=1e-5, abs=1e-6)
    w_ram = keras.saving.load_model(ram.run_dir / "model.keras").get_weights()
    w_disk = keras.saving.load_model(disk.run_dir / "model.keras").get_weights()
    for a, b in zip(w_ram, w_disk, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert ram.metrics["val"]["accuracy"] == disk.metrics["val"]["accuracy"]
    doc = json.loads((disk.run_dir / "metrics.json").read_text())["activation_cache"]
    assert doc["budget_mb"] == 1.0


def test_activation_store_disk_equals_ram(tmp_path):
    from edgetl.train.activations import ActivationStore

    rng = np.random.default_rng(0)
    a = rng.normal(size=(23, 3, 2, 5)).astype(np.float16)
    ram, disk = ActivationStore(23, (3, 2, 5)), ActivationStore(23, (3, 2, 5), tmp_path / "s" / "a.npy")
    for store in (ram, disk):
        for i in range(0, 23, 7):
            store.append(a[i:i + 7])
        with pytest.raises(ValueError, match="overflow"):
            store.append(a[:1])
    idx = np.array([22, 0, 5, 5, 13])
    assert disk.on_disk and not ram.on_disk
    np.testing.assert_array_equal(disk.gather(idx), a[idx])
    np.testing.assert_array_equal(ram.gather(idx), a[idx])
    np.testing.assert_array_equal(disk.rows(20, 30), a[20:])
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "a.npy", mmap_mode="r"), a)  # a valid .npy
    disk.close()


def test_cache_plan_counts_every_copy():
    from edgetl.train.activations import cache_plan

    cfg = TrainConfig(data_dir=".", batch_size=16, cache_limit_mb=100)
    plan = cache_plan(cfg, elems=1000, n_rows=10_000, pass_rows=512)
    assert plan["store_bytes"] == 1000 * 2 * 10_000 and plan["transient_bytes"] > 1000 * 2 * 2 * 512
    assert plan["where"] == "ram" and plan["ram_bytes"] == plan["store_bytes"] + plan["transient_bytes"]
    # the store alone fits, the store and its copies in flight do not: spilled
    tight = cache_plan(cfg.replace(cache_limit_mb=20), elems=1000, n_rows=10_000, pass_rows=512)
    assert plan["store_bytes"] < 20 * 2**20 and tight["where"] == "disk" and tight["ram_bytes"] == tight["transient_bytes"]
    assert cache_plan(cfg.replace(cache_limit_mb=0), elems=1000, n_rows=10, pass_rows=512)["where"] == "off"


def test_corrupt_files_in_fine_tune(tmp_path, small_shards, monkeypatch):
    """A corrupt file among the images is skipped with a warning, as before; a file that stops decoding
    after the check stops a fine-tune on images with one line naming it."""
    from edgetl.train import core

    data = make_image_folder(tmp_path / "data", n_train=20, n_val=6)
    (data / "train" / "alpha" / "broken.png").write_bytes(b"not an image at all")
    res = _train(data, tmp_path / "ok", cache_limit_mb=0, fine_tune_epochs=1)
    assert res.metrics["num_skipped"] == 1 and res.metrics["skipped"][0].endswith("broken.png")
    assert any("broken.png" in w for w in res.warnings) and res.metrics["fine_tune_mode"] == "images"

    victim = data / "train" / "beta" / "beta_train_003.png"
    fit_head = core._fit_head

    def corrupt_then_fit(r):
        fit_head(r)
        victim.write_bytes(b"garbage now")  # after the frozen-base pass, before the fine-tune epochs

    monkeypatch.setattr(core, "_fit_head", corrupt_then_fit)
    with pytest.raises(EdgetlError) as info:
        _train(data, tmp_path / "changed", cache_limit_mb=0, fine_tune_epochs=1)
    msg = str(info.value)
    assert "beta_train_003.png" in msg and "changed after the images were checked" in msg and "\n" not in msg
