"""Runs Keras models (TensorFlow imported here only)."""

from __future__ import annotations

from edgetl.errors import one_line

from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.preprocess import Preprocessing


class KerasRunner:
    format = "keras"
    runtime = "tensorflow"
    precision = "fp32"
    device = "cpu"
    CHUNK = 256  # images converted to float32 and handed to Keras per predict call

    def __init__(self, model: Any, labels: list[str], preprocessing: Preprocessing, batch_size: int = 32):
        self.model = model
        self.labels = labels
        self.preprocessing = preprocessing
        self.batch_size = batch_size

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        from edgetl.runtime.base import as_batch

        x = as_batch(pixels)  # a PixelStore stays one: read CHUNK images at a time
        if len(x) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        # float32 copies of CHUNK images at a time (4x the uint8 pixels), not of the whole set
        outs = [self.model.predict(x[i:i + self.CHUNK].astype(np.float32), batch_size=self.batch_size, verbose=0)
                for i in range(0, len(x), self.CHUNK)]
        return np.asarray(np.concatenate(outs), dtype=np.float32)

    @property
    def threads(self) -> int | None:
        """TensorFlow's intra-op thread setting in force (None: TensorFlow's own default)."""
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads() or None

    def timer(self, pixels: np.ndarray) -> Callable[[], Any]:
        """The call to time: a compiled graph call on a constant batch, result fetched to the host."""
        import tensorflow as tf

        fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        x = tf.constant(np.asarray(pixels, np.float32))
        return lambda: fn(x).numpy()

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "runtime": self.runtime, "precision": self.precision, "threads": self.threads,
                "device": "cpu"}


def backbone_runner(name: str, weights: str | None = "imagenet") -> KerasRunner:
    """The backbone with its own 1000-class ImageNet head."""
    from edgetl.models import build, get_spec
    from edgetl.models.weights import imagenet_labels

    spec = get_spec(name)
    model = build(spec.name, weights=weights, include_top=True)
    return KerasRunner(model, imagenet_labels(), spec.preprocessing.imagenet_eval())


def load_keras_model(path: str | Path) -> Any:
    """Load a ``.keras`` file in safe mode; a bad file is a clear error, not a traceback."""
    from edgetl.errors import ModelFileError

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file not found: {p}")
    import keras

    try:
        return keras.saving.load_model(p, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - zip, h5 and deserialization errors all mean "bad file"
        raise ModelFileError(f"{p}: not a loadable Keras model ({one_line(exc, 200)})") from None
