"""Convolution micro-kernels: im2col + SMLAD (conv_s8), NEON pointwise/im2col (conv_neon_s8) and
depthwise (dwconv_s8, with a NEON path)."""

from __future__ import annotations

import numpy as np

from edgecomp.lower.kernels.packing import pack_conv, pack_conv_wide, pack_pointwise
from edgecomp.lower.kernels.requant import requant_consts
from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import Conv

# A convolution whose every weight is reused over at least this many output pixels keeps its
# weights as int16 (twice the flash): its inner loop then needs no SXTB16, 12 instead of 15
# instructions per 16 MACs. At 512 pixels that is >= ~100 instructions saved per added flash byte;
# below it the flash is better spent elsewhere (ResNet-8's 32x32 layers: +5 KB, -1 M instructions).
WIDE_MIN_PIXELS = 512


def is_dense_conv(op: Conv, graph: IntGraph) -> bool:
    return op.groups == 1


def is_depthwise(op: Conv, graph: IntGraph) -> bool:
    cin = graph.tensors[op.inputs[0]].shape[1]
    return op.groups == cin == op.weight.shape[0] and op.weight.shape[1] == 1


def _params(op: Conv, graph: IntGraph) -> tuple[dict, list[np.ndarray]]:
    """The shape parameters every convolution template takes, and the requantization constants."""
    n, cin, h, wd = graph.tensors[op.inputs[0]].shape
    oh, ow = graph.tensors[op.output].shape[2:]
    cout, _, kh, kw = op.weight.shape
    t, left, _, _ = op.pads
    rq, rq_fn = requant_consts(op)
    p = {"n": n, "cin": cin, "h": h, "w": wd, "cout": cout, "oh": oh, "ow": ow, "kh": kh, "kw": kw,
         "sh": op.strides[0], "sw": op.strides[1], "dh": op.dilations[0], "dw": op.dilations[1],
         "pt": t, "pl": left, "pad_value": int(op.pad_value), "lo": int(op.lo), "hi": int(op.hi), "rq": rq_fn}  # fmt: skip
    return p, rq


def conv_s8(index: int, op: Conv, graph: IntGraph):
    p, rq = _params(op, graph)
    p["fuse_add"] = 0
    k = p["cin"] * p["kh"] * p["kw"]
    p["k"], p["k4"] = k, -(-k // 4) * 4
    # The inner loop unrolled by the largest multiple of 4 up to 64 that divides K4 (all of K4 when
    # it is at most 64), so the loop's own instructions cost a few percent at most.
    p["unroll"] = max(u for u in range(4, 65, 4) if p["k4"] % u == 0)
    # Two int16 im2col columns (one output pixel each), word aligned.
    p["wide"] = int(p["oh"] * p["ow"] >= WIDE_MIN_PIXELS)
    macs = p["n"] * p["cout"] * p["oh"] * p["ow"] * k
    mk = MicroKernel(f"ec_mk{index}_conv_s8", "kernels/conv_s8.c.j2", tuple(sorted(p.items())), 2 * p["k4"] * 2,
                     macs)  # fmt: skip
    w2d = op.weight.reshape(op.weight.shape[0], -1)
    return mk, [pack_conv_wide(w2d) if p["wide"] else pack_conv(w2d), *rq]


def conv_neon_s8(index: int, op: Conv, graph: IntGraph):
    p, rq = _params(op, graph)
    pointwise = p["kh"] == p["kw"] == 1 and p["sh"] == p["sw"] == 1 and (p["oh"], p["ow"]) == (p["h"], p["w"])
    p.update(fuse_add=0, direct=int(pointwise))
    k = p["cin"] * p["kh"] * p["kw"]
    macs = p["n"] * p["cout"] * p["oh"] * p["ow"] * k
    # Scratch: sixteen pixels' im2col columns, [K][16] int8.
    mk = MicroKernel(f"ec_mk{index}_conv_neon_s8", "kernels/conv_neon_s8.c.j2", tuple(sorted(p.items())), 16 * k,
                     macs)  # fmt: skip
    return mk, [pack_pointwise(op.weight.reshape(op.weight.shape[0], -1)), *rq]


def _dwconv(index: int, op: Conv, graph: IntGraph, neon: bool):
    p, rq = _params(op, graph)
    # One channel's plane, padded and widened to int16; its right edge rounded up so that the
    # kernel may read one value past the last window (its product is discarded). The NEON path
    # loads up to 24 values from a window's start (stride 2: VLD2 of 16, then the next 8 for the
    # third tap): 48 bytes of slack after the last row.
    hp = p["pt"] + p["h"] + int(op.pads[2])
    wp = p["pl"] + p["w"] + int(op.pads[3]) + 2
    taps = p["kh"] * p["kw"]
    p["hp"], p["wp"], p["neon"], p["taps8"] = hp, wp, int(neon), -(-taps // 8) * 8
    macs = p["n"] * p["cout"] * p["oh"] * p["ow"] * taps
    mk = MicroKernel(f"ec_mk{index}_dwconv_s8", "kernels/dwconv_s8.c.j2", tuple(sorted(p.items())),
                     hp * wp * 2 + 48, macs)  # fmt: skip
    weights = op.weight.reshape(op.weight.shape[0], -1).astype(np.int16)
    if not neon:
        return mk, [weights, *rq]
    lanes = np.zeros((weights.shape[0], p["taps8"]), np.int16)
    lanes[:, :taps] = weights
    return mk, [weights, *rq, lanes]


def dwconv_s8(index: int, op: Conv, graph: IntGraph):
    return _dwconv(index, op, graph, neon=False)


def dwconv_neon_s8(index: int, op: Conv, graph: IntGraph):
    return _dwconv(index, op, graph, neon=True)


def neon_depthwise(op: Conv, graph: IntGraph) -> bool:
    return is_depthwise(op, graph) and op.strides[1] in (1, 2)
