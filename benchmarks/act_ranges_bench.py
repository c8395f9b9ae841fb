"""Activation ranges and calibration sets for int8, across trained runs (issue 25, item 1).

Usage::

    python -m benchmarks.act_ranges_bench DATA RUN_DIR [RUN_DIR ...] --work DIR
        [--tflite minmax,mse,percentile] [--onnx minmax,mse,percentile,entropy] [--low-margin]

For each run (trained by ``edgetl train`` on ``DATA``, which must have a ``test/`` split: use the
folder :func:`benchmarks.splits.with_test_split` made): one export context as ``export --int8``
builds it (300 stratified calibration images, GPTQ on 64 of them, shared by every candidate), then
each int8 file with the named activation-range method (``QuantizationConfig.calib_method``; no
doctor). ``--low-margin`` adds the candidate "calibration set enriched with the float model's
low-margin training images": the :data:`LOW_MARGIN_IMAGES` training images with the smallest
top-2 margin replace as many of the stratified sample (GPTQ and ranges both see them), min/max
ranges. Every file is compared with the Keras model on val (what the export verifies on) and on
test (seen by no choice): top-1 agreement.

Writes ``benchmarks/results/act_ranges_<dataset>_<timestamp>.json`` and ``.md`` after every run.
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
LOW_MARGIN_IMAGES = 100


def _context(run_dir: Path, out: Path, calib_override=None):
    """(ExportContext as export_run builds it for ``--int8``, test pixels, test labels, Keras test probs)."""
    from edgetl.data import stratified_sample
    from edgetl.export.api import ExportConfig, _load_data
    from edgetl.export.artifacts import ExportContext, prepare_images
    from edgetl.export.verify import accuracy
    from edgetl.run import load_run
    from edgetl.runtime.keras_runner import KerasRunner

    run = load_run(run_dir)
    cfg = ExportConfig(int8=True, out_dir=str(out))
    ds, err, _ = _load_data(run, cfg, lambda s: None)
    if ds is None or ds.test is None or not ds.test.samples:
        raise SystemExit(f"{run_dir}: data with a test/ split needed ({err or 'no test split'})")
    train = list(ds.train.samples)
    calib = prepare_images(stratified_sample(train, cfg.calib_samples, seed=cfg.seed), run.preprocessing)[0]
    val_px, val_y, _ = prepare_images(list(ds.val.samples), run.preprocessing)
    test_px, test_y, _ = prepare_images(list(ds.test.samples), run.preprocessing)
    model = run.load_model()
    keras = KerasRunner(model, run.labels, run.preprocessing)
    ref, ref_test = keras.predict(val_px), keras.predict(test_px)
    out.mkdir(parents=True, exist_ok=True)
    ctx = ExportContext(run, model, cfg, out, calib, train, val_px, val_y, ref, accuracy(ref, val_y),
                        lambda s: print("   ", s, flush=True))
    return ctx, test_px, test_y, ref_test


def _low_margin_calibration(ctx) -> tuple[np.ndarray, dict]:
    """The stratified calibration sample with its last LOW_MARGIN_IMAGES replaced by the training images
    on which the float model's top-2 margin is smallest (none of them already in the sample)."""
    from edgetl.export.artifacts import prepare_images
    from edgetl.runtime.keras_runner import KerasRunner

    px = prepare_images(ctx.train_samples, ctx.run.preprocessing)[0]
    probs = KerasRunner(ctx.model, ctx.run.labels, ctx.run.preprocessing).predict(px)
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    order = np.argsort(margin, kind="stable")
    calib = ctx.calib_px
    keep = calib[: len(calib) - LOW_MARGIN_IMAGES]
    seen = {x.tobytes()[:4096] for x in keep}
    extra = [px[i] for i in order if px[i].tobytes()[:4096] not in seen][:LOW_MARGIN_IMAGES]
    picked_margin = np.sort(margin)[:LOW_MARGIN_IMAGES]
    info = {"images": len(extra), "max_margin": round(float(picked_margin[-1]), 4),
            "train_low_margin_share_pct": round(100 * float(np.mean(margin < 0.05)), 2)}
    return np.concatenate([keep, np.stack(extra)]), info


def _agreement(path: Path, px: np.ndarray, ref: np.ndarray) -> dict:
    from edgetl.runtime.loader import runner_for

    probs = runner_for(path, threads=None).predict(px)
    k = int((probs.argmax(1) == ref.argmax(1)).sum())
    return {"k": k, "n": int(len(px)), "pct": round(100 * k / max(1, len(px)), 2)}


def _candidate(ctx, fmt_name: str, method: str, path: Path, test_px, ref_test) -> dict:
    from edgetl.export.artifacts import make_artifact
    from edgetl.formats import FORMATS

    quant = ctx.config.int8_quant().with_(calib_method=method)
    t0 = time.perf_counter()
    art = make_artifact(ctx, FORMATS[fmt_name], path, quant=quant, verify=False)
    build_s = time.perf_counter() - t0
    if art.error:
        return {"error": art.error}
    return {"val": _agreement(path, ctx.val_px, ctx.ref), "test": _agreement(path, test_px, ref_test),
            "build_s": round(build_s, 1), "notes": [n for n in art.notes if "activation ranges" in n]}


def bench_run(run_dir: Path, work: Path, tflite_methods: list[str], onnx_methods: list[str], low_margin: bool) -> dict:
    from edgetl.export.verify import low_margin as lm_share

    out = work / run_dir.name
    ctx, test_px, test_y, ref_test = _context(run_dir, out)
    row: dict = {"run": str(run_dir), "low_margin_val_pct": (lm_share(ctx.ref) or {}).get("share_pct"),
                 "low_margin_test_pct": (lm_share(ref_test) or {}).get("share_pct"), "candidates": {}}
    for fmt_name, methods in (("tflite_int8", tflite_methods), ("onnx_int8", onnx_methods)):
        for m in methods:
            ext = ".tflite" if fmt_name.startswith("tflite") else ".onnx"
            r = _candidate(ctx, fmt_name, m, out / f"{m}_int8{ext}", test_px, ref_test)
            row["candidates"][f"{fmt_name}/{m}"] = r
            print(f"  {run_dir.name} {fmt_name} {m}: {r}", flush=True)
    if low_margin:
        import copy

        calib, info = _low_margin_calibration(ctx)
        row["low_margin_calibration"] = info
        ctx2 = copy.copy(ctx)
        ctx2.calib_px, ctx2.quant_models, ctx2.calibrated, ctx2.onnx_fp32 = calib, {}, {}, ctx.onnx_fp32
        for fmt_name, ext in (("tflite_int8", ".tflite"), ("onnx_int8", ".onnx")):
            r = _candidate(ctx2, fmt_name, "minmax", out / f"lowmargin_int8{ext}", test_px, ref_test)
            row["candidates"][f"{fmt_name}/low-margin calibration"] = r
            print(f"  {run_dir.name} {fmt_name} low-margin calibration: {r}", flush=True)
    return row


def _markdown(result: dict) -> str:
    lines = [f"# int8 activation ranges and calibration sets on {result['dataset']}, {result['date']}", "",
             f"CPU: {result['cpu']}. Agreement = top-1 agreement with the Keras model (k/n), val (the export's "
             "verification split) and test (seen by no choice). GPTQ weights in every file; no doctor.", "",
             "| run | low-margin share val / test | file / ranges | val agreement | test agreement | build s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        for name, c in r["candidates"].items():
            if "error" in c:
                lines.append(f"| {Path(r['run']).name} | | {name} | error: {c['error'][:80]} | | |")
                continue
            lines.append(f"| {Path(r['run']).name} | {r['low_margin_val_pct']} / {r['low_margin_test_pct']} % | {name} "
                         f"| {c['val']['pct']} ({c['val']['k']}/{c['val']['n']}) | {c['test']['pct']} ({c['test']['k']}/{c['test']['n']}) "
                         f"| {c['build_s']} |")
    names = list(dict.fromkeys(n for r in result["rows"] for n in r["candidates"]))
    lines += ["", "Change vs the default (min/max) of the same runtime, in images (val + test), per run:", "",
              "| file / ranges | " + " | ".join(Path(r["run"]).name for r in result["rows"]) + " | runs better / worse |",
              "| --- | " + " | ".join("---" for _ in result["rows"]) + " | --- |"]
    for name in names:
        base = name.split("/")[0] + "/minmax"
        if name == base:
            continue
        cells, better, worse = [], 0, 0
        for r in result["rows"]:
            c, b = r["candidates"].get(name), r["candidates"].get(base)
            if not c or not b or "error" in c or "error" in b:
                cells.append("-")
                continue
            d = (c["val"]["k"] + c["test"]["k"]) - (b["val"]["k"] + b["test"]["k"])
            better, worse = better + (d > 0), worse + (d < 0)
            cells.append(f"{d:+d} (val {c['val']['k'] - b['val']['k']:+d}, test {c['test']['k'] - b['test']['k']:+d})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {better} / {worse} |")
    return "\n".join(lines) + "\n"


def _merge(files: list[Path], name: str) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgetl.report import atomic_write_text

    parts = [json.loads(Path(f).read_text()) for f in files]
    result = {"dataset": name, "date": _dt.datetime.now().isoformat(timespec="seconds"), "cpu": parts[0]["cpu"],
              "merged_from": [Path(f).name for f in files], "rows": [r for p in parts for r in p["rows"]]}
    stem = RESULTS / f"act_ranges_{name}_{_dt.datetime.now():%Y%m%d-%H%M%S}-merged"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2, default=str))
    atomic_write_text(stem.with_suffix(".md"), _markdown(result) + "\nMerged from " + ", ".join(result["merged_from"]) + ".\n")
    print(_markdown(result))
    print(f"wrote {stem}.json and .md")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="the dataset folder the runs were trained on (for the results name)")
    ap.add_argument("runs", type=Path, nargs="*")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="write one results file from earlier results files of this benchmark (no runs)")
    ap.add_argument("--tflite", default="minmax,mse,percentile")
    ap.add_argument("--onnx", default="minmax,mse,percentile,entropy")
    ap.add_argument("--low-margin", action="store_true")
    ap.add_argument("--low-margin-only", default=None, metavar="TEXT",
                    help="the low-margin candidate only for the runs whose folder name contains TEXT")
    ap.add_argument("--name", default=None, help="results file name part (default: the data folder's name)")
    args = ap.parse_args(argv)
    if args.merge:
        return _merge(args.merge, args.name or args.data.name)
    if not args.runs or args.work is None:
        print("runs and --work are needed (or --merge)", file=sys.stderr)
        return 2
    for r in args.runs:
        if not (r / "model.keras").is_file():
            print(f"not a trained run: {r}", file=sys.stderr)
            return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgetl.report import atomic_write_text
    from edgetl.runtime.env import cpu_info

    now = _dt.datetime.now()
    name = args.name or args.data.name
    stem = RESULTS / f"act_ranges_{name}_{now:%Y%m%d-%H%M%S}"
    rows = []
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    for run_dir in args.runs:
        t0 = time.perf_counter()
        lm = args.low_margin or bool(args.low_margin_only and args.low_margin_only in run_dir.name)
        rows.append(bench_run(run_dir, args.work, split(args.tflite), split(args.onnx), lm))
        rows[-1]["seconds"] = round(time.perf_counter() - t0, 1)
        result = {"dataset": name, "date": now.isoformat(timespec="seconds"),
                  "cpu": cpu_info().get("model", platform.processor()), "rows": rows}
        RESULTS.mkdir(exist_ok=True)
        atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2, default=str))
        atomic_write_text(stem.with_suffix(".md"), _markdown(result))
        print(_markdown(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
