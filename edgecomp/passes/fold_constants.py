"""Constant folding on the ONNX graph.

Preserves: the model's outputs for every input (each folded node is evaluated by onnx's reference
implementation), its inputs, outputs and their names. Removes: Constant nodes (they become
initializers), nodes whose inputs are all constant, and Shape nodes of statically shaped tensors
(the shape becomes a constant), which is what makes Shape -> Gather -> Concat -> Reshape chains
from exporters compile to a plain reshape.

A node is not folded when its result would be much larger than its constant inputs (Expand, Tile
of a small constant): folding those would move RAM-free computation into flash. ConstantOfShape and
Range are the exception: edgecomp compiles them only folded (old model-zoo graphs make their weights
so). QuantizeLinear/DequantizeLinear are never folded: in a QDQ model they carry the quantization
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
ALWAYS_FOLD = frozenset({"ConstantOfShape", "Range"})  # compiled only as constants (frontend/ops.py)


def fold_constants(model: onnx.ModelProto) -> PassResult:
    """A copy of `model` with constant subgraphs replaced by initializers; report: nodes folded."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shapes = _static_shapes(model)
    # Each node is evaluated at the model's opset (Unsqueeze's axes are an attribute before 13).
    opsets = {o.domain or "": o.version for o in model.opset_import}
    graph_outputs = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    n_nodes = len(graph.node)
    new_inits: dict[str, np.ndarray] = {}
    for node in graph.node:
        values = _try_fold(node, consts, shapes, opsets)
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


def _try_fold(node: onnx.NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, list[int]],
              opsets: dict[str, int]):  # fmt: skip
    if node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLD:
        return None
    if node.op_type == "Shape" and node.input[0] in shapes and node.input[0] not in consts:
        attrs = {a.name: a.i for a in node.attribute}
        shape = shapes[node.input[0]]
        return [np.array(shape[attrs.get("start", 0) : attrs.get("end", len(shape))], dtype=np.int64)]
    if node.op_type == "Size" and node.input[0] in shapes and node.input[0] not in consts:
        return [np.array(int(np.prod(shapes[node.input[0]])), dtype=np.int64)]
    inputs = [i for i in node.input if i]
    if not all(i in consts for i in inputs):
        return None
    try:
        results = _evaluator(node, inputs, opsets).run(None, {i: consts[i] for i in inputs})
    except Exception:  # the reference lacks this op or attribute form: keep the node
        return None
    in_size = sum(consts[i].size for i in inputs)
    out_size = sum(np.asarray(r).size for r in results)
    if inputs and out_size > MIN_GUARDED and out_size > MAX_GROWTH * in_size and node.op_type not in ALWAYS_FOLD:
        return None
    return [np.asarray(r) for r in results]


def _evaluator(node: onnx.NodeProto, inputs: list[str], opsets: dict[str, int]) -> ReferenceEvaluator:
    """onnx's reference evaluator for one node at the model's opsets (given a bare NodeProto it
    would use the newest opset, where e.g. Unsqueeze's axes attribute is an input)."""
    untyped = onnx.TypeProto()
    graph = onnx.helper.make_graph(
        [node], "fold", [onnx.helper.make_value_info(i, untyped) for i in inputs],
        [onnx.helper.make_value_info(o, untyped) for o in node.output if o],
    )  # fmt: skip
    return ReferenceEvaluator(graph, opsets=opsets)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    return shapes


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = _read_names(graph) | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    dropped = {i.name for i in graph.initializer} - {i.name for i in keep}
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in dropped]  # old models list weights as inputs
    del graph.input[:]
    graph.input.extend(inputs)


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every name the graph's nodes read, those their subgraphs (If branches, Loop bodies) read
    from the outer scope included."""
    names = set()
    for n in graph.node:
        names.update(n.input)
        for attr in n.attribute:
            for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _read_names(g) | {o.name for o in g.output}
    return names
