"""Tables and files for people: terminal tables, CSV, JSON, Markdown. No measuring here."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write(path: str | Path, write: Callable[[Any], Any]) -> None:
    """``write(binary file)`` into a temporary file in the same folder, fsync, then rename over
    ``path`` (with the usual umask permissions): a crash leaves the old file or none, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table (no colour codes: safe in logs and CI)."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c) for c in columns})
    return buf.getvalue()


def backbone_rows(specs: Iterable[Any], available: Callable[[Any], bool] = lambda _s: False) -> list[dict[str, Any]]:
    """One row per backbone; ``available(spec)`` says whether its pretrained weights load offline
    (``edgetl.models.weights.available``: passed in, so this module imports no model code)."""
    rows = []
    for s in specs:
        rows.append(
            {
                "name": s.name,
                "input": f"{s.input_size[0]}x{s.input_size[1]}",
                "input_size": list(s.input_size),
                "params_M": round(s.params / 1e6, 2) if s.params else None,
                "MACs_M": round(s.macs / 1e6) if s.macs else None,
                "top1": s.top1,
                "top1_int8": s.top1_int8,
                "weights": s.weight_source,
                "available": available(s),
                "preprocessing": s.preprocessing.to_dict(),
                "notes": s.notes,
            }
        )
    return rows


def write_predictions_csv(results: Sequence[Any], path: str | Path) -> None:
    rows = []
    for r in results:
        d = r.to_dict()
        row = {"file": d["file"], "error": d.get("error", "")}
        for i, (idx, lab, sc) in enumerate(zip(d["indices"], d["labels"], d["scores"]), 1):
            row[f"top{i}_index"], row[f"top{i}_label"], row[f"top{i}_score"] = idx, lab, f"{sc:.6f}"
        rows.append(row)
    k = max((len(r.to_dict()["indices"]) for r in results), default=0)
    cols = ["file"] + [f"top{i}_{p}" for i in range(1, k + 1) for p in ("label", "score", "index")] + ["error"]
    atomic_write_text(path, csv_text(rows, cols))
