#!/usr/bin/env bash
# README command 2: set up (if needed) and run the test suite.
# Strict: a test skipped for a missing tool or package fails instead (tests/conftest.py), since
# setup installs them all; only the optional ../shared models and the `train` extra (PyTorch) may
# be absent. EDGECOMP_TEST_STRICT=0 turns that off.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: running the test suite (pytest)"
EDGECOMP_TEST_STRICT=${EDGECOMP_TEST_STRICT:-1} .venv/bin/python -m pytest -q -rfEs --durations=20 "$@"
