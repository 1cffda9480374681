"""The requantization constants of a micro-kernel's epilogue, and which C function applies them
(templates/kernels/ec_dsp.h, ec_neon.h): all give fixedpoint.requant's results exactly, over the
accumulator range a layer can produce."""

from __future__ import annotations

import numpy as np

from edgecomp.quant.ir import LinearOp


def _constant_output(
    lo_acc: int, hi_acc: int, mult: int, shift: int, zp: int, lo: int, hi: int
) -> int | None:
    """The channel's output when it is the same for every accumulator in [lo_acc, hi_acc] (a dead
    channel: tiny multiplier, or a bias that pins it to the clamp), else None. requant is monotonic.
    (fixedpoint.requant in Python ints: acc here may exceed int32, and acc * M overflow int64.)"""
    ends = [min(max(((v * mult + (1 << (shift - 1))) >> shift) + zp, lo), hi) for v in (lo_acc, hi_acc)]
    return ends[0] if ends[0] == ends[1] else None


def smmla_form(
    mult: np.ndarray, shift: np.ndarray, zp: int, lo: int, hi: int, acc_range: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(M, addend, sh) such that clamp(((v * M + 2**(n-1)) >> n) + zp) == clamp((addend + ((v * M) >> 32))
    >> sh) for every v in acc_range — the requantization as one SMMLA and one shift (ec_dsp.h
    ec_requant_s8) — or None when a channel's n <= 32 or its addend could overflow int32 (the
    caller then uses the int64 definition, or for an Add keeps TVM's kernel). A channel whose
    output is constant over acc_range becomes M = 0, addend = that output, sh = 0."""
    mult, shift = np.atleast_1d(np.asarray(mult, np.int64)), np.atleast_1d(np.asarray(shift, np.int64))
    acc_lo, acc_hi = (np.broadcast_to(np.asarray(r, np.int64), mult.shape) for r in acc_range)
    const = [_constant_output(int(a), int(b), int(m), int(n), zp, lo, hi)
             for a, b, m, n in zip(acc_lo, acc_hi, mult, shift, strict=True)]  # fmt: skip
    is_const = np.array([c is not None for c in const])
    if not np.all(is_const | (shift > 32)):
        return None
    n = np.where(is_const, 33, shift)
    addend = (np.int64(1) << (n - 33)) + (np.int64(zp) << (n - 32))
    addend = np.where(is_const, [0 if c is None else c for c in const], addend)
    # |(v * M) >> 32| < 2**30 for int32 v and M < 2**31, so the sum stays inside int32.
    if np.any(np.abs(addend) >= 1 << 30):
        return None
    return np.where(is_const, 0, mult), addend, np.where(is_const, 0, n - 32)


def requant_consts(op: LinearOp) -> tuple[list[np.ndarray], str]:
    """(bias, per-channel pairs, per-channel shifts) of a layer's requantization and the C function
    that applies them: ec_requant_s8 with (M, addend) pairs in smmla_form where it applies (the
    accumulator of channel c lies within bias[c] +- 128 * sum |weight[c]|), else
    ec_requant_s8_int64 with (M, zero point) pairs and the shifts n (the definition, in int64)."""
    bias = np.asarray(op.bias, np.int64)
    reach = 128 * np.abs(op.weight.reshape(op.weight.shape[0], -1).astype(np.int64)).sum(axis=1)
    zp = int(op.out_zp)
    if op.rounding == "double":  # TFLite's arithmetic
        form = dbl31_form(op.mult, op.shift, zp, (bias - reach, bias + reach))
        if form is not None:
            mult, addend, e = form
            pairs = np.stack([mult, addend], axis=1).reshape(-1)
            return [bias.astype(np.int32), pairs.astype(np.int32), e.astype(np.int8)], "ec_requant_s8_dbl31"
        mult = np.asarray(op.mult, np.int64)
        pairs = np.stack([mult, np.full(mult.shape, zp, np.int64)], axis=1).reshape(-1)
        return [bias.astype(np.int32), pairs.astype(np.int32), np.asarray(op.shift).astype(np.int8)], "ec_requant_s8_dbl"
    form = smmla_form(op.mult, op.shift, zp, int(op.lo), int(op.hi), (bias - reach, bias + reach))
    if form is None:
        mult, shift = np.asarray(op.mult, np.int64), np.asarray(op.shift, np.int64)
        form, fn = (mult, np.full(mult.shape, zp, np.int64), shift), "ec_requant_s8_int64"
    else:
        fn = "ec_requant_s8"
    mult, second, sh = form
    pairs = np.stack([mult, second], axis=1).reshape(-1)
    if fn == "ec_requant_s8" and q31_form_fits(bias - reach, bias + reach, mult, second):
        fn = "ec_requant_s8_q31"  # same results; the NEON kernels' three-instruction form (ec_neon.h)
    return [bias.astype(np.int32), pairs.astype(np.int32), sh.astype(np.int8)], fn


def dbl31_form(mult, shift, zp: int, acc_range: tuple[np.ndarray, np.ndarray]):
    """(M, addend, e) of ec_requant_s8_dbl31 — TFLite's requantization as SMMULR(2 acc, M) and
    (h + sign + addend) >> e — when every channel's TFLite shift is a right shift (n >= 32), the
    accumulators stay within +-2^30 and addend = 2^(e-1) + zp * 2^e within +-2^30; else None."""
    mult, n = np.atleast_1d(np.asarray(mult, np.int64)), np.atleast_1d(np.asarray(shift, np.int64))
    lo, hi = (np.broadcast_to(np.asarray(r, np.int64), mult.shape) for r in acc_range)
    if np.any(n < 32) or np.any(np.maximum(np.abs(lo), np.abs(hi)) >= 1 << 30):
        return None
    e = n - 31
    addend = (np.int64(1) << (e - 1)) + (np.int64(zp) << e)
    if np.any(np.abs(addend) >= 1 << 30):
        return None
    return mult, addend, e


def q31_form_fits(acc_lo: np.ndarray, acc_hi: np.ndarray, mult: np.ndarray, addend: np.ndarray) -> bool:
    """Whether ((acc * M) >> 31) + 2 * addend stays inside int32 for every accumulator in range:
    then ec_neon.h's SQDMULH form of ec_requant_s8 is exact."""
    ends = [(np.asarray(a, np.int64) * np.asarray(mult, np.int64)) >> 31 for a in (acc_lo, acc_hi)]
    worst = np.maximum(np.abs(ends[0]), np.abs(ends[1])) + 2 * np.abs(np.asarray(addend, np.int64))
    return bool(np.all(worst < 2**31))
