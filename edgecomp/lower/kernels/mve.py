"""Helium (MVE, Cortex-M55/M85) int8 micro-kernels: convolution as an int8 im2col matrix product
(conv_mve_s8), depthwise convolution by gathered windows (dwconv_mve_s8), dense layers
(dense_mve_s8). Their inner step is VMLADAVA, 16 int8 MACs into a scalar int32 in one instruction;
weights are stored int8 with each row zero-padded to a multiple of 16 so that every chunk is a full
vector. The requantization runs on four int32 lanes (templates/kernels/ec_mve.h) with the same
arithmetic as ec_dsp.h's scalar forms, so results are bit-identical to the reference."""

from __future__ import annotations

import numpy as np

from edgecomp.lower.kernels.conv import _params as conv_params
from edgecomp.lower.kernels.dense import _params as dense_params
from edgecomp.lower.kernels.int4 import pack_nibbles
from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import Conv, Dense

# Requantizations the vector epilogue implements (ec_mve.h): the SMMLA form and TFLite's dbl31 form.
MVE_REQUANT = ("ec_requant_s8", "ec_requant_s8_q31", "ec_requant_s8_dbl31")
U16_MAX = 65535  # reach of a gather load's 16-bit offsets (conv columns: channel planes)
U8_MAX = 255  # reach of an 8-bit offset gather (depthwise windows)


def _ceil(v: int, m: int) -> int:
    return -(-v // m) * m


def _rows16(w2d: np.ndarray, rows: int) -> np.ndarray:
    """[r, K] int8 -> [rows, K rounded up to 16], zero-padded (rows >= r)."""
    out = np.zeros((rows, _ceil(w2d.shape[1], 16)), np.int8)
    out[: w2d.shape[0], : w2d.shape[1]] = w2d
    return out


def _per_channel(rq: list[np.ndarray], rows: int) -> np.ndarray:
    """[rows][4] int32 (bias, M, addend, -shift) from requant_consts' (bias, pairs, shifts), zero rows after."""
    bias, pairs, sh = (np.asarray(a, np.int64) for a in rq)
    q = np.zeros((rows, 4), np.int64)
    q[: bias.size] = np.stack([bias, pairs[0::2], pairs[1::2], -sh], axis=1)
    return q.astype(np.int32)


def conv_order(p: dict) -> str:
    """How conv_mve_s8 gathers a column: "chan" (a tap's channels by 16-bit-offset gathers, when
    a few channels and the planes are within reach), "row" (a window row by one load: dilation 1
    across, at most 16 wide), else "elem"."""
    hw = p["h"] * p["w"]
    if p["cin"] >= 4 and (min(p["cin"], 8) - 1) * hw <= U16_MAX:
        return "chan"
    if p["dw"] == 1 and p["kw"] <= 16:
        return "row"
    return "elem"


def _s4_chunks(w2d: np.ndarray) -> np.ndarray:
    """[rows, K32] int4 values -> [rows, K32 / 2] bytes: in each chunk of 32 k, byte i holds k = i
    in its low nibble and k = 16 + i in its high one (two VSHR give the two int8 vectors)."""
    rows, k32 = w2d.shape
    g = w2d.astype(np.int64).reshape(rows, k32 // 32, 2, 16) & 0xF
    return np.ascontiguousarray((g[:, :, 0] | (g[:, :, 1] << 4)).astype(np.uint8).reshape(rows, k32 // 2))


def conv_mve_s4(index: int, op: Conv, graph: IntGraph):
    """conv_mve_s8 with int4 weights (w4a8), two per byte, unpacked in the loop."""
    return conv_mve_s8(index, op, graph, s4=True)


def conv_mve_s8(index: int, op: Conv, graph: IntGraph, s4: bool = False):
    p, rq = conv_params(op, graph)
    if p["rq"] not in MVE_REQUANT:
        return None
    order = conv_order(p)
    w = op.weight.astype(np.int8)  # [cout, cin, kh, kw]
    w2d = (w.transpose(0, 2, 3, 1) if order == "chan" else w).reshape(p["cout"], -1)
    k = w2d.shape[1]
    c4 = _ceil(p["cout"], 4)
    k16 = _ceil(k, 32 if s4 else 16)  # column slots (int4: chunks of 32)
    p.update(order=order, k=k, k16=k16, c4=c4, fuse_add=0, s4=int(s4))
    # Per group of four channels: the four biases, Ms, addends, -shifts.
    qc = _per_channel(rq, c4).reshape(c4 // 4, 4, 4).transpose(0, 2, 1).reshape(-1)
    macs = p["n"] * p["cout"] * p["oh"] * p["ow"] * k
    pointwise = p["kh"] == p["kw"] == 1 and p["sh"] == p["sw"] == 1 and not any(op.pads)
    inplace = (0,) if pointwise and p["cout"] <= p["cin"] else ()
    name = "conv_mve_s4" if s4 else "conv_mve_s8"
    mk = MicroKernel(f"ec_mk{index}_{name}", "kernels/conv_mve_s8.c.j2", tuple(sorted(p.items())),
                     2 * p["k16"], macs, inplace)  # fmt: skip
    # Each channel pair's weights interleaved by chunks of 16 bytes ([pair][chunk][2][16]): one pointer.
    rows = np.zeros((c4, k16), np.int8)
    rows[: p["cout"], :k] = w2d
    if s4:
        rows = _s4_chunks(rows).view(np.int8)
    pairs = rows.reshape(c4 // 2, 2, -1, 16).transpose(0, 2, 1, 3)
    return mk, [np.ascontiguousarray(pairs.reshape(-1)), np.ascontiguousarray(qc)]


def dense_mve_s8(index: int, op: Dense, graph: IntGraph):
    p, rq = dense_params(op, graph)
    if p["rq"] not in MVE_REQUANT:
        return None
    c4 = _ceil(p["cout"], 4)
    p.update(c4=c4)
    qc = _per_channel(rq, c4).reshape(c4 // 4, 4, 4).transpose(0, 2, 1).reshape(-1)
    mk = MicroKernel(f"ec_mk{index}_dense_mve_s8", "kernels/dense_mve_s8.c.j2", tuple(sorted(p.items())), 0,
                     p["n"] * p["cout"] * p["k"])  # fmt: skip
    w = np.zeros((c4, p["k"]), np.int8)  # rows as they are (the K tail's loads are predicated), zero rows after
    w[: p["cout"]] = op.weight
    return mk, [w, np.ascontiguousarray(qc)]


# Output rows whose sums a depthwise kernel buffers before requantizing them (int32 each), at most.
DW_ACC_VALUES = 256


def dwconv_mve_s4(index: int, op: Conv, graph: IntGraph):
    """dwconv_mve_s8 with int4 taps (w4a8), two per byte, unpacked per channel."""
    return dwconv_mve_s8(index, op, graph, s4=True)


def dwconv_mve_s8(index: int, op: Conv, graph: IntGraph, s4: bool = False):
    """None when not even one output's window fits a 16-byte gather within 8-bit offsets."""
    p, rq = conv_params(op, graph)
    if p["rq"] not in MVE_REQUANT:
        return None
    hp = p["pt"] + p["h"] + int(op.pads[2])
    wp = p["pl"] + p["w"] + int(op.pads[3])
    kh, kw = p["kh"], p["kw"]

    def block(g: int) -> list[int]:  # the offsets of the block g adjacent outputs' windows cover
        cols = (g - 1) * p["sw"] + (kw - 1) * p["dw"] + 1
        return [ky * p["dh"] * wp + col for ky in range(kh) for col in range(cols)]

    fits = [g for g in (4, 3, 2, 1) if len(block(g)) <= 16 and max(block(g)) <= U8_MAX]
    if not fits:
        return None
    g = fits[0]
    offs = block(g)
    cols = len(offs) // kh
    # Output j of the group reads tap (ky, kx) in lane ky * cols + j * sw + kx * dw of the block: the
    # kernel gathers each channel's taps into those lanes (idx), the others zero (mask, 1 bit per byte).
    idx, masks = [], []
    for j in range(g):
        lane_idx, mask = [0] * 16, 0
        for ky in range(kh):
            for kx in range(kw):
                lane = ky * cols + j * p["sw"] + kx * p["dw"]
                lane_idx[lane], mask = ky * kw + kx, mask | 1 << lane
        idx.append(tuple(lane_idx))
        masks.append(mask)
    ng = -(-p["ow"] // g)
    rows = max(1, min(p["oh"], DW_ACC_VALUES // p["ow"]))
    # The plane (+16: a row's last group may cover bytes past the plane's end; their sums are
    # overwritten or not stored), then the sums of `rows` rows (+ a last group's overflow, + 3: the
    # last vector load).
    acc_off = _ceil(hp * wp + 16, 4)
    p.update(hp=hp, wp=wp, offs=tuple(offs + [0] * (16 - len(offs))), g=g, ng=ng, rows=rows, acc_off=acc_off,
             idx=tuple(idx), masks=tuple(masks), taps=kh * kw, s4=int(s4))
    macs = p["n"] * p["cout"] * p["oh"] * p["ow"] * kh * kw
    inplace = (0,) if p["oh"] * p["ow"] <= p["h"] * p["w"] else ()
    scratch = acc_off + 4 * (rows * p["ow"] + g + 3)
    name = "dwconv_mve_s4" if s4 else "dwconv_mve_s8"
    mk = MicroKernel(f"ec_mk{index}_{name}", "kernels/dwconv_mve_s8.c.j2", tuple(sorted(p.items())),
                     scratch, macs, inplace)  # fmt: skip
    taps = op.weight.reshape(-1).astype(np.int8)
    return mk, [pack_nibbles(taps).view(np.int8) if s4 else np.ascontiguousarray(taps), _per_channel(rq, p["cout"])]
