#!/usr/bin/env bash
# Install edgetl with its training, OpenVINO and test extras into ./.venv, then run the test suite.
# Works offline except for the package registry. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# A venv starts with the interpreter's bundled pip (23.2 on Python 3.11), older than some wheels'
# metadata; the upgrade is a real install step: if it fails, the script fails.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[train,openvino,dev]"
# Test-only tools, installed in a second step on purpose:
# - mediapipe (reads TFLite metadata like the Android/iOS client) pins absl-py~=2.3 while
#   tensorflow-model-optimization declares absl-py~=1.2, so one resolve of both fails;
#   tfmot runs fine with absl 2.x (verified), so absl is upgraded here.
# - torch==2.13.0 (CPU build) + timm, an independent EfficientNet-Lite implementation for the
#   weight-parity test (timm needs torchvision importable; see tests/test_lite_parity.py).
#   torch is never a runtime dependency of edgetl.
# A failed install fails this script (set -o pipefail: a pipeline fails when pip fails, whatever the
# filter after it does); grep exiting 1 (every line filtered out) is not a failure.
.venv/bin/python -m pip install -q "mediapipe==1.2.2" "absl-py>=2.3" 2>&1 | { grep -v "dependency resolver\|requires absl-py\|^$" || [ $? -eq 1 ]; }
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | tail -n 20
.venv/bin/python -m pip install -q "pyyaml" "safetensors" "huggingface_hub" 2>&1 | tail -n 20
.venv/bin/python -m pip install -q --no-deps "timm==1.0.31" "torchvision==0.28.0" 2>&1 | tail -n 20
# Two worker processes, one test file per worker at a time (--dist loadfile: a file's module fixtures are built
# once). Most of the suite's time is single-threaded converter and tracing work, so on 2 cores this took the
# suite from 1152 s to 657 s (same machine). EDGETL_TEST_WORKERS=0 runs it in this process, serially.
exec .venv/bin/python -m pytest -n "${EDGETL_TEST_WORKERS:-2}" --dist loadfile "$@"
