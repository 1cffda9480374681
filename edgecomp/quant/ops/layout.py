"""Integer ops that move values: Reshape (also Flatten, Squeeze, Unsqueeze), Transpose, Concat,
StridedSlice (TFLite's STRIDED_SLICE). All but StridedSlice also rescale to their output's scale and
zero point when they differ, then clamp (TFLite requires a slice's to be its input's)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.ir import IntOp, Rescale, clamp, register
from edgecomp.quant.ops.pool import rescale_of


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Reshape(IntOp):
    """Same values in the output's shape (row-major), rescaled and clamped; also a rescale-and-clamp
    on its own (int16 Relu/Clip)."""

    kind = "reshape"
    rescale: Rescale
    lo: int
    hi: int

    def reference(self, xs, dtype):
        return clamp(self.rescale.apply(xs[0]), self.lo, self.hi, dtype)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Transpose(IntOp):
    kind = "transpose"
    perm: tuple[int, ...]
    rescale: Rescale
    lo: int
    hi: int

    def validate(self) -> None:
        self._require(sorted(self.perm) == list(range(len(self.perm))), f"perm {self.perm} is not a permutation")

    def reference(self, xs, dtype):
        return clamp(self.rescale.apply(np.transpose(xs[0], self.perm)), self.lo, self.hi, dtype)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Concat(IntOp):
    kind = "concat"
    axis: int
    rescales: tuple[Rescale, ...]  # one per input
    lo: int
    hi: int

    def validate(self) -> None:
        self._require(len(self.rescales) == len(self.inputs), "one rescale per input")

    def reference(self, xs, dtype):
        parts = [r.apply(v) for v, r in zip(xs, self.rescales, strict=True)]
        return clamp(np.concatenate(parts, axis=self.axis), self.lo, self.hi, dtype)


@handles("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    ex.emit(Reshape(inputs=(x.name,), output=out.name, node=node.name, rescale=rescale_of(x, out), lo=lo, hi=hi))


@handles("Transpose")
def transpose_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    out, (lo, hi) = ex.out(node)
    perm = tuple(ex.attrs(node).get("perm", tuple(reversed(range(len(x.shape))))))
    ex.emit(Transpose(inputs=(x.name,), output=out.name, node=node.name, perm=perm, rescale=rescale_of(x, out),
                      lo=lo, hi=hi))  # fmt: skip


@handles("Concat")
def concat_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    ins = [ex.act_in(i, node) for i in node.input]
    out, (lo, hi) = ex.out(node)
    axis = ex.attrs(node)["axis"] % len(out.shape)
    ex.emit(Concat(inputs=tuple(t.name for t in ins), output=out.name, node=node.name, axis=axis,
                   rescales=tuple(rescale_of(t, out) for t in ins), lo=lo, hi=hi))  # fmt: skip
