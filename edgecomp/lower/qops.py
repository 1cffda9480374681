"""Integer kernels as TVM tensor expressions, and the Relax module that strings them together.

Each IntGraph op becomes one TE compute (with its padding and requantize epilogue inside), emitted
with `BlockBuilder.emit_te`; constants (int8 weights, int32 biases, multipliers, shifts, float
scales of the model's edges) are Relax constants, so they land in the weights file with exact
values. The arithmetic is fixedpoint.py's, the same as the numpy reference's.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import tvm
from tvm import relax, te, tirx

from edgecomp.codegen.cnames import c_identifier
from edgecomp.errors import UnsupportedModelError
from edgecomp.lower import kernels
from edgecomp.lower.kernels import Chosen
from edgecomp.lower.model import MicroKernel
from edgecomp.quant import ops
from edgecomp.quant import tflite_arith as A
from edgecomp.quant.ir import IntGraph, IntOp, Rescale
from edgecomp.quant.ops.avgpool_tfl import tap_counts

I32, I64 = "int32", "int64"


def _c(v, dtype=I64):
    return tirx.const(int(v), dtype)


def _requant(acc, mult, shift):
    """(acc * mult + 2**(shift-1)) >> shift, in int64; mult/shift are int64 expressions."""
    return (acc * mult + (_c(1) << (shift - _c(1)))) >> shift


def _requant_double(acc, mult, shift):
    """fixedpoint.requant_double: TFLite's two roundings, s = 31 - shift; int64 expressions."""
    s = _c(31) - shift
    x = acc * (_c(1) << tirx.Max(s, _c(0)))  # a multiplication: << of a negative value is undefined in C
    h = (x * mult + (_c(1) << _c(30))) >> _c(31)  # SaturatingRoundingDoublingHighMul: ties up
    e = tirx.Max(-s, _c(0))
    # RoundingDivideByPOT (ties away from zero) as (h + ((2^e - (h < 0)) >> 1)) >> e: h read twice, not
    # three times, so that chained requantizations (an Add's three) stay small expressions for TVM.
    return (h + (((_c(1) << e) - tirx.Select(h < _c(0), _c(1), _c(0))) >> _c(1))) >> e


def _requant_by(rounding: str):
    return _requant if rounding == "single" else _requant_double


def _broadcast(t, idx, out_rank: int):
    """t[...] at output index `idx` under numpy broadcasting (t's dims aligned right, size 1 repeated)."""
    shape = [int(d) for d in t.shape]
    lead = out_rank - len(shape)
    return t[tuple(_c(0, "int32") if d == 1 else idx[lead + k] for k, d in enumerate(shape))]


def _clamp(v, lo, hi, dtype):
    """Clamp to [lo, hi] in int64, then narrow to `dtype`."""
    return tirx.Max(tirx.Min(v.astype(I64), _c(hi)), _c(lo)).astype(dtype)


def _rescale_expr(v, r: Rescale):
    """Integer rescale of one value to the output's scale and zero point (identity when equal)."""
    v = v.astype(I64)
    if r.is_identity:
        return v
    return _requant_by(r.rounding)(v - _c(r.in_zp), _c(r.mult), _c(r.shift)) + _c(r.out_zp)


def _acc_dtype(x) -> str:
    """int8 x int8 products sum safely in int32; int16 x int8 sums can exceed it, so use int64."""
    return I64 if x.dtype == "int16" else I32


def _weight_reader(w, a):
    """Index -> the weight's value expression: w itself, or for int4 weights (a.weight_bits 4) the
    nibble of the packed byte array w (two per byte, low nibble first, in a.weight's row-major
    order; lower/kernels/int4.py pack_nibbles) sign-extended, unpacked where it is read."""
    if a.weight_bits != 4:
        return lambda *idx: w[idx]
    dims = a.weight.shape

    def read(*idx):
        flat = _c(0, I32)
        for i, d in zip(idx, dims, strict=True):
            flat = flat * _c(d, I32) + i
        byte = w[flat >> _c(1, I32)].astype(I32)
        nib = (byte >> ((flat & _c(1, I32)) * _c(4, I32))) & _c(15, I32)
        return (nib ^ _c(8, I32)) - _c(8, I32)

    return read


def _conv(x, w, bias, mult, shift, *, a, dtype):
    n, cin, h, wd = (int(d) for d in x.shape)
    cout, cin_g, kh, kw = (int(d) for d in a.weight.shape)
    wr = _weight_reader(w, a)
    t, left, b, r = a.pads
    sh, sw = a.strides
    dh, dw = a.dilations
    cout_g = cout // a.groups
    oh = (h + t + b - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + left + r - (kw - 1) * dw - 1) // sw + 1
    acc_t = _acc_dtype(x)
    pad = te.compute(
        (n, cin, h + t + b, wd + left + r),
        lambda i, c, y, xx: tirx.if_then_else(
            tirx.all(y >= t, y < h + t, xx >= left, xx < wd + left),
            x[i, c, y - t, xx - left].astype(acc_t), _c(a.pad_value, acc_t)),
        name="pad",
    )  # fmt: skip
    rc, ry, rx = (
        te.reduce_axis((0, cin_g), "rc"),
        te.reduce_axis((0, kh), "ry"),
        te.reduce_axis((0, kw), "rx"),
    )
    acc = te.compute(
        (n, cout, oh, ow),
        lambda i, o, y, xx: te.sum(
            pad[i, (o // cout_g) * cin_g + rc, y * sh + ry * dh, xx * sw + rx * dw] * wr(o, rc, ry, rx).astype(acc_t),
            axis=[rc, ry, rx]),
        name="acc",
    )  # fmt: skip
    return te.compute(
        (n, cout, oh, ow),
        lambda i, o, y, xx: _clamp(
            _requant_by(a.rounding)(acc[i, o, y, xx].astype(I64) + bias[o].astype(I64), mult[o].astype(I64), shift[o].astype(I64))
            + _c(a.out_zp), a.lo, a.hi, dtype),
        name="requant",
    )  # fmt: skip


def _dense(x, w, bias, mult, shift, *, a, dtype):
    n, k = (int(d) for d in x.shape)
    o = int(a.weight.shape[0])
    wr = _weight_reader(w, a)
    rk = te.reduce_axis((0, k), "rk")
    acc_t = _acc_dtype(x)
    acc = te.compute(
        (n, o), lambda i, j: te.sum(x[i, rk].astype(acc_t) * wr(j, rk).astype(acc_t), axis=rk), name="acc"
    )
    return te.compute(
        (n, o),
        lambda i, j: _clamp(_requant_by(a.rounding)(acc[i, j].astype(I64) + bias[j].astype(I64), mult[j].astype(I64),
                                                    shift[j].astype(I64)) + _c(a.out_zp), a.lo, a.hi, dtype),
        name="requant",
    )  # fmt: skip


def _operands(x, y, shape):
    """x[idx], y[idx] at an output index: as they are when both have the output's shape, else broadcast."""
    if [int(d) for d in x.shape] == list(shape) == [int(d) for d in y.shape]:
        return lambda idx: (x[idx], y[idx])
    return lambda idx: (_broadcast(x, idx, len(shape)), _broadcast(y, idx, len(shape)))


def _add(x, y, *, a, dtype, shape):
    ls = _c(1 << a.left_shift)  # a multiplication: << of a negative value is undefined in C
    rq = _requant_by(a.rounding)
    at = _operands(x, y, shape)

    def f(*idx):
        xv, yv = at(idx)
        xa = rq((xv.astype(I64) - _c(a.a_zp)) * ls, _c(a.a_mult), _c(a.a_shift))
        xb = rq((yv.astype(I64) - _c(a.b_zp)) * ls, _c(a.b_mult), _c(a.b_shift))
        return _clamp(rq(xa - xb if a.subtract else xa + xb, _c(a.mult), _c(a.shift)) + _c(a.out_zp), a.lo, a.hi,
                      dtype)  # fmt: skip

    return te.compute(tuple(shape), f, name="qadd")


def _mul(x, y, *, a, dtype, shape):
    at = _operands(x, y, shape)

    def f(*idx):
        xv, yv = at(idx)
        p = (xv.astype(I64) - _c(a.a_zp)) * (yv.astype(I64) - _c(a.b_zp))
        return _clamp(_requant_by(a.rounding)(p, _c(a.mult), _c(a.shift)) + _c(a.out_zp), a.lo, a.hi, dtype)

    return te.compute(tuple(shape), f, name="qmul")


def _prelu(x, neg_mult, neg_shift, *, a, dtype):
    """quant/ops/elementwise.py PRelu: one multiplier above the zero point, the channel's below."""

    def f(*idx):
        v = x[idx].astype(I64) - _c(a.in_zp)
        c = idx[1] if len(idx) > 1 else idx[0]
        pos = _requant(v, _c(a.mult), _c(a.shift))
        neg = _requant(v, neg_mult[c], neg_shift[c])
        return _clamp(tirx.Select(v >= _c(0), pos, neg) + _c(a.out_zp), a.lo, a.hi, dtype)

    return te.compute(x.shape, f, name="qprelu")


def _pool(x, *tables, a, dtype, kind):
    n, c, h, w = (int(d) for d in x.shape)
    kh, kw = a.kernel
    sh, sw = a.strides
    t, left, b, r = a.pads
    oh, ow = (h + t + b - kh) // sh + 1, (w + left + r - kw) // sw + 1
    fill = int(np.iinfo(str(x.dtype)).min) if kind == "max" else a.in_zp
    pad = te.compute(
        (n, c, h + t + b, w + left + r),
        lambda i, ch, y, xx: tirx.if_then_else(
            tirx.all(y >= t, y < h + t, xx >= left, xx < w + left), x[i, ch, y - t, xx - left].astype(I32), _c(fill, I32)),
        name="pad",
    )  # fmt: skip
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    if kind == "max":
        red = te.compute((n, c, oh, ow), lambda i, ch, y, xx: te.max(pad[i, ch, y * sh + ry, xx * sw + rx], axis=[ry, rx]),
                         name="max")  # fmt: skip
        return te.compute(
            red.shape, lambda *i: _clamp(_rescale_expr(red[i], a.rescale), a.lo, a.hi, dtype), name="out"
        )
    red = te.compute((n, c, oh, ow), lambda i, ch, y, xx: te.sum(pad[i, ch, y * sh + ry, xx * sw + rx] - _c(a.in_zp, I32),
                                                                  axis=[ry, rx]), name="sum")  # fmt: skip
    mult, shift = tables  # per output position (the divisor varies at padded borders)
    return te.compute(
        red.shape,
        lambda i, ch, y, xx: _clamp(_requant(red[i, ch, y, xx].astype(I64), mult[y, xx].astype(I64),
                                             shift[y, xx].astype(I64)) + _c(a.out_zp), a.lo, a.hi, dtype),
        name="out",
    )  # fmt: skip


def _reshape(x, *, a, dtype, shape):
    size = int(np.prod(shape))
    in_shape = [int(d) for d in x.shape]

    def unravel(flat, dims):
        idx = []
        for d in reversed(dims):
            idx.append(flat % d)
            flat = flat // d
        return list(reversed(idx))

    def f(*out_idx):
        flat = 0
        for i, d in zip(out_idx, shape, strict=True):
            flat = flat * d + i
        return _clamp(_rescale_expr(x[tuple(unravel(flat, in_shape))], a.rescale), a.lo, a.hi, dtype)

    assert size == int(np.prod(in_shape))
    return te.compute(tuple(shape), f, name="reshape")


def _transpose(x, *, a, dtype):
    perm = a.perm
    shape = tuple(int(x.shape[p]) for p in perm)

    def f(*out_idx):
        src = [None] * len(perm)
        for o, p in enumerate(perm):
            src[p] = out_idx[o]
        return _clamp(_rescale_expr(x[tuple(src)], a.rescale), a.lo, a.hi, dtype)

    return te.compute(shape, f, name="transpose")


def _concat(*xs, a, dtype):
    axis = a.axis
    sizes = [int(x.shape[axis]) for x in xs]
    shape = list(int(d) for d in xs[0].shape)
    shape[axis] = sum(sizes)

    def f(*idx):
        value, offset = None, 0
        for x, size, r in zip(xs, sizes, a.rescales, strict=True):
            src = list(idx)
            src[axis] = idx[axis] - offset
            v = _rescale_expr(x[tuple(src)], r)
            # Later inputs win from their offset on, so each index reads exactly one input.
            value = v if value is None else tirx.if_then_else(idx[axis] >= offset, v, value)
            offset += size
        return _clamp(value, a.lo, a.hi, dtype)

    return te.compute(tuple(shape), f, name="concat")


def _lut(x, table, *, dtype):  # noqa: ARG001 (dtype: the table's)
    return te.compute(x.shape, lambda *i: table[x[i].astype(I32) + 128], name="lut")


def _interp(table, u):
    """fixedpoint.interp_table for one int32 index expression u >= 0 (step 128)."""
    i, f = u >> _c(7, I32), u & _c(127, I32)
    lo = table[i].astype(I64)
    return lo + (((table[i + 1].astype(I64) - lo) * f.astype(I64) + _c(64)) >> _c(7))


def _lut16(x, table, *, a, dtype):
    return te.compute(
        x.shape,
        lambda *i: _clamp(_interp(table, x[i].astype(I32) + _c(32768, I32)), a.lo, a.hi, dtype),
        name="lut16",
    )


def _softmax(x, table, *, a, dtype):
    shape = [int(d) for d in x.shape]
    k = te.reduce_axis((0, shape[-1]), "k")
    mx = te.compute(shape[:-1], lambda *i: te.max(x[(*i, k)].astype(I32), axis=k), name="max")
    if a.interpolate:
        e = te.compute(
            shape, lambda *i: _interp(table, mx[i[:-1]] - x[i].astype(I32)).astype(I32), name="exp"
        )
    else:
        e = te.compute(shape, lambda *i: table[mx[i[:-1]] - x[i].astype(I32)], name="exp")
    k2 = te.reduce_axis((0, shape[-1]), "k2")
    total = te.compute(shape[:-1], lambda *i: te.sum(e[(*i, k2)], axis=k2), name="sum")

    def out(*i):
        t = e[i].astype(I64)
        s = total[i[:-1]].astype(I64)
        q = tirx.floordiv(t * _c(a.inv) + (s << _c(15)), s << _c(16))
        return _clamp(q + _c(a.out_zp), a.lo, a.hi, dtype)

    return te.compute(shape, out, name="out")


def _lut_int16(table, v):
    """tflite_arith.lut_lookup_int16 for one int32 expression v in [-32768, 32767]."""
    idx = (v >> _c(7, I32)) + _c(256, I32)
    base = table[idx].astype(I32)
    return base + (((table[idx + 1].astype(I32) - base) * (v & _c(127, I32)) + _c(64, I32)) >> _c(7, I32))


def _softmax_tfl16(x, exp_lut, recip_lut, *, a, dtype):
    """quant/ops/softmax_tfl.py TflSoftmax16 (TFLM's SoftmaxInt16) over the last axis."""
    shape = [int(d) for d in x.shape]
    k = te.reduce_axis((0, shape[-1]), "k")
    mx = te.compute(shape[:-1], lambda *i: te.max(x[(*i, k)].astype(I32), axis=k), name="max")

    def exp(*i):
        d = _requant_double((x[i].astype(I32) - mx[i[:-1]]).astype(I64), _c(a.mult), _c(31 - a.shift))
        return _lut_int16(exp_lut, _clamp(d + _c(32767), -32768, 32767, I32))

    e = te.compute(shape, exp, name="exp")
    k2 = te.reduce_axis((0, shape[-1]), "k2")
    total = te.compute(shape[:-1], lambda *i: te.sum(e[(*i, k2)], axis=k2), name="sum")
    # CountLeadingZeros of a positive int32: the powers of two 2^0..2^31 above it.
    hp1 = te.compute(shape[:-1], lambda *i: sum((tirx.Select(total[i].astype(I64) < _c(1 << b), _c(1, I32), _c(0, I32))
                                                 for b in range(32)), _c(0, I32)), name="clz")  # fmt: skip

    def recip(*i):
        h = hp1[i].astype(I64)
        shifted = ((total[i].astype(I64) << (h - _c(1))) + _c(1 << 13)) >> _c(14)
        return _lut_int16(recip_lut, _clamp(shifted - _c((1 << 15) + (1 << 16)), -32768, 32767, I32))

    r = te.compute(shape[:-1], recip, name="recip")

    def out(*i):
        rs = _c(31) - hp1[i[:-1]].astype(I64)
        v = (e[i].astype(I64) * r[i[:-1]].astype(I64) + (_c(1) << (rs - _c(1)))) >> rs
        return _clamp(v, 0, 32767, dtype)

    return te.compute(shape, out, name="out")


def _sigmoid_tfl16(x, table, *, a, dtype):
    """quant/ops/lut.py TflSigmoid16 (tflite_arith.sigmoid_int16); the rescaled input is its own stage."""
    rnd = (1 << (a.shift - 1)) if a.shift > 0 else 0
    v = te.compute(x.shape, lambda *i: (x[i].astype(I32) * _c(a.mult, I32) + _c(rnd, I32)) >> _c(a.shift, I32),
                   name="scaled")  # fmt: skip
    bits = 8 if a.tanh else 9

    def f(*i):
        s = v[i]
        mag = tirx.Select(s < _c(0, I32), -s, s)
        uh = mag >> _c(bits, I32)
        k = tirx.Min(uh, _c(254, I32))
        ua = table[k]
        res = (ua << _c(bits, I32)) + (mag & _c((1 << bits) - 1, I32)) * (table[k + 1] - ua)
        if a.tanh:
            res = tirx.Select(uh >= _c(255, I32), _c(0xFFFF << 8, I32), res)
            res = tirx.Select(s >= _c(0, I32), res - _c((1 << 23) - (1 << 7), I32), _c((1 << 23) + (1 << 7) - 1, I32) - res)
            return (res >> _c(8, I32)).astype(dtype)
        res = tirx.Select(uh >= _c(255, I32), _c(0x7FFF << 10, I32), res)
        res = tirx.Select(s >= _c(0, I32), res + _c(1 << 9, I32), _c((1 << 25) + (1 << 9) - 1, I32) - res)
        return (res >> _c(10, I32)).astype(dtype)

    return te.compute(x.shape, f, name="sigmoid16")


def _quantize(x, scale, *, a, dtype):
    # ONNX rounds half to even (nearbyint); TFLite half away from zero: C's roundf, by name (TVM's
    # own round intrinsic becomes nearbyint in C).
    def rnd(v):
        return tirx.nearbyint(v) if a.rounding == "half_even" else tirx.call_pure_extern("float32", "roundf", v)

    def f(*i):
        q = rnd(x[i] / scale[0]).astype(I32) + _c(a.zp, I32)
        return _clamp(q, a.lo, a.hi, dtype)

    return te.compute(x.shape, f, name="quantize")


def _dequantize(x, scale, *, a, dtype):
    def f(*i):
        q = _clamp(x[i], a.lo, a.hi, I32)
        return (q - _c(a.zp, I32)).astype("float32") * scale[0]

    return te.compute(x.shape, f, name="dequantize")


def _avgpool_tfl(x, counts, *, a, dtype):
    """quant/ops/avgpool_tfl.py: raw sums over the in-image taps, divided by their count (counts:
    [OH, OW]), rounding half away from zero."""
    n, c, h, w = (int(d) for d in x.shape)
    kh, kw = a.kernel
    sh, sw = a.strides
    t, left, b, r = a.pads
    oh, ow = (h + t + b - kh) // sh + 1, (w + left + r - kw) // sw + 1
    pad = te.compute(
        (n, c, h + t + b, w + left + r),
        lambda i, ch, y, xx: tirx.if_then_else(
            tirx.all(y >= t, y < h + t, xx >= left, xx < w + left), x[i, ch, y - t, xx - left].astype(I32), _c(0, I32)),
        name="pad",
    )  # fmt: skip
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    red = te.compute((n, c, oh, ow), lambda i, ch, y, xx: te.sum(pad[i, ch, y * sh + ry, xx * sw + rx], axis=[ry, rx]),
                     name="sum")  # fmt: skip

    def out(i, ch, y, xx):
        acc, cnt = red[i, ch, y, xx], counts[y, xx]
        half = tirx.truncdiv(cnt, _c(2, I32))
        q = tirx.Select(acc > _c(0, I32), tirx.truncdiv(acc + half, cnt), tirx.truncdiv(acc - half, cnt))
        return _clamp(q, a.lo, a.hi, dtype)

    return te.compute((n, c, oh, ow), out, name="out")


def _mean_tfl(x, *, a, dtype, shape):
    """quant/ops/mean.py: the raw values summed over a.axes, TFLite's MEAN requantization."""
    in_shape = [int(d) for d in x.shape]
    axes = set(a.axes)
    kept = [i for i in range(len(in_shape)) if i not in axes]
    keepdims = len(shape) == len(in_shape)
    red = [te.reduce_axis((0, in_shape[ax]), f"r{ax}") for ax in sorted(axes)]

    def src(idx):
        it_red, it_out = iter(red), iter(idx if not keepdims else [idx[k] for k in kept])
        return tuple(next(it_red) if i in axes else next(it_out) for i in range(len(in_shape)))

    total = te.compute(tuple(shape), lambda *idx: te.sum(x[src(idx)].astype(I32), axis=red), name="sum")

    def out(*idx):
        v = total[idx].astype(I64) - _c(a.in_zp * a.count)
        return _clamp(_requant_double(v, _c(a.mult), _c(a.shift)) + _c(a.out_zp), a.lo, a.hi, dtype)

    return te.compute(tuple(shape), out, name="out")


def _pad(x, *, a, dtype, shape):
    """quant/ops/pad.py: the input inside, the constant around it (mode constant), or the input at
    the index that mode maps each outside position to (reflect, edge, wrap)."""
    before = [p[0] for p in a.pads]
    dims = [int(d) for d in x.shape]

    def source(i, lo, d):
        j = i - lo
        if a.mode == "reflect":  # -j before the start, 2(d-1) - j after the end
            j = tirx.Max(j, 0 - j)
            k = (d - 1) - j
            return (d - 1) - tirx.Max(k, 0 - k)
        if a.mode == "wrap":
            return tirx.floormod(j, d)
        return tirx.Max(tirx.Min(j, d - 1), 0)  # edge (and in range for constant)

    def f(*idx):
        if any(a.interior):  # input values every (interior + 1) positions, the constant between
            steps = [i + 1 for i in a.interior]
            conds, src = [], []
            for i, lo, d, s in zip(idx, before, dims, steps, strict=True):
                j = i - lo
                conds += [j >= 0, j <= (d - 1) * s] + ([tirx.floormod(j, s) == 0] if s > 1 else [])
                src.append(tirx.Max(tirx.Min(tirx.floordiv(j, s), d - 1), 0))
            return tirx.if_then_else(tirx.all(*conds), x[tuple(src)], tirx.const(a.value, dtype))
        src = tuple(source(i, lo, d) for i, lo, d in zip(idx, before, dims, strict=True))
        if a.mode != "constant":
            return x[src]
        inside = tirx.all(*(tirx.all(i >= lo, i < lo + d) for i, lo, d in zip(idx, before, dims, strict=True)))
        return tirx.if_then_else(inside, x[src], tirx.const(a.value, dtype))

    return te.compute(tuple(shape), f, name="pad")


def _slice(x, *, a, dtype):
    """quant/ops/slice.py: the value at start + step * k on each axis, the taken block laid out in
    the output's shape (an index through the flat position when the two shapes differ)."""
    block = list(a.counts)

    def f(*out_idx):
        if list(a.shape) == block:
            idx = list(out_idx)
        else:
            flat = 0
            for i, d in zip(out_idx, a.shape, strict=True):
                flat = flat * d + i
            idx = []
            for d in reversed(block):
                idx.append(flat % d)
                flat = flat // d
            idx.reverse()
        src = tuple(i * t + s for i, s, t in zip(idx, a.starts, a.steps, strict=True))
        return _clamp(_rescale_expr(x[src], a.rescale), a.lo, a.hi, dtype)

    return te.compute(tuple(a.shape), f, name="slice")


def _reduce(x, *, a, dtype):
    """quant/ops/extremum.py Reduce: max (min) over a.axes, rescaled, in the output's shape."""
    in_shape = [int(d) for d in x.shape]
    red = {ax: te.reduce_axis((0, in_shape[ax]), f"r{ax}") for ax in a.axes}
    kept = [i for i in range(len(in_shape)) if i not in red]
    keepdims = len(a.shape) == len(in_shape)

    def f(*idx):
        it = iter([idx[k] for k in kept] if keepdims else idx)
        src = tuple(red[i] if i in red else next(it) for i in range(len(in_shape)))
        axis = list(red.values())
        return te.max(x[src], axis=axis) if a.largest else te.min(x[src], axis=axis)

    v = te.compute(tuple(a.shape), f, name="reduce")
    return te.compute(tuple(a.shape), lambda *i: _clamp(_rescale_expr(v[i], a.rescale), a.lo, a.hi, dtype),
                      name="out")  # fmt: skip


def _extremum(*xs, a, dtype, shape):
    def f(*idx):
        vals = [_rescale_expr(_broadcast(x, idx, len(shape)), r) for x, r in zip(xs, a.rescales, strict=True)]
        v = vals[0]
        for w in vals[1:]:
            v = tirx.Max(v, w) if a.largest else tirx.Min(v, w)
        return _clamp(v, a.lo, a.hi, dtype)

    return te.compute(tuple(shape), f, name="extremum")


def _crop(x, *, a, dtype):
    """quant/ops/patch.py Crop: a spatial window of an NCHW tensor."""
    r0, r1, c0, c1 = a.box
    n, c = (int(d) for d in x.shape[:2])
    return te.compute((n, c, r1 - r0, c1 - c0), lambda b, ch, y, w: x[b, ch, y + r0, w + c0].astype(dtype),
                      name="crop")  # fmt: skip


def _place(*xs, a, dtype):
    """quant/ops/patch.py Place: the patch in its box, the rest from the tensor placed so far (or 0).
    (Copies the whole tensor: the micro-kernel place.c.j2 writes the box in place instead.)"""
    r0, r1, c0, c1 = a.box
    patch = xs[-1]

    def f(b, ch, y, w):
        inside = tirx.all(y >= r0, y < r1, w >= c0, w < c1)
        src = patch[b, ch, tirx.Max(tirx.Min(y - r0, r1 - r0 - 1), 0), tirx.Max(tirx.Min(w - c0, c1 - c0 - 1), 0)]
        rest = xs[0][b, ch, y, w] if len(xs) == 2 else tirx.const(0, dtype)
        return tirx.if_then_else(inside, src, rest)

    return te.compute(tuple(a.shape), f, name="place")


def _const(arr, dtype) -> relax.Expr:
    return relax.const(np.ascontiguousarray(np.asarray(arr, dtype=dtype)))


def _linear(op, fn):
    from edgecomp.lower.kernels.int4 import pack_nibbles

    weight = _const(pack_nibbles(op.weight.reshape(-1)), "uint8") if op.weight_bits == 4 else _const(op.weight, "int8")
    return partial(fn, a=op), [weight, _const(op.bias, str(op.bias.dtype)), _const(op.mult, I32),
                               _const(op.shift, "int8")]  # fmt: skip


# Op class -> (op, graph) -> (TE function of the input tensors and constants, the constants).
def _out_shape(op: IntOp, g: IntGraph) -> tuple[int, ...]:
    return g.tensors[op.output].shape


TE_KERNELS = {
    ops.Conv: lambda op, g: _linear(op, _conv),
    ops.Dense: lambda op, g: _linear(op, _dense),
    ops.Add: lambda op, g: (partial(_add, a=op, shape=_out_shape(op, g)), []),
    ops.Mul: lambda op, g: (partial(_mul, a=op, shape=_out_shape(op, g)), []),
    ops.MaxPool: lambda op, g: (partial(_pool, a=op, kind="max"), []),
    ops.AvgPool: lambda op, g: (partial(_pool, a=op, kind="avg"), [_const(op.mult, I32), _const(op.shift, "int8")]),
    ops.Reshape: lambda op, g: (partial(_reshape, a=op, shape=_out_shape(op, g)), []),
    ops.Transpose: lambda op, g: (partial(_transpose, a=op), []),
    ops.Concat: lambda op, g: (partial(_concat, a=op), []),
    ops.PRelu: lambda op, g: (partial(_prelu, a=op), [_const(op.neg_mult, I64), _const(op.neg_shift, I64)]),
    ops.Lut: lambda op, g: (_lut, [_const(op.table, str(op.table.dtype))]),
    ops.Lut16: lambda op, g: (partial(_lut16, a=op), [_const(op.table, I32)]),
    ops.Softmax: lambda op, g: (partial(_softmax, a=op), [_const(op.table, I32)]),
    ops.TflSigmoid16: lambda op, g: (partial(_sigmoid_tfl16, a=op), [_const(A.SIGMOID_TABLE_UINT16, I32)]),
    ops.TflSoftmax16: lambda op, g: (partial(_softmax_tfl16, a=op), [_const(op.exp_lut, "int16"),
                                                                     _const(op.recip_lut, "int16")]),
    ops.Quantize: lambda op, g: (partial(_quantize, a=op), [_const([op.scale], "float32")]),
    ops.Dequantize: lambda op, g: (partial(_dequantize, a=op), [_const([op.scale], "float32")]),
    ops.TflAvgPool: lambda op, g: (partial(_avgpool_tfl, a=op), [_const(tap_counts(
        g.tensors[op.inputs[0]].shape[2:], op.kernel, op.strides, op.pads), I32)]),
    ops.TflMean: lambda op, g: (partial(_mean_tfl, a=op, shape=_out_shape(op, g)), []),
    ops.Pad: lambda op, g: (partial(_pad, a=op, shape=_out_shape(op, g)), []),
    ops.Reduce: lambda op, g: (partial(_reduce, a=op), []),
    ops.Extremum: lambda op, g: (partial(_extremum, a=op, shape=_out_shape(op, g)), []),
    ops.Slice: lambda op, g: (partial(_slice, a=op), []),
    ops.Crop: lambda op, g: (partial(_crop, a=op), []),
    ops.Place: lambda op, g: (partial(_place, a=op), []),
}  # fmt: skip


def _emit(bb: relax.BlockBuilder, op: IntOp, env: dict, graph: IntGraph):
    """One emit_te call computing `op` (Python-side parameters bound with partial: emit_te only sees
    tensors)."""
    out = graph.tensors[op.output]
    make = TE_KERNELS.get(type(op))
    if make is None:
        raise UnsupportedModelError(f"op '{op.node}' ({op.kind}) has no TVM kernel and no C kernel for its types")
    fn, consts = make(op, graph)
    return bb.emit_te(partial(fn, dtype=out.dtype), *(env[i] for i in op.inputs), *consts,
                      primfunc_name_hint=f"q{op.kind}")  # fmt: skip


def _emit_micro(bb: relax.BlockBuilder, chosen: Chosen, env: dict, graph: IntGraph) -> relax.Expr:
    """A call_dps_packed to a templated micro-kernel (its constants, then any extra input last)."""
    out = graph.tensors[chosen.outputs]
    args = [*(env[i] for i in chosen.inputs), *(_const(c, str(c.dtype)) for c in chosen.consts),
            *(env[i] for i in chosen.extra_inputs)]  # fmt: skip
    return bb.emit(
        relax.call_dps_packed(chosen.kernel.symbol, relax.Tuple(args), relax.TensorType(out.shape, out.dtype))
    )


def int_graph_to_relax(graph: IntGraph, features: frozenset[str] | None = None, narrow: frozenset[str] = frozenset(),
                       optimize: str = "balanced") -> tuple[tvm.IRModule, dict[str, MicroKernel], dict]:  # fmt: skip
    """A Relax module whose main runs `graph`, the micro-kernels it calls (by symbol), and the
    graph tensor each binding of main computes (by binding variable).

    With `features` (the target's ISA capabilities; None: TVM's kernels only), each op that a kernel
    variant of kernels.py covers on those features becomes a call_dps_packed to it (a convolution
    together with the residual Add that follows it, where the variant fuses it); every other op one
    emit_te kernel."""
    bb = relax.BlockBuilder()
    used: set[str] = set()  # TVM names its C after these: valid C identifiers (see lowering.with_c_names)
    params = [
        relax.Var(c_identifier(n, used), relax.TensorType(graph.tensors[n].shape, graph.tensors[n].dtype))
        for n in graph.inputs
    ]
    env = dict(zip(graph.inputs, params, strict=True))
    if features is None:  # TVM's kernels, but for ops that only have a C kernel
        plan = kernels.choose(graph, frozenset(), only=lambda op: type(op) not in TE_KERNELS)
    else:
        plan = kernels.choose(graph, features, narrow=narrow, optimize=optimize)
    chosen_kernels: dict[str, MicroKernel] = {}
    sources: dict = {}  # binding variable -> graph tensor
    with bb.function("main", params):
        with bb.dataflow():
            for i, op in enumerate(graph.ops):
                if op.output in env:
                    continue  # computed by a fused kernel
                choice = plan.get(i)
                if choice is not None:
                    out = env[choice.outputs] = _emit_micro(bb, choice, env, graph)
                    chosen_kernels[choice.kernel.symbol] = replace(choice.kernel, variant=choice.variant)
                    sources[out] = choice.outputs
                else:
                    out = env[op.output] = _emit(bb, op, env, graph)
                    sources[out] = op.output
            outs = [env[o] for o in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get(), chosen_kernels, sources
