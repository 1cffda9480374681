"""Each operator family compiled for the host and for QEMU Cortex-M, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compile_and_compare, make_model, needs_qemu, weight
from onnx import helper, numpy_helper

TOL = 1e-4
X = ("x", [1, 4, 8, 8])


def _conv(name, cin, cout, k, group=1, **attrs):
    w = weight(f"{name}_w", [cout, cin // group, k, k])
    b = weight(f"{name}_b", [cout])
    node = helper.make_node("Conv", ["x", w.name, b.name], ["y"], name, group=group, **attrs)
    return node, [w, b]


def _single(node, inits, out_shape, inputs=(X,)):
    return make_model([node], list(inputs), [("y", out_shape)], inits)


def _model_conv():
    node, inits = _conv("conv", 4, 6, 3, pads=[1, 1, 1, 1])
    return _single(node, inits, [1, 6, 8, 8])


def _model_conv_stride():
    node, inits = _conv("conv_s2", 4, 5, 3, strides=[2, 2], pads=[0, 0, 1, 1])
    return _single(node, inits, [1, 5, 4, 4])


def _model_depthwise():
    node, inits = _conv("dw", 4, 4, 3, group=4, pads=[1, 1, 1, 1])
    return _single(node, inits, [1, 4, 8, 8])


def _model_grouped():
    node, inits = _conv("grp", 4, 6, 3, group=2, pads=[1, 1, 1, 1])
    return _single(node, inits, [1, 6, 8, 8])


def _model_gemm():
    w, b = weight("gw", [7, 12]), weight("gb", [7])
    node = helper.make_node("Gemm", ["x", "gw", "gb"], ["y"], "gemm", transB=1)
    return _single(node, [w, b], [1, 7], inputs=[("x", [1, 12])])


def _model_matmul():
    w = weight("mw", [12, 5])
    node = helper.make_node("MatMul", ["x", "mw"], ["y"], "matmul")
    return _single(node, [w], [3, 5], inputs=[("x", [3, 12])])


def _model_pools():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["m"], "maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["m"], ["a"], "avgpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["a"], ["y"], "gap"),
    ]
    return make_model(nodes, [X], [("y", [1, 4, 1, 1])])


def _model_add_mul():
    s = weight("scale", [1, 4, 1, 1])
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["m"], "mul"),
        helper.make_node("Add", ["m", "x2"], ["y"], "add"),
    ]
    return make_model(nodes, [X, ("x2", [1, 4, 8, 8])], [("y", [1, 4, 8, 8])], [s])


def _model_activations():
    lo = numpy_helper.from_array(np.float32(-0.5), "lo")
    hi = numpy_helper.from_array(np.float32(0.7), "hi")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], "relu"),
        helper.make_node("Clip", ["x", "lo", "hi"], ["c"], "clip"),
        helper.make_node("Sigmoid", ["x"], ["s"], "sigmoid"),
        helper.make_node("Add", ["r", "c"], ["rc"], "add1"),
        helper.make_node("Add", ["rc", "s"], ["y"], "add2"),
    ]
    return make_model(nodes, [X], [("y", [1, 4, 8, 8])], [lo, hi])


def _model_softmax():
    node = helper.make_node("Softmax", ["x"], ["y"], "softmax", axis=-1)
    return _single(node, [], [2, 10], inputs=[("x", [2, 10])])


def _model_shapes():
    shape = numpy_helper.from_array(np.array([1, 4, 64], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], "transpose", perm=[0, 1, 3, 2]),
        helper.make_node("Reshape", ["t", "shape"], ["r"], "reshape"),
        helper.make_node("Flatten", ["r"], ["y"], "flatten", axis=1),
    ]
    return make_model(nodes, [X], [("y", [1, 256])], [shape])


def _model_concat():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], "relu"),
        helper.make_node("Concat", ["a", "x2"], ["y"], "concat", axis=1),
    ]
    return make_model(nodes, [X, ("x2", [1, 3, 8, 8])], [("y", [1, 7, 8, 8])])


def _model_two_outputs():
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], "relu"),
        helper.make_node("Sigmoid", ["x"], ["z"], "sigmoid"),
    ]
    return make_model(nodes, [X], [("y", [1, 4, 8, 8]), ("z", [1, 4, 8, 8])])


def _model_residual_block():
    w1, b1 = weight("w1", [4, 4, 3, 3]), weight("b1", [4])
    w2, b2 = weight("w2", [4, 4, 3, 3]), weight("b2", [4])
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["s"], "residual"),
        helper.make_node("Relu", ["s"], ["y"], "relu2"),
    ]
    return make_model(nodes, [X], [("y", [1, 4, 8, 8])], [w1, b1, w2, b2])


def _model_conv_prelu():
    node, inits = _conv("conv", 4, 6, 3, pads=[1, 1, 1, 1])
    node.output[0] = "c"
    slope = numpy_helper.from_array(np.linspace(-0.3, 0.6, 6, dtype=np.float32).reshape(6, 1, 1), "slope")
    prelu = helper.make_node("PRelu", ["c", "slope"], ["y"], "prelu")
    return make_model([node, prelu], [X], [("y", [1, 6, 8, 8])], [*inits, slope])


def _model_pool_pad_add():
    """A channel Pad after a pool, as BlazeFace/face-mesh exports have it: the padded channels are
    written by no input element (TVM's schedule primitives once dropped them; host test builds
    start with a poisoned arena, so unwritten values show)."""
    pool = helper.make_node("MaxPool", ["x"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2])
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 4, 0, 0], np.int64), "pads")
    pad = helper.make_node("Pad", ["p", "pads"], ["q"], "pad", mode="constant")
    node, inits = _conv("conv_s2", 4, 8, 3, strides=[2, 2], pads=[1, 1, 1, 1])
    node.output[0] = "c"
    add = helper.make_node("Add", ["q", "c"], ["y"], "add")
    return make_model([pool, pad, node, add], [X], [("y", [1, 8, 4, 4])], [pads, *inits])


MODELS = {
    "conv": _model_conv,
    "pool_pad_add": _model_pool_pad_add,
    "conv_stride_asym_pad": _model_conv_stride,
    "depthwise": _model_depthwise,
    "grouped": _model_grouped,
    "gemm": _model_gemm,
    "matmul": _model_matmul,
    "pools": _model_pools,
    "add_mul_broadcast": _model_add_mul,
    "relu_clip_sigmoid": _model_activations,
    "softmax": _model_softmax,
    "transpose_reshape_flatten": _model_shapes,
    "concat": _model_concat,
    "two_outputs": _model_two_outputs,
    "residual_block": _model_residual_block,
    "conv_prelu": _model_conv_prelu,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_host_matches_onnxruntime(name, tmp_path):
    assert compile_and_compare(MODELS[name](), "host", tmp_path, samples=2) <= TOL


@needs_qemu
@pytest.mark.parametrize("name", sorted(MODELS))
def test_cortex_m7_matches_onnxruntime(name, tmp_path):
    assert compile_and_compare(MODELS[name](), "cortex-m7", tmp_path) <= TOL


@needs_qemu
@pytest.mark.parametrize("target", ["cortex-m3", "cortex-m4", "cortex-m55", "netduinoplus2"])
def test_other_cores_match_onnxruntime(target, tmp_path):
    assert compile_and_compare(_model_residual_block(), target, tmp_path) <= TOL
