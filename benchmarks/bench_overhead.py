"""Does ``edgetl bench`` add anything to the latency it reports? (TARGETS.md: <= 1.05 of a bare loop)

    python -m benchmarks.bench_overhead RUN_DIR_OR_MODEL [--data DIR] [--repeats 5] [--threads 1] [--runs 100]

For every .tflite/.onnx artifact (a run directory: every file in export/), alternate, ``--repeats`` times:
(a) ``edgetl.bench.run_bench`` on that one file -> its p50, and (b) the simplest loop a user would write in
the same process - ``interpreter.invoke()`` / ``session.run()`` timed per call with ``perf_counter_ns`` -> p50.
Reports the ratio of the minima over interleaved (ABBA) repeats, with the spread of the paired
ratios, per artifact; a ratio below 0.95 is a measurement failure (exit 3), not a pass. Writes
``--out`` (default ``benchmarks/results/bench_overhead_<date>.json``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def bare_p50(path: Path, pixels: np.ndarray, threads: int, runs: int, warmup: int = 20) -> float:
    """p50 (ms) of a bare invoke()/run() loop: no edgetl code involved."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        x = pixels.astype(np.float32)
        if d["dtype"] in (np.uint8, np.int8):
            scale, zp = d["quantization"]
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / (scale or 1.0) + zp), info.min, info.max)
        it.set_tensor(d["index"], x.astype(d["dtype"]))
        call = it.invoke
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        feed = {inp.name: pixels.astype(np.uint8 if inp.type == "tensor(uint8)" else np.float32)}
        names = [sess.get_outputs()[0].name]

        def call():
            sess.run(names, feed)
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", help="run directory or .tflite/.onnx file")
    ap.add_argument("--data", default=None, help="labelled images (default: the run's validation split)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100, help="timed runs per measurement (both sides)")
    ap.add_argument("--out", type=Path, default=None, help="result file (default: benchmarks/results/bench_overhead_<date>.json)")
    args = ap.parse_args(argv)

    from edgetl.bench import BenchSettings, discover_targets, run_bench
    from edgetl.preprocess import prepare_batch
    from edgetl.runtime.env import environment, summary_line
    from edgetl.runtime.loader import runner_for

    targets, run = discover_targets([args.target], keras=False)
    data = args.data
    if data is None and run is None:
        ap.error("--data is required for a bare model file")
    def settings_for(path: Path) -> BenchSettings:  # the runtime a bare loop of this file uses
        return BenchSettings(threads=(args.threads,), warmup_runs=20, warmup_time=0.0, min_runs=args.runs, min_time=0.0,
                             max_time=120.0, samples=8, runtimes=("litert" if path.suffix == ".tflite" else "onnxruntime",))

    env = environment()
    print(summary_line(env), file=sys.stderr)
    results = []
    for t in targets:
        r = runner_for(t.path, threads=args.threads)
        if data is not None:
            from edgetl.bench import eval_set_for

            es = eval_set_for(r.labels, data, run, 1, 0)
        else:
            es = run.dataset().val if run else None
        paths = (es.paths[:1] if es is not None else [])
        x = prepare_batch(paths, r.preprocessing)
        del r
        bench, bare = [], []
        for i in range(args.repeats):
            # ABBA order: drifting load from other processes hits both sides alike.
            if i % 2:
                bare.append(bare_p50(t.path, x, args.threads, args.runs))
            res = run_bench([t.path], settings_for(Path(t.path)), data=data or (run.config.get("data_dir") if run else None))
            row = res.rows[0]
            if row.status != "ok":
                print(f"{t.name}: {row.status}", file=sys.stderr)
                break
            bench.append(row.p50_ms)
            if not i % 2:
                bare.append(bare_p50(t.path, x, args.threads, args.runs))
            print(f"{t.name} repeat {i + 1}: bench p50 {bench[-1]:.4f} ms, bare p50 {bare[-1]:.4f} ms", file=sys.stderr)
        if not bench:
            continue
        paired = [a / b for a, b in zip(bench, bare)]
        # The headline is the ratio of the minima: the bench loop does strictly more work than a bare
        # invoke() loop, so a ratio below 1 is noise; below 0.95 the measurement failed (load from
        # other processes), and is reported as such, never as met.
        ratio = min(bench) / min(bare)
        status = "measurement failure" if ratio < 0.95 else ("met" if ratio <= 1.05 else "missed")
        results.append({"artifact": t.name, "path": str(t.path), "threads": args.threads, "bench_p50_ms": bench,
                        "bare_p50_ms": bare, "paired_ratios": paired, "paired_ratio_min": min(paired),
                        "paired_ratio_max": max(paired), "median_paired_ratio": statistics.median(paired),
                        "ratio_of_medians": statistics.median(bench) / statistics.median(bare),
                        "ratio_of_minima": ratio, "ratio": ratio, "target": 1.05, "status": status,
                        "pass": status == "met"})
        print(f"{t.name}: ratio of minima {ratio:.3f} ({status}); paired ratios {min(paired):.3f}-{max(paired):.3f} "
              f"(bench {statistics.median(bench):.4f} ms / bare {statistics.median(bare):.4f} ms)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"bench_overhead_{_dt.date.today().isoformat()}.json"
    from edgetl.report import write_json

    write_json(out, {"benchmark": "bench_overhead", "target": args.target, "repeats": args.repeats, "runs": args.runs,
                     "environment": env, "results": results})
    print(f"wrote {out}")
    if not results or any(r["status"] == "measurement failure" for r in results):
        return 3  # nothing measured, or a measurement that cannot be right
    return 0 if all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
