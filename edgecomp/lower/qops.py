"""Integer kernels as TVM tensor expressions, and the Relax module that strings them together.

Each IntGraph op becomes one TE compute (with its padding and requantize epilogue inside), emitted
with `BlockBuilder.emit_te`; constants (int8 weights, int32 biases, multipliers, shifts, float
scales of the model's edges) are Relax constants, so they land in the weights file with exact
values. The arithmetic is fixedpoint.py's, the same as the numpy reference's.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import tvm
from tvm import relax, te, tirx

from edgecomp.lower import microkernels
from edgecomp.quant.graph import IntGraph, QOp

I32, I64 = "int32", "int64"


def _c(v, dtype=I64):
    return tirx.const(int(v), dtype)


def _requant(acc, mult, shift):
    """(acc * mult + 2**(shift-1)) >> shift, in int64; mult/shift are int64 expressions."""
    return (acc * mult + (_c(1) << (shift - _c(1)))) >> shift


def _clamp(v, lo, hi, dtype):
    """Clamp to [lo, hi] in int64, then narrow to `dtype`."""
    return tirx.Max(tirx.Min(v.astype(I64), _c(hi)), _c(lo)).astype(dtype)


def _rescale_expr(v, a: dict):
    """Integer rescale of one value to the output's scale and zero point (identity when equal)."""
    v = v.astype(I64)
    if a["mult"] == 1 << 30 and a["shift"] == 30 and a["in_zp"] == a["out_zp"]:
        return v
    return _requant(v - _c(a["in_zp"]), _c(a["mult"]), _c(a["shift"])) + _c(a["out_zp"])


def _acc_dtype(x) -> str:
    """int8 x int8 products sum safely in int32; int16 x int8 sums can exceed it, so use int64."""
    return I64 if x.dtype == "int16" else I32


def _conv(x, w, bias, mult, shift, *, a, dtype):
    n, cin, h, wd = (int(d) for d in x.shape)
    cout, cin_g, kh, kw = (int(d) for d in w.shape)
    t, left, b, r = a["pads"]
    sh, sw = a["strides"]
    dh, dw = a["dilations"]
    cout_g = cout // a["groups"]
    oh = (h + t + b - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + left + r - (kw - 1) * dw - 1) // sw + 1
    acc_t = _acc_dtype(x)
    pad = te.compute(
        (n, cin, h + t + b, wd + left + r),
        lambda i, c, y, xx: tirx.if_then_else(
            tirx.all(y >= t, y < h + t, xx >= left, xx < wd + left),
            x[i, c, y - t, xx - left].astype(acc_t), _c(a["pad_value"], acc_t)),
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
            pad[i, (o // cout_g) * cin_g + rc, y * sh + ry * dh, xx * sw + rx * dw] * w[o, rc, ry, rx].astype(acc_t),
            axis=[rc, ry, rx]),
        name="acc",
    )  # fmt: skip
    return te.compute(
        (n, cout, oh, ow),
        lambda i, o, y, xx: _clamp(
            _requant(acc[i, o, y, xx].astype(I64) + bias[o].astype(I64), mult[o].astype(I64), shift[o].astype(I64))
            + _c(a["out_zp"]), a["lo"], a["hi"], dtype),
        name="requant",
    )  # fmt: skip


def _dense(x, w, bias, mult, shift, *, a, dtype):
    n, k = (int(d) for d in x.shape)
    o = int(w.shape[0])
    rk = te.reduce_axis((0, k), "rk")
    acc_t = _acc_dtype(x)
    acc = te.compute(
        (n, o), lambda i, j: te.sum(x[i, rk].astype(acc_t) * w[j, rk].astype(acc_t), axis=rk), name="acc"
    )
    return te.compute(
        (n, o),
        lambda i, j: _clamp(_requant(acc[i, j].astype(I64) + bias[j].astype(I64), mult[j].astype(I64), shift[j].astype(I64))
                            + _c(a["out_zp"]), a["lo"], a["hi"], dtype),
        name="requant",
    )  # fmt: skip


def _add(x, y, *, a, dtype):
    ls = _c(a["left_shift"])

    def f(*idx):
        xa = _requant((x[idx].astype(I64) - _c(a["a_zp"])) << ls, _c(a["a_mult"]), _c(a["a_shift"]))
        xb = _requant((y[idx].astype(I64) - _c(a["b_zp"])) << ls, _c(a["b_mult"]), _c(a["b_shift"]))
        return _clamp(
            _requant(xa + xb, _c(a["mult"]), _c(a["shift"])) + _c(a["out_zp"]), a["lo"], a["hi"], dtype
        )

    return te.compute(x.shape, f, name="qadd")


def _mul(x, y, *, a, dtype):
    def f(*idx):
        p = (x[idx].astype(I64) - _c(a["a_zp"])) * (y[idx].astype(I64) - _c(a["b_zp"]))
        return _clamp(_requant(p, _c(a["mult"]), _c(a["shift"])) + _c(a["out_zp"]), a["lo"], a["hi"], dtype)

    return te.compute(x.shape, f, name="qmul")


def _prelu(x, neg_mult, neg_shift, *, a, dtype):
    """quant/reference.py _prelu: one multiplier above the zero point, the channel's below."""

    def f(*idx):
        v = x[idx].astype(I64) - _c(a["in_zp"])
        c = idx[1] if len(idx) > 1 else idx[0]
        pos = _requant(v, _c(a["mult"]), _c(a["shift"]))
        neg = _requant(v, neg_mult[c], neg_shift[c])
        return _clamp(tirx.Select(v >= _c(0), pos, neg) + _c(a["out_zp"]), a["lo"], a["hi"], dtype)

    return te.compute(x.shape, f, name="qprelu")


def _pool(x, *tables, a, dtype, kind):
    n, c, h, w = (int(d) for d in x.shape)
    kh, kw = a["kernel"]
    sh, sw = a["strides"]
    t, left, b, r = a["pads"]
    oh, ow = (h + t + b - kh) // sh + 1, (w + left + r - kw) // sw + 1
    fill = int(np.iinfo(str(x.dtype)).min) if kind == "max" else a["in_zp"]
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
            red.shape, lambda *i: _clamp(_rescale_expr(red[i], a), a["lo"], a["hi"], dtype), name="out"
        )
    red = te.compute((n, c, oh, ow), lambda i, ch, y, xx: te.sum(pad[i, ch, y * sh + ry, xx * sw + rx] - _c(a["in_zp"], I32),
                                                                  axis=[ry, rx]), name="sum")  # fmt: skip
    mult, shift = tables  # per output position (the divisor varies at padded borders)
    return te.compute(
        red.shape,
        lambda i, ch, y, xx: _clamp(_requant(red[i, ch, y, xx].astype(I64), mult[y, xx].astype(I64),
                                             shift[y, xx].astype(I64)) + _c(a["out_zp"]), a["lo"], a["hi"], dtype),
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
        return _clamp(_rescale_expr(x[tuple(unravel(flat, in_shape))], a), a["lo"], a["hi"], dtype)

    assert size == int(np.prod(in_shape))
    return te.compute(tuple(shape), f, name="reshape")


def _transpose(x, *, a, dtype):
    perm = a["perm"]
    shape = tuple(int(x.shape[p]) for p in perm)

    def f(*out_idx):
        src = [None] * len(perm)
        for o, p in enumerate(perm):
            src[p] = out_idx[o]
        return _clamp(_rescale_expr(x[tuple(src)], a), a["lo"], a["hi"], dtype)

    return te.compute(shape, f, name="transpose")


def _concat(*xs, a, dtype):
    axis = a["axis"]
    sizes = [int(x.shape[axis]) for x in xs]
    shape = list(int(d) for d in xs[0].shape)
    shape[axis] = sum(sizes)

    def f(*idx):
        value, offset = None, 0
        for x, size, r in zip(xs, sizes, a["rescales"], strict=True):
            src = list(idx)
            src[axis] = idx[axis] - offset
            v = _rescale_expr(x[tuple(src)], r)
            # Later inputs win from their offset on, so each index reads exactly one input.
            value = v if value is None else tirx.if_then_else(idx[axis] >= offset, v, value)
            offset += size
        return _clamp(value, a["lo"], a["hi"], dtype)

    return te.compute(tuple(shape), f, name="concat")


def _lut(x, table, *, dtype):
    return te.compute(x.shape, lambda *i: table[x[i].astype(I32) + 128], name="lut")


def _interp(table, u):
    """fixedpoint.interp_table for one int32 index expression u >= 0 (step 128)."""
    i, f = u >> _c(7, I32), u & _c(127, I32)
    lo = table[i].astype(I64)
    return lo + (((table[i + 1].astype(I64) - lo) * f.astype(I64) + _c(64)) >> _c(7))


def _lut16(x, table, *, a, dtype):
    return te.compute(
        x.shape,
        lambda *i: _clamp(_interp(table, x[i].astype(I32) + _c(32768, I32)), a["lo"], a["hi"], dtype),
        name="lut16",
    )


def _softmax(x, table, *, a, dtype):
    shape = [int(d) for d in x.shape]
    k = te.reduce_axis((0, shape[-1]), "k")
    mx = te.compute(shape[:-1], lambda *i: te.max(x[(*i, k)].astype(I32), axis=k), name="max")
    if a["interpolate"]:
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
        q = tirx.floordiv(t * _c(a["inv"]) + (s << _c(15)), s << _c(16))
        return _clamp(q + _c(a["out_zp"]), a["lo"], a["hi"], dtype)

    return te.compute(shape, out, name="out")


def _quantize(x, scale, *, a, dtype):
    def f(*i):
        q = tirx.nearbyint(x[i] / scale[0]).astype(I32) + _c(a["zp"], I32)
        return _clamp(q, a["lo"], a["hi"], dtype)

    return te.compute(x.shape, f, name="quantize")


def _dequantize(x, scale, *, a, dtype):
    def f(*i):
        q = _clamp(x[i], a["lo"], a["hi"], I32)
        return (q - _c(a["zp"], I32)).astype("float32") * scale[0]

    return te.compute(x.shape, f, name="dequantize")


def _const(arr, dtype) -> relax.Expr:
    return relax.const(np.ascontiguousarray(np.asarray(arr, dtype=dtype)))


def _emit(bb: relax.BlockBuilder, op: QOp, env: dict, graph: IntGraph):
    a = op.attrs
    dtype = graph.tensors[op.output].dtype
    xs = [env[i] for i in op.inputs]
    k = op.kind
    # Python-side parameters are bound with partial: emit_te only sees tensors.
    if k in ("conv", "dense"):
        fn = partial(_conv if k == "conv" else _dense, a=a, dtype=dtype)
        xs += [
            _const(a["weight"], "int8"),
            _const(a["bias"], str(a["bias"].dtype)),
            _const(a["mult"], I32),
            _const(a["shift"], "int8"),
        ]
    elif k in ("add", "mul"):
        fn = partial(_add if k == "add" else _mul, a=a, dtype=dtype)
    elif k == "maxpool":
        fn = partial(_pool, a=a, dtype=dtype, kind="max")
    elif k == "avgpool":
        fn = partial(_pool, a=a, dtype=dtype, kind="avg")
        xs += [_const(a["mult"], I32), _const(a["shift"], "int8")]
    elif k == "reshape":
        fn = partial(_reshape, a=a, dtype=dtype, shape=graph.tensors[op.output].shape)
    elif k == "transpose":
        fn = partial(_transpose, a=a, dtype=dtype)
    elif k == "concat":
        fn = partial(_concat, a=a, dtype=dtype)
    elif k == "prelu":
        fn = partial(_prelu, a=a, dtype=dtype)
        xs += [_const(a["neg_mult"], I64), _const(a["neg_shift"], I64)]
    elif k == "lut":
        fn = partial(_lut, dtype=dtype)
        xs.append(_const(a["table"], dtype))
    elif k == "lut16":
        fn = partial(_lut16, a=a, dtype=dtype)
        xs.append(_const(a["table"], I32))
    elif k == "softmax":
        fn = partial(_softmax, a=a, dtype=dtype)
        xs.append(_const(a["table"], I32))
    elif k in ("quantize", "dequantize"):
        fn = partial(_quantize if k == "quantize" else _dequantize, a=a, dtype=dtype)
        xs.append(_const([a["scale"]], "float32"))
    else:
        raise NotImplementedError(k)
    return bb.emit_te(fn, *xs, primfunc_name_hint=f"q{k}")


def _emit_micro(bb: relax.BlockBuilder, op: QOp, env: dict, graph: IntGraph, micro: dict,
                then_add: QOp | None = None, simd: str = "none") -> relax.Expr | None:  # fmt: skip
    """A call_dps_packed to a templated micro-kernel, if one handles `op` (else None); with
    `then_add`, one that also computes that Add of op's result and the Add's other input."""
    chosen = microkernels.select(op, graph, len(micro), then_add, simd)
    if chosen is None:
        return None
    mk, consts = chosen
    micro[mk.symbol] = mk
    last = then_add or op
    out = graph.tensors[last.output]
    extra = [i for i in then_add.inputs if i != op.output] if then_add else []
    args = [
        *(env[i] for i in op.inputs),
        *(_const(c, str(c.dtype)) for c in consts),
        *(env[i] for i in extra),
    ]
    return bb.emit(
        relax.call_dps_packed(mk.symbol, relax.Tuple(args), relax.TensorType(out.shape, out.dtype))
    )


def _residual_add(op: QOp, graph: IntGraph, consumers: dict, env: dict) -> QOp | None:
    """The Add that is the only consumer of conv `op`'s output, if its other input is computed."""
    users = consumers.get(op.output, [])
    if op.kind != "conv" or len(users) != 1 or users[0].kind != "add" or op.output in graph.outputs:
        return None
    add = users[0]
    others = [i for i in add.inputs if i != op.output]
    return add if len(others) == 1 and others[0] in env else None


def int_graph_to_relax(graph: IntGraph, micro: dict | None = None, simd: str = "none") -> tvm.IRModule:
    """A Relax module whose main runs `graph` with one emit_te call per integer op.

    With a `micro` dict, ops that a micro-kernel handles become call_dps_packed to it instead (a
    convolution together with the residual Add that follows it), and `micro` collects the
    MicroKernels by symbol. `simd` ("none" or "neon": the target's vector unit) picks among them.
    """
    bb = relax.BlockBuilder()
    params = [
        relax.Var(n, relax.TensorType(graph.tensors[n].shape, graph.tensors[n].dtype)) for n in graph.inputs
    ]
    env = dict(zip(graph.inputs, params, strict=True))
    consumers: dict[str, list[QOp]] = {}
    for op in graph.ops:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op)
    fused: set[str] = set()  # outputs of Adds already computed by a fused convolution
    with bb.function("main", params):
        with bb.dataflow():
            for op in graph.ops:
                if op.output in fused:
                    continue
                call = None
                if micro is not None:
                    add = _residual_add(op, graph, consumers, env)
                    call = _emit_micro(bb, op, env, graph, micro, add, simd) if add else None
                    if call is not None:
                        env[add.output] = call
                        fused.add(add.output)
                        continue
                    call = _emit_micro(bb, op, env, graph, micro, simd=simd)
                env[op.output] = call if call is not None else _emit(bb, op, env, graph)
            outs = [env[o] for o in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get()
