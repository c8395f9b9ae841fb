"""Runtimes benchmark (issue 16): every exported file on every runtime installed here, in one ``edgetl bench``.

Usage::

    python -m benchmarks.runtimes_bench RUN_DIR [--data DIR] [--threads 1] [--out DIR]

Runs ``edgetl bench RUN_DIR`` with its default runtime selection (LiteRT Interpreter, LiteRT
CompiledModel, ONNX Runtime, OpenVINO when installed, TensorFlow for the Keras reference), so
every row is measured in the same process and session, on the same images, against the same
float reference. Then, for each file, the ratio of the OpenVINO p50 to the best p50 of the
runtimes edgetl offered before it (LiteRT and ONNX Runtime) for that file, and the best
artifact+runtime above the accuracy floor (``bench``'s own recommendation).

Writes ``benchmarks/results/runtimes_<run name>_<timestamp>.json`` and ``.md``; exits non-zero
when the bench fails or measured nothing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CPU_RUNTIMES = ("litert", "onnxruntime")  # what edgetl offered before OpenVINO / CompiledModel


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (file, runtime, device, threads) with the ratio to the best LiteRT / ONNX Runtime p50."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("p50_ms")]
    out = []
    for r in ok:
        if r["format"] == "keras":
            continue
        base = [b["p50_ms"] for b in ok if b["path"] == r["path"] and b["runtime"] in CPU_RUNTIMES
                and b["threads"] == r["threads"]]
        out.append({"model": r["model"], "runtime": r["runtime"], "device": r["device"], "threads": r["threads"],
                    "precision": r["precision"], "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"],
                    "top1": r["top1"], "agreement": r["agreement"], "top1_delta_pt": r["top1_delta_pt"],
                    "n_images": r["n_images"],
                    "p50_over_best_litert_or_ort": round(r["p50_ms"] / min(base), 3) if base else None})
    return out


def to_markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = [f"# Runtimes on {doc['run']} ({doc['date']})", "",
             f"CPU: {env['cpu'].get('model')} ({env['cpu'].get('usable_cores')} cores; "
             f"{', '.join(k for k, v in env['cpu'].get('flags', {}).items() if v)}); packages: "
             + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v), "",
             f"Images: {doc['data']}; float reference: {doc['reference']}.", "",
             "| file | runtime | device | threads | top-1 % | vs float | agreement % | p50 ms | p90 ms | p99 ms | p50 / best LiteRT or ORT |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in doc["summary"]:
        lines.append(f"| {s['model']} | {s['runtime']} | {s['device']} | {s['threads']} | {s['top1']:.2f} | "
                     f"{s['top1_delta_pt']:+.2f} pt | {s['agreement']:.2f} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | "
                     f"{s['p99_ms']:.2f} | {s['p50_over_best_litert_or_ort'] if s['p50_over_best_litert_or_ort'] is not None else '-'} |")
    skipped = [r for r in doc["rows"] if r["status"] != "ok"]
    if skipped:
        lines += ["", "Not measured:", ""] + [f"- {r['model']} on {r['runtime']} ({r['device']}): {r['status']}" for r in skipped]
    if doc.get("best"):
        b = doc["best"]
        lines += ["", f"bench's recommendation (fastest above the top-1 floor {b['floor_top1']:.2f} %): "
                      f"{b['model']} on {b['runtime']} ({b['device']}), p50 {b['p50_ms']:.2f} ms, top-1 {b['top1']:.2f} %"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, default=None, help="labelled images (default: the run's test split when present)")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    data = args.data
    if data is None:
        cfg = json.loads((args.run / "config.json").read_text())
        test = Path(cfg["data_dir"]) / "test"
        data = test if test.is_dir() else None
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.out / f".runtimes_{stamp}"
    cmd = [sys.executable, "-m", "edgetl", "bench", str(args.run), "--threads", args.threads, "--json", "--out", str(work)]
    if data is not None:
        cmd += ["--data", str(data)]
    print("running:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        print(f"edgetl bench failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    res = json.loads(proc.stdout)
    doc = {"run": str(args.run), "date": stamp, "data": str(data) if data else "the run's validation split",
           "environment": res["environment"], "reference": res.get("reference"), "best": res.get("best"),
           "rows": res["rows"], "summary": summarize(res["rows"]), "notes": res.get("notes", [])}
    if not doc["summary"]:
        print("no row was measured", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"runtimes_{args.run.resolve().name}_{stamp}"
    (args.out / f"{name}.json").write_text(json.dumps(doc, indent=2, default=str))
    (args.out / f"{name}.md").write_text(to_markdown(doc))
    for p in work.glob("*"):
        p.unlink()
    work.rmdir()
    print(to_markdown(doc))
    print(f"wrote {args.out / name}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
