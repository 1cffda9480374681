"""Integer element-wise functions of one tensor as tables: int8 -> a 256-entry table; int16 -> 513
points every INTERP_STEP input steps, linearly interpolated (as TFLite's int16 LUTs). A standalone
Relu/Clip on int16 is a rescale and a clamp instead (a 64K-entry table is too big for flash).

The functions: activations (Sigmoid, Tanh, HardSwish...), unary math (Sqrt, Log, Exp, Abs, Neg,
Reciprocal, Erf...), and an element-wise Add/Sub/Mul/Div/Pow/Max/Min whose other operand is one constant
value (x + 3 in a hard-swish, x ** 2 and x / ln 10 in a spectrogram): a function of x alone, so a
table computes it exactly as the float function quantized once, without a constant tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant import tflite_arith as A
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.fixedpoint import interp_table
from edgecomp.quant.ir import IntOp, clamp, int_array, register
from edgecomp.quant.ops.layout import Reshape
from edgecomp.quant.ops.pool import rescale_of

INTERP_STEP = 128  # int16 tables: one entry per 128 input steps (see fixedpoint.interp_table)
FUNCTIONS = {
    "Relu": lambda x, a: np.maximum(x, 0),
    "Sigmoid": lambda x, a: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, a: np.tanh(x),
    "LeakyRelu": lambda x, a: np.where(x >= 0, x, x * a.get("alpha", 0.01)),
    "HardSigmoid": lambda x, a: np.clip(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),
    "Sqrt": lambda x, a: np.sqrt(x),
    "Log": lambda x, a: np.log(x),
    "Exp": lambda x, a: np.exp(x),
    "Abs": lambda x, a: np.abs(x),
    "Neg": lambda x, a: -x,
    "Reciprocal": lambda x, a: 1 / x,
    "Erf": lambda x, a: np.vectorize(math.erf)(x),
    "Softplus": lambda x, a: np.logaddexp(0, x),
    "Softsign": lambda x, a: x / (1 + np.abs(x)),
    "Elu": lambda x, a: np.where(x >= 0, x, a.get("alpha", 1.0) * np.expm1(np.minimum(x, 0))),
}
# Element-wise ops of x and one constant value c (either side): x op c, or c op x when c comes first.
BINARY = {
    "Add": lambda x, c: x + c,
    "Sub": lambda x, c: x - c,
    "Mul": lambda x, c: x * c,
    "Div": lambda x, c: x / c,
    "Pow": lambda x, c: np.power(x, c),
    "Max": lambda x, c: np.maximum(x, c),
    "Min": lambda x, c: np.minimum(x, c),
}


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Lut(IntOp):
    """y = table[x + 128] (int8)."""

    kind = "lut"
    table: np.ndarray  # 256 entries of the output type

    def validate(self) -> None:
        self._require(self.table.shape == (256,), "an int8 table has 256 entries")

    def reference(self, xs, dtype):
        return self.table[xs[0].astype(np.int64) + 128].astype(dtype)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Lut16(IntOp):
    """y = clamp(interpolated table at x + 32768) (int16)."""

    kind = "lut16"
    table: np.ndarray  # int32, 65536 / INTERP_STEP + 1 points
    lo: int
    hi: int

    def validate(self) -> None:
        self._require(self.table.shape == (65536 // INTERP_STEP + 1,), "an int16 table has 513 points")

    def reference(self, xs, dtype):
        return clamp(interp_table(self.table, xs[0].astype(np.int64) + 32768), self.lo, self.hi, dtype)


def emit_table(ex: Extractor, node: onnx.NodeProto, x, fn) -> None:
    """Emit y = fn(real x) quantized to the node's output, as a table over every input value.
    Non-finite results (log 0, 1/0) saturate: +inf to the top, -inf to the bottom of the range,
    NaN (sqrt or log of a negative) to the zero point, the quantized 0."""
    out, (lo, hi) = ex.out(node)
    if tuple(out.shape) != tuple(x.shape):
        raise UnsupportedModelError(
            f"node '{node.name}' ({node.op_type}): its output shape {out.shape} differs from its input's "
            f"{x.shape}; the integer table keeps the shape"
        )
    q = np.arange(-32768, 32769, INTERP_STEP, dtype=np.float64) if x.dtype == "int16" else \
        np.arange(-128, 128, dtype=np.float64)  # fmt: skip
    with np.errstate(all="ignore"):
        y = np.asarray(fn((q - x.zero_point) * x.scale), dtype=np.float64) / out.scale
        y = np.where(np.isnan(y), 0.0, np.clip(y, -(2.0**40), 2.0**40))
    table = np.clip(np.rint(y) + out.zero_point, lo, hi).astype(np.int64)
    if x.dtype == "int16":
        ex.emit(Lut16(inputs=(x.name,), output=out.name, node=node.name, table=int_array(table, np.int32),
                      lo=lo, hi=hi))  # fmt: skip
        return
    ex.emit(Lut(inputs=(x.name,), output=out.name, node=node.name, table=int_array(table, out.dtype)))


@handles(*(op for op in FUNCTIONS if op != "Relu"))
def unary(ex: Extractor, node: onnx.NodeProto) -> None:
    """Any of FUNCTIONS, or a standalone Relu/Clip (quant/extract.py sends those here)."""
    from edgecomp.quant.ops.extremum import clip_with_tensor_bounds

    if node.op_type == "Clip" and clip_with_tensor_bounds(ex, node):
        return
    x = ex.act_in(node.input[0], node)
    if x.dtype != "int8" and node.op_type in ("Relu", "Clip"):
        out, (lo, hi) = ex.out(node)
        lo_b, hi_b = ex.clamp_range(out, *ex.act_range(node))
        ex.emit(Reshape(inputs=(x.name,), output=out.name, node=node.name, rescale=rescale_of(x, out),
                        lo=max(lo, lo_b), hi=min(hi, hi_b)))  # fmt: skip
        return
    a = ex.attrs(node)
    if node.op_type == "Clip":
        lo_f, hi_f = ex.act_range(node)
        emit_table(ex, node, x, lambda v: np.clip(v, lo_f, hi_f))
    else:
        emit_table(ex, node, x, lambda v: FUNCTIONS[node.op_type](v, a))


def binary_with_constant(ex: Extractor, node: onnx.NodeProto) -> bool:
    """An element-wise op of BINARY with one constant operand (a float constant, or a quantized one
    through its DequantizeLinear) as a table of the other: True when it was emitted, False when
    neither operand is constant (the two-tensor kernels' case)."""
    which = [i for i, name in enumerate(node.input[:2]) if ex.is_const(name)]
    if not which:
        return False
    if len(which) == 2:
        raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}): both operands are constant; fold it first")
    k = which[0]
    c = ex.real_const(node.input[k], node)
    if c.size == 0 or np.any(c != c.reshape(-1)[0]):
        raise UnsupportedModelError(
            f"node '{node.name}' ({node.op_type}): an integer {node.op_type} with a constant operand needs one "
            f"value (a scalar); this constant has {c.size} different values: compile the model in float"
        )
    x = ex.act_in(node.input[1 - k], node)
    value, fn = float(c.reshape(-1)[0]), BINARY[node.op_type]
    emit_table(ex, node, x, (lambda v: fn(v, value)) if k == 1 else (lambda v: fn(value, v)))
    return True


@handles("Div", "Pow")
def div_pow_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    if not binary_with_constant(ex, node):
        raise UnsupportedModelError(
            f"node '{node.name}' ({node.op_type}): an integer {node.op_type} needs one constant operand "
            "(two run-time tensors have no integer kernel); compile the model in float"
        )


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class TflSigmoid16(IntOp):
    """TFLite's int16 LOGISTIC / TANH (tflite_arith.sigmoid_int16): the input rescaled by
    (mult, shift), then TFLM's 256-entry sigmoid table with its interpolation. Zero points 0,
    output scale 2^-15 (TFLite requires them)."""

    kind = "sigmoid_tfl16"
    mult: int
    shift: int  # right shift, with rounding
    tanh: bool

    def reference(self, xs, dtype):
        return A.sigmoid_int16(xs[0], self.mult, self.shift, self.tanh).astype(dtype)
