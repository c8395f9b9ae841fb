"""Sweep benchmark (issue 15): the default ``edgetl sweep`` on a dataset, and the budgeted recommendation.

Usage::

    python -m benchmarks.sweep_bench ../shared/datasets/sign_digits [--work DIR] [--reuse SWEEP_DIR]

Runs ``edgetl sweep DATA --out WORK`` with the default grid (or reads a finished sweep with
``--reuse``), then checks the TARGETS rows: the sweep finishes within 20 minutes with >= 5 measured
candidates over >= 3 input resolutions, and under a latency budget of 0.6x Lite0@224's p50 the
recommended candidate loses <= 4 points (val, the split that chooses; test reported beside it)
against Lite0@224.

Writes ``benchmarks/results/sweep_<dataset>_<timestamp>.json``, ``.md`` and ``.png`` (the sweep's plot).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = "efficientnet_lite0_224x224"


def check(metric: str, value: float | None, op: str, target: float) -> dict:
    met = None if value is None else (value <= target if op == "<=" else value >= target)
    return {"metric": metric, "measured": value, "target": f"{op} {target}", "met": met}


def analyse(doc: dict, wall_s: float | None) -> dict:
    from edgetl.sweep import Candidate, recommend

    cands = [Candidate.from_dict(c) for c in doc["candidates"]]
    ok = [c for c in cands if c.ok]
    ref = next((c for c in ok if c.name == REFERENCE), None)
    out: dict = {"candidates": len(ok), "resolutions": len({c.image_size for c in ok}), "wall_s": wall_s, "checks": []}
    out["checks"].append(check("sweep wall time, s", wall_s, "<=", 1200.0))
    out["checks"].append(check("measured candidates", float(len(ok)), ">=", 5.0))
    out["checks"].append(check("input resolutions", float(out["resolutions"]), ">=", 3.0))
    if ref is None:
        out["note"] = f"{REFERENCE} was not measured: no budget check"
        return out
    budget = 0.6 * ref.p50_ms
    best, why = recommend(cands, max_latency_ms=budget)
    out["budget_ms"] = round(budget, 3)
    out["reference"] = ref.to_dict()
    out["recommended"] = best.to_dict() if best else None
    out["why"] = why
    loss = None if best is None else round(ref.val_accuracy - best.val_accuracy, 2)
    out["checks"].append(check(f"val points lost vs {REFERENCE} under 0.6x its p50", loss, "<=", 4.0))
    if best is not None and ref.test_accuracy is not None and best.test_accuracy is not None:
        out["test_points_lost"] = round(ref.test_accuracy - best.test_accuracy, 2)
    return out


def to_markdown(name: str, doc: dict, res: dict) -> str:
    from edgetl.sweep import to_markdown as sweep_md

    lines = [f"# Sweep benchmark: {name}", "", sweep_md(doc), "## Checks", "",
             "| metric | measured | target | met |", "| --- | --- | --- | --- |"]
    for c in res["checks"]:
        lines.append(f"| {c['metric']} | {c['measured']} | {c['target']} | {c['met']} |")
    if res.get("recommended"):
        r, ref = res["recommended"], res["reference"]
        lines += ["", f"Budget 0.6 x {REFERENCE} p50 = {res['budget_ms']} ms: recommended {r['name']} "
                      f"(val {r['val_accuracy']} %, test {r['test_accuracy']} %, p50 {r['p50_ms']} ms) vs {REFERENCE} "
                      f"(val {ref['val_accuracy']} %, test {ref['test_accuracy']} %, p50 {ref['p50_ms']} ms)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--work", type=Path, default=None, help="sweep output folder (default: a temp folder)")
    ap.add_argument("--reuse", type=Path, default=None, help="analyse a finished sweep folder instead of running one")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.reuse:
        sweep_dir = args.reuse
        doc = json.loads((sweep_dir / "sweep.json").read_text())
        wall = doc.get("wall_s")
    else:
        import tempfile

        sweep_dir = args.work or Path(tempfile.mkdtemp(prefix="edgetl-sweep-"))
        cmd = [sys.executable, "-m", "edgetl", "sweep", str(args.data), "--out", str(sweep_dir), "--overwrite", "--json"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = round(time.perf_counter() - t0, 1)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        doc = json.loads(proc.stdout)
    res = analyse(doc, wall)
    name = args.data.resolve().name
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"sweep_{name}_{stamp}"
    stem.with_suffix(".json").write_text(json.dumps({"dataset": str(args.data), "sweep": doc, "analysis": res}, indent=2))
    stem.with_suffix(".md").write_text(to_markdown(name, doc, res))
    if (sweep_dir / "sweep.png").is_file():
        shutil.copyfile(sweep_dir / "sweep.png", stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    print(f"wrote {stem}.json, .md and .png")
    return 0 if all(c["met"] for c in res["checks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
