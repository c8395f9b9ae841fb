"""A tiny CNN backbone (random init) so tests and smoke runs train in seconds."""

from __future__ import annotations

from typing import Any


def build_tiny_cnn(spec: Any, weights: str | None = None, include_top: bool = False) -> Any:
    import keras

    if weights not in (None, "none"):
        from edgetl.errors import UsageError

        raise UsageError(f"{spec.name} has no pretrained weights; use --weights none")
    h, w = spec.input_size
    pre = spec.preprocessing
    inp = keras.Input((h, w, 3), name="image")
    x = keras.layers.Normalization(
        mean=list(pre.mean), variance=[s * s for s in pre.std], name="stem_normalize"
    )(inp)
    for i, ch in enumerate((8, 16)):
        x = keras.layers.Conv2D(ch, 3, strides=2, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"block{i}_relu")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="top_pool")(x)
        x = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inp, x, name=spec.name)
