"""Integer max and average pooling (2-D, NCHW, also global), and the window helpers convolutions share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.fixedpoint import multiplier_bits, quantize_multiplier, quantize_multipliers, requant
from edgecomp.quant.ir import IntOp, QTensor, Rescale, clamp, int_array, register


def windows(xp: np.ndarray, kernel, strides, dilations) -> np.ndarray:
    """View of a padded NCHW array as (N, C, OH, OW, KH, KW)."""
    kh, kw = kernel
    dh, dw = dilations
    sh, sw = strides
    n, c, h, w = xp.shape
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    s = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False
    )


def _pad(x: np.ndarray, pads, value) -> np.ndarray:
    t, left, b, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=value)


@dataclass(frozen=True, kw_only=True, eq=False)
class _Pool(IntOp):
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    lo: int
    hi: int


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class MaxPool(_Pool):
    kind = "maxpool"
    rescale: Rescale  # to the output's scale and zero point, after the max

    def reference(self, xs, dtype):
        lo = np.iinfo(xs[0].dtype).min
        win = windows(_pad(xs[0].astype(np.int64), self.pads, lo), self.kernel, self.strides, (1, 1))
        return clamp(self.rescale.apply(win.max(axis=(4, 5))), self.lo, self.hi, dtype)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class AvgPool(_Pool):
    """The window sum of (x - in_zp), requantized with a multiplier per output position (its
    divisor: the window size, or the part of the window inside the input)."""

    kind = "avgpool"
    in_zp: int
    mult: np.ndarray  # int64 [OH, OW]
    shift: np.ndarray  # int64 [OH, OW]
    out_zp: int

    def validate(self) -> None:
        self._require(self.mult.shape == self.shift.shape and self.mult.ndim == 2, "multipliers per output position")

    def reference(self, xs, dtype):
        xp = _pad(xs[0].astype(np.int64) - self.in_zp, self.pads, 0)
        acc = windows(xp, self.kernel, self.strides, (1, 1)).sum(axis=(4, 5))
        y = requant(acc, self.mult[None, None], self.shift[None, None]) + self.out_zp
        return clamp(y, self.lo, self.hi, dtype)


def rescale_of(x: QTensor, out: QTensor) -> Rescale:
    m, s = quantize_multiplier(x.scale / out.scale)
    return Rescale(m, s, x.zero_point, out.zero_point)


def explicit_pads(a: dict, hw, kernel, strides, dilations, node) -> tuple[int, int, int, int]:
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


def _window_counts(hw: tuple[int, int], kernel, strides, pads, include_pad: bool) -> np.ndarray:
    (h, w), (kh, kw), (sh, sw) = hw, kernel, strides
    t, left, b, r = pads
    oh, ow = (h + t + b - kh) // sh + 1, (w + left + r - kw) // sw + 1
    if include_pad:
        return np.full((oh, ow), kh * kw, np.float64)
    ys = np.arange(oh)[:, None] * sh - t
    xs = np.arange(ow)[None, :] * sw - left
    rows = np.minimum(ys + kh, h) - np.maximum(ys, 0)
    cols = np.minimum(xs + kw, w) - np.maximum(xs, 0)
    return (rows * cols).astype(np.float64)


def _pool_attrs(ex: Extractor, node, x: QTensor, global_pool: bool) -> dict:
    if global_pool:
        return {"kernel": tuple(x.shape[2:]), "strides": (1, 1), "pads": (0, 0, 0, 0)}
    a = ex.attrs(node)
    if a.get("ceil_mode", 0):
        raise UnsupportedModelError(f"node '{node.name}': ceil_mode is not supported in integer pools")
    if any(d != 1 for d in a.get("dilations", (1, 1))):
        raise UnsupportedModelError(f"node '{node.name}': dilated pooling is not supported")
    kernel, strides = tuple(a["kernel_shape"]), tuple(a.get("strides", (1, 1)))
    pads = explicit_pads(a, x.shape[2:], kernel, strides, (1, 1), node)
    return {"kernel": kernel, "strides": strides, "pads": pads}


@handles("MaxPool", "GlobalMaxPool")
def maxpool_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    attrs = _pool_attrs(ex, node, x, node.op_type == "GlobalMaxPool")
    ex.emit(MaxPool(inputs=(x.name,), output=out.name, node=node.name, **attrs, rescale=rescale_of(x, out),
                    lo=lo, hi=hi))  # fmt: skip


@handles("AveragePool", "GlobalAveragePool")
def avgpool_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    from edgecomp.quant.ops.elementwise import span

    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    attrs = _pool_attrs(ex, node, x, node.op_type == "GlobalAveragePool")
    # Divisor per output position: the window size, or (count_include_pad=0) the number of
    # window elements inside the input, so the multipliers are a small (OH, OW) table.
    include_pad = bool(ex.attrs(node).get("count_include_pad", 0))
    counts = _window_counts(x.shape[2:], attrs["kernel"], attrs["strides"], attrs["pads"], include_pad)
    bits = multiplier_bits(span(x.dtype) * int(counts.max()))
    mult, shift = quantize_multipliers(x.scale / (out.scale * counts), bits)
    ex.emit(AvgPool(inputs=(x.name,), output=out.name, node=node.name, **attrs, in_zp=x.zero_point,
                    mult=int_array(mult.reshape(counts.shape), np.int64),
                    shift=int_array(shift.reshape(counts.shape), np.int64), out_zp=out.zero_point,
                    lo=lo, hi=hi))  # fmt: skip
