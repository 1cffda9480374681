"""Recover the integer model from a QDQ ONNX graph.

A QDQ model (onnxruntime's quantize_static, PyTorch, edgecomp's own quantize pass) says "this op
runs on quantized tensors" as DequantizeLinear -> op -> QuantizeLinear. This module turns every such
pattern into one integer op whose constants (int8 weights, int32 biases with the input zero point
folded in, fixed-point multipliers) are computed here, at compile time. The result, `IntGraph`, is
what both the TVM lowering (lower/qops.py) and the numpy reference (quant/reference.py) consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.fixedpoint import multiplier_bits, qrange, quantize_multiplier, quantize_multipliers

ADD_LEFT_SHIFT = 20  # headroom for rescaling both addends to a common scale (as TFLite)
SOFTMAX_EXP_BITS = 16  # exp table entries are round(exp(-d * s) * 2**16)
INTERP_STEP = 128  # int16 tables: one entry per 128 input steps (see fixedpoint.interp_table)
RESHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
LUT_OPS = {
    "Relu": lambda x, a: np.maximum(x, 0),
    "Sigmoid": lambda x, a: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, a: np.tanh(x),
    "LeakyRelu": lambda x, a: np.where(x >= 0, x, x * a.get("alpha", 0.01)),
    "HardSigmoid": lambda x, a: np.clip(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),
}


@dataclass(frozen=True)
class QTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "int8", "int16" (quantized) or "float32" (model I/O)
    scale: float = 1.0
    zero_point: int = 0
    float_name: str = ""  # the float tensor it quantizes, for per-layer error reports


@dataclass(frozen=True)
class QOp:
    kind: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict = field(default_factory=dict)
    node: str = ""  # the ONNX node it came from


@dataclass(frozen=True)
class IntGraph:
    tensors: dict[str, QTensor]
    ops: tuple[QOp, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def is_quantized(model: onnx.ModelProto) -> bool:
    """A QDQ model, compiled on the integer path: float I/O, quantized by QuantizeLinear /
    DequantizeLinear pairs. A model whose own inputs or outputs are integers (a lone QuantizeLinear,
    QLinearConv...) is an integer program, compiled as TVM imports it."""
    inits = {i.name for i in model.graph.initializer}
    io = [v for v in model.graph.input if v.name not in inits] + list(model.graph.output)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node) and all(
        v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io
    )


def extract_int_graph(model: onnx.ModelProto) -> IntGraph:
    """Turn a shape-inferred QDQ model (constants folded) into an IntGraph."""
    return _Extractor(model).run()


class _Extractor:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
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
        self.tensors: dict[str, QTensor] = {}
        self.ops: list[QOp] = []
        self.alias: dict[str, str] = {}  # Q output -> int tensor that already holds it

    # -- helpers -------------------------------------------------------------------------------
    def _const(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        if name not in self.consts:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}): '{name}' must be a constant")
        return self.consts[name]

    def _qparams(self, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, int]:
        scale = self._const(node.input[1], node).astype(np.float64)
        if len(node.input) > 2 and node.input[2]:
            zp = self._const(node.input[2], node)
        else:
            zp = np.zeros((), np.uint8 if node.op_type == "QuantizeLinear" else np.int8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        return scale, zp, axis

    def _act_in(self, name: str, node: onnx.NodeProto) -> QTensor:
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
        scale, zp, _ = self._qparams(dq)
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

    def _real_const(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        """A float constant, or the real values of a quantized one (through its DequantizeLinear)."""
        if name in self.consts:
            return self.consts[name].astype(np.float64)
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.consts:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}): '{name}' must be a constant")
        q = self.consts[dq.input[0]].astype(np.float64)
        scale, zp, axis = self._qparams(dq)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis % q.ndim] = -1
        return (q - zp.astype(np.float64).reshape(shape)) * scale.reshape(shape)

    def _weight(self, name: str, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, int]:
        """(int values, per-channel scale, axis) of a constant that goes through DequantizeLinear."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.consts:
            raise UnsupportedModelError(
                f"node '{node.name}' ({node.op_type}): weight '{name}' is not a quantized constant"
            )
        scale, zp, axis = self._qparams(dq)
        if np.any(zp != 0):
            raise UnsupportedModelError(
                f"node '{node.name}': asymmetric weights (zero point != 0) are not supported"
            )
        return self.consts[dq.input[0]], scale.reshape(-1), axis

    def _out(self, node: onnx.NodeProto) -> tuple[QTensor, tuple[int, int]]:
        """The int tensor an op writes: the QuantizeLinear that consumes its float output, through an
        optional Relu/Clip whose range becomes the output clamp."""
        name = node.output[0]
        lo_f, hi_f = -np.inf, np.inf
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
            act = users[0]
            if act.op_type == "Relu":
                lo_f = 0.0
            else:
                lo_f = (
                    float(self._const(act.input[1], act)) if len(act.input) > 1 and act.input[1] else -np.inf
                )
                hi_f = (
                    float(self._const(act.input[2], act)) if len(act.input) > 2 and act.input[2] else np.inf
                )
            name = act.output[0]
            users = self.consumers.get(name, [])
        qs = [u for u in users if u.op_type == "QuantizeLinear"]
        if not qs or len(qs) != len(users):
            raise UnsupportedModelError(
                f"node '{node.name}' ({node.op_type}): its output is used in float; edgecomp needs it quantized "
                "(QuantizeLinear) to compile an integer kernel"
            )
        q = qs[0]
        scale, zp, _ = self._qparams(q)
        dtype = str(zp.dtype)
        if dtype not in ("int8", "int16"):
            raise UnsupportedModelError(
                f"node '{q.name}': activations of type {dtype} are not supported (int8, int16)"
            )
        t = QTensor(q.output[0], self._shape(q.output[0]), dtype, self._scale(scale, q), int(zp), name)
        self.tensors[t.name] = t
        for other in qs[1:]:
            s2, z2, _ = self._qparams(other)
            if float(s2.reshape(-1)[0]) != t.scale or int(z2) != t.zero_point:
                raise UnsupportedModelError(f"'{name}' is quantized twice with different parameters")
            self.alias[other.output[0]] = t.name
        return t, self._clamp_range(t, lo_f, hi_f)

    def _act_range(self, act: onnx.NodeProto) -> tuple[float, float]:
        """The float range a Relu or Clip node lets through."""
        if act.op_type == "Relu":
            return 0.0, np.inf
        lo = float(self._const(act.input[1], act)) if len(act.input) > 1 and act.input[1] else -np.inf
        hi = float(self._const(act.input[2], act)) if len(act.input) > 2 and act.input[2] else np.inf
        return lo, hi

    @staticmethod
    def _clamp_range(t: QTensor, lo_f: float, hi_f: float) -> tuple[int, int]:
        qmin, qmax = qrange(t.dtype)
        lo = qmin if lo_f == -np.inf else max(qmin, int(np.round(lo_f / t.scale)) + t.zero_point)
        hi = qmax if hi_f == np.inf else min(qmax, int(np.round(hi_f / t.scale)) + t.zero_point)
        return lo, hi

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

    def _shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes or any(d <= 0 for d in self.shapes[name]):
            raise UnsupportedModelError(f"tensor '{name}' has no static shape")
        return tuple(self.shapes[name])

    def _emit(self, kind, inputs, out: QTensor, node, **attrs) -> None:
        self.ops.append(QOp(kind, tuple(inputs), out.name, attrs, node.name))

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> IntGraph:
        inits = set(self.consts)
        inputs = [i.name for i in self.graph.input if i.name not in inits]
        for name in inputs:
            self.tensors[name] = QTensor(name, self._shape(name), "float32")
        for node in self.graph.node:
            if node.op_type == "QuantizeLinear":
                self._quantize_edge(node)
            elif node.op_type == "DequantizeLinear":
                if node.output[0] in {o.name for o in self.graph.output}:
                    self._dequantize_edge(node)
            elif node.op_type in ("Relu", "Clip"):
                # Fused ones became their producer's clamp; one on a float model input becomes the
                # clamp of that input's quantization (see _quantize_edge); one that makes a model
                # output in float becomes a clamp before the dequantization.
                if node.output[0] in {o.name for o in self.graph.output}:
                    self._dequantize_edge(self.producer[node.input[0]], node)
                elif not self._is_fused_activation(node) and not self._on_float_input(node):
                    self._unary(node)
            else:
                handler = getattr(self, f"_op_{node.op_type}", None)
                if node.op_type in LUT_OPS:
                    handler = self._unary
                if handler is None:
                    raise UnsupportedModelError(
                        f"no integer kernel for {node.op_type} (node '{node.name}'); compile the model in float "
                        "or leave this op unquantized"
                    )
                handler(node)
        outputs = [o.name for o in self.graph.output]
        for name in outputs:
            if name not in self.tensors or self.tensors[name].dtype != "float32":
                raise UnsupportedModelError(f"model output '{name}' must come from a DequantizeLinear")
        return IntGraph(self.tensors, tuple(self.ops), tuple(inputs), tuple(outputs))

    def _is_fused_activation(self, node: onnx.NodeProto) -> bool:
        prod = self.producer.get(node.input[0])
        return prod is not None and prod.op_type not in ("DequantizeLinear", "QuantizeLinear") and \
            len(self.consumers.get(node.input[0], [])) == 1  # fmt: skip

    def _on_float_input(self, node: onnx.NodeProto) -> bool:
        src = self.tensors.get(node.input[0])
        return src is not None and src.dtype == "float32"

    def _quantize_edge(self, node: onnx.NodeProto) -> None:
        src = node.input[0]
        act = self.producer.get(src)
        lo_f, hi_f = -np.inf, np.inf
        if act is not None and act.op_type in ("Relu", "Clip") and self._on_float_input(act):
            lo_f, hi_f = self._act_range(act)
            src = act.input[0]
        if src in self.tensors and self.tensors[src].dtype == "float32":
            scale, zp, _ = self._qparams(node)
            dtype = str(zp.dtype)
            if dtype not in ("int8", "int16"):
                raise UnsupportedModelError(
                    f"node '{node.name}': activations of type {dtype} are not supported"
                )
            t = QTensor(
                node.output[0], self._shape(node.output[0]), dtype, self._scale(scale, node), int(zp), src
            )
            self.tensors[t.name] = t
            lo, hi = self._clamp_range(t, lo_f, hi_f)
            self._emit("quantize", [src], t, node, scale=np.float32(t.scale), zp=t.zero_point, lo=lo, hi=hi)
        # Otherwise this Q ends an op's pattern and was handled with that op.

    def _dequantize_edge(self, node: onnx.NodeProto, act: onnx.NodeProto | None = None) -> None:
        """A float model output: DequantizeLinear, optionally followed by a Relu/Clip (`act`)."""
        if node is None or node.op_type != "DequantizeLinear":
            raise UnsupportedModelError(f"node '{act.name}' ({act.op_type}) computes a model output in float")
        src = self.alias.get(node.input[0], node.input[0])
        if src not in self.tensors:
            raise UnsupportedModelError(
                f"node '{node.name}': output '{node.output[0]}' is not computed in integer"
            )
        t_in = self.tensors[src]
        out = QTensor((act or node).output[0], t_in.shape, "float32")
        self.tensors[out.name] = out
        lo, hi = self._clamp_range(t_in, *(self._act_range(act) if act is not None else (-np.inf, np.inf)))
        self._emit(
            "dequantize", [src], out, node, scale=np.float32(t_in.scale), zp=t_in.zero_point, lo=lo, hi=hi
        )

    # -- compute ops ---------------------------------------------------------------------------
    def _attrs(self, node) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _bias(self, node, idx, x: QTensor, w_scale: np.ndarray, n_out: int) -> np.ndarray:
        if len(node.input) <= idx or not node.input[idx]:
            return np.zeros(n_out, np.int64)
        b, b_scale, _ = self._weight(node.input[idx], node)
        expect = x.scale * w_scale
        if b.dtype != np.int32 or not np.allclose(b_scale, np.broadcast_to(expect, b_scale.shape), rtol=1e-5):
            # A bias quantized differently: requantize it to the accumulator's scale.
            b = np.round(b.astype(np.float64) * b_scale / np.broadcast_to(expect, (n_out,)))
        return np.broadcast_to(b.astype(np.int64).reshape(-1), (n_out,)).copy()

    def _requant_params(
        self, x: QTensor, w_scale: np.ndarray, out: QTensor, w2d: np.ndarray, bias: np.ndarray
    ):
        """Per-channel (multiplier, shift); for int16 inputs (int64 accumulators) the multiplier keeps
        as many bits as the layer's worst-case |accumulator| leaves free in acc * M < 2**62."""
        n_out = w2d.shape[0]
        real = x.scale * np.broadcast_to(w_scale, (n_out,)) / out.scale
        bits = 31
        if x.dtype == "int16":
            bound = (1 << 15) * int(np.abs(w2d.astype(np.int64)).sum(axis=1).max()) + int(np.abs(bias).max())
            bits = multiplier_bits(bound)
        return quantize_multipliers(real, bits)

    def _op_Conv(self, node: onnx.NodeProto) -> None:
        x = self._act_in(node.input[0], node)
        w, w_scale, axis = self._weight(node.input[1], node)
        if w.ndim != 4:
            raise UnsupportedModelError(f"node '{node.name}': only 2-D convolutions have an integer kernel")
        a = self._attrs(node)
        dil = tuple(a.get("dilations", (1, 1)))
        pads = _explicit_pads(a, x.shape[2:], w.shape[2:], tuple(a.get("strides", (1, 1))), dil, node)
        out, (lo, hi) = self._out(node)
        cout = w.shape[0]
        bias = self._bias(node, 2, x, w_scale, cout)
        w64 = w.astype(np.int64)
        bias = bias - x.zero_point * w64.reshape(cout, -1).sum(axis=1)  # the input zero point, folded
        mult, shift = self._requant_params(x, w_scale, out, w64.reshape(cout, -1), bias)
        self._emit("conv", [x.name], out, node, weight=w.astype(np.int8), bias=_acc_bias(bias, x), mult=mult,
                   shift=shift, strides=tuple(a.get("strides", (1, 1))), pads=pads,
                   dilations=dil, groups=int(a.get("group", 1)),
                   pad_value=x.zero_point, out_zp=out.zero_point, lo=lo, hi=hi)  # fmt: skip

    def _dense(self, node, x: QTensor, w: np.ndarray, w_scale, bias_idx: int) -> None:
        """w is [out, in]."""
        out, (lo, hi) = self._out(node)
        n_out = w.shape[0]
        bias = self._bias(node, bias_idx, x, w_scale, n_out)
        bias = bias - x.zero_point * w.astype(np.int64).sum(axis=1)
        mult, shift = self._requant_params(x, w_scale, out, w, bias)
        if len(x.shape) != 2:
            raise UnsupportedModelError(
                f"node '{node.name}': integer Gemm/MatMul needs a 2-D input, got {x.shape}"
            )
        self._emit("dense", [x.name], out, node, weight=w.astype(np.int8), bias=_acc_bias(bias, x), mult=mult,
                   shift=shift, out_zp=out.zero_point, lo=lo, hi=hi)  # fmt: skip

    def _op_Gemm(self, node: onnx.NodeProto) -> None:
        a = self._attrs(node)
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise UnsupportedModelError(f"node '{node.name}': integer Gemm supports transA=0, alpha=beta=1")
        x = self._act_in(node.input[0], node)
        w, w_scale, _ = self._weight(node.input[1], node)
        if not a.get("transB", 0):
            w = w.T
        self._dense(node, x, w, w_scale, 2)

    def _op_MatMul(self, node: onnx.NodeProto) -> None:
        x = self._act_in(node.input[0], node)
        w, w_scale, _ = self._weight(node.input[1], node)
        if w.ndim != 2:
            raise UnsupportedModelError(f"node '{node.name}': integer MatMul needs a 2-D constant weight")
        self._dense(node, x, w.T, w_scale, 99)

    def _rescale_attrs(self, x: QTensor, out: QTensor) -> dict:
        m, s = quantize_multiplier(x.scale / out.scale)
        return {"mult": m, "shift": s, "in_zp": x.zero_point, "out_zp": out.zero_point}

    def _op_Add(self, node: onnx.NodeProto) -> None:
        a_t, b_t = (self._act_in(i, node) for i in node.input[:2])
        if a_t.shape != b_t.shape:
            raise UnsupportedModelError(
                f"node '{node.name}': integer Add needs equal shapes, got {a_t.shape} and {b_t.shape}"
            )
        out, (lo, hi) = self._out(node)
        # int16 values need 17 bits after the zero point: shift less so the int64 products fit.
        left_shift = 15 if "int16" in (a_t.dtype, b_t.dtype) else ADD_LEFT_SHIFT
        twice_max = 2 * max(a_t.scale, b_t.scale)
        ma, sa = quantize_multiplier(a_t.scale / twice_max)
        mb, sb = quantize_multiplier(b_t.scale / twice_max)
        mo, so = quantize_multiplier(twice_max / ((1 << left_shift) * out.scale))
        self._emit("add", [a_t.name, b_t.name], out, node, a_zp=a_t.zero_point, b_zp=b_t.zero_point,
                   a_mult=ma, a_shift=sa, b_mult=mb, b_shift=sb, mult=mo, shift=so, left_shift=left_shift,
                   out_zp=out.zero_point, lo=lo, hi=hi)  # fmt: skip

    def _op_PRelu(self, node: onnx.NodeProto) -> None:
        """PRelu: the input rescaled to the output's scale with one multiplier where it is >= its
        zero point, with the channel's slope folded into a second (signed) multiplier below it."""
        x = self._act_in(node.input[0], node)
        out, (lo, hi) = self._out(node)
        # The slope as ONNX broadcasts it onto x (from the right); it must vary along channels only.
        rest = (1,) * (len(x.shape) - 2)
        try:
            full = np.broadcast_to(self._real_const(node.input[1], node), x.shape)
        except ValueError as exc:
            raise UnsupportedModelError(
                f"node '{node.name}': PRelu slope does not broadcast to {x.shape}"
            ) from exc
        slope = full[(0, slice(None), *(0 for _ in rest))] if len(x.shape) >= 2 else full
        if len(x.shape) < 2 or not np.array_equal(
            np.broadcast_to(slope.reshape((1, -1, *rest)), x.shape), full
        ):
            raise UnsupportedModelError(
                f"node '{node.name}': integer PRelu needs a per-channel or scalar slope"
            )
        mult, shift = quantize_multiplier(x.scale / out.scale)
        neg = [quantize_multiplier(abs(float(s)) * x.scale / out.scale) for s in slope]
        neg_mult = np.array([int(np.sign(s)) * m for s, (m, _) in zip(slope, neg, strict=True)], np.int64)
        neg_shift = np.array([n for _, n in neg], np.int64)
        self._emit("prelu", [x.name], out, node, in_zp=x.zero_point, out_zp=out.zero_point, mult=mult,
                   shift=shift, neg_mult=neg_mult, neg_shift=neg_shift, lo=lo, hi=hi)  # fmt: skip

    def _op_Mul(self, node: onnx.NodeProto) -> None:
        a_t, b_t = (self._act_in(i, node) for i in node.input[:2])
        if a_t.shape != b_t.shape:
            raise UnsupportedModelError(f"node '{node.name}': integer Mul needs equal shapes")
        out, (lo, hi) = self._out(node)
        bound = _span(a_t.dtype) * _span(b_t.dtype)
        m, s = quantize_multiplier(a_t.scale * b_t.scale / out.scale, multiplier_bits(bound))
        self._emit("mul", [a_t.name, b_t.name], out, node, a_zp=a_t.zero_point, b_zp=b_t.zero_point, mult=m,
                   shift=s, out_zp=out.zero_point, lo=lo, hi=hi)  # fmt: skip

    def _pool_attrs(self, node, x: QTensor, global_pool: bool) -> dict:
        if global_pool:
            return {"kernel": tuple(x.shape[2:]), "strides": (1, 1), "pads": (0, 0, 0, 0)}
        a = self._attrs(node)
        if a.get("ceil_mode", 0):
            raise UnsupportedModelError(f"node '{node.name}': ceil_mode is not supported in integer pools")
        if any(d != 1 for d in a.get("dilations", (1, 1))):
            raise UnsupportedModelError(f"node '{node.name}': dilated pooling is not supported")
        kernel, strides = tuple(a["kernel_shape"]), tuple(a.get("strides", (1, 1)))
        pads = _explicit_pads(a, x.shape[2:], kernel, strides, (1, 1), node)
        return {"kernel": kernel, "strides": strides, "pads": pads}

    def _maxpool(self, node, global_pool: bool) -> None:
        x = self._act_in(node.input[0], node)
        out, (lo, hi) = self._out(node)
        attrs = self._pool_attrs(node, x, global_pool)
        self._emit("maxpool", [x.name], out, node, **attrs, **self._rescale_attrs(x, out), lo=lo, hi=hi)

    def _avgpool(self, node, global_pool: bool) -> None:
        x = self._act_in(node.input[0], node)
        out, (lo, hi) = self._out(node)
        attrs = self._pool_attrs(node, x, global_pool)
        # Divisor per output position: the window size, or (count_include_pad=0) the number of
        # window elements inside the input, so the multipliers are a small (OH, OW) table.
        counts = _window_counts(x.shape[2:], attrs, bool(self._attrs(node).get("count_include_pad", 0)))
        bits = multiplier_bits(_span(x.dtype) * int(counts.max()))
        mult, shift = quantize_multipliers(x.scale / (out.scale * counts), bits)
        self._emit("avgpool", [x.name], out, node, **attrs, in_zp=x.zero_point, mult=mult.reshape(counts.shape),
                   shift=shift.reshape(counts.shape), out_zp=out.zero_point, lo=lo, hi=hi)  # fmt: skip

    def _op_MaxPool(self, node):
        self._maxpool(node, False)

    def _op_GlobalMaxPool(self, node):
        self._maxpool(node, True)

    def _op_AveragePool(self, node):
        self._avgpool(node, False)

    def _op_GlobalAveragePool(self, node):
        self._avgpool(node, True)

    def _reshape_like(self, node) -> None:
        x = self._act_in(node.input[0], node)
        out, (lo, hi) = self._out(node)
        self._emit("reshape", [x.name], out, node, **self._rescale_attrs(x, out), lo=lo, hi=hi)

    _op_Reshape = _op_Flatten = _op_Squeeze = _op_Unsqueeze = _reshape_like

    def _op_Transpose(self, node) -> None:
        x = self._act_in(node.input[0], node)
        out, (lo, hi) = self._out(node)
        perm = tuple(self._attrs(node).get("perm", tuple(reversed(range(len(x.shape))))))
        self._emit("transpose", [x.name], out, node, perm=perm, **self._rescale_attrs(x, out), lo=lo, hi=hi)

    def _op_Concat(self, node) -> None:
        ins = [self._act_in(i, node) for i in node.input]
        out, (lo, hi) = self._out(node)
        axis = self._attrs(node)["axis"] % len(out.shape)
        rescales = [self._rescale_attrs(t, out) for t in ins]
        self._emit("concat", [t.name for t in ins], out, node, axis=axis, rescales=rescales, lo=lo, hi=hi)

    def _unary(self, node) -> None:
        x = self._act_in(node.input[0], node)
        out, (lo, hi) = self._out(node)
        if x.dtype != "int8" and node.op_type in ("Relu", "Clip"):
            # int16: a 64K-entry table is too big for flash; rescale, then clamp to the bounds instead.
            lo, hi = self._clip_bounds(node, out, lo, hi)
            self._emit("reshape", [x.name], out, node, **self._rescale_attrs(x, out), lo=lo, hi=hi)
            return
        a = self._attrs(node)
        if x.dtype == "int16":
            # 513 points every INTERP_STEP input steps, linearly interpolated in between (as TFLite's
            # int16 LUTs): 2 KB of flash instead of a 64K-entry table.
            q = np.arange(-32768, 32769, INTERP_STEP, dtype=np.float64)
            real = LUT_OPS[node.op_type]((q - x.zero_point) * x.scale, a)
            table = np.clip(np.rint(real / out.scale) + out.zero_point, lo, hi).astype(np.int32)
            self._emit("lut16", [x.name], out, node, table=table, lo=lo, hi=hi)
            return
        q = np.arange(-128, 128, dtype=np.float64)
        if node.op_type == "Clip":
            lo_f = (
                float(self._const(node.input[1], node)) if len(node.input) > 1 and node.input[1] else -np.inf
            )
            hi_f = (
                float(self._const(node.input[2], node)) if len(node.input) > 2 and node.input[2] else np.inf
            )
            real = np.clip((q - x.zero_point) * x.scale, lo_f, hi_f)
        else:
            real = LUT_OPS[node.op_type]((q - x.zero_point) * x.scale, a)
        table = np.clip(np.rint(real / out.scale) + out.zero_point, lo, hi).astype(np.int64)
        self._emit("lut", [x.name], out, node, table=table.astype(out.dtype))

    def _clip_bounds(self, node, out: QTensor, lo: int, hi: int) -> tuple[int, int]:
        """Integer bounds of Relu/Clip's output range on the output grid, within [lo, hi]."""
        lo_f, hi_f = 0.0, np.inf
        if node.op_type == "Clip":
            lo_f = (
                float(self._const(node.input[1], node)) if len(node.input) > 1 and node.input[1] else -np.inf
            )
            hi_f = (
                float(self._const(node.input[2], node)) if len(node.input) > 2 and node.input[2] else np.inf
            )
        if np.isfinite(lo_f):
            lo = max(lo, int(np.rint(lo_f / out.scale)) + out.zero_point)
        if np.isfinite(hi_f):
            hi = min(hi, int(np.rint(hi_f / out.scale)) + out.zero_point)
        return lo, hi

    def _op_Softmax(self, node) -> None:
        x = self._act_in(node.input[0], node)
        out, (lo, hi) = self._out(node)
        axis = self._attrs(node).get("axis", -1) % len(x.shape)
        if axis != len(x.shape) - 1:
            raise UnsupportedModelError(f"node '{node.name}': integer Softmax supports the last axis only")
        # exp(-d * scale) for d = max - x; int16 inputs sample d every INTERP_STEP and interpolate.
        d = np.arange(256) if x.dtype == "int8" else np.arange(0, 65537, INTERP_STEP)
        table = np.round(np.exp(-d * x.scale) * (1 << SOFTMAX_EXP_BITS)).astype(np.int32)
        inv = int(round((1 << SOFTMAX_EXP_BITS) / out.scale))
        self._emit("softmax", [x.name], out, node, table=table, inv=inv, out_zp=out.zero_point, lo=lo, hi=hi,
                   interpolate=x.dtype == "int16")  # fmt: skip


def _span(dtype: str) -> int:
    """Largest |q - zero_point| for a tensor of `dtype`."""
    lo, hi = qrange(dtype)
    return hi - lo


def _acc_bias(bias: np.ndarray, x: QTensor) -> np.ndarray:
    """The bias in the accumulator's type: int32 for int8 inputs, int64 for int16 (whose folded zero
    point term alone can exceed int32)."""
    if x.dtype == "int16":
        return bias.astype(np.int64)
    if np.abs(bias).max(initial=0) >= 1 << 31:
        raise UnsupportedModelError("an int32 bias overflows after folding the input zero point")
    return bias.astype(np.int32)


def _window_counts(hw: tuple[int, int], attrs: dict, include_pad: bool) -> np.ndarray:
    (h, w), (kh, kw), (sh, sw) = hw, attrs["kernel"], attrs["strides"]
    t, left, b, r = attrs["pads"]
    oh, ow = (h + t + b - kh) // sh + 1, (w + left + r - kw) // sw + 1
    if include_pad:
        return np.full((oh, ow), kh * kw, np.float64)
    ys = np.arange(oh)[:, None] * sh - t
    xs = np.arange(ow)[None, :] * sw - left
    rows = np.minimum(ys + kh, h) - np.maximum(ys, 0)
    cols = np.minimum(xs + kw, w) - np.maximum(xs, 0)
    return (rows * cols).astype(np.float64)


def _explicit_pads(a: dict, hw, kernel, strides, dilations, node) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from `pads` or `auto_pad` (VALID, SAME_UPPER, SAME_LOWER)."""
    mode = a.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "NOTSET":
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
        if len(pads) != 4:
            raise UnsupportedModelError(f"node '{node.name}': only 2-D pads are supported")
        return pads[0], pads[1], pads[2], pads[3]
    if mode == "VALID":
        return 0, 0, 0, 0
    total = []
    for size, k, s, d in zip(hw, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total.append(max(0, (out - 1) * s + (k - 1) * d + 1 - size))
    first = [t // 2 if mode == "SAME_UPPER" else t - t // 2 for t in total]
    return first[0], first[1], total[0] - first[0], total[1] - first[1]


def integer_io(graph: IntGraph) -> IntGraph:
    """The same graph with integer inputs and outputs: the model-edge quantize/dequantize ops are
    dropped and the caller passes (gets) the quantized tensors, with their scale and zero point."""
    drop: set[int] = set()
    inputs, outputs = [], []
    for name in graph.inputs:
        users = [i for i, op in enumerate(graph.ops) if name in op.inputs]
        if len(users) != 1 or graph.ops[users[0]].kind != "quantize":
            raise UnsupportedModelError(f"--io int8: model input '{name}' is not quantized exactly once")
        drop.add(users[0])
        inputs.append(graph.ops[users[0]].output)
    for name in outputs_of(graph):
        i, op = name
        lo, hi = qrange(graph.tensors[op.inputs[0]].dtype)
        if op.attrs["lo"] != lo or op.attrs["hi"] != hi:
            raise UnsupportedModelError(
                f"--io int8: model output '{op.output}' applies an activation after dequantizing"
            )
        drop.add(i)
        outputs.append(op.inputs[0])
    ops = tuple(op for i, op in enumerate(graph.ops) if i not in drop)
    for op in ops:
        if any(graph.tensors[n].dtype == "float32" for n in op.inputs):
            raise UnsupportedModelError(f"--io int8: op '{op.node}' reads a float model input")
    return IntGraph(graph.tensors, ops, tuple(inputs), tuple(outputs))


def outputs_of(graph: IntGraph) -> list[tuple[int, QOp]]:
    """(index, op) of the dequantize op that makes each model output."""
    result = []
    for name in graph.outputs:
        found = [(i, op) for i, op in enumerate(graph.ops) if op.output == name]
        if not found or found[0][1].kind != "dequantize":
            raise UnsupportedModelError(f"model output '{name}' is not dequantized from an integer tensor")
        result.append(found[0])
    return result
