"""Rewrite ONNX ops that TVM's importer lacks or gets wrong into ops it imports exactly.

Each rewrite keeps the model's function (the ONNX semantics, as onnx.reference computes them);
the result is only for TVM's importer, never saved or compared: the shape-inferred float path
model goes in, a model with the same inputs and outputs comes out.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecomp.errors import UnsupportedModelError
from edgecomp.lower.resize import resize_taps


def legalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Apply every rewrite below; nodes that need none are kept as they are."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(model)
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        rewrite = _REWRITES.get(node.op_type)
        replaced = rewrite(g, node) if rewrite is not None else None
        new_nodes.extend(replaced if replaced is not None else [node])
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(g.new_inits)
    return model


class _Graph:
    """Constants, shapes and element types of a shape-inferred model, and fresh names."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.types: dict[str, tuple[int, tuple[int, ...]]] = {}
        for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
            tt = vi.type.tensor_type
            self.types[vi.name] = (tt.elem_type, tuple(d.dim_value for d in tt.shape.dim))
        for name, arr in self.consts.items():
            self.types[name] = (helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape)
        self.new_inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"__ec_{hint}_{self._n}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def constant_input(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        """Input i of `node` if it is given and constant; an empty array if it is omitted."""
        if i >= len(node.input) or not node.input[i]:
            return np.zeros(0)
        return self.consts.get(node.input[i])


def _resize(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """Resize -> per axis, Gathers of the contributing input elements times constant weights."""
    elem, shape = g.types.get(node.input[0], (0, ()))
    params = [g.constant_input(node, i) for i in (1, 2, 3)]
    if any(p is None for p in params):
        raise UnsupportedModelError(
            f"Resize node '{node.name}': roi, scales and sizes must be constants (static shapes)"
        )
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    if len(node.input) > 2 and node.input[2] and params[1].size and params[2].size:
        raise UnsupportedModelError(f"Resize node '{node.name}': give scales or sizes, not both")
    try:
        taps, _ = resize_taps(shape, attrs, params[0], params[1], params[2])
    except ValueError as exc:
        raise UnsupportedModelError(f"Resize node '{node.name}': {exc}") from exc
    is_float = elem in (TensorProto.FLOAT, TensorProto.DOUBLE)
    if not is_float and not all(t.is_selection and t.extrapolated is None for t in taps):
        return None  # integer linear/cubic resize: TVM's converter
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    nodes: list[onnx.NodeProto] = []
    x = node.input[0]
    for n, t in enumerate(taps):
        last = n == len(taps) - 1
        rank_after = len(shape) - t.axis - 1
        terms = []
        for k in range(t.index.shape[0]):
            gathered = g.name("resize_g")
            nodes.append(helper.make_node("Gather", [x, g.const("resize_idx", t.index[k])], [gathered], axis=t.axis))
            if t.is_selection:
                terms.append(gathered)
                continue
            w = t.weights[k].astype(dtype).reshape((-1,) + (1,) * rank_after)
            weighted = g.name("resize_w")
            nodes.append(helper.make_node("Mul", [gathered, g.const("resize_wt", w)], [weighted]))
            terms.append(weighted)
        acc = terms[0]
        for term in terms[1:]:
            total = g.name("resize_sum")
            nodes.append(helper.make_node("Add", [acc, term], [total]))
            acc = total
        if t.extrapolated is not None:
            mask = g.const("resize_mask", t.extrapolated.reshape((-1,) + (1,) * rank_after))
            fill = g.const("resize_fill", np.array(attrs.get("extrapolation_value", 0.0), dtype=dtype))
            masked = g.name("resize_x")
            nodes.append(helper.make_node("Where", [mask, fill, acc], [masked]))
            acc = masked
        if last:
            nodes.append(helper.make_node("Identity", [acc], [node.output[0]]))
        x = acc
    if not taps:
        nodes.append(helper.make_node("Identity", [x], [node.output[0]]))
    return nodes


_REWRITES = {"Resize": _resize}
