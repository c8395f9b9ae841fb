"""Backbones from ``keras.applications``: MobileNetV2 and EfficientNetB0.

Keras downloads their ImageNet weights on first use and caches them in
``$KERAS_HOME/models`` (default ``~/.keras/models``). Offline, we say exactly which
file is missing and where to put it instead of letting a socket error escape.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgetl.errors import EdgetlError, WeightsUnavailableError

_KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications"


def keras_cache_dir() -> Path:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def keras_weights_file(spec: Any, include_top: bool) -> tuple[str, str]:
    """(file name, download URL) of the Keras ImageNet weights for ``spec``."""
    from edgetl.models.weights import keras_weights_filename

    name = keras_weights_filename(spec, include_top)
    if spec.family == "mobilenet_v2":
        return name, f"{_KERAS_BASE_URL}/mobilenet_v2/{name}"
    return name, f"https://storage.googleapis.com/keras-applications/{name}"


def _resolve_weights(spec: Any, weights: str | None, include_top: bool) -> str | None:
    """Turn ``"imagenet"`` into a local file, downloading like Keras does when online."""
    if weights is None:
        return None
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise EdgetlError(f"weights file not found: {weights}")
        return weights
    fname, url = keras_weights_file(spec, include_top)
    local = keras_cache_dir() / fname
    if local.is_file() and local.stat().st_size > 0:
        return str(local)
    import keras

    try:
        return keras.utils.get_file(fname, url, cache_subdir="models")
    except Exception as exc:  # noqa: BLE001 - any network failure means the same thing to the user
        raise WeightsUnavailableError(
            f"cannot download ImageNet weights for {spec.name} ({type(exc).__name__}); "
            f"download {url} on a connected machine and put it at {local}, or use --weights none"
        ) from None


def _wrap(spec: Any, base: Any, include_top: bool, normalize: bool) -> Any:
    """Put the edgetl input contract (pixels in [0, 255], normalization in the graph) in front."""
    import keras

    h, w = spec.input_size
    pre = spec.preprocessing
    inp = keras.Input((h, w, 3), name="image")
    x = inp
    if normalize:
        x = keras.layers.Normalization(
            mean=list(pre.mean), variance=[s * s for s in pre.std], name="stem_normalize"
        )(x)
    # Re-apply the base's layers on our input so the result is one flat functional graph
    # (nested models break tfmot and some converters).
    out = _call_flat(base, x)
    return keras.Model(inp, out, name=spec.name)


def _call_flat(base: Any, x: Any) -> Any:
    import keras

    tensors = {id(base.inputs[0]): x}
    for node_layer in base.layers[1:]:
        inbound = node_layer._inbound_nodes[0]
        args = [tensors[id(t)] for t in inbound.input_tensors]
        y = node_layer(args[0] if len(args) == 1 else args)
        tensors[id(node_layer.output)] = y
    _ = keras
    return tensors[id(base.outputs[0])]


def build_mobilenet_v2(spec: Any, weights: str | None = "imagenet", include_top: bool = False) -> Any:
    import keras

    path = _resolve_weights(spec, weights, include_top)
    h, w = spec.input_size
    base = keras.applications.MobileNetV2(
        input_shape=(h, w, 3), alpha=spec.options["alpha"], include_top=include_top, weights=None
    )
    if path:
        base.load_weights(path)
    return _wrap(spec, base, include_top, normalize=True)


def build_efficientnet_b0(spec: Any, weights: str | None = "imagenet", include_top: bool = False) -> Any:
    import keras

    path = _resolve_weights(spec, weights, include_top)
    h, w = spec.input_size
    base = keras.applications.EfficientNetB0(input_shape=(h, w, 3), include_top=include_top, weights=None)
    if path:
        base.load_weights(path)
    # EfficientNetB0 normalizes inside its own graph (Rescaling + Normalization layers).
    return _wrap(spec, base, include_top, normalize=False)
