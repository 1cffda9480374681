"""The benchmark's figures as a regression guard: QEMU -icount makes instruction counts exact, so
CI holds the expected instructions, flash, RAM and stack of the MLPerf Tiny models
(bench/expected.json) and fails when one grows beyond bench/run.py's small tolerance or an int8
output stops being bit-exact. Accept a deliberate change with:

    python bench/run.py --targets cortex-m7 --dtypes fp32,int8 --accept bench/expected.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import needs_qemu

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO.parent / "shared" / "models" / "mlperf-tiny"


@needs_qemu
@pytest.mark.skipif(not MODELS.is_dir(), reason="needs ../shared/models/mlperf-tiny")
def test_bench_figures_do_not_regress(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "bench"))
    import run as bench

    status = bench.main(["--models", str(MODELS), "--targets", "cortex-m7", "--dtypes", "fp32,int8",
                         "--check", str(REPO / "bench" / "expected.json"), "--workdir", str(tmp_path)])  # fmt: skip
    assert status == 0, capsys.readouterr().out[-3000:]
