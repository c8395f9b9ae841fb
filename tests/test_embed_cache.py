"""Feature extraction streams the images from the files through the on-disk embedding cache:
same numbers as the in-memory pass, resumable shard by shard after a kill, reused across head settings."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import make_image_folder
from edgetl import embed_cache
from edgetl.config import AugmentConfig, TrainConfig
from edgetl.embed_cache import ShardCache

FAST = dict(backbone="tiny_cnn", weights="none", lr=0.03, epochs=3, batch_size=16, verbose=0, strategy="feature-extraction",
            embed_engine="tensorflow", augment=AugmentConfig(views=1))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 80 train + 20 val images: with 32-image shards, 3 train shards per view and 1 val shard
    return make_image_folder(tmp_path_factory.mktemp("data"), n_train=40, n_val=10, n_test=3)


@pytest.fixture
def captured(monkeypatch):
    """The embeddings the head is trained on, and the number of frozen-base passes over a shard/split."""
    from edgetl.train import core, embed

    seen: dict[str, list] = {"emb": [], "extract": []}
    fit_head, extract = core._fit_head, embed._extract

    def fit_head_spy(r):
        seen["emb"].append((np.array(r.emb_tr), np.array(r.emb_va), np.array(r.y_views), type(r.emb_tr)))
        return fit_head(r)

    def extract_spy(r, x, *a, **kw):
        seen["extract"].append(len(x))
        return extract(r, x, *a, **kw)

    monkeypatch.setattr(core, "_fit_head", fit_head_spy)  # looked up by _train (edgetl/train/core.py)
    monkeypatch.setattr(embed, "_extract", extract_spy)  # looked up by the frozen-base pass (edgetl/train/embed.py)
    return seen


def _train(data, out, **kw):
    from edgetl.train import train

    return train(TrainConfig(data_dir=str(data), out=str(out), **{**FAST, **kw}))


def _metrics(res) -> dict:
    return json.loads((res.run_dir / "metrics.json").read_text())


def test_streamed_equals_in_memory(data, tmp_path, small_shards, captured, monkeypatch):
    """The cached embeddings equal those of the fine-tune pass (decoded a chunk at a time, kept in RAM
    beside the activation cache), which shares no cache code with it."""
    streamed = _train(data, tmp_path / "streamed")
    in_memory = _train(data, tmp_path / "in_memory", strategy="fine-tune", fine_tune_epochs=1)
    (tr_s, va_s, y_s, kind), (tr_m, va_m, y_m, kind_m) = captured["emb"]
    assert kind is np.memmap and kind_m is not np.memmap  # the head read the cache memory-mapped
    assert tr_s.shape == tr_m.shape == (160, tr_s.shape[1]) and va_s.shape == va_m.shape == (20, tr_s.shape[1])
    # the clean view and the augmented, resize-robust view (drawn per image and batch) both match
    np.testing.assert_allclose(tr_s, tr_m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(va_s, va_m, rtol=1e-5, atol=1e-5)
    assert np.array_equal(y_s, y_m)
    assert not np.allclose(tr_s[:80], tr_s[80:])  # the augmented view differs from the clean one
    m_s, m_m = _metrics(streamed), _metrics(in_memory)
    assert m_s["embed_cache"]["shards_computed"] == 3 + 3 + 1 and m_m["embed_cache"] is None
    assert m_m["fine_tune_mode"] == "cached-activations"
    assert m_s["fine_tune"] is None and m_m["fine_tune"]["head_only"]["val_accuracy"] == pytest.approx(
        m_s["val"]["accuracy"], abs=0.051)  # the same head on the same embeddings
    assert m_s["test"]["accuracy"] is not None  # the test split was decoded a chunk at a time


def test_kill_resumes_from_last_finished_shard(data, tmp_path, small_shards, captured, monkeypatch):
    def kill_after_two(part, index):
        if part == "train_v0" and index == 1:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(embed_cache, "after_shard", kill_after_two)
    with pytest.raises(KeyboardInterrupt):
        _train(data, tmp_path / "killed")
    assert captured["extract"] == [32, 32]
    (folder,) = [p for p in small_shards.iterdir() if p.is_dir()]
    done = sorted((folder / "train_v0").glob("*.npy"))
    assert [p.name for p in done] == ["00000.npy", "00001.npy"]
    assert not list(folder.rglob("*.tmp"))  # no half-written shard left behind
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done}

    monkeypatch.setattr(embed_cache, "after_shard", None)
    captured["extract"].clear()
    res = _train(data, tmp_path / "resumed")
    # only the 16-image tail of the clean view, the augmented view and val were embedded
    assert captured["extract"] == [16, 32, 32, 16, 20]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done} == before
    m = _metrics(res)
    assert m["embed_cache"]["shards_reused"] == 2 and m["embed_cache"]["shards_computed"] == 5
    assert m["embed_cache"]["rows_computed"] == 16 + 80 + 20
    assert m["embed_cache"]["dir"] == str(folder)


def test_cache_reused_when_only_head_settings_change(data, tmp_path, small_shards, captured):
    _train(data, tmp_path / "first")
    n_first = len(captured["extract"])
    assert n_first == 7
    again = _train(data, tmp_path / "second", lr=0.01, epochs=2, dropout=0.3, class_weights="off", head_l2=1e-3)
    assert len(captured["extract"]) == n_first  # no frozen-base pass at all
    assert _metrics(again)["embed_cache"] == {**_metrics(again)["embed_cache"], "shards_computed": 0, "shards_reused": 7}
    assert _metrics(again)["embed_engine"]["engine"] == "cached"  # not even converted to ONNX
    assert np.array_equal(captured["emb"][0][0], captured["emb"][1][0])
    # a second augmented view reuses both earlier views and embeds only its own shards
    _train(data, tmp_path / "two_views", augment=AugmentConfig(views=2))
    assert len(captured["extract"]) == n_first + 3
    # what the numbers depend on is in the key: a touched file (same size) recomputes everything
    f = sorted((data / "val").rglob("*.png"))[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _train(data, tmp_path / "touched")
    assert len(captured["extract"]) == n_first + 3 + 7
    assert len([p for p in small_shards.iterdir() if p.is_dir()]) == 2


def test_shard_cache_writes_atomically_and_joins(tmp_path):
    cache = ShardCache({"shard_size": 4, "what": "test"}, root=tmp_path)
    rows = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    calls = []

    def compute(start, stop):
        calls.append((start, stop))
        return rows[start:stop]

    cache.fill("a", 10, compute)
    cache.fill("a", 10, compute)
    assert calls == [(0, 4), (4, 8), (8, 10)] and cache.reused == 3
    joined = cache.read(["a"], 10, 3)
    assert isinstance(joined, np.memmap) and np.array_equal(joined, rows)
    assert ShardCache({"shard_size": 4, "what": "other"}, root=tmp_path).folder != cache.folder
    assert json.loads((cache.folder / "key.json").read_text())["what"] == "test"


def test_unwritable_cache_falls_back_to_the_run_folder(data, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("EDGETL_EMBED_CACHE", str(blocker / "cache"))
    res = _train(data, tmp_path / "run", augment=AugmentConfig(enabled=False), epochs=1)
    m = _metrics(res)
    assert m["embed_cache"]["dir"].startswith(str(res.run_dir / "embed_cache"))
    assert any("caching the embeddings in the run folder" in w for w in res.warnings)


def _filled(root, what, rows=64, dim=100):
    cache = ShardCache({"shard_size": 32, "what": what}, root=root)
    cache.fill("a", rows, lambda start, stop: np.ones((stop - start, dim), np.float32))
    return cache


def test_eviction_removes_least_recently_used_first_and_never_the_kept_or_in_use(tmp_path):
    old, mid, new = (_filled(tmp_path, w) for w in ("old", "mid", "new"))
    for i, c in enumerate((old, mid, new)):
        os.utime(c.folder / "key.json", (1_000_000 + i, 1_000_000 + i))  # last used: old < mid < new
    size = embed_cache._folder_bytes(new.folder)
    assert size > 64 * 100 * 4  # the shards are counted
    for c in (old, mid):
        c.close()
    # room for two folders: the least recently used one goes, the one just used stays
    got = new.trim(max_bytes=2 * size + 10)
    assert got == {"folders": 1, "bytes": embed_cache._folder_bytes(mid.folder)}
    assert not old.folder.exists() and mid.folder.exists() and new.folder.exists()
    assert new.to_dict()["evicted_folders"] == 1
    # a folder a live process holds is never removed, even with a limit of 0
    again = ShardCache({"shard_size": 32, "what": "mid"}, root=tmp_path)  # reopens mid: holds its lock
    assert again.folder == mid.folder
    assert embed_cache.evict(tmp_path, 0, keep=new.folder)["folders"] == 0 and mid.folder.exists()
    again.close()
    assert embed_cache.evict(tmp_path, 0, keep=new.folder)["folders"] == 1 and not mid.folder.exists()
    assert new.folder.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".evicting")]
    new.close()


def test_cache_size_limit_from_the_environment(monkeypatch):
    from edgetl.errors import EdgetlError

    monkeypatch.delenv(embed_cache.MAX_ENV, raising=False)
    assert embed_cache.max_bytes_limit() == embed_cache.DEFAULT_MAX_GB * 1e9
    monkeypatch.setenv(embed_cache.MAX_ENV, "0.5")
    assert embed_cache.max_bytes_limit() == 0.5e9
    for bad in ("-1", "lots", "nan"):
        monkeypatch.setenv(embed_cache.MAX_ENV, bad)
        with pytest.raises(EdgetlError, match=embed_cache.MAX_ENV):
            embed_cache.max_bytes_limit()


def test_a_run_trims_the_cache_to_its_limit(data, tmp_path, monkeypatch):
    """Two runs with different keys and a 0 GB limit: the second run removes the first run's folder, keeps its own."""
    monkeypatch.setenv("EDGETL_EMBED_CACHE", str(tmp_path / "cache"))
    first = _metrics(_train(data, tmp_path / "a", augment=AugmentConfig(enabled=False), epochs=1))
    monkeypatch.setenv(embed_cache.MAX_ENV, "0")
    second = _metrics(_train(data, tmp_path / "b", augment=AugmentConfig(enabled=False), epochs=1, seed=7))
    assert first["embed_cache"]["key"] != second["embed_cache"]["key"]
    assert second["embed_cache"]["evicted_folders"] == 1
    assert not os.path.exists(first["embed_cache"]["dir"]) and os.path.isdir(second["embed_cache"]["dir"])
