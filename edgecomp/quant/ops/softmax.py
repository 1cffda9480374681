"""Integer softmax over the last axis: exp(-(max - x) * scale) from a table (int16 inputs: sampled
every INTERP_STEP and interpolated), summed, and each entry divided by the sum with one rounding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.fixedpoint import interp_table
from edgecomp.quant.ir import IntOp, clamp, int_array, register
from edgecomp.quant.ops.lut import INTERP_STEP

SOFTMAX_EXP_BITS = 16  # exp table entries are round(exp(-d * s) * 2**16)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Softmax(IntOp):
    kind = "softmax"
    table: np.ndarray  # int32: exp(-d * scale) * 2**16 for d = max - x
    inv: int  # round(2**16 / output scale)
    out_zp: int
    lo: int
    hi: int
    interpolate: bool  # int16 input: the table is sampled every INTERP_STEP

    def reference(self, xs, dtype):
        v = xs[0].astype(np.int64)
        d = v.max(axis=-1, keepdims=True) - v
        t = interp_table(self.table, d) if self.interpolate else self.table.astype(np.int64)[d]
        total = t.sum(axis=-1, keepdims=True)
        q = (t * self.inv + (total << 15)) // (total << 16)
        return clamp(q + self.out_zp, self.lo, self.hi, dtype)


@handles("Softmax")
def softmax_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    axis = ex.attrs(node).get("axis", -1) % len(x.shape)
    if axis != len(x.shape) - 1:
        raise UnsupportedModelError(f"node '{node.name}': integer Softmax supports the last axis only")
    d = np.arange(256) if x.dtype == "int8" else np.arange(0, 65537, INTERP_STEP)
    table = np.round(np.exp(-d * x.scale) * (1 << SOFTMAX_EXP_BITS)).astype(np.int32)
    inv = int(round((1 << SOFTMAX_EXP_BITS) / out.scale))
    ex.emit(Softmax(inputs=(x.name,), output=out.name, node=node.name, table=int_array(table, np.int32), inv=inv,
                    out_zp=out.zero_point, lo=lo, hi=hi, interpolate=x.dtype == "int16"))  # fmt: skip
