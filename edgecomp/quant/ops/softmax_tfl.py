"""TFLite's int8 softmax (reference/softmax.h) in its table form, bit-exact with TFLite Micro:
for k = row max - x, exp[k] is gemmlowp's exp_on_negative_values of the rescaled difference
(0 below TFLite's diff_min) and exp12[k] the same rounded to Q12.19; per row the sum of exp12,
gemmlowp's reciprocal of it, and y = RDBPOT(SRDHM(recip, exp[k]), nbou + 23) - 128.
Output scale 1/256, zero point -128 (TFLite requires them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecomp.quant import tflite_arith as A
from edgecomp.quant.ir import IntOp, clamp, register


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class TflSoftmax(IntOp):
    kind = "softmax_tfl"
    exp: np.ndarray  # int32 [256], Q0.31
    exp12: np.ndarray  # int32 [256], Q12.19

    def validate(self) -> None:
        self._require(self.exp.shape == (256,) and self.exp12.shape == (256,), "tables of 256 entries")

    def reference(self, xs, dtype):
        x = xs[0].astype(np.int64)
        k = x.max(axis=-1, keepdims=True) - x
        total = self.exp12.astype(np.int64)[k].sum(axis=-1, keepdims=True)
        if np.any(total >= 1 << 28):
            raise ValueError("softmax: the row's sum of exps reaches 512 (TFLite Micro aborts there)")
        recip, nbou = A.get_reciprocal(total, 12)
        y = A.rdbpot(A.srdhm(recip, self.exp.astype(np.int64)[k]), nbou + 23) - 128
        return clamp(y, -128, 127, dtype)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class TflSoftmax16(IntOp):
    """TFLite's int16 softmax (reference_ops::SoftmaxInt16): the row's differences from its max
    rescaled onto [-10, 0] (MultiplyByQuantizedMultiplier), exp from a 513-point table with TFLM's
    interpolation, the sum's reciprocal from a second table, y = e * recip >> (31 - clz(sum)).
    Input and output zero point 0, output scale 1/32768 (TFLite requires them)."""

    kind = "softmax_tfl16"
    mult: int
    shift: int  # TFLite's (left when > 0)
    exp_lut: np.ndarray  # int16 [513]
    recip_lut: np.ndarray  # int16 [513]

    def validate(self) -> None:
        self._require(self.exp_lut.shape == (513,) and self.recip_lut.shape == (513,), "tables of 513 entries")

    def reference(self, xs, dtype):
        return A.softmax_int16(xs[0], self.mult, self.shift, self.exp_lut, self.recip_lut).astype(dtype)
