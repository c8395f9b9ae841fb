"""int8 fidelity benchmark (issue 11): does the shipped int8 file behave like the float model, on a test split?

Usage::

    python -m benchmarks.int8_bench ../shared/datasets/sign_digits [--strategies feature-extraction,fine-tune]
        [--run feature-extraction=RUN_DIR ...] [--work DIR]

For each strategy: train with edgetl's defaults (or reuse ``--run``), run ``export --int8`` as a user
would (automatic doctor, default budgets) and time it, then on the dataset's ``test/`` split (no choice
saw it) compare every shipped int8 file with the Keras model: top-1 agreement, accuracy change (with
k/n and a 95 % Wilson interval), size vs fp32, and the p50 latency (1 thread, ``edgetl bench``'s timer)
of the shipped int8 TFLite vs a plain full-int8 conversion and vs fp32, measured side by side.

Writes ``benchmarks/results/int8_<dataset>_<timestamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results"

from benchmarks.splits import wilson  # noqa: E402 - one definition, shared by the benchmarks

#: (op, value) per row, from ../shared/TARGETS.md
TARGETS = {
    "agreement_pct": (">=", 99.0),
    "drop_pt": ("<=", 0.5),
    "size_over_fp32": ("<=", 0.40),
    "shipped_over_plain_int8_p50": ("<=", 1.15),
    "shipped_over_fp32_p50": ("<=", 1.25),
    "export_int8_s": ("<=", 360.0),
}


def _met(key: str, value: float | None) -> bool | None:
    if value is None or key not in TARGETS:
        return None
    op, target = TARGETS[key]
    return value >= target if op == ">=" else value <= target


def _test_images(run, data: Path):
    from edgetl.data import load_dataset
    from edgetl.export.api import prepare_images

    ds = load_dataset(str(data), validate=False)
    if ds.test is None or not ds.test.samples:
        raise SystemExit(f"{data} has no test/ split")
    px, y, _ = prepare_images(list(ds.test.samples), run.preprocessing)
    return px, y


def _train(data: Path, strategy: str, out: Path) -> Path:
    from edgetl.config import TrainConfig
    from edgetl.train import train

    if (out / "model.keras").is_file():
        print(f"reusing {out}", flush=True)
        return out
    t0 = time.perf_counter()
    res = train(TrainConfig(data_dir=str(data.resolve()), strategy=strategy, out=str(out)))
    print(f"trained {strategy} in {time.perf_counter() - t0:.0f} s: {res.summary()}", flush=True)
    return out


def _accuracy_row(probs: np.ndarray, y: np.ndarray) -> dict:
    k = int((probs.argmax(1) == y).sum())
    return {"k": k, "n": int(len(y)), "accuracy": round(100 * k / max(1, len(y)), 2), "ci95": wilson(k, len(y))}


def bench_strategy(data: Path, strategy: str, run_dir: Path, work: Path, runtimes: bool = False) -> dict:
    """One strategy's row. ``runtimes``: also each int8 file's p50 vs its fp32 file on the same runtime
    (LiteRT, ONNX Runtime; 1 thread, paired interleaved timing) and the float model's low-margin share on test."""
    from edgetl.bench import quick_latency
    from edgetl.export.api import ExportConfig, export_run
    from edgetl.run import load_run
    from edgetl.runtime.keras_runner import KerasRunner
    from edgetl.runtime.loader import runner_for

    run = load_run(run_dir)
    out = work / f"export_{strategy}"
    t0 = time.perf_counter()
    res = export_run(run_dir, ExportConfig(int8=True, out_dir=str(out)), progress=lambda s: print("   ", s, flush=True))
    export_s = time.perf_counter() - t0
    plain = rtn_dir = None
    if not runtimes:  # the seeds benchmark skips these two extra exports (time)
        plain_dir = work / f"plain_{strategy}"
        export_run(run_dir, ExportConfig(formats=("tflite_int8",), doctor=False, quant_report=False, out_dir=str(plain_dir)))
        plain = next(plain_dir.glob("*_int8.tflite"))
        # the converters' own int8 (round-to-nearest weights), for the record: what edgetl's PTQ improved on
        rtn_dir = work / f"nearest_{strategy}"
        export_run(run_dir, ExportConfig(formats=("tflite_int8", "onnx_int8"), doctor=False, quant_report=False,
                                         rounding="nearest", out_dir=str(rtn_dir)))

    px, y = _test_images(run, data)
    ref = KerasRunner(run.load_model(), run.labels, run.preprocessing).predict(px)
    from edgetl.export.verify import low_margin

    lm = low_margin(ref)
    row: dict = {"strategy": strategy, "run": str(run_dir), "export_int8_s": round(export_s, 1),
                 "keras_test": _accuracy_row(ref, y), "doctor": res.doctor, "artifacts": {},
                 "low_margin_pct": lm["share_pct"] if lm else None, "low_margin_val": res.low_margin}
    sizes = {a.format: a.size_bytes for a in res.artifacts if a.error is None}
    fp32_tflite = next(Path(a.path) for a in res.artifacts if a.format == "tflite_fp32")
    lat = {} if plain is None else {"fp32": quick_latency(fp32_tflite, px[:1], min_runs=50, min_time=3.0)["p50_ms"],
                                    "plain_int8": quick_latency(plain, px[:1], min_runs=50, min_time=3.0)["p50_ms"]}
    for a in res.artifacts:
        if a.format not in ("tflite_int8", "onnx_int8") or a.error:
            continue
        probs = runner_for(a.path, threads=None).predict(px)
        acc = _accuracy_row(probs, y)
        agree = round(100 * float((probs.argmax(1) == ref.argmax(1)).mean()), 2)
        fp32_fmt = a.format.replace("int8", "fp32")
        entry = {"file": Path(a.path).name, "remedy": a.remedy, "float_nodes": a.quantization.get("float_nodes", []),
                 "test": acc, "agreement_pct": agree, "drop_pt": round(row["keras_test"]["accuracy"] - acc["accuracy"], 2),
                 "val_agreement_pct": a.verification.agreement if a.verification else None,
                 "size_over_fp32": round(a.size_bytes / sizes[fp32_fmt], 3) if sizes.get(fp32_fmt) else None}
        if a.format == "tflite_int8" and lat:
            p50 = quick_latency(a.path, px[:1], min_runs=50, min_time=3.0)["p50_ms"]
            entry.update({"p50_ms": p50, "plain_int8_p50_ms": lat["plain_int8"], "fp32_p50_ms": lat["fp32"],
                          "shipped_over_plain_int8_p50": round(p50 / lat["plain_int8"], 3),
                          "shipped_over_fp32_p50": round(p50 / lat["fp32"], 3)})
        fp32_path = next((Path(b.path) for b in res.artifacts if b.format == fp32_fmt and b.error is None), None)
        if runtimes and fp32_path is not None:
            from edgetl.runtime.timing import paired_latency

            t = paired_latency([fp32_path, a.path], px[:1], threads=1, repeats=9, runs_per_block=10)
            entry.update({"int8_p50_ms": round(t.p50(1), 3), "fp32_p50_ms": round(t.p50(0), 3),
                          "int8_over_fp32_p50": round(t.ratio(1, 0), 3), "timing": "paired, 1 thread, 9 x 10 runs"})
        entry["met"] = {k: _met(k, entry.get(k)) for k in TARGETS if k in entry}
        row["artifacts"][a.format] = entry
    row["round_to_nearest"] = {}
    for f in sorted(rtn_dir.glob("*_int8.*")) if rtn_dir else []:
        if f.suffix not in (".tflite", ".onnx"):
            continue
        probs = runner_for(f, threads=None).predict(px)
        row["round_to_nearest"][f.name] = {"test": _accuracy_row(probs, y), "agreement_pct": round(
            100 * float((probs.argmax(1) == ref.argmax(1)).mean()), 2)}
    row["met"] = {"export_int8_s": _met("export_int8_s", export_s)}
    return row


def _markdown(result: dict) -> str:
    lines = [f"# int8 fidelity on {result['dataset']} (test split), {result['date']}", "",
             f"CPU: {result['cpu']}; edgetl defaults; budgets: agreement >= 99.0 %, drop <= 0.5 pt, size <= 0.40 of fp32, "
             "shipped int8 TFLite p50 <= 1.15x plain int8 and <= 1.25x fp32 (1 thread).", "",
             "| strategy | file | remedy | float test acc (k/n, 95 % CI) | int8 test acc (k/n, 95 % CI) | agreement | drop pt | size/fp32 | p50 ms (plain int8, fp32) | export s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        kt = r["keras_test"]
        for fmt, a in r["artifacts"].items():
            t = a["test"]
            mark = lambda key: "" if a["met"].get(key) is None else (" ✓" if a["met"][key] else " ✗")  # noqa: E731
            p50 = (f"{a['p50_ms']:.1f} ({a['plain_int8_p50_ms']:.1f}, {a['fp32_p50_ms']:.1f})" if "p50_ms" in a else "-")
            lines.append(
                f"| {r['strategy']} | {a['file']} | {a['remedy'] or 'plain'} | {kt['accuracy']} ({kt['k']}/{kt['n']}, {kt['ci95'][0]}-{kt['ci95'][1]}) "
                f"| {t['accuracy']} ({t['k']}/{t['n']}, {t['ci95'][0]}-{t['ci95'][1]}) | {a['agreement_pct']}{mark('agreement_pct')} "
                f"| {a['drop_pt']}{mark('drop_pt')} | {a['size_over_fp32']}{mark('size_over_fp32')} | {p50} | {r['export_int8_s']} |")
    lines += ["", "The converters' own int8 (round-to-nearest weights, no doctor), same test images:", "",
              "| strategy | file | int8 test acc (k/n) | agreement |", "| --- | --- | --- | --- |"]
    for r in result["rows"]:
        for name, a in r.get("round_to_nearest", {}).items():
            lines.append(f"| {r['strategy']} | {name} | {a['test']['accuracy']} ({a['test']['k']}/{a['test']['n']}) | {a['agreement_pct']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--strategies", default="feature-extraction,fine-tune")
    ap.add_argument("--run", action="append", default=[], help="STRATEGY=RUN_DIR: reuse a trained run")
    ap.add_argument("--work", type=Path, default=None, help="where runs and exports go (default: a temp folder)")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgetl.runtime.env import cpu_info

    reuse = dict(item.split("=", 1) for item in args.run)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgetl-int8-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for strategy in args.strategies.split(","):
        run_dir = Path(reuse[strategy]) if strategy in reuse else _train(args.data, strategy, work / f"run_{strategy}")
        print(f"== {strategy}: {run_dir}", flush=True)
        rows.append(bench_strategy(args.data, strategy, run_dir, work))
    now = _dt.datetime.now()
    result = {"dataset": args.data.name, "date": now.isoformat(timespec="seconds"), "cpu": cpu_info().get("model", platform.processor()),
              "python": platform.python_version(), "targets": TARGETS, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"int8_{args.data.name}_{now:%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    stem.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
