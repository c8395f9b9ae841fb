"""Export benchmark: every format from one run, checked against TARGETS.md.

Usage::

    python -m benchmarks.export_bench RUN_DIR [--qat] [--verify-samples N] [--min-runs 50] [--min-seconds 3]

Measures (on a cats_dogs EfficientNet-Lite0 run for the published targets):

* int8 accuracy drop vs the float Keras model, for TFLite and ONNX, and top-1 agreement;
* size ratios int8 / fp32 (TFLite <= 0.30, ONNX <= 0.35) and the int8 TFLite size (<= 5 MB);
* p50 latency, 1 thread, of the ``--int8`` TFLite model vs the naive dynamic-range conversion
  (``optimizations=[DEFAULT]`` without calibration data; target <= 0.6), measured side by side
  on real validation images preprocessed outside the timed region (``time.perf_counter_ns``);
* total export time of all formats (<= 3 minutes).

Writes ``benchmarks/results/export_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results"

TARGETS = {
    "tflite_int8_drop_pt": ("<=", 0.5),
    "onnx_int8_drop_pt": ("<=", 0.5),
    "tflite_int8_agreement_pct": (">=", 99.5),
    "onnx_int8_agreement_pct": (">=", 99.5),
    "tflite_int8_over_fp32_size": ("<=", 0.30),
    "onnx_int8_over_fp32_size": ("<=", 0.35),
    "tflite_int8_size_mb": ("<=", 5.0),
    "int8_over_dynamic_p50_1thread": ("<=", 0.6),
    "export_total_s": ("<=", 180.0),
}


def latency(path: str, pixels: np.ndarray, threads: int = 1, warmup_runs: int = 10, warmup_s: float = 1.0,
            min_runs: int = 50, min_s: float = 3.0) -> dict:
    """TFLite latency the way ``benchmark_model`` measures it: warm up by count and time, then run until
    both a minimum count and a minimum duration are met. Inputs are prepared before timing."""
    from ai_edge_litert.interpreter import Interpreter

    t0 = time.perf_counter_ns()
    it = Interpreter(model_path=path, num_threads=threads)
    it.allocate_tensors()
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    inp = it.get_input_details()[0]
    dtype = np.dtype(inp["dtype"])
    scale, zp = inp["quantization"]
    if dtype == np.float32:
        xs = [p[None].astype(np.float32) for p in pixels]
    elif dtype == np.uint8 and scale == 1.0 and zp == 0:
        xs = [p[None].astype(np.uint8) for p in pixels]
    else:
        info = np.iinfo(dtype)
        xs = [np.clip(np.round(p[None] / scale + zp), info.min, info.max).astype(dtype) for p in pixels]
    idx = inp["index"]
    t0 = time.perf_counter_ns()
    it.set_tensor(idx, xs[0])
    it.invoke()
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    start = time.perf_counter()
    n = 0
    while n < warmup_runs or time.perf_counter() - start < warmup_s:
        it.set_tensor(idx, xs[n % len(xs)])
        it.invoke()
        n += 1
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_s:
        x = xs[len(times) % len(xs)]
        t = time.perf_counter_ns()
        it.set_tensor(idx, x)
        it.invoke()
        times.append(time.perf_counter_ns() - t)
    ms = np.array(times) / 1e6
    return {
        "threads": threads, "runs": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "std_ms": float(ms.std()),
        "throughput_ips": float(1000.0 / ms.mean()), "load_ms": load_ms, "first_inference_ms": first_ms,
        "size_bytes": os.path.getsize(path),
    }


def _check(name: str, value: float | None) -> dict:
    op, target = TARGETS[name]
    ok = None if value is None else (value <= target if op == "<=" else value >= target)
    return {"metric": name, "value": None if value is None else round(float(value), 4), "target": f"{op} {target}", "pass": ok}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--qat", action="store_true", help="also export tflite_qat (slow on Lite0)")
    ap.add_argument("--verify-samples", type=int, default=None)
    ap.add_argument("--calib-samples", type=int, default=300)
    ap.add_argument("--min-runs", type=int, default=50)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--out", default=None, help="export folder (default RUN_DIR/export)")
    args = ap.parse_args(argv)

    from edgetl.export.api import ROW_COLUMNS, ExportConfig, export_run
    from edgetl.preprocess import prepare_batch
    from edgetl.report import atomic_write_text, format_table, markdown_table, write_json
    from edgetl.run import load_run

    cfg = ExportConfig(int8=True, fp16=True, dynamic=True, qat=args.qat, calib_samples=args.calib_samples,
                       verify_samples=args.verify_samples, doctor=False, out_dir=args.out)
    t0 = time.perf_counter()
    res = export_run(args.run_dir, cfg, progress=lambda s: print(s, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    print(format_table(res.rows(), ROW_COLUMNS))
    a = {x.format: x for x in res.artifacts}
    export_s = sum(x.export_s for x in res.artifacts)

    def size(f):
        return a[f].size_bytes if f in a and a[f].error is None else None

    def ratio(n, d):
        return None if not size(n) or not size(d) else size(n) / size(d)

    # latency: int8 vs the naive dynamic-range conversion (and fp32 for reference), 1 thread, side by side
    run = load_run(args.run_dir)
    val = run.dataset().val.paths[:32]
    px = prepare_batch(val, run.preprocessing)
    lat = {}
    for f in ("tflite_fp32", "tflite_dynamic", "tflite_int8"):
        if f in a and a[f].error is None:
            print(f"timing {f} (1 thread) ...", file=sys.stderr, flush=True)
            lat[f] = latency(a[f].path, px, threads=1, min_runs=args.min_runs, min_s=args.min_seconds)
    p50 = {f: v["p50_ms"] for f, v in lat.items()}

    def v(f, key):
        return getattr(a[f].verification, key) if f in a and a[f].verification else None

    checks = [
        _check("tflite_int8_drop_pt", a["tflite_int8"].drop if "tflite_int8" in a else None),
        _check("onnx_int8_drop_pt", a["onnx_int8"].drop if "onnx_int8" in a else None),
        _check("tflite_int8_agreement_pct", v("tflite_int8", "agreement")),
        _check("onnx_int8_agreement_pct", v("onnx_int8", "agreement")),
        _check("tflite_int8_over_fp32_size", ratio("tflite_int8", "tflite_fp32")),
        _check("onnx_int8_over_fp32_size", ratio("onnx_int8", "onnx_fp32")),
        _check("tflite_int8_size_mb", size("tflite_int8") / 1e6 if size("tflite_int8") else None),
        _check("int8_over_dynamic_p50_1thread",
               p50["tflite_int8"] / p50["tflite_dynamic"] if "tflite_int8" in p50 and "tflite_dynamic" in p50 else None),
        _check("export_total_s", export_s),
    ]
    stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    report = {
        "benchmark": "export",
        "date": stamp,
        "run_dir": str(Path(args.run_dir).resolve()),
        "backbone": res.backbone,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()},
        "keras_accuracy": res.keras_accuracy,
        "n_verify": res.n_verify,
        "n_calib": res.n_calib,
        "export_sum_s": round(export_s, 2),
        "export_wall_s_incl_verification": round(wall, 2),
        "artifacts": [x.to_dict() for x in res.artifacts],
        "latency_1thread": lat,
        "checks": checks,
        "warnings": res.warnings,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    jpath = RESULTS / f"export_{stamp}.json"
    write_json(jpath, report)
    md = [
        f"# Export benchmark {stamp}",
        "",
        f"Run `{report['run_dir']}` ({res.backbone}); Keras float accuracy {res.keras_accuracy:.2f}% on {res.n_verify} "
        f"validation images; {res.n_calib} calibration images; {os.cpu_count()} CPU cores.",
        "",
        "## Artifacts",
        "",
        markdown_table(res.rows(), ROW_COLUMNS),
        "",
        "## Latency (1 thread, real validation images, LiteRT)",
        "",
        markdown_table([{"format": f, **{k: round(x, 2) if isinstance(x, float) else x for k, x in d.items()}} for f, d in lat.items()],
                       ["format", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_ips", "runs", "load_ms", "first_inference_ms"]),
        "",
        "## Targets (TARGETS.md)",
        "",
        markdown_table(checks, ["metric", "value", "target", "pass"]),
        "",
        f"Export time: {export_s:.1f} s converting + writing (sum over formats); {wall:.1f} s wall including loading, "
        "Keras reference predictions and verification of every artifact.",
        "",
    ]
    atomic_write_text(jpath.with_suffix(".md"), "\n".join(md))
    print(format_table(checks, ["metric", "value", "target", "pass"]))
    print(f"wrote {jpath} and {jpath.with_suffix('.md')}")
    return 0 if all(c["pass"] is not False for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
