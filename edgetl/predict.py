"""``edgetl predict``: top-k labels for images, from a backbone, a run, or an exported file."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgetl.errors import EdgetlError, UsageError
from edgetl.preprocess import is_image_file, prepare
from edgetl.runtime.base import Runner, TopK, top_k


def collect_images(items: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively) into image files; keep explicit files as given."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q))
            if not found:
                raise UsageError(f"no image files in folder {p}")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise UsageError(f"image not found: {p}")
    return out


def open_runner(target: str, weights: str | None = "imagenet", threads: int | None = None) -> Runner:
    """A runner for a backbone name, a run directory or a model file."""
    from edgetl.models import registry

    if not Path(target).exists():
        if registry.is_backbone(target):
            from edgetl.runtime.keras_runner import backbone_runner

            return backbone_runner(target, weights=weights)
        raise UsageError(
            f"{target!r} is neither a file, a run directory nor a backbone; backbones: {', '.join(registry.names())}"
        )
    from edgetl.runtime.loader import runner_for

    return runner_for(target, threads=threads)


def predict_files(target: str, images: Sequence[str | Path], k: int = 5, weights: str | None = "imagenet",
                  threads: int | None = None, batch_size: int = 16) -> list[TopK]:
    """Top-k predictions for every image (files or folders) with ``target``'s own preprocessing.

    Unreadable images are reported in the result (``error``) instead of aborting the batch.
    """
    files = collect_images(images)
    runner = open_runner(target, weights=weights, threads=threads)
    results: list[TopK] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        good, arrays, errors = [], [], {}
        for f in chunk:
            try:
                arrays.append(prepare(f, runner.preprocessing))
                good.append(f)
            except EdgetlError as exc:
                errors[f] = str(exc)
        probs = runner.predict(np.stack(arrays)) if arrays else []
        by_file = {f: row for f, row in zip(good, top_k(probs, runner.labels, k))} if arrays else {}
        for f in chunk:
            if f in by_file:
                idx, labs, scores = by_file[f]
                results.append(TopK(str(f), idx, labs, scores))
            else:
                results.append(TopK(str(f), [], [], [], extra={"error": errors[f]}))
    if files and all("error" in r.extra for r in results):
        raise EdgetlError(f"none of the {len(files)} image(s) could be read; first: {results[0].extra['error']}")
    return results
