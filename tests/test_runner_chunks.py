"""Runners convert pixels to floats a step/chunk at a time (export verification and bench hold only the
uint8 pixels of the whole set): the chunked results equal one call on everything."""

from __future__ import annotations

import numpy as np


def test_keras_runner_chunks_equal_one_call(monkeypatch):
    import keras

    from edgetl.preprocess import Preprocessing
    from edgetl.runtime.keras_runner import KerasRunner

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inp))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    px = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    whole = model.predict(px.astype(np.float32), verbose=0)
    monkeypatch.setattr(KerasRunner, "CHUNK", 3)
    runner = KerasRunner(model, ["a", "b", "c"], Preprocessing(input_size=(8, 8)), batch_size=2)
    calls = []
    real = model.predict
    monkeypatch.setattr(model, "predict", lambda a, **kw: calls.append(len(a)) or real(a, **kw))
    got = runner.predict(px)
    assert calls == [3, 3, 1]
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)
    assert runner.predict(px[:0]).shape == (0, 3)


def test_tflite_runner_converts_one_step_at_a_time(tmp_path, monkeypatch):
    import tensorflow as tf

    from edgetl.runtime import tflite_runner as tr

    inp = tf.keras.Input((8, 8, 3))
    out = tf.keras.layers.Dense(2, activation="softmax")(tf.keras.layers.GlobalAveragePooling2D()(inp))
    model = tf.keras.Model(inp, out)
    path = tmp_path / "m.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    px = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    runner = tr.TFLiteRunner(path, max_batch=2)
    seen = []
    real = runner._quantize_input
    monkeypatch.setattr(runner, "_quantize_input", lambda a: seen.append(len(a)) or real(a))
    got = runner.predict(px)
    assert max(seen) <= 2 and sum(seen) == 5
    np.testing.assert_allclose(got, model.predict(px.astype(np.float32), verbose=0), rtol=1e-5, atol=1e-6)


def test_prepare_images_skips_unreadable_files_in_place(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from edgetl.export.artifacts import prepare_images
    from edgetl.preprocess import Preprocessing, prepare

    rng = np.random.default_rng(2)
    paths = []
    for i in range(3):
        f = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(f)
        paths.append(f)
    paths[1].write_bytes(b"not an image")
    pre = Preprocessing(input_size=(16, 16))
    px, y, bad = prepare_images([SimpleNamespace(path=p, label=i) for i, p in enumerate(paths)], pre)
    assert px.shape == (2, 16, 16, 3) and px.dtype == np.uint8 and list(y) == [0, 2]
    assert len(bad) == 1 and "1.png" in bad[0]
    np.testing.assert_array_equal(px[1], prepare(paths[2], pre))
