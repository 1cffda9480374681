"""The two ops of patch-based execution (quant/patches.py): Crop takes a spatial window out of an
NCHW tensor; Place writes a patch into a full-size tensor. They come from no ONNX node: the
patching transform makes them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecomp.quant.ir import IntOp, register


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Crop(IntOp):
    """Rows [r0, r1) and columns [c0, c1) of the input (N, C, H, W), all batches and channels."""

    kind = "crop"
    box: tuple[int, int, int, int]  # r0, r1, c0, c1

    def validate(self) -> None:
        r0, r1, c0, c1 = self.box
        self._require(0 <= r0 < r1 and 0 <= c0 < c1, f"an empty or negative box {self.box}")

    def reference(self, xs, dtype):
        r0, r1, c0, c1 = self.box
        return np.ascontiguousarray(xs[0][:, :, r0:r1, c0:c1]).astype(dtype)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Place(IntOp):
    """A full-size tensor with the patch (the last input) at rows [r0, r1), columns [c0, c1): the
    rest from the first input when there are two (the patches placed so far), zeros for the first
    patch. The last patch completes the tensor, so zeros never reach a reader."""

    kind = "place"
    box: tuple[int, int, int, int]  # r0, r1, c0, c1
    shape: tuple[int, ...]  # of the output

    def validate(self) -> None:
        self._require(1 <= len(self.inputs) <= 2, "inputs: (patch) or (placed so far, patch)")
        self._require(len(self.shape) == 4, "an NCHW output")

    def reference(self, xs, dtype):
        out = xs[0].astype(dtype, copy=True) if len(xs) == 2 else np.zeros(self.shape, dtype)
        r0, r1, c0, c1 = self.box
        out[:, :, r0:r1, c0:c1] = xs[-1]
        return out
