"""int8 fidelity across seeds (issue 25): the worst and the median seed, LiteRT and ONNX Runtime, on test.

Usage::

    python -m benchmarks.int8_seeds ../shared/datasets/sign_digits [--strategies feature-extraction]
        [--seeds 0,1,2] [--train-fraction 0.2] [--work DIR] [--train-only]

For each strategy and seed: train with edgetl's defaults and ``--seed`` (a run already in ``--work``
is reused), then :func:`benchmarks.int8_bench.bench_strategy` (``export --int8`` as a user would,
doctor included and timed; every shipped int8 file against the Keras model on the test split, with
the float model's low-margin share). ``--train-fraction 0.2`` builds the low-margin case: a symlinked
copy of the dataset whose ``train/`` keeps the first 20 % of each class's files (sorted by name);
val and test are unchanged. The p50 of int8 vs fp32 is measured per runtime (LiteRT, ONNX Runtime;
1 thread, side by side) on this machine's CPU, named in the output.

Writes ``benchmarks/results/int8_seeds_<dataset>_<timestamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def subset_train(data: Path, fraction: float, work: Path) -> Path:
    """A symlinked copy of ``data`` whose train/ keeps the first ``fraction`` of each class (sorted names)."""
    data = Path(data).resolve()
    out = work / f"{data.name}_train{int(round(100 * fraction))}"
    if out.exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    for split in ("val", "test"):
        if (data / split).is_dir():
            os.symlink(data / split, tmp / split, target_is_directory=True)
    for cls in sorted(p for p in (data / "train").iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        d = tmp / "train" / cls.name
        d.mkdir(parents=True, exist_ok=True)
        for f in files[: max(1, math.ceil(fraction * len(files)))]:
            os.symlink(f, d / f.name)
    tmp.rename(out)
    return out


def train_seed(data: Path, strategy: str, seed: int, out: Path) -> Path:
    from edgetl.config import TrainConfig
    from edgetl.train import train

    if (out / "model.keras").is_file():
        print(f"reusing {out}", flush=True)
        return out
    t0 = time.perf_counter()
    res = train(TrainConfig(data_dir=str(data.resolve()), strategy=strategy, out=str(out), seed=seed))
    print(f"trained {strategy} seed {seed} in {time.perf_counter() - t0:.0f} s: {res.summary()}", flush=True)
    return out


def summarize(rows: list[dict]) -> dict:
    """Per strategy and format: worst and median over seeds of agreement, drop, size ratio, p50 ratio."""
    out: dict = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        rs = [r for r in rows if r["strategy"] == strategy]
        s: dict = {"seeds": [r["seed"] for r in rs],
                   "low_margin_pct": [r.get("low_margin_pct") for r in rs],
                   "export_int8_s_max": max(r["export_int8_s"] for r in rs)}
        for fmt in ("tflite_int8", "onnx_int8"):
            arts = [r["artifacts"][fmt] for r in rs if fmt in r["artifacts"]]
            if not arts:
                continue
            agree = [a["agreement_pct"] for a in arts]
            drop = [a["drop_pt"] for a in arts]
            size = [a["size_over_fp32"] for a in arts if a["size_over_fp32"] is not None]
            ratio = [a["int8_over_fp32_p50"] for a in arts if a.get("int8_over_fp32_p50") is not None]
            s[fmt] = {"agreement_worst": min(agree), "agreement_median": round(float(np.median(agree)), 2),
                      "drop_worst": max(drop), "drop_median": round(float(np.median(drop)), 2),
                      "size_worst": max(size) if size else None,
                      "int8_over_fp32_p50_median": round(float(np.median(ratio)), 3) if ratio else None,
                      "remedies": [a["remedy"] for a in arts]}
        out[strategy] = s
    return out


def _markdown(result: dict) -> str:
    lines = [f"# int8 across seeds on {result['dataset']} (test split), {result['date']}", "",
             f"Seeds measured: {', '.join(f'{s} seed {k}' for s, k in result['seeds_done'])} (of seeds {result['seeds']}).", "",
             f"CPU: {result['cpu']} (shared, 2 cores); p50 at 1 thread, int8 and fp32 timed side by side per runtime. "
             "Budgets: worst seed agreement >= 99.0 %, drop <= 0.5 pt, size <= 0.40 of fp32, export --int8 <= 360 s.", "",
             "| strategy | seed | float test acc | low-margin share | file | remedy | agreement | drop pt | size/fp32 | p50 int8 / fp32 ms | export s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        kt = r["keras_test"]
        for fmt, a in r["artifacts"].items():
            p50 = f"{a['int8_p50_ms']:.2f} / {a['fp32_p50_ms']:.2f} ({a['int8_over_fp32_p50']:.2f}x)" if a.get("int8_p50_ms") else "-"
            lines.append(f"| {r['strategy']} | {r['seed']} | {kt['accuracy']} ({kt['k']}/{kt['n']}) | {r.get('low_margin_pct')} % "
                         f"| {a['file']} | {a['remedy'] or 'plain'} | {a['agreement_pct']} | {a['drop_pt']} | {a['size_over_fp32']} "
                         f"| {p50} | {r['export_int8_s']} |")
    lines += ["", "| strategy | runtime | worst agreement | median agreement | worst drop pt | worst size/fp32 | median p50 int8/fp32 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for strategy, s in result["summary"].items():
        for fmt in ("tflite_int8", "onnx_int8"):
            if fmt in s:
                f = s[fmt]
                lines.append(f"| {strategy} | {'LiteRT' if fmt.startswith('tflite') else 'ONNX Runtime'} | {f['agreement_worst']} "
                             f"| {f['agreement_median']} | {f['drop_worst']} | {f['size_worst']} | {f['int8_over_fp32_p50_median']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--strategies", default="feature-extraction,fine-tune")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-fraction", type=float, default=None, help="keep this fraction of each class's training files")
    ap.add_argument("--work", type=Path, required=True, help="where runs and exports go (runs found there are reused)")
    ap.add_argument("--train-only", action="store_true", help="train the runs and stop")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.int8_bench import bench_strategy
    from benchmarks.splits import with_test_split
    from edgetl.runtime.env import cpu_info

    args.work.mkdir(parents=True, exist_ok=True)
    data = with_test_split(args.data, args.work)
    name = args.data.name
    if args.train_fraction:
        data = subset_train(data, args.train_fraction, args.work)
        name = data.name
    seeds = [int(s) for s in args.seeds.split(",")]
    from edgetl.report import atomic_write_text

    now = _dt.datetime.now()
    stem = RESULTS / f"int8_seeds_{name}_{now:%Y%m%d-%H%M%S}"
    rows: list[dict] = []
    for strategy in args.strategies.split(","):
        for seed in seeds:
            run_dir = train_seed(data, strategy, seed, args.work / f"run_{name}_{strategy}_s{seed}")
            if args.train_only:
                continue
            print(f"== {strategy} seed {seed}: {run_dir}", flush=True)
            work = args.work / f"bench_{name}_{strategy}_s{seed}"
            work.mkdir(exist_ok=True)
            row = bench_strategy(data, strategy, run_dir, work, runtimes=True)
            row["seed"] = seed
            rows.append(row)
            # written after every seed: a run cut short keeps what it measured
            result = {"dataset": name, "date": now.isoformat(timespec="seconds"),
                      "cpu": cpu_info().get("model", platform.processor()), "python": platform.python_version(),
                      "seeds": seeds, "seeds_done": [(r["strategy"], r["seed"]) for r in rows],
                      "rows": rows, "summary": summarize(rows)}
            RESULTS.mkdir(exist_ok=True)
            atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2, default=str))
            atomic_write_text(stem.with_suffix(".md"), _markdown(result))
            print(_markdown(result), flush=True)
            print(f"wrote {stem}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
