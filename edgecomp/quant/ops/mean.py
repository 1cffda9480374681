"""TFLite's integer mean over axes (reference/reduce.h QuantizedMeanOrSum): the raw values summed,
less in_zp times the count, requantized with 1/count folded into the multiplier (TFLM's MEAN)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecomp.quant.fixedpoint import requant_by
from edgecomp.quant.ir import IntOp, clamp, register


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class TflMean(IntOp):
    kind = "mean_tfl"
    axes: tuple[int, ...]  # reduced axes of the input
    count: int  # elements reduced per output
    mult: int
    shift: int
    in_zp: int
    out_zp: int
    lo: int
    hi: int

    def reference(self, xs, dtype):
        x = xs[0].astype(np.int64)
        s = x.sum(axis=self.axes)
        y = requant_by("double", s - self.in_zp * self.count, self.mult, self.shift) + self.out_zp
        return clamp(y, self.lo, self.hi, dtype)
