"""Graph passes keep the model's outputs (checked with onnxruntime on both sides)."""

from __future__ import annotations

import numpy as np
from conftest import compile_and_compare, make_model, random_inputs
from onnx import helper, numpy_helper

from edgecomp.passes import fold_constants
from edgecomp.verify import Reference


def _exporter_style_reshape():
    """x -> Shape -> Gather(0) -> Concat([n, -1]) -> Reshape, plus a Constant node: what torch.onnx emits."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], "shape"),
        helper.make_node(
            "Constant", [], ["zero"], "c0", value=numpy_helper.from_array(np.array(0, np.int64))
        ),
        helper.make_node("Gather", ["s", "zero"], ["n"], "gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], "unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], "concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"], "reshape"),
        helper.make_node("Mul", ["r", "two"], ["y"], "scale"),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        numpy_helper.from_array(np.full((1,), 2.0, np.float32), "two"),
    ]
    return make_model(nodes, [("x", [2, 3, 4])], [("y", [2, 12])], inits)


def test_fold_constants_removes_shape_arithmetic_and_keeps_outputs():
    import onnx

    model = onnx.shape_inference.infer_shapes(_exporter_style_reshape())
    folded = fold_constants(model).model
    ops = [n.op_type for n in folded.graph.node]
    assert ops == ["Reshape", "Mul"], ops
    x = random_inputs(model)
    np.testing.assert_array_equal(Reference(folded).run(x)[0], Reference(model).run(x)[0])
    assert [n.op_type for n in model.graph.node][0] == "Shape", "the pass must not mutate its input"


def test_folded_model_compiles(tmp_path):
    assert compile_and_compare(_exporter_style_reshape(), "host", tmp_path) <= 1e-6
