"""Tables and files for a :class:`~edgetl.bench.BenchResult`: terminal table, bench.json/.csv/.md, bench.png.

Every file is written atomically. ``bench.png`` needs matplotlib (the ``train`` extra); without it
the other files are still written and the plot is reported as skipped.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from edgetl.bench import BenchResult
from edgetl.report import atomic_write_bytes, atomic_write_text, csv_text, format_table, markdown_table, write_json
from edgetl.runtime.env import summary_line

TABLE_COLUMNS = ["model", "format", "runtime", "precision", "threads", "size MB", "top-1 %", "balanced %", "macro-F1",
                 "vs float", "p50 ms",
                 "p90 ms", "p99 ms", "FPS", "status"]
CSV_COLUMNS = ["model", "path", "format", "runtime", "precision", "device", "threads", "batch", "size_mb", "n_images",
               "correct", "top1", "balanced_accuracy", "macro_f1", "top5", "top1_delta_pt", "agreement", "max_prob_diff", "p50_ms", "p90_ms", "p99_ms",
               "mean_ms", "std_ms", "min_ms", "max_ms", "runs", "warmup_runs", "fps", "load_ms", "first_ms",
               "peak_mem_mb", "status"]


def _ms(v: float | None) -> str | None:
    """Milliseconds with enough digits for sub-millisecond models."""
    if v is None:
        return None
    return f"{v:.2f}" if v >= 1 else f"{v:.3f}" if v >= 0.01 else f"{v:.4f}"


def table_rows(result: BenchResult) -> list[dict[str, Any]]:
    out = []
    for r in result.rows:
        delta = None
        if r.top1_delta_pt is not None:
            delta = "ref" if r.detail.get("reference") == r.model and abs(r.top1_delta_pt) < 1e-9 else f"{r.top1_delta_pt:+.2f} pt"
        out.append({
            "model": r.model,
            "format": r.format,
            "runtime": r.runtime if r.device == "cpu" else f"{r.runtime} ({r.device})",
            "precision": r.precision,
            "threads": r.threads,
            "size MB": (f"{r.size_mb:.2f}" if r.size_mb >= 0.1 else f"{r.size_mb:.3f}") if r.size_mb is not None else None,
            "top-1 %": r.top1,
            "balanced %": round(r.balanced_accuracy, 2) if r.balanced_accuracy is not None else None,
            "macro-F1": round(r.macro_f1, 3) if r.macro_f1 is not None else None,
            "vs float": delta,
            "p50 ms": _ms(r.p50_ms),
            "p90 ms": _ms(r.p90_ms),
            "p99 ms": _ms(r.p99_ms),
            "FPS": round(r.fps, 1) if r.fps is not None else None,
            "status": r.status,
        })
    return out


def majority_note(src: dict[str, Any]) -> str:
    """``"; unbalanced training classes (10.0:1): always answering 'a' scores top-1 24.22 %"`` or ``""``."""
    maj = src.get("majority_baseline")
    if not maj:
        return ""
    return (f"; unbalanced training classes ({maj['imbalance_ratio']:.1f}:1): always answering {maj['class']!r} "
            f"scores top-1 {maj['top1']:.2f} %")


def best_line(result: BenchResult) -> str | None:
    b = result.best
    if not b:
        return None
    floor = f"top-1 >= {b['floor_top1']:.2f} %" if b.get("floor_top1") is not None else "no accuracy floor"
    if b.get("min_agreement") is not None:
        floor += f", agreement >= {b['min_agreement']:g} %"
    acc = f", top-1 {b['top1']:.2f} %" if b.get("top1") is not None else ""
    th = f", {b['threads']} thread(s)" if b.get("threads") else ""
    ran = f" as {b['precision']}" if "->" in str(b.get("precision")) else ""  # e.g. fp32->bf16: not the file's precision
    return f"best ({floor}, fastest p50): {b['model']} on {b['runtime']}{ran}{th}: p50 {b['p50_ms']:.3g} ms{acc}"


def terminal_report(result: BenchResult) -> str:
    lines = [f"environment: {summary_line(result.environment)}"]
    for src in result.data.get("sources", []):
        lines.append(f"data: {src['source']}: {src['images']} image(s), {len(src['classes'])} classes{majority_note(src)}")
    if result.reference:
        lines.append(f"float reference: {result.reference}")
    s = result.settings
    lines.append(f"latency: batch {s.batch}, warm-up >= {s.warmup_runs} runs and {s.warmup_time:g} s, "
                 f"then >= {s.min_runs} runs and {s.min_time:g} s (cap {s.max_time:g} s); times in ms")
    lines.append("")
    lines.append(format_table(table_rows(result), TABLE_COLUMNS))
    lines.append("")
    bl = best_line(result)
    if bl:
        lines.append(bl)
    for n in result.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


def markdown_report(result: BenchResult) -> str:
    env = result.environment
    s = result.settings
    parts = ["# edgetl bench", "", f"**Environment:** {summary_line(env)}", ""]
    for src in result.data.get("sources", []):
        parts.append(f"**Data:** `{src['source']}`: {src['images']} images, {len(src['classes'])} classes{majority_note(src)}")
    if result.reference:
        parts.append(f"**Float reference:** {result.reference}")
    parts += ["", f"Batch {s.batch}; warm-up >= {s.warmup_runs} runs and {s.warmup_time:g} s; timed >= {s.min_runs} runs and "
              f"{s.min_time:g} s (cap {s.max_time:g} s). Times in ms; FPS = batch / mean.", "",
              markdown_table(table_rows(result), TABLE_COLUMNS), ""]
    bl = best_line(result)
    if bl:
        parts += [f"**{bl}**", ""]
    for n in result.notes:
        parts.append(f"- {n}")
    parts += ["", "## Details", "", markdown_table([r.to_dict() for r in result.rows],
              ["model", "runtime", "device", "threads", "mean_ms", "std_ms", "runs", "load_ms", "first_ms", "peak_mem_mb", "agreement", "top5"]), ""]
    seen = set()
    for r in result.rows:
        if r.confusion_matrix and r.path not in seen:
            seen.add(r.path)
            labels = list(r.per_class_recall or {})
            parts += [f"### {r.model}: per-class recall and confusion matrix (rows: true, columns: predicted)", ""]
            parts.append(markdown_table([{"class": c, "recall %": v} for c, v in (r.per_class_recall or {}).items()], ["class", "recall %"]))
            parts.append("")
            if len(labels) <= 20:
                cm_rows = [{"true \\ pred": labels[i], **{labels[j]: v for j, v in enumerate(row)}} for i, row in enumerate(r.confusion_matrix)]
                parts += [markdown_table(cm_rows, ["true \\ pred", *labels]), ""]
    return "\n".join(parts) + "\n"


def plot_png(result: BenchResult) -> bytes | None:
    """Accuracy vs p50 latency, marker area by file size, one colour per runtime; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - matplotlib is optional on devices
        return None
    rows = [r for r in result.rows if r.ok and r.p50_ms is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    colours = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    has_acc = any(r.top1 is not None for r in rows)
    max_size = max((r.size_mb or 0 for r in rows), default=1) or 1
    for r in rows:
        key = r.runtime if r.device == "cpu" else f"{r.runtime} ({r.device})"
        c = colours.setdefault(key, palette[len(colours) % len(palette)])
        y = r.top1 if has_acc else r.fps
        if y is None:
            continue
        area = 40 + 400 * (r.size_mb or 0) / max_size
        ax.scatter([r.p50_ms], [y], s=area, color=c, alpha=0.6, edgecolors="black", linewidths=0.5, label=key)
        ax.annotate(f"{r.precision} {r.threads or ''}t".strip(), (r.p50_ms, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    if uniq:
        ax.legend(uniq.values(), uniq.keys(), title="runtime (marker size: file size)", fontsize=8)
    accs = [r.top1 for r in rows if r.top1 is not None]
    if accs:
        ax.set_ylim(max(0.0, min(accs) - 2.0), min(100.5, max(accs) + 1.0))
    ax.set_xlabel(f"p50 latency, ms (batch {result.settings.batch})")
    ax.set_ylabel("top-1 accuracy, %" if has_acc else "throughput, FPS")
    ax.set_title("edgetl bench: accuracy vs latency")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_reports(result: BenchResult, out_dir: str | Path) -> dict[str, Path]:
    """bench.json, bench.csv, bench.md and (with matplotlib) bench.png in ``out_dir``; returns what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    write_json(out / "bench.json", result.to_dict())
    written["json"] = out / "bench.json"
    atomic_write_text(out / "bench.csv", csv_text([r.to_dict() for r in result.rows], CSV_COLUMNS))
    written["csv"] = out / "bench.csv"
    atomic_write_text(out / "bench.md", markdown_report(result))
    written["md"] = out / "bench.md"
    png = plot_png(result)
    if png is not None:
        atomic_write_bytes(out / "bench.png", png)
        written["png"] = out / "bench.png"
    return written
