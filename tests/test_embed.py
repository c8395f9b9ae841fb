"""The frozen-base engine: ONNX Runtime when it reproduces TensorFlow, TensorFlow otherwise."""

from __future__ import annotations

import numpy as np
import pytest


def _extractor():
    import keras

    from edgetl.models import build

    base = build("tiny_cnn", weights="none", include_top=False)
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    return keras.Model(base.input, [pooled, base.output])


@pytest.fixture(scope="module")
def model():
    return _extractor()


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)


def test_onnxruntime_matches_tensorflow(model, batch):
    from edgetl.embed import frozen_forward

    fwd = frozen_forward(model, "auto")
    out = fwd(batch)
    assert fwd.engine == "onnxruntime" and not fwd.notes
    assert fwd.max_abs_diff is not None and fwd.max_abs_diff < 1e-3
    ref = [np.asarray(o) for o in model(batch, training=False)]
    assert [o.shape for o in out] == [r.shape for r in ref]
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r, atol=1e-4, rtol=1e-4)
    assert fwd.to_dict()["engine"] == "onnxruntime"


def test_gpu_or_tensorflow_engine_skips_onnx(model, batch):
    from edgetl.embed import frozen_forward

    for fwd in (frozen_forward(model, "auto", gpu=True), frozen_forward(model, "tensorflow")):
        assert fwd.engine == "tensorflow" and fwd.convert_seconds is None
        assert fwd(batch)[0].shape == (5, int(model.outputs[0].shape[-1]))


def test_mismatch_falls_back_to_tensorflow(model, batch, monkeypatch):
    import edgetl.embed as embed

    real = embed._ort_session

    def wrong(m, threads):
        sess, name = real(m, threads)

        class Off:
            def run(self, outputs, feed):
                return [o + 1.0 for o in sess.run(outputs, feed)]  # off by 1: far beyond rounding

        return Off(), name

    monkeypatch.setattr(embed, "_ort_session", wrong)
    fwd = embed.frozen_forward(model, "onnxruntime")
    out = fwd(batch)
    assert fwd.engine == "tensorflow" and "does not reproduce" in fwd.notes[0]
    np.testing.assert_allclose(out[0], np.asarray(model(batch, training=False)[0]), atol=1e-5)


def test_conversion_failure_falls_back(model, batch, monkeypatch):
    import edgetl.embed as embed

    def boom(m, threads):
        raise RuntimeError("no converter here")

    monkeypatch.setattr(embed, "_ort_session", boom)
    fwd = embed.frozen_forward(model, "auto")
    assert fwd.engine == "tensorflow" and "no converter here" in fwd.notes[0]
    assert len(fwd(batch)) == 2
    with pytest.raises(ValueError):
        embed.frozen_forward(model, "tpu")
