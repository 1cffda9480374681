"""int4-weight micro-kernels (conv_s4, dwconv_s4, dense_s4) and their weight layouts.

Weights of a layer with weight_bits 4 are stored two per byte, low nibble first (as ONNX INT4
and CMSIS-NN's s4 kernels). The dense and convolution kernels never sign-extend a nibble: with
M = 0xF000F000 in a register, `v & M`, `(v << 4) & M`, `(v << 8) & M` and `(v << 12) & M` (one
AND with a shifted operand each) put two nibbles of the word v at the top of its two halfwords,
which are then the int16 values 4096 * w: four SMLAD operand pairs from one word in four
instructions, as many as SMLAD itself. The products are 4096 times the true ones; at most
CHUNK of them are summed (|sum| <= 256 * 8 * 128 * 4096 = 2^30) before an exact ASR 12 adds the
chunk to the accumulator. pack_s4_pairs orders each group of eight weights so those four pairs
are (w6, w7), (w4, w5), (w2, w3), (w0, w1). Results are bit-identical to the integer reference.
"""

from __future__ import annotations

import numpy as np

from edgecomp.lower.kernels.packing import pack_pointwise
from edgecomp.lower.kernels.requant import requant_consts
from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import Conv, Dense

CHUNK = 256  # products of 4096 * w * x summed before the ASR 12: 256 * 2^22 = 2^30 < 2^31


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """int values in [-8, 7] (1-D) -> uint8, two per byte, value 2i in the low nibble of byte i
    (an odd count leaves the last high nibble zero)."""
    v = np.asarray(values, np.int64).reshape(-1) & 0xF
    if v.size % 2:
        v = np.concatenate([v, [0]])
    return np.ascontiguousarray((v[0::2] | (v[1::2] << 4)).astype(np.uint8))


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """pack_nibbles' inverse: the first `count` values as int8."""
    b = np.asarray(packed, np.uint8).astype(np.int16)
    v = np.stack([b & 0xF, b >> 4], axis=1).reshape(-1)[:count]
    return ((v ^ 8) - 8).astype(np.int8)


def pack_s4_pairs(w2d: np.ndarray) -> np.ndarray:
    """[rows, K] int4 values -> [rows, K8 / 2] uint8 (K rounded up to 8, zero padded; each row
    starts on a word): each group of eight (w0..w7) as bytes (w0 | w2 << 4, w4 | w6 << 4,
    w1 | w3 << 4, w5 | w7 << 4), so that for the word v, (v << 12) & 0xF000F000 is the int16 pair
    4096 * (w0, w1), (v << 8) & .. (w2, w3), (v << 4) & .. (w4, w5) and v & .. (w6, w7)."""
    rows, k = w2d.shape
    k8 = -(-k // 8) * 8
    padded = np.zeros((rows, k8), np.int64)
    padded[:, :k] = w2d
    g = padded.reshape(rows, k8 // 8, 8) & 0xF
    lo = g[:, :, [0, 4, 1, 5]]
    hi = g[:, :, [2, 6, 3, 7]]
    return np.ascontiguousarray((lo | (hi << 4)).astype(np.uint8).reshape(rows, k8 // 2))


def pack_s4_rows(w2d: np.ndarray) -> np.ndarray:
    """pack_s4_pairs, then each group of four rows interleaved word by word ([r0 word j][r1 word j]
    [r2 word j][r3 word j][r0 word j+1]...: two LDRDs fetch four rows' next eight weights); the
    rows after the last group of four as they are."""
    packed = pack_s4_pairs(w2d)
    rows, rb = packed.shape
    full = rows // 4 * 4
    quads = packed[:full].reshape(rows // 4, 4, rb // 4, 4).transpose(0, 2, 1, 3).reshape(-1)
    return np.ascontiguousarray(np.concatenate([quads, packed[full:].reshape(-1)]).astype(np.uint8))


def compact_requant(rq: list[np.ndarray], fn: str, zp: int) -> tuple[list[np.ndarray], str]:
    """The requantization constants without the second word of each channel's pair where the kernel
    can compute it (int4 models are chosen for flash: 4 bytes a channel): mode "compact" when every
    SMMLA addend has the form 2^(sh-1) + zp * 2^sh (no constant channel), "int64" for
    ec_requant_s8_int64, whose second word is the zero point. Else as they are: mode "pairs"."""
    bias, pairs, sh = rq
    if fn not in ("ec_requant_s8", "ec_requant_s8_q31", "ec_requant_s8_int64"):  # TFLite's: as it is
        return rq, "pairs"
    mult, addend = pairs.reshape(-1, 2)[:, 0].astype(np.int64), pairs.reshape(-1, 2)[:, 1].astype(np.int64)
    if fn == "ec_requant_s8_int64":
        assert np.all(addend == zp), "ec_requant_s8_int64 pairs are (M, zero point)"
        return [bias, mult.astype(np.int32), sh], "int64"
    s = sh.astype(np.int64)
    computed = (np.int64(1) << np.maximum(s - 1, 0)) + (np.int64(zp) << s)
    if np.all(mult != 0) and np.all(s >= 1) and np.all(addend == computed):
        return [bias, mult.astype(np.int32), sh], "compact"
    return rq, "pairs"


def is_int4(op, graph: IntGraph) -> bool:
    return op.weight_bits == 4


def _conv_params(op: Conv, graph: IntGraph) -> tuple[dict, list[np.ndarray]]:
    from edgecomp.lower.kernels.conv import _params

    return _params(op, graph)


def conv_s4(index: int, op: Conv, graph: IntGraph):
    """Dense convolution (groups 1): im2col of two pixels into int16 columns, two channels x two
    pixels per step of eight weights."""
    p, rq = _conv_params(op, graph)
    rq, p["rq_mode"] = compact_requant(rq, p["rq"], int(op.out_zp))
    k = p["cin"] * p["kh"] * p["kw"]
    p["k"], p["k8"], p["chunk"], p["zp"] = k, -(-k // 8) * 8, CHUNK, int(op.out_zp)
    macs = p["n"] * p["cout"] * p["oh"] * p["ow"] * k
    mk = MicroKernel(f"ec_mk{index}_conv_s4", "kernels/conv_s4.c.j2", tuple(sorted(p.items())), 2 * p["k8"] * 2,
                     macs)  # fmt: skip
    return mk, [pack_s4_pairs(op.weight.reshape(op.weight.shape[0], -1)).reshape(-1), *rq]


def dwconv_s4(index: int, op: Conv, graph: IntGraph, neon: bool = False):
    """Depthwise: the packed weights (all channels' taps in a row, two per byte) are unpacked to
    int16 once per call into scratch, then dwconv_s8.c.j2's loops run on them."""
    from edgecomp.lower.kernels.conv import _dwconv

    mk, consts = _dwconv(index, op, graph, neon)
    taps = op.weight.shape[2] * op.weight.shape[3]
    cout = op.weight.shape[0]
    p = dict(mk.params)
    p["taps"] = taps
    p["s8_scratch"] = -(-mk.scratch_bytes // 16) * 16
    unpacked = cout * taps * 2 + (cout * p["taps8"] * 2 if neon else 0)
    name = "dwconv_neon_s4" if neon else "dwconv_s4"
    mk = MicroKernel(f"ec_mk{index}_{name}", "kernels/dwconv_s4.c.j2", tuple(sorted(p.items())),
                     p["s8_scratch"] + unpacked, mk.macs)  # fmt: skip
    return mk, [pack_nibbles(op.weight.reshape(-1)), *consts[1:4]]


def dwconv_neon_s4(index: int, op: Conv, graph: IntGraph):
    return dwconv_s4(index, op, graph, neon=True)


def dense_s4(index: int, op: Dense, graph: IntGraph):
    """Dense: the input widened to int16 once (scratch), then four rows per step of eight weights,
    in a body shared by the model's dense_s4 layers (per requantization form)."""
    (n, k), cout = graph.tensors[op.inputs[0]].shape, op.weight.shape[0]
    if op.rounding != "single":
        return None
    rq, rq_fn = requant_consts(op)
    rq, mode = compact_requant(rq, rq_fn, int(op.out_zp))
    p = {"n": n, "k": k, "k8": -(-k // 8) * 8, "cout": cout, "lo": int(op.lo), "hi": int(op.hi),
         "zp": int(op.out_zp), "rq_mode": mode, "chunk": CHUNK}  # fmt: skip
    mk = MicroKernel(f"ec_mk{index}_dense_s4", "kernels/dense_s4.c.j2", tuple(sorted(p.items())), 2 * p["k8"],
                     n * cout * k)  # fmt: skip
    return mk, [pack_s4_rows(op.weight), *rq]


def nibble_halves(v: np.ndarray) -> np.ndarray:
    """[groups, 2h] int4 values -> [groups, h] bytes: value j low, value j + h high (so that one
    SHL+SSHR of the bytes gives the first h values in order and one SSHR the next h)."""
    h = v.shape[1] // 2
    return ((v[:, :h] & 0xF) | ((v[:, h:] & 0xF) << 4)).astype(np.uint8)


def pack_s4_neon_conv(w2d: np.ndarray) -> np.ndarray:
    """[cout, K] int4 -> conv_neon_s8's [cout/4][K][4] order, two per byte: each group of four
    channels 2K bytes, each four k's 16 values as 8 bytes (value j | value j + 8 << 4: one SSHR and
    one SHL+SSHR give the eight int8 lanes of two k's each), a last K % 4 k's 4 values as 2 bytes."""
    flat = pack_pointwise(w2d).astype(np.int64)
    cout, k = w2d.shape
    groups = flat.reshape(-1, 4 * k)
    k4 = k // 4 * 4
    full = nibble_halves(groups[:, : 4 * k4].reshape(-1, 16)).reshape(groups.shape[0], -1)
    tail = nibble_halves(groups[:, 4 * k4 :].reshape(-1, 4)).reshape(groups.shape[0], -1)
    return np.ascontiguousarray(np.concatenate([full, tail], axis=1).reshape(-1))


def pack_s4_neon_dense(w: np.ndarray) -> np.ndarray:
    """[cout, K] int4 -> rows of K // 16 * 8 + ceil(K % 16 / 2) bytes: each thirty-two weights as
    16 bytes (weight j | weight j + 16 << 4), then (K % 32 >= 16) sixteen as 8 bytes (weight j |
    weight j + 8 << 4), the last K % 16 two per byte, low nibble first."""
    rows, k = w.shape
    k32, k16 = k // 32 * 32, k // 16 * 16
    v = np.asarray(w, np.int64)
    parts = [nibble_halves(v[:, :k32].reshape(-1, 32)).reshape(rows, -1)]
    if k16 > k32:
        parts.append(nibble_halves(v[:, k32:k16].reshape(-1, 16)).reshape(rows, -1))
    if k > k16:
        parts.append(np.stack([pack_nibbles(r) for r in v[:, k16:]]))
    return np.ascontiguousarray(np.concatenate(parts, axis=1).reshape(-1))


def conv_neon_s4(index: int, op: Conv, graph: IntGraph):
    """conv_neon_s8 with int4 weights (p.s4): each eight bytes unpacked to sixteen int16 lanes by
    SHL/SSHR and SXTL in the loop."""
    from edgecomp.lower.kernels.conv import conv_neon_s8

    mk, consts = conv_neon_s8(index, op, graph)
    p = dict(mk.params)
    p["s4"] = 1
    mk = MicroKernel(f"ec_mk{index}_conv_neon_s4", mk.template, tuple(sorted(p.items())), mk.scratch_bytes, mk.macs)
    return mk, [pack_s4_neon_conv(op.weight.reshape(op.weight.shape[0], -1)), *consts[1:]]


def dense_neon_s4(index: int, op: Dense, graph: IntGraph):
    """dense_neon_s8 with int4 weights (p.s4): thirty-two per sixteen bytes, unpacked by SHL/SSHR into
    two int8 vectors, multiplied by the input's (SMULL, three SMLAL into int16: |sum| <= 4 * 8 * 128)."""
    from edgecomp.lower.kernels.dense import dense_neon_s8

    mk, consts = dense_neon_s8(index, op, graph)
    p = dict(mk.params)
    k = p["k"]
    p["s4"], p["rb"] = 1, k // 16 * 8 + -(-(k % 16) // 2)
    mk = MicroKernel(f"ec_mk{index}_dense_neon_s4", mk.template, tuple(sorted(p.items())), mk.scratch_bytes, mk.macs)
    return mk, [pack_s4_neon_dense(op.weight), *consts[1:]]
