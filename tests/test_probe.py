"""bench survives the device: a runner whose native code kills a child process (simulated with the
probe's crash hook) is a skipped row naming the signal, the other rows are measured, the result is
cached per machine and reused."""

from __future__ import annotations

import json
import shutil
from importlib import resources

import pytest

from edgetl.bench import BenchSettings, run_bench
from edgetl.cli import main
from edgetl.runtime import probe as probe_mod
from edgetl.runtime.env import package_version

FAST = ["--threads", "1", "--min-runs", "3", "--min-time", "0", "--warmup-runs", "1", "--warmup-time", "0"]


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "cache"))  # a fresh probe cache
    dest = tmp_path / "tiny_fp32.tflite"
    with resources.as_file(resources.files("edgetl.resources") / "probe_fp32.tflite") as src:
        shutil.copyfile(src, dest)
    return dest


def _no_child(*a, **k):
    raise AssertionError("the probe ran again instead of using its cache")


def test_crashing_runner_is_a_skipped_row_and_bench_goes_on(model, tmp_path, monkeypatch, capsys):
    ov = bool(package_version("openvino"))
    monkeypatch.setenv(probe_mod.CRASH_ENV, "litert-compiled" + (",openvino=abort" if ov else ""))
    runtimes = "litert,litert-compiled" + (",openvino" if ov else "")
    code = main(["bench", str(model), "--runtimes", runtimes, *FAST, "--out", str(tmp_path / "b"), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    by = {r["runtime"]: r for r in json.loads(out)["rows"]}
    assert by["litert"]["status"] == "ok" and by["litert"]["p50_ms"] > 0
    assert by["litert-compiled"]["status"].startswith("skipped: SIGILL: illegal instruction in litert-compiled (cpu)")
    if ov:  # even OpenVINO's device listing is not done in-process after its probe crashed
        assert by["openvino"]["status"].startswith("skipped: SIGABRT: aborted in openvino (cpu)")
    doc = json.loads(probe_mod.cache_file().read_text())
    assert doc["litert-compiled:cpu"]["crash"] == "SIGILL: illegal instruction"
    # the cache is reused: no child process the second time, same rows
    monkeypatch.setattr(probe_mod.subprocess, "run", _no_child)
    res = run_bench([model], BenchSettings(threads=(1,), runtimes=tuple(runtimes.split(",")), min_runs=3, min_time=0.0,
                                           warmup_runs=1, warmup_time=0.0))
    again = {r.runtime: r.status for r in res.rows}
    assert again["litert-compiled"] == by["litert-compiled"]["status"] and again["litert"] == "ok"
    assert res.failure() is None


def test_probe_ok_is_cached_and_a_timeout_is_not(model, monkeypatch):
    monkeypatch.setenv(probe_mod.CRASH_ENV, "litert-compiled:cpu=hang")
    reason = probe_mod.probe("litert-compiled", "cpu", timeout=1.0)
    assert reason and "did not finish" in reason
    assert not probe_mod.cache_file().exists()  # not cached: a busy machine is not a broken runner
    monkeypatch.delenv(probe_mod.CRASH_ENV)
    assert probe_mod.probe("litert-compiled", "cpu") is None  # the real runner survives this machine
    entry = json.loads(probe_mod.cache_file().read_text())["litert-compiled:cpu"]
    assert entry["crash"] is None and entry["returncode"] == 0 and '"status": "ok"' in entry["child"]
    monkeypatch.setattr(probe_mod.subprocess, "run", _no_child)
    assert probe_mod.probe("litert-compiled", "cpu") is None


def test_signal_names():
    assert probe_mod.signal_reason(-4) == "SIGILL: illegal instruction"
    assert probe_mod.signal_reason(132) == "SIGILL: illegal instruction"  # a shell's 128 + 4
    assert probe_mod.signal_reason(-11) == "SIGSEGV: segmentation fault"
    assert probe_mod.needs_probe("litert-compiled", "cpu") and probe_mod.needs_probe("openvino", "gpu")
    assert probe_mod.needs_probe("litert", "gpu") and not probe_mod.needs_probe("litert", "cpu")
