"""Integer padding: the input's values, surrounded by a constant (an integer on the tensor's grid:
TFLite's PAD uses the zero point, PADV2 its value; ONNX Pad quantizes its value), or by the input's
own values (ONNX modes reflect, edge and wrap: an index mapping, exact on any grid)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.ir import IntOp, register


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Pad(IntOp):
    kind = "pad"
    pads: tuple[tuple[int, int], ...]  # per axis (before, after), >= 0
    value: int
    mode: str = "constant"  # MODES
    interior: tuple[int, ...] = ()  # per axis, constants between neighbours (a transposed conv's stride - 1)

    def validate(self) -> None:
        self._require(all(a >= 0 and b >= 0 for a, b in self.pads), "negative pads (crops) are not compiled")
        self._require(self.mode in MODES, f"unknown pad mode '{self.mode}'")
        self._require(all(i >= 0 for i in self.interior), "interior padding is >= 0")
        self._require(not any(self.interior) or self.mode == "constant", "interior padding is constant")

    def reference(self, xs, dtype):
        if any(self.interior):
            x = xs[0]
            step = [i + 1 for i in self.interior]
            shape = [(d - 1) * s + 1 + a + b for d, s, (a, b) in zip(x.shape, step, self.pads, strict=True)]
            y = np.full(shape, self.value, dtype=dtype)
            y[tuple(slice(a, a + (d - 1) * s + 1, s) for d, s, (a, _) in zip(x.shape, step, self.pads, strict=True))] = x
            return y
        if self.mode == "constant":
            return np.pad(xs[0], self.pads, constant_values=self.value).astype(dtype)
        return np.pad(xs[0], self.pads, mode=self.mode).astype(dtype)  # numpy's modes are ONNX's


MODES = ("constant", "reflect", "edge", "wrap")


@handles("Pad")
def pad_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    out, _ = ex.out(node)
    mode = ex.attrs(node).get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in MODES:
        raise UnsupportedModelError(f"node '{node.name}': integer Pad has modes {', '.join(MODES)}, not '{mode}'")
    if out.scale != x.scale or out.zero_point != x.zero_point:
        raise UnsupportedModelError(f"node '{node.name}': integer Pad needs the same quantization in and out")
    pads = ex.const(node.input[1], node).astype(np.int64).reshape(-1)
    rank = len(x.shape)
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % rank for a in ex.const(node.input[3], node).reshape(-1)]
    full = [(0, 0)] * rank
    for i, a in enumerate(axes):
        full[a] = (int(pads[i]), int(pads[i + len(axes)]))
    for (before, after), d in zip(full, x.shape, strict=True):
        if before < 0 or after < 0:
            raise UnsupportedModelError(f"node '{node.name}': integer Pad with negative pads (a crop) is not compiled")
        if mode == "reflect" and max(before, after) > d - 1:
            raise UnsupportedModelError(
                f"node '{node.name}': a reflect Pad of {max(before, after)} needs an axis longer than that, not {d}"
            )
        if mode == "wrap" and max(before, after) > d:
            raise UnsupportedModelError(f"node '{node.name}': a wrap Pad of {max(before, after)} on an axis of {d}")
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        value = float(ex.real_const(node.input[2], node).reshape(-1)[0])
    qv = int(np.clip(np.rint(value / x.scale) + x.zero_point, np.iinfo(x.dtype).min, np.iinfo(x.dtype).max))
    ex.emit(Pad(inputs=(x.name,), output=out.name, node=node.name, pads=tuple(full), value=qv, mode=mode))
