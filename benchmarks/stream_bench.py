"""Stream benchmark (issue 24): peak RSS of fine-tuning (and of export) before and after streaming.

Usage::

    python -m benchmarks.stream_bench [--sizes 1000,4000] [--old PATH] [--new PATH] [--modes default,images]
                                      [--image-size 160] [--export] [--work DIR]

For each size N, N generated 256 x 256 JPEGs (``benchmarks.scale_bench.make_images``: 4 classes, class
folders, 80/20 split), then, for each checkout (``--old``: e.g. a detached worktree of main, ``--new``:
this one), a child process trains ``--strategy fine-tune`` (EfficientNet-Lite0, ImageNet weights,
``--augment-views 0``, 3 head epochs, 1 fine-tune epoch of the top block, ``--image-size``):

* mode ``default``: ``edgetl train`` as a user runs it (fine-tuning on the cached activations);
* mode ``images``: the same through the Python API with ``cache_limit_mb=0`` (the fine-tune phase runs the
  whole model on images; no CLI flag for it).

With ``--export``, ``edgetl export`` (default formats, every val image verified) of each run of the last
checkout given. ``--merge a.json,b.json`` writes the rows of earlier results files as one file. Between
consecutive sizes: the peak RSS growth per added image. Every child runs under ``nice -n 10``; its peak RSS is its own ``ru_maxrss`` (``os.wait4``).

Writes ``benchmarks/results/stream_<timestamp>.json`` and ``.md`` (after every child).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.scale_bench import RESULTS, ROOT, make_images, run_child

TRAIN_ARGS = ["--strategy", "fine-tune", "--augment-views", "0", "--epochs", "3", "--fine-tune-epochs", "1", "--unfreeze", "1"]
IMAGES_CHILD = ("import sys; from edgetl.config import AugmentConfig, TrainConfig; from edgetl.train import train; "
                "train(TrainConfig(data_dir=sys.argv[1], out=sys.argv[2], strategy='fine-tune', epochs=3, fine_tune_epochs=1, "
                "unfreeze=1, image_size=(int(sys.argv[3]),) * 2, cache_limit_mb=0, verbose=0, augment=AugmentConfig(views=0)))")


def _commit(repo: str) -> str:
    return subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def _env(repo: str, cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(repo).resolve()), "EDGETL_EMBED_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2"}


def train_row(n: int, label: str, repo: str, mode: str, args: argparse.Namespace) -> dict:
    work = Path(args.work)
    data = make_images(work / f"data_{n}", n)
    tag = f"{label}_{mode}_{n}_{int(time.time())}"
    out, cache, log = work / f"run_{tag}", work / f"cache_{tag}", work / f"log_{tag}.txt"
    nice = ["nice", "-n", "10", sys.executable]
    if mode == "images":
        cmd = [*nice, "-c", IMAGES_CHILD, str(data), str(out), str(args.image_size)]
    else:
        cmd = [*nice, "-m", "edgetl", "train", str(data), "--out", str(out), *TRAIN_ARGS, "--image-size",
               str(args.image_size), "--quiet"]
    code, wall, rss = run_child(cmd, _env(repo, cache), log)
    row = {"what": "train", "checkout": label, "commit": _commit(repo), "mode": mode, "images": n, "exit_code": code,
           "peak_rss_mb": round(rss / 2**20), "wall_seconds": round(wall, 1), "run": str(out)}
    mpath = out / "metrics.json"
    if code == 0 and mpath.is_file():
        m = json.loads(mpath.read_text())
        row.update({"fine_tune_mode": m.get("fine_tune_mode"), "activation_cache_mb": m.get("activation_cache_mb"),
                    "val_images": m["val"]["total"], "val_accuracy": round(m["val"]["accuracy"], 4),
                    "embed_seconds": round(m.get("embed_seconds") or 0, 1),
                    "fine_tune_seconds": round(m.get("fine_tune_train_seconds") or 0, 1)})
    else:
        row["log_tail"] = log.read_text(errors="replace")[-400:]
    return row


def export_row(run: str, label: str, repo: str, args: argparse.Namespace) -> dict:
    work = Path(args.work)
    tag = f"export_{Path(run).name}"
    out, log = work / tag, work / f"log_{tag}.txt"
    cmd = ["nice", "-n", "10", sys.executable, "-m", "edgetl", "export", run, "--out", str(out)]
    code, wall, rss = run_child(cmd, _env(repo, work / "cache_export"), log)
    m = json.loads((Path(run) / "metrics.json").read_text())
    row = {"what": "export", "checkout": label, "commit": _commit(repo), "val_images": m["val"]["total"], "exit_code": code,
           "peak_rss_mb": round(rss / 2**20), "wall_seconds": round(wall, 1), "run": run}
    if code != 0:
        row["log_tail"] = log.read_text(errors="replace")[-400:]
    return row


def growth(rows: list[dict]) -> list[dict]:
    """Peak RSS growth per added image between consecutive sizes, per checkout and mode (and for export,
    per added val image)."""
    out = []
    keys = sorted({(r["what"], r["checkout"], r.get("mode", "")) for r in rows})
    for what, checkout, mode in keys:
        count = "images" if what == "train" else "val_images"
        ok = sorted((r for r in rows if r["exit_code"] == 0 and (r["what"], r["checkout"], r.get("mode", "")) == (what, checkout, mode)),
                    key=lambda r: r[count])
        out += [{"what": what, "checkout": checkout, "mode": mode or "-", "from": a[count], "to": b[count],
                 "kb_per_image": round((b["peak_rss_mb"] - a["peak_rss_mb"]) * 1024 / (b[count] - a[count]), 1)}
                for a, b in zip(ok, ok[1:]) if b[count] > a[count]]
    return out


def write(doc: dict, stem: str) -> None:
    from edgetl.report import atomic_write_text, markdown_table

    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(doc, indent=2))
    train_cols = ["checkout", "commit", "mode", "images", "exit_code", "peak_rss_mb", "wall_seconds", "fine_tune_mode",
                  "activation_cache_mb", "embed_seconds", "fine_tune_seconds", "val_accuracy"]
    export_cols = ["checkout", "commit", "val_images", "exit_code", "peak_rss_mb", "wall_seconds"]
    trains = [r for r in doc["rows"] if r["what"] == "train"]
    exports = [r for r in doc["rows"] if r["what"] == "export"]
    md = [f"# Stream benchmark {doc['date']}", "", f"`{doc['command']}`", "", doc["machine"], "",
          "## edgetl train --strategy fine-tune", "", markdown_table(trains, train_cols) if trains else "(none)", ""]
    if exports:
        md += ["## edgetl export (default formats, every val image verified)", "", markdown_table(exports, export_cols), ""]
    doc["rss_growth"] = growth(doc["rows"])
    if doc["rss_growth"]:
        md += ["## Peak RSS growth per added image (train: images; export: val images)", "",
               markdown_table(doc["rss_growth"], ["what", "checkout", "mode", "from", "to", "kb_per_image"]), ""]
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(doc, indent=2))
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(md))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,4000")
    ap.add_argument("--work", default="/tmp/edgetl-stream-bench")
    ap.add_argument("--old", default="", help="checkout to compare with (e.g. a worktree of main); empty: none")
    ap.add_argument("--new", default=str(ROOT))
    ap.add_argument("--modes", default="default")
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--merge", default="", help="comma-separated results .json files: write them as one file, run nothing")
    args = ap.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"date": stamp, "command": "python -m benchmarks.stream_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores (Intel Xeon, AVX-512/VNNI/AMX), shared with other jobs",
           "rows": []}
    if args.merge:
        docs = [json.loads(Path(f).read_text()) for f in args.merge.split(",")]
        doc["command"] = "; ".join(d["command"] for d in docs)
        doc["rows"] = sorted((r for d in docs for r in d["rows"]),
                             key=lambda r: (r["what"] != "train", r.get("mode", ""), r.get("images", 0), r.get("val_images", 0), r["checkout"]))
        write(doc, f"stream_{stamp}")
        return 0
    checkouts = [(name, repo) for name, repo in (("old", args.old), ("new", args.new)) if repo]
    for n in (int(s) for s in args.sizes.split(",")):
        for mode in args.modes.split(","):
            for label, repo in checkouts:
                row = train_row(n, label, repo, mode, args)
                print(json.dumps(row), flush=True)
                doc["rows"].append(row)
                write(doc, f"stream_{stamp}")
                if args.export and label == checkouts[-1][0] and mode == "default" and row["exit_code"] == 0:
                    erow = export_row(row["run"], label, repo, args)
                    print(json.dumps(erow), flush=True)
                    doc["rows"].append(erow)
                    write(doc, f"stream_{stamp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
