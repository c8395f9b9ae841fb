"""The ``mediapipe`` bench runtime: MediaPipe Tasks' ImageClassifier on the file, fed the original images."""

from __future__ import annotations

import importlib.util

import pytest

from edgetl.bench import BenchSettings, run_bench
from edgetl.bench_report import terminal_report

FAST = dict(threads=(1,), min_runs=3, min_time=0.0, warmup_runs=1, warmup_time=0.0, keras=False)


@pytest.fixture(scope="module")
def tiny_exports(tiny_run, tmp_path_factory):
    from edgetl.export.api import ExportConfig, export_run

    res = export_run(tiny_run, ExportConfig(formats=("tflite_fp32", "tflite_int8"), out_dir=str(tmp_path_factory.mktemp("mpb")),
                                            doctor=False, calib_samples=8))
    assert not res.failed, [a.error for a in res.failed]
    return [a.path for a in res.artifacts]


def _require_mediapipe():
    pytest.importorskip("mediapipe")
    try:
        from mediapipe.tasks.python import vision  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"mediapipe tasks not importable: {exc}")


def test_mediapipe_rows_on_tflite_files(tiny_exports, image_folder):
    _require_mediapipe()
    res = run_bench(tiny_exports, BenchSettings(runtimes=("litert", "mediapipe"), **FAST), data=image_folder)
    mp_rows = [r for r in res.rows if r.runtime == "mediapipe"]
    assert len(mp_rows) == 2 and all(r.ok for r in mp_rows), [r.status for r in mp_rows]
    for r in mp_rows:
        assert r.n_images == 12 and r.top1 is not None and r.p50_ms > 0 and r.agreement is not None
        assert r.detail["client"].startswith("mediapipe.tasks ImageClassifier") and r.detail["edgetl_resize"] == "bilinear"
        k, n = r.detail["agreement_vs_litert_count"]
        assert n == 12 and r.detail["agreement_vs_litert"] == pytest.approx(100.0 * k / n)
        assert k >= 10  # 40 px images to a 32 px model: Pillow vs MediaPipe's resize rarely flips these easy images
    assert res.reference is not None and "mediapipe" not in res.reference
    text = terminal_report(res)
    assert text.count("MediaPipe ImageClassifier vs LiteRT") == 2


def test_mediapipe_missing_is_a_skipped_row(tiny_exports, image_folder, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mediapipe" else real(name, *a))
    res = run_bench(tiny_exports[:1], BenchSettings(**FAST), data=image_folder)
    mp_rows = [r for r in res.rows if r.runtime == "mediapipe"]
    assert len(mp_rows) == 1 and mp_rows[0].status == "skipped: MediaPipe is not installed (pip install 'edgetl[mediapipe]')"
    assert any(r.ok for r in res.rows if r.runtime == "litert")


def test_mediapipe_runner_predicts_like_the_client(tiny_exports, image_folder):
    """predict() takes files or RGB arrays of any size; grayscale files are converted to RGB first."""
    _require_mediapipe()
    import numpy as np
    from PIL import Image

    from edgetl.runtime.loader import runner_for

    files = sorted((image_folder / "val" / "beta").glob("*.png"))[:3]
    r = runner_for(tiny_exports[0], runtime="mediapipe")
    try:
        p_files = r.predict(files)
        p_arrays = r.predict([np.asarray(Image.open(f).convert("RGB")) for f in files])
        assert p_files.shape == (3, 2) and np.allclose(p_files, p_arrays)
        assert (p_files.argmax(1) == r.labels.index("beta")).sum() >= 2
    finally:
        r.close()


def test_file_without_metadata_gets_no_mediapipe_row(tiny_exports, image_folder, tmp_path):
    """A float .tflite without TFLite metadata cannot be opened by MediaPipe: no row by default (a note), a
    skipped row with the reason when mediapipe is asked for."""
    _require_mediapipe()
    from edgetl.bench import has_tflite_metadata

    bare = tmp_path / "bare_fp32.tflite"
    # the same model with its metadata entry renamed (same length: the flatbuffer stays valid)
    bare.write_bytes(open(tiny_exports[0], "rb").read().replace(b"TFLITE_METADATA", b"TFLITE_NOTHING!"))
    assert has_tflite_metadata(tiny_exports[0]) and not has_tflite_metadata(bare)
    res = run_bench([bare], BenchSettings(**FAST), data=image_folder)
    assert not [r for r in res.rows if r.runtime == "mediapipe"]
    assert any("no TFLite metadata" in n for n in res.notes)
    res = run_bench([bare], BenchSettings(runtimes=("mediapipe",), **FAST), data=image_folder)
    assert [r.status for r in res.rows] == ["skipped: no TFLite metadata in this file (MediaPipe needs it; edgetl export writes it)"]
