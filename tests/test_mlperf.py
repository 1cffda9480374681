"""The MLPerf Tiny float models on their sample inputs, when ../shared is beside the checkout.

The project does not need ../shared: without it these tests are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_ARM

from edgecomp.pipeline import build
from edgecomp.reference import Reference, compare
from edgecomp.runner import run_samples
from edgecomp.targets import load_target

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"
MODELS = [("ic_resnet8", "ic_sample"), ("kws_dscnn", "kws_sample"), ("vww_mobilenet", "vww_sample"),
          ("ad_autoencoder", "ad_sample")]  # fmt: skip
TARGETS = ["host", "cortex-m7"] if HAVE_ARM else ["host"]

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models/mlperf-tiny not present")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model,sample", MODELS)
def test_mlperf_float_matches_onnxruntime(model, sample, target, tmp_path):
    result = build(SHARED / f"{model}.onnx", load_target(target), tmp_path / "o", log=lambda *_: None)
    x = np.load(SHARED / f"{sample}.npy").astype(np.float32)
    (run,) = run_samples(result, [[x]])
    cmp = compare([run.outputs], [Reference(result.model).run([x])])
    assert cmp.rel_error <= 1e-4 and cmp.argmax_agreement == 1.0
    if target != "host":
        assert run.instructions > result.report["macs"]
        assert result.report["flash_bytes"] <= result.target.flash_budget
