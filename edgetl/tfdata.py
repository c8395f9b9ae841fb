"""In-memory arrays -> tf.data pipelines, and the image augmentation (TensorFlow imported here)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.config import AugmentConfig


def build_augmenter(aug: AugmentConfig, seed: int) -> Any | None:
    """A Keras preprocessing stack over float32 pixels in [0, 255], or None when augmentation is off.

    Zoom covers both zoom-in (random crop + resize) and zoom-out; every layer is seeded.
    """
    if not aug.enabled:
        return None
    import keras

    layers: list[Any] = []
    if aug.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if aug.rotation > 0:
        layers.append(keras.layers.RandomRotation(aug.rotation, fill_mode="reflect", seed=seed + 1))
    if aug.zoom > 0:
        layers.append(keras.layers.RandomZoom((-aug.zoom, aug.zoom), fill_mode="reflect", seed=seed + 2))
    if aug.brightness > 0:
        layers.append(keras.layers.RandomBrightness(aug.brightness, value_range=(0, 255), seed=seed + 3))
    if aug.contrast > 0:
        layers.append(keras.layers.RandomContrast(aug.contrast, value_range=(0, 255), seed=seed + 4))
    if not layers:
        return None
    return keras.Sequential(layers, name="augment")


def pixels_dataset(x: np.ndarray, batch_size: int, augmenter: Any | None = None) -> Any:
    """Batches of float32 pixels (optionally augmented) for inference, in order (no labels)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    ds = ds.map(lambda b: tf.cast(b, tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
    if augmenter is not None:
        ds = ds.map(lambda b: augmenter(b, training=True), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def training_dataset(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    sample_weight: np.ndarray | None = None,
    augmenter: Any | None = None,
) -> Any:
    """``(x float32, one-hot y[, w])`` batches from in-memory arrays.

    ``x`` can be uint8 pixels or cached float16 activations; either way it is cast to
    float32 in the pipeline, so the arrays stay compact in memory. The source tensors
    are already in memory, so ``cache()`` only pays off before the random map, which is
    where it sits; shuffling is seeded and reshuffles every epoch.
    """
    import tensorflow as tf

    parts: tuple[Any, ...] = (x, y.astype(np.int32))
    if sample_weight is not None:
        parts += (sample_weight.astype(np.float32),)
    ds = tf.data.Dataset.from_tensor_slices(parts).cache()
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def _map(xb: Any, yb: Any, *w: Any) -> Any:
        xb = tf.cast(xb, tf.float32)
        if augmenter is not None:
            xb = augmenter(xb, training=True)
        out = (xb, tf.one_hot(yb, num_classes))
        return out + tuple(w)

    return ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
