"""The ONNX node conformance tests for the ops edgecomp claims (bench/conformance.py), on the host
(every case, -Werror) and a sample in QEMU Cortex-M7.

A case either passes or is one of KNOWN, refused with a one-line error that says why; a wrong
output fails the test whatever the case.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
from conftest import needs_qemu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import conformance  # noqa: E402

ROOT = conformance.node_tests_dir()
CASES = conformance.discover(ROOT)
BY_NAME = {c.name: c for c in CASES}

# Refused on purpose, with the reason the error gives.
_SMALL_FLOAT = "8- and 4-bit floats"
KNOWN = {
    "test_batchnorm_epsilon_training_mode": "training_mode=1",
    "test_batchnorm_example_training_mode": "training_mode=1",
    "test_maxpool_with_argmax_2d_precomputed_pads": "Indices output",
    "test_maxpool_with_argmax_2d_precomputed_strides": "Indices output",
    "test_dequantizelinear_e4m3fn": _SMALL_FLOAT,
    "test_dequantizelinear_e4m3fn_float16": _SMALL_FLOAT,
    "test_dequantizelinear_e4m3fn_zero_point": _SMALL_FLOAT,
    "test_dequantizelinear_e5m2": _SMALL_FLOAT,
    "test_dequantizelinear_float4e2m1": _SMALL_FLOAT,
    "test_quantizelinear_e4m3fn": _SMALL_FLOAT,
    "test_quantizelinear_e5m2": _SMALL_FLOAT,
    "test_quantizelinear_float4e2m1": _SMALL_FLOAT,
}


def test_suite_is_there_and_covers_every_op():
    assert len(CASES) >= 300, f"only {len(CASES)} node tests found under {ROOT}"
    assert {c.op for c in CASES} == set(conformance.OPS)
    assert set(KNOWN) <= set(BY_NAME)
    # The acceptance bar: at least 95 % of the cases must not be on the known list.
    assert 1 - len(KNOWN) / len(CASES) >= 0.95


def _check(outcome: conformance.Outcome) -> None:
    name = outcome.case.name
    if name in KNOWN:
        assert outcome.status == "unsupported", f"{name} now {outcome.status}: take it off KNOWN"
        assert KNOWN[name] in outcome.detail, outcome.detail
    else:
        assert outcome.status == "passed", f"{name}: {outcome.status}: {outcome.detail}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_node_host(name, tmp_path):
    """Every case, -Werror, under AddressSanitizer + UndefinedBehaviorSanitizer."""
    _check(conformance.run_case(BY_NAME[name], "host", tmp_path, sanitize=True))


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("name", conformance.QEMU_SAMPLE)
def test_node_qemu_m7(name, tmp_path):
    _check(conformance.run_case(BY_NAME[name], "cortex-m7", tmp_path))


@pytest.mark.parametrize("name", ["test_resize_downsample_scales_cubic_antialias", "test_qlinearconv",
                                  "test_quantizelinear_blocked_asymmetric"])  # fmt: skip
def test_rewritten_ops_build_deterministically(name, tmp_path):
    """The legalized ops (generated constants and names) give the same sources twice."""
    from edgecomp.pipeline import build
    from edgecomp.targets import load_target

    model, _, _ = conformance.prepare(BY_NAME[name])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    outs = [build(path, load_target("host"), tmp_path / d, log=lambda *_: None).outdir for d in ("a", "b")]
    for f in ("model.c", "model_kernels.c", "model_weights.c", "model_weights.bin", "model.h"):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f


def test_operators_page_is_generated_from_the_code():
    """docs/operators.md is `edgecomp ops --markdown`; every conformance op is listed as tested."""
    from edgecomp.frontend.ops import ops_markdown, ops_table

    page = Path(__file__).resolve().parents[1] / "docs" / "operators.md"
    assert page.read_text() == ops_markdown(), "regenerate: edgecomp ops --markdown > docs/operators.md"
    tested = {r["op"] for r in ops_table() if r["conformance_tested"]}
    assert tested == set(conformance.OPS)
