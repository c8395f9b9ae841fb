"""Image files -> tf.data pipelines that decode as they go (fine-tuning on images): no code path holds
every decoded image, only the batches in flight.

Each file goes through exactly the preprocessing of :func:`edgetl.data.decode_paths` (and of
``load_dataset(preprocessing=...)``): :func:`edgetl.preprocess.load_rgb` (EXIF orientation, colour
conversion, the decompression-bomb guard) then :func:`edgetl.preprocess.resize_rgb` with the run's
deployment resize, run in a ``tf.numpy_function`` by parallel map workers (Pillow releases the GIL).
Undecodable files were already skipped, with a warning, when the folder was scanned
(:func:`edgetl.data.load_dataset`); a file that stops decoding after that stops the run with
:class:`StreamDecodeError`'s one-line message (the same policy as the streamed frozen-base pass).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from edgetl.data.tfdata import Augmenter, labelled_batches
from edgetl.errors import EdgetlError
from edgetl.preprocess import DEFAULT_MAX_PIXELS, Preprocessing, load_rgb, resize_rgb

#: prefix of the error a decode worker raises; :func:`decode_error` finds it in TensorFlow's error text
MARKER = "edgetl-stream-decode: "


class StreamDecodeError(EdgetlError):
    """A file that decoded when the folder was scanned no longer does."""


def load_pixels(path: str, pre: Preprocessing, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 (H, W, 3) model input of one file, exactly as :func:`edgetl.data.decode_paths` makes it."""
    return resize_rgb(load_rgb(path, max_pixels=max_pixels), pre)


def decode_error(exc: BaseException) -> StreamDecodeError | None:
    """The one-line error of a decode worker's failure inside a TensorFlow error, else None."""
    text = str(exc)
    if MARKER not in text:
        return None
    msg = text.split(MARKER, 1)[1].splitlines()[0].strip()
    return StreamDecodeError(f"{msg} (the file changed after the images were checked; run again to skip it)")


def files_dataset(paths: Sequence[str], labels: np.ndarray, num_classes: int, batch_size: int, seed: int,
                  pre: Preprocessing, max_pixels: int | None = DEFAULT_MAX_PIXELS, shuffle: bool = True,
                  sample_weight: np.ndarray | None = None, augmenter: Augmenter | None = None) -> Any:
    """``(x float32, one-hot y[, w])`` batches decoded from the files as they are read.

    The file list (with labels and weights) is shuffled with ``seed`` and reshuffled every epoch,
    then decoded in parallel (order kept), batched and augmented as :func:`edgetl.data.training_dataset`
    does on decoded arrays: the same seed gives the same order, the same images and the same views.
    """
    import tensorflow as tf

    h, w = pre.input_size

    def decode(p: bytes) -> np.ndarray:
        try:
            return load_pixels(os.fsdecode(p), pre, max_pixels)
        except EdgetlError as exc:  # surfaces as a TensorFlow error carrying this text (see decode_error)
            raise ValueError(MARKER + str(exc)) from None

    parts: tuple[Any, ...] = (np.asarray([os.fsencode(p) for p in paths], dtype=object), np.asarray(labels, np.int32))
    if sample_weight is not None:
        parts += (np.asarray(sample_weight, np.float32),)
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle:
        ds = ds.shuffle(max(len(paths), 1), seed=seed, reshuffle_each_iteration=True)

    def _decode(p: Any, *rest: Any) -> Any:
        x = tf.numpy_function(decode, [p], tf.uint8, stateful=False)
        x.set_shape((h, w, 3))
        return (x, *rest)

    ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return labelled_batches(ds, num_classes, seed, augmenter)
