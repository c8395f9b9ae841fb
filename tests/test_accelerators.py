"""Accelerator runtimes: OpenVINO and LiteRT's CompiledModel agree with the Keras model; what this
machine lacks (a GPU, an NPU, CUDA, OpenVINO itself) is a ``skipped`` row naming it, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.bench import BenchSettings, discover_targets, parse_runtimes, plan_jobs, run_bench
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
    assert r.describe()["openvino"] and r.describe()["inference_precision"] == "f32"  # forced: the file's precision ran


def _cpu_runs_bf16() -> bool:
    """From /proc/cpuinfo, independently of OpenVINO: its CPU plugin defaults to bf16 where the CPU has it."""
    from edgetl.runtime.env import _read

    flags = set(" ".join(ln.split(":", 1)[1] for ln in _read("/proc/cpuinfo").splitlines() if ln.startswith("flags")).split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@needs_openvino
@pytest.mark.parametrize("key", ["tflite_fp32", "onnx_fp32"])
def test_openvino_precision_label_is_what_the_compiled_model_reports(artifacts, val_pixels, key):  # noqa: F811
    """The label is read from the compiled model: forced f32 says fp32; the device default says what it
    ran (bf16 on AMX / avx512_bf16 Xeons, f32 on AVX2-only CPUs, where it is plain fp32 again)."""
    import platform

    import openvino as ov

    from edgetl.runtime.openvino_runner import OpenVINORunner, default_precision

    x, _ = val_pixels
    forced = OpenVINORunner(artifacts[key], threads=1)
    default = OpenVINORunner(artifacts[key], threads=1, inference_precision=None)
    # what OpenVINO itself compiles the file to when not told, asked without the runner
    core = ov.Core()
    m = core.read_model(str(artifacts[key]))
    m.reshape({m.inputs[0]: ov.PartialShape([1, 32, 32, 3])})
    ran = core.compile_model(m, "CPU", {"PERFORMANCE_HINT": "LATENCY"}).get_property("INFERENCE_PRECISION_HINT").to_string()
    if platform.machine() in ("x86_64", "AMD64"):
        assert ran == ("bf16" if _cpu_runs_bf16() else "f32")
    assert default_precision("cpu") == ran
    assert (forced.inference_precision, forced.precision) == ("f32", "fp32")
    assert default.inference_precision == ran
    assert default.precision == ("fp32" if ran == "f32" else f"fp32->{ran}")
    assert default.describe()["inference_precision_hint"] == "device default"
    ref = _keras_probs(artifacts, x)
    assert np.max(np.abs(forced.predict(x) - ref)) <= 1e-4
    if ran == "bf16":  # bf16 keeps 8 bits of mantissa: close, not within the f32 tolerance
        assert np.max(np.abs(default.predict(x) - ref)) <= 0.05


@pytest.mark.parametrize("device_default", ["bf16", "f32"])
def test_openvino_default_precision_row_is_planned_where_the_device_lowers_it(artifacts, monkeypatch, device_default):  # noqa: F811
    """Float files get a second OpenVINO row labelled fp32->bf16 only where the device's default is not f32;
    int8 files never do (their arithmetic is integer)."""
    import edgetl.runtime.openvino_runner as ovr

    monkeypatch.setattr(ovr, "available_devices", lambda: ["CPU"])
    monkeypatch.setattr(ovr, "default_precision", lambda device: device_default)
    targets = discover_targets([artifacts["onnx_fp32"], artifacts["tflite_int8"]])[0]
    jobs = plan_jobs(targets, BenchSettings(threads=(1, 2), runtimes=("openvino",)))
    got = [(j.target.name, j.threads, j.ov_default) for j in jobs]
    want = [("tiny_cnn_int8.tflite", 1, None), ("tiny_cnn_int8.tflite", 2, None),
            ("tiny_cnn_fp32.onnx", 1, None), ("tiny_cnn_fp32.onnx", 2, None)]
    if device_default != "f32":
        want += [("tiny_cnn_fp32.onnx", 1, "bf16"), ("tiny_cnn_fp32.onnx", 2, "bf16")]
    assert got == want


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
    from edgetl.runtime.openvino_runner import default_precision

    res = run_bench([artifacts["run"]], BenchSettings(threads=(1,), **FAST))
    ov = [r for r in res.rows if r.runtime == "openvino"]
    want = {("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32")}
    lower = default_precision("cpu")
    if lower != "f32":  # e.g. bf16 on AMX: the device's default is its own row, labelled by what ran
        want |= {("tflite", f"fp32->{lower}"), ("onnx", f"fp32->{lower}")}
    assert {(r.format, r.precision) for r in ov} == want
    for r in ov:
        assert r.ok, r.status
        assert r.agreement is not None and r.top1 is not None and r.top1_delta_pt is not None
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.detail["reference"] == "model.keras"
        assert r.detail["inference_precision"] == (r.precision.partition("->")[2] or "f32")
    assert any(r.runtime == "litert-compiled" and r.ok for r in res.rows)
    # the recommendation looks at every ok row, whatever the runtime, that meets the floor and the agreement
    fastest = min((r for r in res.rows if r.ok and r.top1 + 1e-9 >= res.data["floor_top1"]
                   and r.agreement + 1e-9 >= res.settings.min_agreement), key=lambda r: r.p50_ms)
    assert res.best["runtime"] == fastest.runtime and res.best["model"] == fastest.model
    assert res.best["precision"] == fastest.precision


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
