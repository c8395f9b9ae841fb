"""Data loading: decode once into arrays, skipped files, every image mode -> RGB, tf.data pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder
from edgetl.data import load_dataset, summarize_skipped
from edgetl.errors import EdgetlError, UsageError
from edgetl.preprocess import Preprocessing, load_rgb, prepare

PRE = Preprocessing(input_size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3)


def _write_modes(d):
    """One file per awkward input kind; returns {name: path}."""
    d.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :15] = (200, 30, 30)
    files = {}
    files["gray"] = d / "gray.png"
    Image.fromarray(rgb[..., 0], "L").save(files["gray"])
    files["palette"] = d / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"])
    files["rgba"] = d / "rgba.png"
    rgba = np.dstack([rgb, np.full((20, 30), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(files["rgba"])
    files["cmyk"] = d / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(files["cmyk"])
    files["i16"] = d / "i16.png"
    im16 = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    assert im16.mode.startswith("I")
    im16.save(files["i16"])
    files["gif"] = d / "anim.gif"
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(files["gif"], save_all=True, append_images=frames[1:])
    files["exif"] = d / "exif.jpg"
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(files["exif"], exif=exif)
    return files


def test_every_mode_decodes_to_rgb(tmp_path):
    files = _write_modes(tmp_path / "modes")
    for name, path in files.items():
        im = load_rgb(path)
        assert im.mode == "RGB", name
        arr = prepare(path, PRE)
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8, name
    assert load_rgb(files["exif"]).size == (20, 30)  # EXIF orientation applied: width and height swap
    assert load_rgb(files["rgba"]).getpixel((25, 5))[0] > 100  # composited on white, not black


def test_modes_through_load_dataset(tmp_path):
    root = tmp_path / "data"
    _write_modes(root / "a")
    _write_modes(root / "b")
    ds = load_dataset(root, val_split=0.3, preprocessing=PRE)
    assert ds.skipped == []
    x, y = ds.arrays("train")
    assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3)
    assert len(x) == len(y) == len(ds.train.samples)


def test_decoded_once_matches_prepare_and_validate(tmp_path):
    root = make_image_folder(tmp_path / "d", n_train=7, n_val=3, split=False)
    (root / "alpha" / "broken.jpg").write_bytes(b"not an image")
    a = load_dataset(root, val_split=0.3, seed=3, preprocessing=PRE, workers=2)
    b = load_dataset(root, val_split=0.3, seed=3, validate=True)
    assert a.train.paths == b.train.paths and a.val.paths == b.val.paths  # same split as export/bench rescans
    assert len(a.skipped) == 1 and a.fingerprint()["num_skipped"] == 1
    x, _ = a.arrays("val")
    np.testing.assert_array_equal(x[0], prepare(a.val.paths[0], PRE))


def test_corrupt_files_skipped_and_named(tmp_path):
    root = make_image_folder(tmp_path / "d", n_train=4, n_val=2)
    for i in range(7):
        (root / "train" / "alpha" / f"bad{i}.png").write_bytes(b"\x89PNG garbage")
    ds = load_dataset(root, preprocessing=PRE)
    assert len(ds.skipped) == 7
    msg = summarize_skipped(ds.skipped)
    assert msg.startswith("skipped 7 file(s)") and "bad0.png" in msg and "2 more" in msg


def test_errors(tmp_path):
    with pytest.raises(UsageError):
        load_dataset(tmp_path / "missing", preprocessing=PRE)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UsageError):
        load_dataset(f, preprocessing=PRE)
    one = make_image_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(EdgetlError, match="at least two"):
        load_dataset(one, preprocessing=PRE)
    empty = make_image_folder(tmp_path / "empty")
    for p in (empty / "train" / "beta").iterdir():
        p.write_bytes(b"corrupt")
    with pytest.raises(EdgetlError, match="no valid image in class 'beta'"):
        load_dataset(empty, preprocessing=PRE)


def test_tf_pipelines():
    from edgetl.config import AugmentConfig
    from edgetl.data import build_augmenter, pixels_dataset, training_dataset

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    y = np.arange(10) % 2
    assert build_augmenter(AugmentConfig(enabled=False), 0) is None
    aug = build_augmenter(AugmentConfig(), 0)
    batches = list(training_dataset(x, y, 2, 4, seed=0, augmenter=aug, sample_weight=np.ones(10)))
    xb, yb, wb = batches[0]
    assert xb.dtype.name == "float32" and xb.shape == (4, 32, 32, 3) and yb.shape == (4, 2) and wb.shape == (4,)
    assert float(np.min(xb)) >= 0.0 and float(np.max(xb)) <= 255.0
    assert sum(int(b[0].shape[0]) for b in batches) == 10
    clean = np.concatenate([b.numpy() for b in pixels_dataset(x, 3)])
    np.testing.assert_array_equal(clean, x.astype(np.float32))  # no augmentation, order kept


def test_augmenter_is_seeded_and_flips_exactly():
    import tensorflow as tf

    from edgetl.config import AugmentConfig
    from edgetl.data import Augmenter, build_augmenter, pixels_dataset

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (8, 24, 24, 3), dtype=np.uint8)
    off = AugmentConfig(flip=False, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0)
    assert build_augmenter(off, 0) is None
    aug = build_augmenter(AugmentConfig(), 3)
    view1 = np.concatenate([b.numpy() for b in pixels_dataset(x, 3, aug, view=1)])
    again = np.concatenate([b.numpy() for b in pixels_dataset(x, 3, aug, view=1)])
    view2 = np.concatenate([b.numpy() for b in pixels_dataset(x, 3, aug, view=2)])
    np.testing.assert_array_equal(view1, again)  # same seed and view: the same images, every run
    assert not np.allclose(view1, view2) and not np.allclose(view1, x.astype(np.float32))
    assert view1.min() >= 0.0 and view1.max() <= 255.0 and view1.shape == x.shape
    # flip alone maps every image to itself or its exact mirror, and both happen
    flip = Augmenter(AugmentConfig(rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0), 0)
    out = flip(tf.constant(x), tf.constant([0, 7], tf.int64)).numpy()
    same = [np.array_equal(o, xi) for o, xi in zip(out, x.astype(np.float32))]
    mirrored = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x.astype(np.float32))]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)


def test_training_dataset_augments_differently_each_epoch():
    from edgetl.config import AugmentConfig
    from edgetl.data import build_augmenter, training_dataset

    x = np.full((4, 16, 16, 3), 128, np.uint8)
    x[:, :, :8] = 20  # left half dark: a flip or a rotation changes the pixels
    ds = training_dataset(x, np.zeros(4, int), 2, 4, seed=0, shuffle=False, augmenter=build_augmenter(AugmentConfig(), 0))
    first, second = (next(iter(ds))[0].numpy() for _ in range(2))
    assert not np.allclose(first, second)
    same_seed = training_dataset(x, np.zeros(4, int), 2, 4, seed=0, shuffle=False, augmenter=build_augmenter(AugmentConfig(), 0))
    np.testing.assert_array_equal(next(iter(same_seed))[0].numpy(), first)


def test_pixel_batches_match_the_pipeline():
    from edgetl.config import AugmentConfig
    from edgetl.data import build_augmenter, pixel_batches, pixels_dataset

    x = np.random.default_rng(2).integers(0, 256, (23, 16, 16, 3), dtype=np.uint8)
    aug = build_augmenter(AugmentConfig(), 5)
    for a in (None, aug):
        piped = np.concatenate([b.numpy() for b in pixels_dataset(x, 4, a, view=2)])
        chunked = list(pixel_batches(x, 4, a, view=2, chunk_batches=2))
        assert [len(b) for b in chunked] == [4, 4, 4, 4, 4, 3]
        np.testing.assert_allclose(np.concatenate(chunked), piped, atol=1e-4)  # same seeds per batch index
