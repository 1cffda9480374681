"""TFLite's int8 softmax (quant/ops/softmax_tfl.py) as a C kernel: gemmlowp's per-row reciprocal is
integer code with a loop, clearer in C than as a tensor expression, so it is this op's only kernel."""

from __future__ import annotations

import numpy as np

from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import TflSoftmax


def softmax_tfl_s8(index: int, op: TflSoftmax, graph: IntGraph):
    shape = graph.tensors[op.output].shape
    cols = int(shape[-1])
    p = {"rows": int(np.prod(shape)) // cols, "cols": cols}
    mk = MicroKernel(f"ec_mk{index}_softmax_tfl_s8", "kernels/softmax_tfl_s8.c.j2", tuple(sorted(p.items())), 0, 0)
    return mk, [np.asarray(op.exp, np.int32), np.asarray(op.exp12, np.int32)]
