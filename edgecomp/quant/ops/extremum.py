"""Integer maxima and minima: ReduceMax/ReduceMin over axes, and the element-wise Max/Min of
tensors (also a Clip whose bounds are run-time tensors, as a spectrogram's "no more than 80 dB
below its peak" floor). Each input is rescaled to the output's grid first: the rescale is monotonic,
so the largest rescaled value is the rescaled largest one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.ir import IntOp, Rescale, clamp, register
from edgecomp.quant.ops.mean import reduce_axes
from edgecomp.quant.ops.pool import rescale_of


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Reduce(IntOp):
    """The largest (or smallest) value over `axes`, in the output's shape (kept axes, or not)."""

    kind = "reduce_max"
    axes: tuple[int, ...]
    largest: bool
    shape: tuple[int, ...]  # the output's
    rescale: Rescale
    lo: int
    hi: int

    def reference(self, xs, dtype):
        v = (np.max if self.largest else np.min)(xs[0], axis=self.axes).reshape(self.shape)
        return clamp(self.rescale.apply(v), self.lo, self.hi, dtype)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Extremum(IntOp):
    """The element-wise largest (or smallest) of the inputs, broadcast as numpy does."""

    kind = "extremum"
    largest: bool
    rescales: tuple[Rescale, ...]  # one per input, to the output's grid
    lo: int
    hi: int

    def validate(self) -> None:
        self._require(len(self.rescales) == len(self.inputs) >= 2, "two or more inputs, one rescale each")

    def reference(self, xs, dtype):
        vals = [r.apply(v) for v, r in zip(xs, self.rescales, strict=True)]
        v = (np.maximum if self.largest else np.minimum).reduce(np.broadcast_arrays(*vals))
        return clamp(v, self.lo, self.hi, dtype)


@handles("ReduceMax", "ReduceMin")
def reduce_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    ex.emit(Reduce(inputs=(x.name,), output=out.name, node=node.name,
                   axes=reduce_axes(ex, node, len(x.shape)), largest=node.op_type == "ReduceMax",
                   shape=tuple(out.shape), rescale=rescale_of(x, out), lo=lo, hi=hi))  # fmt: skip


@handles("Max", "Min")
def extremum_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    from edgecomp.quant.ops.lut import binary_with_constant

    if len(node.input) == 2 and binary_with_constant(ex, node):  # max(x, 0): a table
        return
    ins = [ex.act_in(i, node) for i in node.input]
    out, (lo, hi) = ex.out(node)
    if len(ins) == 1:
        raise UnsupportedModelError(f"node '{node.name}': a {node.op_type} of one tensor is an identity; fold it")
    _emit(ex, node, ins, out, node.op_type == "Max", lo, hi)


def clip_with_tensor_bounds(ex: Extractor, node: onnx.NodeProto) -> bool:
    """A Clip whose min or max is a run-time tensor: Max with the min, Min with the max (a constant
    bound is the output's clamp). False when both bounds are constants (a table's case)."""
    bounds = [(k, node.input[k]) for k in (1, 2) if len(node.input) > k and node.input[k]]
    tensors = [(k, n) for k, n in bounds if not ex.is_const(n)]
    if not tensors:
        return False
    if len(tensors) == 2:
        raise UnsupportedModelError(f"node '{node.name}': an integer Clip takes one run-time bound, not two")
    k, name = tensors[0]
    x, bound = ex.act_in(node.input[0], node), ex.act_in(name, node)
    out, (lo, hi) = ex.out(node)
    other = [n for j, n in bounds if j != k]
    if other:  # the constant bound
        c = float(ex.real_const(other[0], node).reshape(-1)[0])
        c_lo, c_hi = ex.clamp_range(out, c, np.inf) if k == 2 else ex.clamp_range(out, -np.inf, c)
        lo, hi = max(lo, c_lo), min(hi, c_hi)
    _emit(ex, node, [x, bound], out, k == 1, lo, hi)
    return True


def _emit(ex, node, ins, out, largest, lo, hi) -> None:
    try:
        shape = np.broadcast_shapes(*(t.shape for t in ins))
    except ValueError:
        shape = None
    if shape is None or tuple(shape) != tuple(out.shape):
        raise UnsupportedModelError(
            f"node '{node.name}': integer {node.op_type} needs inputs that broadcast to its output {out.shape}"
        )
    ex.emit(Extremum(inputs=tuple(t.name for t in ins), output=out.name, node=node.name, largest=largest,
                     rescales=tuple(rescale_of(t, out) for t in ins), lo=lo, hi=hi))  # fmt: skip
