"""Zero-shot sanity check of the converted ImageNet weights on real photos (needs ../shared).

The first 50 cats and first 50 dogs (sorted by name) of cats_dogs/val, prepared with
``edgetl.preprocess.prepare`` and the ImageNet evaluation convention the weights were
published with (``Preprocessing.imagenet_eval()``: center crop 0.875, bicubic; the same
path ``edgetl predict BACKBONE`` takes), through our Lite0 with its
1000-class head: a cat counts as right when the top-1 class is one of the domestic cats
(281-285), a dog when it is one of the dog breeds (151-268).

Measured with the checkpoint's own conventions (TF "same" padding, mean 127 / std 128,
BN eps 1e-3): 91/100 with the 0.875 center crop; 89/100 when the whole image is squashed
to 224 (bilinear or bicubic). The misses are black-and-white or white cats taken for
schipperke / Westie / Samoyed / Arctic fox, or cats in boxes. ImageNet mean/std instead of
127/128 drops this to 83/100, so the check catches a broken conversion.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_dataset

from edgetl.models import build, get_spec
from edgetl.models.weights import available
from edgetl.models.weights import imagenet_labels
from edgetl.preprocess import prepare

pytestmark = pytest.mark.shared

MIN_ACCURACY = 0.90
CATS = range(281, 286)
DOGS = range(151, 269)


def test_lite0_zero_shot_cats_and_dogs():
    root = shared_dataset("cats_dogs") / "val"
    spec = get_spec("efficientnet_lite0")
    if not available(spec):
        pytest.skip("EfficientNet-Lite0 weights not installed")
    cats = sorted((root / "cats").iterdir())[:50]
    dogs = sorted((root / "dogs").iterdir())[:50]
    x = np.stack([prepare(p, spec.preprocessing.imagenet_eval()) for p in cats + dogs]).astype(np.float32)

    model = build(spec.name, weights="imagenet", include_top=True)
    probs = model.predict(x, batch_size=25, verbose=0)
    top1 = probs.argmax(axis=1)
    ok_cats = np.isin(top1[:50], CATS)
    ok_dogs = np.isin(top1[50:], DOGS)
    accuracy = float(np.concatenate([ok_cats, ok_dogs]).mean())

    labels = imagenet_labels()
    right = np.concatenate([ok_cats, ok_dogs])
    misses = [f"{p.name}->{labels[c]}" for p, c, ok in zip(cats + dogs, top1, right) if not ok]
    print(
        f"zero-shot Lite0: {accuracy:.2f} ({int(ok_cats.sum())}/50 cats, {int(ok_dogs.sum())}/50 dogs), "
        f"mean max prob {probs.max(axis=1).mean():.3f}; misses: {', '.join(misses)}"
    )
    assert accuracy >= MIN_ACCURACY
