"""A procedural image dataset for ``edgetl demo``: no download, no data needed.

Four shape classes (circle, square, triangle, star) drawn with random size,
position, rotation and colour on random gradient backgrounds with clutter and
noise: easy for an ImageNet-pretrained network after transfer learning, not
trivial for a linear model on pixels (colour, position and background carry no
class information).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4)) for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    else:  # star
        pts = []
        for k in range(10):
            rr = 1.0 if k % 2 == 0 else 0.42
            a = angle + k * math.pi / 5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    return [(cx + r * x, cy + r * y) for x, y in pts]


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``kind`` on a cluttered random background."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[None, :, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    bg = (c0 * (1 - t) + c1 * t).astype(np.float32) * np.ones((size, size, 3), np.float32)
    im = Image.fromarray(bg.clip(0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 9))):  # clutter: thin lines that belong to no class
        x0, y0, x1, y1 = (float(v) for v in rng.integers(0, size, 4))
        d.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    r = float(rng.uniform(0.16, 0.34)) * size
    cx, cy = (float(v) for v in rng.uniform(r, size - r, 2))
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    if np.abs(np.asarray(color, float) - bg[int(cy), int(cx)]).sum() < 120:  # keep the shape visible
        color = tuple(255 - int(v) for v in bg[int(cy), int(cx)])
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    else:
        d.polygon(_polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi))), fill=color)
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
    arr = np.asarray(im, np.float32) + rng.normal(0, float(rng.uniform(4, 16)), (size, size, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def make_shapes_dataset(root: str | Path, n_train: int = 40, n_val: int = 20, size: int = 224, seed: int = 0,
                        classes: tuple[str, ...] = SHAPES) -> Path:
    """Write ``root/train/<shape>/*.jpg`` and ``root/val/<shape>/*.jpg``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for kind in classes:
            d = root / split / kind
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(kind, size, rng).save(d / f"{kind}_{i:03d}.jpg", quality=92)
    return root
