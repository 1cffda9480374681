"""Integer Slice, and Gather of constant indices: pure data movement. Each input axis keeps the
positions start, start + step, ... (count of them; a negative step runs backwards), and the values
taken are laid out in the output's shape (a Gather of one index drops its axis)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.ir import IntOp, Rescale, clamp, register
from edgecomp.quant.ops.pool import rescale_of


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Slice(IntOp):
    kind = "slice"
    starts: tuple[int, ...]  # per input axis, the first position taken
    steps: tuple[int, ...]  # per input axis, != 0
    counts: tuple[int, ...]  # per input axis, positions taken (>= 1)
    shape: tuple[int, ...]  # the output's shape (the taken values, row-major)
    rescale: Rescale
    lo: int
    hi: int

    def validate(self) -> None:
        n = len(self.starts)
        self._require(len(self.steps) == n == len(self.counts), "one start, step and count per axis")
        self._require(all(s != 0 for s in self.steps), "steps must not be 0")
        self._require(all(c >= 1 for c in self.counts), "every axis keeps at least one position")
        self._require(int(np.prod(self.counts)) == int(np.prod(self.shape)), "the output holds the values taken")

    def reference(self, xs, dtype):
        idx = [s + t * np.arange(c) for s, t, c in zip(self.starts, self.steps, self.counts, strict=True)]
        taken = xs[0][np.ix_(*idx)].reshape(self.shape)
        return clamp(self.rescale.apply(taken), self.lo, self.hi, dtype)


def _ints(ex: Extractor, node: onnx.NodeProto, i: int) -> list[int] | None:
    if len(node.input) <= i or not node.input[i]:
        return None
    return [int(v) for v in ex.const(node.input[i], node).reshape(-1)]


@handles("Slice")
def slice_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    rank = len(x.shape)
    a = ex.attrs(node)
    if "starts" in a:  # opset < 10: attributes
        starts, ends, axes, steps = list(a["starts"]), list(a["ends"]), a.get("axes"), None
    else:
        starts, ends, axes, steps = _ints(ex, node, 1), _ints(ex, node, 2), _ints(ex, node, 3), _ints(ex, node, 4)
    axes = list(range(len(starts))) if axes is None else [int(v) % rank for v in axes]
    steps = [1] * len(starts) if steps is None else steps
    first, step, count = [0] * rank, [1] * rank, list(x.shape)
    for ax, s, e, t in zip(axes, starts, ends, steps, strict=True):
        if t == 0:
            raise UnsupportedModelError(f"node '{node.name}': Slice with step 0")
        r = range(*slice(s, e, t).indices(x.shape[ax]))  # ONNX clamps starts and ends as Python does
        if len(r) == 0:
            raise UnsupportedModelError(f"node '{node.name}': an empty Slice has no integer kernel")
        first[ax], step[ax], count[ax] = r.start, r.step, len(r)
    _emit(ex, node, x, out, first, step, count, lo, hi)


@handles("Gather")
def gather_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    """Gather of constant indices that are one position, or evenly spaced ones (a Slice)."""
    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    if node.input[1] not in ex.consts:
        raise UnsupportedModelError(
            f"node '{node.name}': integer Gather needs constant indices (run-time ones: compile in float)"
        )
    rank = len(x.shape)
    ax = int(ex.attrs(node).get("axis", 0)) % rank
    idx = ex.consts[node.input[1]].astype(np.int64).reshape(-1)
    idx = np.where(idx < 0, idx + x.shape[ax], idx)
    if np.any(idx < 0) or np.any(idx >= x.shape[ax]):
        raise UnsupportedModelError(f"node '{node.name}': Gather index out of range for an axis of {x.shape[ax]}")
    diffs = np.diff(idx)
    if idx.size == 0 or (idx.size > 1 and (np.any(diffs != diffs[0]) or diffs[0] == 0)):
        raise UnsupportedModelError(
            f"node '{node.name}': integer Gather takes one index or evenly spaced ones, not {idx.tolist()[:8]}"
        )
    first, step, count = [0] * rank, [1] * rank, list(x.shape)
    first[ax], step[ax], count[ax] = int(idx[0]), int(diffs[0]) if idx.size > 1 else 1, int(idx.size)
    _emit(ex, node, x, out, first, step, count, lo, hi)


def _emit(ex, node, x, out, first, step, count, lo, hi) -> None:
    ex.emit(Slice(inputs=(x.name,), output=out.name, node=node.name, starts=tuple(first), steps=tuple(step),
                  counts=tuple(count), shape=tuple(out.shape), rescale=rescale_of(x, out), lo=lo, hi=hi))  # fmt: skip
