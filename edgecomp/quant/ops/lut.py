"""Integer element-wise functions of one tensor as tables: int8 -> a 256-entry table; int16 -> 513
points every INTERP_STEP input steps, linearly interpolated (as TFLite's int16 LUTs). A standalone
Relu/Clip on int16 is a rescale and a clamp instead (a 64K-entry table is too big for flash)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

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


@handles(*(op for op in FUNCTIONS if op != "Relu"))
def unary(ex: Extractor, node: onnx.NodeProto) -> None:
    """Any of FUNCTIONS, or a standalone Relu/Clip (quant/extract.py sends those here)."""
    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    if x.dtype != "int8" and node.op_type in ("Relu", "Clip"):
        lo_b, hi_b = ex.clamp_range(out, *ex.act_range(node))
        ex.emit(Reshape(inputs=(x.name,), output=out.name, node=node.name, rescale=rescale_of(x, out),
                        lo=max(lo, lo_b), hi=min(hi, hi_b)))  # fmt: skip
        return
    a = ex.attrs(node)
    if node.op_type == "Clip":
        lo_f, hi_f = ex.act_range(node)
        fn = lambda v, _a: np.clip(v, lo_f, hi_f)  # noqa: E731
    else:
        fn = FUNCTIONS[node.op_type]
    if x.dtype == "int16":
        q = np.arange(-32768, 32769, INTERP_STEP, dtype=np.float64)
        table = np.clip(np.rint(fn((q - x.zero_point) * x.scale, a) / out.scale) + out.zero_point, lo, hi)
        ex.emit(Lut16(inputs=(x.name,), output=out.name, node=node.name, table=int_array(table, np.int32),
                      lo=lo, hi=hi))  # fmt: skip
        return
    q = np.arange(-128, 128, dtype=np.float64)
    table = np.clip(np.rint(fn((q - x.zero_point) * x.scale, a) / out.scale) + out.zero_point, lo, hi)
    ex.emit(Lut(inputs=(x.name,), output=out.name, node=node.name,
                table=int_array(table.astype(np.int64), out.dtype)))  # fmt: skip


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
