"""Recover the integer graph from a QDQ ONNX model.

A QDQ model (onnxruntime's quantize_static, PyTorch, edgecomp's own quantize pass) says "this op
runs on quantized tensors" as DequantizeLinear -> op -> QuantizeLinear. The extractor walks the
graph once, and hands each op node to the handler its op module registered (quant/ops/), which
computes the op's integer constants (int8 weights, int32 biases with the input zero point folded
in, fixed-point multipliers) at compile time and emits one typed IntOp. The model-edge quantize and
dequantize, and Relu/Clip that become a clamp, are handled here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.fixedpoint import multiplier_bits, qrange, quantize_multipliers
from edgecomp.quant.ir import IntGraph, IntOp, QTensor

INT4_DTYPES = ("int4", "uint4")  # numpy_helper.to_array's dtypes (ml_dtypes) for ONNX INT4 / UINT4

# ONNX op type -> handler(extractor, node), registered by the op modules (quant/ops/).
HANDLERS: dict[str, Callable[[Extractor, onnx.NodeProto], None]] = {}


def handles(*op_types: str):
    """Decorator: the function builds the integer op of these ONNX op types."""

    def deco(fn):
        for t in op_types:
            HANDLERS[t] = fn
        return fn

    return deco


def is_quantized(model: onnx.ModelProto) -> bool:
    """A QDQ model, compiled on the integer path: float I/O, quantized by QuantizeLinear /
    DequantizeLinear pairs. A model whose own inputs or outputs are integers (a lone QuantizeLinear,
    QLinearConv...) is an integer program, compiled as TVM imports it."""
    inits = {i.name for i in model.graph.initializer}
    io = [v for v in model.graph.input if v.name not in inits] + list(model.graph.output)
    if any(n.op_type in QOPERATOR_OPS for n in model.graph.node):
        return False  # onnxruntime's QOperator format: integer ops between Q and DQ, as TVM imports them
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node) and all(
        v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io
    )


# The ops of onnxruntime's QOperator format (quantize_static(quant_format=QOperator)) in the ONNX
# domain: each is its own integer program (legalized to integer Conv/MatMul with requantization).
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")


def extract_int_graph(model: onnx.ModelProto) -> IntGraph:
    """Turn a shape-inferred QDQ model (constants folded) into an IntGraph."""
    import edgecomp.quant.ops  # noqa: F401  (registers the handlers)

    return Extractor(uint8_as_int8(model)).run()


def uint8_as_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same QDQ model with its uint8 quantized tensors as int8: q - 128 with zero point - 128.

    onnxruntime's quantizer makes uint8 activations by default; the integer kernels take int8. The
    shift is exact: QuantizeLinear saturates round(x / s) + zp to [0, 255], and that minus 128 is
    round(x / s) + (zp - 128) saturated to [-128, 127]; DequantizeLinear's (q - zp) * s does not
    change. Rewritten: QuantizeLinear nodes whose uint8 output only DequantizeLinear nodes read
    (their zero point, or a new -128 one when they had none, becomes int8), and the uint8
    constants (weights) that DequantizeLinear nodes read, with their zero points."""
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    u8 = onnx.TensorProto.UINT8

    def uint8_q(n: onnx.NodeProto) -> bool:
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        out_type = next((a.i for a in n.attribute if a.name == "output_dtype"), 0)
        is_u8 = zp.data_type == u8 if zp is not None else out_type in (0, u8)
        readers = consumers.get(n.output[0], [])
        return (is_u8 and n.output[0] not in outputs and bool(readers)
                and all(r.op_type == "DequantizeLinear" and r.input[0] == n.output[0] for r in readers))  # fmt: skip

    qs = [n for n in g.node if n.op_type == "QuantizeLinear" and uint8_q(n)]
    weights = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in consts
               and consts[n.input[0]].data_type == u8]  # fmt: skip
    if not qs and not weights:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    shifted: dict[str, str] = {}  # uint8 constant -> its int8 copy

    def int8_const(name: str | None) -> str:
        if name is None:  # an omitted zero point: uint8 0
            name, value = "", np.zeros((), np.uint8)
        else:
            value = numpy_helper.to_array(consts[name])
        if name not in shifted:
            new = f"{name or 'zero_point'}__int8_{len(shifted)}"
            arr = (value.astype(np.int16) - 128).astype(np.int8)
            g.initializer.append(numpy_helper.from_array(arr, new))
            shifted[name] = new
        return shifted[name]

    q_names = {n.output[0] for n in qs}
    w_names = {n.input[0] for n in weights}
    for n in g.node:
        zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if n.op_type == "QuantizeLinear" and n.output[0] in q_names:
            _set_zero_point(n, int8_const(zp))
            for a in n.attribute:
                if a.name == "output_dtype":
                    a.i = onnx.TensorProto.INT8
        elif n.op_type == "DequantizeLinear" and (n.input[0] in q_names or n.input[0] in w_names):
            if n.input[0] in w_names:
                n.input[0] = int8_const(n.input[0])
            _set_zero_point(n, int8_const(zp))
    # The types of the rewritten tensors changed: inference says them again.
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def _set_zero_point(node: onnx.NodeProto, name: str) -> None:
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name


class Extractor:
    """The walk, and the helpers op handlers use to read a QDQ pattern."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from edgecomp.frontend.load import int4_initializers

        self.graph = model.graph
        self.int4 = int4_initializers(model)  # INT4 constants the front end holds as int8
        self.consts = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.shapes = {}
        for vi in list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output):
            self.shapes[vi.name] = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        for name, value in self.consts.items():
            self.shapes[name] = value.shape
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in self.graph.output}
        self.tensors: dict[str, QTensor] = {}
        self.ops: list[IntOp] = []
        self.alias: dict[str, str] = {}  # Q output -> int tensor that already holds it

    # -- helpers for handlers ----------------------------------------------------------------
    def const(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        if name not in self.consts:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}): '{name}' must be a constant")
        return self.consts[name]

    def qparams(self, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, int]:
        """(scale, zero point, axis) of a QuantizeLinear / DequantizeLinear node."""
        scale = self.const(node.input[1], node).astype(np.float64)
        if len(node.input) > 2 and node.input[2]:
            zp = self.const(node.input[2], node)
        else:
            zp = np.zeros((), np.uint8 if node.op_type == "QuantizeLinear" else np.int8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        return scale, zp, axis

    def act_in(self, name: str, node: onnx.NodeProto) -> QTensor:
        """The int tensor behind a float input `name` that comes from DequantizeLinear."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in self.consts:
            raise UnsupportedModelError(
                f"node '{node.name}' ({node.op_type}) reads '{name}' in float: edgecomp compiles a quantized "
                "model only where every op sits between DequantizeLinear and QuantizeLinear"
            )
        src = self.alias.get(dq.input[0], dq.input[0])
        if src not in self.tensors:
            raise UnsupportedModelError(
                f"node '{dq.name}': its input '{dq.input[0]}' is not a quantized tensor"
            )
        scale, zp, _ = self.qparams(dq)
        t = self.tensors[src]
        if (
            scale.size != 1
            or abs(float(scale.reshape(-1)[0]) - t.scale) > 1e-12 * t.scale
            or int(zp) != t.zero_point
        ):
            raise UnsupportedModelError(
                f"node '{dq.name}' dequantizes '{src}' with other parameters than it was quantized with"
            )
        return t

    def is_const(self, name: str) -> bool:
        """A constant: an initializer, or one read through its DequantizeLinear."""
        if name in self.consts:
            return True
        dq = self.producer.get(name)
        return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in self.consts

    def real_const(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        """A float constant, or the real values of a quantized one (through its DequantizeLinear)."""
        if name in self.consts:
            return self.consts[name].astype(np.float64)
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.consts:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}): '{name}' must be a constant")
        q = self.consts[dq.input[0]].astype(np.float64)
        scale, zp, axis = self.qparams(dq)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis % q.ndim] = -1
        return (q - zp.astype(np.float64).reshape(shape)) * scale.reshape(shape)

    def weight(self, name: str, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, int]:
        """(int values, per-channel scale, axis) of a constant that goes through DequantizeLinear."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.consts:
            raise UnsupportedModelError(
                f"node '{node.name}' ({node.op_type}): weight '{name}' is not a quantized constant"
            )
        scale, zp, axis = self.qparams(dq)
        if np.any(zp.astype(np.int64) != 0):
            raise UnsupportedModelError(
                f"node '{node.name}': asymmetric weights (zero point != 0) are not supported"
            )
        value = self.consts[dq.input[0]]
        if value.dtype.name in INT4_DTYPES:  # ONNX INT4 (opset 21, or com.microsoft's): int8 values
            value = value.astype(np.int8)
        return value, scale.reshape(-1), axis

    def weight_bits(self, name: str) -> int:
        """4 when the constant behind `name` (through its DequantizeLinear) is an int4 tensor, else 8."""
        dq = self.producer.get(name)
        if dq is None or dq.input[0] not in self.consts:
            return 8
        value = self.consts[dq.input[0]]
        return 4 if value.dtype.name == "int4" or (dq.input[0] in self.int4 and value.dtype == np.int8) else 8

    def act_range(self, act: onnx.NodeProto) -> tuple[float, float]:
        """The float range a Relu or Clip node lets through (Clip's bounds constant)."""
        if act.op_type == "Relu":
            return 0.0, np.inf
        lo = float(self.const(act.input[1], act)) if len(act.input) > 1 and act.input[1] else -np.inf
        hi = float(self.const(act.input[2], act)) if len(act.input) > 2 and act.input[2] else np.inf
        return lo, hi

    def out(self, node: onnx.NodeProto) -> tuple[QTensor, tuple[int, int]]:
        """The int tensor an op writes (the QuantizeLinear that consumes its float output, through an
        optional Relu/Clip) and the clamp [lo, hi] on its grid that the Relu/Clip and type leave."""
        name = node.output[0]
        lo_f, hi_f = -np.inf, np.inf
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
            act = users[0]
            lo_f, hi_f = self.act_range(act)
            name = act.output[0]
            users = self.consumers.get(name, [])
        qs = [u for u in users if u.op_type == "QuantizeLinear"]
        if not qs or len(qs) != len(users):
            raise UnsupportedModelError(
                f"node '{node.name}' ({node.op_type}): its output is used in float; edgecomp needs it quantized "
                "(QuantizeLinear) to compile an integer kernel"
            )
        q = qs[0]
        scale, zp, _ = self.qparams(q)
        t = QTensor(q.output[0], self.shape(q.output[0]), self._act_dtype(zp, q), self._scale(scale, q),
                    int(zp), name)  # fmt: skip
        self.tensors[t.name] = t
        for other in qs[1:]:
            s2, z2, _ = self.qparams(other)
            if float(s2.reshape(-1)[0]) != t.scale or int(z2) != t.zero_point:
                raise UnsupportedModelError(f"'{name}' is quantized twice with different parameters")
            self.alias[other.output[0]] = t.name
        return t, self.clamp_range(t, lo_f, hi_f)

    @staticmethod
    def clamp_range(t: QTensor, lo_f: float, hi_f: float) -> tuple[int, int]:
        """The integer range of `t` that the float range [lo_f, hi_f] keeps."""
        qmin, qmax = qrange(t.dtype)
        lo = qmin if lo_f == -np.inf else max(qmin, int(np.round(lo_f / t.scale)) + t.zero_point)
        hi = qmax if hi_f == np.inf else min(qmax, int(np.round(hi_f / t.scale)) + t.zero_point)
        return lo, hi

    @staticmethod
    def _act_dtype(zp: np.ndarray, node: onnx.NodeProto) -> str:
        dtype = str(zp.dtype)
        if dtype not in ("int8", "int16"):
            raise UnsupportedModelError(
                f"node '{node.name}': activations of type {dtype} are not supported (int8, int16)"
            )
        return dtype

    def _scale(self, scale: np.ndarray, node: onnx.NodeProto) -> float:
        if scale.size != 1:
            raise UnsupportedModelError(
                f"node '{node.name}': activations need one scale per tensor, not per channel"
            )
        value = float(scale.reshape(-1)[0])
        if not (value > 0 and np.isfinite(value)):
            raise UnsupportedModelError(
                f"node '{node.name}' quantizes '{node.input[0]}' with scale {value}: the tensor was constant "
                "(e.g. all zero) on the calibration data; calibrate with more varied inputs"
            )
        return value

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes or any(d <= 0 for d in self.shapes[name]):
            raise UnsupportedModelError(f"tensor '{name}' has no static shape")
        return tuple(self.shapes[name])

    @staticmethod
    def attrs(node: onnx.NodeProto) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def emit(self, op: IntOp) -> None:
        self.ops.append(op)

    def derived(self, t: QTensor, shape: tuple[int, ...], suffix: str) -> QTensor:
        """A new int tensor on `t`'s grid in another shape: where an op runs in a layout of its
        own (a 1-D convolution as a 2-D one of height 1, a batched MatMul as a 2-D one)."""
        new = QTensor(f"{t.name}__{suffix}", tuple(shape), t.dtype, t.scale, t.zero_point, t.float_name)
        self.tensors[new.name] = new
        return new

    def reshape(self, src: QTensor, dst: QTensor, node: onnx.NodeProto) -> None:
        """Emit the copy of `src` into `dst` (same grid, same number of values, another shape)."""
        from edgecomp.quant.ir import Rescale
        from edgecomp.quant.ops.layout import Reshape

        lo, hi = qrange(dst.dtype)
        same = Rescale(1 << 30, 30, src.zero_point, dst.zero_point)  # the identity
        self.emit(Reshape(inputs=(src.name,), output=dst.name, node=node.name, rescale=same, lo=lo, hi=hi))

    def bias(self, node, idx, x: QTensor, w_scale: np.ndarray, n_out: int) -> np.ndarray:
        """A Conv/Gemm bias in the accumulator's scale (x.scale * w_scale), int64; zeros if absent."""
        if len(node.input) <= idx or not node.input[idx]:
            return np.zeros(n_out, np.int64)
        b, b_scale, _ = self.weight(node.input[idx], node)
        expect = x.scale * w_scale
        if b.dtype != np.int32 or not np.allclose(b_scale, np.broadcast_to(expect, b_scale.shape), rtol=1e-5):
            # A bias quantized differently: requantize it to the accumulator's scale.
            b = np.round(b.astype(np.float64) * b_scale / np.broadcast_to(expect, (n_out,)))
        return np.broadcast_to(b.astype(np.int64).reshape(-1), (n_out,)).copy()

    @staticmethod
    def requant_params(x: QTensor, w_scale: np.ndarray, out: QTensor, w2d: np.ndarray, bias: np.ndarray):
        """Per-channel (multiplier, shift); for int16 inputs (int64 accumulators) the multiplier keeps
        as many bits as the layer's worst-case |accumulator| leaves free in acc * M < 2**62."""
        n_out = w2d.shape[0]
        real = x.scale * np.broadcast_to(w_scale, (n_out,)) / out.scale
        bits = 31
        if x.dtype == "int16":
            bound = (1 << 15) * int(np.abs(w2d.astype(np.int64)).sum(axis=1).max()) + int(np.abs(bias).max())
            bits = multiplier_bits(bound)
        return quantize_multipliers(real, bits)

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> IntGraph:
        from edgecomp.quant.ops.edges import dequantize_edge, quantize_edge
        from edgecomp.quant.ops.lut import unary

        inits = set(self.consts)
        inputs = [i.name for i in self.graph.input if i.name not in inits]
        for name in inputs:
            self.tensors[name] = QTensor(name, self.shape(name), "float32")
        for node in self.graph.node:
            if node.op_type == "QuantizeLinear":
                quantize_edge(self, node)
            elif node.op_type == "DequantizeLinear":
                if node.output[0] in self.graph_outputs:
                    dequantize_edge(self, node)
            elif node.op_type in ("Relu", "Clip"):
                # Fused ones became their producer's clamp; one on a float model input becomes the
                # clamp of that input's quantization (see quantize_edge); one that makes a model
                # output in float becomes a clamp before the dequantization.
                if node.output[0] in self.graph_outputs:
                    dequantize_edge(self, self.producer[node.input[0]], node)
                elif not self._is_fused_activation(node) and not self.on_float_input(node):
                    unary(self, node)
            else:
                handler = HANDLERS.get(node.op_type)
                if handler is None:
                    raise UnsupportedModelError(
                        f"no integer kernel for {node.op_type} (node '{node.name}'); compile the model in float "
                        "or leave this op unquantized"
                    )
                handler(self, node)
        outputs = [o.name for o in self.graph.output]
        for name in outputs:
            if name not in self.tensors or self.tensors[name].dtype != "float32":
                raise UnsupportedModelError(f"model output '{name}' must come from a DequantizeLinear")
        return IntGraph(self.tensors, tuple(self.ops), tuple(inputs), tuple(outputs))

    def _is_fused_activation(self, node: onnx.NodeProto) -> bool:
        prod = self.producer.get(node.input[0])
        return prod is not None and prod.op_type not in ("DequantizeLinear", "QuantizeLinear") and \
            len(self.consumers.get(node.input[0], [])) == 1  # fmt: skip

    def on_float_input(self, node: onnx.NodeProto) -> bool:
        src = self.tensors.get(node.input[0])
        return src is not None and src.dtype == "float32"
