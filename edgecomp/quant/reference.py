"""The integer reference: numpy execution of an IntGraph with exactly the arithmetic of
fixedpoint.py. It defines the expected result of a quantized build, bit for bit."""

from __future__ import annotations

import numpy as np

from edgecomp.quant.fixedpoint import interp_table, requant
from edgecomp.quant.graph import IntGraph, QOp


def run_int_graph(
    graph: IntGraph, inputs: list[np.ndarray], keep_all: bool = False
) -> list[np.ndarray] | dict:
    """Execute `graph`; returns the outputs (or every tensor, with keep_all)."""
    env: dict[str, np.ndarray] = dict(zip(graph.inputs, inputs, strict=True))
    for op in graph.ops:
        x = [env[i] for i in op.inputs]
        out = graph.tensors[op.output]
        env[op.output] = _OPS[op.kind](op, x, out.dtype).reshape(out.shape)
    return env if keep_all else [env[o] for o in graph.outputs]


def _clamp(v, lo, hi, dtype):
    return np.clip(v, lo, hi).astype(dtype)


def _quantize(op: QOp, x, dtype):
    a = op.attrs
    q = np.rint(x[0].astype(np.float32) / a["scale"]).astype(np.float64)
    return _clamp(q + a["zp"], a["lo"], a["hi"], dtype)


def _dequantize(op: QOp, x, dtype):
    a = op.attrs
    q = np.clip(x[0].astype(np.int32), a["lo"], a["hi"])
    return ((q - a["zp"]).astype(np.float32) * a["scale"]).astype(np.float32)


def _pad(x, pads, value):
    t, left, b, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=value)


def _windows(xp, kernel, strides, dilations):
    """View of shape (N, C, OH, OW, KH, KW)."""
    kh, kw = kernel
    dh, dw = dilations
    sh, sw = strides
    n, c, h, w = xp.shape
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    s = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False
    )


def _conv(op: QOp, x, dtype):
    a = op.attrs
    w = a["weight"].astype(np.int64)
    xp = _pad(x[0].astype(np.int64), a["pads"], a["pad_value"])
    cout, cin_g, kh, kw = w.shape
    g = a["groups"]
    win = _windows(xp, (kh, kw), a["strides"], a["dilations"])  # N, Cin, OH, OW, KH, KW
    n, _, oh, ow = win.shape[:4]
    acc = np.empty((n, cout, oh, ow), np.int64)
    cout_g = cout // g
    for gi in range(g):
        xs = win[:, gi * cin_g : (gi + 1) * cin_g]
        ws = w[gi * cout_g : (gi + 1) * cout_g]
        acc[:, gi * cout_g : (gi + 1) * cout_g] = np.einsum("ncyxhw,ochw->noyx", xs, ws, optimize=True)
    acc += a["bias"].astype(np.int64)[None, :, None, None]
    y = requant(acc, a["mult"][None, :, None, None], a["shift"][None, :, None, None]) + a["out_zp"]
    return _clamp(y, a["lo"], a["hi"], dtype)


def _dense(op: QOp, x, dtype):
    a = op.attrs
    acc = x[0].astype(np.int64) @ a["weight"].astype(np.int64).T + a["bias"].astype(np.int64)
    return _clamp(requant(acc, a["mult"], a["shift"]) + a["out_zp"], a["lo"], a["hi"], dtype)


def _add(op: QOp, x, dtype):
    a = op.attrs
    ai = (x[0].astype(np.int64) - a["a_zp"]) << a["left_shift"]
    bi = (x[1].astype(np.int64) - a["b_zp"]) << a["left_shift"]
    s = requant(ai, a["a_mult"], a["a_shift"]) + requant(bi, a["b_mult"], a["b_shift"])
    return _clamp(requant(s, a["mult"], a["shift"]) + a["out_zp"], a["lo"], a["hi"], dtype)


def _mul(op: QOp, x, dtype):
    a = op.attrs
    p = (x[0].astype(np.int64) - a["a_zp"]) * (x[1].astype(np.int64) - a["b_zp"])
    return _clamp(requant(p, a["mult"], a["shift"]) + a["out_zp"], a["lo"], a["hi"], dtype)


def _prelu(op: QOp, x, dtype):
    a = op.attrs
    v = x[0].astype(np.int64) - a["in_zp"]
    per_channel = (1, -1) + (1,) * (v.ndim - 2) if v.ndim > 1 else (-1,)
    neg = requant(v, a["neg_mult"].reshape(per_channel), a["neg_shift"].reshape(per_channel))
    y = np.where(v >= 0, requant(v, a["mult"], a["shift"]), neg) + a["out_zp"]
    return _clamp(y, a["lo"], a["hi"], dtype)


def _rescale(v, a):
    return requant(v.astype(np.int64) - a["in_zp"], a["mult"], a["shift"]) + a["out_zp"]


def _maxpool(op: QOp, x, dtype):
    a = op.attrs
    lo = np.iinfo(x[0].dtype).min
    win = _windows(_pad(x[0].astype(np.int64), a["pads"], lo), a["kernel"], a["strides"], (1, 1))
    return _clamp(_rescale(win.max(axis=(4, 5)), a), a["lo"], a["hi"], dtype)


def _avgpool(op: QOp, x, dtype):
    a = op.attrs
    xp = _pad(x[0].astype(np.int64) - a["in_zp"], a["pads"], 0)
    acc = _windows(xp, a["kernel"], a["strides"], (1, 1)).sum(axis=(4, 5))
    return _clamp(
        requant(acc, a["mult"][None, None], a["shift"][None, None]) + a["out_zp"], a["lo"], a["hi"], dtype
    )


def _reshape(op: QOp, x, dtype):
    a = op.attrs
    return _clamp(_rescale(x[0], a), a["lo"], a["hi"], dtype)


def _transpose(op: QOp, x, dtype):
    a = op.attrs
    return _clamp(_rescale(np.transpose(x[0], a["perm"]), a), a["lo"], a["hi"], dtype)


def _concat(op: QOp, x, dtype):
    a = op.attrs
    parts = [_rescale(v, r) for v, r in zip(x, a["rescales"], strict=True)]
    return _clamp(np.concatenate(parts, axis=a["axis"]), a["lo"], a["hi"], dtype)


def _lut(op: QOp, x, dtype):
    return op.attrs["table"][x[0].astype(np.int64) + 128].astype(dtype)


def _lut16(op: QOp, x, dtype):
    a = op.attrs
    return _clamp(interp_table(a["table"], x[0].astype(np.int64) + 32768), a["lo"], a["hi"], dtype)


def _softmax(op: QOp, x, dtype):
    a = op.attrs
    v = x[0].astype(np.int64)
    d = v.max(axis=-1, keepdims=True) - v
    t = interp_table(a["table"], d) if a["interpolate"] else a["table"].astype(np.int64)[d]
    total = t.sum(axis=-1, keepdims=True)
    q = (t * a["inv"] + (total << 15)) // (total << 16)
    return _clamp(q + a["out_zp"], a["lo"], a["hi"], dtype)


_OPS = {
    "quantize": _quantize, "dequantize": _dequantize, "conv": _conv, "dense": _dense, "add": _add, "mul": _mul,
    "maxpool": _maxpool, "avgpool": _avgpool, "reshape": _reshape, "transpose": _transpose, "concat": _concat,
    "lut": _lut, "lut16": _lut16, "softmax": _softmax, "prelu": _prelu,
}  # fmt: skip
