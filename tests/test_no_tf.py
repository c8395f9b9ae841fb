"""The base install (numpy, pillow, typer, ai-edge-litert, onnxruntime): predict and bench work without TensorFlow.

Each check runs ``python -m edgetl ...`` in a subprocess whose ``sitecustomize`` puts an import
blocker first on ``sys.meta_path``: importing tensorflow, keras, tf_keras or tf2onnx raises ImportError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_runtime import artifacts, build_artifacts  # noqa: F401 - shared session fixture

BLOCKER = '''
import sys
_BLOCKED = ("tensorflow", "keras", "tf_keras", "tf2onnx")

class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ImportError(f"{name} is blocked: simulated base install without TensorFlow")
        return None

sys.meta_path.insert(0, _NoTensorFlow())
'''


@pytest.fixture(scope="module")
def no_tf_env(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("no_tf_site")
    (d / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(d) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run(env, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240)


def test_blocker_really_blocks(no_tf_env):
    p = _run(no_tf_env, "-c", "import tensorflow")
    assert p.returncode != 0 and "blocked" in p.stderr
    p = _run(no_tf_env, "-c", "import edgetl.runtime.loader, edgetl.bench, edgetl.bench_report, edgetl.predict, edgetl.cli; print('ok')")
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr


def test_predict_without_tensorflow(no_tf_env, artifacts, tmp_path):  # noqa: F811
    img = next((artifacts["data"] / "val" / "alpha").glob("*.png"))
    for key in ("tflite_int8", "onnx_fp32"):
        p = _run(no_tf_env, "-m", "edgetl", "predict", str(artifacts[key]), str(img), "--json", "--threads", "1")
        assert p.returncode == 0, p.stderr
        (res,) = json.loads(p.stdout)
        assert res["labels"][0] in ("alpha", "beta") and len(res["scores"]) == 2
    csv_path = tmp_path / "p.csv"
    p = _run(no_tf_env, "-m", "edgetl", "predict", str(artifacts["tflite_fp32"]), str(artifacts["data"] / "val"), "--csv", str(csv_path))
    assert p.returncode == 0, p.stderr
    assert len(csv_path.read_text().splitlines()) == 1 + 12


def test_bench_without_tensorflow(no_tf_env, artifacts, tmp_path):  # noqa: F811
    out = tmp_path / "bench"
    p = _run(no_tf_env, "-m", "edgetl", "bench", str(artifacts["run"]), "--threads", "1", "--min-runs", "5", "--min-time", "0",
             "--warmup-runs", "1", "--warmup-time", "0", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    by = {r["model"]: r for r in d["rows"]}
    assert by["model.keras"]["status"].startswith("skipped: TensorFlow is not installed")
    for name in ("tiny_cnn_fp32.tflite", "tiny_cnn_int8.tflite", "tiny_cnn_fp32.onnx"):
        assert by[name]["status"] == "ok" and by[name]["top1"] is not None and by[name]["p50_ms"] > 0
    assert d["reference"] == "tiny_cnn_fp32.tflite"  # no Keras: the fp32 artifact is the float reference
    assert d["environment"]["packages"]["tensorflow"]  # installed, but never imported
    assert (out / "bench.json").is_file() and (out / "bench.csv").is_file() and (out / "bench.md").is_file()
