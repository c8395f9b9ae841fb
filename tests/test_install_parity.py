"""What a user installs is what was tested.

* the ``train`` extra declares every package an export imports (sympy for ONNX Runtime's
  ``quant_pre_process``, which onnxruntime does not declare);
* ``scripts/test.sh`` fails when a test-tool install fails (its output filter hides no failure);
* with ``CI=true`` (``.ci/run``) a test that would skip because a test tool is missing fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _train_extra() -> set[str]:
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-")
            for r in doc["project"]["optional-dependencies"]["train"]}


def test_train_extra_declares_sympy_for_quant_pre_process():
    assert "sympy" in _train_extra()
    # and it is what ONNX Runtime's quantization pre-processing imports
    from onnxruntime.quantization import shape_inference

    assert "sympy" in Path(shape_inference.__file__).read_text()
    import onnxruntime.tools.symbolic_shape_infer  # noqa: F401 - imports sympy at module level


def test_quant_pre_process_with_symbolic_shape_inference(tmp_path):
    """The step the int8 ONNX export runs first works in this environment (it needs sympy)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.shape_inference import quant_pre_process

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    src, dst = tmp_path / "f32.onnx", tmp_path / "pre.onnx"
    onnx.save(model, src)
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    out = onnx.load(dst)
    assert any(vi.name == "c" for vi in out.graph.value_info)  # shapes were inferred


# --------------------------------------------------------------------------- scripts/test.sh

FAKE_PYTHON = """#!/usr/bin/env bash
# A stand-in for .venv/bin/python: records each call; pip installs fail when their package is in $FAIL_ON.
echo "$*" >> "$CALLS"
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  for pkg in $FAIL_ON; do
    case "$*" in *"$pkg"*) echo "ERROR: No matching distribution found for $pkg"; exit 1;; esac
  done
  case "$*" in *mediapipe*)
    echo "ERROR: pip's dependency resolver does not currently take into account all the packages that are installed."
    echo "tensorflow-model-optimization 0.8.1 requires absl-py~=1.2, but you have absl-py 2.3.1 which is incompatible.";;
  esac
  exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pytest" ]; then echo "PYTEST RAN"; exit 0; fi
exit 0
"""


def _fake_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / ".ci").mkdir()
    shutil.copy2(ROOT / "scripts" / "test.sh", root / "scripts" / "test.sh")
    shutil.copy2(ROOT / ".ci" / "run", root / ".ci" / "run")
    py = root / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)
    return root


def _run_test_sh(root: Path, fail_on: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CALLS": str(root / "calls.txt"), "FAIL_ON": fail_on}
    return subprocess.run(["bash", str(root / "scripts" / "test.sh")], capture_output=True, text=True, env=env, timeout=60)


def test_test_sh_fails_when_a_tool_install_fails(tmp_path):
    root = _fake_checkout(tmp_path)
    for tool in ("mediapipe", "torch==", "timm"):
        (root / "calls.txt").unlink(missing_ok=True)
        proc = _run_test_sh(root, tool)
        assert proc.returncode != 0, (tool, proc.stdout, proc.stderr)
        assert "PYTEST RAN" not in proc.stdout
        assert f"No matching distribution found for {tool}" in proc.stdout + proc.stderr  # the error is shown


def test_test_sh_filters_only_the_known_resolver_message(tmp_path):
    root = _fake_checkout(tmp_path)
    proc = _run_test_sh(root, "")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PYTEST RAN" in proc.stdout
    assert "dependency resolver" not in proc.stdout + proc.stderr and "requires absl-py" not in proc.stdout + proc.stderr
    calls = (root / "calls.txt").read_text()
    for tool in ("mediapipe==", "torch==", "timm==", "-e .[train,openvino,dev]"):
        assert tool in calls
    assert "-m pytest -n 2 --dist loadfile" in calls  # the suite runs in two worker processes (pytest-xdist)


def test_ci_run_sets_ci_true(tmp_path):
    root = _fake_checkout(tmp_path)
    (root / "scripts" / "test.sh").write_text('echo "CI=${CI:-unset}"\n')
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    proc = subprocess.run(["bash", str(root / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "CI=true"


# --------------------------------------------------------------------------- CI=true: no silent skips

CASES = textwrap.dedent(
    """
    import pytest

    def test_tool_missing():
        pytest.importorskip("edgetl_no_such_test_tool")

    def test_tool_not_installed():
        pytest.skip("timm not installed")

    def test_legitimate_skip():
        pytest.skip("CUDA is available here")

    @pytest.fixture
    def tool():
        return pytest.importorskip("edgetl_no_such_test_tool")

    def test_tool_in_fixture(tool):
        pass
    """
)
# Loads tests/conftest.py's hooks into a throw-away test folder.
SHIM = textwrap.dedent(
    f"""
    import importlib.util
    _spec = importlib.util.spec_from_file_location("edgetl_tests_conftest", {str(ROOT / "tests" / "conftest.py")!r})
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    pytest_runtest_makereport = _mod.pytest_runtest_makereport
    pytest_make_collect_report = _mod.pytest_make_collect_report
    """
)


def _pytest_outcomes(tmp_path: Path, ci: str | None) -> dict[str, str]:
    d = tmp_path / f"suite-{ci}"
    d.mkdir()
    (d / "conftest.py").write_text(SHIM)
    (d / "test_cases.py").write_text(CASES)
    (d / "test_module_skip.py").write_text("import pytest\npytest.importorskip('edgetl_no_such_test_tool')\n\ndef test_x():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    proc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider", "-o", "addopts=",
                           "--continue-on-collection-errors", str(d)],
                          capture_output=True, text=True, env=env, cwd=d, timeout=120)
    outcomes = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^test_cases\.py::(\w+) (PASSED|FAILED|SKIPPED|ERROR)", line)
        if m:
            outcomes[m.group(1)] = m.group(2)
    return outcomes | {"_output": proc.stdout}


def test_ci_true_turns_missing_tool_skips_into_failures(tmp_path):
    local = _pytest_outcomes(tmp_path, None)
    assert local["test_tool_missing"] == "SKIPPED" and local["test_tool_not_installed"] == "SKIPPED", local["_output"]
    assert local["test_tool_in_fixture"] == "SKIPPED"
    ci = _pytest_outcomes(tmp_path, "true")
    out = ci["_output"]
    for name in ("test_tool_missing", "test_tool_not_installed", "test_tool_in_fixture"):
        assert ci.get(name) in ("FAILED", "ERROR"), (name, out)
    assert ci["test_legitimate_skip"] == "SKIPPED", out
    assert "test tool is missing" in out
    # a module-level importorskip fails the collection of that module instead of skipping it
    assert "ERROR collecting test_module_skip.py" in out, out
    assert "ERROR collecting" not in local["_output"]
