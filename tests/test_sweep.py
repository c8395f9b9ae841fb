"""``edgetl sweep`` with a tiny backbone: the grid, the budget choice, --latency-from and --resume."""

from __future__ import annotations

import json

import pytest

from conftest import make_image_folder
from edgetl.cli import main
from edgetl.errors import UsageError
from edgetl.sweep import Candidate, apply_latencies, latencies_from_bench, parse_grid, pareto, recommend

TINY = ["--weights", "none", "--epochs", "6", "--calib-samples", "8"]


@pytest.fixture(scope="module")
def data_with_test(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("sweep_data"), n_test=5)


def _c(name, acc, p50, size=1.0):
    return Candidate(name, "b", (1, 1), val_accuracy=acc, p50_ms=p50, size_mb=size)


def test_parse_grid():
    assert parse_grid("lite0@128, lite0@192x160,mobilenet_v2@224") == (
        ("efficientnet_lite0", (128, 128)), ("efficientnet_lite0", (192, 160)), ("mobilenet_v2", (224, 224)))
    for bad in ("lite0", "lite0@x", "nope@128", ""):
        with pytest.raises(UsageError):
            parse_grid(bad)


def test_pareto_and_budget_choice():
    cands = [_c("a", 80.0, 5.0, 1.0), _c("b", 85.0, 8.0, 2.0), _c("c", 84.0, 9.0, 1.5), _c("d", 90.0, 20.0, 4.0)]
    assert pareto(cands) == ["a", "b", "d"]  # c is slower and less accurate than b
    assert recommend(cands)[0].name == "d"
    assert recommend(cands, max_latency_ms=10.0)[0].name == "b"
    assert recommend(cands, max_latency_ms=10.0, max_size_mb=1.2)[0].name == "a"
    best, why = recommend(cands, max_latency_ms=1.0)
    assert best is None and "no candidate fits" in why
    # equal accuracy: the faster one
    assert recommend([_c("x", 90.0, 9.0), _c("y", 90.0, 7.0)])[0].name == "y"


def test_objective_ranks_the_candidates():
    # "acc" is more accurate on val, "bal" better on balanced accuracy: the objective decides
    acc = Candidate("acc", "b", (1, 1), val_accuracy=92.0, val_balanced_accuracy=60.0, p50_ms=5.0, size_mb=1.0)
    bal = Candidate("bal", "b", (1, 1), val_accuracy=88.0, val_balanced_accuracy=80.0, p50_ms=6.0, size_mb=1.0)
    assert recommend([acc, bal])[0].name == "acc"
    best, why = recommend([acc, bal], objective="balanced")
    assert best.name == "bal" and "balanced accuracy" in why
    assert pareto([acc, bal], "balanced") == ["acc", "bal"] and pareto([acc, bal]) == ["acc"]


def test_latency_from_bench_json(tmp_path):
    doc = {"rows": [{"model": "a_int8.tflite", "path": "/pi/models/a_int8.tflite", "status": "ok", "p50_ms": 30.0},
                    {"model": "a_int8.tflite", "path": "/pi/models/a_int8.tflite", "status": "ok", "p50_ms": 25.0},
                    # ran below the file's precision (OpenVINO's default): not the candidate that was measured
                    {"model": "a_int8.tflite", "path": "/pi/models/a_int8.tflite", "status": "ok", "p50_ms": 9.0,
                     "precision": "int8->bf16"},
                    {"model": "b_int8.tflite", "path": "/pi/models/b_int8.tflite", "status": "error: x", "p50_ms": None}]}
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    measured = latencies_from_bench(tmp_path / "bench.json")
    assert measured == {"a_int8.tflite": 25.0}
    a, b = _c("a", 80.0, 5.0), _c("b", 85.0, 8.0)
    a.file, b.file = "/x/models/a_int8.tflite", "/x/models/b_int8.tflite"
    assert apply_latencies([a, b], measured) == ["b"]
    assert (a.p50_ms, a.p50_source, b.p50_ms) == (25.0, "--latency-from", 8.0)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UsageError, match="not a bench.json"):
        latencies_from_bench(tmp_path / "bad.json")


def test_sweep_end_to_end_with_resume(data_with_test, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", str(data_with_test), "--out", str(out), *TINY]
    assert main([*args, "--grid", "tiny_cnn@24,tiny_cnn@32", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in doc["candidates"]]
    assert names == ["tiny_cnn_24x24", "tiny_cnn_32x32"]
    for c in doc["candidates"]:
        assert c["error"] is None and c["p50_ms"] > 0 and c["size_mb"] > 0 and c["train_s"] > 0
        assert 0 <= c["val_accuracy"] <= 100 and c["test_accuracy"] is not None and c["agreement"] is not None
        for key in ("val_balanced_accuracy", "test_balanced_accuracy"):
            assert 0 <= c[key] <= 100, (key, c)
        assert 0 <= c["val_macro_f1"] <= 1 and 0 <= c["test_macro_f1"] <= 1
        assert (out / "models" / f"{c['name']}_int8.tflite").is_file()
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(out / "models" / "tiny_cnn_24x24_int8.tflite"))
    assert list(it.get_input_details()[0]["shape"]) == [1, 24, 24, 3]
    assert doc["pareto"] and doc["recommended"]["name"] in names
    assert "--image-size" in doc["recommended"]["command"] and "--strategy fine-tune" in doc["recommended"]["command"]
    assert {"sweep.json", "sweep.md", "sweep.png", "sweep_state.json"} <= {p.name for p in out.iterdir()}
    assert "val balanced %" in (out / "sweep.md").read_text() and doc["settings"]["objective"] == "accuracy"

    # an existing sweep folder is not overwritten by accident
    assert main([*args, "--grid", "tiny_cnn@24"]) == 1
    assert "--resume" in capsys.readouterr().err

    # --resume keeps the finished candidates and measures only the new one; the device's latencies win
    bench = {"rows": [{"model": "tiny_cnn_24x24_int8.tflite", "path": "models/tiny_cnn_24x24_int8.tflite",
                       "status": "ok", "p50_ms": 0.001}]}
    (tmp_path / "pi_bench.json").write_text(json.dumps(bench))
    before = {c["name"]: c for c in doc["candidates"]}
    assert main([*args, "--grid", "tiny_cnn@24,tiny_cnn@32,tiny_cnn@40", "--resume", "--json",
                 "--latency-from", str(tmp_path / "pi_bench.json"), "--max-latency-ms", "0.01"]) == 0
    cap = capsys.readouterr()
    doc2 = json.loads(cap.out)
    assert cap.err.count("done before (resumed)") == 2
    by = {c["name"]: c for c in doc2["candidates"]}
    assert by["tiny_cnn_32x32"]["train_s"] == before["tiny_cnn_32x32"]["train_s"]  # not retrained
    assert by["tiny_cnn_40x40"]["p50_ms"] > 0
    assert by["tiny_cnn_24x24"]["p50_ms"] == 0.001 and by["tiny_cnn_24x24"]["p50_source"] == "--latency-from"
    assert doc2["recommended"]["name"] == "tiny_cnn_24x24"  # the only one within 0.01 ms on the "device"
    assert any("no row for" in n for n in doc2["notes"])


def test_sweep_bad_input_is_one_line(data_with_test, tmp_path, capsys):
    code = main(["sweep", str(data_with_test), "--out", str(tmp_path / "s"), "--grid", "tiny_cnn@4", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "outside what tiny_cnn supports" in err and "Traceback" not in err
    code = main(["sweep", str(data_with_test), "--out", str(tmp_path / "s"), "--max-latency-ms", "-1", *TINY])
    assert code == 2 and "--max-latency-ms must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_split_scores_stream_through_a_pixel_store(tiny_run, image_folder, tmp_path, monkeypatch):
    """The sweep scores a split through a PixelStore (spilled to disk past the RAM budget), never decoding
    it into one array, with the same scores as the whole-array path."""
    import numpy as np

    import edgetl.preprocess
    from edgetl import sweep
    from edgetl.export.api import ExportConfig, export_run
    from edgetl.metrics import scores
    from edgetl.pixels import PIXEL_RAM_ENV
    from edgetl.runtime.tflite_runner import TFLiteRunner

    res = export_run(tiny_run, ExportConfig(formats=("tflite_fp32",), out_dir=str(tmp_path / "exp"), verify_samples=4))
    path = res.artifact("tflite_fp32").path
    part = sweep._scan(str(image_folder)).val
    r = TFLiteRunner(path, threads=None)
    probs = r.predict(edgetl.preprocess.prepare_batch(part.paths, r.preprocessing))
    want = scores(part.labels, probs.argmax(1), probs.shape[1])

    def whole_split(*a, **kw):
        raise AssertionError("decoded the whole split into one array")

    monkeypatch.setattr(edgetl.preprocess, "prepare_batch", whole_split)
    monkeypatch.setenv(PIXEL_RAM_ENV, "0")  # no RAM budget: the store lives in a temporary file
    got = sweep._int8_scores(path, str(image_folder), "val")
    assert got is not None and len(part.paths) > 1
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert np.isclose(got[key], want[key]), (key, got, want)
