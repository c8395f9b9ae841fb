"""One command, the whole results table: every TARGETS.md row, end to end through the public CLI.

    python -m benchmarks.run --data ../shared/datasets                          # cats_dogs + hymenoptera (81 min on a 2-core AMD EPYC)
    python -m benchmarks.run --data ../shared/datasets --datasets sign_digits   # the int8 hard case
    python -m benchmarks.run --data ../shared/datasets --quick                  # reduced (a few minutes)

Every choice a run makes (early stopping, keeping the fine-tuned weights, the doctor's pick) uses
val; every accuracy below is measured on a test split no choice saw, with its count (k/n) and a 95 %
Wilson interval. sign_digits ships a test split; for cats_dogs and hymenoptera each class's val files
are split by sorted name (first half: val, the selection split; second half: test) through symlinks
(``benchmarks/splits.py``; ``../shared`` is never touched).

Steps (each a subprocess running ``python -m edgetl ...``, exactly what a user types):

1. ``edgetl train`` on every dataset, both strategies, EfficientNet-Lite0, defaults; on cats_dogs also
   feature extraction with ``--embed-engine tensorflow`` (the speed decomposition) and, in a full run,
   with seeds 1 and 2;
2. the plain-Keras tutorial recipe on cats_dogs (frozen base, ``model.fit`` through the base every
   epoch, the best val-loss epoch restored, the same test images) for the training-time and accuracy
   comparisons, with the tutorial's Flatten/Dense peer and its default TFLite conversion; seeds 0-2 in
   a full run; then plain ``model.fit`` fine-tune throughput;
3. ``edgetl export --int8`` on every run (plus ``--fp16 --dynamic`` on the cats_dogs fine-tune run,
   which gives the all-formats export time and the naive dynamic-range model for the latency ratio);
4. ``edgetl bench --data <test split>`` on every run: test accuracy of the Keras model and every
   exported file, and top-1 agreement with the Keras model; on the cats_dogs fine-tune run with
   latency (1 and 2 threads); then the bench-overhead check.

Writes ``benchmarks/results/<date>[-<datasets>].json`` and ``.md`` (the README's results table is
copied from the Markdown). Work files go to ``--workdir`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.splits import accuracy_cell, wilson, with_test_split  # noqa: E402

DEFAULT_DATASETS = ("cats_dogs", "hymenoptera")
BASE_DS = "cats_dogs"
#: (dataset, strategy): float target %, allowed int8 drop (points), minimum top-1 agreement % (TARGETS.md)
ACC_TARGETS = {
    ("cats_dogs", "feature-extraction"): (98.8, 0.5, 99.5),
    ("cats_dogs", "fine-tune"): (99.0, 0.5, 99.5),
    ("hymenoptera", "feature-extraction"): (94.8, 1.0, 99.5),
    ("hymenoptera", "fine-tune"): (95.4, 1.0, 99.5),
    ("sign_digits", "feature-extraction"): (93.0, 0.5, 99.0),
    ("sign_digits", "fine-tune"): (96.0, 0.5, 99.0),
}
STRATEGIES = ("feature-extraction", "fine-tune")
FAST = ["--runtimes", "tensorflow,litert,onnxruntime", "--warmup-runs", "0", "--warmup-time", "0", "--min-runs", "1",
        "--min-time", "0"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def edgetl(*args: str, json_out: bool = False, env: dict[str, str] | None = None) -> tuple[float, Any]:
    """Run ``python -m edgetl ARGS`` (``env``: extra environment variables); return (wall seconds, parsed stdout JSON or text)."""
    cmd = [sys.executable, "-m", "edgetl", *args]
    log("$ edgetl " + " ".join(args))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"edgetl {' '.join(args)} exited {proc.returncode}: {' | '.join(tail)}")
    if json_out:
        text = proc.stdout
        return wall, json.loads(text[text.index("{") if text.lstrip().startswith("{") else text.index("\n{") + 1:])
    return wall, proc.stdout


def check(metric: str, value: float | None, op: str, target: float, detail: str = "") -> dict[str, Any]:
    ok = None if value is None else (value <= target if op == "<=" else value >= target)
    return {"metric": metric, "measured": None if value is None else round(float(value), 4), "target": f"{op} {target}",
            "met": ok, "detail": detail}


class Bench:
    """The state of one benchmark run; each step appends to ``result`` and saves it."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from edgetl.runtime.env import environment

        self.args, self.work, self.started = args, work, time.perf_counter()
        self.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
        self.quick = args.quick
        # the speed, size, latency and baseline rows: cats_dogs (hymenoptera in a quick run; none for sign_digits alone)
        self.base = BASE_DS if BASE_DS in self.datasets else (self.datasets[0] if self.quick else None)
        self.splits = {ds: with_test_split(args.data / ds, work) for ds in self.datasets}
        self.runs: dict[tuple[str, str], Path] = {}
        suffix = "" if tuple(self.datasets) == DEFAULT_DATASETS else "-" + "-".join(self.datasets)
        self.result: dict[str, Any] = {
            "benchmark": "edgetl full path", "quick": self.quick, "datasets": self.datasets, "stamp_suffix": suffix,
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "workdir": str(work), "environment": environment(),
            "train": [], "export": [], "test": [], "bench": None, "overhead": None, "baseline": None, "peer": None,
            "decomposition": {}, "checks": []}

    def save(self, final: bool = False) -> None:
        _save(self.result, self.args.out, self.started, final)

    def row(self, ds: str, strategy: str, key: str = "train") -> dict[str, Any]:
        return next(r for r in self.result[key] if r["dataset"] == ds and r["strategy"] == strategy)

    # 1. train ------------------------------------------------------------------------------------
    def train(self, ds: str, strategy: str, *extra: str, name: str | None = None) -> dict[str, Any]:
        out = self.work / (name or f"{ds}_{strategy}")
        quick = ["--epochs", "3", "--fine-tune-epochs", "1"] if self.quick else []
        # every run starts with an empty embedding cache of its own: the timings are the cold pass (the
        # TensorFlow-engine run would otherwise reuse the ONNX Runtime run's embeddings and time nothing)
        wall, m = edgetl("train", str(self.splits[ds]), "--strategy", strategy, "--out", str(out), "--overwrite",
                         "--quiet", "--json", *quick, *extra, json_out=True,
                         env={"EDGETL_EMBED_CACHE": str(self.work / "embed_cache" / out.name)})
        v, t = m["val"], m["test"]
        ft = m.get("fine_tune") or {}
        return {"dataset": ds, "strategy": strategy, "args": list(extra), "run_dir": str(out), "split": "test",
                "accuracy": 100 * t["accuracy"], "correct": t["correct"], "total": t["total"], "ci95": wilson(t["correct"], t["total"]),
                "balanced_accuracy": _pct(t.get("balanced_accuracy")), "macro_f1": t.get("macro_f1"),
                "val_accuracy": 100 * v["accuracy"], "val_correct": v["correct"], "val_total": v["total"],
                "fine_tune_kept": ft.get("kept"), "fine_tune": ft or None, "epochs_run": m.get("epochs_run"),
                "wall_s": wall, "train_wall_s": m.get("train_wall_seconds"), "decode_s": m.get("decode_seconds"),
                "embed_s": m.get("embed_seconds"), "embed_engine": (m.get("embed_engine") or {}).get("engine"),
                "fine_tune_images_per_s": m.get("fine_tune_images_per_s"), "fine_tune_train_s": m.get("fine_tune_train_seconds")}

    def train_all(self) -> None:
        for ds in self.datasets:
            for strategy in STRATEGIES:
                r = self.train(ds, strategy)
                self.runs[(ds, strategy)] = Path(r["run_dir"])
                self.result["train"].append(r)
                target = ACC_TARGETS[(ds, strategy)][0]
                self.result["checks"].append(check(f"{ds} {strategy} float accuracy % (test)", r["accuracy"], ">=", target,
                                                   accuracy_cell(r["correct"], r["total"])))
                self.save()

    # 2. the plain-Keras recipe and the decomposition of the speed ratios -----------------------------
    def baseline(self) -> None:
        from benchmarks import train_bench

        split, epochs = self.splits[self.base], 3 if self.quick else 10
        fe = self.row(self.base, "feature-extraction")
        tf_engine = self.train(self.base, "feature-extraction", "--embed-engine", "tensorflow", name=f"{self.base}_fe_tensorflow")
        self.result["fe_tensorflow_engine"] = tf_engine
        self.save()
        log(f"plain-Keras baseline on {self.base} (model.fit through the frozen base every epoch, best epoch restored)")
        out = train_bench.run_baseline(split, epochs=epochs)
        b = self.result["baseline"] = out[0]
        self.result["peer"] = out[1] if len(out) > 1 else None
        self.save()
        self.result["decomposition"]["feature_extraction"] = rows = [
            {"edgetl": f"feature extraction, frozen base on {e['embed_engine']}", "edgetl_s": round(e["wall_s"], 1),
             "in_process_s": round(e["train_wall_s"], 1), "embed_s": round(e["embed_s"], 1),
             "test": accuracy_cell(e["correct"], e["total"]),
             "vs_fit_validating_every_epoch": round(e["wall_s"] / b["wall_seconds"], 3),
             "vs_fit_validating_once": round(e["wall_s"] / b["wall_seconds_validate_once"], 3)}
            for e in (fe, tf_engine)]
        self.result["checks"].append(check(
            f"{self.base} feature-extraction wall time / plain model.fit", fe["wall_s"] / b["wall_seconds"], "<=", 0.2,
            f"{fe['wall_s']:.0f} s vs {b['wall_seconds']:.0f} s (the recipe validating every epoch, as tutorials do); "
            f"vs the recipe validating once: {rows[0]['vs_fit_validating_once']}; with the frozen base on TensorFlow instead of "
            f"ONNX Runtime: {rows[1]['vs_fit_validating_every_epoch']} / {rows[1]['vs_fit_validating_once']}"))
        self._accuracy_vs_baseline(train_bench, split, epochs, fe, b)
        ft = self.row(self.base, "fine-tune")
        if ft.get("fine_tune_images_per_s"):
            log("plain model.fit fine-tune throughput (same model, same unfrozen blocks, batch 32)")
            plain = self.result["plain_fine_tune"] = train_bench.run_plain_ft_throughput(split, steps=8 if self.quick else 30)
            ips, pips = ft["fine_tune_images_per_s"], plain["fine_tune_images_per_s"]
            images = ips * ft["fine_tune_train_s"]
            with_cache = images / (ft["fine_tune_train_s"] + ft["embed_s"])
            self.result["decomposition"]["fine_tune"] = {
                "images_per_s_phase": round(ips, 1), "images_per_s_incl_caching_pass": round(with_cache, 1),
                "plain_images_per_s": round(pips, 1), "caching_pass_s": round(ft["embed_s"], 1),
                "fine_tune_phase_s": round(ft["fine_tune_train_s"], 1), "end_to_end_train_s": round(ft["wall_s"], 1),
                "fine_tune_images": int(round(images))}
            self.result["checks"].append(check(
                "fine-tune images/s: edgetl / plain model.fit", ips / pips, ">=", 1.0,
                f"{ips:.1f} vs {pips:.1f} images/s in the fine-tune phase; {with_cache / pips:.2f} with the whole caching pass "
                f"({ft['embed_s']:.0f} s, which also embeds for the head phase) charged to it; end-to-end train {ft['wall_s']:.0f} s"))
        self.save()

    def _accuracy_vs_baseline(self, train_bench, split: Path, epochs: int, fe: dict, b: dict) -> None:
        """edgetl feature extraction vs the plain recipe on the same test images; means over seeds 0-2 in a full
        run (both train a linear head on the same frozen features, so one run each differs by seed noise)."""
        ours, plain = [fe["correct"]], [b["correct"]]
        if not self.quick:
            for seed in (1, 2):
                ours.append(self.train(self.base, "feature-extraction", "--seed", str(seed), name=f"{self.base}_fe_seed{seed}")["correct"])
                log(f"plain-Keras baseline, seed {seed}")
                plain.append(train_bench.run_baseline(split, epochs=epochs, peer=False, seed=seed)[0]["correct"])
                self.result["seeds"] = {"seeds": list(range(len(ours))), "edgetl_correct": ours, "plain_correct": plain,
                                        "total": b["total"]}
                self.save()
        diff = 100 * (sum(ours) / len(ours) - sum(plain) / len(plain)) / b["total"]
        self.result["checks"].append(check(
            f"{self.base} feature-extraction test accuracy - plain model.fit (best epoch) test accuracy, mean of seeds {list(range(len(ours)))} (pt)",
            diff, ">=", 0.0, f"edgetl {ours} vs plain {plain} of {b['total']} test images"))

    # 3. export -----------------------------------------------------------------------------------
    def export_all(self) -> None:
        for (ds, strategy), run in self.runs.items():
            full = (ds, strategy) == (self.base, "fine-tune")
            extra = ["--fp16", "--dynamic"] if full else []
            if self.quick:
                extra += ["--calib-samples", "100"]
            wall, ex = edgetl("export", str(run), "--int8", *extra, "--json", json_out=True)
            arts = {a["format"]: a for a in ex["artifacts"]}
            self.result["export"].append({
                "dataset": ds, "strategy": strategy, "wall_s": wall, "n_verify": ex["n_verify"], "doctor": bool(ex.get("doctor")),
                "artifacts": {f: {k: a.get(k) for k in ("path", "size_bytes", "export_s", "drop", "verification", "remedy", "error")}
                              for f, a in arts.items()}})
            if ds == "sign_digits":
                self.result["checks"].append(check(f"{ds} {strategy} `export --int8` incl. the doctor, s", wall, "<=", 360.0))
            if full:
                size = {f: a["size_bytes"] for f, a in arts.items() if not a.get("error")}
                self.result["checks"].append(check("int8/fp32 TFLite size", size["tflite_int8"] / size["tflite_fp32"], "<=", 0.30))
                self.result["checks"].append(check("int8/fp32 ONNX size", size["onnx_int8"] / size["onnx_fp32"], "<=", 0.35))
                self.result["checks"].append(check("Lite0 int8 TFLite MB", size["tflite_int8"] / 1e6, "<=", 5.0))
                conv = sum(a["export_s"] or 0 for a in arts.values())
                self.result["checks"].append(check("export all formats, s (conversion)", conv, "<=", 180.0,
                                                   f"{wall:.0f} s wall incl. verification of every artifact"))
            self.save()

    # 4. test accuracy of every file, latency, overhead --------------------------------------------
    def test_all(self) -> None:
        for (ds, strategy), run in self.runs.items():
            timed = (ds, strategy) == (self.base, "fine-tune")
            timing = (["--runtimes", "tensorflow,litert,onnxruntime", "--threads", "1,2"]
                      + (["--min-time", "0.5", "--min-runs", "30"] if self.quick else ["--min-time", "3", "--min-runs", "100"])
                      if timed else FAST)
            _, bench = edgetl("bench", str(run), "--data", str(self.splits[ds] / "test"), *timing,
                              "--out", str(self.work / f"bench_{ds}_{strategy}"), "--json", json_out=True)
            if timed:
                self.result["bench"] = bench
                self.result["bench_run"] = f"{ds} fine-tune run, `edgetl bench --data <test split> --threads 1,2`"
            self._test_rows(ds, strategy, bench)
            self.save()

    def _test_rows(self, ds: str, strategy: str, bench: dict) -> None:
        ok: list[dict[str, Any]] = []  # one row per (file, runtime): accuracy does not depend on the thread count
        for r in sorted((r for r in bench.get("rows", []) if r.get("status") == "ok"), key=lambda r: r.get("threads") or 0):
            if not any(o["model"] == r["model"] and o["runtime"] == r["runtime"] for o in ok):
                ok.append(r)
        keras = next(r for r in ok if r.get("runtime") == "tensorflow")
        _, max_drop, min_agree = ACC_TARGETS[(ds, strategy)]
        rows = []
        for r in ok:
            rows.append({"dataset": ds, "strategy": strategy, "model": r["model"], "runtime": r["runtime"], "precision": r["precision"],
                         "correct": r["correct"], "total": r["n_images"], "accuracy": r["top1"], "ci95": wilson(r["correct"], r["n_images"]),
                         "balanced_accuracy": r.get("balanced_accuracy"), "macro_f1": r.get("macro_f1"),
                         "agreement": r.get("agreement"), "drop_pt": round(keras["top1"] - r["top1"], 2),
                         "agreeing": int(round((r.get("agreement") or 0) * r["n_images"] / 100))})
        self.result["test"] += rows
        for r in rows:
            if r["precision"] != "int8":
                continue
            fmt = "tflite_int8" if r["model"].endswith(".tflite") else "onnx_int8"
            self.result["checks"].append(check(f"{ds} {strategy} {fmt} drop (pt, test)", r["drop_pt"], "<=", max_drop,
                                               f"{r['correct']}/{r['total']} vs float {keras['correct']}/{keras['n_images']}"))
            self.result["checks"].append(check(f"{ds} {strategy} {fmt} top-1 agreement % (test)", r["agreement"], ">=", min_agree,
                                               f"{r['agreeing']}/{r['total']} agree, 95 % CI {'-'.join(map(str, wilson(r['agreeing'], r['total'])))}"))

    def latency(self) -> None:
        bench = self.result.get("bench") or {}
        p50 = {(r.get("format"), r.get("precision"), r.get("threads")): r.get("p50_ms") for r in bench.get("rows", [])
               if r.get("status") == "ok"}
        int8, dyn = p50.get(("tflite", "int8", 1)), p50.get(("tflite", "dynamic", 1))
        self.result["checks"].append(check("--int8 TFLite p50 / dynamic-range p50 (1 thread)", int8 / dyn if int8 and dyn else None,
                                           "<=", 0.6, f"{int8} ms vs {dyn} ms"))

    def overhead(self) -> None:
        run = self.runs[(self.base, "fine-tune")]
        overhead_json = self.work / "overhead.json"
        int8_file = next(run.glob("export/*_int8.tflite"), None)
        if int8_file is None:
            return
        log("bench overhead vs a bare invoke() loop")
        cmd = [sys.executable, "-m", "benchmarks.bench_overhead", str(int8_file), "--data", str(self.splits[self.base] / "test"),
               "--repeats", "3" if self.quick else "7", "--out", str(overhead_json)]
        overhead_json.unlink(missing_ok=True)  # never read a stale result
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode not in (0, 1, 3) or not overhead_json.is_file():
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"benchmarks.bench_overhead failed (exit {proc.returncode}): the benchmark cannot report the overhead")
        data = self.result["overhead"] = json.loads(overhead_json.read_text())
        for r in data.get("results", []):
            c = check("edgetl bench p50 / bare invoke() p50 (ratio of minima)", r["ratio_of_minima"], "<=", 1.05,
                      f"paired ratios {r['paired_ratio_min']:.3f}-{r['paired_ratio_max']:.3f} over {len(r['paired_ratios'])} repeats")
            if r["status"] == "measurement failure":
                c["met"] = False
                c["detail"] += "; below 0.95: a measurement failure (the bench loop does more work than a bare loop), not a pass"
            self.result["checks"].append(c)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                    help="comma-separated, of " + ", ".join(sorted({d for d, _ in ACC_TARGETS})))
    ap.add_argument("--quick", action="store_true", help="hymenoptera only, fewer epochs, shorter timings")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.datasets = "hymenoptera"
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in names if (d, "fine-tune") not in ACC_TARGETS]
    if unknown or not names:
        print(f"error: unknown dataset(s) {unknown or names}; choose from {sorted({d for d, _ in ACC_TARGETS})}", file=sys.stderr)
        return 2
    missing = [d for d in names if not (args.data / d).is_dir()]
    if missing:
        print(f"error: {', '.join(missing)} not found under {args.data} (pass --data ../shared/datasets)", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgetl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    b = Bench(args, work)
    b.train_all()
    if b.base:
        b.baseline()
    b.export_all()
    b.test_all()
    if b.base:
        b.latency()
        b.overhead()
    b.save(final=True)
    met = [c["met"] for c in b.result["checks"]]
    log(f"done in {time.perf_counter() - b.started:.0f} s: {sum(1 for m in met if m)} of {len(met)} checks met")
    return 0


def _save(result: dict[str, Any], out: Path, started: float, final: bool = False) -> None:
    from edgetl.report import atomic_write_text, write_json

    result["total_s"] = round(time.perf_counter() - started, 1)
    result["complete"] = final
    stamp = result["date"][:10] + ("-quick" if result["quick"] else result.get("stamp_suffix", ""))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stamp}.json", result)
    atomic_write_text(out / f"{stamp}.md", markdown(result, final))


def _cell(r: dict[str, Any]) -> str:
    return accuracy_cell(r["correct"], r["total"])


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else round(100.0 * fraction, 2)


def _scores(r: dict[str, Any]) -> dict[str, Any]:
    """The balanced accuracy (%) and macro-F1 cells of a row ('-' for results files written before they existed)."""
    b, f = r.get("balanced_accuracy"), r.get("macro_f1")
    return {"balanced accuracy": "-" if b is None else f"{b:.2f} %", "macro-F1": "-" if f is None else f"{f:.3f}"}


def markdown(result: dict[str, Any], final: bool = True) -> str:
    """The results page: checks first, then every measurement behind them."""
    from edgetl.report import markdown_table

    env = result["environment"]
    cpu = env.get("cpu", {}).get("model", "?") if isinstance(env.get("cpu"), dict) else env.get("cpu_model", "?")
    lines = [f"# edgetl results {result['date']}" + (" (quick)" if result["quick"] else "") + f": {', '.join(result.get('datasets', []))}", "",
             f"Machine: {cpu}; {os.cpu_count()} cores; Python {sys.version.split()[0]}. Total {result['total_s']:.0f} s."
             + ("" if final else " **Partial: the run has not finished.**"), "",
             "Every accuracy is on a test split no choice saw (sign_digits' own; for cats_dogs and hymenoptera the second half "
             "of each class's val files by sorted name, the first half being the selection split), as k/n with a 95 % Wilson interval.", "",
             "## Targets (../shared/TARGETS.md)", "",
             markdown_table([{**c, "met": {True: "yes", False: "**no**", None: "n/a"}[c["met"]]} for c in result["checks"]],
                            ["metric", "measured", "target", "met", "detail"]), "",
             "## Training", "",
             markdown_table([{**r, "test accuracy": _cell(r), **_scores(r), "val (selection)": f"{r['val_correct']}/{r['val_total']}",
                              "fine-tuned weights": {True: "kept", False: "head-only restored", None: "-"}[r.get("fine_tune_kept")],
                              "wall_s": round(r["wall_s"], 1),
                              "ft img/s": round(r["fine_tune_images_per_s"], 1) if r.get("fine_tune_images_per_s") else None}
                             for r in result["train"]],
                            ["dataset", "strategy", "test accuracy", "balanced accuracy", "macro-F1", "val (selection)",
                             "fine-tuned weights", "wall_s", "ft img/s"])]
    dec = result.get("decomposition") or {}
    b = result.get("baseline")
    if b:
        lines += ["", f"Plain-Keras tutorial recipe ({b['method']}, best epoch {b['best_epoch']}): test {_cell(b)}; "
                  f"{b['wall_seconds']:.0f} s validating every epoch ({b['validation_seconds']:.0f} s of it in {b['validation_passes']} "
                  f"validation passes), {b['wall_seconds_validate_once']:.0f} s validating once."]
    if result.get("seeds"):
        s = result["seeds"]
        lines += ["", f"Seeds {s['seeds']}, test images correct of {s['total']}: edgetl feature extraction {s['edgetl_correct']}, "
                  f"plain recipe {s['plain_correct']}."]
    if dec.get("feature_extraction"):
        lines += ["", "### Feature-extraction time, decomposed", "",
                  "edgetl_s is the CLI's wall time (start-up included), in_process_s the time `train()` reports, embed_s the "
                  "frozen base's passes over every view; the plain recipe's times are in-process.", "",
                  markdown_table(dec["feature_extraction"], ["edgetl", "edgetl_s", "in_process_s", "embed_s", "test",
                                                             "vs_fit_validating_every_epoch", "vs_fit_validating_once"])]
    if dec.get("fine_tune"):
        f = dec["fine_tune"]
        lines += ["", "### Fine-tune throughput, decomposed", "",
                  f"edgetl {f['images_per_s_phase']} images/s in the fine-tune phase ({f['fine_tune_images']} images in "
                  f"{f['fine_tune_phase_s']} s), {f['images_per_s_incl_caching_pass']} with the whole caching pass ({f['caching_pass_s']} s) "
                  f"added; plain `model.fit` {f['plain_images_per_s']} images/s; edgetl end-to-end train {f['end_to_end_train_s']} s."]
    if result.get("peer"):
        p = result["peer"]
        ours = [r for r in result.get("test", []) if r["dataset"] == p["dataset"] and r["strategy"] == "feature-extraction"]
        fe = next((r for r in result["train"] if r["dataset"] == p["dataset"] and r["strategy"] == "feature-extraction"), None)
        rows = [{"recipe": "tutorial: frozen base + Flatten/Dense, model.fit through the base, best epoch; default TFLite conversion",
                 "float test accuracy": _cell(p), "train s": round(p["wall_seconds"]), "tflite": f"{p['tflite_size_mb']} MB (dynamic range)",
                 "tflite test accuracy": accuracy_cell(p["tflite_correct"], p["total"])}]
        int8 = next((r for r in ours if r["precision"] == "int8" and r["model"].endswith(".tflite")), None)
        if fe and int8:
            exp = next((e for e in result["export"] if e["dataset"] == p["dataset"] and e["strategy"] == "feature-extraction"), {})
            size = ((exp.get("artifacts") or {}).get("tflite_int8") or {}).get("size_bytes")
            rows.append({"recipe": "edgetl train --strategy feature-extraction; edgetl export --int8", "float test accuracy": _cell(fe),
                         "train s": round(fe["wall_s"]), "tflite": f"{size / 1e6:.2f} MB (int8)" if size else None,
                         "tflite test accuracy": _cell(int8)})
        lines += ["", "## Peer comparison (the tutorial recipe users follow today, same data, same test images, same machine)", "",
                  markdown_table(rows, ["recipe", "float test accuracy", "train s", "tflite", "tflite test accuracy"])]
    if result.get("test"):
        lines += ["", "## Every file on the test split (`edgetl bench --data <test>`)", "",
                  markdown_table([{**r, "test accuracy": _cell(r), **_scores(r), "agreement": f"{r['agreement']:.2f} % ({r['agreeing']}/{r['total']})"
                                   if r.get("agreement") is not None else "-"} for r in result["test"]],
                                 ["dataset", "strategy", "model", "runtime", "precision", "test accuracy", "balanced accuracy",
                                  "macro-F1", "agreement", "drop_pt"])]
    if result["export"]:
        rows = []
        for e in result["export"]:
            for f, a in e["artifacts"].items():
                v = a.get("verification") or {}
                rows.append({"run": f"{e['dataset']} {e['strategy']}", "format": f, "MB": round(a["size_bytes"] / 1e6, 2) if a.get("size_bytes") else None,
                             "remedy": a.get("remedy") or "-", "val agreement %": v.get("agreement"),
                             "export s": round(a["export_s"], 1) if a.get("export_s") else None, "run wall s": round(e["wall_s"])})
        lines += ["", "## Export (verification on the selection split)", "",
                  markdown_table(rows, ["run", "format", "MB", "remedy", "val agreement %", "export s", "run wall s"])]
    if result.get("bench"):
        lines += ["", f"## Bench ({result['bench_run']})", "",
                  markdown_table(result["bench"].get("rows", []), ["model", "runtime", "precision", "threads", "size_mb", "top1", "agreement",
                                                                   "p50_ms", "p90_ms", "p99_ms", "fps", "status"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
