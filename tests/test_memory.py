"""Long runs hold steady memory: thousands of bench inferences, and many training epochs.

RSS is read from /proc/self/status (Linux). Bounds are generous for allocator noise and
small caches, and far below what a per-call or per-epoch leak would add.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

BENCH_LEAK_MB = 20.0
TRAIN_LEAK_MB = 40.0


def rss_mb() -> float:
    gc.collect()
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> dict[str, Path]:
    from edgetl.export.api import ExportConfig, export_run

    out = tmp_path_factory.mktemp("mem-export")
    res = export_run(tiny_run, ExportConfig(formats=("tflite_fp32", "tflite_int8", "onnx_fp32"), out_dir=str(out),
                                            verify_samples=4, calib_samples=8))
    assert not res.failed, [a.error for a in res.failed]
    return {a.format: Path(a.path) for a in res.artifacts} | {"keras": tiny_run}


@pytest.mark.parametrize("fmt", ["tflite_fp32", "tflite_int8", "onnx_fp32", "keras"])
def test_bench_loop_memory_is_flat(exported, image_folder, fmt):
    """3000 invocations through edgetl's bench timing path (runner.timer + bench.timed_runs)."""
    from edgetl.bench import _latency_batch, timed_runs
    from edgetl.preprocess import prepare_batch
    from edgetl.runtime.loader import runner_for

    runner = runner_for(exported[fmt], threads=1) if fmt != "keras" else runner_for(exported["keras"])
    px = prepare_batch(sorted((image_folder / "val" / "alpha").glob("*.png"))[:1], runner.preprocessing)
    fn = runner.timer(_latency_batch(px, 1))
    rss = []
    total = 0
    for n in (1000, 1000, 1000):
        _, times = timed_runs(fn, warmup_runs=0, warmup_time=0.0, min_runs=n, min_time=0.0, max_time=600.0)
        total += len(times)
        rss.append(rss_mb())
    assert total == 3000
    growth = rss[2] - rss[0]
    print(f"{fmt}: RSS after 1000/2000/3000 calls {rss[0]:.1f}/{rss[1]:.1f}/{rss[2]:.1f} MB (growth {growth:+.1f} MB)")
    assert growth < BENCH_LEAK_MB, rss


def test_training_memory_is_flat_epoch_over_epoch(tmp_path):
    import keras

    from edgetl.config import AugmentConfig, TrainConfig
    from edgetl.train import train

    class RSS(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[float] = []

        def on_epoch_end(self, epoch, logs=None):
            self.rows.append(rss_mb())

    data = make_image_folder(tmp_path / "data", n_train=24, n_val=8)
    rec = RSS()
    # Fine-tuning through images (cache_limit_mb=0): the path where a leak per step would show most.
    cfg = TrainConfig(data_dir=str(data), out=str(tmp_path / "run"), backbone="tiny_cnn", weights="none",
                      strategy="fine-tune", epochs=12, fine_tune_epochs=12, patience=0, batch_size=8, lr=0.03,
                      cache_limit_mb=0, verbose=0, augment=AugmentConfig(views=1))
    res = train(cfg, extra_callbacks=[rec])
    assert res.metrics["epochs_run"] == {"head": 12, "fine_tune": 12} and res.metrics["fine_tune_mode"] == "images"
    head, ft = rec.rows[:12], rec.rows[12:]
    print("RSS per epoch (MB): head " + " ".join(f"{r:.0f}" for r in head) + " | fine-tune " + " ".join(f"{r:.0f}" for r in ft))
    for name, rows in (("head", head), ("fine-tune", ft)):
        warm = rows[3]  # after warm-up (graph tracing, first checkpoint, allocator pools)
        assert max(rows[3:]) - warm < TRAIN_LEAK_MB, (name, rows)
    # And no steady climb: the second half grows no more than the bound over the first half.
    assert np.mean(ft[6:]) - np.mean(ft[3:6]) < TRAIN_LEAK_MB / 2, ft
