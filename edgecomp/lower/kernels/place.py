"""The Place micro-kernel (place.c.j2): a patch of patch-based execution written into its box of
the full tensor, in place (the output may take the buffer of the tensor placed so far)."""

from __future__ import annotations

import numpy as np

from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import Place


def place(index: int, op: Place, graph: IntGraph):
    n, c, h, w = op.shape
    if n != 1:
        return None
    r0, r1, c0, c1 = op.box
    elem = np.dtype(graph.tensors[op.output].dtype).itemsize
    has_prev = len(op.inputs) == 2
    p = {"c": c, "h": h, "w": w, "r0": r0, "r1": r1, "c0": c0, "c1": c1, "elem": elem, "has_prev": int(has_prev)}
    return MicroKernel(f"ec_mk{index}_place", "kernels/place.c.j2", tuple(sorted(p.items())), 0, 0,
                       (0,) if has_prev else ()), []  # fmt: skip
