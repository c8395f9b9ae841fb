"""The int8 ONNX overflow fix across runs (issue 25, item 3): pair budget vs 7-bit weights vs none.

Usage::

    python -m benchmarks.onnx_overflow_bench RUN_DIR [RUN_DIR ...] --work DIR [--variants off,7bit,pairs]
        [--rounds 7] [--runs-per-round 20]

For every run and variant, ``edgetl export --formats onnx_fp32,onnx_int8 --no-doctor`` (exports already in
``--work`` are reused): ``off`` (8-bit weights everywhere, ``--no-onnx-overflow-fix``), ``7bit`` (every
conv/dense weight GPTQ-rounded onto [-64, 64], depthwise 8-bit) and ``pairs`` (the default: 1x1 conv /
dense weights on the 8-bit grid with every pair of adjacent input channels within |q1| + |q2| <= 128,
other convs 7-bit, depthwise 8-bit; :func:`edgetl.export.ptq.overflow_grid`). Then, on the run's val and
test images (preprocessed from the file's metadata), top-1 agreement with the fp32 ``.onnx``:

* ``exact``: ONNX Runtime with ``session.x64quantprecision=1`` (U8U8 kernels, exact on every CPU: what the
  file computes);
* ``ort_default``: ONNX Runtime's default session options, as a user's own code opens the file (on x86
  without VNNI the 8-bit file's kernels saturate), and whether its outputs equal the exact ones bit for bit;
* ``openvino``: OpenVINO's CPU plugin (its defaults), as ``edgetl bench`` runs it.

And the p50 (1 thread, interleaved rounds, ratio of the minima) of each int8 file vs the fp32 file on
ONNX Runtime, as edgetl's runner opens it (an unmarked file with the exact option where this CPU needs it,
an overflow-safe one with ORT's defaults). Writes ``benchmarks/results/onnx_overflow_<timestamp>.json`` and ``.md``.
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


#: variant name -> ExportConfig.onnx_overflow_fix, edgetl.export.ptq.OVERFLOW_MODE
VARIANTS = {"off": (False, None), "7bit": (True, "7bit"), "adaptive": (True, "adaptive"), "pairs": (True, "pairs")}


def export_variants(run: Path, work: Path, names: list[str]) -> dict[str, Path]:
    """{variant: export dir} for the run, exported (or reused) per variant of :data:`VARIANTS`."""
    from edgetl.export import ptq
    from edgetl.export.api import ExportConfig, export_run

    out = {}
    default_mode = ptq.OVERFLOW_MODE
    for name in names:
        fix, mode = VARIANTS[name]
        d = work / run.name / f"fix_{name}"
        if not (d / "export.json").is_file():
            t0 = time.perf_counter()
            ptq.OVERFLOW_MODE = mode or default_mode
            try:
                res = export_run(run, ExportConfig(formats=("onnx_fp32", "onnx_int8"), doctor=False, quant_report=False,
                                                   onnx_overflow_fix=fix, out_dir=str(d)))
            finally:
                ptq.OVERFLOW_MODE = default_mode
            art = res.artifact("onnx_int8")
            if art.error:
                raise SystemExit(f"{run}: onnx_int8 export failed: {art.error}")
            print(f"{run.name}: exported {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        out[name] = d
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


def measure(run: Path, dirs: dict[str, Path], rounds: int, runs: int) -> dict[str, Any]:
    from benchmarks.onnx_int8_bench import interleaved, ratio
    from edgetl.runtime.onnx_runner import EXACT_INT8_CONFIG, OnnxRunner, session
    from edgetl.runtime.openvino_runner import OpenVINORunner

    fp32 = OnnxRunner(next(next(iter(dirs.values())).glob("*fp32.onnx")), threads=1)
    row: dict[str, Any] = {"run": str(run), "splits": {}}
    files = {name: next(d.glob("*int8.onnx")) for name, d in dirs.items()}

    def run_all(sess: Any, x: np.ndarray) -> np.ndarray:
        return np.concatenate([sess.run(None, {"image": x[i:i + 32]})[0] for i in range(0, len(x), 32)])

    for split in ("val", "test"):
        px = split_images(run, split, fp32.preprocessing)
        if px is None:
            continue
        x = px.astype(np.float32)
        ref = fp32.predict(px)
        s: dict[str, Any] = {"n": int(len(px))}
        for name, path in files.items():
            exact = run_all(session(path, 1, exact_int8=False, config=EXACT_INT8_CONFIG), x)
            default = run_all(session(path, 1, exact_int8=False), x)
            try:
                ov = agreement(OpenVINORunner(path, threads=1).predict(px), ref)
            except Exception as exc:  # noqa: BLE001 - recorded, not fatal
                ov = f"failed: {str(exc)[:120]}"
            s[name] = {
                "exact": agreement(exact, ref), "ort_default": agreement(default, ref), "openvino": ov,
                "default_equals_exact": bool(np.array_equal(exact, default))}
        row["splits"][split] = s
    px = split_images(run, "val", fp32.preprocessing)[:1]
    runners = {name: OnnxRunner(path, threads=1) for name, path in files.items()}
    med = interleaved([fp32.timer(px)] + [r.timer(px) for r in runners.values()], rounds, runs)
    row["p50"] = {"fp32_ms": round(min(med[0]), 3)}
    for i, (name, r) in enumerate(runners.items()):
        row["p50"][name] = {"ms": round(min(med[i + 1]), 3), "ort_u8u8_option": r.describe()["ort_u8u8"], **ratio(med[i + 1], med[0])}
    row["size_mb"] = {name: round(p.stat().st_size / 1e6, 3) for name, p in files.items()}
    print(json.dumps(row), flush=True)
    return row


def to_markdown(doc: dict[str, Any]) -> str:
    names = doc["variants"]
    label = {"off": "8-bit (no fix)", "7bit": "7-bit conv/dense", "adaptive": "per-channel grid + pair budget",
             "pairs": "8-bit grid + pair budget"}
    lines = [f"# int8 ONNX overflow fix ({doc['date']})", "",
             f"CPU: {doc['cpu']}; 1 thread; p50 interleaved ({doc['rounds']} rounds x {doc['runs']} runs, ratio of the minima). "
             "Agreement: top-1 with the fp32 .onnx, in %. `exact`: ORT with session.x64quantprecision=1 (what the file computes on "
             "any CPU); `default`: ORT's default session options on this CPU; `OV`: OpenVINO's CPU plugin defaults. "
             "Variants: " + "; ".join(f"`{n}` = {label.get(n, n)}" for n in names) + ".", "",
             "| run | split | n | " + " | ".join(f"{n} exact / default / OV" for n in names) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for r in doc["rows"]:
        for split, s in r["splits"].items():
            cells = [f"{s[n]['exact']} / {s[n]['ort_default']} / {s[n]['openvino']}" for n in names]
            lines.append(f"| {Path(r['run']).name} | {split} | {s['n']} | " + " | ".join(cells) + " |")
    lines += ["", "| run | fp32 p50 ms | " + " | ".join(f"{n} p50 ms (ratio; exact option applied)" for n in names) + " | size MB |",
              "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
    for r in doc["rows"]:
        p = r["p50"]
        cells = [f"{p[n]['ms']} ({p[n]['ratio_of_minima']}; {p[n]['ort_u8u8_option']})" for n in names]
        lines.append(f"| {Path(r['run']).name} | {p['fp32_ms']} | " + " | ".join(cells) + " | "
                     + " / ".join(str(r["size_mb"][n]) for n in names) + " |")
    tot = {n: [0, 0, 0] for n in names}
    for r in doc["rows"]:
        for s in r["splits"].values():
            for n in names:
                tot[n][0] += round(s[n]["exact"] * s["n"] / 100)
                tot[n][1] += s["n"]
                tot[n][2] += int(s[n]["default_equals_exact"])
    lines += ["", "Over every run and split: agreeing images (exact kernels), and splits where ORT's default kernels gave "
              "exactly the exact kernels' outputs: " + "; ".join(f"{n} {a}/{k}, {e}/{sum(len(r['splits']) for r in doc['rows'])}"
                                                              for n, (a, k, e) in tot.items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs-per-round", dest="runs_per_round", type=int, default=20)
    ap.add_argument("--variants", default="off,7bit,pairs", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from edgetl.runtime.env import cpu_info

    cpu = cpu_info()
    flags = ", ".join(k for k, v in cpu.get("flags", {}).items() if v)
    names = [n for n in args.variants.split(",") if n]
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variant(s) {bad}; valid: {', '.join(VARIANTS)}")
    rows = []
    for run in args.runs:
        dirs = export_variants(run.resolve(), args.work, names)
        rows.append(measure(run.resolve(), dirs, args.rounds, args.runs_per_round))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "cpu": f"{cpu.get('model')} ({flags})",
           "rounds": args.rounds, "runs": args.runs_per_round, "command": "python -m benchmarks.onnx_overflow_bench " + " ".join(sys.argv[1:]),
           "variants": names, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"onnx_overflow_{stamp}.json").write_text(json.dumps(doc, indent=1))
    (args.out / f"onnx_overflow_{stamp}.md").write_text(to_markdown(doc))
    print(to_markdown(doc))
    print(f"wrote {args.out}/onnx_overflow_{stamp}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
