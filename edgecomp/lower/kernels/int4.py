"""int4-weight micro-kernels (conv_s4, dwconv_s4, dense_s4) and their weight layouts.

Weights of a layer with weight_bits 4 are stored two per byte, low nibble first (as ONNX INT4
and CMSIS-NN's s4 kernels). The kernels unpack them where they are read: with the DSP extension
a word of eight nibbles becomes four SMLAD operand pairs in six instructions ((w << 4) & 0xF0F0F0F0
and w & 0xF0F0F0F0, one AND with a shifted operand each, put each nibble at the top of its byte;
SXTB16 / SXTB16 ROR 8 widen bytes 0,2 and 1,3), which carry 16 * w: the sum is 16 times the true one, exact, and is shifted back (ASR 4)
before the bias. pack_s4_pairs orders each group of eight weights so those four pairs are
(w0, w1), (w2, w3), (w4, w5), (w6, w7). Results are bit-identical to the integer reference.
"""

from __future__ import annotations

import numpy as np

from edgecomp.lower.kernels.requant import requant_consts
from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import Conv, Dense

# The sum of 16 * w * x over K products must stay inside int32: K * 16 * 8 * 128 < 2^31.
MAX_K = (1 << 31) // (16 * 8 * 128) - 1


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
    starts on a word): each group of eight (w0..w7) as bytes (w0 | w4 << 4, w2 | w6 << 4,
    w1 | w5 << 4, w3 | w7 << 4), so that SXTB16 of ((word << 4) & 0xF0F0F0F0) gives (w0, w1) * 16, its ROR 8
    (w2, w3) * 16, and of (word & 0xF0F0F0F0) (w4, w5) * 16 and (w6, w7) * 16."""
    rows, k = w2d.shape
    k8 = -(-k // 8) * 8
    padded = np.zeros((rows, k8), np.int64)
    padded[:, :k] = w2d
    g = padded.reshape(rows, k8 // 8, 8) & 0xF
    lo = g[:, :, [0, 2, 1, 3]]
    hi = g[:, :, [4, 6, 5, 7]]
    return np.ascontiguousarray((lo | (hi << 4)).astype(np.uint8).reshape(rows, k8 // 2))


def is_int4(op, graph: IntGraph) -> bool:
    return op.weight_bits == 4


def _conv_params(op: Conv, graph: IntGraph) -> tuple[dict, list[np.ndarray]]:
    from edgecomp.lower.kernels.conv import _params

    return _params(op, graph)


def conv_s4(index: int, op: Conv, graph: IntGraph):
    """Dense convolution (groups 1): im2col of two pixels into int16 columns, two channels x two
    pixels per step of eight weights."""
    p, rq = _conv_params(op, graph)
    k = p["cin"] * p["kh"] * p["kw"]
    if k > MAX_K:
        return None
    p["k"], p["k8"] = k, -(-k // 8) * 8
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
    """Dense: the input widened to int16 once (scratch), then two rows per step of eight weights."""
    (n, k), cout = graph.tensors[op.inputs[0]].shape, op.weight.shape[0]
    if k > MAX_K:
        return None
    rq, rq_fn = requant_consts(op)
    p = {"n": n, "k": k, "k8": -(-k // 8) * 8, "cout": cout, "lo": int(op.lo), "hi": int(op.hi), "rq": rq_fn}
    mk = MicroKernel(f"ec_mk{index}_dense_s4", "kernels/dense_s4.c.j2", tuple(sorted(p.items())), 2 * p["k8"],
                     n * cout * k)  # fmt: skip
    return mk, [pack_s4_pairs(op.weight).reshape(-1), *rq]
