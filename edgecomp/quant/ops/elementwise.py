"""Integer element-wise ops of two tensors (Add, Sub, Mul; numpy broadcasting) and PRelu. With one
constant operand they are a function of the other tensor: a table (quant/ops/lut.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.fixedpoint import multiplier_bits, qrange, quantize_multiplier, requant, requant_by
from edgecomp.quant.ir import IntOp, clamp, int_array, register

ADD_LEFT_SHIFT = 20  # headroom for rescaling both addends to a common scale (as TFLite)


def span(dtype: str) -> int:
    """Largest |q - zero_point| for a tensor of `dtype`."""
    lo, hi = qrange(dtype)
    return hi - lo


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Add(IntOp):
    """As TFLite: both inputs shifted left, rescaled to a common scale (2 * the larger), summed
    (or subtracted), then requantized to the output. Inputs broadcast as numpy's (ONNX's) do."""

    kind = "add"
    a_zp: int
    b_zp: int
    a_mult: int
    a_shift: int
    b_mult: int
    b_shift: int
    mult: int
    shift: int
    left_shift: int
    out_zp: int
    lo: int
    hi: int
    rounding: str = "single"  # fixedpoint.ROUNDINGS
    subtract: bool = False  # a - b (TFLite's SUB)

    def reference(self, xs, dtype):
        r = self.rounding
        ai = (xs[0].astype(np.int64) - self.a_zp) << self.left_shift
        bi = (xs[1].astype(np.int64) - self.b_zp) << self.left_shift
        a, b = requant_by(r, ai, self.a_mult, self.a_shift), requant_by(r, bi, self.b_mult, self.b_shift)
        s = a - b if self.subtract else a + b
        return clamp(requant_by(r, s, self.mult, self.shift) + self.out_zp, self.lo, self.hi, dtype)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Mul(IntOp):
    kind = "mul"
    a_zp: int
    b_zp: int
    mult: int
    shift: int
    out_zp: int
    lo: int
    hi: int
    rounding: str = "single"  # fixedpoint.ROUNDINGS

    def reference(self, xs, dtype):
        p = (xs[0].astype(np.int64) - self.a_zp) * (xs[1].astype(np.int64) - self.b_zp)
        return clamp(requant_by(self.rounding, p, self.mult, self.shift) + self.out_zp, self.lo, self.hi, dtype)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class PRelu(IntOp):
    """The input rescaled to the output's scale with one multiplier where it is >= its zero point,
    with the channel's slope folded into a second (signed) multiplier below it."""

    kind = "prelu"
    in_zp: int
    out_zp: int
    mult: int
    shift: int
    neg_mult: np.ndarray  # int64 per channel (signed: the slope's sign)
    neg_shift: np.ndarray  # int64 per channel
    lo: int
    hi: int

    def validate(self) -> None:
        self._require(self.neg_mult.shape == self.neg_shift.shape, "one negative multiplier and shift per channel")

    def reference(self, xs, dtype):
        v = xs[0].astype(np.int64) - self.in_zp
        per_channel = (1, -1) + (1,) * (v.ndim - 2) if v.ndim > 1 else (-1,)
        neg = requant(v, self.neg_mult.reshape(per_channel), self.neg_shift.reshape(per_channel))
        y = np.where(v >= 0, requant(v, self.mult, self.shift), neg) + self.out_zp
        return clamp(y, self.lo, self.hi, dtype)


def _broadcast_operands(ex: Extractor, node: onnx.NodeProto):
    """The two int tensors of a two-tensor element-wise op, checked to broadcast to its output."""
    a_t, b_t = (ex.act_in(i, node) for i in node.input[:2])
    try:
        shape = np.broadcast_shapes(a_t.shape, b_t.shape)
    except ValueError:
        shape = None
    if shape is None or tuple(shape) != tuple(ex.shape(node.output[0])):
        raise UnsupportedModelError(
            f"node '{node.name}': integer {node.op_type} needs shapes that broadcast to its output, got "
            f"{a_t.shape} and {b_t.shape}"
        )
    return a_t, b_t


@handles("Add", "Sub")
def add_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    from edgecomp.quant.ops.lut import binary_with_constant

    if binary_with_constant(ex, node):
        return
    a_t, b_t = _broadcast_operands(ex, node)
    out, (lo, hi) = ex.out(node)
    # int16 values need 17 bits after the zero point: shift less so the int64 products fit.
    left_shift = 15 if "int16" in (a_t.dtype, b_t.dtype) else ADD_LEFT_SHIFT
    twice_max = 2 * max(a_t.scale, b_t.scale)
    ma, sa = quantize_multiplier(a_t.scale / twice_max)
    mb, sb = quantize_multiplier(b_t.scale / twice_max)
    mo, so = quantize_multiplier(twice_max / ((1 << left_shift) * out.scale))
    ex.emit(Add(inputs=(a_t.name, b_t.name), output=out.name, node=node.name, a_zp=a_t.zero_point,
                b_zp=b_t.zero_point, a_mult=ma, a_shift=sa, b_mult=mb, b_shift=sb, mult=mo, shift=so,
                left_shift=left_shift, out_zp=out.zero_point, lo=lo, hi=hi,
                subtract=node.op_type == "Sub"))  # fmt: skip


@handles("Mul")
def mul_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    from edgecomp.quant.ops.lut import binary_with_constant

    if binary_with_constant(ex, node):
        return
    a_t, b_t = _broadcast_operands(ex, node)
    out, (lo, hi) = ex.out(node)
    bound = span(a_t.dtype) * span(b_t.dtype)
    m, s = quantize_multiplier(a_t.scale * b_t.scale / out.scale, multiplier_bits(bound))
    ex.emit(Mul(inputs=(a_t.name, b_t.name), output=out.name, node=node.name, a_zp=a_t.zero_point,
                b_zp=b_t.zero_point, mult=m, shift=s, out_zp=out.zero_point, lo=lo, hi=hi))  # fmt: skip


@handles("PRelu")
def prelu_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    # The slope as ONNX broadcasts it onto x (from the right); it must vary along channels only.
    rest = (1,) * (len(x.shape) - 2)
    try:
        full = np.broadcast_to(ex.real_const(node.input[1], node), x.shape)
    except ValueError as exc:
        raise UnsupportedModelError(f"node '{node.name}': PRelu slope does not broadcast to {x.shape}") from exc
    slope = full[(0, slice(None), *(0 for _ in rest))] if len(x.shape) >= 2 else full
    if len(x.shape) < 2 or not np.array_equal(np.broadcast_to(slope.reshape((1, -1, *rest)), x.shape), full):
        raise UnsupportedModelError(f"node '{node.name}': integer PRelu needs a per-channel or scalar slope")
    mult, shift = quantize_multiplier(x.scale / out.scale)
    neg = [quantize_multiplier(abs(float(s)) * x.scale / out.scale) for s in slope]
    neg_mult = np.array([int(np.sign(s)) * m for s, (m, _) in zip(slope, neg, strict=True)], np.int64)
    neg_shift = np.array([n for _, n in neg], np.int64)
    ex.emit(PRelu(inputs=(x.name,), output=out.name, node=node.name, in_zp=x.zero_point, out_zp=out.zero_point,
                  mult=mult, shift=shift, neg_mult=int_array(neg_mult, np.int64),
                  neg_shift=int_array(neg_shift, np.int64), lo=lo, hi=hi))  # fmt: skip
