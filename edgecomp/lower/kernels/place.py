"""The micro-kernels of patch-based execution: Place (place.c.j2) writes a patch into its box of
the full tensor, in place (the output may take the buffer of the tensor placed so far); Crop
(crop.c.j2) takes a window, in place too (the output may take its input's buffer)."""

from __future__ import annotations

import numpy as np

from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import Crop, Place


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


def crop(index: int, op: Crop, graph: IntGraph):
    """A window of the tensor, copied forward row by row: every row lands at or before where it is
    read from, so the output may take the input's buffer (the patching transform runs a crop where
    its input dies)."""
    n, c, h, w = graph.tensors[op.inputs[0]].shape
    if n != 1 or graph.tensors[op.output].dtype != graph.tensors[op.inputs[0]].dtype:
        return None
    r0, r1, c0, c1 = op.box
    elem = np.dtype(graph.tensors[op.output].dtype).itemsize
    p = {"c": c, "h": h, "w": w, "r0": r0, "r1": r1, "c0": c0, "c1": c1, "elem": elem}
    return MicroKernel(f"ec_mk{index}_crop", "kernels/crop.c.j2", tuple(sorted(p.items())), 0, 0, (0,)), []
