"""TFLite's integer average pooling: the sum of the raw values of the window's taps inside the
image (padding neither summed nor counted), divided by their count rounding half away from zero
(integer_ops/pooling.h). No rescale: TFLite requires the input's quantization on the output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecomp.quant.ir import IntOp, clamp, register
from edgecomp.quant.ops.pool import windows


def tap_counts(hw: tuple[int, int], kernel, strides, pads) -> np.ndarray:
    """Taps inside the image for each output position, [OH, OW]."""
    (h, w), (kh, kw), (sh, sw) = hw, kernel, strides
    t, left, b, r = pads
    oh, ow = (h + t + b - kh) // sh + 1, (w + left + r - kw) // sw + 1
    rows = np.minimum(np.arange(oh) * sh - t + kh, h) - np.maximum(np.arange(oh) * sh - t, 0)
    cols = np.minimum(np.arange(ow) * sw - left + kw, w) - np.maximum(np.arange(ow) * sw - left, 0)
    return (rows[:, None] * cols[None, :]).astype(np.int64)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class TflAvgPool(IntOp):
    kind = "avgpool_tfl"
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    lo: int
    hi: int

    def reference(self, xs, dtype):
        x = xs[0].astype(np.int64)
        t, left, b, r = self.pads
        xp = np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=0)
        acc = windows(xp, self.kernel, self.strides, (1, 1)).sum(axis=(4, 5))
        n = tap_counts(x.shape[2:], self.kernel, self.strides, self.pads)[None, None]
        half = n // 2
        q = np.where(acc > 0, (acc + half) // n, -((-acc + half) // n))  # C division: toward zero
        return clamp(q, self.lo, self.hi, dtype)
