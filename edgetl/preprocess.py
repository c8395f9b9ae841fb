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

#: The named resize implementations (``Preprocessing.resize`` / ``edgetl train --resize``): the client a
#: file is deployed to. ``mediapipe``: MediaPipe Tasks' CPU path (every uint8 model, and float models
#: without a GPU delegate); ``gpu``: a GPU texture sampler (MediaPipe's GPU path, half-pixel centres);
#: ``pillow``: Pillow's BILINEAR (antialiased), what edgetl used before the setting existed.
RESIZES = ("mediapipe", "gpu", "pillow")
#: What a run or file without a ``resize`` field was made with.
LEGACY_RESIZE = "pillow"

_RESAMPLE = {
    "pillow": Image.Resampling.BILINEAR,
    "bilinear": Image.Resampling.BILINEAR,  # the name files written before RESIZES carry: Pillow's
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
        resize: how the image is resized to ``input_size``: one of :data:`RESIZES` (the deployment
            client's own resize, see :func:`resize_array`), or a Pillow filter name (``bilinear`` =
            ``pillow``, ``bicubic``, ``nearest``, ``area``; the ImageNet evaluation crop uses bicubic).
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
    if pre.resize in ("mediapipe", "gpu") and not 0.0 < pre.crop < 1.0:
        return resize_array(np.asarray(im, dtype=np.uint8), (h, w), pre.resize)
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


def check_resize(name: str) -> str:
    """``name`` when it is a known resize (:data:`RESIZES` or a Pillow filter name), else a one-line error."""
    if name in RESIZES or name in _RESAMPLE:
        return name
    raise EdgetlError(f"unknown resize {name!r}; choose one of: {', '.join(RESIZES)}")


def resize_array(pixels: np.ndarray, size: tuple[int, int], method: str = "mediapipe") -> np.ndarray:
    """Stretch a whole uint8 (h, w, C) image onto ``size`` = (H, W) the way a deployment client does.

    Args:
        pixels: uint8 array (h, w, C) (or (h, w)).
        size: output (H, W).
        method: ``mediapipe``: MediaPipe Tasks' CPU path, bit for bit: ``cv::warpPerspective`` with
            ``INTER_LINEAR`` and ``BORDER_REPLICATE`` mapping corners to corners (output x samples source
            ``x * w / W``), with OpenCV's fixed-point bilinear (coordinates rounded to 1/32 pixel,
            15-bit weights, rounded sum); no antialiasing. ``gpu``: a GPU sampler's ``GL_LINEAR`` with
            clamp-to-edge at texel centres (half-pixel: source ``(x + 0.5) * w / W - 0.5``), float
            weights, rounded; no antialiasing. ``pillow``: Pillow's BILINEAR (half-pixel, antialiased).

    Returns:
        uint8 array (H, W, C).
    """
    out_h, out_w = int(size[0]), int(size[1])
    src = np.asarray(pixels)
    if src.dtype != np.uint8:
        raise EdgetlError(f"resize_array takes uint8 pixels, not {src.dtype}")
    if method in ("pillow", "bilinear"):
        if src.ndim == 3 and src.shape[2] == 1:
            src = src[..., 0]
        return np.asarray(Image.fromarray(src).resize((out_w, out_h), Image.Resampling.BILINEAR), dtype=np.uint8)
    if method == "mediapipe":
        return _warp_fixed_point(src, out_h, out_w)
    if method == "gpu":
        return _bilinear_half_pixel(src, out_h, out_w)
    raise EdgetlError(f"unknown resize {method!r}; choose one of: {', '.join(RESIZES)}")


def resize_variant(pixels: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                   scale_jitter: float = 0.02) -> np.ndarray:
    """One random draw of how some client resizes this image: training views for resize-robust models.

    The implementation is drawn uniformly from :data:`RESIZES` (corner vs half-pixel mapping,
    antialiased or not), after cropping each side of the source by up to ``scale_jitter`` of its
    size (a source scale of ``1 - 2 * scale_jitter`` to 1, and a sub-pixel to few-pixel offset).
    """
    h, w = pixels.shape[:2]
    if scale_jitter > 0 and h > 4 and w > 4:
        t, b, left, r = (int(v) for v in np.floor(rng.uniform(0.0, scale_jitter, 4) * np.array([h, h, w, w]) + 0.5))
        pixels = pixels[t:h - b, left:w - r]
    return resize_array(pixels, size, RESIZES[int(rng.integers(len(RESIZES)))])


_INTER_BITS = 5  # OpenCV: sub-pixel positions in 1/32 of a pixel
_INTER_TAB = 1 << _INTER_BITS


def _fixed_point_axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: (first source index, second source index, fraction in 1/32), replicate border.

    OpenCV's warpPerspective computes ``X = cvRound(x * M[0] * INTER_TAB_SIZE)`` in double (round half
    to even, as ``np.rint``), then splits it into ``X >> INTER_BITS`` and ``X & (INTER_TAB_SIZE - 1)``.
    """
    scaled = np.rint(np.arange(n_out, dtype=np.float64) * (n_in / n_out) * _INTER_TAB).astype(np.int64)
    i0 = scaled >> _INTER_BITS
    frac = scaled & (_INTER_TAB - 1)
    return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), frac


def _column_gather(rows: np.ndarray, x: np.ndarray, channels: int) -> np.ndarray:
    """``rows[:, x]`` of an (n, w * channels) array viewed as (n, w, channels): one ``np.take`` over flat
    columns (2-4x faster than fancy indexing the middle axis of a 3-D array)."""
    idx = (x[:, None] * channels + np.arange(channels)).ravel()
    return np.take(rows, idx, axis=1)


def _warp_fixed_point(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """OpenCV's remapBilinear on 8-bit pixels with the warpPerspective coordinates of a corner-to-corner stretch.

    The 2D weight table (``initInterTab2D``) is ``saturate_cast<short>((1 - fy)(1 - fx) * 2^15)`` etc. with
    fy, fx multiples of 1/32, so each weight is exactly ``wy * wx * 32`` (wy, wx in 0..32) and they sum to
    2^15 without correction; the result is ``(sum(v * w) + 2^14) >> 15`` = ``(sum(v * wy * wx) + 2^9) >> 10``.
    Integer sums are exact, so two passes (rows, then columns) give the same bits as OpenCV's 2x2 sum.
    """
    h, w = src.shape[:2]
    c = int(np.prod(src.shape[2:], dtype=np.int64))
    y0, y1, fy = _fixed_point_axis(out_h, h)
    x0, x1, fx = _fixed_point_axis(out_w, w)
    flat = src.reshape(h, w * c)
    vert = flat[y0].astype(np.int32) * (_INTER_TAB - fy).astype(np.int32)[:, None]  # whole-row gathers
    vert += flat[y1].astype(np.int32) * fy.astype(np.int32)[:, None]  # <= 255 * 32
    acc = _column_gather(vert, x0, c) * np.repeat((_INTER_TAB - fx).astype(np.int32), c)
    acc += _column_gather(vert, x1, c) * np.repeat(fx.astype(np.int32), c)  # <= 255 * 1024
    return ((acc + (1 << 9)) >> 10).astype(np.uint8).reshape(out_h, out_w, *src.shape[2:])


def _bilinear_half_pixel(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear at texel centres with clamp-to-edge (GL_LINEAR / ``half_pixel_centers=True``), no antialiasing."""

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
        i0 = np.floor(pos).astype(np.int64)
        return i0, np.minimum(i0 + 1, n_in - 1), (pos - i0).astype(np.float32)

    h, w = src.shape[:2]
    c = int(np.prod(src.shape[2:], dtype=np.int64))
    y0, y1, fy = axis(out_h, h)
    x0, x1, fx = axis(out_w, w)
    fy = fy[:, None]
    fx = np.repeat(fx, c)
    flat = src.reshape(h, w * c).astype(np.float32)
    r0, r1 = flat[y0], flat[y1]  # the same arithmetic, in the same order, as a per-pixel 2x2 sum
    top = _column_gather(r0, x0, c) * (1 - fx) + _column_gather(r0, x1, c) * fx
    bottom = _column_gather(r1, x0, c) * (1 - fx) + _column_gather(r1, x1, c) * fx
    out = np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)
    return out.reshape(out_h, out_w, *src.shape[2:])


def prepare(path: str | Path, pre: Preprocessing, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load one image file as a model input: uint8 (H, W, 3) RGB at ``pre.input_size``."""
    return resize_rgb(load_rgb(path, max_pixels=max_pixels), pre)


def prepare_batch(paths: Sequence[str | Path], pre: Preprocessing,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Stack :func:`prepare` over several files: uint8 (N, H, W, 3) in RAM; ``progress(done, total)`` after each.

    For a set that may not fit in RAM, :func:`edgetl.pixels.decode_store` (what export and bench use).
    """
    h, w = pre.input_size
    out = np.empty((len(paths), h, w, 3), np.uint8)  # filled in place: one copy of the pixels, not a list + a stack
    for i, p in enumerate(paths):
        out[i] = prepare(p, pre)
        if progress is not None:
            progress(i + 1, len(paths))
    return out


def normalize(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Apply mean/std to pixels in [0, 255] (for runtimes whose graph does not include it)."""
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    return (pixels.astype(np.float32) - mean) / std
