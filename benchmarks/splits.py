"""Selection on val, report on test, for datasets that ship no test split (issue 13).

cats_dogs and hymenoptera have ``train/`` and ``val/`` only, and every choice edgetl makes (early
stopping, keeping the fine-tuned weights, the doctor) looks at val. :func:`with_test_split` gives
the benchmark a copy of the folder layout, made of symlinks (``../shared`` is never touched): the
same ``train/``, each class's val files sorted by name with the first half as ``val/`` (selection)
and the second half as ``test/`` (reported, seen by no choice).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def with_test_split(data: Path, work: Path) -> Path:
    """``data`` itself when it has a ``test/`` split; else a symlinked layout with val halved (see above)."""
    data = Path(data).resolve()
    if (data / "test").is_dir():
        return data
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise SystemExit(f"{data}: expected train/ and val/ folders")
    out = Path(work) / f"{data.name}_val_test"
    if out.exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    os.symlink(data / "train", tmp / "train", target_is_directory=True)
    for cls in sorted(p for p in (data / "val").iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        half = math.ceil(len(files) / 2)
        for split, part in (("val", files[:half]), ("test", files[half:])):
            d = tmp / split / cls.name
            d.mkdir(parents=True, exist_ok=True)
            for f in part:
                os.symlink(f, d / f.name)
    tmp.rename(out)
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of k successes in n, in percent."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (round(100 * (mid - half), 2), round(100 * (mid + half), 2))


def accuracy_cell(k: int, n: int) -> str:
    """``"99.20 % (496/500, 98.0-99.7)"``: a count and its interval beside every accuracy."""
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.2f} % ({k}/{n}, {lo:.1f}-{hi:.1f})" if n else "-"
