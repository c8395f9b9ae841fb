"""Runs a ``.tflite`` file through MediaPipe Tasks' ``ImageClassifier``: the Android/iOS/Python client itself.

Unlike every other runner it takes *images*, not model-sized pixels (``input_kind = "images"``):
MediaPipe reads the file's own metadata and does its own resize (its CPU path: OpenCV's warp,
corners to corners), so a bench row through it measures what a phone app computes, including
the resize. Images are decoded and converted to RGB with :func:`edgetl.preprocess.load_rgb` (the
README's rule for app authors: MediaPipe refuses a 1-channel image for a 3-channel model).

MediaPipe is not a dependency (it pins packages the ``[train]`` extra conflicts with):
``pip install 'edgetl[mediapipe]'``. Without it the runner raises ``RuntimeUnavailableError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np

from edgetl.errors import ModelFileError, first_line
from edgetl.preprocess import Preprocessing, load_rgb
from edgetl.runtime.env import RuntimeUnavailableError
from edgetl.runtime.fileinfo import file_info

INSTALL_HINT = "pip install 'edgetl[mediapipe]'"


def mediapipe_vision() -> tuple[Any, Any, Any]:
    """``(mediapipe, mediapipe.tasks.python, mediapipe.tasks.python.vision)``; RuntimeUnavailableError when not importable."""
    try:
        import mediapipe as mp
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision
    except Exception as exc:  # noqa: BLE001 - any import failure means the client is unavailable
        raise RuntimeUnavailableError(f"MediaPipe is not installed or not importable ({type(exc).__name__}: "
                                      f"{first_line(exc, 120)}); {INSTALL_HINT}") from None
    return mp, mp_tasks, vision


Image = Union[str, Path, np.ndarray]


class MediaPipeRunner:
    """A ``.tflite`` file behind MediaPipe's ``ImageClassifier`` (CPU), following the runner protocol with images."""

    format = "tflite"
    runtime = "mediapipe"
    device = "cpu"
    input_kind = "images"  # predict()/timer() take image files or decoded RGB arrays of any size

    def __init__(self, path: str | Path):
        from edgetl.runtime.tflite_runner import check_tflite_file, io_details

        self.path = Path(path)
        check_tflite_file(self.path)
        self._mp, mp_tasks, vision = mediapipe_vision()
        inp, out = io_details(self.path)
        shape = [int(v) for v in inp["shape"]]
        self.num_classes = int(out["shape"][-1])
        self.input_dtype = np.dtype(inp["dtype"])
        info = file_info(self.path, (shape[1], shape[2]), self.num_classes)
        self.labels = info.labels
        self.preprocessing: Preprocessing = info.preprocessing
        self.precision = info.precision
        self.metadata = info.metadata
        opts = vision.ImageClassifierOptions(base_options=mp_tasks.BaseOptions(model_asset_path=str(self.path)),
                                             max_results=-1)
        try:
            self._clf = vision.ImageClassifier.create_from_options(opts)
        except Exception as exc:  # noqa: BLE001 - MediaPipe raises RuntimeError/ValueError with C++ status text
            raise ModelFileError(f"{self.path}: MediaPipe's ImageClassifier cannot load this model: {first_line(exc, 200)}") from None
        # MediaPipe's CPU inference runs XNNPACK with its own thread default; ImageClassifierOptions has no thread setting.
        self.threads: int | None = None

    def _image(self, item: Image) -> Any:
        arr = np.asarray(load_rgb(item)) if isinstance(item, (str, Path)) else np.asarray(item, dtype=np.uint8)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"MediaPipe runner takes RGB images (H, W, 3), got shape {arr.shape}")
        return self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(arr))

    def _scores(self, result: Any) -> np.ndarray:
        row = np.zeros(self.num_classes, np.float32)
        for c in result.classifications[0].categories:
            if 0 <= c.index < self.num_classes:
                row[c.index] = c.score
        return row

    def predict(self, images: Sequence[Image]) -> np.ndarray:
        """Image files (or RGB arrays of any size) -> float32 scores (N, C), as MediaPipe returns them."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        out = [self._scores(self._clf.classify(self._image(im))) for im in images]
        return np.stack(out) if out else np.zeros((0, self.num_classes), np.float32)

    def timer(self, images: Sequence[Image]) -> Callable[[], Any]:
        """Decode the images once; the timed call classifies each (MediaPipe's resize included, as on a phone)."""
        prepared = [self._image(im) for im in images]
        classify = self._clf.classify

        def run() -> None:
            for im in prepared:
                classify(im)

        return run

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "runtime": self.runtime, "precision": self.precision, "threads": None,
                "device": self.device, "input_dtype": self.input_dtype.name, "has_metadata": bool(self.metadata),
                "edgetl_resize": self.preprocessing.resize,
                "client": "mediapipe.tasks ImageClassifier (its own resize from the original image)",
                "threads_note": "MediaPipe's own XNNPACK default (ImageClassifierOptions has no thread setting)"}

    def close(self) -> None:
        clf, self._clf = getattr(self, "_clf", None), None
        if clf is not None:
            clf.close()
