"""Op families that third-party ONNX models use (transformers, audio front ends, detectors), each in
a tiny model compiled for the host (ASan/UBSan, -Werror) and a few for QEMU Cortex-M7, checked
against onnxruntime: float outputs to 1e-4 relative, integer outputs exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_outputs_match, errors_vs_onnxruntime, needs_qemu, typed_model, weight
from onnx import TensorProto, helper, numpy_helper

from edgecomp.errors import UnsupportedModelError
from edgecomp.pipeline import BuildOptions, build
from edgecomp.targets import load_target

TOL = 1e-4
F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _c(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _node(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, op.lower(), **attrs)


# --- the cases: name -> (model, int_high) ------------------------------------------------------


def _lrn():
    node = _node("LRN", ["x"], ["y"], size=3, alpha=0.1, beta=0.75, bias=1.5)
    return typed_model([node], [("x", [1, 6, 5, 5])], [("y", [1, 6, 5, 5])])


def _layer_norm():
    s, b = weight("ln_s", [8]), weight("ln_b", [8])
    node = _node("LayerNormalization", ["x", "ln_s", "ln_b"], ["y"], axis=-1, epsilon=1e-5)
    return typed_model([node], [("x", [2, 5, 8])], [("y", [2, 5, 8])], [s, b], opset=17)


def _layer_norm_two_axes():
    s = weight("ln_s", [5, 8])
    node = _node("LayerNormalization", ["x", "ln_s"], ["y"], axis=1)
    return typed_model([node], [("x", [2, 5, 8])], [("y", [2, 5, 8])], [s], opset=17)


def _gelu():
    return typed_model([_node("Gelu", ["x"], ["y"])], [("x", [2, 16])], [("y", [2, 16])], opset=20)


def _gelu_tanh():
    node = _node("Gelu", ["x"], ["y"], approximate="tanh")
    return typed_model([node], [("x", [2, 16])], [("y", [2, 16])], opset=20)


def _erf():
    return typed_model([_node("Erf", ["x"], ["y"])], [("x", [3, 7])], [("y", [3, 7])])


def _matmul_3d():
    node = _node("MatMul", ["a", "b"], ["y"])
    return typed_model([node], [("a", [2, 3, 4]), ("b", [2, 4, 5])], [("y", [2, 3, 5])])


def _matmul_3d_weight():
    node = _node("MatMul", ["a", "w"], ["y"])
    return typed_model([node], [("a", [2, 3, 4])], [("y", [2, 3, 5])], [weight("w", [4, 5])])


def _attention():
    """Scaled dot-product attention of 2 heads: MatMul(q, kᵀ) 4-D, Softmax over the last axis,
    MatMul with v."""
    nodes = [
        _node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        _node("MatMul", ["q", "kt"], ["s"]),
        _node("Mul", ["s", "scale"], ["ss"]),
        _node("Softmax", ["ss"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"], "matmul_v"),
    ]
    shape = [1, 2, 6, 8]
    return typed_model(
        nodes, [("q", shape), ("k", shape), ("v", shape)], [("y", shape), ("p", [1, 2, 6, 6])],
        [_c("scale", np.float32(8**-0.5))],
    )  # fmt: skip


def _einsum_matmul():
    node = _node("Einsum", ["a", "w"], ["y"], equation="ij,jk->ik")
    return typed_model([node], [("a", [3, 4])], [("y", [3, 5])], [weight("w", [4, 5])], opset=12)


def _einsum_batched():
    node = _node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")
    return typed_model([node], [("a", [2, 3, 4]), ("b", [2, 4, 5])], [("y", [2, 3, 5])], opset=12)


def _einsum_attention():
    node = _node("Einsum", ["q", "k"], ["y"], equation="bhqd,bhkd->bhqk")
    shape = [1, 2, 5, 8]
    return typed_model([node], [("q", shape), ("k", shape)], [("y", [1, 2, 5, 5])], opset=12)


def _pad(mode: str, opset: int = 13):
    def make():
        pads = _c("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))
        ins = ["x", "pads"] + (["cv"] if mode == "constant" else [])
        inits = [pads] + ([_c("cv", np.float32(0.5))] if mode == "constant" else [])
        node = _node("Pad", ins, ["y"], mode=mode)
        return typed_model([node], [("x", [1, 2, 4, 5])], [("y", [1, 2, 7, 8])], inits, opset=opset)

    return make


def _expand():
    node = _node("Expand", ["x", "shape"], ["y"])
    return typed_model([node], [("x", [3, 1])], [("y", [2, 3, 4])], [_c("shape", np.array([2, 3, 4], np.int64))])


def _tile():
    node = _node("Tile", ["x", "reps"], ["y"])
    return typed_model([node], [("x", [2, 3])], [("y", [4, 9])], [_c("reps", np.array([2, 3], np.int64))])


def _gather_embedding():
    """An embedding table (constant) indexed by token ids (a model input)."""
    node = _node("Gather", ["table", "ids"], ["y"], axis=0)
    return typed_model([node], [("ids", [2, 5], I64)], [("y", [2, 5, 6])], [weight("table", [10, 6])]), {"ids": 10}


def _gather_computed():
    """Gather of computed data with constant (also negative) indices, and with index inputs."""
    idx = _c("idx", np.array([[0, -1], [2, 1]], np.int64))
    nodes = [
        _node("Relu", ["x"], ["r"]),
        helper.make_node("Gather", ["r", "idx"], ["y"], "gather_const", axis=1),
        helper.make_node("Gather", ["r", "ids"], ["z"], "gather_input", axis=2),
    ]
    ins = [("x", [2, 4, 5]), ("ids", [3], I64)]
    outs = [("y", [2, 2, 2, 5]), ("z", [2, 4, 3])]
    return typed_model(nodes, ins, outs, [idx]), {"ids": 5}


def _where():
    nodes = [
        _node("Greater", ["x", "t"], ["c"]),
        helper.make_node("Where", ["c", "x", "t"], ["y"], "where_computed"),
        helper.make_node("Where", ["m", "x", "zero"], ["z"], "where_input"),
    ]
    ins = [("x", [2, 3, 4]), ("t", [4]), ("m", [3, 1], BOOL)]
    return typed_model(nodes, ins, [("y", [2, 3, 4]), ("z", [2, 3, 4])], [_c("zero", np.float32(0))])


def _reduce_sum():
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["y"], "sum_keep"),
        helper.make_node("ReduceSum", ["x", "axes2"], ["z"], "sum_drop", keepdims=0),
    ]
    inits = [_c("axes", np.array([1], np.int64)), _c("axes2", np.array([0, -1], np.int64))]
    return typed_model(nodes, [("x", [2, 3, 4])], [("y", [2, 1, 4]), ("z", [3])], inits)


def _reduce_l2():
    nodes = [
        helper.make_node("ReduceL2", ["x"], ["y"], "l2_keep", axes=[-1]),
        helper.make_node("ReduceL2", ["x"], ["z"], "l2_all", keepdims=0),
    ]
    return typed_model(nodes, [("x", [2, 3, 4])], [("y", [2, 3, 1]), ("z", [])])


def _unary_math():
    """Sqrt/Log of positive values, Exp, Pow by a constant and by a tensor exponent."""
    nodes = [
        _node("Abs", ["x"], ["a"]),
        _node("Add", ["a", "eps"], ["p"]),
        _node("Sqrt", ["p"], ["s"]),
        _node("Log", ["p"], ["l"]),
        _node("Exp", ["x"], ["e"]),
        helper.make_node("Pow", ["x", "two"], ["q"], "pow_const"),
        helper.make_node("Pow", ["p", "s"], ["r"], "pow_tensor"),
        helper.make_node("Concat", ["s", "l", "e", "q", "r"], ["y"], "concat", axis=0),
    ]
    inits = [_c("eps", np.float32(0.1)), _c("two", np.float32(2.0))]
    return typed_model(nodes, [("x", [3, 4])], [("y", [15, 4])], inits)


def _argmax():
    nodes = [
        helper.make_node("ArgMax", ["x"], ["y"], "argmax_drop", axis=1, keepdims=0),
        helper.make_node("ArgMax", ["x"], ["z"], "argmax_last", axis=-1, keepdims=1, select_last_index=1),
    ]
    return typed_model(nodes, [("x", [2, 5, 3])], [("y", [2, 3], I64), ("z", [2, 5, 1], I64)])


def _topk(largest: int = 1, sorted_: int = 1, axis: int = -1):
    def make():
        node = _node("TopK", ["x", "k"], ["v", "i"], axis=axis, largest=largest, sorted=sorted_)
        shape = [2, 7, 5]
        out = list(shape)
        out[axis] = 3
        return typed_model(
            [node], [("x", shape)], [("v", out), ("i", out, I64)], [_c("k", np.array([3], np.int64))], opset=11
        )

    return make


def _topk_ties():
    """Many equal values (x rounded down to halves), K below and equal to the axis length:
    equal values come out lower index first."""
    nodes = [
        _node("Mul", ["x", "two"], ["x2"]),
        _node("Floor", ["x2"], ["f"]),
        helper.make_node("TopK", ["f", "k"], ["v", "i"], "topk_largest"),
        helper.make_node("TopK", ["f", "n"], ["w", "j"], "topk_sort_ascending", largest=0),
    ]
    inits = [_c("two", np.float32(2)), _c("k", np.array([4], np.int64)), _c("n", np.array([9], np.int64))]
    outs = [("v", [3, 4]), ("i", [3, 4], I64), ("w", [3, 9]), ("j", [3, 9], I64)]
    return typed_model(nodes, [("x", [3, 9])], outs, inits)


def _topk_int64():
    node = _node("TopK", ["x", "k"], ["v", "i"], axis=0)
    outs = [("v", [3, 4], I64), ("i", [3, 4], I64)]
    return typed_model([node], [("x", [6, 4], I64)], outs, [_c("k", np.array([3], np.int64))]), {"x": 4}


def _topk_infinities():
    """Inputs holding -inf, more of them than K leaves room for: still the ONNX order."""
    nodes = [
        _node("Less", ["x", "zero"], ["neg"]),
        _node("Where", ["neg", "ninf", "x"], ["m"]),
        _node("TopK", ["m", "k"], ["v", "i"]),
    ]
    inits = [_c("zero", np.float32(0)), _c("ninf", np.float32(-np.inf)), _c("k", np.array([6], np.int64))]
    return typed_model(nodes, [("x", [2, 8])], [("v", [2, 6]), ("i", [2, 6], I64)], inits)


def _layer_norm_stats():
    """LayerNormalization's Mean and InvStdDev outputs (TVM's converter gives placeholders)."""
    s, b = weight("ln_s", [4, 5]), weight("ln_b", [4, 5])
    node = _node("LayerNormalization", ["x", "ln_s", "ln_b"], ["y", "mean", "inv"], axis=-2, epsilon=1e-3)
    outs = [("y", [2, 4, 5]), ("mean", [2, 1, 1]), ("inv", [2, 1, 1])]
    return typed_model([node], [("x", [2, 4, 5])], outs, [s, b], opset=18)


def _pow_types():
    """Pow with an integer exponent of a float base, and of an integer base (int or float exponent)."""
    nodes = [
        helper.make_node("Pow", ["x", "e_int"], ["y"], "pow_float_int"),
        helper.make_node("Pow", ["n", "e_i32"], ["z"], "pow_int_int"),
        helper.make_node("Pow", ["n", "e_f"], ["w"], "pow_int_float"),
    ]
    inits = [
        _c("e_int", np.array([2, 3, 1, 0], np.int64)),
        _c("e_i32", np.array([3, 2, 0, 1], np.int32)),
        _c("e_f", np.array([0.5, 2.0, 1.5, 3.0], np.float32)),
    ]
    ins = [("x", [3, 4]), ("n", [3, 4], TensorProto.INT32)]
    outs = [("y", [3, 4]), ("z", [3, 4], TensorProto.INT32), ("w", [3, 4], TensorProto.INT32)]
    return typed_model(nodes, ins, outs, inits), {"n": 12}


def _variadic_int64():
    nodes = [helper.make_node(op, ["a", "b", "c"], [op.lower()], f"{op.lower()}3") for op in ("Max", "Min")]
    ins = [("a", [2, 3], I64), ("b", [3], I64), ("c", [2, 1], I64)]
    return typed_model(nodes, ins, [(op, [2, 3], I64) for op in ("max", "min")]), {"a": 9, "b": 9, "c": 9}


def _variadic():
    nodes = [
        helper.make_node(op, ["a", "b", "c"], [op.lower()], f"{op.lower()}3")
        for op in ("Sum", "Mean", "Max", "Min")
    ]
    ins = [("a", [2, 3, 4]), ("b", [3, 4]), ("c", [2, 1, 4])]
    return typed_model(nodes, ins, [(op, [2, 3, 4]) for op in ("sum", "mean", "max", "min")])


def _identity_dropout():
    nodes = [
        _node("Identity", ["x"], ["y"]),
        _node("Dropout", ["x", "ratio"], ["d"]),
        _node("Relu", ["d"], ["z"]),
    ]
    return typed_model(nodes, [("x", [2, 6])], [("y", [2, 6]), ("z", [2, 6])], [_c("ratio", np.float32(0.3))], opset=12)


def _dropout_mask():
    node = _node("Dropout", ["x"], ["y", "mask"])
    return typed_model([node], [("x", [2, 6])], [("y", [2, 6]), ("mask", [2, 6], BOOL)], opset=13)


CASES = {
    "lrn": _lrn,
    "layer_norm": _layer_norm,
    "layer_norm_two_axes": _layer_norm_two_axes,
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "erf": _erf,
    "matmul_3d": _matmul_3d,
    "matmul_3d_weight": _matmul_3d_weight,
    "attention_4d_softmax": _attention,
    "einsum_matmul": _einsum_matmul,
    "einsum_batched": _einsum_batched,
    "einsum_attention": _einsum_attention,
    "pad_constant": _pad("constant"),
    "pad_reflect": _pad("reflect"),
    "pad_edge": _pad("edge"),
    "pad_wrap": _pad("wrap", opset=19),
    "expand": _expand,
    "tile": _tile,
    "gather_embedding": _gather_embedding,
    "gather_computed": _gather_computed,
    "where": _where,
    "reduce_sum": _reduce_sum,
    "reduce_l2": _reduce_l2,
    "sqrt_exp_log_pow": _unary_math,
    "argmax": _argmax,
    "topk_largest_sorted": _topk(),
    "topk_smallest_axis1": _topk(largest=0, axis=1),
    "topk_unsorted": _topk(sorted_=0),  # order open: compared by index (CANON)
    "sum_mean_max_min_3": _variadic,
    "max_min_int64": _variadic_int64,
    "topk_ties": _topk_ties,
    "topk_int64": _topk_int64,
    "topk_infinities": _topk_infinities,
    "layer_norm_mean_invstddev": _layer_norm_stats,
    "pow_int_types": _pow_types,
    "identity_dropout": _identity_dropout,
    "dropout_mask": _dropout_mask,
}


def _by_index(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """TopK's values and indices reordered by index along the last axis."""
    values, indices = outputs
    order = np.argsort(indices, axis=-1, kind="stable")
    return [np.take_along_axis(values, order, -1), np.take_along_axis(indices, order, -1)]


CANON = {"topk_unsorted": _by_index}
QEMU_CASES = ("attention_4d_softmax", "layer_norm", "gelu", "gather_embedding", "topk_largest_sorted", "pad_wrap")


def _case(name: str) -> tuple[onnx.ModelProto, dict[str, int] | None]:
    made = CASES[name]()
    return made if isinstance(made, tuple) else (made, None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_host_matches_onnxruntime(name, tmp_path):
    model, int_high = _case(name)
    errs = errors_vs_onnxruntime(model, "host", tmp_path, int_high=int_high, canon=CANON.get(name))
    assert_outputs_match(model, errs, TOL)


@needs_qemu
@pytest.mark.parametrize("name", QEMU_CASES)
def test_cortex_m7_matches_onnxruntime(name, tmp_path):
    model, int_high = _case(name)
    errs = errors_vs_onnxruntime(model, "cortex-m7", tmp_path, samples=1, int_high=int_high, canon=CANON.get(name))
    assert_outputs_match(model, errs, TOL)


def test_topk_with_a_computed_k_is_refused(tmp_path):
    """K from a model input: the output shape depends on data, refused naming the node (not
    taken for an empty tensor, as an unknown dimension once was)."""
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["v", "i"], "topk_k_input"),
        helper.make_node("ReduceSum", ["v"], ["y"], "sum", keepdims=0),
    ]
    model = typed_model(nodes, [("x", [2, 7]), ("k", [1], I64)], [("y", [])])
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError) as err:
        build(tmp_path / "m.onnx", load_target("host"), tmp_path / "out", BuildOptions(), log=lambda *_: None)
    assert "TopK" in str(err.value) and "'topk_k_input'" in str(err.value) and "\n" not in str(err.value)


def test_training_dropout_is_refused(tmp_path):
    """training_mode=1 draws random masks; refused also inside a graph (not taken for a
    passthrough)."""
    train = _c("train", np.array(True))
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], "relu"),
        helper.make_node("Dropout", ["r", "", "train"], ["d"], "dropout_training"),
        helper.make_node("Relu", ["d"], ["y"], "relu2"),
    ]
    model = typed_model(nodes, [("x", [2, 6])], [("y", [2, 6])], [train])
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError, match="Dropout node 'dropout_training': training_mode"):
        build(tmp_path / "m.onnx", load_target("host"), tmp_path / "out", BuildOptions(), log=lambda *_: None)
