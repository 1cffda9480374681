"""Constant folding on the ONNX graph.

Preserves: the model's outputs for every input (each folded node is evaluated by onnx's reference
implementation), its inputs, outputs and their names. Removes: Constant nodes (they become
initializers), nodes whose inputs are all constant, and Shape nodes of statically shaped tensors
(the shape becomes a constant), which is what makes Shape -> Gather -> Concat -> Reshape chains
from exporters compile to a plain reshape.

A node is not folded when its result would be much larger than its constant inputs (Expand,
ConstantOfShape, Tile of a small constant): folding those would move RAM-free computation into
flash. QuantizeLinear/DequantizeLinear are never folded: in a QDQ model they carry the quantization
of the weights they read.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from edgecomp.passes.base import PassResult

MAX_GROWTH = 4  # folded output elements may be at most this many times the constant inputs'
MIN_GUARDED = 1024  # ...unless the output is this small anyway
NEVER_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "RandomNormal", "RandomUniform"})


def fold_constants(model: onnx.ModelProto) -> PassResult:
    """A copy of `model` with constant subgraphs replaced by initializers; report: nodes folded."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shapes = _static_shapes(model)
    graph_outputs = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    n_nodes = len(graph.node)
    new_inits: dict[str, np.ndarray] = {}
    for node in graph.node:
        values = _try_fold(node, consts, shapes)
        if values is None or any(name in graph_outputs for name in node.output):
            kept.append(node)
            continue
        for name, value in zip(node.output, values, strict=True):
            consts[name] = value
            new_inits[name] = value
    if not new_inits:
        return PassResult(model, {"folded": 0})
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v), n) for n, v in new_inits.items())
    _drop_unused_initializers(graph)
    return PassResult(model, {"folded": n_nodes - len(kept)})


def _try_fold(node: onnx.NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, list[int]]):
    if node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLD:
        return None
    if node.op_type == "Shape" and node.input[0] in shapes and node.input[0] not in consts:
        attrs = {a.name: a.i for a in node.attribute}
        shape = shapes[node.input[0]]
        return [np.array(shape[attrs.get("start", 0) : attrs.get("end", len(shape))], dtype=np.int64)]
    inputs = [i for i in node.input if i]
    if not all(i in consts for i in inputs):
        return None
    try:
        results = ReferenceEvaluator(node).run(None, {i: consts[i] for i in inputs})
    except Exception:  # the reference lacks this op or attribute form: keep the node
        return None
    in_size = sum(consts[i].size for i in inputs)
    out_size = sum(np.asarray(r).size for r in results)
    if inputs and out_size > MIN_GUARDED and out_size > MAX_GROWTH * in_size:
        return None
    return [np.asarray(r) for r in results]


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    return shapes


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    dropped = {i.name for i in graph.initializer} - {i.name for i in keep}
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in dropped]  # old models list weights as inputs
    del graph.input[:]
    graph.input.extend(inputs)
