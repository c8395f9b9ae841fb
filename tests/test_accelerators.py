"""Accelerator runtimes: OpenVINO and LiteRT's CompiledModel agree with the Keras model; what this
machine lacks (a GPU, an NPU, CUDA, OpenVINO itself) is a ``skipped`` row naming it, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.bench import BenchSettings, parse_runtimes, plan_jobs, run_bench
from edgetl.cli import main
from edgetl.errors import UsageError
from test_runtime import artifacts, build_artifacts, val_pixels  # noqa: F401 - shared session fixtures

FAST = dict(warmup_runs=1, warmup_time=0.0, min_runs=3, min_time=0.0)


def _have_openvino() -> bool:
    from edgetl.runtime.openvino_runner import available_devices

    return "CPU" in available_devices()


needs_openvino = pytest.mark.skipif(not _have_openvino(), reason="OpenVINO not installed (pip install 'edgetl[openvino]')")


def _keras_probs(artifacts, x):  # noqa: F811
    from edgetl.runtime.loader import runner_for

    return runner_for(artifacts["run"]).predict(x)


@needs_openvino
@pytest.mark.parametrize("key,tol", [("tflite_fp32", 1e-4), ("onnx_fp32", 1e-4), ("tflite_int8", 0.08)])
def test_openvino_runner_agrees_with_keras(artifacts, val_pixels, key, tol):  # noqa: F811
    from edgetl.runtime.loader import runner_for

    x, _ = val_pixels
    ref = _keras_probs(artifacts, x)
    r = runner_for(artifacts[key], threads=1, runtime="openvino")
    assert (r.runtime, r.device, r.threads, r.format) == ("openvino", "cpu", 1, artifacts[key].suffix[1:])
    assert r.labels == ["alpha", "beta"] and tuple(r.preprocessing.input_size) == (32, 32)
    assert r.precision == ("int8" if "int8" in key else "fp32")
    p = r.predict(x)
    assert p.dtype == np.float32 and p.shape == ref.shape
    assert np.max(np.abs(p - ref)) <= tol, np.max(np.abs(p - ref))
    assert np.mean(p.argmax(1) == ref.argmax(1)) >= (1.0 if tol < 1e-3 else 0.9)
    # the same answer through the timed path (static batch 1) as through predict
    fn = r.timer(x[:1])
    fn()
    assert r.describe()["openvino"] and r.describe()["inference_precision"]


@needs_openvino
def test_openvino_missing_device_is_unavailable(artifacts):  # noqa: F811
    from edgetl.runtime.env import RuntimeUnavailableError
    from edgetl.runtime.openvino_runner import OpenVINORunner, available_devices

    if any(d.startswith("NPU") for d in available_devices()):
        pytest.skip("this machine has an NPU")
    with pytest.raises(RuntimeUnavailableError, match="NPU not available"):
        OpenVINORunner(artifacts["onnx_fp32"], device="npu")


@pytest.mark.parametrize("key,tol", [("tflite_fp32", 1e-4), ("tflite_int8", 0.08)])
def test_litert_compiled_runner_agrees_with_keras(artifacts, val_pixels, key, tol):  # noqa: F811
    from edgetl.runtime.loader import runner_for

    x, _ = val_pixels
    ref = _keras_probs(artifacts, x)
    r = runner_for(artifacts[key], threads=1, runtime="litert-compiled")
    assert (r.runtime, r.device, r.threads) == ("litert-compiled", "cpu", 1)
    p = r.predict(x)
    assert np.max(np.abs(p - ref)) <= tol
    # bit-identical to the Interpreter runner: the same XNNPACK kernels behind a different API
    np.testing.assert_array_equal(p, runner_for(artifacts[key], threads=1).predict(x))
    r.close()
    r.close()  # idempotent


def test_litert_compiled_without_gpu_is_unavailable(artifacts):  # noqa: F811
    from edgetl.runtime.env import RuntimeUnavailableError
    from edgetl.runtime.litert_compiled import CompiledModelRunner

    try:
        r = CompiledModelRunner(artifacts["tflite_fp32"], accelerator="npu")
    except RuntimeUnavailableError as exc:
        assert "NPU" in str(exc)
    else:  # an NPU that runs every op: then it must give the model's answer
        assert r.device == "npu"


def test_parse_runtimes():
    assert parse_runtimes(["litert", "openvino:GPU", "onnxruntime:cuda"]) == (
        ("litert", None), ("openvino", "gpu"), ("onnxruntime", "cuda"))
    with pytest.raises(UsageError, match="unknown runtime 'tensorrt'"):
        parse_runtimes(["tensorrt"])
    with pytest.raises(UsageError, match="unknown device 'npu' for runtime litert"):
        parse_runtimes(["litert:npu"])
    with pytest.raises(UsageError):
        BenchSettings(runtimes=())


def test_unavailable_runtimes_are_skipped_rows(artifacts, monkeypatch):  # noqa: F811
    """OpenVINO missing, an OpenVINO/LiteRT device missing, a CUDA provider the build lacks: skipped rows
    that name what is missing, while the CPU rows are measured."""
    import edgetl.runtime.openvino_runner as ovr

    monkeypatch.setattr(ovr, "available_devices", lambda: [])
    res = run_bench([artifacts["onnx_fp32"], artifacts["tflite_int8"]],
                    BenchSettings(threads=(1,), runtimes=("openvino", "litert-compiled:gpu", "onnxruntime:cuda", "litert"), **FAST),
                    data=artifacts["data"])
    by = {(r.model, r.runtime, r.device): r for r in res.rows}
    assert by[("tiny_cnn_fp32.onnx", "openvino", "cpu")].status == "skipped: OpenVINO is not installed (pip install 'edgetl[openvino]')"
    assert "GPU" in by[("tiny_cnn_int8.tflite", "litert-compiled", "gpu")].status
    assert by[("tiny_cnn_int8.tflite", "litert-compiled", "gpu")].status.startswith("skipped: ")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert by[("tiny_cnn_fp32.onnx", "onnxruntime", "cuda")].status.startswith("skipped: CUDAExecutionProvider not available")
    assert by[("tiny_cnn_int8.tflite", "litert", "cpu")].ok
    # without --runtimes, a missing OpenVINO is one note, not a skipped row per file
    default = plan_jobs(res_targets(artifacts), BenchSettings(threads=(1,)))
    assert not any(j.runtime == "openvino" for j in default)


def res_targets(artifacts):  # noqa: F811
    from edgetl.bench import discover_targets

    return discover_targets([artifacts["onnx_fp32"], artifacts["tflite_int8"]])[0]


def test_cuda_and_tensorrt_jobs_against_a_fake_build(artifacts, monkeypatch):  # noqa: F811
    """With an ONNX Runtime build that reports CUDA/TensorRT, the default plan runs the file on them;
    if the session then cannot use the provider, the row is skipped with the reason."""
    from edgetl.runtime import env

    monkeypatch.setattr(env, "onnxruntime_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    jobs = plan_jobs(res_targets(artifacts), BenchSettings(threads=(1,), runtimes=("onnxruntime",)))
    onnx = [(j.device, j.providers, j.skip) for j in jobs if j.target.format == "onnx"]
    assert onnx == [("cpu", ("CPUExecutionProvider",), None), ("cuda", ("CUDAExecutionProvider",), None),
                    ("tensorrt", ("TensorrtExecutionProvider",), None)]
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a real CUDA build: the fake is not needed")
    res = run_bench([artifacts["onnx_fp32"]], BenchSettings(threads=(1,), runtimes=("onnxruntime",), **FAST), data=artifacts["data"])
    by = {r.device: r for r in res.rows}
    assert by["cpu"].ok
    assert by["cuda"].status.startswith("skipped: ") and "CUDAExecutionProvider" in by["cuda"].status


@needs_openvino
def test_bench_default_has_verified_openvino_rows(artifacts):  # noqa: F811
    res = run_bench([artifacts["run"]], BenchSettings(threads=(1,), **FAST))
    ov = [r for r in res.rows if r.runtime == "openvino"]
    assert {(r.format, r.precision) for r in ov} == {("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32")}
    for r in ov:
        assert r.ok, r.status
        assert r.agreement is not None and r.top1 is not None and r.top1_delta_pt is not None
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.detail["reference"] == "model.keras"
    assert any(r.runtime == "litert-compiled" and r.ok for r in res.rows)
    # the recommendation looks at every ok row, whatever the runtime
    fastest = min((r for r in res.rows if r.ok and r.top1 + 1e-9 >= res.data["floor_top1"]), key=lambda r: r.p50_ms)
    assert res.best["runtime"] == fastest.runtime and res.best["model"] == fastest.model


def test_bench_cli_runtimes_option(artifacts, tmp_path, capsys):  # noqa: F811
    code = main(["bench", str(artifacts["tflite_fp32"]), "--runtimes", "nope", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown runtime 'nope'" in err and "Traceback" not in err
    code = main(["bench", str(artifacts["tflite_fp32"]), "--runtimes", "litert-compiled", "--data", str(artifacts["data"]),
                 "--out", str(tmp_path / "c"), "--threads", "1", "--min-runs", "3", "--min-time", "0",
                 "--warmup-runs", "1", "--warmup-time", "0", "--json"])
    assert code == 0
    import json

    d = json.loads(capsys.readouterr().out)
    assert [r["runtime"] for r in d["rows"]] == ["litert-compiled"]
