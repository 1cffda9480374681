"""TFLite's integer mean over axes (reference/reduce.h QuantizedMeanOrSum): the raw values summed,
less in_zp times the count, requantized with 1/count folded into the multiplier (TFLM's MEAN).
ONNX ReduceMean is the same op, its multiplier scale_in / (scale_out * count)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.fixedpoint import quantize_multiplier, requant_by
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


def reduce_axes(ex: Extractor, node: onnx.NodeProto, rank: int) -> tuple[int, ...]:
    """A Reduce* node's axes, sorted and non-negative: the attribute, or (opset 18) the input;
    none means all (an identity with noop_with_empty_axes is refused: it should have been folded)."""
    a = ex.attrs(node)
    axes = a.get("axes")
    if len(node.input) > 1 and node.input[1]:  # opset 18: an input
        axes = ex.const(node.input[1], node).reshape(-1).tolist()
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            raise UnsupportedModelError(f"node '{node.name}': a {node.op_type} with no axes is an identity; fold it")
        axes = list(range(rank))
    return tuple(sorted({int(v) % rank for v in axes}))


@handles("ReduceMean")
def reduce_mean_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    axes = reduce_axes(ex, node, len(x.shape))
    count = int(np.prod([x.shape[i] for i in axes]))
    if count * 65536 >= 1 << 31:
        raise UnsupportedModelError(f"node '{node.name}': a ReduceMean over {count} values overflows an int32 sum")
    mult, shift = quantize_multiplier(x.scale / (out.scale * count))
    ex.emit(TflMean(inputs=(x.name,), output=out.name, node=node.name, axes=axes, count=count, mult=mult,
                    shift=shift, in_zp=x.zero_point, out_zp=out.zero_point, lo=lo, hi=hi))  # fmt: skip
