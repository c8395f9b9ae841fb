"""Image loader and folder scanning against hostile input: never a crash or a hang, every skipped file named."""

from __future__ import annotations

import io
import os
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgetl.data import load_dataset, summarize_skipped
from edgetl.errors import EdgetlError
from edgetl.preprocess import Preprocessing, load_rgb, prepare

PRE = Preprocessing(input_size=(16, 16))


def _encode(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8), "RGB")
    im.save(buf, fmt, **kw)
    return buf.getvalue()


VALID = {fmt: _encode(fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP")}
SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}


def _load_or_error(path) -> None:
    t0 = time.perf_counter()
    try:
        arr = prepare(path, PRE)
        assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8
    except EdgetlError as exc:
        assert str(path) in str(exc)  # the file is named
    assert time.perf_counter() - t0 < 5.0  # never a hang


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=2048))
def test_random_bytes_never_crash(tmp_path, data):
    p = tmp_path / "random.jpg"
    p.write_bytes(data)
    _load_or_error(p)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(sorted(VALID)), cut=st.floats(0.0, 1.0), flip=st.lists(st.integers(0, 10_000), max_size=8))
def test_truncated_and_corrupted_files_never_crash(tmp_path, fmt, cut, flip):
    data = bytearray(VALID[fmt][: max(0, int(len(VALID[fmt]) * cut))])
    for pos in flip:  # valid header, garbage body
        if data and pos % len(data) > 16:
            data[pos % len(data)] ^= 0xFF
    p = tmp_path / f"x{SUFFIX[fmt]}"
    p.write_bytes(bytes(data))
    _load_or_error(p)


def test_zero_byte_file_is_a_named_error(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(EdgetlError, match="empty.png"):
        load_rgb(p)


def test_decompression_bomb_refused_by_header(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(p)  # 400 Mpx, a few KB on disk
    t0 = time.perf_counter()
    with pytest.raises(EdgetlError, match="limit"):
        load_rgb(p, max_pixels=50_000_000)
    assert time.perf_counter() - t0 < 2.0
    with pytest.raises(EdgetlError, match="limit"):
        load_rgb(p, max_pixels=10)


@pytest.mark.parametrize(
    "mode,maker",
    [
        ("L", lambda: Image.new("L", (9, 7), 100)),
        ("P", lambda: Image.new("RGB", (9, 7), (10, 200, 30)).convert("P")),
        ("RGBA", lambda: Image.new("RGBA", (9, 7), (10, 20, 30, 0))),
        ("LA", lambda: Image.new("LA", (9, 7), (50, 255))),
        ("CMYK", lambda: Image.new("CMYK", (9, 7), (0, 255, 0, 0))),
        ("I;16", lambda: Image.fromarray(np.full((7, 9), 65535, np.uint16))),
        ("1", lambda: Image.new("1", (9, 7), 1)),
        ("1x1", lambda: Image.new("RGB", (1, 1), (1, 2, 3))),
    ],
)
def test_modes_become_rgb(tmp_path, mode, maker):
    im = maker()
    fmt = "JPEG" if im.mode in ("CMYK",) else "PNG"
    p = tmp_path / f"im_{mode.replace(';', '')}.{fmt.lower()}"
    im.save(p, fmt)
    out = load_rgb(p)
    assert out.mode == "RGB"
    if mode == "RGBA":  # fully transparent pixels composite onto white
        assert out.getpixel((0, 0)) == (255, 255, 255)
    if mode == "I;16":
        assert out.getpixel((0, 0)) == (255, 255, 255)
    if mode == "CMYK":
        r, g, b = out.getpixel((0, 0))
        assert g < 60 and r > 200 and b > 200  # magenta, not inverted garbage


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif.tobytes())
    assert load_rgb(p).size == (10, 30)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, b = load_rgb(p).getpixel((0, 0))
    assert r > 200 and b < 50


# ------------------------------------------------------------------ folder shapes


def _img(path, color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), color).save(path)


def test_empty_folder_and_one_class_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgetlError, match="at least two class"):
        load_dataset(tmp_path / "empty")
    _img(tmp_path / "one" / "cats" / "a.png")
    with pytest.raises(EdgetlError, match="at least two class"):
        load_dataset(tmp_path / "one")


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(EdgetlError, match="not a folder"):
        load_dataset(f)
    with pytest.raises(EdgetlError, match="not found"):
        load_dataset(tmp_path / "missing")


def test_class_with_only_bad_files_is_an_error_naming_it(tmp_path):
    _img(tmp_path / "a" / "1.png")
    _img(tmp_path / "a" / "2.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(EdgetlError, match="'b'"):
        load_dataset(tmp_path)


def test_class_with_one_image_stays_in_train(tmp_path):
    for i in range(4):
        _img(tmp_path / "a" / f"{i}.png")
    _img(tmp_path / "b" / "only.png")
    _img(tmp_path / "b" / "two.png")
    ds = load_dataset(tmp_path, val_split=0.25)
    assert ds.train.counts()["b"] >= 1 and ds.val.counts()["b"] >= 1


def test_hidden_nested_symlinks_spaces_and_bad_files(tmp_path):
    root = tmp_path / "d"
    for c in ("cat", "dog"):
        for i in range(3):
            _img(root / "train" / c / f"{c} photo {i}.JPG")
            _img(root / "val" / c / f"{c}_{i}.PNG")
    _img(root / "train" / "cat" / "nested" / "deeper" / "n.png")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "train" / "cat" / ".hidden.png").write_bytes(b"junk")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (root / "train" / "dog" / "zero.png").write_bytes(b"")
    os.symlink(root / "train" / "dog", root / "train" / "dog" / "loop")  # a symlink loop
    os.symlink(root / "val" / "cat" / "cat_0.PNG", root / "train" / "cat" / "link.png")
    if sys.platform.startswith("linux"):
        weird = os.fsencode(str(root / "train" / "cat")) + b"/caf\xe9.png"  # not UTF-8
        with open(weird, "wb") as fh:
            Image.new("RGB", (5, 5)).save(fh, "PNG")
    ds = load_dataset(root)
    counts = ds.train.counts()
    assert counts["cat"] == 3 + 1 + 1 + (1 if sys.platform.startswith("linux") else 0)
    assert counts["dog"] == 3
    skipped = {os.path.basename(p) for p, _ in ds.skipped}
    assert skipped == {"broken.jpg", "zero.png"}
    msg = summarize_skipped(ds.skipped)
    assert msg.startswith("skipped 2 file(s)") and "broken.jpg" in msg and "zero.png" in msg
    fp = ds.fingerprint()
    assert fp["num_skipped"] == 2 and len(fp["files_sha256"]) == 64
    import json

    json.dumps(fp)  # non-UTF-8 names must still serialize


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    for c in ("a", "b"):
        for i in range(2):
            _img(tmp_path / c / f"{i}.png")
    locked = tmp_path / "a" / "locked.png"
    _img(locked)
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: simulate the permission error instead
        real_open = Image.open

        def guarded(fp, *a, **k):
            if str(fp).endswith("locked.png"):
                raise PermissionError(13, "Permission denied", str(fp))
            return real_open(fp, *a, **k)

        monkeypatch.setattr(Image, "open", guarded)
    ds = load_dataset(tmp_path)
    assert [os.path.basename(p) for p, _ in ds.skipped] == ["locked.png"]
    assert "ermission" in ds.skipped[0][1]


def test_classes_differing_only_by_case_are_refused(tmp_path):
    _img(tmp_path / "Cat" / "a.png")
    _img(tmp_path / "cat" / "b.png")
    with pytest.raises(EdgetlError, match="letter case"):
        load_dataset(tmp_path)
