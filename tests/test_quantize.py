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


def _check(qmodel, float_model, target, tmp_path, near_ort=True):
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
    floats = np.stack([Reference(float_model).run(s)[0] for s in samples])
    ours = sqnr_db(floats, np.stack([r.outputs[0] for r in runs]))
    if near_ort:  # (not int16 tables of steep functions: interpolated between 513 points, several steps off)
        assert lsb_agreement(step, [r.outputs[0] for r in runs], ort) >= 0.99
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
    # CumSum has no integer kernel (onnxruntime quantizes around it): the error names it and the node.
    model = make_model([helper.make_node("CumSum", ["x", "axis"], ["y"], "my_cumsum")], [("x", [1, 8])],
                       [("y", [1, 8])], [onnx.numpy_helper.from_array(np.array(1, np.int64), "axis")])  # fmt: skip
    model = onnx.shape_inference.infer_shapes(model)
    q = quantize(model, _calib(model), "int8").model
    from edgecomp.errors import UnsupportedModelError

    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    with pytest.raises(UnsupportedModelError, match="CumSum.*my_cumsum|my_cumsum.*CumSum"):
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


# -- ops of models from the wild: tables, pads, slices, 1-D convolutions, reductions ---------------


def _n(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, f"{op.lower()}_{outs[0]}", **attrs)


def _k(name, value, dtype=np.float32):
    return onnx.numpy_helper.from_array(np.asarray(value, dtype), name)


def _wild_spectrum():
    """A spectrogram's arithmetic: x**2, + eps, sqrt, log, / ln 10, - c, * c, neg, 1 / (1 + e^x)..."""
    nodes = [_n("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), _n("Pow", ["c1", "two"], ["p"]),
             _n("Add", ["p", "eps"], ["a"]), _n("Sqrt", ["a"], ["s"]), _n("Log", ["s"], ["l"]),
             _n("Div", ["l", "ln10"], ["d"]), _n("Sub", ["d", "half"], ["sb"]), _n("Mul", ["sb", "three"], ["m"]),
             _n("Neg", ["m"], ["ng"]), _n("Sub", ["half", "ng"], ["sb2"]), _n("Abs", ["sb2"], ["ab"]),
             _n("Conv", ["ab", "w2"], ["y"])]  # fmt: skip
    inits = [weight("w1", [4, 3, 3, 3]), weight("w2", [2, 4, 1, 1]), _k("two", 2.0), _k("eps", 0.1),
             _k("ln10", 2.3025851), _k("half", 0.5), _k("three", 3.0)]  # fmt: skip
    return make_model(nodes, [("x", [1, 3, 6, 7])], [("y", [1, 2, 6, 7])], inits)


def _wild_unary():
    """Unary functions as tables, side by side, and a two-tensor Sub and broadcast Add."""
    fns = [("Exp", {}), ("Erf", {}), ("Softplus", {}), ("Softsign", {}), ("Elu", {"alpha": 0.7})]
    nodes = [_n("Conv", ["x", "w1"], ["c1"])]
    for i, (op, attrs) in enumerate(fns):
        nodes.append(_n(op, ["c1"], [f"u{i}"], **attrs))
    nodes += [_n("Add", ["u2", "half"], ["sp"]), _n("Reciprocal", ["sp"], [f"u{len(fns)}"])]
    fns.append(("Reciprocal", {}))
    nodes += [_n("Concat", [f"u{i}" for i in range(len(fns))], ["cat"], axis=1),
              _n("ReduceMean", ["c1"], ["mean"], axes=[1], keepdims=1), _n("Sub", ["c1", "mean"], ["centred"]),
              _n("Add", ["centred", "mean"], ["back"]), _n("Conv", ["cat", "w2"], ["y1"]),
              _n("Conv", ["back", "w3"], ["y2"])]  # fmt: skip
    inits = [weight("w1", [2, 3, 1, 1]), weight("w2", [3, 2 * len(fns), 1, 1]), weight("w3", [3, 2, 1, 1]),
             _k("half", 0.5)]
    return make_model(nodes, [("x", [1, 3, 5, 4])], [("y1", [1, 3, 5, 4]), ("y2", [1, 3, 5, 4])], inits)


def _wild_pad(mode: str, opset: int = 13):
    """Pads on both ends of odd-sized axes, different before and after."""
    nodes = [_n("Conv", ["x", "w1"], ["c1"]), _n("Pad", ["c1", "pads"], ["p"], mode=mode),
             _n("Conv", ["p", "w2"], ["y"])]  # fmt: skip
    inits = [weight("w1", [3, 2, 1, 1]), weight("w2", [2, 3, 1, 1]), _k("pads", [0, 0, 2, 1, 0, 0, 1, 3], np.int64)]
    return make_model(nodes, [("x", [1, 2, 5, 7])], [("y", [1, 2, 8, 11])], inits, opset=opset)


def _wild_slice_gather_conv1d():
    """Slice with a negative step and clamped ends, Gather of one index (drops an axis), then 1-D
    convolutions (strided, padded, dilated; depthwise) and a batched MatMul."""
    nodes = [_n("Conv", ["x", "w1"], ["c1"]),
             _n("Slice", ["c1", "starts", "ends", "axes", "steps"], ["sl"]),
             _n("Gather", ["sl", "idx"], ["g"], axis=2),
             _n("Conv", ["g", "w2", "b2"], ["c2"], strides=[2], pads=[2, 1], dilations=[2]),
             _n("Relu", ["c2"], ["r2"]),
             _n("Conv", ["r2", "w3"], ["c3"], group=4, pads=[1, 1], kernel_shape=[3]),
             _n("MatMul", ["c3", "w4"], ["y"])]  # fmt: skip
    inits = [weight("w1", [6, 2, 1, 1]), _k("starts", [-1, 1], np.int64), _k("ends", [-100, 1000], np.int64),
             _k("axes", [1, 3], np.int64), _k("steps", [-2, 3], np.int64), _k("idx", -2, np.int64),
             weight("w2", [4, 3, 5]), weight("b2", [4]), weight("w3", [4, 1, 3]), weight("w4", [3, 5])]  # fmt: skip
    # c1 [1,6,7,29] -> slice [1,3,7,10] -> gather [1,3,10] -> conv1d [1,4,3] -> dw [1,4,3] -> matmul [1,4,5]
    return make_model(nodes, [("x", [1, 2, 7, 29])], [("y", [1, 4, 5])], inits)


def _wild_peak_floor():
    """A spectrogram's tail: ReduceMax over everything, minus a constant, as the run-time floor of a
    Clip (whose top is a constant); Max and Min of two tensors."""
    nodes = [_n("Conv", ["x", "w1"], ["c1"]), _n("ReduceMax", ["c1"], ["peak"], keepdims=0),
             _n("Sub", ["peak", "range"], ["floor"]), _n("Clip", ["c1", "floor", "top"], ["cl"]),
             _n("ReduceMin", ["c1"], ["low"], axes=[2], keepdims=1), _n("Max", ["cl", "low"], ["mx"]),
             _n("Min", ["mx", "c1"], ["mn"]), _n("Conv", ["mn", "w2"], ["y"])]  # fmt: skip
    inits = [weight("w1", [3, 2, 1, 1]), weight("w2", [2, 3, 1, 1]), _k("range", 1.5), _k("top", 1.0)]
    return make_model(nodes, [("x", [1, 2, 5, 6])], [("y", [1, 2, 5, 6])], inits)


def _wild_batchnorm():
    """Unfolded BatchNormalization (on the input, and on an NCL tensor), Max/Min with a constant."""
    bn = [_k(f"{p}{n}", v) for p, c in (("a", 3), ("b", 4))
          for n, v in (("g", np.linspace(-1.5, 2, c)), ("b", np.linspace(0.3, -0.4, c)),
                       ("m", np.linspace(-0.2, 0.5, c)), ("v", np.linspace(0.5, 2, c)))]  # fmt: skip
    nodes = [_n("BatchNormalization", ["x", "ag", "ab", "am", "av"], ["n1"], epsilon=1e-3),
             _n("Conv", ["n1", "w1"], ["c1"]), _n("Max", ["c1", "floor"], ["mx"]),
             _n("Reshape", ["mx", "shape"], ["r"]), _n("BatchNormalization", ["r", "bg", "bb", "bm", "bv"], ["n2"]),
             _n("Min", ["top", "n2"], ["mn"]), _n("Conv", ["mn", "w2"], ["y"], pads=[1, 1])]  # fmt: skip
    inits = [*bn, weight("w1", [4, 3, 1, 1]), _k("floor", -0.25), _k("shape", [1, 4, 30], np.int64), _k("top", 1.0),
             weight("w2", [2, 4, 3])]  # fmt: skip
    return make_model(nodes, [("x", [1, 3, 5, 6])], [("y", [1, 2, 30])], inits)


def _wild_conv_transpose():
    """Transposed convolutions (a detector's upsampling): stride 2 with pads and output_padding,
    asymmetric strides with dilation, stride 1."""
    nodes = [_n("Conv", ["x", "w1"], ["c1"]),
             _n("ConvTranspose", ["c1", "t1", "b1"], ["u1"], strides=[2, 2], pads=[1, 0, 1, 1],
                output_padding=[1, 0]),
             _n("ConvTranspose", ["u1", "t2"], ["u2"], strides=[1, 3], dilations=[2, 1], pads=[0, 1, 1, 0]),
             _n("ConvTranspose", ["u2", "t3"], ["y"])]  # fmt: skip
    inits = [weight("w1", [4, 2, 1, 1]), weight("t1", [4, 3, 3, 3]), weight("b1", [3]), weight("t2", [3, 2, 2, 3]),
             weight("t3", [2, 2, 1, 2])]  # fmt: skip
    # x [1,2,4,5] -> u1 [1,3,8,10] -> u2 [1,2,9,29] -> y [1,2,9,30]
    return make_model(nodes, [("x", [1, 2, 4, 5])], [("y", [1, 2, 9, 30])], inits)


WILD = {
    "conv_transpose": _wild_conv_transpose,
    "batchnorm": _wild_batchnorm,
    "spectrum": _wild_spectrum,
    "unary": _wild_unary,
    "pad_reflect": lambda: _wild_pad("reflect"),
    "pad_edge": lambda: _wild_pad("edge"),
    "pad_wrap": lambda: _wild_pad("wrap", opset=19),
    "slice_gather_conv1d": _wild_slice_gather_conv1d,
    "peak_floor": _wild_peak_floor,
}


def _wild_quantized(name):
    model = onnx.shape_inference.infer_shapes(WILD[name]())
    return model, onnx.shape_inference.infer_shapes(quantize(model, _calib(model)).model)


@pytest.mark.parametrize("name", sorted(WILD))
def test_wild_ops_int8_host_bit_exact(name, tmp_path):
    float_model, qmodel = _wild_quantized(name)
    graph = extract_int_graph(fold_constants(qmodel).model)
    assert all(t.dtype != "float32" for n, t in graph.tensors.items() if n not in (*graph.inputs, *graph.outputs))
    assert _check(qmodel, float_model, "host", tmp_path) > 10  # dB vs float, on random data


@needs_qemu
@pytest.mark.parametrize("name", ["spectrum", "pad_reflect", "slice_gather_conv1d", "peak_floor", "batchnorm",
                                  "conv_transpose"])
def test_wild_ops_int8_cortex_m7_bit_exact(name, tmp_path):
    float_model, qmodel = _wild_quantized(name)
    _check(qmodel, float_model, "cortex-m7", tmp_path)


@pytest.mark.parametrize("name", ["spectrum", "pad_reflect", "slice_gather_conv1d", "peak_floor"])
def test_wild_ops_int16x8_host_bit_exact(name, tmp_path):
    """The same ops on int16 activations (interpolated tables, int64 rescales)."""
    model = onnx.shape_inference.infer_shapes(WILD[name]())
    qmodel = onnx.shape_inference.infer_shapes(quantize(model, _calib(model), scheme="int16x8").model)
    assert any(t.data_type == onnx.TensorProto.INT16 for t in qmodel.graph.initializer)
    ours = _check(qmodel, model, "host", tmp_path, near_ort=name != "spectrum")
    (tmp_path / "int8").mkdir()
    q8 = _check(_wild_quantized(name)[1], model, "host", tmp_path / "int8")
    assert ours > q8 + 3  # closer to float than int8


def _refused_div_of_tensors():
    nodes = [_n("Conv", ["x", "w1"], ["c1"]), _n("Conv", ["x", "w2"], ["c2"]), _n("Div", ["c1", "c2"], ["d"]),
             _n("Conv", ["d", "w3"], ["y"])]  # fmt: skip
    inits = [weight("w1", [2, 2, 1, 1]), weight("w2", [2, 2, 1, 1]), weight("w3", [2, 2, 1, 1])]
    return make_model(nodes, [("x", [1, 2, 3, 3])], [("y", [1, 2, 3, 3])], inits)


def _refused_scattered_gather():
    nodes = [_n("Conv", ["x", "w1"], ["c1"]), _n("Gather", ["c1", "idx"], ["g"], axis=1),
             _n("Conv", ["g", "w2"], ["y"])]  # fmt: skip
    inits = [weight("w1", [4, 2, 1, 1]), _k("idx", [0, 2, 3], np.int64), weight("w2", [2, 3, 1, 1])]
    return make_model(nodes, [("x", [1, 2, 3, 3])], [("y", [1, 2, 3, 3])], inits)


@pytest.mark.parametrize("build_model, needle", [
    (_refused_div_of_tensors, r"node 'div_d' \(Div\).*needs one constant operand"),
    (_refused_scattered_gather, r"node 'gather_g'.*evenly spaced.*\[0, 2, 3\]"),
])  # fmt: skip
def test_wild_ops_refusals_name_node_and_way_out(build_model, needle):
    from edgecomp.errors import UnsupportedModelError

    model = onnx.shape_inference.infer_shapes(build_model())
    q = onnx.shape_inference.infer_shapes(quantize(model, _calib(model)).model)
    with pytest.raises(UnsupportedModelError, match=needle):
        extract_int_graph(fold_constants(q).model)
