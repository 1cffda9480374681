#!/usr/bin/env bash
# README command 2: set up (if needed) and run the test suite.
# Strict: a test skipped for a missing tool or package fails instead (tests/conftest.py), since
# setup installs them all; only the optional ../shared models and the `train` extra (PyTorch) may
# be absent. EDGECOMP_TEST_STRICT=0 turns that off.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Workers (pytest-xdist): one per core, at most 4 and one per 3 GB available (a worker that has
# imported TVM, TensorFlow and PyTorch holds about that); a whole file per worker, so a module's
# trained models are made once. EDGECOMP_TEST_JOBS=1 runs the suite in one process.
if [ -z "${EDGECOMP_TEST_JOBS:-}" ]; then
  mem_gb=$(awk '/MemAvailable/ {print int($2 / 1048576)}' /proc/meminfo)
  EDGECOMP_TEST_JOBS=$(( $(nproc) < 4 ? $(nproc) : 4 ))
  (( EDGECOMP_TEST_JOBS > mem_gb / 3 )) && EDGECOMP_TEST_JOBS=$(( mem_gb / 3 ))
  (( EDGECOMP_TEST_JOBS < 1 )) && EDGECOMP_TEST_JOBS=1
fi
workers=()
(( EDGECOMP_TEST_JOBS > 1 )) && workers=(-n "$EDGECOMP_TEST_JOBS" --dist loadfile)
echo "test: running the test suite (pytest, $EDGECOMP_TEST_JOBS worker(s))"
EDGECOMP_TEST_STRICT=${EDGECOMP_TEST_STRICT:-1} .venv/bin/python -m pytest -q -rfEs --durations=20 "${workers[@]}" "$@"
