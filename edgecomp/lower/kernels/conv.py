"""Convolution micro-kernels: the blocked matrix product of Cortex-M DSP cores (conv_mm_s8, its
pointwise form conv_pw_s8: lower/kernels/mm.py), im2col + SMLAD (conv_s8, for the requantizations
conv_mm_s8 leaves out), NEON pointwise/im2col (conv_neon_s8), 3x3 depthwise over buffered int16 rows
(dwconv_rows_s8) and any other depthwise (dwconv_s8, with a NEON path)."""

from __future__ import annotations

import numpy as np

from edgecomp.lower.kernels import mm
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


def is_pointwise(op: Conv, graph: IntGraph) -> bool:
    """1x1, stride 1, unpadded: each output pixel reads only its own input pixel."""
    return op.groups == 1 and op.weight.shape[2:] == (1, 1) and tuple(op.strides) == (1, 1) and not any(op.pads)


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


# Output pixels up to which conv_mm_s8 computes an odd last pixel on its own (p.tail1).
TAIL1_MAX_PIXELS = 64

# Requantizations the matrix-product kernel's epilogue implements (others: conv_s8).
MM_REQUANT = ("ec_requant_s8", "ec_requant_s8_q31", "ec_requant_s8_dbl31")


def conv_mm_s8(index: int, op: Conv, graph: IntGraph, name: str = "conv_mm_s8", narrow: bool = False,
               wide: bool = False):  # fmt: skip
    """Two channels x two pixels per step over an int16 im2col block (mm.py): weights as int16
    records in flash (w16), int8 records widened into scratch per block of pixels (w16s), or int8
    records widened in the loop (w8). A pointwise layer with no more outputs than inputs may write
    its output over its input (MicroKernel.inplace): every block of pixels is gathered into scratch
    before its outputs are written, and output (c, p) lands on input (c, p). `narrow`: int8 records
    (w16s or w8) even where int16 ones would be faster (--max-flash, --optimize size); `wide`: int16
    records wherever they are faster, whatever their flash (--optimize speed)."""
    p, (bias, pairs, sh) = _params(op, graph)
    if p["rq"] not in MM_REQUANT or p["n"] * p["oh"] * p["ow"] < 1:
        return None
    kind = mm.im2col_kind(p)
    order = mm.slot_order(kind, p["cin"], p["kh"], p["kw"])
    k = p["cin"] * p["kh"] * p["kw"]
    p.update(kind=kind, k=k, k4=order.size, g=order.size // 4, fuse_add=0)
    p.update(mm.plan(p, mm.scratch_room(op, graph), narrow, wide))
    dbl = p["rq"] == "ec_requant_s8_dbl31"
    w2d = op.weight.reshape(p["cout"], -1).astype(np.int64)
    bias = bias.astype(np.int64)
    mult, second, sh = pairs[0::2].astype(np.int64), pairs[1::2].astype(np.int64), sh.astype(np.int64)
    live = mult != 0
    shift = int(sh[live][0]) if live.any() and np.all(sh[live] == sh[live][0]) else -1
    if not live.any():
        shift = 0
    if shift > 0:  # constant channels (sh 0) take the common shift in their addend
        second = np.where(live, second, second << shift)
    if p["mode"] == "w16" and dbl:  # the accumulator doubled in the weights and bias (SMMLAR's 2 acc)
        w2d, bias = w2d * 2, bias * 2
    elif p["mode"] == "w16" and shift < 0:
        common = mm.common_shift(w2d, bias, mult, second, sh)
        if common is not None:
            shift, d, second = common
            w2d, bias = w2d << d[:, None], bias << d
    stream = mm.records(w2d, bias, mult, second, None if shift >= 0 else sh, order, wide=p["mode"] == "w16")
    p.update(shift=shift, dbl=int(dbl))
    p["rec16"] = 16 + 16 * p["g"] + 16 + (8 if shift < 0 else 0)
    p["rec8"] = p["rec16"] - 8 * p["g"]
    # An odd last pixel computed alone (its lane of a pair: 6 instructions a group, not 10) saves about
    # 1/(P + 1) of the work for ~200 B of code: worth it on small planes only.
    p["tail1"] = int(p["oh"] * p["ow"] % 2 == 1 and p["oh"] * p["ow"] <= TAIL1_MAX_PIXELS)
    xblock = (p["block"] // 2 + p["oh"] * p["ow"] % 2) * 16 * p["g"]  # an odd last pixel's pair
    scratch = xblock + (p["rec16"] if p["mode"] == "w16s" else 0)
    macs = p["n"] * p["cout"] * p["oh"] * p["ow"] * k
    inplace = (0,) if kind == "pw" and p["cout"] <= p["cin"] else ()
    mk = MicroKernel(f"ec_mk{index}_{name}", "kernels/conv_mm_s8.c.j2", tuple(sorted(p.items())), scratch, macs,
                     inplace)  # fmt: skip
    return mk, [stream]


def conv_pw_s8(index: int, op: Conv, graph: IntGraph):
    return conv_mm_s8(index, op, graph, "conv_pw_s8")


def conv_mm_s8_narrow(index: int, op: Conv, graph: IntGraph):
    return conv_mm_s8(index, op, graph, narrow=True)


def conv_pw_s8_narrow(index: int, op: Conv, graph: IntGraph):
    return conv_mm_s8(index, op, graph, "conv_pw_s8", narrow=True)


def conv_mm_s8_wide(index: int, op: Conv, graph: IntGraph):
    return conv_mm_s8(index, op, graph, wide=True)


def conv_pw_s8_wide(index: int, op: Conv, graph: IntGraph):
    return conv_mm_s8(index, op, graph, "conv_pw_s8", wide=True)


def is_depthwise_3x3(op: Conv, graph: IntGraph) -> bool:
    return (is_depthwise(op, graph) and op.weight.shape[2:] == (3, 3) and tuple(op.dilations) == (1, 1)
            and op.strides[0] == op.strides[1] in (1, 2))  # fmt: skip


# Scratch a depthwise layer may always take for its rows (the whole padded plane of a small layer).
DW_MIN_SCRATCH = 2048


def dwconv_rows_s8(index: int, op: Conv, graph: IntGraph):
    """3x3 depthwise convolution over a buffer of padded input rows (templates/kernels/dwconv_rows_s8.c.j2):
    each row widened once into int16 and split into even and odd columns, so that one LDR gives a
    window's (kx0, kx2) and another its kx1 for two neighbouring outputs; four outputs per step.
    The buffer holds as many rows as the scratch room allows (the whole plane when it can), rows
    moved up when it is full. In place: a channel's output row is written only after the input rows
    it overlays are in the buffer, so the output may take the input's buffer."""
    p, (bias, pairs, sh) = _params(op, graph)
    if p["rq"] not in ("ec_requant_s8", "ec_requant_s8_q31"):
        return None
    c = p["cout"]
    w = op.weight.reshape(c, 9).astype(np.int64)
    mult, addend, sh = pairs[0::2].astype(np.int64), pairs[1::2].astype(np.int64), sh.astype(np.int64)
    common = mm.common_shift(w, bias.astype(np.int64), mult, addend, sh)
    b = bias.astype(np.int64)
    if common is not None:
        shift, d, addend = common
        w, b = w << d[:, None], b << d
    else:  # channels whose shifts differ too much to share one: each record carries its shift
        shift = -1
    lo16 = lambda v: v & 0xFFFF  # noqa: E731
    own = sh if shift < 0 else np.zeros_like(sh)  # beside w21: ASR by register reads the low byte
    recs = np.stack([lo16(w[:, 0]) | (w[:, 2] << 16), lo16(w[:, 3]) | (w[:, 5] << 16), lo16(w[:, 6]) | (w[:, 8] << 16),
                     lo16(w[:, 1]) | (w[:, 4] << 16), lo16(own) | (w[:, 7] << 16), b, mult, addend], axis=1)  # fmt: skip
    recs = ((recs + 2**31) % 2**32 - 2**31).astype(np.int32)
    s = p["sh"]
    pb, pr = int(op.pads[2]), int(op.pads[3])
    wp = p["pl"] + p["w"] + pr
    we = -(-wp // 2) + 2  # even and odd columns, each with slack for the last step's word loads
    hp = p["pt"] + p["h"] + pb
    rowb = 4 * we
    room = max(mm.scratch_room(op, graph), DW_MIN_SCRATCH)
    rows = hp if hp * rowb <= room else max(3 + s, room // rowb)
    p.update(shift=shift, we=we, hp=hp, rows=rows, rowb=rowb)
    inplace = (0,) if p["oh"] <= p["h"] and p["ow"] <= p["w"] and p["pt"] <= 2 else ()
    macs = p["n"] * c * p["oh"] * p["ow"] * 9
    mk = MicroKernel(f"ec_mk{index}_dwconv_rows_s8", "kernels/dwconv_rows_s8.c.j2", tuple(sorted(p.items())),
                     rows * rowb, macs, inplace)  # fmt: skip
    return mk, [recs]


# Input channels up to which a pointwise layer keeps a pixel pair's inputs in registers (conv_pw_few_s8).
FEW_MAX_CIN = 8


def is_pointwise_few(op: Conv, graph: IntGraph) -> bool:
    """Few, paired input channels, more outputs than inputs (a narrowing layer keeps conv_pw_s8, which
    may run in place of its input)."""
    cin = graph.tensors[op.inputs[0]].shape[1]
    return is_pointwise(op, graph) and cin <= FEW_MAX_CIN and cin % 2 == 0 and op.weight.shape[0] > cin


def conv_pw_few_s8(index: int, op: Conv, graph: IntGraph):
    """Pointwise convolution over few (even, <= 8) input channels (templates/kernels/conv_pw_few_s8.c.j2):
    a pixel pair's inputs gathered into registers once, then two outputs per channel record. Weights
    int16 in the record, pre-scaled to the channels' common shift (mm.common_shift; None without one,
    or for TFLite's rounding: conv_pw_s8 takes those)."""
    p, (bias, pairs, sh) = _params(op, graph)
    if p["rq"] not in ("ec_requant_s8", "ec_requant_s8_q31") or p["oh"] * p["ow"] < 2:
        return None
    c, cin = p["cout"], p["cin"]
    w = op.weight.reshape(c, cin).astype(np.int64)
    mult, addend, sh = pairs[0::2].astype(np.int64), pairs[1::2].astype(np.int64), sh.astype(np.int64)
    common = mm.common_shift(w, bias.astype(np.int64), mult, addend, sh)
    if common is None:
        return None
    shift, d, addend = common
    w, b = w << d[:, None], bias.astype(np.int64) << d
    words = [(w[:, 2 * j] & 0xFFFF) | (w[:, 2 * j + 1] << 16) for j in range(cin // 2)]
    recs = np.stack([b, b, *words, mult, addend], axis=1)
    recs = ((recs + 2**31) % 2**32 - 2**31).astype(np.int32)
    p["shift"] = shift
    macs = p["n"] * c * p["oh"] * p["ow"] * cin
    mk = MicroKernel(f"ec_mk{index}_conv_pw_few_s8", "kernels/conv_pw_few_s8.c.j2", tuple(sorted(p.items())), 0, macs)
    return mk, [recs]
