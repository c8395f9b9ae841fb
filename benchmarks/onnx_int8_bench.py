"""int8 ONNX speed and portability (issue 25, item 3): ONNX Runtime int8 vs fp32, and OpenVINO on every int8 file.

Usage::

    python -m benchmarks.onnx_int8_bench EXPORT_DIR [EXPORT_DIR ...] --data IMAGE_DIR \\
        [--split test] [--samples 0] [--rounds 9] [--runs 20] [--out benchmarks/results]

Each EXPORT_DIR is an ``edgetl export`` folder: its ``*fp32.onnx`` is the float reference and every
other ``.onnx`` in it an int8 file to measure (folders from older edgetl versions can be passed
too, to compare layouts). Images: ``IMAGE_DIR/<split>/<class>/*`` (or ``IMAGE_DIR/val``),
preprocessed from the files' own metadata, sorted by path, all of them unless ``--samples``.

For every int8 file, all at 1 thread, in one process:

* ONNX Runtime p50 vs the fp32 file's p50, timed *interleaved* (``--rounds`` rounds; in each round
  every session runs ``--runs`` times and records its median), because this CPU is shared: the
  ratio reported is the ratio of the minima over rounds of those medians (and the median of the
  per-round ratios beside it). Sessions: edgetl's own (``edgetl.runtime.onnx_runner``: ORT's
  ``session.x64quantprecision=1`` only on x86 without VNNI) and, for comparison, the same file with
  that option forced on;
* which kernels ran: the compute ops of ORT's optimized graph (quantized vs float);
* top-1 agreement with the fp32 file on ONNX Runtime, on every image;
* OpenVINO CPU (the plugin's default inference precision): compiles or not (the error), p50
  (interleaved with OpenVINO on the fp32 file) and agreement with the fp32 file on ONNX Runtime.

Writes ``benchmarks/results/onnx_int8_<timestamp>.json`` and ``.md`` (the CPU named from
``/proc/cpuinfo``); exits 1 when no int8 file was measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def images(data: Path, split: str, samples: int, pre: Any) -> tuple[np.ndarray, str]:
    from edgetl.preprocess import is_image_file, prepare_batch

    root = data / split if (data / split).is_dir() else data / "val"
    paths = sorted(p for p in root.glob("*/*") if p.is_file() and is_image_file(p))
    if samples:
        paths = paths[:: max(1, len(paths) // samples)][:samples]
    if not paths:
        raise SystemExit(f"no images under {root}/<class>/")
    return prepare_batch(paths, pre), f"{root} ({len(paths)} images)"


def interleaved(timers: list[Callable[[], Any]], rounds: int, runs: int, warmup: int = 10) -> list[list[float]]:
    """Per timer, the median (ms) of ``runs`` calls in each of ``rounds`` rounds, the timers taking turns."""
    for t in timers:
        for _ in range(warmup):
            t()
    medians: list[list[float]] = [[] for _ in timers]
    for _ in range(rounds):
        for i, t in enumerate(timers):
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                t()
                ts.append(time.perf_counter_ns() - t0)
            medians[i].append(float(np.median(ts)) / 1e6)
    return medians


def ratio(a: list[float], b: list[float]) -> dict[str, float]:
    return {"ratio_of_minima": round(min(a) / min(b), 3),
            "median_round_ratio": round(float(np.median(np.array(a) / np.array(b))), 3)}


def openvino_runner(path: Path) -> tuple[Any, str | None]:
    from edgetl.runtime.openvino_runner import OpenVINORunner

    try:
        return OpenVINORunner(path, threads=1), None
    except Exception as exc:  # noqa: BLE001 - the point is to record it
        return None, str(exc)[:300]


def openvino_kernels(runner: Any) -> dict[str, int]:
    """Runtime precision of each convolution / fully connected node OpenVINO compiled (e.g. ``{"u8": 50}``)."""
    counts: dict[str, int] = {}
    try:
        ops = runner._request(runner.fixed_batch or 1).get_compiled_model().get_runtime_model().get_ordered_ops()
        for op in ops:
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else ""
            if kind.startswith(("Convolution", "GroupConvolution", "FullyConnected")):
                prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
                counts[prec] = counts.get(prec, 0) + 1
    except Exception:  # noqa: BLE001 - informative only
        return {}
    return counts


def openvino_row(path: Path, fp32: Any, pixels: np.ndarray, ref_top1: np.ndarray, rounds: int, runs: int) -> dict[str, Any]:
    """OpenVINO CPU on ``path``: compile status, agreement, p50 interleaved with the fp32 file's (``fp32``: its runner)."""
    r, error = openvino_runner(path)
    if r is None:
        return {"compiles": False, "error": error}
    top1 = r.predict(pixels).argmax(1)
    timers = [r.timer(pixels[:1])] + ([fp32.timer(pixels[:1])] if fp32 is not None else [])
    med = interleaved(timers, rounds, runs)
    row = {"compiles": True, "p50_ms": round(min(med[0]), 3), "inference_precision": r.describe().get("inference_precision"),
           "conv_fc_runtime_precisions": openvino_kernels(r),
           "agreement": round(float(np.mean(top1 == ref_top1)) * 100, 2), "n": int(len(top1))}
    if fp32 is not None:
        row.update({"fp32_p50_ms": round(min(med[1]), 3), "fp32_inference_precision": fp32.describe().get("inference_precision"),
                    **ratio(med[0], med[1])})
    return row


def measure_dir(export_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgetl.runtime.onnx_runner import (EXACT_INT8_CONFIG, OnnxRunner, kernel_counts, kernel_summary,
                                            needs_exact_int8_config, session)

    onnx_files = sorted(export_dir.glob("*.onnx"))
    fp32 = [p for p in onnx_files if p.stem.endswith("fp32")]
    int8 = [p for p in onnx_files if p not in fp32]
    if not fp32 or not int8:
        print(f"{export_dir}: needs one *fp32.onnx and at least one other .onnx; skipped", file=sys.stderr)
        return []
    ref = OnnxRunner(fp32[0], threads=1)
    pixels, where = images(Path(args.data), args.split, args.samples, ref.preprocessing)
    ref_top1 = ref.predict(pixels).argmax(1)
    ov_fp32, _ = openvino_runner(fp32[0])
    rows = []
    for path in int8:
        q = OnnxRunner(path, threads=1)
        forced = session(path, 1, exact_int8=False, config=EXACT_INT8_CONFIG)
        feed = q._feed(pixels[:1])
        timers = [ref.timer(pixels[:1]), q.timer(pixels[:1]), lambda: forced.run(None, feed)]
        med = interleaved(timers, args.rounds, args.runs)
        top1 = q.predict(pixels).argmax(1)
        forced_top1 = np.concatenate([forced.run(None, q._feed(pixels[i:i + 1]))[0] for i in range(len(pixels))]).argmax(1)
        row = {
            "dir": str(export_dir), "file": path.name, "size_mb": round(path.stat().st_size / 1e6, 3),
            "size_vs_fp32": round(path.stat().st_size / fp32[0].stat().st_size, 3), "images": where,
            "ort_u8u8_option_applied_by_edgetl": bool(needs_exact_int8_config()),
            "kernels": kernel_summary(kernel_counts(path)),
            "kernels_with_option": kernel_summary(kernel_counts(path, exact_int8=False, config=EXACT_INT8_CONFIG)),
            "ort": {"fp32_p50_ms": round(min(med[0]), 3), "int8_p50_ms": round(min(med[1]), 3),
                    **ratio(med[1], med[0]), "agreement": round(float(np.mean(top1 == ref_top1)) * 100, 2),
                    "n": int(len(top1))},
            "ort_with_x64quantprecision": {"int8_p50_ms": round(min(med[2]), 3), **ratio(med[2], med[0]),
                                           "agreement": round(float(np.mean(forced_top1 == ref_top1)) * 100, 2)},
            "openvino": openvino_row(path, ov_fp32, pixels, ref_top1, args.rounds, args.runs),
        }
        print(f"{path}: ORT int8/fp32 {row['ort']['ratio_of_minima']} ({row['ort']['int8_p50_ms']} vs "
              f"{row['ort']['fp32_p50_ms']} ms), agreement {row['ort']['agreement']} %; OpenVINO "
              f"{'compiles' if row['openvino']['compiles'] else 'FAILS'}; {row['kernels']}", flush=True)
        rows.append(row)
    return rows


def to_markdown(doc: dict[str, Any]) -> str:
    cpu = doc["cpu"]
    lines = [f"# int8 ONNX on ONNX Runtime and OpenVINO ({doc['date']})", "",
             f"CPU: {cpu.get('model')} ({cpu.get('usable_cores')} usable cores; "
             f"{', '.join(k for k, v in cpu.get('flags', {}).items() if v)}); shared with other jobs, so timings are "
             f"interleaved ({doc['rounds']} rounds x {doc['runs']} runs, ratio of the minima of the per-round medians), 1 thread.",
             f"Packages: {', '.join(f'{k} {v}' for k, v in doc['packages'].items())}. Command: `{doc['command']}`", "",
             "| export dir | int8 file | size vs fp32 | ORT fp32 p50 ms | ORT int8 p50 ms | ratio (minima) | median round ratio "
             "| ORT agreement % | with x64quantprecision=1: ratio / agreement % | OpenVINO | OV fp32 / int8 p50 ms | OV ratio | OV agreement % |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        o, x, v = r["ort"], r["ort_with_x64quantprecision"], r["openvino"]
        kern = ", ".join(f"{k} {n}" for k, n in v.get("conv_fc_runtime_precisions", {}).items())
        ov = f"compiles (conv/fc: {kern or '?'})" if v["compiles"] else f"**fails**: {v['error'][:90]}"
        lines.append(f"| {Path(r['dir']).name} | {r['file']} | {r['size_vs_fp32']} | {o['fp32_p50_ms']} | {o['int8_p50_ms']} | "
                     f"**{o['ratio_of_minima']}** | {o['median_round_ratio']} | {o['agreement']} ({o['n']} images) | "
                     f"{x['ratio_of_minima']} / {x['agreement']} | {ov} | {v.get('fp32_p50_ms', '-')} / {v.get('p50_ms', '-')} | "
                     f"{v.get('ratio_of_minima', '-')} | {v.get('agreement', '-')} |")
    lines += ["", "Kernels ONNX Runtime ran (its optimized graph, edgetl's session options on this CPU; then with "
              "`session.x64quantprecision=1`):", ""]
    for r in doc["rows"]:
        lines.append(f"- {Path(r['dir']).name}/{r['file']}: {r['kernels']}; with the option: {r['kernels_with_option']}")
    lines += ["", "OpenVINO: CPU plugin defaults (float parts in bf16 on AMX CPUs); in brackets the runtime precision of "
              "each compiled convolution / fully connected node; the fp32 file's p50 is timed interleaved with each "
              "int8 file's, 1 thread."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export_dirs", nargs="+", type=Path)
    ap.add_argument("--data", required=True, type=Path, help="image folder with <split>/<class>/ (or val/<class>/)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--samples", type=int, default=0, help="images for agreement (0: all)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from edgetl.report import atomic_write_text, write_json
    from edgetl.runtime.env import cpu_info, package_version

    rows = [r for d in args.export_dirs for r in measure_dir(d, args)]
    if not rows:
        print("no int8 .onnx file was measured", file=sys.stderr)
        return 1
    now = _dt.datetime.now()
    doc = {"date": now.isoformat(timespec="seconds"), "cpu": cpu_info(), "rounds": args.rounds, "runs": args.runs,
           "packages": {k: package_version(k) for k in ("onnxruntime", "openvino", "onnx")},
           "command": "python -m benchmarks.onnx_int8_bench " + " ".join(sys.argv[1:] if argv is None else argv),
           "rows": rows}
    stem = args.out / f"onnx_int8_{now:%Y%m%d-%H%M%S}"
    write_json(stem.with_suffix(".json"), doc)
    atomic_write_text(stem.with_suffix(".md"), to_markdown(doc))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
