"""Global average pooling (the head of DS-CNN, ResNet-8 and MobileNet): a channel's sum four bytes
per load, then AvgPool's requantization (quant/ops/pool.py) in int64, once per channel."""

from __future__ import annotations

from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import AvgPool


def is_global(op: AvgPool, graph: IntGraph) -> bool:
    """The window is the whole unpadded plane: one output per channel."""
    n, c, h, w = graph.tensors[op.inputs[0]].shape
    return tuple(op.kernel) == (h, w) and not any(op.pads) and tuple(graph.tensors[op.output].shape[2:]) == (1, 1)


def global_avgpool_s8(index: int, op: AvgPool, graph: IntGraph):
    n, c, h, w = graph.tensors[op.inputs[0]].shape
    mult, shift = int(op.mult[0, 0]), int(op.shift[0, 0])
    if not (0 <= mult < 2**31 and 1 <= shift <= 62):
        return None
    p = {"nc": n * c, "hw": h * w, "in_zp": int(op.in_zp), "out_zp": int(op.out_zp), "mult": mult, "shift": shift,
         "lo": int(op.lo), "hi": int(op.hi)}  # fmt: skip
    mk = MicroKernel(f"ec_mk{index}_global_avgpool_s8", "kernels/global_avgpool_s8.c.j2", tuple(sorted(p.items())),
                     0, 0)  # fmt: skip
    return mk, []
