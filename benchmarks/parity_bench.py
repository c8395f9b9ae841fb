"""Device parity: what MediaPipe Tasks' ImageClassifier (the phone's client) says vs ``edgetl predict``, per shared dataset.

    python -m benchmarks.parity_bench --data ../shared/datasets                           # all three datasets
    python -m benchmarks.parity_bench --data ../shared/datasets --datasets sign_digits    # the smallest

For every dataset (test split: sign_digits ships one; cats_dogs and hymenoptera get the val halves of
``benchmarks/splits.py``, as ``benchmarks/run.py`` does), two feature-extraction EfficientNet-Lite0 runs,
each through the public CLI (``edgetl train``, ``edgetl export --formats tflite_fp32,tflite_int8``):

* ``before``: ``--resize pillow --no-augment-resize`` (edgetl before issue 22: Pillow's antialiased
  bilinear everywhere, no resize-robust views);
* ``after``: the defaults (``--resize mediapipe``, resize-robust views).

Then, for the fp32 and int8 ``.tflite`` files on the test images:

* ``edgetl predict FILE TEST_DIR --json`` (a subprocess: exactly the command) vs MediaPipe's
  ``ImageClassifier`` on the same files (the file's own metadata, MediaPipe's own resize, images
  converted to RGB as the README says): top-1 agreement and the accuracy gap;
* the flip rate between resize implementations: LiteRT on the same file with the test images resized
  by each of ``mediapipe``, ``gpu`` and ``pillow``; an image flips when the three top-1s are not all equal.

Targets (TARGETS.md, device parity): agreement >= 99.5 %, gap <= 0.5 pt, flip rate <= 0.5 % after the
robust training, float test accuracy (``after``, fp32 file through ``edgetl predict``) not lower than ``before``.
Writes ``benchmarks/results/parity_<date>[-<datasets>].json`` and ``.md`` after every step.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.run import check, edgetl, log  # noqa: E402
from benchmarks.splits import accuracy_cell, wilson, with_test_split  # noqa: E402

DATASETS = ("sign_digits", "hymenoptera", "cats_dogs")  # smallest first
# Sets that are not in ../shared, built from it in the workdir (issue 22: "downscaled photos and
# 1-channel images"): every split's images converted, class folders and splits kept.
DERIVED = {"sign_digits_gray": ("sign_digits", "1-channel (Pillow 'L') PNG"),
           "hymenoptera_small": ("hymenoptera", "photos downscaled to at most 96 px (Pillow LANCZOS), JPEG quality 90")}
SMALL_SIDE = 96
VARIANTS = {"before": ["--resize", "pillow", "--no-augment-resize"], "after": []}
PRECISIONS = ("fp32", "int8")
MIN_AGREEMENT, MAX_GAP, MAX_FLIP = 99.5, 0.5, 0.5


def derived_dataset(name: str, data: Path, work: Path) -> Path:
    """The ``DERIVED`` set ``name`` under ``work`` (built once, atomically), from its source's test layout."""
    from PIL import Image

    out = work / name
    if out.exists():
        return out
    src = with_test_split(data / DERIVED[name][0], work)
    tmp = out.with_name(out.name + ".partial")
    files = sorted(Path(root) / n for root, _, names in os.walk(src, followlinks=True) for n in names)  # train/ is a symlink
    for f in files:
        if f.suffix.lower() not in {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}:
            continue
        rel = f.relative_to(src)
        (tmp / rel.parent).mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            if name.endswith("_gray"):
                im.convert("L").save((tmp / rel).with_suffix(".png"))
            else:
                im = im.convert("RGB")
                im.thumbnail((SMALL_SIDE, SMALL_SIDE), Image.LANCZOS)
                im.save((tmp / rel).with_suffix(".jpg"), quality=90)
    tmp.rename(out)
    return out


def test_images(split: Path, labels: list[str]) -> tuple[list[str], list[int]]:
    from edgetl.preprocess import is_image_file

    paths, ys = [], []
    for i, name in enumerate(labels):
        for f in sorted((split / "test" / name).iterdir()):
            if is_image_file(f):
                paths.append(str(f))
                ys.append(i)
    return paths, ys


def edgetl_predict(path: Path, test_dir: Path, labels: list[str]) -> dict[str, int]:
    """``edgetl predict FILE TEST_DIR --json --top 1``: file path -> predicted class index."""
    _, out = edgetl("predict", str(path), str(test_dir), "--json", "--top", "1", "--threads", "2")
    res = json.loads(out[out.index("["):])
    return {os.path.realpath(r["file"]): labels.index(r["labels"][0]) for r in res if r.get("labels")}


def measure_file(path: Path, split: Path) -> dict[str, Any]:
    """MediaPipe vs ``edgetl predict``, and the resize flip rate, for one .tflite file on the test images."""
    import numpy as np

    from edgetl.preprocess import RESIZES, prepare_batch
    from edgetl.runtime.mediapipe_runner import MediaPipeRunner
    from edgetl.runtime.tflite_runner import TFLiteRunner

    lite = TFLiteRunner(path, threads=2)
    labels = list(lite.labels)
    paths, ys = test_images(split, labels)
    y = np.asarray(ys)
    t0 = time.perf_counter()
    by_file = edgetl_predict(path, split / "test", labels)
    missing = [p for p in paths if os.path.realpath(p) not in by_file]
    if missing:
        raise RuntimeError(f"edgetl predict gave no result for {len(missing)} file(s), e.g. {missing[0]}")
    ours = np.asarray([by_file[os.path.realpath(p)] for p in paths])
    t_predict = time.perf_counter() - t0
    t0 = time.perf_counter()
    mp = MediaPipeRunner(path)
    try:
        theirs = mp.predict(paths).argmax(1)
    finally:
        mp.close()
    t_mp = time.perf_counter() - t0
    per_resize = {}
    for m in RESIZES:
        per_resize[m] = lite.predict(prepare_batch(paths, replace(lite.preprocessing, resize=m))).argmax(1)
    flips = ~((per_resize["mediapipe"] == per_resize["gpu"]) & (per_resize["gpu"] == per_resize["pillow"]))
    n = len(paths)
    agree = int((ours == theirs).sum())
    k_ours, k_mp = int((ours == y).sum()), int((theirs == y).sum())
    return {
        "file": str(path), "precision": lite.precision, "resize": lite.preprocessing.resize, "n": n,
        "edgetl_correct": k_ours, "mediapipe_correct": k_mp, "edgetl_accuracy": 100 * k_ours / n,
        "mediapipe_accuracy": 100 * k_mp / n, "gap_pt": round(100 * abs(k_ours - k_mp) / n, 3),
        "agreeing": agree, "agreement": 100 * agree / n, "agreement_ci95": wilson(agree, n),
        "flips": int(flips.sum()), "flip_rate": 100 * float(flips.mean()),
        "resize_accuracy": {m: 100 * float((v == y).mean()) for m, v in per_resize.items()},
        "resize_pair_flips": {f"{a}-{b}": int((per_resize[a] != per_resize[b]).sum())
                              for a, b in (("mediapipe", "gpu"), ("mediapipe", "pillow"), ("gpu", "pillow"))},
        "edgetl_matches_litert_under_its_resize": bool((ours == per_resize[lite.preprocessing.resize]).all())
        if lite.preprocessing.resize in per_resize else None,
        "predict_s": round(t_predict, 1), "mediapipe_s": round(t_mp, 1),
    }


def run_variant(ds: str, variant: str, split: Path, work: Path, no_doctor: bool, backbone: str, extra: list[str]) -> dict[str, Any]:
    out = work / f"{ds}_{variant}"
    wall, m = edgetl("train", str(split), "--strategy", "feature-extraction", "--out", str(out), "--overwrite",
                     "--quiet", "--json", "--backbone", backbone, *extra, *VARIANTS[variant], json_out=True)
    t = m["test"]
    row: dict[str, Any] = {"dataset": ds, "variant": variant, "args": VARIANTS[variant], "run_dir": str(out),
                           "train_wall_s": round(wall, 1), "keras_test_correct": t["correct"], "keras_test_total": t["total"],
                           "keras_test_accuracy": 100 * t["accuracy"], "resize_views": m.get("resize_views")}
    ex_wall, _ = edgetl("export", str(out), "--formats", "tflite_fp32,tflite_int8", "--json",
                        *(["--no-doctor"] if no_doctor else []), json_out=True)
    row["export_wall_s"] = round(ex_wall, 1)
    row["files"] = {p: measure_file(out / "export" / f"{backbone}_{p}.tflite", split) for p in PRECISIONS}
    return row


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in result["rows"]:
        if r["variant"] != "after":
            continue
        ds = r["dataset"]
        for p, f in r["files"].items():
            cell = f"{f['agreeing']}/{f['n']} agree"
            out.append(check(f"{ds} {p} MediaPipe vs edgetl predict top-1 agreement %", f["agreement"], ">=", MIN_AGREEMENT, cell))
            out.append(check(f"{ds} {p} accuracy gap MediaPipe vs edgetl (pt)", f["gap_pt"], "<=", MAX_GAP,
                             f"MediaPipe {f['mediapipe_correct']}/{f['n']}, edgetl {f['edgetl_correct']}/{f['n']}"))
            out.append(check(f"{ds} {p} resize flip rate % (mediapipe/gpu/pillow)", f["flip_rate"], "<=", MAX_FLIP,
                             f"{f['flips']}/{f['n']} images flip"))
        before = next((b for b in result["rows"] if b["dataset"] == ds and b["variant"] == "before"), None)
        if before is not None:
            a, b = r["files"]["fp32"], before["files"]["fp32"]
            out.append(check(f"{ds} fp32 test accuracy after - before (pt, edgetl predict)", a["edgetl_accuracy"] - b["edgetl_accuracy"],
                             ">=", 0.0, f"after {a['edgetl_correct']}/{a['n']}, before {b['edgetl_correct']}/{b['n']}"))
    return out


def markdown(result: dict[str, Any]) -> str:
    from edgetl.report import markdown_table

    env = result["environment"]
    cpu = env.get("cpu", {}).get("model", "?") if isinstance(env.get("cpu"), dict) else env.get("cpu_model", "?")
    lines = ["# Device parity: MediaPipe ImageClassifier vs edgetl predict", "",
             f"{result['date']}, {'complete' if result['complete'] else 'partial (still running or stopped)'}, "
             f"{result['total_s']:.0f} s; CPU: {cpu}; command: `{result['command']}`", "",
             f"Feature extraction, {result.get('backbone', 'efficientnet_lite0')} (default input size), test splits. `before`: `--resize pillow --no-augment-resize`; "
             "`after`: defaults (`--resize mediapipe`, resize-robust views). Flip: the three resizes "
             "(mediapipe, gpu, pillow) on the same file do not all give the same top-1.", ""]
    if result.get("train_args"):
        lines += [f"Extra `edgetl train` options for every run (they override the above): `{result['train_args']}`.", ""]
    lines += [f"`{d}`: not in ../shared, built in the workdir from `{DERIVED[d][0]}`: {DERIVED[d][1]}." for d in result["datasets"] if d in DERIVED]
    lines += [""] if any(d in DERIVED for d in result["datasets"]) else []
    rows = []
    for r in result["rows"]:
        for p, f in r["files"].items():
            rows.append({"dataset": r["dataset"], "variant": r["variant"], "file": p, "resize": f["resize"],
                         "agreement": f"{f['agreement']:.2f} % ({f['agreeing']}/{f['n']})",
                         "edgetl predict": accuracy_cell(f["edgetl_correct"], f["n"]),
                         "MediaPipe": accuracy_cell(f["mediapipe_correct"], f["n"]), "gap pt": f"{f['gap_pt']:.2f}",
                         "flip rate": f"{f['flip_rate']:.2f} % ({f['flips']}/{f['n']})"})
    lines += [markdown_table(rows, ["dataset", "variant", "file", "resize", "agreement", "edgetl predict", "MediaPipe",
                                    "gap pt", "flip rate"]), ""]
    if result["checks"]:
        met = [c for c in result["checks"] if c["met"]]
        lines += [f"**Checks: {len(met)} of {len(result['checks'])} met**", "",
                  markdown_table([{**c, "met": "yes" if c["met"] else "**no**"} for c in result["checks"]],
                                 ["metric", "measured", "target", "met", "detail"]), ""]
    return "\n".join(lines)


def save(result: dict[str, Any], out: Path, started: float, final: bool = False) -> None:
    from edgetl.report import atomic_write_text, write_json

    result["total_s"] = round(time.perf_counter() - started, 1)
    result["complete"] = final
    result["checks"] = checks(result)
    stamp = "parity_" + result["date"][:10] + result["stamp_suffix"]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stamp}.json", result)
    atomic_write_text(out / f"{stamp}.md", markdown(result))


def merge(files: list[Path], out: Path) -> int:
    """One result from several runs' JSON files: rows of every run, in the order of DATASETS."""
    docs = [json.loads(Path(f).read_text()) for f in files]
    order = DATASETS + tuple(DERIVED)
    rows = sorted((r for d in docs for r in d["rows"]), key=lambda r: (order.index(r["dataset"]), list(VARIANTS).index(r["variant"])))
    datasets = [d for d in order if any(r["dataset"] == d for r in rows)]
    result = {**docs[0], "rows": rows, "datasets": datasets, "stamp_suffix": "" if tuple(datasets) == DATASETS else "-" + "-".join(datasets),
              "merged_from": [{"file": Path(f).name, "command": d["command"], "total_s": d["total_s"], "complete": d["complete"]}
                              for f, d in zip(files, docs)],
              "command": " + ".join(d["command"] for d in docs)}
    result["total_s"] = sum(d["total_s"] for d in docs)
    result["checks"] = checks(result)
    from edgetl.report import atomic_write_text, write_json

    stamp = "parity_" + result["date"][:10] + result["stamp_suffix"]
    result["complete"] = all({r["variant"] for r in rows if r["dataset"] == d} == set(VARIANTS) for d in datasets)
    write_json(out / f"{stamp}.json", result)
    atomic_write_text(out / f"{stamp}.md", markdown(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--datasets", default=",".join(DATASETS),
                    help="comma-separated, of " + ", ".join(DATASETS + tuple(DERIVED)) + " (the last two are built from the first two)")
    ap.add_argument("--no-doctor", action="store_true", help="export int8 without the quantization doctor (faster)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--suffix", default="", help="appended to the result file name (e.g. -views4)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="combine the result JSON files of separate runs (e.g. datasets run side by side) into one")
    ap.add_argument("--backbone", default="efficientnet_lite0", help=argparse.SUPPRESS)  # smoke runs on generated data
    ap.add_argument("--train-args", default="", help="extra `edgetl train` options for both variants (e.g. \"--augment-views 4\")")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    known = DATASETS + tuple(DERIVED) if args.backbone == "efficientnet_lite0" else names
    bad = [d for d in names if d not in known or not (args.data / DERIVED.get(d, (d,))[0]).is_dir()]
    if bad or not names:
        print(f"error: dataset(s) {bad or names} unknown or not under {args.data}; choose from {', '.join(DATASETS + tuple(DERIVED))}",
              file=sys.stderr)
        return 2
    try:
        from edgetl.runtime.mediapipe_runner import mediapipe_vision

        mediapipe_vision()
    except Exception as exc:  # noqa: BLE001
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from edgetl.runtime.env import environment

    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgetl-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "device parity (issue 22)", "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.parity_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "stamp_suffix": ("" if tuple(names) == DATASETS else "-" + "-".join(names)) + args.suffix, "datasets": names,
        "backbone": args.backbone, "train_args": args.train_args,
        "workdir": str(work), "environment": environment(), "rows": [], "checks": []}
    for ds in names:
        split = derived_dataset(ds, args.data, work) if ds in DERIVED else with_test_split(args.data / ds, work)
        for variant in [v for v in VARIANTS if v in args.variants.split(",")]:
            log(f"{ds} {variant}")
            result["rows"].append(run_variant(ds, variant, split, work, args.no_doctor, args.backbone, args.train_args.split()))
            save(result, args.out, started)
    save(result, args.out, started, final=True)
    met = [c["met"] for c in result["checks"]]
    log(f"done in {time.perf_counter() - started:.0f} s: {sum(1 for m in met if m)} of {len(met)} checks met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
