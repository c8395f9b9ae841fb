"""Where QAT starts: the float weights (round-to-nearest in the first step) or the export's GPTQ-rounded ones.

For each run: the ``tflite_qat`` file exported twice (``edgetl.export.qat.QAT_START`` = ``float`` / ``gptq``,
the same epochs, images and seed), then its top-1 agreement with the Keras model on the export's
verification images (val) and on the data's test split, beside the plain int8 file's (GPTQ, no QAT).

    python -m benchmarks.qat_start RUN [RUN ...] --epochs 7 --work /tmp/qat_start

Results: ``benchmarks/results/qat_start_<date>.md`` / ``.json`` (written after every run).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _test_agreement(run_dir: Path, files: dict[str, Path]) -> dict[str, dict]:
    """Agreement of each file with the Keras model on the run's test split (empty when there is none)."""
    from benchmarks.int8_bench import _test_images
    from edgetl.export.verify import compare, run_file
    from edgetl.run import load_run

    run = load_run(run_dir)
    data = Path(run.config["data_dir"])
    if not (data / "test").is_dir():
        return {}
    px, labels = _test_images(run, data)
    ref = run.load_model().predict(px.astype(np.float32), batch_size=32, verbose=0)
    out = {}
    for name, path in files.items():
        v = compare(run_file(path, px, threads=1), ref, labels)
        out[name] = {"agreement": v.agreement, "accuracy": v.accuracy, "images": v.n}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--epochs", type=int, default=7, help="QAT epochs (about what the doctor's 120 s gives on 2 cores)")
    ap.add_argument("--starts", default="float,gptq")
    ap.add_argument("--work", type=Path, required=True)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgetl.export import qat as Q
    from edgetl.export.api import ExportConfig, export_run
    from edgetl.report import atomic_write_text
    from edgetl.runtime.env import cpu_info

    now = _dt.datetime.now()
    stem = RESULTS / f"qat_start_{now:%Y%m%d-%H%M%S}"
    rows: list[dict] = []
    for run_dir in args.runs:
        files: dict[str, Path] = {}
        row: dict = {"run": str(run_dir), "epochs": args.epochs, "val": {}, "export_s": {}, "notes": {}}
        for start in args.starts.split(","):
            Q.QAT_START = start
            out = args.work / f"{run_dir.name}_{start}"
            fmts = ("tflite_int8", "tflite_qat") if not files else ("tflite_qat",)
            t0 = time.perf_counter()
            res = export_run(run_dir, ExportConfig(formats=fmts, doctor=False, quant_report=False,
                                                   qat_epochs=args.epochs, out_dir=str(out)))
            row["export_s"][start] = round(time.perf_counter() - t0, 1)
            for a in res.artifacts:
                key = "plain int8" if a.format == "tflite_int8" else f"qat from {start}"
                files[key] = Path(a.path)
                row["val"][key] = {"agreement": a.verification.agreement, "accuracy": a.verification.accuracy,
                                   "images": a.verification.n}
                if a.format == "tflite_qat":
                    row["notes"][start] = a.notes
        row["test"] = _test_agreement(run_dir, files)
        rows.append(row)
        result = {"date": now.isoformat(timespec="seconds"), "cpu": cpu_info().get("model", platform.processor()),
                  "rows": rows}
        RESULTS.mkdir(exist_ok=True)
        atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2, default=str))
        atomic_write_text(stem.with_suffix(".md"), _markdown(result))
        print(_markdown(result), flush=True)
    return 0


def _markdown(result: dict) -> str:
    lines = [f"# QAT start: float vs GPTQ-rounded weights ({result['date']}, {result['cpu']})", "",
             "| run | file | val agreement | test agreement | test accuracy |", "| --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        for key, v in r["val"].items():
            t = r.get("test", {}).get(key, {})
            ta = f"{t['agreement']:.2f} % ({t['images']})" if t else "-"
            acc = f"{t['accuracy']:.2f} %" if t.get("accuracy") is not None else "-"
            lines.append(f"| {Path(r['run']).name} | {key} | {v['agreement']:.2f} % ({v['images']}) | {ta} | {acc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
