"""EfficientNet-Lite0/1/2 as flat functional Keras 3 models, with the ImageNet weights.

EfficientNet-Lite (TensorFlow TPU repo, ``models/official/efficientnet/lite``) is
EfficientNet without squeeze-excite, with ReLU6 instead of swish and with the stem
(32 channels) and head (1280 channels) kept fixed when the width is scaled; the
first and last stages are not repeated more when the depth is scaled. These are the
properties that make it quantize well.

The model takes float32 RGB pixels in [0, 255] and starts with the normalization
``(x - mean) / std`` from ``spec.preprocessing`` (layer ``stem_normalize``). Every
layer of block ``N`` is named ``block{N}_...`` (N as in the checkpoint's ``_blocks.N``),
the stem ``stem_...`` and the head ``top_...``, so fine-tuning can unfreeze the
top K blocks by name (:func:`edgetl.train.unfrozen_layer_names`).

Conventions of the checkpoints, measured (not assumed). Whole image resized to the
input size, no crop. "cd100": first 50 cats + 50 dogs of ``../shared/datasets/cats_dogs/val``,
right when top-1 is in 281-285 (cats) / 151-268 (dogs); "cd500": the first 250 + 250;
"hym": all 398 readable ``../shared/datasets/hymenoptera`` photos (ImageNet-derived),
right when top-1 is exactly ant (310) / bee (309); nll = mean -log p(true class);
conf = mean max softmax probability::

    Lite0                          cd100        cd500              hym
    padding  norm      resize      acc  conf    acc   nll   conf   top1  nll   conf
    same     127/128   bilinear    .89  .409    .876  .622  .398   .749  1.170 .625
    same     127/128   bicubic     .89  .411    .880  .615  .402   .766  1.119 .639
    same     ImageNet  bilinear    .83  .373    .852  .708  .381   .611  1.802 .510
    symm.    127/128   bilinear    .93  .396    .906  .613  .382   .744  1.183 .607
    symm.    127/128   bicubic      -    -      .912  .603  .384   .769  1.124 .619
    symm.    ImageNet  bilinear    .83  .352    .862  .740  .360   .613  1.813 .502
    same, 127/128, bilinear, BN eps 1e-5 (instead of 1e-3): cd100 .88, conf .365
    same, 127/128, bilinear, BGR input: cd500 .866, nll .692, conf .350

    Lite1 / Lite2 (same | symmetric padding, 127/128, bilinear)
    hym top1   .796 | .794     .829 | .839      hym nll   1.251 | 1.284   1.070 | 1.066
    hym conf   .524 | .495     .551 | .555      cd200 acc  .860 | .875    .910 | .925
    ImageNet mean/std instead of 127/128 (same padding): hym top1 .751 (Lite1), .744 (Lite2)

Verdict:

* normalization: mean 127 / std 128 (inputs in [-1, 1], the TF Lite repo's
  ``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3``) wins everywhere, by 4-14 top-1
  points on hym; ImageNet mean/std is wrong for these weights.
* BN epsilon 1e-3 (TF) beats 1e-5 (PyTorch) in confidence (.409 vs .365): the weights are
  the TensorFlow originals converted to efficientnet_pytorch names.
* padding: the data do not separate the two (differences of 1-3 points, in both
  directions: symmetric is ahead on cats_dogs accuracy, "same" has the better nll /
  confidence for Lite0 and Lite1). TF "same" is kept because the weights were trained
  in TensorFlow (previous point), because timm's ``tf_efficientnet_lite*`` port of the
  same TF weights uses it, and because it is what TFLite runs without extra pad ops.
  ``padding="symmetric"`` stays available for re-measuring.
* resize: bicubic (the TF eval preprocessing) is +0.4 points on cd500 and +1.7 on hym
  for Lite0, within noise on cats_dogs; bilinear is kept in the registry because it is
  what on-device pipelines (MediaPipe) use. A candidate to revisit.

Parity: the flat Keras graph matches timm's ``tf_efficientnet_lite0/1/2`` loaded from the
same checkpoints to ~1e-6 in softmax probabilities (``tests/test_lite_parity.py``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.errors import ModelFileError, UsageError
from edgetl.models.registry import block_index  # noqa: F401 - re-exported: the naming contract lives in the registry

if TYPE_CHECKING:
    from edgetl.models.registry import BackboneSpec

#: variant -> (width multiplier, depth multiplier, input resolution)
LITE_VARIANTS: dict[int, tuple[float, float, int]] = {
    0: (1.0, 1.0, 224),
    1: (1.0, 1.1, 240),
    2: (1.1, 1.2, 260),
    3: (1.2, 1.4, 280),
    4: (1.4, 1.8, 300),
}

#: EfficientNet-B0 stages: (kernel, stride, expand ratio, input filters, output filters, repeats)
_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
#: measured, see the module docstring
BN_EPSILON = 1e-3
PADDING = "same"  # TF asymmetric "same" padding, not PyTorch-style symmetric padding

@dataclass(frozen=True)
class BlockConfig:
    index: int
    kernel: int
    stride: int
    expand_ratio: int
    in_filters: int
    out_filters: int

    @property
    def expanded(self) -> int:
        return self.in_filters * self.expand_ratio

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (as in the TF reference)."""
    if width == 1.0:
        return filters
    filters = filters * width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def _variant(spec: BackboneSpec) -> int:
    idx = int(spec.options.get("variant", -1))
    if idx not in LITE_VARIANTS:
        raise UsageError(f"{spec.name}: unknown EfficientNet-Lite variant {idx!r}")
    return idx


def block_configs(spec: BackboneSpec) -> list[BlockConfig]:
    """The MBConv blocks of a Lite variant, in order (index = checkpoint ``_blocks.N``)."""
    width, depth, _ = LITE_VARIANTS[_variant(spec)]
    blocks: list[BlockConfig] = []
    last = len(_STAGES) - 1
    for s, (k, stride, e, fin, fout, reps) in enumerate(_STAGES):
        # Lite: the stem stays at 32 channels, and the first and last stages keep their repeats.
        fin = STEM_FILTERS if s == 0 else round_filters(fin, width)
        fout = round_filters(fout, width)
        reps = reps if s in (0, last) else math.ceil(depth * reps)
        for r in range(reps):
            blocks.append(BlockConfig(len(blocks), k, stride if r == 0 else 1, e, fin if r == 0 else fout, fout))
    return blocks


def num_blocks(spec: BackboneSpec) -> int:
    """Number of MBConv blocks (16 for Lite0, 21 for Lite1 and Lite2)."""
    return len(block_configs(spec))


def _pad(keras: Any, x: Any, kernel: int, stride: int, name: str, padding: str) -> tuple[Any, str]:
    """TF "same" padding, or PyTorch-style symmetric zero padding before a "valid" strided conv."""
    if stride > 1 and padding == "symmetric":
        return keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x), "valid"
    return x, "same"


def _conv(keras: Any, x: Any, filters: int, kernel: int, stride: int, name: str, padding: str) -> Any:
    x, pad = _pad(keras, x, kernel, stride, name, padding)
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=pad, use_bias=False, name=name)(x)


def _dwconv(keras: Any, x: Any, kernel: int, stride: int, name: str, padding: str) -> Any:
    x, pad = _pad(keras, x, kernel, stride, name, padding)
    return keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=pad, use_bias=False, name=name)(x)


def _bn_relu(keras: Any, x: Any, bn_name: str, relu_name: str | None, eps: float) -> Any:
    x = keras.layers.BatchNormalization(epsilon=eps, momentum=0.99, name=bn_name)(x)
    if relu_name:
        x = keras.layers.ReLU(max_value=6.0, name=relu_name)(x)
    return x


def build_efficientnet_lite(
    spec: BackboneSpec,
    weights: str | Path | None = "imagenet",
    include_top: bool = False,
    *,
    padding: str = PADDING,
    bn_epsilon: float = BN_EPSILON,
) -> Any:
    """Build an EfficientNet-Lite backbone as one flat functional Keras model.

    Args:
        spec: a registry spec of family ``efficientnet_lite`` (``options["variant"]`` = 0..4).
        weights: ``"imagenet"`` (the converted checkpoint, see :mod:`edgetl.models.weights`),
            None (random init), or a path: ``.pth`` (legacy PyTorch) / ``.npz`` in
            efficientnet_pytorch naming, or a Keras ``.weights.h5`` / ``.keras`` file.
        include_top: add global average pooling + the 1000-class softmax.
        padding: ``"same"`` (TF, what the weights were trained with) or ``"symmetric"``;
            only for the convention measurements.
        bn_epsilon: BatchNorm epsilon (1e-3, as in TF).

    Returns:
        ``keras.Model`` named ``efficientnet_lite{N}``: input float32 (H, W, 3) pixels in [0, 255];
        output (N, h, w, 1280) features, or (N, 1000) probabilities with ``include_top``.

    Raises:
        WeightsUnavailableError: ``"imagenet"`` asked for and no checkpoint/cache found.
        ModelFileError: a weights file that does not match the architecture.
    """
    import keras

    if padding not in ("same", "symmetric"):
        raise UsageError(f"padding must be 'same' or 'symmetric', not {padding!r}")
    idx = _variant(spec)
    layers = keras.layers
    h, w = spec.input_size
    pre = spec.preprocessing

    inputs = keras.Input(shape=(h, w, 3), dtype="float32", name="pixels")
    mean = [float(m) for m in pre.mean]
    std = [float(s) for s in pre.std]
    if len(set(mean)) == 1 and len(set(std)) == 1:
        scale: Any = 1.0 / std[0]
        offset: Any = -mean[0] / std[0]
    else:
        scale = [1.0 / s for s in std]
        offset = [-m / s for m, s in zip(mean, std)]
    x = layers.Rescaling(scale=scale, offset=offset, name="stem_normalize")(inputs)

    x = _conv(keras, x, STEM_FILTERS, 3, 2, "stem_conv", padding)
    x = _bn_relu(keras, x, "stem_bn", "stem_relu", bn_epsilon)

    for b in block_configs(spec):
        p = f"block{b.index}_"
        shortcut = x
        if b.expand_ratio != 1:
            x = layers.Conv2D(b.expanded, 1, padding="same", use_bias=False, name=p + "expand_conv")(x)
            x = _bn_relu(keras, x, p + "expand_bn", p + "expand_relu", bn_epsilon)
        x = _dwconv(keras, x, b.kernel, b.stride, p + "dwconv", padding)
        x = _bn_relu(keras, x, p + "bn", p + "relu", bn_epsilon)
        x = layers.Conv2D(b.out_filters, 1, padding="same", use_bias=False, name=p + "project_conv")(x)
        x = _bn_relu(keras, x, p + "project_bn", None, bn_epsilon)
        if b.residual:
            x = layers.Add(name=p + "add")([x, shortcut])

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _bn_relu(keras, x, "top_bn", "top_relu", bn_epsilon)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="top_pool")(x)
        x = layers.Dense(NUM_CLASSES, activation="softmax", name="top_predictions")(x)
    model = keras.Model(inputs, x, name=f"efficientnet_lite{idx}")

    if weights is None:
        return model
    if isinstance(weights, str) and weights == "imagenet":
        from edgetl.models import weights as weights_mod

        assign_checkpoint_weights(model, spec, weights_mod.lite_weights(spec), include_top)
        return model
    path = Path(weights)
    if path.suffix in (".pth", ".pt", ".npz"):
        from edgetl.models import weights as weights_mod

        assign_checkpoint_weights(model, spec, weights_mod.load_weight_file(path), include_top)
        return model
    if not path.is_file():
        raise ModelFileError(f"{path}: no such weights file")
    try:
        model.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a mismatching file
        raise ModelFileError(f"{path}: cannot load into {model.name} ({type(exc).__name__}: {exc})") from None
    return model


def _checkpoint_map(spec: BackboneSpec, include_top: bool) -> dict[str, tuple[str, str]]:
    """Keras layer name -> (checkpoint prefix, kind) with kind in conv/dw/bn/dense."""
    m = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn")}
    for b in block_configs(spec):
        p, c = f"block{b.index}_", f"_blocks.{b.index}."
        if b.expand_ratio != 1:
            m[p + "expand_conv"] = (c + "_expand_conv", "conv")
            m[p + "expand_bn"] = (c + "_bn0", "bn")
        m[p + "dwconv"] = (c + "_depthwise_conv", "dw")
        m[p + "bn"] = (c + "_bn1", "bn")
        m[p + "project_conv"] = (c + "_project_conv", "conv")
        m[p + "project_bn"] = (c + "_bn2", "bn")
    m["top_conv"] = ("_conv_head", "conv")
    m["top_bn"] = ("_bn1", "bn")
    if include_top:
        m["top_predictions"] = ("_fc", "dense")
    return m


def assign_checkpoint_weights(model: Any, spec: BackboneSpec, state: dict[str, np.ndarray], include_top: bool) -> None:
    """Copy efficientnet_pytorch-style arrays (PyTorch layouts) into the Keras layers.

    Raises:
        ModelFileError: a tensor is missing or has the wrong shape for this variant.
    """

    def get(key: str) -> np.ndarray:
        if key not in state:
            raise ModelFileError(
                f"weights for {spec.name} lack {key!r} (wrong variant or not an EfficientNet-Lite file?)"
            )
        return np.asarray(state[key], dtype=np.float32)

    for layer_name, (key, kind) in _checkpoint_map(spec, include_top).items():
        layer = model.get_layer(layer_name)
        if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
            values = [get(key + ".weight").transpose(2, 3, 1, 0)]
        elif kind == "dw":  # (ch, 1, kh, kw) -> (kh, kw, ch, 1)
            values = [get(key + ".weight").transpose(2, 3, 0, 1)]
        elif kind == "bn":  # gamma, beta, moving mean, moving variance
            values = [get(key + s) for s in (".weight", ".bias", ".running_mean", ".running_var")]
        else:  # (classes, features) -> (features, classes)
            values = [get(key + ".weight").T, get(key + ".bias")]
        expected = [tuple(v.shape) for v in layer.get_weights()]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ModelFileError(f"weights for {spec.name}: {key} has shape {got}, layer {layer_name} needs {expected}")
        layer.set_weights(values)
