"""Runners for .keras / .tflite / .onnx agree with each other; bad files are one-line errors.

The ``artifacts`` fixture makes its own exports from ``tiny_run`` with TensorFlow APIs directly
(not through ``edgetl export``) into a private copy of the run, so these tests do not depend on,
or collide with, the export module's own tests. Other test files import it from here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import ModelFileError
from edgetl.preprocess import prepare_batch

_CACHE: dict[str, dict[str, Path]] = {}


def build_artifacts(run: Path, dest: Path) -> dict[str, Path]:
    """fp32 + int8 (uint8 IO) TFLite and fp32 ONNX (opset 17) of ``run``'s model, in ``dest/export``."""
    if str(dest) in _CACHE:
        return _CACHE[str(dest)]
    import keras
    import tensorflow as tf

    from edgetl.data import load_dataset
    from edgetl.run import load_run

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.keras", "labels.txt", "config.json"):
        shutil.copy(run / name, dest / name)
    info = load_run(dest)
    exp = dest / "export"
    exp.mkdir(exist_ok=True)
    shutil.copy(dest / "labels.txt", exp / "labels.txt")
    model = keras.saving.load_model(dest / "model.keras", compile=False)

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    (exp / "tiny_cnn_fp32.tflite").write_bytes(conv.convert())

    ds = load_dataset(info.config["data_dir"])
    calib = prepare_batch(ds.train.paths[:16], info.preprocessing).astype(np.float32)

    def rep():
        for x in calib:
            yield [x[None]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    (exp / "tiny_cnn_int8.tflite").write_bytes(conv.convert())

    import tf2onnx

    h, w = info.preprocessing.input_size
    spec = (tf.TensorSpec((None, h, w, 3), tf.float32, name="image"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(exp / "tiny_cnn_fp32.onnx"))
    out = {"run": dest, "keras": dest / "model.keras", "tflite_fp32": exp / "tiny_cnn_fp32.tflite",
           "tflite_int8": exp / "tiny_cnn_int8.tflite", "onnx_fp32": exp / "tiny_cnn_fp32.onnx",
           "data": Path(info.config["data_dir"])}
    _CACHE[str(dest)] = out
    return out


@pytest.fixture(scope="session")
def artifacts(tiny_run, tmp_path_factory) -> dict[str, Path]:
    return build_artifacts(tiny_run, tmp_path_factory.getbasetemp() / "bench_run")


@pytest.fixture(scope="session")
def val_pixels(artifacts):
    from edgetl.data import load_dataset
    from edgetl.run import load_run

    info = load_run(artifacts["run"])
    ds = load_dataset(artifacts["data"])
    return prepare_batch(ds.val.paths, info.preprocessing), np.array(ds.val.labels)


def test_runners_agree_across_formats(artifacts, val_pixels):
    from edgetl.runtime.loader import runner_for

    x, y = val_pixels
    probs = {}
    for key in ("run", "tflite_fp32", "tflite_int8", "onnx_fp32"):
        r = runner_for(artifacts[key], threads=1)
        assert r.labels == ["alpha", "beta"]
        assert tuple(r.preprocessing.input_size) == (32, 32)
        p = r.predict(x)
        assert p.dtype == np.float32 and p.shape == (len(x), 2)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=0.02)
        probs[key] = p
    ref = probs["run"]
    for key, tol in (("tflite_fp32", 1e-4), ("onnx_fp32", 1e-4), ("tflite_int8", 0.08)):
        assert np.mean(probs[key].argmax(1) == ref.argmax(1)) >= (1.0 if tol < 1e-3 else 0.9), key
        assert np.max(np.abs(probs[key] - ref)) <= tol, (key, np.max(np.abs(probs[key] - ref)))
    assert np.mean(ref.argmax(1) == y) >= 0.8  # the tiny model did learn


def test_runner_attributes(artifacts):
    from edgetl.runtime.loader import runner_for

    t8 = runner_for(artifacts["tflite_int8"], threads=2)
    assert (t8.format, t8.runtime, t8.precision, t8.threads) == ("tflite", "litert", "int8", 2)
    assert t8.input_dtype == np.uint8
    t32 = runner_for(artifacts["tflite_fp32"], threads=1)
    assert t32.precision == "fp32" and t32.input_dtype == np.float32
    o = runner_for(artifacts["onnx_fp32"], threads=1)
    assert (o.format, o.runtime, o.precision) == ("onnx", "onnxruntime", "fp32")
    assert "CPUExecutionProvider" in o.providers
    k = runner_for(artifacts["keras"])
    assert (k.format, k.runtime) == ("keras", "tensorflow") and k.labels == ["alpha", "beta"]


def test_no_metadata_fallbacks(artifacts, tmp_path, val_pixels):
    """Without labels.txt or metadata: class_i labels, input size from the tensor shape, precision guessed."""
    from edgetl.runtime.loader import runner_for

    for key, name in (("tflite_int8", "model_a.tflite"), ("onnx_fp32", "model_b.onnx")):
        p = tmp_path / name
        shutil.copy(artifacts[key], p)
        r = runner_for(p, threads=1)
        assert r.labels == ["class_0", "class_1"]
        assert tuple(r.preprocessing.input_size) == (32, 32)
        assert r.predict(val_pixels[0][:3]).shape == (3, 2)
    assert runner_for(tmp_path / "model_a.tflite").precision == "int8"


def test_tflite_reads_appended_zip_metadata(artifacts, tmp_path):
    """The export engineer's contract: a zip with labels.txt + edgetl.json appended to the flatbuffer."""
    import io
    import json
    import zipfile

    from edgetl.preprocess import Preprocessing
    from edgetl.runtime.loader import runner_for

    buf = io.BytesIO()
    pre = Preprocessing(input_size=(32, 32), resize="bicubic")
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labels.txt", "cat\ndog\n")
        zf.writestr("edgetl.json", json.dumps({"labels": ["cat", "dog"], "preprocessing": pre.to_dict(), "precision": "int8"}))
    p = tmp_path / "withmeta.tflite"
    p.write_bytes(artifacts["tflite_int8"].read_bytes() + buf.getvalue())
    r = runner_for(p, threads=1)
    assert r.labels == ["cat", "dog"] and r.preprocessing.resize == "bicubic" and r.precision == "int8"


@pytest.mark.parametrize("suffix", [".tflite", ".onnx", ".keras"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_bad_model_files_are_one_line_errors(artifacts, tmp_path, suffix, damage):
    from edgetl.runtime.loader import runner_for

    src = {".tflite": artifacts["tflite_fp32"], ".onnx": artifacts["onnx_fp32"], ".keras": artifacts["keras"]}[suffix]
    data = src.read_bytes()
    bad = {"empty": b"", "truncated": data[: len(data) // 3], "garbage": b"\x00not a model\xff" * 50}[damage]
    p = tmp_path / f"bad{suffix}"
    p.write_bytes(bad)
    with pytest.raises(ModelFileError) as ei:
        runner_for(p, threads=1)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg


def test_wrong_format_and_missing(artifacts, tmp_path):
    from edgetl.runtime.loader import runner_for

    p = tmp_path / "actually_onnx.tflite"
    shutil.copy(artifacts["onnx_fp32"], p)
    with pytest.raises(ModelFileError, match="not a TFLite model"):
        runner_for(p)
    q = tmp_path / "actually_tflite.onnx"
    shutil.copy(artifacts["tflite_fp32"], q)
    with pytest.raises(ModelFileError):
        runner_for(q)
    with pytest.raises(ModelFileError, match="not found"):
        runner_for(tmp_path / "missing.onnx")
    (tmp_path / "x.pb").write_bytes(b"123")
    with pytest.raises(ModelFileError, match="unsupported"):
        runner_for(tmp_path / "x.pb")
    with pytest.raises(ModelFileError, match="not a run directory"):
        runner_for(tmp_path)


def test_requested_gpu_provider_unavailable(artifacts):
    import onnxruntime as ort

    from edgetl.runtime.env import RuntimeUnavailableError
    from edgetl.runtime.loader import runner_for

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeUnavailableError, match="CUDAExecutionProvider"):
        runner_for(artifacts["onnx_fp32"], providers=["cuda"])


def test_environment_block():
    from edgetl.runtime.env import environment, parse_cpuinfo, summary_line

    env = environment()
    assert env["cpu"]["usable_cores"] >= 1 and "avx2" in env["cpu"]["flags"]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert summary_line(env)
    arm = parse_cpuinfo("processor : 0\nFeatures : fp asimd evtstrm aes crc32 asimddp\nCPU part : 0xd0b\n")
    assert arm["flags"]["neon"] and arm["flags"]["dotprod"] and arm["vnni_or_dotprod"]
    x86 = parse_cpuinfo("model name : Some CPU\nflags : fpu sse2 avx2 fma\n")
    assert x86["model"] == "Some CPU" and x86["flags"]["avx2"] and not x86["vnni_or_dotprod"]
