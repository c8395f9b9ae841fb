"""Imbalanced-classes benchmark (issue 23): do edgetl's class-weight defaults earn their place?

Usage::

    python -m benchmarks.imbalance_bench ../shared/datasets/sign_digits [--ratio 10] [--work DIR]
        [--settings default,off,on,sqrt,balanced] [--scenarios prior-shift,same-prior] [--seeds 0]

Builds, from symlinks in a temporary folder (``../shared`` is never touched), a copy of the dataset
whose training classes are subsampled geometrically from the largest to ``1/ratio`` of it (class i
of k keeps ``ratio ** (-i / (k - 1))`` of its files, a seeded random choice), with val subsampled the
same way (val is drawn from the training distribution). A dataset without ``test/`` first gets one
from half of each class's val files (benchmarks/splits.py). Two test splits:

* ``prior-shift``: the test split untouched (balanced classes, as the TARGETS row asks);
* ``same-prior``: the test split subsampled like train (the deployed data is as unbalanced as the
  training data, the case of issue 23's 14:1 inspection set, where weights cost accuracy).

Then ``edgetl train --strategy feature-extraction`` (EfficientNet-Lite0) per setting: ``default``
(no flag), ``off``/``sqrt``/``on`` (``--class-weights``), ``balanced`` (``--objective balanced``),
and reports test accuracy (k/n, 95 % interval), balanced accuracy, macro-F1, the majority-class
baseline and what ``auto`` chose. The check (TARGETS, imbalanced data): the default's test accuracy
within 2 points of ``--class-weights off`` and its balanced accuracy not lower, or better on both.

Writes ``benchmarks/results/imbalance_<timestamp>.json`` and ``.md`` (after every run).
``python -m benchmarks.imbalance_bench --summarize FILE.json...`` prints the README table (runs of
every file pooled per scenario and setting: test images summed over seeds, other scores averaged).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.splits import IMAGE_SUFFIXES, accuracy_cell, with_test_split

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"default": [], "off": ["--class-weights", "off"], "sqrt": ["--class-weights", "sqrt"],
            "on": ["--class-weights", "on"], "balanced": ["--objective", "balanced"],
            "off-balanced": ["--class-weights", "off", "--objective", "balanced"]}


def _files(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)


def imbalanced_copy(data: Path, out: Path, ratio: float, seed: int, subsample_test: bool) -> dict[str, dict[str, int]]:
    """Symlinked ``train/ val/ test/`` under ``out`` (see the module docstring); returns the counts."""
    data = data.resolve()
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    k = len(classes)
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        if not (data / split).is_dir():
            continue
        counts[split] = {}
        for i, cls in enumerate(classes):
            files = _files(data / split / cls)
            keep = files
            if split != "test" or subsample_test:
                frac = ratio ** (-i / (k - 1)) if k > 1 else 1.0
                n = max(1, round(len(files) * frac))
                keep = sorted(random.Random(f"{seed}-{split}-{cls}").sample(files, n))
            d = out / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for f in keep:
                os.symlink(f, d / f.name)
            counts[split][cls] = len(keep)
    return counts


def run_one(data: Path, out: Path, flags: list[str], seed: int) -> dict:
    cmd = [sys.executable, "-m", "edgetl", "train", str(data), "--strategy", "feature-extraction", "--out", str(out),
           "--seed", str(seed), "--quiet", "--overwrite", *flags]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "wall_seconds": wall}
    m = json.loads((out / "metrics.json").read_text())
    base = m.get("majority_baseline") or {}
    cw = m.get("class_weighting") or {}
    res = {"wall_seconds": round(wall, 1), "class_weighting": cw.get("chosen"), "class_weighting_reason": cw.get("reason"),
           "class_weighting_candidates": cw.get("candidates"), "objective": m.get("objective"),
           "epochs_head": m["epochs_run"]["head"]}
    for split in ("val", "test"):
        s = m.get(split) or {}
        res[split] = {k: s.get(k) for k in ("accuracy", "correct", "total", "balanced_accuracy", "macro_f1")}
        res[split]["majority_accuracy"] = (base.get(split) or {}).get("accuracy")
    return res


def compare(default: dict, off: dict) -> dict:
    """The TARGETS check of the default against ``--class-weights off`` on test."""
    d, o = default["test"], off["test"]
    acc_pt = 100 * (d["accuracy"] - o["accuracy"])
    bal_pt = 100 * (d["balanced_accuracy"] - o["balanced_accuracy"])
    met = (acc_pt >= -2.0 and bal_pt >= 0) or (acc_pt > 0 and bal_pt > 0)
    return {"test_accuracy_pt_vs_off": round(acc_pt, 2), "test_balanced_pt_vs_off": round(bal_pt, 2), "met": met}


def markdown(doc: dict) -> str:
    meta = doc["meta"]
    lines = [f"# edgetl imbalance benchmark {meta['stamp']}", "",
             f"`{meta['command']}`", "",
             f"{meta['dataset']}, training and val classes subsampled geometrically to {meta['ratio']:g}:1 "
             f"(train counts {meta.get('counts', {}).get('train')}); feature extraction, {meta['backbone']}; CPU: {meta['cpu']}.",
             "Test: `prior-shift` keeps the shipped (balanced) test split, `same-prior` subsamples it like train.", "",
             "| scenario | seed | setting | class weights kept | test accuracy | balanced accuracy | macro-F1 | "
             "majority baseline | val accuracy | val balanced | head epochs | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["runs"]:
        if "error" in r:
            lines.append(f"| {r['scenario']} | {r['seed']} | {r['setting']} | error: {r['error']} |" + " |" * 8)
            continue
        t, v = r["test"], r["val"]
        maj = f"{100 * t['majority_accuracy']:.2f} %" if t.get("majority_accuracy") is not None else "-"
        lines.append(f"| {r['scenario']} | {r['seed']} | {r['setting']} | {r['class_weighting']} | "
                     f"{accuracy_cell(t['correct'], t['total'])} | {100 * t['balanced_accuracy']:.2f} % | {t['macro_f1']:.3f} | "
                     f"{maj} | {v['correct']}/{v['total']} | {100 * v['balanced_accuracy']:.2f} % | {r['epochs_head']} | "
                     f"{r['wall_seconds']} |")
    if doc["checks"]:
        lines += ["", "Check (TARGETS): default vs `--class-weights off` on test: accuracy within 2 pt and balanced "
                  "accuracy not lower, or better on both.", "",
                  "| scenario | seed | setting | test accuracy vs off, pt | balanced accuracy vs off, pt | met |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for c in doc["checks"]:
            lines.append(f"| {c['scenario']} | {c['seed']} | {c['setting']} | {c['test_accuracy_pt_vs_off']:+.2f} | "
                         f"{c['test_balanced_pt_vs_off']:+.2f} | {'yes' if c['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def summarize(paths: list[Path]) -> str:
    """The README table: per scenario and setting, pooled over every seed of the given result files."""
    runs, checks = [], []
    for p in paths:
        doc = json.loads(Path(p).read_text(encoding="utf-8"))
        runs += [r for r in doc["runs"] if "error" not in r]
        checks += doc["checks"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["setting"]), []).append(r)
    lines = ["| test split | setting | seeds | class weights kept | test accuracy (pooled) | balanced accuracy | macro-F1 | "
             "majority baseline | default/setting vs off: accuracy, balanced (pt, mean) | target met |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (scenario, setting), rs in groups.items():
        k, n = sum(r["test"]["correct"] for r in rs), sum(r["test"]["total"] for r in rs)
        mean = lambda key: sum(r["test"][key] for r in rs) / len(rs)  # noqa: E731
        cs = [c for c in checks if c["scenario"] == scenario and c["setting"] == setting]
        vs = (f"{sum(c['test_accuracy_pt_vs_off'] for c in cs) / len(cs):+.2f}, "
              f"{sum(c['test_balanced_pt_vs_off'] for c in cs) / len(cs):+.2f}") if cs else "-"
        met = f"{sum(bool(c['met']) for c in cs)}/{len(cs)}" if cs else "-"
        kept = ", ".join(sorted({str(r["class_weighting"]) for r in rs}))
        maj = [r["test"]["majority_accuracy"] for r in rs if r["test"].get("majority_accuracy") is not None]
        maj_cell = f"{100 * sum(maj) / len(maj):.2f} %" if maj else "-"
        lines.append(f"| {scenario} | {setting} | {','.join(str(r['seed']) for r in rs)} | {kept} | {accuracy_cell(k, n)} | "
                     f"{100 * mean('balanced_accuracy'):.2f} % | {mean('macro_f1'):.3f} | {maj_cell} | {vs} | {met} |")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    from edgetl.runtime.env import cpu_info

    return str(cpu_info().get("model") or "unknown")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--summarize":
        print(summarize([Path(p) for p in argv[1:]]), end="")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--settings", default="default,off,on,balanced")
    ap.add_argument("--scenarios", default="prior-shift,same-prior")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir():
        raise SystemExit(f"{args.data}: expected train/ (and val/, test/) class folders")
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="imbalance-bench-"))
    source = with_test_split(args.data, work)  # a dataset without test/: val halved by name (benchmarks/splits.py)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / f"imbalance_{stamp}.json", args.out / f"imbalance_{stamp}.md"
    doc: dict = {"meta": {"stamp": stamp, "command": "python -m benchmarks.imbalance_bench " + " ".join(argv),
                          "dataset": args.data.resolve().name, "ratio": args.ratio, "backbone": "efficientnet_lite0",
                          "cpu": _cpu(), "settings": settings}, "runs": [], "checks": []}
    for scenario in args.scenarios.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            data = work / f"{scenario}-s{seed}"
            if not data.exists():
                doc["meta"].setdefault("counts", imbalanced_copy(source, data, args.ratio, seed, scenario == "same-prior"))
            by_setting = {}
            for setting in settings:
                print(f"[{scenario} seed {seed}] {setting} ...", flush=True)
                r = {"scenario": scenario, "seed": seed, "setting": setting,
                     **run_one(data, work / "runs" / f"{scenario}-s{seed}-{setting}", SETTINGS[setting], seed)}
                doc["runs"].append(r)
                by_setting[setting] = r
                print(json.dumps({k: r.get(k) for k in ("test", "class_weighting", "wall_seconds", "error")}), flush=True)
                json_path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
                md_path.write_text(markdown(doc), encoding="utf-8")
            off = by_setting.get("off")
            for setting, r in by_setting.items():
                if setting != "off" and off and "error" not in off and "error" not in r:
                    doc["checks"].append({"scenario": scenario, "seed": seed, "setting": setting, **compare(r, off)})
            json_path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
            md_path.write_text(markdown(doc), encoding="utf-8")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
