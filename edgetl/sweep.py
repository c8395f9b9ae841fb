"""``edgetl sweep``: pick the model for the device from a measured accuracy-latency curve.

Trains a feature-extraction candidate per backbone x input size of a grid, exports each as int8
TFLite through the same verified export path as ``edgetl export``, times it with ``bench``'s timer
on this machine (1 thread), and writes:

* ``sweep.json``: ``candidates`` (backbone, image_size, accuracy of the int8 file on val and on test
  when there is a test split, agreement with the float model, p50_ms, size_mb, train_s, export_s),
  ``pareto`` (names of the candidates no other beats on both val accuracy and latency),
  ``recommended`` (the most accurate on val within ``--max-latency-ms`` / ``--max-size-mb``) and the
  command that turns it into a full fine-tuned run;
* ``sweep.md`` (the table) and ``sweep.png`` (accuracy vs latency and vs size, Pareto front drawn);
* ``models/<backbone>_<H>x<W>_int8.tflite``: every candidate's file under a unique name, so that
  ``edgetl bench models/*.tflite`` on the target device (a Pi with the base install) gives a
  ``bench.json`` that ``--latency-from`` uses instead of this machine's latencies.

Choices are made on val; test (never seen by any choice) is reported beside it. Each finished
candidate is recorded at once (``sweep_state.json``): ``--resume`` continues after an interruption
without redoing them. Candidates train one after another; each reuses nothing of the others (a
different backbone or size means different embeddings).
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgetl.errors import EdgetlError, UsageError

STATE_FILE = "sweep_state.json"

#: The default grid: Lite0 at four sizes, Lite1 and Lite2 at their own; MobileNetV2 when its weights
#: are on this machine (they download from the Keras site, which offline machines cannot reach).
DEFAULT_GRID = (("efficientnet_lite0", 128), ("efficientnet_lite0", 160), ("efficientnet_lite0", 192),
                ("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260))
OPTIONAL_GRID = (("mobilenet_v2", 160), ("mobilenet_v2", 224))


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep and how (defaults: the default grid, feature extraction, 1 augmented view)."""

    data_dir: str
    out: str
    grid: tuple[tuple[str, tuple[int, int]], ...] | None = None
    weights: str = "imagenet"
    epochs: int = 20
    augment_views: int = 1
    calib_samples: int = 200
    seed: int = 0
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    latency_from: str | None = None
    resume: bool = False
    overwrite: bool = False
    objective: str = "accuracy"

    def validate(self) -> "SweepConfig":
        from edgetl.metrics import OBJECTIVES

        if self.objective not in OBJECTIVES:
            raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name, v in (("--max-latency-ms", self.max_latency_ms), ("--max-size-mb", self.max_size_mb)):
            if v is not None and not v > 0:
                raise UsageError(f"{name} must be > 0, got {v}")
        if self.epochs < 1 or self.augment_views < 0 or self.calib_samples < 1:
            raise UsageError("--epochs and --calib-samples must be >= 1 and --augment-views >= 0")
        if self.latency_from is not None and not Path(self.latency_from).is_file():
            raise UsageError(f"--latency-from: file not found: {self.latency_from}")
        for backbone, size in self.resolved_grid():
            from edgetl.models import get_spec

            get_spec(backbone).at_size(size)
        return self

    def resolved_grid(self) -> list[tuple[str, tuple[int, int]]]:
        if self.grid is not None:
            if not self.grid:
                raise UsageError("--grid is empty")
            return [(b, tuple(s)) for b, s in self.grid]  # type: ignore[misc]
        from edgetl.models import get_spec
        from edgetl.models.weights import available

        out = [(b, (s, s)) for b, s in DEFAULT_GRID]
        if self.weights == "imagenet":
            out += [(b, (s, s)) for b, s in OPTIONAL_GRID if available(get_spec(b).at_size(s))]
        return out


def parse_grid(text: str) -> tuple[tuple[str, tuple[int, int]], ...]:
    """``"lite0@128,lite0@160x128,mobilenet_v2@224"`` -> ((backbone, (h, w)), ...); UsageError when malformed."""
    from edgetl.models import get_spec

    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, size = item.partition("@")
        if not sep:
            raise UsageError(f"--grid entries are BACKBONE@SIZE (e.g. lite0@160 or lite0@192x160), got {item!r}")
        try:
            parts = [int(p) for p in size.lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2):
            raise UsageError(f"--grid: bad size in {item!r} (N or HxW pixels)")
        spec = get_spec(name)
        out.append((spec.name, (parts[0], parts[-1])))
    if not out:
        raise UsageError("--grid is empty")
    return tuple(out)


@dataclass
class Candidate:
    name: str
    backbone: str
    image_size: tuple[int, int]
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    # balanced accuracy (percent) and macro-F1 of the int8 file (edgetl/metrics.py)
    val_balanced_accuracy: float | None = None
    val_macro_f1: float | None = None
    test_balanced_accuracy: float | None = None
    test_macro_f1: float | None = None
    keras_val_accuracy: float | None = None
    agreement: float | None = None
    p50_ms: float | None = None
    p50_source: str = "this machine"
    size_mb: float | None = None
    train_s: float | None = None
    export_s: float | None = None
    file: str | None = None
    run_dir: str | None = None
    mpixels: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        d = dict(d)
        d["image_size"] = tuple(d["image_size"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def ok(self) -> bool:
        return self.error is None and self.val_accuracy is not None and self.p50_ms is not None

    def score(self, objective: str = "accuracy") -> float:
        """The val figure the sweep ranks by (percent): accuracy, or balanced accuracy (accuracy when unknown)."""
        if objective == "balanced" and self.val_balanced_accuracy is not None:
            return self.val_balanced_accuracy
        return self.val_accuracy if self.val_accuracy is not None else float("-inf")


def candidate_name(backbone: str, size: tuple[int, int]) -> str:
    return f"{backbone}_{size[0]}x{size[1]}"


# --------------------------------------------------------------------------- choice


def pareto(cands: Sequence[Candidate], objective: str = "accuracy") -> list[str]:
    """Names of the candidates no other one beats on the val objective and p50 at once (fastest first)."""
    ok = [c for c in cands if c.ok]
    front = []
    for c in ok:
        dominated = any((o.score(objective) >= c.score(objective) and o.p50_ms <= c.p50_ms)
                        and (o.score(objective) > c.score(objective) or o.p50_ms < c.p50_ms) for o in ok)
        if not dominated:
            front.append(c)
    return [c.name for c in sorted(front, key=lambda c: c.p50_ms)]


def recommend(cands: Sequence[Candidate], max_latency_ms: float | None = None,
              max_size_mb: float | None = None, objective: str = "accuracy") -> tuple[Candidate | None, str]:
    """The best candidate on the val objective (accuracy or balanced accuracy) within the budgets
    (ties: the faster); (None, why) when none fits."""
    ok = [c for c in cands if c.ok]
    fit = [c for c in ok if (max_latency_ms is None or c.p50_ms <= max_latency_ms)
           and (max_size_mb is None or (c.size_mb or 0.0) <= max_size_mb)]
    if not fit:
        if not ok:
            return None, "no candidate was measured"
        return None, (f"no candidate fits the budget (fastest: {min(ok, key=lambda c: c.p50_ms).name} at "
                      f"{min(c.p50_ms for c in ok):.2f} ms, smallest {min(c.size_mb or 0 for c in ok):.2f} MB)")
    best = max(fit, key=lambda c: (round(c.score(objective), 6), -c.p50_ms))
    budget = []
    if max_latency_ms is not None:
        budget.append(f"p50 <= {max_latency_ms:g} ms")
    if max_size_mb is not None:
        budget.append(f"size <= {max_size_mb:g} MB")
    what = "balanced accuracy" if objective == "balanced" else "accuracy"
    return best, f"highest val {what}" + (f" within {' and '.join(budget)}" if budget else "")


def latencies_from_bench(path: str | Path) -> dict[str, float]:
    """File name -> p50 (ms) of the fastest ok row per file of a ``bench.json`` (e.g. measured on the device).

    Rows the device ran below the file's precision (labelled ``<file>-><ran>``, e.g. OpenVINO's
    ``int8->bf16``) are not used: the candidate's accuracy was measured at the file's precision.
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = doc["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--latency-from {path}: not a bench.json ({type(exc).__name__})") from None
    out: dict[str, float] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("p50_ms") and "->" not in str(r.get("precision") or ""):
            name = Path(str(r.get("path") or r.get("model"))).name
            out[name] = min(out.get(name, float("inf")), float(r["p50_ms"]))
    if not out:
        raise UsageError(f"--latency-from {path}: no measured row in this bench.json")
    return out


def apply_latencies(cands: Sequence[Candidate], measured: dict[str, float]) -> list[str]:
    """Replace each candidate's p50 with the device's; returns the names the file did not cover."""
    missing = []
    for c in cands:
        fname = Path(c.file).name if c.file else None
        if fname and fname in measured:
            c.p50_ms, c.p50_source = measured[fname], "--latency-from"
        elif c.ok:
            missing.append(c.name)
    return missing


def fine_tune_command(data_dir: str, c: Candidate) -> str:
    h, w = c.image_size
    size = f"{h}" if h == w else f"{h}x{w}"
    return (f"edgetl train {data_dir} --backbone {c.backbone} --image-size {size} --strategy fine-tune "
            f"--out runs/{c.name}-ft && edgetl export runs/{c.name}-ft --int8")


# --------------------------------------------------------------------------- running


def _measure(cfg: SweepConfig, backbone: str, size: tuple[int, int], out: Path, say: Callable[[str], None]) -> Candidate:
    from edgetl.runtime.timing import quick_latency
    from edgetl.config import AugmentConfig, TrainConfig
    from edgetl.export.api import ExportConfig, export_run
    from edgetl.train import train

    c = Candidate(candidate_name(backbone, size), backbone, size, mpixels=size[0] * size[1] / 1e6)
    run_dir = out / "runs" / c.name
    c.run_dir = str(run_dir)
    t0 = time.perf_counter()
    res = train(TrainConfig(data_dir=cfg.data_dir, backbone=backbone, weights=cfg.weights, strategy="feature-extraction",
                            epochs=cfg.epochs, seed=cfg.seed, image_size=size, out=str(run_dir), overwrite=True,
                            augment=AugmentConfig(views=cfg.augment_views), objective=cfg.objective, verbose=0))
    c.train_s = round(time.perf_counter() - t0, 1)
    c.keras_val_accuracy = round(100 * res.val_accuracy, 2)
    t0 = time.perf_counter()
    exp = export_run(run_dir, ExportConfig(formats=("tflite_int8",), calib_samples=cfg.calib_samples, doctor=False,
                                           quant_report=False, seed=cfg.seed))
    c.export_s = round(time.perf_counter() - t0, 1)
    art = exp.artifact("tflite_int8")
    if art is None or art.error or art.path is None:
        c.error = f"int8 export failed: {art.error if art else 'no artifact'}"
        return c
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    dest = models / f"{c.name}_int8.tflite"
    shutil.copyfile(art.path, dest)
    c.file = str(dest)
    c.size_mb = round(art.size_bytes / 1e6, 3)
    if art.verification is not None:
        c.val_accuracy = None if art.verification.accuracy is None else round(art.verification.accuracy, 2)
        c.agreement = round(art.verification.agreement, 2)
    if art.within_budget is False:
        c.notes.append(f"int8 over the export budget (agreement {c.agreement} %)")
    val = _int8_scores(dest, cfg.data_dir, "val")
    if val is not None:
        c.val_balanced_accuracy, c.val_macro_f1 = round(100 * val["balanced_accuracy"], 2), round(val["macro_f1"], 4)
    test = _int8_scores(dest, cfg.data_dir, "test")
    if test is not None:
        c.test_accuracy = round(100 * test["accuracy"], 2)
        c.test_balanced_accuracy, c.test_macro_f1 = round(100 * test["balanced_accuracy"], 2), round(test["macro_f1"], 4)
    from edgetl.preprocess import prepare_batch
    from edgetl.run import load_run

    info = load_run(run_dir)
    sample = _one_image(cfg.data_dir)
    px = prepare_batch([sample], info.preprocessing)
    c.p50_ms = round(quick_latency(dest, px, threads=1, min_runs=30, min_time=1.0)["p50_ms"], 3)
    return c


@functools.lru_cache(maxsize=4)
def _scan(data_dir: str) -> Any:
    """The data folder's listing, read once per sweep (not once per candidate)."""
    from edgetl.data import load_dataset

    return load_dataset(data_dir, validate=False)


def _one_image(data_dir: str) -> Any:
    ds = _scan(data_dir)
    return ds.val.paths[0] if ds.val.paths else ds.train.paths[0]


def _int8_scores(tflite: Path, data_dir: str, split: str) -> dict[str, Any] | None:
    """Accuracy, balanced accuracy and macro-F1 (fractions, edgetl/metrics.py) of the int8 file on a
    split (``val`` or ``test``); None when the split is empty or absent.

    The split is decoded into a :class:`edgetl.pixels.PixelStore` (on disk past the RAM budget, as in
    ``bench``), never into one array: a split of any size fits."""
    from edgetl.metrics import scores
    from edgetl.pixels import decode_store
    from edgetl.runtime.tflite_runner import TFLiteRunner

    part = getattr(_scan(data_dir), split)
    if part is None or not part.paths:
        return None
    r = TFLiteRunner(tflite, threads=None)
    store, _, _ = decode_store(part.paths, r.preprocessing)
    try:
        probs = r.predict(store)
    finally:
        store.close()
    return scores(part.labels, probs.argmax(1), probs.shape[1])


def _load_state(out: Path) -> dict[str, Candidate]:
    p = out / STATE_FILE
    if not p.is_file():
        return {}
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        return {d["name"]: Candidate.from_dict(d) for d in doc["candidates"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgetlError(f"cannot resume: {p} is unreadable ({type(exc).__name__}); start again with --overwrite") from None


def _save_state(out: Path, cfg: SweepConfig, cands: dict[str, Candidate]) -> None:
    from edgetl.report import write_json

    write_json(out / STATE_FILE, {"data_dir": cfg.data_dir, "candidates": [c.to_dict() for c in cands.values()]})


def _estimate(done: Sequence[Candidate], todo: Sequence[tuple[str, tuple[int, int]]]) -> float | None:
    """Seconds left, from the time per input megapixel of the candidates measured so far."""
    timed = [c for c in done if c.train_s is not None and c.export_s is not None and c.mpixels]
    if not timed:
        return None
    per_mpix = sum(c.train_s + c.export_s for c in timed) / sum(c.mpixels for c in timed)
    return per_mpix * sum(s[0] * s[1] / 1e6 for _, s in todo)


def run_sweep(cfg: SweepConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every candidate of the grid (resuming finished ones), choose, write the reports."""
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not (cfg.resume or cfg.overwrite):
        raise EdgetlError(f"{out} is not empty: pass --resume to continue that sweep or --overwrite to start again")
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out) if cfg.resume else {}
    _scan.cache_clear()  # one listing per sweep: a later sweep in this process sees the folder as it is then
    grid = cfg.resolved_grid()
    t_start = time.perf_counter()
    for i, (backbone, size) in enumerate(grid):
        name = candidate_name(backbone, size)
        prev = state.get(name)
        if prev is not None and (prev.error or (prev.file and Path(prev.file).is_file())):
            say(f"[{i + 1}/{len(grid)}] {name}: done before (resumed)")
            continue
        eta = _estimate(list(state.values()), grid[i:])
        say(f"[{i + 1}/{len(grid)}] {name} ..." + (f" (about {eta / 60:.0f} min left)" if eta else ""))
        try:
            c = _measure(cfg, backbone, size, out, say)
        except EdgetlError as exc:
            c = Candidate(name, backbone, size, error=str(exc), mpixels=size[0] * size[1] / 1e6)
        state[name] = c
        _save_state(out, cfg, state)
        say(f"    {name}: " + (f"failed: {c.error}" if c.error else
                                f"val {c.val_accuracy:.2f}%" + (f" (balanced {c.val_balanced_accuracy:.2f}%)" if c.val_balanced_accuracy is not None else "")
                                + (f", test {c.test_accuracy:.2f}%" if c.test_accuracy is not None else "")
                                + f", p50 {c.p50_ms:.2f} ms, {c.size_mb:.2f} MB, {c.train_s + c.export_s:.0f} s"))
    cands = [state[candidate_name(b, s)] for b, s in grid]
    notes = []
    if cfg.latency_from:
        missing = apply_latencies(cands, latencies_from_bench(cfg.latency_from))
        if missing:
            notes.append(f"--latency-from has no row for {', '.join(missing)}: their p50 is this machine's")
    best, why = recommend(cands, cfg.max_latency_ms, cfg.max_size_mb, cfg.objective)
    doc = {
        "data_dir": cfg.data_dir,
        "settings": {k: v for k, v in asdict(cfg).items() if k != "grid"} | {"grid": [[b, list(s)] for b, s in grid]},
        "candidates": [c.to_dict() for c in cands],
        "pareto": pareto(cands, cfg.objective),
        "recommended": None if best is None else {"name": best.name, "why": why,
                                                   "command": fine_tune_command(cfg.data_dir, best)},
        "note": None if best is not None else why,
        "notes": notes,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    _write_reports(out, doc, cands)
    return doc


# --------------------------------------------------------------------------- reports


def to_markdown(doc: dict[str, Any]) -> str:
    front = set(doc["pareto"])
    rows = ["| candidate | input | val % (int8) | val balanced % | val macro-F1 | test % (int8) | test balanced % | test macro-F1 "
            "| agreement % | p50 ms | size MB | train + export s | Pareto |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def f(c: dict[str, Any], key: str, fmt: str) -> str:
        return format(c[key], fmt) if c.get(key) is not None else "-"

    for c in doc["candidates"]:
        if c["error"]:
            rows.append(f"| {c['name']} | {c['image_size'][0]}x{c['image_size'][1]} | failed: {c['error'][:80]} |" + " |" * 10)
            continue
        t = f"{f(c, 'test_accuracy', '.2f')} | {f(c, 'test_balanced_accuracy', '.2f')} | {f(c, 'test_macro_f1', '.3f')}"
        secs = (c["train_s"] or 0) + (c["export_s"] or 0)
        rows.append(f"| {c['name']} | {c['image_size'][0]}x{c['image_size'][1]} | {c['val_accuracy']:.2f} | "
                    f"{f(c, 'val_balanced_accuracy', '.2f')} | {f(c, 'val_macro_f1', '.3f')} | {t} | "
                    f"{c['agreement']:.2f} | {c['p50_ms']:.2f}{' (device)' if c['p50_source'] != 'this machine' else ''} | "
                    f"{c['size_mb']:.2f} | {secs:.0f} | {'yes' if c['name'] in front else ''} |")
    rec = doc["recommended"]
    tail = ([f"**Recommended:** {rec['name']} ({rec['why']}). Full run: `{rec['command']}`"] if rec
            else [f"**No recommendation:** {doc['note']}"])
    objective = (doc.get("settings") or {}).get("objective", "accuracy")
    return "\n".join(["# edgetl sweep", "", f"Data: {doc['data_dir']}; latency: 1 thread, int8 TFLite, "
                      f"bench's timer; accuracy: the int8 file (val chose on {objective}, test reported).", ""] + rows + [""] + tail
                     + [""] + [f"Note: {n}" for n in doc["notes"]]) + "\n"


def _write_reports(out: Path, doc: dict[str, Any], cands: Sequence[Candidate]) -> None:
    from edgetl.report import atomic_write_text, write_json

    write_json(out / "sweep.json", doc)
    atomic_write_text(out / "sweep.md", to_markdown(doc))
    try:
        plot_sweep(cands, set(doc["pareto"]), out / "sweep.png", (doc["recommended"] or {}).get("name"))
    except ImportError:
        pass  # matplotlib (the train extra) is not installed: the table and JSON still are


def plot_sweep(cands: Sequence[Candidate], front: set[str], path: Path, recommended: str | None) -> None:
    from edgetl.plots import _plt, _save

    plt = _plt()
    ok = [c for c in cands if c.ok]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "p50_ms", "p50 latency, ms (int8 TFLite, 1 thread)"), (axes[1], "size_mb", "file size, MB")):
        for c in ok:
            ax.scatter(getattr(c, key), c.val_accuracy, s=40, color="tab:red" if c.name == recommended else "tab:blue")
            ax.annotate(c.name.replace("efficientnet_", ""), (getattr(c, key), c.val_accuracy), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        if key == "p50_ms":
            pts = sorted((c.p50_ms, c.val_accuracy) for c in ok if c.name in front)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="gray", lw=1, label="Pareto front")
                ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("val accuracy of the int8 file, %")
        ax.grid(alpha=0.3)
    _save(fig, path)
