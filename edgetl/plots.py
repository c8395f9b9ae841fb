"""Training plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from edgetl.report import atomic_write_bytes


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Loss and accuracy per epoch (train and val), phases separated by a dashed line."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in history]
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            ys = [r.get(prefix + key) for r in history]
            if any(v is not None for v in ys):
                ax.plot(epochs, [float("nan") if v is None else v for v in ys], style, ms=3, label=(prefix or "train_") + key)
        phases = [r.get("phase") for r in history]
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(epochs[i] - 0.5, color="gray", ls="--", lw=1)
                ax.text(epochs[i] - 0.4, ax.get_ylim()[1], str(phases[i]), va="top", fontsize=8, color="gray")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str = "validation") -> None:
    """Confusion matrix with counts (rows: true class, columns: predicted)."""
    import numpy as np

    plt = _plt()
    m = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    side = max(3.5, min(0.5 * n + 2, 20))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center")
    ax.set_yticks(range(n), labels)
    if n <= 30:
        hi = m.max() if m.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > hi / 2 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: {int(np.trace(m))}/{int(m.sum())} correct")
    _save(fig, path)
