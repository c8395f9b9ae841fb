"""Scale benchmark (issue 24): peak RSS and speed of feature extraction against the number of images.

Usage::

    python -m benchmarks.scale_bench [--sizes 2000,8000,32000,100000] [--work DIR] [--repo PATH] [--epochs 5]
    python -m benchmarks.scale_bench --summarize-ab OLD.json NEW.json [OLD.json NEW.json ...]

For each size N, uses N generated 256 x 256 JPEGs (4 classes, class folders) under ``--work`` (default
``/tmp/edgetl-scale``): the largest size is generated once into ``data_<largest>`` (reused when
complete) and each smaller size is hard links to its first N files (the generator draws image i the
same way whatever N, so a subset is exactly what generating N images would write). Then runs, as a
child process, ``edgetl train DIR --strategy feature-extraction --augment-views 0`` (EfficientNet-Lite0,
ImageNet weights, 80/20 split, a fresh empty embedding cache) with the edgetl found at ``--repo``
(default: this checkout; give another checkout to compare). The child's peak RSS is its own
``ru_maxrss`` (``os.wait4``), not the parent's. Reports per size: peak RSS, total wall time, the
check/decode time, the frozen-base pass (seconds and images/s from ``metrics.json``), val accuracy,
the load average when it ended; the RSS growth per added image between consecutive sizes and between
the smallest and the largest (TARGETS: <= 20 KB per image from 2k to 100k); a plot of peak RSS,
images/s of the frozen-base pass and wall time against N.

Writes ``benchmarks/results/scale_<timestamp>.json``, ``.md`` and ``.png``; after every size, under the
name ``scale_<timestamp>_partial.*`` until the last size has run (a killed run leaves its partial files).
``--summarize-ab`` pairs single-size result files of two checkouts (old, new, old, new...) into
``scale_ab_<timestamp>.json``/``.md``: each wall time and the new / old ratio of the means.
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
MACHINE = f"{platform.machine()}, {os.cpu_count()} cores (Intel Xeon, AVX-512/VNNI/AMX), shared with other jobs"


def _image_path(folder: Path, i: int) -> Path:
    return folder / CLASSES[i % len(CLASSES)] / f"{i:06d}.jpg"


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
        path = _image_path(folder, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 200, (size // 8, size // 8, 3), dtype=np.uint8)
        arr[..., c % 3] = np.clip(arr[..., c % 3].astype(int) + 40 * (1 + c // 3), 0, 255)
        Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR).save(path, quality=90)
    done.write_text(str(n))
    return folder


def dataset(work: Path, n: int, largest: int) -> Path:
    """``work/data_<n>``: the first ``n`` images of ``work/data_<largest>`` as hard links (generated once)."""
    pool = make_images(work / f"data_{largest}", largest)
    if n >= largest:
        return pool
    folder = work / f"data_{n}"
    done = folder / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for c in CLASSES:
        (folder / c).mkdir(parents=True)
    for i in range(n):
        os.link(_image_path(pool, i), _image_path(folder, i))
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


def one_size(n: int, largest: int, args: argparse.Namespace) -> dict:
    work = Path(args.work)
    data = dataset(work, n, largest)
    stamp = int(time.time())
    out, cache, log = work / f"run_{n}_{stamp}", work / f"cache_{n}_{stamp}", work / f"log_{n}_{stamp}.txt"
    env = {**os.environ, "PYTHONPATH": str(Path(args.repo).resolve()), "EDGETL_EMBED_CACHE": str(cache),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "edgetl", "train", str(data), "--out", str(out), "--strategy", "feature-extraction",
           "--augment-views", "0", "--epochs", str(args.epochs), "--quiet"]
    started = _dt.datetime.now().strftime("%H:%M:%S")
    code, wall, rss = run_child(cmd, env, log)
    row = {"images": n, "exit_code": code, "wall_seconds": round(wall, 1), "peak_rss_mb": round(rss / 2**20, 1),
           "started": started, "load_avg_end": " / ".join(f"{x:.1f}" for x in os.getloadavg()), "log": str(log)}
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
    """KB of peak RSS per added image between consecutive finished sizes, then smallest -> largest."""
    ok = sorted((r for r in rows if r["exit_code"] == 0), key=lambda r: r["images"])

    def kb(a: dict, b: dict) -> dict:
        return {"from": a["images"], "to": b["images"],
                "kb_per_image": round((b["peak_rss_mb"] - a["peak_rss_mb"]) * 1024 / (b["images"] - a["images"]), 1)}

    pairs = [kb(a, b) for a, b in zip(ok, ok[1:])]
    if len(ok) > 2:
        pairs.append(kb(ok[0], ok[-1]))
    return pairs


def plot(doc: dict, path: Path) -> None:
    """Peak RSS, images/s of the frozen-base pass and wall time against N (finished sizes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgetl.report import atomic_write

    ok = sorted((r for r in doc["rows"] if r["exit_code"] == 0), key=lambda r: r["images"])
    if not ok:
        return
    n = [r["images"] for r in ok]
    panels = [("peak_rss_mb", "peak RSS (MB)"), ("embed_images_per_s", "frozen-base pass (images/s)"),
              ("wall_seconds", "total wall time (s)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, panels):
        y = [r.get(key) or 0 for r in ok]
        ax.plot(n, y, "o-")
        for xi, yi in zip(n, y):
            ax.annotate(f"{yi:g}", (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xticks(n, [f"{x // 1000}k" for x in n])
        ax.set_xlabel("images (train + val)")
        ax.set_title(label, fontsize=10)
        ax.set_ylim(bottom=0, top=max(y) * 1.2 or 1)
        ax.grid(alpha=0.3)
    fig.suptitle(f"edgetl feature extraction, --augment-views 0 ({doc['commit']}, {doc['date']})", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def write(doc: dict, stem: str) -> None:
    from edgetl.report import atomic_write_text, markdown_table

    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(doc, indent=2))
    cols = ["images", "exit_code", "peak_rss_mb", "wall_seconds", "check_decode_seconds", "embed_seconds",
            "embed_images_per_s", "embed_engine", "val_accuracy", "started", "load_avg_end"]
    state = doc.get("status", "")
    where = f"edgetl at `{doc['repo']}` ({doc['commit']}, edgetl/ last changed in {doc.get('edgetl_commit')})"
    md = [f"# Scale benchmark {doc['date']}", "", f"`{doc['command']}`", "", f"{where}; {doc['machine']}", "",
          f"Status: {state}" if state else "", "", markdown_table(doc["rows"], cols), "",
          "Peak RSS growth per added image (TARGETS: <= 20 KB per image from 2k to 100k):", "",
          markdown_table(doc["rss_growth"], ["from", "to", "kb_per_image"]) if doc["rss_growth"] else "(one size)", ""]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(md))
    plot(doc, RESULTS / f"{stem}.png")


def _edgetl_commit(repo: str, commit: str) -> str:
    """The last commit up to ``commit`` that changed ``edgetl/`` (the code the child runs)."""
    out = subprocess.run(["git", "-C", repo, "log", "-1", "--format=%h", commit, "--", "edgetl"], capture_output=True, text=True)
    return out.stdout.strip()


AB_COLUMNS = ["images", "exit_code", "wall_seconds", "peak_rss_mb", "check_decode_seconds", "embed_seconds",
              "embed_images_per_s", "val_accuracy", "started", "load_avg_end"]


def summarize_ab(files: list[str]) -> int:
    """Pair single-size results (old, new, old, new, ...) into ``scale_ab_<timestamp>``: wall times and ratio."""
    from edgetl.report import atomic_write_text, markdown_table

    rows = []
    for i, f in enumerate(files):
        d = json.loads(Path(f).read_text())
        rows.append({"order": i + 1, "side": "old" if i % 2 == 0 else "new", "commit": d["commit"],
                     "edgetl_commit": d.get("edgetl_commit") or _edgetl_commit(d["repo"], d["commit"]),
                     **{k: d["rows"][0].get(k) for k in AB_COLUMNS}, "file": Path(f).name})
    mean = {s: float(np.mean([r["wall_seconds"] for r in rows if r["side"] == s and r["exit_code"] == 0] or [np.nan]))
            for s in ("old", "new")}
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    median = {s: float(np.median([r["wall_seconds"] for r in rows if r["side"] == s and r["exit_code"] == 0] or [np.nan]))
              for s in ("old", "new")}
    pairs = [round(b["wall_seconds"] / a["wall_seconds"], 2) for a, b in zip(rows[::2], rows[1::2])]
    doc = {"date": stamp, "machine": MACHINE, "rows": rows, "mean_wall_seconds": mean, "median_wall_seconds": median,
           "new_over_old": round(mean["new"] / mean["old"], 3), "new_over_old_median": round(median["new"] / median["old"], 3),
           "new_over_old_per_pair": pairs, "target": "new / old <= 1.10 (issue 24)"}
    atomic_write_text(RESULTS / f"scale_ab_{stamp}.json", json.dumps(doc, indent=2))
    md = [f"# 1-worker wall time, old vs new, {stamp}", "", f"{MACHINE}", "",
          markdown_table(rows, ["order", "side", "commit", "edgetl_commit", *AB_COLUMNS]), "",
          f"Mean wall time: old {mean['old']:.1f} s, new {mean['new']:.1f} s; new / old = {doc['new_over_old']} "
          "(target <= 1.10).", "",
          f"Median: old {median['old']:.1f} s, new {median['new']:.1f} s; new / old = {doc['new_over_old_median']}. "
          f"Per pair (new / old): {', '.join(map(str, pairs))}.", ""]
    atomic_write_text(RESULTS / f"scale_ab_{stamp}.md", "\n".join(md))
    print(f"wrote {RESULTS / f'scale_ab_{stamp}'}.json and .md")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,8000")
    ap.add_argument("--work", default="/tmp/edgetl-scale")
    ap.add_argument("--repo", default=str(ROOT))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--tag", default="")
    ap.add_argument("--summarize-ab", nargs="+", metavar="JSON")
    args = ap.parse_args(argv)
    if args.summarize_ab:
        return summarize_ab(args.summarize_ab)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    commit = subprocess.run(["git", "-C", args.repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"date": stamp, "command": "python -m benchmarks.scale_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
           "repo": str(Path(args.repo).resolve()), "commit": commit, "edgetl_commit": _edgetl_commit(args.repo, commit),
           "machine": MACHINE, "rows": [], "rss_growth": []}
    final, partial = f"scale_{stamp}{args.tag}", f"scale_{stamp}{args.tag}_partial"
    for k, n in enumerate(sizes, 1):
        row = one_size(n, max(sizes), args)
        print(json.dumps(row), flush=True)
        doc["rows"].append(row)
        doc["rss_growth"] = growth(doc["rows"])
        last = k == len(sizes)
        doc["status"] = ("all sizes run" if last else
                         f"partial: {k} of {len(sizes)} sizes run, {','.join(map(str, sizes[k:]))} still to run when written")
        write(doc, final if last else partial)
    for ext in ("json", "md", "png"):
        (RESULTS / f"{partial}.{ext}").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
