"""Helium (MVE, Cortex-M55/M85) int8 micro-kernels: convolution as an int8 im2col matrix product
(conv_mve_s8), depthwise convolution by gathered windows (dwconv_mve_s8), dense layers
(dense_mve_s8), and their int4-weight (w4a8) forms. Their inner step is VMLADAVA, 16 int8 MACs into
a scalar int32 in one instruction; convolution weights are stored with each row zero-padded to a
multiple of 16 (int4: 32) so that every chunk is a full vector, dense rows tail-predicated. The
requantization runs on four int32 lanes (templates/kernels/ec_mve.h) with the same arithmetic as
ec_dsp.h's scalar forms, so results are bit-identical to the reference (docs/helium.md)."""

from __future__ import annotations

import numpy as np

from edgecomp.lower.kernels.conv import _params as conv_params
from edgecomp.lower.kernels.dense import _params as dense_params
from edgecomp.lower.kernels.int4 import nibble_halves, pack_nibbles
from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import Conv, Dense

# Requantizations the vector epilogue implements (ec_mve.h): the SMMLA form, TFLite's dbl31 form and the
# int64 definition (where its results fit int32: int64_fits).
MVE_REQUANT = ("ec_requant_s8", "ec_requant_s8_q31", "ec_requant_s8_dbl31", "ec_requant_s8_int64")


def int64_fits(op, rq: list[np.ndarray]) -> bool:
    """Whether ec_mve_requant_int64's int32 arithmetic is exact for layer `op`: every channel with
    n <= 32 keeps |acc * M| < 2^(n+30) over its accumulator range (bias +- 128 * sum |w|), so that its
    result before the zero point and the clamp stays within +-2^30 (n > 32 always does)."""
    bias, pairs, sh = (np.asarray(a, np.int64) for a in rq)
    reach = np.abs(bias) + 128 * np.abs(op.weight.reshape(op.weight.shape[0], -1).astype(np.int64)).sum(axis=1)
    mult = np.abs(pairs[0::2])
    small = sh <= 32
    return bool(np.all((reach[small] * mult[small]) >> (sh[small] + 30) == 0))


def _requant_ok(p: dict, op, rq: list[np.ndarray]) -> bool:
    return p["rq"] in MVE_REQUANT and (p["rq"] != "ec_requant_s8_int64" or int64_fits(op, rq))
U16_MAX = 65535  # reach of a gather load's 16-bit offsets (conv columns: channel planes)
U8_MAX = 255  # reach of an 8-bit offset gather (depthwise windows)


def _ceil(v: int, m: int) -> int:
    return -(-v // m) * m


def _shift_words(nsh: np.ndarray) -> np.ndarray:
    """int8 values (a multiple of 4 of them) as little-endian int32 words."""
    return np.ascontiguousarray(nsh.astype(np.int8)).view(np.int32)


def _quads(rq: list[np.ndarray], rows: int) -> np.ndarray:
    """Per group of four channels, 13 words: the four biases, Ms, addends (int32), then the four
    -shifts as int8 in one word (one VLDRB.S32): 13 bytes a channel."""
    q = _per_channel(rq, rows).reshape(rows // 4, 4, 4).transpose(0, 2, 1)  # [quad][field][channel]
    words = [np.concatenate([q[i, :3].reshape(-1), _shift_words(q[i, 3])]) for i in range(rows // 4)]
    return np.ascontiguousarray(np.concatenate(words).astype(np.int32))


def _columns(rq: list[np.ndarray], rows: int) -> np.ndarray:
    """[bias][M][addend] int32 arrays of `rows` channels, then their -shifts as int8 (padded to a word)."""
    q = _per_channel(rq, rows)
    nsh = np.zeros(-(-rows // 4) * 4, np.int64)
    nsh[:rows] = q[:, 3]
    return np.ascontiguousarray(np.concatenate([q[:, :3].T.reshape(-1), _shift_words(nsh)]).astype(np.int32))


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
    return nibble_halves(w2d.astype(np.int64).reshape(-1, 32)).reshape(rows, k32 // 2)


def conv_mve_s4(index: int, op: Conv, graph: IntGraph):
    """conv_mve_s8 with int4 weights (w4a8), two per byte, unpacked in the loop."""
    return conv_mve_s8(index, op, graph, s4=True)


def conv_mve_s8(index: int, op: Conv, graph: IntGraph, s4: bool = False):
    p, rq = conv_params(op, graph)
    if not _requant_ok(p, op, rq):
        return None
    order = conv_order(p)
    w = op.weight.astype(np.int8)  # [cout, cin, kh, kw]
    w2d = (w.transpose(0, 2, 3, 1) if order == "chan" else w).reshape(p["cout"], -1)
    k = w2d.shape[1]
    c4 = _ceil(p["cout"], 4)
    k16 = _ceil(k, 32 if s4 else 16)  # column slots (int4: chunks of 32)
    p.update(order=order, k=k, k16=k16, c4=c4, fuse_add=0, s4=int(s4))
    qc = _quads(rq, c4)
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


def dense_mve_s4(index: int, op: Dense, graph: IntGraph):
    """dense_mve_s8 with int4 weights (w4a8): rows in chunks of 32 k, 16 bytes each."""
    return dense_mve_s8(index, op, graph, s4=True)


def dense_mve_s8(index: int, op: Dense, graph: IntGraph, s4: bool = False):
    p, rq = dense_params(op, graph)
    if not _requant_ok(p, op, rq):
        return None
    c4 = _ceil(p["cout"], 4)
    row_bytes = _ceil(p["k"], 32) // 2 if s4 else p["k"]
    p.update(c4=c4, s4=int(s4), row_bytes=row_bytes)
    qc = _quads(rq, c4)
    name = "dense_mve_s4" if s4 else "dense_mve_s8"
    mk = MicroKernel(f"ec_mk{index}_{name}", "kernels/dense_mve_s8.c.j2", tuple(sorted(p.items())), 0,
                     p["n"] * p["cout"] * p["k"])  # fmt: skip
    if s4:  # K padded to chunks of 32 (the input's tail loads are predicated)
        w = np.zeros((c4, _ceil(p["k"], 32)), np.int8)
        w[: p["cout"], : p["k"]] = op.weight
        return mk, [_s4_chunks(w).view(np.int8), np.ascontiguousarray(qc)]
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
    if not _requant_ok(p, op, rq):
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
    return mk, [pack_nibbles(taps).view(np.int8) if s4 else np.ascontiguousarray(taps), _columns(rq, p["cout"])]
