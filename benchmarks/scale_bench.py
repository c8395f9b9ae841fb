"""Scale benchmark (issue 24): peak RSS and speed of feature extraction against the number of images.

Usage::

    python -m benchmarks.scale_bench [--sizes 2000,8000] [--work DIR] [--repo PATH] [--epochs 5]

For each size N, writes N generated 256 x 256 JPEGs (4 classes, class folders, reused when already
there) under ``--work`` (default ``/tmp/edgetl-scale``), then runs, as a child process,
``edgetl train DIR --strategy feature-extraction --augment-views 0`` (EfficientNet-Lite0, ImageNet
weights, 80/20 split, a fresh empty embedding cache) with the edgetl found at ``--repo`` (default:
this checkout; give another checkout to compare). The child's peak RSS is its own ``ru_maxrss``
(``os.wait4``), not the parent's. Reports per size: peak RSS, total wall time, the check/decode
time, the frozen-base pass (seconds and images/s from ``metrics.json``), val accuracy; and between
consecutive sizes the RSS growth per added image (TARGETS: <= 20 KB per image).

Writes ``benchmarks/results/scale_<timestamp>.json`` and ``.md`` (after every size).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("a", "b", "c", "d")


def make_images(folder: Path, n: int, size: int = 256) -> Path:
    """``n`` JPEGs in ``folder/<class>/`` (class = a colour cast + noise); kept when already complete."""
    from PIL import Image

    done = folder / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % len(CLASSES)
        d = folder / CLASSES[c]
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 200, (size // 8, size // 8, 3), dtype=np.uint8)
        arr[..., c % 3] = np.clip(arr[..., c % 3].astype(int) + 40 * (1 + c // 3), 0, 255)
        Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR).save(d / f"{i:06d}.jpg", quality=90)
    done.write_text(str(n))
    return folder


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float, int]:
    """(exit code, wall seconds, peak RSS bytes of the child itself)."""
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        # cwd = the checkout: ``python -m`` puts the working folder first on sys.path
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=env["PYTHONPATH"])
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, time.perf_counter() - t0, int(usage.ru_maxrss) * 1024  # Linux: KB


def one_size(n: int, args: argparse.Namespace) -> dict:
    work = Path(args.work)
    data = make_images(work / f"data_{n}", n)
    out = work / f"run_{n}_{int(time.time())}"
    cache = work / f"cache_{n}_{int(time.time())}"
    env = {**os.environ, "PYTHONPATH": str(Path(args.repo).resolve()), "EDGETL_EMBED_CACHE": str(cache),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "edgetl", "train", str(data), "--out", str(out), "--strategy", "feature-extraction",
           "--augment-views", "0", "--epochs", str(args.epochs), "--quiet"]
    log = work / f"log_{n}_{int(time.time())}.txt"
    code, wall, rss = run_child(cmd, env, log)
    row = {"images": n, "exit_code": code, "wall_seconds": round(wall, 1), "peak_rss_mb": round(rss / 2**20, 1), "log": str(log)}
    mpath = out / "metrics.json"
    if code == 0 and mpath.is_file():
        m = json.loads(mpath.read_text())
        row.update({"check_decode_seconds": round(m.get("decode_seconds") or 0, 1),
                    "embed_seconds": round(m.get("embed_seconds") or 0, 1),
                    "embed_images_per_s": round(m.get("embed_images_per_s") or 0, 1),
                    "embed_engine": (m.get("embed_engine") or {}).get("engine"),
                    "embed_cache": m.get("embed_cache"), "val_accuracy": m.get("val_accuracy")})
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return row


def growth(rows: list[dict]) -> list[dict]:
    ok = [r for r in rows if r["exit_code"] == 0]
    return [{"from": a["images"], "to": b["images"],
             "kb_per_image": round((b["peak_rss_mb"] - a["peak_rss_mb"]) * 1024 / (b["images"] - a["images"]), 1)}
            for a, b in zip(ok, ok[1:])]


def write(doc: dict, stem: str) -> None:
    from edgetl.report import atomic_write_text, markdown_table

    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(doc, indent=2))
    cols = ["images", "exit_code", "peak_rss_mb", "wall_seconds", "check_decode_seconds", "embed_seconds",
            "embed_images_per_s", "embed_engine", "val_accuracy"]
    md = [f"# Scale benchmark {doc['date']}", "", f"`{doc['command']}`", "", f"edgetl at `{doc['repo']}` ({doc['commit']}); "
          f"{doc['machine']}", "", markdown_table(doc["rows"], cols), "",
          markdown_table(doc["rss_growth"], ["from", "to", "kb_per_image"]) if doc["rss_growth"] else "", ""]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(md))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,8000")
    ap.add_argument("--work", default="/tmp/edgetl-scale")
    ap.add_argument("--repo", default=str(ROOT))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", args.repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"date": stamp, "command": "python -m benchmarks.scale_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
           "repo": str(Path(args.repo).resolve()), "commit": commit,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores (Intel Xeon, AVX-512/VNNI/AMX), shared with other jobs",
           "rows": [], "rss_growth": []}
    for n in (int(s) for s in args.sizes.split(",")):
        row = one_size(n, args)
        print(json.dumps(row), flush=True)
        doc["rows"].append(row)
        doc["rss_growth"] = growth(doc["rows"])
        write(doc, f"scale_{stamp}{args.tag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
