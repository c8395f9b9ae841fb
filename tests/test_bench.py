"""edgetl bench: statistics, timing-loop logic (fake clock), overhead vs a bare loop, skipped/error rows, report files."""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from edgetl.bench import BenchRow, BenchSettings, accuracy_metrics, choose_best, latency_stats, run_bench, speed_notes, timed_runs
from edgetl.errors import UsageError
from test_runtime import artifacts, build_artifacts  # noqa: F401 - shared session fixture

FAST = dict(warmup_runs=1, warmup_time=0.0, min_runs=5, min_time=0.0, max_time=5.0)


# --------------------------------------------------------------------------- statistics and timing logic


def test_latency_stats_on_a_known_series():
    times = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms
    st = latency_stats(times, batch=4)
    assert st["p50_ms"] == pytest.approx(50.5)
    assert st["p90_ms"] == pytest.approx(90.1)
    assert st["p99_ms"] == pytest.approx(99.01)
    assert st["mean_ms"] == pytest.approx(50.5)
    assert st["std_ms"] == pytest.approx(np.sqrt((100**2 - 1) / 12))
    assert (st["min_ms"], st["max_ms"], st["runs"]) == (1.0, 100.0, 100)
    assert st["fps"] == pytest.approx(4 / 0.0505)
    one = latency_stats([2_000_000])
    assert one["p50_ms"] == one["p99_ms"] == 2.0 and one["std_ms"] == 0.0
    with pytest.raises(ValueError):
        latency_stats([])


class FakeClock:
    """A clock that only moves when the model 'runs' (each call costs ``cost_ns``)."""

    def __init__(self, cost_ns: int = 1_000_000):
        self.t = 0
        self.cost = cost_ns
        self.calls = 0

    def __call__(self) -> int:
        return self.t

    def run(self) -> None:
        self.calls += 1
        self.t += self.cost


@pytest.mark.parametrize(
    "warmup_runs,warmup_time,min_runs,min_time,max_time,want_warm,want_runs",
    [
        (3, 0.010, 10, 0.050, 10.0, 10, 50),   # time dominates both phases (1 ms per run)
        (20, 0.010, 80, 0.050, 10.0, 20, 80),  # counts dominate both phases
        (0, 0.0, 1000, 0.0, 0.030, 0, 30),     # --max-time caps the timed phase
        (5, 10.0, 10, 0.0, 0.004, 4, 4),       # ... and the warm-up
        (0, 0.0, 1, 0.0, 1.0, 0, 1),           # at least one timed run
    ],
)
def test_timed_runs_min_runs_and_min_time(warmup_runs, warmup_time, min_runs, min_time, max_time, want_warm, want_runs):
    clk = FakeClock()
    n_warm, times = timed_runs(clk.run, warmup_runs, warmup_time, min_runs, min_time, max_time, clock=clk)
    assert n_warm == want_warm
    assert len(times) == want_runs
    assert all(t == 1_000_000 for t in times)
    assert clk.calls == want_warm + want_runs


def test_accuracy_metrics():
    labels = ["a", "b", "c"]
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3, dtype=np.float32)[[0, 1, 1, 1, 2, 0]]
    ref = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 0]]
    m = accuracy_metrics(probs, y, labels, ref)
    assert m["top1"] == pytest.approx(100 * 4 / 6) and m["correct"] == 4 and "top5" not in m
    assert m["per_class_recall"] == {"a": 50.0, "b": 100.0, "c": 50.0}
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["agreement"] == pytest.approx(100 * 5 / 6)
    assert m["balanced_accuracy"] == pytest.approx(100 * (0.5 + 1.0 + 0.5) / 3)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0), 2 * 1.0 * 0.5 / 1.5]  # precision a 1/2, b 2/3, c 1
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    many = accuracy_metrics(np.eye(8, dtype=np.float32)[[1, 2]] + 0.01, np.array([0, 2]), [str(i) for i in range(8)])
    assert "top5" in many and many["top1"] == 50.0


def _row(precision, p50, top1, threads=1, fmt="tflite"):
    return BenchRow(model=f"m_{precision}.{fmt}", path="x", format=fmt, runtime="litert", precision=precision,
                    threads=threads, p50_ms=p50, top1=top1)


def test_best_needs_agreement_not_only_top1():
    """A file that scores like the float model but disagrees with it on many images is not recommended."""
    fast = _row("int8", 5.0, 99.0, fmt="onnx")
    fast.agreement = 80.0  # OpenVINO's int8 kernels on AVX2: same top-1 band, 80 % agreement
    slow = _row("int8", 9.0, 98.9)
    slow.agreement = 99.5
    _, best, _ = choose_best([fast, slow], None, [99.0], min_agreement=99.0)
    assert best["model"] == "m_int8.tflite" and best["agreement"] == 99.5 and best["min_agreement"] == 99.0
    _, best, _ = choose_best([fast, slow], None, [99.0], min_agreement=None)  # top-1 alone would pick the fast one
    assert best["model"] == "m_int8.onnx"
    assert choose_best([fast], None, [99.0], min_agreement=99.0)[1] is None
    unknown = _row("fp32", 4.0, 99.0)  # agreement unknown: never recommended, however fast
    assert choose_best([unknown, slow], None, [99.0], min_agreement=99.0)[1]["p50_ms"] == 9.0
    floor, best, why = choose_best([unknown], None, [99.0], min_agreement=99.0)
    assert best is None and "agreement unknown" in why and "m_fp32.tflite" in why
    floor, best, why = choose_best([slow], None, [], min_agreement=99.0)  # no float reference: no floor, no pick
    assert best is None and floor is None and "no float reference" in why


def test_lowered_precision_row_is_judged_like_int8():
    """fp32->bf16 (OpenVINO's default on AMX) is compared with the float model: recommended only with a
    measured agreement over the floor, and its own speed note says what ran."""
    f32 = _row("fp32", 10.0, 99.0)
    f32.agreement = 100.0
    bf16 = _row("fp32->bf16", 4.0, 99.0)
    assert choose_best([f32, bf16], None, [99.0], min_agreement=99.0)[1]["precision"] == "fp32"  # no agreement: not trusted
    bf16.agreement = 98.0
    assert choose_best([f32, bf16], None, [99.0], min_agreement=99.0)[1]["precision"] == "fp32"
    bf16.agreement = 99.5
    assert choose_best([f32, bf16], None, [99.0], min_agreement=99.0)[1]["precision"] == "fp32->bf16"
    notes = speed_notes([f32, bf16], {"cpu": {"flags": {}, "vnni_or_dotprod": False}})
    assert len(notes) == 1 and notes[0].startswith("fp32->bf16: the device's default precision (bf16)")
    assert "ratio 0.40" in notes[0] and "agreement with the float model 99.50 %" in notes[0]
    from edgetl.bench_report import best_line
    from edgetl.bench import BenchResult

    res = BenchResult([f32, bf16], {}, BenchSettings(), {}, None, choose_best([f32, bf16], None, [99.0], 99.0)[1], [])
    assert " on litert as fp32->bf16, 1 thread(s)" in best_line(res)


def test_best_and_honest_int8_notes():
    rows = [_row("fp32", 10.0, 99.0), _row("int8", 9.7, 98.9), _row("dynamic", 15.0, 99.0)]
    for r in rows:
        r.agreement = 100.0
    floor, best, _ = choose_best(rows, None, [99.0])
    assert floor == pytest.approx(98.0) and best["precision"] == "int8"
    _, best, _ = choose_best(rows, 98.95, [99.0])
    assert best["precision"] == "fp32"
    floor, best, _ = choose_best(rows, 1, [99.0])  # a percent: 1 means 1 %, not 100 %
    assert floor == 1.0 and best["precision"] == "int8"
    assert choose_best(rows, 99.5, [99.0])[1] is None
    with pytest.raises(UsageError, match="1 means 1 %"):
        BenchSettings(min_accuracy=150)
    no_vnni = {"cpu": {"flags": {"avx2": True}, "vnni_or_dotprod": False}}
    notes = speed_notes(rows, no_vnni)
    assert len(notes) == 1 and "not meaningfully faster" in notes[0] and "VNNI" in notes[0] and "x faster than" not in notes[0]
    fast = speed_notes([_row("fp32", 10.0, 99.0), _row("int8", 5.0, 99.0)], no_vnni)
    assert fast and "2.00x faster" in fast[0]
    slower = speed_notes([_row("fp32", 10.0, 99.0), _row("int8", 12.0, 99.0)], {"cpu": {"flags": {"avx512_vnni": True}, "vnni_or_dotprod": True}})
    assert "slower than" in slower[0] and "avx512_vnni" in slower[0]
    own = [_row("fp32", 10.0, 99.0), _row("int8", 5.0, 99.0)]
    for r in own:
        r.threads = None  # MediaPipe: no thread setting, its own default
    note = speed_notes(own, no_vnni)[0]
    assert "its own thread default" in note and "None" not in note


# --------------------------------------------------------------------------- overhead vs a bare loop


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory) -> Path:
    """A float TFLite + ONNX model that takes a few ms per image (so timer resolution is not the question)."""
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    inp = keras.Input((96, 96, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inp)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    for _ in range(3):
        x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inp, out)
    d = tmp_path_factory.mktemp("slow")
    (d / "slow_fp32.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    spec = (tf.TensorSpec((None, 96, 96, 3), tf.float32, name="image"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(d / "slow_fp32.onnx"))
    return d


def _bare_p50(kind: str, path: Path, x: np.ndarray, n: int) -> tuple[float, float]:
    """The reference: the simplest loop a user would write, timed per call in this process."""
    if kind == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x.astype(np.float32))
        call = it.invoke
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.astype(np.float32)}
        names = [sess.get_outputs()[0].name]

        def call():
            sess.run(names, feed)
    for _ in range(10):
        call()
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6, min(times) / 1e6


@pytest.mark.parametrize("kind", ["tflite", "onnx"])
def test_bench_p50_matches_a_bare_loop(slow_model, image_folder, kind):
    path = slow_model / f"slow_fp32.{kind}"
    settings = BenchSettings(threads=(1,), warmup_runs=10, warmup_time=0.0, min_runs=60, min_time=0.0, max_time=10.0,
                             runtimes=({"tflite": "litert", "onnx": "onnxruntime"}[kind],))
    from edgetl.preprocess import Preprocessing, prepare_batch

    x = prepare_batch(sorted(image_folder.rglob("*.png"))[:1], Preprocessing(input_size=(96, 96)))
    def bench_once() -> tuple[float, float]:
        (row,) = run_bench([path], settings, data=image_folder / "val").rows
        assert row.status == "ok" and row.runs >= 60
        return row.p50_ms, row.min_ms

    # Interleaved rounds (ABBA order). On this shared 2-core VM other tenants' load moves p50 by
    # +-50 % between rounds (clean CI runs saw median paired p50 ratios of 1.05 and 1.40, the full
    # benchmark 0.76 and 1.01), but it can only add time: the fastest call of each side is the
    # stable figure, and any per-invoke overhead (copies, preprocessing or Python work inside the
    # timed region) raises it. The p50 target itself (<= 1.05) is measured by
    # benchmarks/bench_overhead.py on Lite0 with longer runs.
    bench_min, bare_min, bare_p50 = [], [], []
    for i in range(7):
        if i % 2 == 0:
            a = bench_once()
            b = _bare_p50(kind, path, x, 60)
        else:
            b = _bare_p50(kind, path, x, 60)
            a = bench_once()
        bench_min.append(a[1])
        bare_min.append(b[1])
        bare_p50.append(b[0])
    assert statistics.median(bare_p50) >= 0.5, "model too fast for a meaningful check"
    assert min(bench_min) / min(bare_min) <= 1.10, (kind, min(bench_min), min(bare_min))


# --------------------------------------------------------------------------- the whole bench on a run


def test_majority_baseline_for_unbalanced_runs():
    from types import SimpleNamespace

    from edgetl.bench import majority_for
    from edgetl.bench_report import majority_note

    run = SimpleNamespace(labels=["a", "b"], config={"data": {"counts": {"train": {"a": 30, "b": 10}}},
                                                     "train_config": {"imbalance_ratio": 1.5}})
    m = majority_for(run, ["a", "b"], np.array([0, 1, 1, 1]))
    assert m == {"class": "a", "imbalance_ratio": 3.0, "top1": 25.0, "balanced_accuracy": 50.0}
    assert majority_note({"majority_baseline": m}) == "; unbalanced training classes (3.0:1): always answering 'a' scores top-1 25.00 %"
    balanced = SimpleNamespace(labels=["a", "b"], config={"data": {"counts": {"train": {"a": 12, "b": 10}}}})
    assert majority_for(balanced, ["a", "b"], np.array([0, 1])) is None and majority_note({}) == ""
    assert majority_for(run, ["b", "a"], np.array([0, 1])) is None  # another model's labels: no claim
    assert majority_for(None, ["a", "b"], np.array([0, 1])) is None


@pytest.fixture(scope="session")
def bench_result(artifacts):  # noqa: F811
    return run_bench([artifacts["run"]], BenchSettings(threads=(1, 2), **FAST))


def test_run_dir_bench_rows(bench_result):
    rows = bench_result.rows
    kinds = [(r.format, r.precision, r.threads) for r in rows]
    assert kinds[0][:2] == ("keras", "fp32")
    assert ("tflite", "fp32", 1) in kinds and ("tflite", "int8", 2) in kinds and ("onnx", "fp32", 1) in kinds
    assert all(r.status == "ok" for r in rows), [r.status for r in rows]
    assert bench_result.reference == "model.keras"
    for r in rows:
        assert r.n_images == 12 and r.top1 is not None and r.agreement is not None
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms and r.runs >= 5 and r.fps > 0
        assert r.load_ms > 0 and r.first_ms > 0 and r.peak_mem_mb is not None and r.size_mb > 0
        assert sum(map(sum, r.confusion_matrix)) == 12 and set(r.per_class_recall) == {"alpha", "beta"}
        recalls = [v for v in r.per_class_recall.values() if v is not None]
        assert r.balanced_accuracy == pytest.approx(np.mean(recalls)) and 0 <= r.macro_f1 <= 1
    tfl = [r for r in rows if r.format == "tflite"]
    assert {r.threads for r in tfl} == {1, 2}
    assert bench_result.best is not None
    assert bench_result.environment["cpu"]["usable_cores"] >= 1


def test_reports_written_and_parseable(bench_result, tmp_path):
    from edgetl.bench_report import terminal_report, write_reports

    written = write_reports(bench_result, tmp_path / "out")
    d = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert len(d["rows"]) == len(bench_result.rows) and d["environment"]["python"] and d["settings"]["threads"] == [1, 2]
    with open(tmp_path / "out" / "bench.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(bench_result.rows) and float(rows[0]["p50_ms"]) > 0
    assert float(rows[0]["balanced_accuracy"]) == pytest.approx(bench_result.rows[0].balanced_accuracy)
    assert d["rows"][0]["balanced_accuracy"] is not None and d["rows"][0]["macro_f1"] is not None
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "| model | format | runtime |" in md and "confusion matrix" in md
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = terminal_report(bench_result)
    assert "p50 ms" in text and "best (" in text and "environment:" in text and "balanced %" in text and "macro-F1" in text
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_skipped_and_error_rows_do_not_abort(artifacts, tmp_path):  # noqa: F811
    bad = tmp_path / "broken_fp32.tflite"
    bad.write_bytes(artifacts["tflite_fp32"].read_bytes()[:200])
    res = run_bench([artifacts["onnx_fp32"], bad, artifacts["tflite_int8"]],
                    BenchSettings(threads=(1,), providers=("cpu", "cuda"), gpu=True, **FAST), data=artifacts["data"])
    by = {(r.model, r.device): r for r in res.rows}
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert by[("tiny_cnn_fp32.onnx", "cuda")].status.startswith("skipped: CUDAExecutionProvider not available")
    assert by[("tiny_cnn_int8.tflite", "gpu")].status.startswith("skipped:")
    assert by[("broken_fp32.tflite", "cpu")].status.startswith("error: ")
    assert by[("tiny_cnn_fp32.onnx", "cpu")].ok and by[("tiny_cnn_int8.tflite", "cpu")].ok
    assert by[("tiny_cnn_int8.tflite", "cpu")].agreement is not None  # the fp32 ONNX file is the reference
    assert res.reference == "tiny_cnn_fp32.onnx"


def test_bench_cli(artifacts, tmp_path, capsys):  # noqa: F811
    from edgetl.cli import main

    out = tmp_path / "b"
    code = main(["bench", str(artifacts["tflite_int8"]), str(artifacts["onnx_fp32"]), "--data", str(artifacts["data"]),
                 "--threads", "1", "--min-runs", "5", "--min-time", "0", "--warmup-runs", "1", "--warmup-time", "0",
                 "--samples", "6", "--out", str(out), "--min-accuracy", "50", "--runtimes", "litert,onnxruntime"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "[1/2]" in cap.err and "tiny_cnn_int8.tflite" in cap.out and "best (top-1 >= 50.00 %" in cap.out
    assert {p.name for p in out.iterdir()} >= {"bench.json", "bench.csv", "bench.md", "bench.png"}
    d = json.loads((out / "bench.json").read_text())
    assert all(r["n_images"] == 6 for r in d["rows"])
    assert main(["bench", str(artifacts["onnx_fp32"]), "--threads", "x"]) == 2
    assert main(["bench", str(tmp_path / "nope.tflite")]) == 2


def test_default_data_is_the_runs_test_split_when_it_has_one(tmp_path):
    """Without --data, bench reports on the split no choice saw (test) when the run's data has one (issue 13)."""
    from conftest import make_image_folder

    from edgetl.bench import eval_set_for
    from edgetl.data import load_dataset

    class _FakeRun:
        labels = ["alpha", "beta"]

        def __init__(self, folder):
            self.folder, self.config = folder, {"data_dir": str(folder)}

        def checked_dataset(self, accept_changed=False):
            return load_dataset(str(self.folder)), None

    with_test = make_image_folder(tmp_path / "t", n_train=3, n_val=2, n_test=4, size=16)
    es = eval_set_for(["alpha", "beta"], None, _FakeRun(with_test), None, 0)
    assert len(es.paths) == 8 and all("/test/" in str(p) for p in es.paths) and "test split" in es.source
    without = make_image_folder(tmp_path / "v", n_train=3, n_val=2, size=16)
    es = eval_set_for(["alpha", "beta"], None, _FakeRun(without), None, 0)
    assert len(es.paths) == 4 and all("/val/" in str(p) for p in es.paths) and "validation split" in es.source


# --------------------------------------------------------------------------- a shared CPU is reported


def test_contention_from_proc_stat_snapshots():
    from edgetl.runtime.timing import contention

    # 2 s of wall time, 300 busy jiffies (3 s at 100 Hz) of which this process used 1 s: others used 1 core
    c = contention((1000, 50), (1300, 70), own_s=1.0, wall_s=2.0, hz=100.0)
    assert c["others_cores"] == pytest.approx(1.0) and c["steal_cores"] == pytest.approx(0.1)
    assert contention((1000, 0), (1050, 0), own_s=1.0, wall_s=1.0, hz=100.0)["others_cores"] == 0.0  # never negative
    assert contention((0, 0), (0, 0), 0.0, 0.0, 100.0) == {"others_cores": 0.0, "steal_cores": 0.0}


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux /proc/stat needed")
def test_cpu_contention_sees_a_busy_process():
    import subprocess
    import sys

    from edgetl.runtime.timing import CpuContention

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with CpuContention() as busy:
            time.sleep(1.0)  # this process idles; the hog spins on a core
    finally:
        hog.kill()
        hog.wait()
    assert busy.result is not None and busy.result["others_cores"] >= 0.6


def test_contention_note_names_the_shared_rows():
    from edgetl.bench.notes import contention_note

    quiet, busy = _row("fp32", 10.0, 99.0), _row("int8", 5.0, 99.0)
    quiet.detail.update(cpu_others_cores=0.02, cpu_steal_cores=0.0)
    busy.detail.update(cpu_others_cores=0.93, cpu_steal_cores=0.0)
    env = {"cpu": {"usable_cores": 2}}
    note = contention_note([quiet, busy], env)
    assert len(note) == 1 and "1 of 2 timed rows" in note[0] and "up to 0.93 of 2 cores" in note[0]
    assert "m_int8.tflite on litert" in note[0] and "upper bounds" in note[0]
    busy.detail["cpu_others_cores"] = 0.1
    assert contention_note([quiet, busy], env) == []
    busy.detail["cpu_steal_cores"] = 0.3  # a VM's host taking cycles counts too
    assert "hypervisor stole 0.30" in contention_note([quiet, busy], env)[0]


def test_saturation_note_on_x86_without_vnni_only_for_unsafe_openvino_int8_rows(tmp_path, monkeypatch):
    """An OpenVINO int8 row that lost many predictions on an x86 CPU without VNNI gets a note that says
    why and what runs exactly; a file export marked overflow-safe, a VNNI CPU and LiteRT rows get none."""
    import platform

    import onnx
    from onnx import helper

    from edgetl.bench.notes import saturation_notes
    from edgetl.runtime.onnx_runner import OVERFLOW_SAFE_KEY

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    safe = tmp_path / "safe.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph)
    proto.metadata_props.add(key=OVERFLOW_SAFE_KEY, value="7-bit conv/dense weights")
    onnx.save(proto, str(safe))
    rows = []
    for fmt, path, runtime in (("onnx", str(tmp_path / "plain.onnx"), "openvino"), ("onnx", str(safe), "openvino"),
                               ("tflite", "m.tflite", "openvino"), ("tflite", "m.tflite", "litert")):
        r = BenchRow(model=Path(path).name, path=path, format=fmt, runtime=runtime, precision="int8", threads=1, p50_ms=5.0, top1=90.0)
        r.agreement = 75.0
        rows.append(r)
    no_vnni = {"cpu": {"flags": {"avx2": True}, "vnni_or_dotprod": False}}
    notes = saturation_notes(rows, no_vnni, 99.0)
    assert len(notes) == 2, notes
    assert notes[0].startswith("plain.onnx on openvino: 75.00 %") and "overflow" in notes[0]
    assert notes[1].startswith("m.tflite on openvino") and "LiteRT runs this .tflite exactly" in notes[1]
    assert saturation_notes(rows, {"cpu": {"flags": {"avx512_vnni": True}, "vnni_or_dotprod": True}}, 99.0) == []
    rows[0].agreement = 99.5
    assert len(saturation_notes(rows, no_vnni, 99.0)) == 1
