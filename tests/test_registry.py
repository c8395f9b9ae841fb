"""Backbone registry: one spec per name, preprocessing as data, clear errors."""

from __future__ import annotations

import pytest

from edgetl.errors import UsageError, WeightsUnavailableError
from edgetl.models import build, get_spec, list_specs, names
from edgetl.preprocess import Preprocessing


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UsageError) as exc:
        get_spec("resnet50")
    msg = str(exc.value)
    assert "resnet50" in msg and all(n in msg for n in names())


def test_aliases_resolve():
    assert get_spec("lite0").name == "efficientnet_lite0"
    assert get_spec("mobilenet_v2_0.35").name == "mobilenet_v2_035"
    assert get_spec("mobilenetv2").name == "mobilenet_v2"


def test_specs_carry_preprocessing_as_data():
    for spec in list_specs(include_hidden=True):
        pre = spec.preprocessing
        assert isinstance(pre, Preprocessing)
        assert Preprocessing.from_dict(pre.to_dict()) == pre
        assert len(pre.mean) == 3 and len(pre.std) == 3 and all(s > 0 for s in pre.std)
    assert get_spec("efficientnet_lite1").input_size == (240, 240)
    assert get_spec("efficientnet_lite2").input_size == (260, 260)
    assert {get_spec(n).options["alpha"] for n in names() if n.startswith("mobilenet_v2")} == {0.35, 0.5, 0.75, 1.0, 1.3, 1.4}


@pytest.mark.parametrize("name", ["mobilenet_v2_035", "efficientnet_b0", "tiny_cnn"])
def test_random_init_always_builds_one_flat_graph(name):
    import keras
    import numpy as np

    model = build(name, weights="none", include_top=True)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # no nested models
    h, w = get_spec(name).input_size
    probs = model.predict(np.full((1, h, w, 3), 128.0, np.float32), verbose=0)
    assert probs.shape == (1, 1000)
    assert abs(float(probs.sum()) - 1.0) < 1e-3


def test_keras_weights_offline_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    import keras

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    with pytest.raises(WeightsUnavailableError) as exc:
        build("mobilenet_v2", weights="imagenet")
    msg = str(exc.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in msg
    assert str(tmp_path / "models") in msg and "--weights none" in msg
    assert "\n" not in msg


def test_keras_weights_are_read_from_the_cache(tmp_path, monkeypatch):
    """A file put where the offline message says is used without any download."""
    import keras

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    from edgetl.models.keras_apps import keras_weights_file

    spec = get_spec("mobilenet_v2_035")
    ref = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=0.35, include_top=False, weights=None)
    fname, _ = keras_weights_file(spec, include_top=False)
    (tmp_path / "models").mkdir()
    import h5py
    from keras.src.legacy.saving import legacy_h5_format  # the layout of Keras's published .h5 files

    with h5py.File(tmp_path / "models" / fname, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, ref)
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: (_ for _ in ()).throw(AssertionError("download attempted")))
    model = build("mobilenet_v2_035", weights="imagenet")
    a = [v for v in model.weights if "Conv1" in v.path and "kernel" in v.path][0]
    b = [v for v in ref.weights if "Conv1" in v.path and "kernel" in v.path][0]
    assert np.allclose(np.asarray(a), np.asarray(b))


import numpy as np  # noqa: E402
