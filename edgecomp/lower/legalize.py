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
from edgecomp.lower.recurrent import recurrent
from edgecomp.lower.resize import resize_taps


def legalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Apply every rewrite below; nodes that need none are kept as they are, and a model that
    needs none is returned itself (no copy, no weight converted)."""
    g = _Graph(model)
    new_nodes: list[onnx.NodeProto] = []
    changed = False
    for node in model.graph.node:
        rewrite = _REWRITES.get(node.op_type)
        replaced = _empty(g, node)
        if replaced is None and rewrite is not None:
            replaced = rewrite(g, node)
        changed |= replaced is not None
        new_nodes.extend(replaced if replaced is not None else [node])
    if not changed:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    out.graph.initializer.extend(g.new_inits)
    return out


class _Graph:
    """Constants, shapes and element types of a shape-inferred model, and fresh names. A
    dimension shape inference could not tell (e.g. set by a computed TopK K) is -1, never 0:
    0 means an empty tensor."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.consts = _Constants(model.graph.initializer)
        self.types: dict[str, tuple[int, tuple[int, ...]]] = {}
        for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
            tt = vi.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            self.types[vi.name] = (tt.elem_type, dims)
        for t in model.graph.initializer:
            self.types[t.name] = (t.data_type, tuple(t.dims))
        self.new_inits: list[onnx.TensorProto] = []
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
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


class _Constants:
    """Initializers by name, converted to numpy only when a rewrite reads one (a model's weights
    are most of its bytes, and most rewrites read a few small parameters)."""

    def __init__(self, inits) -> None:
        self._protos = {t.name: t for t in inits}
        self._arrays: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._protos

    def get(self, name: str) -> np.ndarray | None:
        if name not in self._protos:
            return None
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self._protos[name])
        return self._arrays[name]

    def __getitem__(self, name: str) -> np.ndarray:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value


def _empty(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """A node whose outputs are all empty tensors computes nothing: empty constants instead."""
    outs = [g.types.get(o) for o in node.output if o]
    if not outs or any(t is None or 0 not in t[1] for t in outs):
        return None
    return [
        helper.make_node(
            "Identity", [g.const("empty", np.zeros(t[1], helper.tensor_dtype_to_np_dtype(t[0])))], [o]
        )
        for o, t in zip([o for o in node.output if o], outs, strict=True)
    ]


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
            nodes.append(
                helper.make_node("Gather", [x, g.const("resize_idx", t.index[k])], [gathered], axis=t.axis)
            )
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


def _conv_transpose(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """ConvTranspose with output_shape -> the explicit pads (and output_padding) it implies."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "output_shape" not in attrs:
        return None
    _, xshape = g.types[node.input[0]]
    _, wshape = g.types[node.input[1]]
    spatial = len(xshape) - 2
    out = list(attrs["output_shape"])[-spatial:]
    strides = list(attrs.get("strides", [1] * spatial))
    dil = list(attrs.get("dilations", [1] * spatial))
    opad = list(attrs.get("output_padding", [0] * spatial))
    upper = attrs.get("auto_pad", b"NOTSET") == b"SAME_UPPER"
    begin, end = [], []
    for i in range(spatial):
        total = strides[i] * (xshape[2 + i] - 1) + opad[i] + (wshape[2 + i] - 1) * dil[i] + 1 - out[i]
        if total < 0:  # the output is larger than the kernel reaches: extra rows at the end
            opad[i] -= total
            total = 0
        small, large = total // 2, total - total // 2
        begin.append(small if upper else large)
        end.append(large if upper else small)
    keep = [a for a in node.attribute if a.name not in ("output_shape", "auto_pad", "pads", "output_padding")]
    new = helper.make_node("ConvTranspose", list(node.input), list(node.output), node.name)
    new.attribute.extend(keep)
    new.attribute.extend(
        [helper.make_attribute("pads", begin + end), helper.make_attribute("output_padding", opad)]
    )
    return [new]


def _centred(g: _Graph, nodes: list, x: str, zp: str | None, per_channel_rank: int = 0) -> str:
    """int32(x) - int32(zero point); a per-channel zero point reshaped to broadcast over axis 0."""
    wide = g.name("i32")
    nodes.append(helper.make_node("Cast", [x], [wide], to=TensorProto.INT32))
    if not zp:
        return wide
    z = g.consts.get(zp)
    if z is None:
        raise UnsupportedModelError(f"zero point '{zp}' must be a constant")
    z = z.astype(np.int32)
    if z.size > 1 and per_channel_rank:
        z = z.reshape((-1,) + (1,) * (per_channel_rank - 1))
    centred = g.name("centred")
    nodes.append(helper.make_node("Sub", [wide, g.const("zp", z)], [centred]))
    return centred


def _conv_integer(g: _Graph, node: onnx.NodeProto, x_zp: str, w: str, w_zp: str, out: str) -> list:
    """int32 Conv of zero-point-centred operands (padding then adds zeros, as ONNX specifies)."""
    nodes: list[onnx.NodeProto] = []
    rank = len(g.types[w][1])
    xc = _centred(g, nodes, node.input[0], x_zp)
    wc = _centred(g, nodes, w, w_zp, rank)
    conv = helper.make_node("Conv", [xc, wc], [out], node.name)
    conv.attribute.extend(node.attribute)
    nodes.append(conv)
    return nodes


def _conv_integer_node(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """ConvInteger -> int32 Conv of centred operands."""
    inp = list(node.input) + [""] * (4 - len(node.input))
    return _conv_integer(g, node, inp[2], inp[1], inp[3], node.output[0])


def _requantize(g: _Graph, nodes: list, acc: str, multiplier: np.ndarray, y_zp: str, out: str,
                channel_rank: int = 0) -> None:  # fmt: skip
    """out = saturate(round(float(acc) * multiplier) + y_zp): QLinear*'s output rounding."""
    m = multiplier.astype(np.float32)
    if m.size > 1 and channel_rank:
        m = m.reshape((-1,) + (1,) * (channel_rank - 2))
    real, scaled = g.name("acc_f"), g.name("scaled")
    nodes.append(helper.make_node("Cast", [acc], [real], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Mul", [real, g.const("requant", m)], [scaled]))
    nodes.append(helper.make_node("QuantizeLinear", [scaled, g.const("one", np.float32(1.0)), y_zp], [out]))


def _qlinear_conv(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """QLinearConv -> int32 Conv (+ int32 bias), requantized (scales folded at compile time)."""
    x, xs, xzp, w, ws, wzp, ys, yzp, *bias = node.input
    scales = [g.consts.get(n) for n in (xs, ws, ys)]
    if any(s is None for s in scales):
        raise UnsupportedModelError(f"QLinearConv node '{node.name}': scales must be constants")
    acc = g.name("acc")
    nodes = _conv_integer(g, node, xzp, w, wzp, acc)
    rank = len(g.types[x][1])
    if bias and bias[0]:
        b = g.consts[bias[0]].astype(np.int32).reshape((-1,) + (1,) * (rank - 2))
        biased = g.name("acc_b")
        nodes.append(helper.make_node("Add", [acc, g.const("bias", b)], [biased]))
        acc = biased
    _requantize(g, nodes, acc, scales[0] * scales[1] / scales[2], yzp, node.output[0], rank)
    return nodes


def _qlinear_matmul(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """QLinearMatMul -> MatMulInteger, requantized (scales folded at compile time)."""
    a, a_s, azp, b, b_s, bzp, ys, yzp = node.input
    scales = [g.consts.get(n) for n in (a_s, b_s, ys)]
    if any(s is None for s in scales):
        raise UnsupportedModelError(f"QLinearMatMul node '{node.name}': scales must be constants")
    acc = g.name("acc")
    nodes = [helper.make_node("MatMulInteger", [a, b, azp, bzp], [acc])]
    # As the ONNX reference: the scale product in the scales' own type, the product with the
    # accumulator in float.
    _requantize(g, nodes, acc, np.asarray(scales[0] * scales[1] / scales[2]), yzp, node.output[0])
    return nodes


def _blocked(g: _Graph, node: onnx.NodeProto, kind: str) -> tuple[np.ndarray, np.ndarray | None, int] | None:
    """For blocked quantization (block_size > 0): the scale and zero point repeated to the input's
    full shape, so the op becomes elementwise, and the output's element type."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    block = attrs.get("block_size", 0)
    if not block:
        return None
    _, shape = g.types[node.input[0]]
    axis = attrs.get("axis", 1) % len(shape)
    scale, zp = g.consts.get(node.input[1]), g.constant_input(node, 2)
    if scale is None or zp is None:
        raise UnsupportedModelError(f"{kind} node '{node.name}': scale and zero point must be constants")

    def full(a: np.ndarray) -> np.ndarray:
        return np.take(np.repeat(a, block, axis=axis), np.arange(shape[axis]), axis=axis)

    return full(scale), full(zp) if zp.size else None, g.types[node.output[0]][0]


def _quantize_blocked(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """Blocked QuantizeLinear -> saturate(round(x / scale) + zero point), elementwise."""
    blocked = _blocked(g, node, "QuantizeLinear")
    if blocked is None:
        return None
    scale, zp, out_type = blocked
    info = np.iinfo(helper.tensor_dtype_to_np_dtype(out_type))
    nodes, q, r, shifted, clipped = [], g.name("q"), g.name("r"), g.name("z"), g.name("c")
    nodes.append(helper.make_node("Div", [node.input[0], g.const("scale", scale.astype(np.float32))], [q]))
    nodes.append(helper.make_node("Round", [q], [r]))
    zf = np.zeros(1, np.float32) if zp is None else zp.astype(np.float32)
    nodes.append(helper.make_node("Add", [r, g.const("zp", zf)], [shifted]))
    bounds = [g.const("lo", np.float32(info.min)), g.const("hi", np.float32(info.max))]
    nodes.append(helper.make_node("Clip", [shifted, *bounds], [clipped]))
    nodes.append(helper.make_node("Cast", [clipped], [node.output[0]], to=out_type))
    return nodes


def _dequantize_blocked(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """Blocked DequantizeLinear -> (x - zero point) * scale, elementwise."""
    blocked = _blocked(g, node, "DequantizeLinear")
    if blocked is None:
        return None
    scale, zp, out_type = blocked
    dtype = helper.tensor_dtype_to_np_dtype(out_type)
    nodes, xf, centred = [], g.name("xf"), g.name("xc")
    nodes.append(helper.make_node("Cast", [node.input[0]], [xf], to=out_type))
    zf = np.zeros(1, dtype) if zp is None else zp.astype(dtype)
    nodes.append(helper.make_node("Sub", [xf, g.const("zp", zf)], [centred]))
    nodes.append(helper.make_node("Mul", [centred, g.const("scale", scale.astype(dtype))], [node.output[0]]))
    return nodes


def _reduce_extreme(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """ReduceMax/ReduceMin of an empty tensor -> its identity (-inf / +inf, or the integer
    type's limit), as ONNX defines; of bool -> the same reduction over uint8 0/1 (TVM's has no
    bool identity element), cast back."""
    elem, shape = g.types.get(node.input[0], (0, ()))
    if 0 in shape:
        out_elem, out_shape = g.types[node.output[0]]
        dtype = helper.tensor_dtype_to_np_dtype(out_elem)
        if dtype == np.bool_:
            lowest, highest = False, True
        elif dtype.kind == "f":
            lowest, highest = -np.inf, np.inf
        else:
            lowest, highest = np.iinfo(dtype).min, np.iinfo(dtype).max
        value = np.full(out_shape, lowest if node.op_type == "ReduceMax" else highest, dtype)
        return [helper.make_node("Identity", [g.const("identity", value)], [node.output[0]])]
    if elem != TensorProto.BOOL:
        return None
    wide, reduced = g.name("u8"), g.name("red")
    red = helper.make_node(node.op_type, [wide, *node.input[1:]], [reduced], node.name)
    red.attribute.extend(node.attribute)
    return [
        helper.make_node("Cast", [node.input[0]], [wide], to=TensorProto.UINT8),
        red,
        helper.make_node("Cast", [reduced], [node.output[0]], to=TensorProto.BOOL),
    ]


def _split_empty(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """Split with an empty part -> one Slice per part (TVM's split needs increasing indices)."""
    _, shape = g.types[node.input[0]]
    sizes = [g.types[o][1] for o in node.output]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % len(shape)
    if all(s[axis] for s in sizes):
        return None
    nodes, start = [], 0
    for out, s in zip(node.output, sizes, strict=True):
        bounds = [g.const("start", np.array([start])), g.const("end", np.array([start + s[axis]]))]
        nodes.append(
            helper.make_node("Slice", [node.input[0], *bounds, g.const("axis", np.array([axis]))], [out])
        )
        start += s[axis]
    return nodes


def _topk(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """TopK with a constant K -> K selection steps of elementwise ops and reductions (TVM's topk
    is a call into its runtime's sort, which no microcontroller build has).

    Step r finds the extreme value m of the positions not yet taken (ReduceMax/ReduceMin) and
    takes the first not-taken position holding it (ArgMax of a 0/1 mask picks the lowest index):
    ONNX's order, equal values by lower index first. Taken positions are masked with the
    smallest value of the input (largest=0: the largest), found at run time, so no value needs
    a sentinel. TVM's max/min reductions start from the largest finite value, not infinity, so
    infinities are clamped to it for the comparisons (they then tie with it), and the values
    are gathered from the input itself. sorted=0 leaves the order to the implementation: it
    gets this sorted one. Cost: K passes over the axis, scratch O(axis length).
    """
    k = g.constant_input(node, 1)
    if k is None or k.size != 1:
        raise UnsupportedModelError(
            f"TopK node '{node.name}': K must be a constant (the output shape depends on it)"
        )
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    elem, shape = g.types[node.input[0]]
    axis = attrs.get("axis", -1) % len(shape)
    largest = attrs.get("largest", 1)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    nodes: list[onnx.NodeProto] = []
    key = node.input[0]
    if dtype.kind == "f":
        finite = np.finfo(dtype)
        key = g.name("key")
        bound = g.const("finite", np.array(finite.min if largest else finite.max, dtype))
        nodes.append(helper.make_node("Max" if largest else "Min", [node.input[0], bound], [key]))
    fill = g.name("fill")
    nodes.append(_reduce(g, "ReduceMin" if largest else "ReduceMax", key, [axis], fill))
    position = g.const("iota", np.arange(shape[axis]).reshape((-1,) + (1,) * (len(shape) - axis - 1)))
    taken: str | None = None
    indices = []
    for _ in range(int(k.reshape(-1)[0])):
        idx, taken = _topk_step(g, nodes, key, fill, taken, position, axis, largest)
        indices.append(idx)
    index_out = node.output[1] if len(node.output) > 1 and node.output[1] else g.name("indices")
    nodes.append(helper.make_node("Concat", indices, [index_out], axis=axis))
    nodes.append(helper.make_node("GatherElements", [node.input[0], index_out], [node.output[0]], axis=axis))
    return nodes


def _topk_step(g: _Graph, nodes: list, key: str, fill: str, taken: str | None, position: str, axis: int,
               largest: int) -> tuple[str, str]:  # fmt: skip
    """One TopK selection: the index of the first not-taken position holding the extreme of the
    not-taken values (keepdims), and the taken mask with it added. `taken` None: nothing yet."""
    free, m, cand, cand_f, idx, hit = (g.name(h) for h in ("free", "m", "cand", "cand_f", "idx", "hit"))
    if taken is None:
        nodes.append(helper.make_node("Identity", [key], [free]))
    else:
        nodes.append(helper.make_node("Where", [taken, fill, key], [free]))
    nodes.append(_reduce(g, "ReduceMax" if largest else "ReduceMin", free, [axis], m))
    if taken is None:
        nodes.append(helper.make_node("Equal", [key, m], [cand]))
    else:
        at_m, not_taken = g.name("at_m"), g.name("not_taken")
        nodes += [
            helper.make_node("Equal", [key, m], [at_m]),
            helper.make_node("Not", [taken], [not_taken]),
            helper.make_node("And", [at_m, not_taken], [cand]),
        ]
    nodes += [
        helper.make_node("Cast", [cand], [cand_f], to=TensorProto.FLOAT),
        helper.make_node("ArgMax", [cand_f], [idx], axis=axis, keepdims=1),
        helper.make_node("Equal", [position, idx], [hit]),
    ]
    if taken is None:
        return idx, hit
    now = g.name("taken")
    nodes.append(helper.make_node("Or", [taken, hit], [now]))
    return idx, now


def _reduce(g: _Graph, op: str, x: str, axes: list[int], out: str) -> onnx.NodeProto:
    """A keepdims reduction in the form the model's opset defines (axes became an input in
    opset 18, ReduceSum's in 13), which is the form TVM's importer reads."""
    since = 13 if op == "ReduceSum" else 18
    if g.opset >= since:
        return helper.make_node(op, [x, g.const("axes", np.array(axes, np.int64))], [out], keepdims=1)
    return helper.make_node(op, [x], [out], axes=axes, keepdims=1)


def _layer_norm(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """LayerNormalization whose Mean or InvStdDev output is used -> its function body
    (ReduceMean, Sub, Mul, Sqrt, Reciprocal): TVM's converter returns placeholders for those two.
    With only Y used, TVM's fused layer_norm is kept."""
    outputs = list(node.output) + [""] * (3 - len(node.output))
    if not outputs[1] and not outputs[2]:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("stash_type", 1) != 1:
        raise UnsupportedModelError(f"LayerNormalization node '{node.name}': stash_type other than float is not compiled")
    elem, shape = g.types[node.input[0]]
    if elem != TensorProto.FLOAT:
        return None
    axes = list(range(attrs.get("axis", -1) % len(shape), len(shape)))
    mean, centred, square, var, shifted, std = (g.name(h) for h in ("mean", "xc", "sq", "var", "ve", "std"))
    inv, normed = outputs[2] or g.name("inv"), g.name("normed")
    eps = g.const("eps", np.float32(attrs.get("epsilon", 1e-5)))
    nodes = [
        _reduce(g, "ReduceMean", node.input[0], axes, mean),
        helper.make_node("Sub", [node.input[0], mean], [centred]),
        helper.make_node("Mul", [centred, centred], [square]),
        _reduce(g, "ReduceMean", square, axes, var),
        helper.make_node("Add", [var, eps], [shifted]),
        helper.make_node("Sqrt", [shifted], [std]),
        helper.make_node("Reciprocal", [std], [inv]),
        helper.make_node("Mul", [centred, inv], [normed]),
    ]
    if outputs[1]:
        nodes.append(helper.make_node("Identity", [mean], [outputs[1]]))
    if outputs[0]:
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        scaled = outputs[0] if bias is None else g.name("scaled")
        nodes.append(helper.make_node("Mul", [normed, node.input[1]], [scaled]))
        if bias is not None:
            nodes.append(helper.make_node("Add", [scaled, bias], [outputs[0]]))
    return nodes


def _pow(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """Pow of mixed or integer types -> Pow in floating point (TVM's power takes one float type):
    an integer exponent of a float base is cast to the base's type; an integer base is raised in
    double and cast back (integer exponents rounded first, as exact integer powers; float
    exponents truncated, as onnxruntime casts)."""
    base_elem, _ = g.types[node.input[0]]
    exp_elem, _ = g.types[node.input[1]]
    base_float = helper.tensor_dtype_to_np_dtype(base_elem).kind == "f"
    exp_float = helper.tensor_dtype_to_np_dtype(exp_elem).kind == "f"
    if base_float and exp_elem == base_elem:
        return None
    if base_float:
        exp = g.name("exp")
        return [
            helper.make_node("Cast", [node.input[1]], [exp], to=base_elem),
            helper.make_node("Pow", [node.input[0], exp], [node.output[0]]),
        ]
    wide_base, wide_exp, raised = g.name("base"), g.name("exp"), g.name("pow")
    nodes = [
        helper.make_node("Cast", [node.input[0]], [wide_base], to=TensorProto.DOUBLE),
        helper.make_node("Cast", [node.input[1]], [wide_exp], to=TensorProto.DOUBLE),
        helper.make_node("Pow", [wide_base, wide_exp], [raised]),
    ]
    if not exp_float:
        rounded = g.name("round")
        nodes.append(helper.make_node("Round", [raised], [rounded]))
        raised = rounded
    nodes.append(helper.make_node("Cast", [raised], [node.output[0]], to=base_elem))
    return nodes


def _dropout(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Dropout at inference -> its input unchanged, and a mask (if asked for) of all true: TVM's
    converter gives the mask as float ones. training_mode=1 draws random masks: refused."""
    training = g.constant_input(node, 2)
    if training is None or (training.size and bool(training.reshape(-1)[0])):
        raise UnsupportedModelError(
            f"Dropout node '{node.name}': training_mode must be a constant false (inference)"
        )
    nodes = [helper.make_node("Identity", [node.input[0]], [node.output[0]])]
    if len(node.output) > 1 and node.output[1]:
        _, shape = g.types[node.output[1]]
        true = g.const("true", np.array(True))
        dims = g.const("mask_shape", np.array(shape, np.int64))
        nodes.append(helper.make_node("Expand", [true, dims], [node.output[1]]))
    return nodes


_REWRITES = {
    "LayerNormalization": _layer_norm,
    "Pow": _pow,
    "LSTM": recurrent,
    "GRU": recurrent,
    "RNN": recurrent,
    "TopK": _topk,
    "Dropout": _dropout,
    "Split": _split_empty,
    "ReduceMax": _reduce_extreme,
    "ReduceMin": _reduce_extreme,
    "QuantizeLinear": _quantize_blocked,
    "DequantizeLinear": _dequantize_blocked,
    "Resize": _resize,
    "ConvTranspose": _conv_transpose,
    "ConvInteger": _conv_integer_node,
    "QLinearConv": _qlinear_conv,
    "QLinearMatMul": _qlinear_matmul,
}
REWRITTEN_OPS = frozenset(_REWRITES)
