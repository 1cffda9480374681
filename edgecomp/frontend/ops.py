"""Which ONNX operators edgecomp compiles, and the check that names every node it cannot."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.frontend.op_table import COMPILED_OPS

# Operators whose output shapes depend on data, or that need sequences/optionals: they cannot be
# compiled to a static call sequence with a planned arena, whatever TVM's importer accepts.
DATA_DEPENDENT_OPS = frozenset(
    {
        "NonZero", "Unique", "NonMaxSuppression", "AllClassNMS", "Compress", "Range",
        "ConstantOfShape", "Loop", "If", "Scan", "Optional", "OptionalGetElement", "OptionalHasElement",
        "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
        "SequenceLength", "SplitToSequence", "ConcatFromSequence", "RandomNormal", "RandomUniform",
        "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    }
)  # fmt: skip


@dataclass(frozen=True)
class OpSupport:
    """What edgecomp compiles of one op: element types, the attribute/input limits, and how that
    was measured: "conformance" (the ONNX node tests, bench/conformance.py) or "op tests"
    (models from exporters and onnx.helper against onnxruntime, tests/test_ops_wild.py and
    tests/test_recurrent.py)."""

    dtypes: str
    limits: str = ""
    tested: str = "conformance"


_F = "float32"
_ALL = "float32, 8-64-bit ints"
_Q8 = "; int8/int16 on the QDQ path"  # added by ops_table for ops with an integer kernel (quant/ops/)
# The ops measured against the ONNX conformance suite (bench/conformance.py, docs/conformance.md).
# Limits that are checked name the check; others state what is compiled.
SUPPORT: dict[str, OpSupport] = {
    "Conv": OpSupport(_F, "1-D/2-D; group (depthwise, grouped), pads, strides, dilations, auto_pad; constant weights on the QDQ path"),
    "ConvTranspose": OpSupport(_F, "2-D; pads, strides, dilations, group, output_padding, output_shape, auto_pad"),
    "Gemm": OpSupport(_F, "alpha, beta, transA, transB; bias broadcast"),
    "MatMul": OpSupport(_F, "N-D with broadcast batch dimensions"),
    "Relu": OpSupport(_F, "on the QDQ path fused into the producer's clamp"),
    "LeakyRelu": OpSupport(_F, "int8: 256-entry table"),
    "PRelu": OpSupport(_F, "slope broadcast; integer: per-channel or scalar slope"),
    "Clip": OpSupport(_ALL, "min/max constant on the QDQ path"),
    "Sigmoid": OpSupport(_F, "int8: 256-entry table"),
    "HardSigmoid": OpSupport(_F, "int8: 256-entry table"),
    "HardSwish": OpSupport(_F, "int8: 256-entry table"),
    "Tanh": OpSupport(_F, "int8: 256-entry table"),
    "Softmax": OpSupport(_F, "any axis (opset 13 semantics; older opsets converted)"),
    "MaxPool": OpSupport(_F + ", uint8, int8", "pads, strides, dilations, ceil_mode, auto_pad; not the Indices output (checked)"),
    "AveragePool": OpSupport(_F, "pads, strides, dilations, ceil_mode, count_include_pad, auto_pad"),
    "GlobalAveragePool": OpSupport(_F),
    "GlobalMaxPool": OpSupport(_F),
    "Add": OpSupport(_ALL, "multidirectional broadcast"),
    "Sub": OpSupport(_ALL, "multidirectional broadcast"),
    "Mul": OpSupport(_ALL, "multidirectional broadcast"),
    "Div": OpSupport(_ALL, "multidirectional broadcast; integer division truncates, as ONNX"),
    "Concat": OpSupport(_ALL, "any axis"),
    "Split": OpSupport(_ALL, "split sizes constant (input or attribute), num_outputs, empty parts"),
    "Slice": OpSupport(_ALL, "starts/ends/axes/steps constant; negative steps; empty results"),
    "Pad": OpSupport(_ALL, "constant, reflect, edge, wrap; pads constant; axes"),
    "Reshape": OpSupport(_ALL, "shape constant; allowzero"),
    "Flatten": OpSupport(_ALL),
    "Transpose": OpSupport(_ALL),
    "Squeeze": OpSupport(_ALL, "axes constant"),
    "Unsqueeze": OpSupport(_ALL, "axes constant"),
    "ReduceMean": OpSupport(_F, "axes constant; keepdims, noop_with_empty_axes"),
    "ReduceMax": OpSupport(_ALL + ", bool", "axes constant; keepdims; empty reductions give -inf / the type's minimum"),
    "Resize": OpSupport(_F + "; nearest for ints", "every mode, coordinate_transformation_mode, nearest_mode, axes, keep_aspect_ratio_policy, exclude_outside, antialias, extrapolation; roi/scales/sizes constant (checked)"),
    "BatchNormalization": OpSupport(_F, "inference mode; folded into the preceding Conv when it has one; not training_mode=1 (checked)"),
    "QuantizeLinear": OpSupport("float32 -> int8, uint8, int16, uint16, int4, uint4, int2, uint2", "per-tensor, per-axis, blocked; 4- and 2-bit values held one per byte; not float8/float4 (checked)"),
    "DequantizeLinear": OpSupport("int8, uint8, int16, uint16, int32, int4, uint4, int2, uint2 -> float32", "per-tensor, per-axis, blocked; not float8/float4 (checked)"),
    "QLinearConv": OpSupport("int8, uint8", "scales and zero points constant (per-tensor or per-channel); int32 bias; float requantization"),
    "QLinearMatMul": OpSupport("int8, uint8", "scales and zero points constant; float16 or float32 scales"),
    "ConvInteger": OpSupport("int8, uint8 -> int32", "zero points constant"),
    "MatMulInteger": OpSupport("int8, uint8 -> int32", "zero points constant"),
    # Measured by edgecomp's op tests (tests/test_ops_wild.py, tests/test_recurrent.py).
    "LSTM": OpSupport(_F, "unrolled over the static sequence (lower/recurrent.py); forward, reverse, bidirectional; layout 0 and 1; Y, Y_h, Y_c; initial_h/initial_c (the one-step streaming form: state in, state out); peepholes; clip; W, R, B, P constant (checked); sequence_lens absent or constant full length (checked); activations Sigmoid/Tanh/Relu without alpha/beta, input_forget=0 (checked); integer (quant/ops/lstm.py, --quantize int8): forward, reverse, bidirectional; layout 0, batch 1, default activations, no peepholes, clip or sequence_lens; int8 x and h, int16 cell state", "op tests"),
    "GRU": OpSupport(_F, "as LSTM in float; linear_before_reset 0 and 1; integer (quant/ops/gru.py, --quantize int8): forward, reverse, bidirectional; layout 0, batch 1, Sigmoid/Tanh, no clip or sequence_lens; int8 x and h", "op tests"),
    "RNN": OpSupport(_F, "as LSTM in float", "op tests"),
    "TopK": OpSupport(_ALL, "K constant (checked); any axis, largest, sorted (sorted=0 gives the sorted order); K selection passes over the axis, equal values lower index first", "op tests"),
    "ArgMax": OpSupport(_F + " -> int64", "axis, keepdims, select_last_index", "op tests"),
    "Dropout": OpSupport(_ALL, "inference: the input, and a mask of all true; training_mode a constant false (checked)", "op tests"),
    "Identity": OpSupport(_ALL, "", "op tests"),
    "LayerNormalization": OpSupport(_F, "axis; Mean and InvStdDev outputs; stash_type float (checked)", "op tests"),
    "LRN": OpSupport(_F, "", "op tests"),
    "Gelu": OpSupport(_F, "approximate none and tanh", "op tests"),
    "Erf": OpSupport(_F, "", "op tests"),
    "Einsum": OpSupport(_F, "measured for matmul and batched-matmul equations (ij,jk->ik; bij,bjk->bik; bhqd,bhkd->bhqk)", "op tests"),
    "Expand": OpSupport(_ALL, "shape constant", "op tests"),
    "Tile": OpSupport(_ALL, "repeats constant", "op tests"),
    "Gather": OpSupport(_ALL, "constant or computed data and indices; negative indices", "op tests"),
    "Where": OpSupport(_ALL, "multidirectional broadcast", "op tests"),
    "ReduceSum": OpSupport(_F, "axes constant; keepdims, noop_with_empty_axes", "op tests"),
    "ReduceL2": OpSupport(_F, "axes constant; keepdims", "op tests"),
    "Sqrt": OpSupport(_F, "", "op tests"),
    "Exp": OpSupport(_F, "", "op tests"),
    "Log": OpSupport(_F, "", "op tests"),
    "Pow": OpSupport(_F + ", integer bases", "float exponent or integer exponent (cast); an integer base is raised in float64 (integer exponents rounded: exact to 2^53)", "op tests"),
    "Sum": OpSupport(_F, "any number of inputs, broadcast", "op tests"),
    "Mean": OpSupport(_F, "any number of inputs, broadcast", "op tests"),
    "Max": OpSupport(_ALL, "any number of inputs, broadcast", "op tests"),
    "Min": OpSupport(_ALL, "any number of inputs, broadcast", "op tests"),
}  # fmt: skip


def supported_ops() -> frozenset[str]:
    """ONNX (ai.onnx domain) op types that the TVM importer converts (or edgecomp rewrites first)
    and that are static."""
    return COMPILED_OPS - DATA_DEPENDENT_OPS


def _limit(node: onnx.NodeProto, types: dict[str, int]) -> str | None:
    """Why `node` is outside what its op's compiler supports, if it is."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "BatchNormalization" and "training_mode" in attrs and attrs["training_mode"].i:
        return "training_mode=1 (batch statistics): export the model in inference mode"
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        return "its Indices output (argmax) is not compiled"
    if node.op_type in ("LSTM", "GRU", "RNN"):
        return recurrent_limit(node)
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        tensors = [node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]]
        for name in tensors:
            if types.get(name) in _SMALL_FLOATS:
                return f"{onnx.TensorProto.DataType.Name(types[name])} (8- and 4-bit floats) is not compiled"
    return None


RECURRENT_ACTIVATIONS = ("Sigmoid", "Tanh", "Relu")
_ACTIVATIONS_PER_DIRECTION = {"LSTM": 3, "GRU": 2, "RNN": 1}


def recurrent_limit(node: onnx.NodeProto) -> str | None:
    """Why an LSTM/GRU/RNN node is outside what the unrolled rewrite (lower/recurrent.py)
    compiles, from its attributes: activations other than Sigmoid/Tanh/Relu or with parameters,
    input_forget=1 (LSTM's coupled gates)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    for act in acts:
        if act not in RECURRENT_ACTIVATIONS:
            return f"activation {act} is not compiled (only {', '.join(RECURRENT_ACTIVATIONS)})"
    directions = 2 if attrs.get("direction", b"forward") == b"bidirectional" else 1
    if acts and len(acts) != directions * _ACTIVATIONS_PER_DIRECTION[node.op_type]:
        return f"{len(acts)} activations given, expected {directions * _ACTIVATIONS_PER_DIRECTION[node.op_type]}"
    if attrs.get("activation_alpha") or attrs.get("activation_beta"):
        return "activation_alpha/activation_beta (parametrised activations) are not compiled"
    if attrs.get("input_forget", 0):
        return "input_forget=1 (coupled input and forget gates) is not compiled"
    return None


_SMALL_FLOATS = {
    onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ, onnx.TensorProto.FLOAT4E2M1,
    getattr(onnx.TensorProto, "FLOAT8E8M0", -1),
}  # fmt: skip


def check_ops(model: onnx.ModelProto) -> None:
    """Raise UnsupportedModelError listing every node whose op edgecomp cannot compile: the op,
    the node (named by its first output when it has no name) and the way out."""
    ok = supported_ops()
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    bad: list[str] = []
    for i, node in enumerate(g.node):
        name = node.name or next((o for o in node.output if o), f"#{i}")
        if node.domain == "com.microsoft" and node.op_type.startswith("QLinear"):
            bad.append(f"{node.domain}.{node.op_type} (node '{name}'): an onnxruntime contrib op of its QOperator "
                       "format; quantize in QDQ format (quantize_static(..., quant_format=QuantFormat.QDQ)) or "
                       "compile the float model with --quantize int8")  # fmt: skip
        elif node.domain not in ("", "ai.onnx"):
            bad.append(f"{node.domain}.{node.op_type} (node '{name}'): only the ONNX domain (ai.onnx) is compiled")
        elif node.op_type in DATA_DEPENDENT_OPS:
            bad.append(f"{node.op_type} (node '{name}'): {_data_dependent(node, model)}")
        elif node.op_type not in ok:
            bad.append(f"{node.op_type} (node '{name}'): not among the ops edgecomp compiles (`edgecomp ops`)")
        elif (why := _limit(node, types)) is not None:
            bad.append(f"{node.op_type} (node '{name}'): {why}")
    if bad:
        shown = "; ".join(bad[:8]) + (f"; and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise UnsupportedModelError(f"unsupported operator: {shown}")


def _data_dependent(node: onnx.NodeProto, model: onnx.ModelProto) -> str:
    """Why a data-dependent op is still there after folding, and the options that could fold it."""
    inputs = _inputs_behind(model, [i for i in node.input if i][:1] if node.op_type == "If" else node.input)
    what = "its condition" if node.op_type == "If" else "its output shape"
    if not inputs:
        return f"{what} depends on data computed at run time"
    return (f"{what} depends on input(s) {inputs} at run time; if those are configuration values, fix them "
            f"with --freeze NAME=VALUE (and dynamic sizes with --input-shape)")  # fmt: skip


def _inputs_behind(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """The model inputs that the tensors `names` are computed from."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input} - inits
    found, seen, todo = [], set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs:
            found.append(name)
        elif name in producer:
            todo += [i for i in producer[name].input if i]
    return sorted(found)


def integer_ops() -> frozenset[str]:
    """ONNX op types the QDQ (integer) path compiles: those an op module of quant/ops/ handles,
    and Relu/Clip (fused clamps or tables). No TVM is imported."""
    from edgecomp.quant.extract import HANDLERS
    from edgecomp.quant.ops import conv  # noqa: F401  (registers every op module's handlers)

    return frozenset(HANDLERS) | {"Relu", "Clip"}


def ops_table() -> list[dict]:
    """Every op edgecomp compiles, with its element types and limits: the measured ops with what
    SUPPORT states, the rest as TVM's importer converts them (float32); ops with an integer
    kernel say so."""
    rows = []
    integer = integer_ops()
    for op in sorted(supported_ops()):
        s = SUPPORT.get(op)
        dtypes = s.dtypes if s else "as TVM's importer converts it"
        rows.append({
            "op": op,
            "conformance_tested": s is not None and s.tested == "conformance",
            "tested": s.tested if s else "",
            "dtypes": dtypes + (_Q8 if op in integer else ""),
            "limits": s.limits if s else "",
        })  # fmt: skip
    return rows


def ops_markdown() -> str:
    """docs/operators.md: the table of ops_table()."""
    rows = ops_table()
    lines = [
        "# Supported ONNX operators",
        "",
        "Generated by `edgecomp ops --markdown` from edgecomp/frontend/ops.py. Ops marked *conformance*",
        "are measured against the ONNX node conformance tests (docs/conformance.md), ops marked *op tests*",
        "against onnxruntime on small models built with onnx.helper or exported from PyTorch",
        "(tests/test_ops_wild.py, tests/test_recurrent.py); the others compile through TVM's ONNX importer",
        "in float32 and are covered only by the models that use them. Ops whose output shape depends on",
        "the data (NonZero, Unique, Loop...) are refused by name, as is TopK with a K that is not constant.",
        "",
        "| op | tested | element types | limits |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['op']} | {r['tested']} | {r['dtypes']} | {r['limits']} |")
    return "\n".join(lines) + "\n"
