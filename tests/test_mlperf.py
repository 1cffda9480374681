"""The MLPerf Tiny float models on their sample inputs, when ../shared is beside the checkout.

The project does not need ../shared: without it these tests are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_ARM

from edgecomp.pipeline import build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import Reference, compare

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


INT8_SAMPLES = {"ic_resnet8": "ic_samples4", "kws_dscnn": "kws_sample", "vww_mobilenet": "vww_samples2",
                "ad_autoencoder": "ad_sample"}  # fmt: skip


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
@pytest.mark.parametrize("model", sorted(INT8_SAMPLES))
def test_mlperf_int8_bit_exact_on_cortex_m7(model, tmp_path):
    import sys

    from edgecomp.pipeline import BuildOptions
    from edgecomp.verify import expected_outputs

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from calib import augmented

    float_build = build(SHARED / f"{model}.onnx", load_target("host"), tmp_path / "f", log=lambda *_: None)
    shape = tuple(float_build.report["inputs"][0]["shape"])
    x = np.load(SHARED / f"{INT8_SAMPLES[model]}.npy").astype(np.float32).reshape((-1, *shape))
    np.save(tmp_path / "calib.npy", augmented(x, flip=shape[1] == 3 and len(shape) == 4))
    result = build(SHARED / f"{model}.onnx", load_target("cortex-m7"), tmp_path / "q", BuildOptions(quantize="int8"),
                   log=lambda *_: None, calib=tmp_path / "calib.npy")  # fmt: skip
    (run,) = run_samples(result, [[x[0]]])
    np.testing.assert_array_equal(run.outputs[0], expected_outputs(result, [[x[0]]])[0][0])
    # int8 weights, kept as int16 records where the matrix-product kernel reuses them over >= 512
    # pixels or the layer is small (lower/kernels/mm.py), plus per-channel constants: 1.7-3.7x less
    # than fp32 (DS-CNN, whose small pointwise layers are all int16 records, is the 1.7)
    assert result.report["weights_bytes"] * 1.6 < float_build.report["weights_bytes"]
