"""Progress of long steps (issue 23, item 5): counts, rate and time left; a redrawn line on a terminal,
plain lines in a log; nothing for a step that ends within a few seconds."""

from __future__ import annotations

import io

import numpy as np

from edgetl.quiet import Progress


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_in_a_log_with_count_rate_and_time_left():
    lines: list[str] = []
    clk = _Clock()
    p = Progress("checking images", say=lines.append, clock=clk, after=2.0, every=10.0)
    for i in range(1, 1001):
        clk.t += 0.05  # 20 images/s, 50 s in all
        p.update(i, 1000)
    import re

    assert re.fullmatch(r"checking images: \d+/1000 \(2\d\.\d/s, about \d+ s left\)", lines[0]), lines[0]
    assert 4 <= len(lines) <= 7  # one every 10 s, and the last one
    assert re.fullmatch(r"checking images: 1000/1000 \(20\.0/s, 50 s\)", lines[-1]), lines[-1]
    assert all("\r" not in line for line in lines)


def test_a_short_step_prints_nothing():
    lines: list[str] = []
    clk = _Clock()
    p = Progress("verifying", say=lines.append, clock=clk)
    for i in range(1, 11):
        clk.t += 0.1
        p.update(i, 10)
    assert lines == []


def test_terminal_redraws_one_line(monkeypatch):
    import edgetl.quiet as quiet

    buf = io.StringIO()
    monkeypatch.setattr(quiet, "console", lambda stream="err": buf)
    clk = _Clock()
    p = Progress("GPTQ", terminal=True, clock=clk, after=0.0)
    for i in range(1, 101):
        clk.t += 0.5
        p.update(i, 100)
    text = buf.getvalue()
    assert text.count("\n") == 1 and text.endswith("GPTQ: 100/100 (2.0/s, 50 s)\n") and text.count("\r") >= 50, text[-200:]


def test_gptq_and_verification_report_their_steps(tiny_run, tmp_path):
    """The long export steps call their progress hooks with counts (seconds here, tens of seconds on Lite0)."""
    from edgetl.export.verify import run_file
    from edgetl.export.api import ExportConfig, export_run

    res = export_run(tiny_run, ExportConfig(formats=("tflite_fp32",), doctor=False, quant_report=False, out_dir=str(tmp_path)))
    steps: list[tuple[int, int]] = []
    h, w = json_input_size(tiny_run)
    px = np.random.default_rng(0).integers(0, 256, (130, h, w, 3), dtype=np.uint8)
    probs = run_file(res.artifact("tflite_fp32").path, px, progress=lambda d, t: steps.append((d, t)))
    assert probs.shape[0] == 130 and steps == [(64, 130), (128, 130), (130, 130)]
    np.testing.assert_allclose(probs, run_file(res.artifact("tflite_fp32").path, px), atol=1e-6)


def json_input_size(run) -> tuple[int, int]:
    import json

    return tuple(json.loads((run / "config.json").read_text())["preprocessing"]["input_size"])


def test_gptq_steps(tiny_run):
    from edgetl.export import ptq
    from edgetl.run import load_run

    model, _ = ptq.fold_batchnorm(load_run(tiny_run).load_model())
    model = ptq.copy_model(model) if model is None else model
    h, w = json_input_size(tiny_run)
    x = np.random.default_rng(0).uniform(0, 255, (16, h, w, 3)).astype(np.float32)
    steps: list[tuple[int, int]] = []
    rep = ptq.gptq_round(model, x, batch=8, step=lambda d, t: steps.append((d, t)))
    assert steps[-1][0] == steps[-1][1] == 2 + rep.layers and [d for d, _ in steps] == list(range(1, 3 + rep.layers))


def test_paired_timing_calls_faster_only_beyond_the_margin():
    """The runtime's one timer, paired: interleaved blocks, rotating order, a stated margin."""
    from edgetl.runtime.timing import FASTER_MARGIN, paired_latency

    t = {"now": 0}
    cost = {"a": 1_000_000, "b": 1_020_000, "c": 1_500_000}  # ns per call: b is 2 % slower, c 50 %
    order: list[str] = []

    def timer(name):
        def call():
            order.append(name)
            t["now"] += cost[name]
        return call

    pt = paired_latency(["a", "b", "c"], None, repeats=3, runs_per_block=2,
                        timers=[timer("a"), timer("b"), timer("c")], clock=lambda: t["now"])
    assert pt.fastest() == 0 and not pt.faster(0, 1) and pt.faster(0, 2) and pt.faster(1, 2)
    assert abs(pt.ratio(1, 0) - 1.02) < 1e-9 and pt.margin == FASTER_MARGIN
    # one warm-up each, then blocks in a rotating order: a b c | b c a | c a b
    assert order[3:] == ["a"] * 2 + ["b"] * 2 + ["c"] * 2 + ["b"] * 2 + ["c"] * 2 + ["a"] * 2 + ["c"] * 2 + ["a"] * 2 + ["b"] * 2
    d = pt.to_dict(["a", "b", "c"])
    assert d["repeats"] == 3 and d["faster_margin"] == FASTER_MARGIN and d["candidates"][2]["ratio_to_fastest"] == 1.5


def test_bench_reports_its_decoding_steps(tiny_run):
    """bench prints nothing itself; the decoding steps go through the hook the CLI passes (one per step)."""
    from edgetl.bench import BenchSettings, run_bench

    steps: dict[str, list[tuple[int, int]]] = {}

    def hook(what):
        return lambda d, t: steps.setdefault(what, []).append((d, t))

    run_bench([str(tiny_run / "model.keras"), str(tiny_run)], BenchSettings(runtimes=("tensorflow",), min_runs=1, min_time=0,
                                                                            warmup_runs=0, warmup_time=0), decode_progress=hook)
    # the run's folder gives the recorded split hashes when listed: no file of the training split is decoded
    assert "checking the run's images" not in steps
    (decode,) = steps.values()
    assert decode[-1] == (12, 12)  # the validation images, decoded once
    # (a folder that lists differently is decoded whole: tests/test_integrity.py)
