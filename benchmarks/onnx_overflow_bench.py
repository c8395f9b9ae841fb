"""The int8 ONNX overflow fix across runs (issue 25, item 3): 7-bit conv/dense weights vs 8-bit.

Usage::

    python -m benchmarks.onnx_overflow_bench RUN_DIR [RUN_DIR ...] --work DIR [--rounds 7] [--runs 20]

For every run, ``edgetl export --formats onnx_fp32,onnx_int8 --no-doctor`` twice (exports already in
``--work`` are reused): with the overflow fix (the default: conv/dense weights GPTQ-rounded onto the 7-bit
grid, depthwise 8-bit) and without it (8-bit everywhere). Then, on the run's val and test images
(preprocessed from the file's metadata), top-1 agreement with the fp32 ``.onnx``:

* ``exact``: ONNX Runtime with ``session.x64quantprecision=1`` (U8U8 kernels, exact on every CPU: what the
  file computes);
* ``ort_default``: ONNX Runtime's default session options, as a user's own code opens the file (on x86
  without VNNI the 8-bit file's kernels saturate);
* ``openvino``: OpenVINO's CPU plugin (its defaults), as ``edgetl bench`` runs it.

And the p50 (1 thread, interleaved rounds, ratio of the minima) of each int8 file vs the fp32 file on
ONNX Runtime, as edgetl's runner opens it (the 8-bit file with the exact option where this CPU needs it,
the fixed file with ORT's defaults). Writes ``benchmarks/results/onnx_overflow_<timestamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RESULTS = Path(__file__).resolve().parent / "results"


def export_pair(run: Path, work: Path) -> dict[bool, Path]:
    """{fix: export dir} for the run, exported (or reused) with and without the overflow fix."""
    from edgetl.export.api import ExportConfig, export_run

    out = {}
    for fix in (True, False):
        d = work / run.name / ("fix_on" if fix else "fix_off")
        if not (d / "export.json").is_file():
            t0 = time.perf_counter()
            res = export_run(run, ExportConfig(formats=("onnx_fp32", "onnx_int8"), doctor=False, quant_report=False,
                                               onnx_overflow_fix=fix, out_dir=str(d)))
            art = res.artifact("onnx_int8")
            if art.error:
                raise SystemExit(f"{run}: onnx_int8 export failed: {art.error}")
            print(f"{run.name}: exported fix={fix} in {time.perf_counter() - t0:.0f} s", flush=True)
        out[fix] = d
    return out


def split_images(run: Path, split: str, pre: Any) -> np.ndarray | None:
    from edgetl.preprocess import is_image_file, prepare_batch

    cfg = json.loads((run / "config.json").read_text())
    data = Path(cfg.get("data_dir") or cfg.get("config", {}).get("data_dir", ""))
    root = data / split
    if not root.is_dir():
        return None
    paths = sorted(p for p in root.glob("*/*") if p.is_file() and is_image_file(p))
    return prepare_batch(paths, pre) if paths else None


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.mean(a.argmax(1) == b.argmax(1))) * 100, 2)


def measure(run: Path, dirs: dict[bool, Path], rounds: int, runs: int) -> dict[str, Any]:
    from benchmarks.onnx_int8_bench import interleaved, ratio
    from edgetl.runtime.onnx_runner import EXACT_INT8_CONFIG, OnnxRunner, session
    from edgetl.runtime.openvino_runner import OpenVINORunner

    fp32 = OnnxRunner(dirs[True] / "efficientnet_lite0_fp32.onnx", threads=1) if (dirs[True] / "efficientnet_lite0_fp32.onnx").is_file() \
        else OnnxRunner(next(dirs[True].glob("*fp32.onnx")), threads=1)
    row: dict[str, Any] = {"run": str(run), "splits": {}}
    files = {fix: next(d.glob("*int8.onnx")) for fix, d in dirs.items()}

    def run_all(sess: Any, x: np.ndarray) -> np.ndarray:
        return np.concatenate([sess.run(None, {"image": x[i:i + 32]})[0] for i in range(0, len(x), 32)])

    for split in ("val", "test"):
        px = split_images(run, split, fp32.preprocessing)
        if px is None:
            continue
        x = px.astype(np.float32)
        ref = fp32.predict(px)
        s: dict[str, Any] = {"n": int(len(px))}
        for fix, path in files.items():
            exact = run_all(session(path, 1, exact_int8=False, config=EXACT_INT8_CONFIG), x)
            default = run_all(session(path, 1, exact_int8=False), x)
            try:
                ov = agreement(OpenVINORunner(path, threads=1).predict(px), ref)
            except Exception as exc:  # noqa: BLE001 - recorded, not fatal
                ov = f"failed: {str(exc)[:120]}"
            s["fix_on" if fix else "fix_off"] = {
                "exact": agreement(exact, ref), "ort_default": agreement(default, ref), "openvino": ov,
                "default_equals_exact": bool(np.array_equal(exact, default))}
        row["splits"][split] = s
    px = split_images(run, "val", fp32.preprocessing)[:1]
    runners = {fix: OnnxRunner(path, threads=1) for fix, path in files.items()}
    med = interleaved([fp32.timer(px), runners[False].timer(px), runners[True].timer(px)], rounds, runs)
    row["p50"] = {"fp32_ms": round(min(med[0]), 3),
                  "fix_off": {"ms": round(min(med[1]), 3), "ort_u8u8_option": runners[False].describe()["ort_u8u8"], **ratio(med[1], med[0])},
                  "fix_on": {"ms": round(min(med[2]), 3), "ort_u8u8_option": runners[True].describe()["ort_u8u8"], **ratio(med[2], med[0])}}
    row["size_mb"] = {("fix_on" if f else "fix_off"): round(p.stat().st_size / 1e6, 3) for f, p in files.items()}
    print(json.dumps(row), flush=True)
    return row


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# int8 ONNX overflow fix ({doc['date']})", "",
             f"CPU: {doc['cpu']}; 1 thread; p50 interleaved ({doc['rounds']} rounds x {doc['runs']} runs, ratio of the minima). "
             "Agreement: top-1 with the fp32 .onnx. `exact`: ORT with session.x64quantprecision=1 (what the file computes on "
             "any CPU); `ORT default`: ORT's default session options on this CPU; `OpenVINO`: its CPU plugin defaults.", "",
             "| run | split | n | 8-bit exact | 8-bit ORT default | 8-bit OpenVINO | 7-bit exact | 7-bit ORT default | 7-bit OpenVINO |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        for split, s in r["splits"].items():
            off, on = s["fix_off"], s["fix_on"]
            lines.append(f"| {Path(r['run']).name} | {split} | {s['n']} | {off['exact']} | {off['ort_default']} | {off['openvino']} | "
                         f"**{on['exact']}** | {on['ort_default']} | {on['openvino']} |")
    lines += ["", "| run | fp32 p50 ms | 8-bit p50 ms (ratio; exact option applied) | 7-bit p50 ms (ratio; exact option applied) | size MB 8-bit / 7-bit |",
              "| --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        p = r["p50"]
        lines.append(f"| {Path(r['run']).name} | {p['fp32_ms']} | {p['fix_off']['ms']} ({p['fix_off']['ratio_of_minima']}; "
                     f"{p['fix_off']['ort_u8u8_option']}) | {p['fix_on']['ms']} ({p['fix_on']['ratio_of_minima']}; "
                     f"{p['fix_on']['ort_u8u8_option']}) | {r['size_mb']['fix_off']} / {r['size_mb']['fix_on']} |")
    tot = {k: [0, 0] for k in ("fix_off", "fix_on")}
    for r in doc["rows"]:
        for s in r["splits"].values():
            for k in tot:
                tot[k][0] += round(s[k]["exact"] * s["n"] / 100)
                tot[k][1] += s["n"]
    lines += ["", "Agreeing images over every run and split (exact kernels): "
              + ", ".join(f"{'7-bit' if k == 'fix_on' else '8-bit'} {a}/{n}" for k, (a, n) in tot.items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs-per-round", dest="runs_per_round", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from edgetl.runtime.env import cpu_info

    cpu = cpu_info()
    flags = ", ".join(k for k, v in cpu.get("flags", {}).items() if v)
    rows = []
    for run in args.runs:
        dirs = export_pair(run.resolve(), args.work)
        rows.append(measure(run.resolve(), dirs, args.rounds, args.runs_per_round))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "cpu": f"{cpu.get('model')} ({flags})",
           "rounds": args.rounds, "runs": args.runs_per_round, "command": "python -m benchmarks.onnx_overflow_bench " + " ".join(sys.argv[1:]),
           "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"onnx_overflow_{stamp}.json").write_text(json.dumps(doc, indent=1))
    (args.out / f"onnx_overflow_{stamp}.md").write_text(to_markdown(doc))
    print(to_markdown(doc))
    print(f"wrote {args.out}/onnx_overflow_{stamp}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
