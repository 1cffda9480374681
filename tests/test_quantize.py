"""Quantized models: bit-exact against the integer reference on host and QEMU, within 1 LSB of
onnxruntime's QDQ execution, and close to the float model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, needs_qemu, random_inputs, weight
from onnx import helper
from test_ops import MODELS

from edgecomp.passes import fold_constants
from edgecomp.passes.quantize import quantize
from edgecomp.pipeline import BuildOptions, build
from edgecomp.quant import extract_int_graph, run_int_graph
from edgecomp.quant.accuracy import lsb_agreement, output_step, sqnr_db
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import Reference, expected_outputs

QUANT_MODELS = ["conv", "conv_stride_asym_pad", "depthwise", "grouped", "gemm", "matmul", "pools",
                "relu_clip_sigmoid", "softmax", "transpose_reshape_flatten", "concat", "residual_block",
                "two_outputs", "add_mul_broadcast", "conv_prelu"]  # fmt: skip


def _calib(model, n=16):
    return [random_inputs(model, seed) for seed in range(100, 100 + n)]


def _quantized(name, scheme="int8"):
    model = onnx.shape_inference.infer_shapes(MODELS[name]())
    return model, onnx.shape_inference.infer_shapes(quantize(model, _calib(model), scheme=scheme).model)


def _check(qmodel, float_model, target, tmp_path):
    path = tmp_path / "q.onnx"
    onnx.save(qmodel, path)
    result = build(path, load_target(target), tmp_path / f"o-{target}", BuildOptions(extra_cflags="-Werror"),
                   log=lambda *_: None)  # fmt: skip
    samples = [random_inputs(float_model, seed) for seed in range(3)]
    runs = run_samples(result, samples)
    for run, wants in zip(runs, expected_outputs(result, samples), strict=True):
        for got, want in zip(run.outputs, wants, strict=True):
            np.testing.assert_array_equal(got, want)  # bit-exact
    ort = [Reference(result.model).run(s)[0] for s in samples]
    step = output_step(result.int_graph, result.int_graph.outputs[0])
    assert lsb_agreement(step, [r.outputs[0] for r in runs], ort) >= 0.99
    floats = np.stack([Reference(float_model).run(s)[0] for s in samples])
    ours = sqnr_db(floats, np.stack([r.outputs[0] for r in runs]))
    # As close to float as onnxruntime's own execution of the same QDQ model (within 1 dB).
    assert ours >= sqnr_db(floats, np.stack(ort)) - 1.0
    return ours


@pytest.mark.parametrize("name", QUANT_MODELS)
def test_int8_host_bit_exact(name, tmp_path):
    float_model, qmodel = _quantized(name)
    if name == "add_mul_broadcast":  # Mul by a per-channel constant: no integer kernel (named in the error)
        from edgecomp.errors import UnsupportedModelError

        with pytest.raises(UnsupportedModelError, match="Mul"):
            _check(qmodel, float_model, "host", tmp_path)
        return
    assert _check(qmodel, float_model, "host", tmp_path) > 15  # dB vs float, on random data


@needs_qemu
@pytest.mark.parametrize("name", ["residual_block", "depthwise", "gemm", "softmax", "concat", "pools"])
def test_int8_cortex_m7_bit_exact(name, tmp_path):
    float_model, qmodel = _quantized(name)
    assert _check(qmodel, float_model, "cortex-m7", tmp_path) > 15


@needs_qemu
@pytest.mark.parametrize("target", ["cortex-m3", "cortex-m4", "cortex-m55", "netduinoplus2"])
def test_int8_other_cores_bit_exact(target, tmp_path):
    float_model, qmodel = _quantized("residual_block")
    _check(qmodel, float_model, target, tmp_path)


def test_calibration_errors(tmp_path):
    import subprocess
    import sys

    model = MODELS["conv"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "few.npy", np.zeros((2, 1, 4, 8, 8), np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((8, 1, 3, 8, 8), np.float32))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "edgecomp", "build", str(tmp_path / "m.onnx"), "-t", "host",
                               "-o", str(tmp_path / "o"), *args], capture_output=True, text=True)  # fmt: skip

    for args, needle in [(["--quantize", "int8"], "--calib"), (["--quantize", "int8", "--calib", tmp_path / "few.npy"], "at least"),
                         (["--quantize", "int8", "--calib", tmp_path / "bad.npy"], "shape"),
                         (["--eval", tmp_path / "few.npy"], "--quantize")]:  # fmt: skip
        proc = run(*map(str, args))
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_constant_zero_tensor_is_a_clear_error():
    # A conv whose weights are all zero: its output is constant on any calibration data.
    w = onnx.numpy_helper.from_array(np.zeros((2, 4, 1, 1), np.float32), "w")
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], "zero_conv")], [("x", [1, 4, 8, 8])],
                       [("y", [1, 2, 8, 8])], [w])  # fmt: skip
    model = onnx.shape_inference.infer_shapes(model)
    q = onnx.shape_inference.infer_shapes(quantize(model, _calib(model)).model)
    from edgecomp.errors import UserError

    try:
        graph = extract_int_graph(fold_constants(q).model)
    except UserError as exc:
        assert "constant" in str(exc) or "scale" in str(exc)
    else:  # onnxruntime may pick a non-zero scale for a zero range: then the result must be exact zeros
        out = run_int_graph(graph, random_inputs(model))[0]
        assert np.all(out == 0)


def test_unquantizable_op_names_op_and_node(tmp_path):
    # Erf has no integer kernel: the error names it and the node.
    model = make_model([helper.make_node("Erf", ["x"], ["y"], "my_erf")], [("x", [1, 8])], [("y", [1, 8])])
    model = onnx.shape_inference.infer_shapes(model)
    q = quantize(model, _calib(model), "int8").model
    from edgecomp.errors import UnsupportedModelError

    if any(n.op_type == "QuantizeLinear" for n in q.graph.node):
        with pytest.raises(UnsupportedModelError, match="Erf.*my_erf|my_erf.*Erf"):
            extract_int_graph(fold_constants(onnx.shape_inference.infer_shapes(q)).model)


def test_weights_shrink_about_4x(tmp_path):
    w1, b1 = weight("w1", [32, 16, 3, 3]), weight("b1", [32])
    model = make_model([helper.make_node("Conv", ["x", "w1", "b1"], ["y"], "conv", pads=[1, 1, 1, 1])],
                       [("x", [1, 16, 8, 8])], [("y", [1, 32, 8, 8])], [w1, b1])  # fmt: skip
    onnx.save(model, tmp_path / "f.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(0).standard_normal((8, 1, 16, 8, 8)).astype(np.float32))
    f = build(tmp_path / "f.onnx", load_target("host"), tmp_path / "of", log=lambda *_: None)
    q = build(tmp_path / "f.onnx", load_target("host"), tmp_path / "oq", BuildOptions(quantize="int8"),
              log=lambda *_: None, calib=tmp_path / "c.npy")  # fmt: skip
    assert 3.5 < f.report["weights_bytes"] / q.report["weights_bytes"] <= 4.0


def test_integer_io_cli(tmp_path):
    """--io int8: the C API takes and gives int8 with scale/zero point in model.h; float input data
    is quantized on the host, and the run is still checked bit for bit."""
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples"
    x = np.random.default_rng(0).uniform(0, 1, (8, 1, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    proc = subprocess.run([sys.executable, "-m", "edgecomp", "run", str(example / "tiny_cnn.onnx"), "-t", "host",
                           "--quantize", "int8", "--calib", str(tmp_path / "calib.npy"), "--io", "int8",
                           "-i", str(example / "tiny_cnn_input.npy"), "--output", str(tmp_path / "y.npy"),
                           "-o", str(tmp_path / "o")], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "bit-exact" in proc.stdout
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.int8 and y.shape == (1, 10)
    header = (tmp_path / "o" / "model.h").read_text()
    assert "int model_run(const int8_t *x, int8_t *probs);" in header
    assert "MODEL_INPUT_0_SCALE" in header and "MODEL_OUTPUT_0_ZERO_POINT" in header
    bad = subprocess.run([sys.executable, "-m", "edgecomp", "build", str(example / "tiny_cnn.onnx"), "-t", "host",
                          "--io", "int8", "-o", str(tmp_path / "o2")], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "quantized model" in bad.stderr


@pytest.mark.parametrize(
    "name",
    [
        "conv_stride_asym_pad",
        "depthwise",
        "matmul",
        "pools",
        "relu_clip_sigmoid",
        "softmax",
        "residual_block",
    ],
)
def test_int16x8_host_bit_exact(name, tmp_path):
    """int16 activations: int64 accumulators, interpolated tables; far closer to float than int8."""
    float_model, qmodel = _quantized(name, "int16x8")
    assert any(t.data_type == onnx.TensorProto.INT16 for t in qmodel.graph.initializer)
    ours = _check(qmodel, float_model, "host", tmp_path)
    _, q8 = _quantized(name)
    floats = [Reference(float_model).run(random_inputs(float_model, s))[0] for s in range(3)]
    int8 = [Reference(q8).run(random_inputs(float_model, s))[0] for s in range(3)]
    int8_db = sqnr_db(np.stack(floats), np.stack(int8))
    assert ours > int8_db + 3  # int16 activations: closer to float than int8 (weights stay int8)


@needs_qemu
@pytest.mark.parametrize("name", ["residual_block", "softmax"])
def test_int16x8_cortex_m7_bit_exact(name, tmp_path):
    float_model, qmodel = _quantized(name, "int16x8")
    _check(qmodel, float_model, "cortex-m7", tmp_path)


def test_prelu_slope_that_is_not_per_channel_is_named(tmp_path):
    """ONNX broadcasts PRelu's slope from the right: a slope of shape [W] varies along the width,
    which the integer PRelu (one multiplier per channel) cannot hold; the error says so."""
    from onnx import numpy_helper

    from edgecomp.errors import UnsupportedModelError

    slope = numpy_helper.from_array(np.linspace(-0.3, 0.6, 8, dtype=np.float32), "slope")
    prelu = helper.make_node("PRelu", ["x", "slope"], ["y"], "prelu")
    model = make_model([prelu], [("x", [1, 4, 8, 8])], [("y", [1, 4, 8, 8])], [slope])
    qmodel = quantize(model, _calib(model)).model
    with pytest.raises(UnsupportedModelError, match="per-channel or scalar slope"):
        extract_int_graph(fold_constants(onnx.shape_inference.infer_shapes(qmodel)).model)
