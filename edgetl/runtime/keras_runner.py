"""Runs Keras models (TensorFlow imported here only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetl.preprocess import Preprocessing


class KerasRunner:
    format = "keras"
    runtime = "tensorflow"
    precision = "fp32"

    def __init__(self, model: Any, labels: list[str], preprocessing: Preprocessing, batch_size: int = 32):
        self.model = model
        self.labels = labels
        self.preprocessing = preprocessing
        self.batch_size = batch_size

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        x = np.asarray(pixels, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        out = self.model.predict(x, batch_size=self.batch_size, verbose=0)
        return np.asarray(out, dtype=np.float32)


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
        raise ModelFileError(f"{p}: not a loadable Keras model ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
