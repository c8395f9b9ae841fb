"""Two workers on 127.0.0.1 beside one (issue 24): each worker's share and seconds, wall time, val accuracy.

Usage::

    nice -n 10 python -m benchmarks.distributed_bench [--data ../shared/datasets/sign_digits] [--epochs 5]
        [--backbone efficientnet_lite0] [--work /tmp/edgetl-dist] [--fine-tune-epochs 1] [--limit 40]

Runs ``edgetl train DATA --strategy feature-extraction --augment-views 0`` (ImageNet weights, a fresh
empty embedding cache per run) first as one process, then as a 2-worker ``TF_CONFIG`` cluster of two
local processes (MultiWorkerMirroredStrategy over 127.0.0.1), both on the same data and settings.
``--fine-tune-epochs N`` (N > 0) runs ``--strategy fine-tune --fine-tune-epochs N`` instead (on cached
activations when they fit the default budget: ``fine_tune_mode`` in the results says which); ``--limit K``
trains on a folder of symlinks to the first K files (sorted) of each class of each split.
The cluster's wall time is from the first start to the last exit. On a machine with few cores the two
workers share the same cores, so the 2-worker wall time does not halve there: the number that
carries over to two machines is each worker's share of the images and its embedding seconds.

Writes ``benchmarks/results/distributed_<timestamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run(workers: int, args: argparse.Namespace, tag: str) -> dict:
    """One training run as ``workers`` local processes; the chief's metrics plus wall time."""
    work = Path(args.work)
    out, cache = work / f"run_{tag}", work / f"cache_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    strategy = ["fine-tune", "--fine-tune-epochs", str(args.fine_tune_epochs)] if args.fine_tune_epochs > 0 else ["feature-extraction"]
    cmd = [sys.executable, "-m", "edgetl", "train", str(args.data), "--out", str(out), "--strategy", *strategy,
           "--backbone", args.backbone, "--augment-views", "0", "--epochs", str(args.epochs), "--seed", str(args.seed)]
    base = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "EDGETL_DISTRIBUTE")}
    base.update({"PYTHONPATH": str(ROOT), "EDGETL_EMBED_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2"})
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(workers)]}
    procs, logs = [], []
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    for i in range(workers):
        env = dict(base)
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        log = work / f"log_{tag}_w{i}.txt"
        logs.append(str(log))
        with open(log, "wb") as fh:
            procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    row = {"workers": workers, "exit_codes": codes, "wall_seconds": round(wall, 1), "logs": logs,
           "load_1min_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
    mpath = out / "metrics.json"
    if all(c == 0 for c in codes) and mpath.is_file():
        m = json.loads(mpath.read_text())
        row.update({"val_accuracy": m["val_accuracy"], "val_accuracy_pct": round(100 * m["val_accuracy"], 2), "val_loss": m["val_loss"], "val_total": m["val"]["total"],
                    "epochs_run": m["epochs_run"]["head"], "fine_tune_epochs_run": m["epochs_run"]["fine_tune"],
                    "fine_tune_mode": m.get("fine_tune_mode"), "fine_tune_kept": (m.get("fine_tune") or {}).get("kept"),
                    "decode_seconds": round(m["decode_seconds"], 1),
                    "embed_seconds": round(m["embed_seconds"], 1), "embed_engine": m["embed_engine"].get("engine"),
                    "train_wall_seconds_chief": round(m["train_wall_seconds"], 1), "distributed": m.get("distributed")})
    cpath = out / "config.json"
    if all(c == 0 for c in codes) and cpath.is_file():  # the files, split and skipped files the run trained on
        data = json.loads(cpath.read_text())["data"]
        row.update({"files_sha256": data["files_sha256"], "split_sha256": data["split_sha256"], "num_skipped": data["num_skipped"]})
    shutil.rmtree(cache, ignore_errors=True)
    return row


def _limited(data: Path, dest: Path, k: int) -> Path:
    """``dest``: symlinks to the first ``k`` files (sorted) of each class folder of each split of ``data``."""
    shutil.rmtree(dest, ignore_errors=True)
    splits = [d for d in sorted(data.iterdir()) if d.name in ("train", "val", "test") and d.is_dir()] or [data]
    for split in splits:
        for cls in sorted(d for d in split.iterdir() if d.is_dir()):
            target = dest / split.relative_to(data) / cls.name
            target.mkdir(parents=True)
            for f in sorted(p for p in cls.iterdir() if p.is_file())[:k]:
                (target / f.name).symlink_to(f.resolve())
    return dest


def write(doc: dict, stem: str) -> None:
    from edgetl.report import atomic_write_text, markdown_table

    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(doc, indent=2))
    cols = ["workers", "wall_seconds", "train_wall_seconds_chief", "decode_seconds", "embed_seconds", "embed_engine",
            "epochs_run", "fine_tune_epochs_run", "fine_tune_mode", "fine_tune_kept", "val_accuracy_pct", "val_loss",
            "num_skipped", "files_sha256_12", "load_1min_before_after"]
    rows = [{**row, "files_sha256_12": (row.get("files_sha256") or "")[:12] or None} for row in doc["rows"]]
    shares = [{"task": w["task"], "train_images": w["train_images"], "val_images": w["val_images"],
               "train_share_pct": round(100 * w["train_images"] / doc["train_images"], 1), "embed_seconds": w["seconds"],
               "fine_tune_images": w.get("fine_tune_images"), "checked_images": w.get("checked_images"),
               "check_seconds": w.get("check_seconds")}
              for row in doc["rows"] for w in ((row.get("distributed") or {}).get("per_worker") or [])]
    md = [f"# Distributed benchmark {doc['date']}", "", f"`{doc['command']}`", "",
          f"edgetl {doc['commit']}; {doc['machine']}; data {doc.get('source_data', doc['data'])} ("
          + (f"the first {doc['limit_per_class']} files of each class of each split: " if doc.get("limit_per_class") else "")
          + f"{doc['train_images']} train images)", "",
          markdown_table(rows, cols), "", "Per worker of the 2-worker run:", "",
          markdown_table(shares, ["task", "train_images", "val_images", "train_share_pct", "embed_seconds", "fine_tune_images",
                                  "checked_images", "check_seconds"])
          if shares else "(failed)",
          "", doc["note"], ""]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(md))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "sign_digits"))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/edgetl-dist")
    ap.add_argument("--fine-tune-epochs", type=int, default=0, help="> 0: --strategy fine-tune with this many epochs")
    ap.add_argument("--limit", type=int, default=0, help="> 0: the first K files of each class of each split (symlinks)")
    args = ap.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"error: data folder not found: {args.data}", file=sys.stderr)
        return 2
    Path(args.work).mkdir(parents=True, exist_ok=True)
    source = str(args.data)
    if args.limit > 0:
        args.data = _limited(Path(args.data), Path(args.work) / f"data_limit{args.limit}", args.limit)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    train = Path(args.data) / "train"
    n_train = sum(1 for p in (train if train.is_dir() else Path(args.data)).glob("*/*") if p.is_file())
    doc = {"date": stamp, "source_data": source, "limit_per_class": args.limit or None,
           "fine_tune_epochs": args.fine_tune_epochs, "command": "python -m benchmarks.distributed_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
           "commit": commit, "data": str(args.data), "train_images": n_train, "backbone": args.backbone, "epochs": args.epochs,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores (Intel Xeon, AVX-512/VNNI/AMX), shared with other jobs",
           "note": "Both workers run on the same machine and share its cores: the 2-worker wall time does not halve here. "
                   "Each worker embeds only its shard (every 2nd file); on two machines the frozen-base pass time is "
                   "each worker's embed_seconds. decode_seconds is the chief's image check at start (every file with 1 worker, "
                   "its share with 2: checked_images and check_seconds per worker).",
           "rows": []}
    for workers in (1, 2):
        row = run(workers, args, f"{stamp}_{workers}w")
        print(json.dumps(row), flush=True)
        doc["rows"].append(row)
        write(doc, f"distributed_{stamp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
