"""One definition of how an image becomes a model input, shared by training, export and every runtime.

Every edgetl model takes RGB pixels in [0, 255] (uint8, or float32 holding the
same values) at the backbone's input size; the backbone's normalization
(``(x - mean) / std``) is folded into the model graph. Device code therefore only
decodes, converts to RGB and resizes: there is no normalization left to get wrong.

This module imports numpy and Pillow only, so it runs on a device without TensorFlow.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from edgetl.errors import EdgetlError

#: File suffixes (lower-cased) that are treated as images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

#: Default refusal limit against decompression bombs (pixels). 0 or None disables it.
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (~ 0.25 GB for RGBA)

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "area": Image.Resampling.BOX,
}


@dataclass(frozen=True)
class Preprocessing:
    """How pixels are prepared for a backbone.

    Attributes:
        input_size: (height, width) the model expects.
        mean: per-channel mean subtracted from pixels in [0, 255] (RGB order).
        std: per-channel divisor applied after the mean.
        resize: Pillow resampling filter used to resize the image to ``input_size``.
        crop: fraction of the image kept by a center crop before resizing. 1.0 (the default
            for training and deployment) resizes the whole image, as MediaPipe Tasks does on
            device, so nothing near the border is lost. 0.875 is the ImageNet evaluation
            convention (resize the shorter side to size / 0.875, center crop), which the
            backbones' own 1000-class heads were published with: see :func:`imagenet_eval`.
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    resize: str = "bilinear"
    normalization_in_graph: bool = field(default=True)
    crop: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["color"] = "RGB"
        d["pixel_range"] = [0, 255]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(
            input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            resize=str(d.get("resize", "bilinear")),
            normalization_in_graph=bool(d.get("normalization_in_graph", True)),
            crop=float(d.get("crop", 1.0)),
        )

    def imagenet_eval(self) -> "Preprocessing":
        """The same preprocessing with the ImageNet evaluation crop (0.875, bicubic).

        Used when a backbone's own ImageNet head classifies photos (``edgetl predict BACKBONE``).
        Measured on the first 50 cats + 50 dogs of cats_dogs/val with Lite0: whole image 89/100
        correct (bilinear and bicubic alike), center crop 0.875 91/100.
        """
        from dataclasses import replace

        return replace(self, crop=0.875, resize="bicubic")


def is_image_file(path: Path) -> bool:
    """True when ``path`` has an image suffix (any letter case) and is not a hidden file."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def load_rgb(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file to an 8-bit RGB Pillow image.

    Applies EXIF orientation, takes the first frame of animations, and converts
    grayscale, palette, RGBA (composited on white), CMYK and 16-bit images to RGB.

    Raises:
        EdgetlError: the file cannot be read or decoded, or is larger than ``max_pixels``.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning, EXIF warnings
            with Image.open(path) as im:
                w, h = im.size
                if max_pixels and w * h > max_pixels:
                    raise EdgetlError(
                        f"{path}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                        "(decompression bomb guard; raise it with --max-pixels)"
                    )
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im) if im.getexif() else im
                return _to_rgb(im)
    except EdgetlError:
        raise
    except Image.DecompressionBombError as exc:
        raise EdgetlError(f"{path}: image too large ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.UnidentifiedImageError) as exc:
        raise EdgetlError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # noqa: BLE001 - a decoder bug on hostile input must not crash a run
        raise EdgetlError(f"{path}: image decoder failed ({type(exc).__name__}: {exc})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(np.nan_to_num(arr).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def resize_rgb(im: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Resize a decoded RGB image to the model input: uint8 array of shape (H, W, 3)."""
    h, w = pre.input_size
    method = _RESAMPLE.get(pre.resize, Image.Resampling.BILINEAR)
    if 0.0 < pre.crop < 1.0:
        # Shorter side to size / crop, then a center crop of exactly (h, w).
        scale = max(h, w) / pre.crop / min(im.size)
        nw, nh = max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale))
        im = im.resize((nw, nh), method)
        left, top = (nw - w) // 2, (nh - h) // 2
        im = im.crop((left, top, left + w, top + h))
    elif im.size != (w, h):
        im = im.resize((w, h), method)
    return np.asarray(im, dtype=np.uint8)


def prepare(path: str | Path, pre: Preprocessing, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load one image file as a model input: uint8 (H, W, 3) RGB at ``pre.input_size``."""
    return resize_rgb(load_rgb(path, max_pixels=max_pixels), pre)


def prepare_batch(paths: Sequence[str | Path], pre: Preprocessing,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Stack :func:`prepare` over several files: uint8 (N, H, W, 3); ``progress(done, total)`` after each."""
    h, w = pre.input_size
    if not paths:
        return np.zeros((0, h, w, 3), np.uint8)
    out = []
    for i, p in enumerate(paths):
        out.append(prepare(p, pre))
        if progress is not None:
            progress(i + 1, len(paths))
    return np.stack(out)


def normalize(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Apply mean/std to pixels in [0, 255] (for runtimes whose graph does not include it)."""
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    return (pixels.astype(np.float32) - mean) / std
