"""Decoded images past RAM (issue 24, item 4): export and bench read their images from a PixelStore, in RAM
within the pixel budget, else in a temporary file read back a chunk at a time; the results are the same."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder
from edgetl.errors import UsageError


def _filled(store, a):
    for i in range(0, len(a), 4):
        store.append(a[i:i + 4])
    return store


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_store_on_disk_indexes_like_numpy_and_leaves_no_file(tmp_path):
    from edgetl.pixels import PixelStore, PixelView, ram_in_use

    a = np.random.default_rng(0).integers(0, 256, (11, 5, 4, 3), dtype=np.uint8)
    fds = _open_fds()
    ram = _filled(PixelStore(11, (5, 4)), a)
    disk = _filled(PixelStore(11, (5, 4), budget=0, dir=tmp_path), a)
    assert not ram.on_disk and disk.on_disk and ram.ram_bytes == a.nbytes and disk.ram_bytes == 0
    assert list(tmp_path.iterdir()) == []  # unlinked as soon as it was opened: nothing to leave behind
    idx = np.array([10, 0, 3, 4, 5, 5, -1])
    for px in (ram, disk):
        assert len(px) == 11 and px.shape == a.shape and px.dtype == np.uint8 and px.nbytes == a.nbytes
        for key in (slice(None), slice(2, 7), slice(1, None, 3), slice(-3, None), slice(20, 30), 0, -1, 10):
            np.testing.assert_array_equal(px[key], a[key])
        np.testing.assert_array_equal(px[3, 1:, :2], a[3, 1:, :2])
        np.testing.assert_array_equal(px[2:5, 0], a[2:5, 0])
        view = px[idx]
        assert isinstance(view, PixelView) and len(view) == len(idx) and view.shape == (7, 5, 4, 3)
        np.testing.assert_array_equal(view[:], a[idx])
        np.testing.assert_array_equal(view[1:4], a[idx][1:4])
        np.testing.assert_array_equal(view[-2], a[idx][-2])
        np.testing.assert_array_equal(view[[6, 0]][:], a[idx][[6, 0]])  # a view of a view
        mask = np.arange(11) % 3 == 0
        np.testing.assert_array_equal(px[mask][:], a[mask])
        np.testing.assert_array_equal(np.concatenate(list(px.chunks(4))), a)
        assert [len(c) for c in view.chunks(3)] == [3, 3, 1]
        with pytest.raises(IndexError):
            px[11]
        with pytest.raises(IndexError):
            px[np.array([0, 11])]
    np.testing.assert_array_equal(np.asarray(ram), a)
    with pytest.raises(TypeError, match="chunk at a time"):
        np.asarray(disk)  # a large set is never turned back into one array
    with pytest.raises(TypeError):
        np.asarray(disk[idx])
    used = ram_in_use()
    ram.close()
    disk.close()
    assert ram_in_use() == used - a.nbytes and _open_fds() == fds


def test_disk_reads_are_one_per_run_of_rows(monkeypatch):
    from edgetl.pixels import PixelStore, RowStore

    a = np.random.default_rng(1).integers(0, 256, (9, 2, 2, 3), dtype=np.uint8)
    with _filled(PixelStore(9, (2, 2), budget=0), a) as disk:
        reads = []
        real = RowStore._read
        monkeypatch.setattr(RowStore, "_read",
                            lambda self, out, row, count, at: reads.append((row, count)) or real(self, out, row, count, at))
        np.testing.assert_array_equal(disk[np.array([1, 2, 3, 7, 8, 0])][:], a[[1, 2, 3, 7, 8, 0]])
        assert reads == [(1, 3), (7, 2), (0, 1)]


def test_budget_is_shared_by_the_stores_alive(monkeypatch):
    from edgetl.pixels import PIXEL_RAM_ENV, PixelStore, closing_stores, ram_budget

    monkeypatch.setenv(PIXEL_RAM_ENV, "0.001")  # 1048 bytes
    assert ram_budget() == int(0.001 * 2**20)
    with closing_stores():
        first = PixelStore(2, (10, 10))  # 600 bytes: fits
        second = PixelStore(2, (10, 10))  # 600 more: over the budget with the first alive
        assert not first.on_disk and second.on_disk
    assert first.arr is None and second.fd is None  # closed with the block
    third = PixelStore(2, (10, 10))  # the first's reservation was given back
    assert not third.on_disk
    third.close()
    for bad in ("-1", "lots", "nan"):
        monkeypatch.setenv(PIXEL_RAM_ENV, bad)
        with pytest.raises(UsageError, match=PIXEL_RAM_ENV):
            ram_budget()


def test_a_failed_decode_gives_back_its_store(tmp_path, monkeypatch):
    from PIL import Image

    from edgetl.errors import EdgetlError
    from edgetl.pixels import decode_store, ram_in_use
    from edgetl.preprocess import Preprocessing, prepare

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((12, 9, 3), 40 * i, np.uint8)).save(paths[-1])
    paths[1].write_bytes(b"not an image")
    pre = Preprocessing(input_size=(8, 8))
    used, fds = ram_in_use(), _open_fds()
    for budget in (None, 0):
        with pytest.raises(EdgetlError, match="1.png"):
            decode_store(paths, pre, budget=budget)
        assert ram_in_use() == used and _open_fds() == fds  # RAM reservation and file both given back
        store, kept, bad = decode_store(paths, pre, skip_bad=True, budget=budget)
        assert kept == [0, 2] and len(bad) == 1 and len(store) == 2 and store.on_disk == (budget == 0)
        np.testing.assert_array_equal(store[1], prepare(paths[2], pre))
        store.close()
    assert ram_in_use() == used and _open_fds() == fds


def _bench(run, data, monkeypatch, budget_mb):
    from edgetl.bench import BenchSettings, run_bench
    from edgetl.pixels import PIXEL_RAM_ENV

    monkeypatch.setenv(PIXEL_RAM_ENV, str(budget_mb))
    return run_bench([str(run)], data=data, settings=BenchSettings(runtimes=("tensorflow", "litert", "onnxruntime"), min_runs=1, min_time=0,
                                               warmup_runs=0, warmup_time=0, threads=(1,)))


def test_bench_spilled_to_disk_measures_the_same(tiny_run, monkeypatch, tmp_path):
    """Every row reads the decoded images a chunk at a time from the file: the same accuracy, agreement and
    confusion matrix as in RAM; no read is the whole set; nothing is left in the temp folder."""
    from edgetl.export.api import ExportConfig, export_run
    from edgetl.pixels import RowStore, ram_in_use
    from edgetl.runtime.keras_runner import KerasRunner

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "bench"))
    export_run(run, ExportConfig(formats=("tflite_fp32", "onnx_fp32"), quant_report=False))
    data = make_image_folder(tmp_path / "data", n_train=1, n_val=30)  # 60 images: more than a runner's batch (32)
    import edgetl.bench.core as core

    probs: list[np.ndarray] = []
    real_metrics = core.accuracy_metrics
    monkeypatch.setattr(core, "accuracy_metrics", lambda p, *a, **kw: probs.append(p) or real_metrics(p, *a, **kw))
    in_ram = _bench(run, data, monkeypatch, 1024)
    probs_ram = probs[:]
    probs.clear()
    monkeypatch.setattr(KerasRunner, "CHUNK", 5)
    reads = []
    real = RowStore._read
    monkeypatch.setattr(RowStore, "_read",
                        lambda self, out, row, count, at: reads.append(count) or real(self, out, row, count, at))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    used = ram_in_use()
    on_disk = _bench(run, data, monkeypatch, 0)
    assert len(probs) == len(probs_ram) >= 3
    for p1, p2 in zip(probs_ram, probs):
        # every row's probabilities: the same pixels; Keras runs them in chunks of 5 here instead of 32, and
        # TensorFlow's CPU kernels may round a batch of 5 differently in the last bit (seen on an AVX2-only CPU)
        np.testing.assert_array_equal(p1.argmax(1), p2.argmax(1))
        np.testing.assert_allclose(p1, p2, rtol=0, atol=1e-6)
    key = lambda r: (r.model, r.runtime, r.threads)  # noqa: E731
    a, b = sorted(in_ram.rows, key=key), sorted(on_disk.rows, key=key)
    assert [key(r) for r in a] == [key(r) for r in b] and len(a) >= 3
    for r1, r2 in zip(a, b):
        assert r2.status == "ok" and r1.status == "ok", (r1.status, r2.status)
        figures = lambda r: (r.n_images, r.top1, r.agreement, r.confusion_matrix)  # noqa: E731
        assert figures(r1) == figures(r2)
        assert r1.max_prob_diff == pytest.approx(r2.max_prob_diff, abs=1e-6)
    assert a[0].n_images == 60 and reads and max(reads) <= 32  # read from the file a runner's batch at a time
    assert list((tmp_path / "tmp").iterdir()) == [] and ram_in_use() == used


def test_export_spilled_to_disk_verifies_the_same(tiny_run, monkeypatch, tmp_path):
    """Verification and the doctor's selection and report halves (views of the store) read the file in chunks:
    the same figures as in RAM."""
    from edgetl.export.api import ExportConfig, export_run
    from edgetl.pixels import PIXEL_RAM_ENV, ram_in_use

    used = ram_in_use()
    docs = []
    for budget in ("1024", "0"):
        monkeypatch.setenv(PIXEL_RAM_ENV, budget)
        out = tmp_path / f"out{budget}"
        export_run(tiny_run, ExportConfig(out_dir=str(out), formats=("tflite_fp32", "onnx_int8"), doctor=True,
                                          calib_samples=8, quant_report=False, doctor_time=1e-6))
        docs.append(json.loads((out / "export.json").read_text()))
        assert ram_in_use() == used
    ram, disk = docs
    assert disk["n_verify"] == ram["n_verify"] > 0 and disk["keras_accuracy"] == ram["keras_accuracy"]
    for x, y in zip(ram["artifacts"], disk["artifacts"], strict=True):
        assert x["error"] is None and y["error"] is None
        assert x["verification"] == y["verification"]
    (d1,), (d2,) = ram["doctor"], disk["doctor"]
    assert d1["selection"] == d2["selection"] and d1["report"] == d2["report"]
    assert d2["selection"]["images"] + d2["report"]["images"] == disk["n_verify"]
