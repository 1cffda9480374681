"""The fixed-point arithmetic every integer kernel uses, defined once.

Requantization of an int32 accumulator `acc` by a real multiplier r (> 0):

    r = M * 2**(-n)          with M an int32 in [2**30, 2**31) and n = 31 - e   (r = m * 2**e, m in [0.5, 1))
    requant(acc) = (acc * M + 2**(n-1)) >> n     computed in int64, >> an arithmetic shift

i.e. one rounding, half towards +infinity (TFLite's "single rounding" mode, CMSIS-NN's
`arm_nn_requantize` with CMSIS_NN_USE_SINGLE_ROUNDING). The C kernels (lower/qops.py) and the
numpy reference (quant/interpret.py, each op's `reference`) both implement exactly this, so their results are identical.

Float edges (model input and output): quantize q = clamp(rint(x / s) + z) in float32 with round
half to even (as ONNX QuantizeLinear); dequantize x = (q - z) * s in float32.
"""

from __future__ import annotations

import math

import numpy as np

MAX_SHIFT = 62


def quantize_multiplier(real: float, bits: int = 31) -> tuple[int, int]:
    """(M, n) with real ~= M * 2**-n, M in [2**(bits-1), 2**bits), 1 <= n <= MAX_SHIFT; real == 0 -> (0, 1).

    bits=31 for int8 activations; int16 activations use bits=15 (as TFLite's int16x8 kernels
    reduce the multiplier) so that a 48-bit int64 accumulator times M cannot overflow.
    """
    if not (real >= 0 and math.isfinite(real)):
        raise ValueError(f"requantization multiplier must be a finite non-negative number, not {real}")
    if real == 0:
        return 0, 1
    m, e = math.frexp(real)
    big = round(m * (1 << bits))
    if big == 1 << bits:
        big //= 2
        e += 1
    n = bits - e
    if n > MAX_SHIFT:  # far below one LSB of the output: the result is 0
        return 0, 1
    if n < 1:
        raise ValueError(f"requantization multiplier {real} is too large (>= 2**30)")
    return int(big), int(n)


def quantize_multipliers(reals: np.ndarray, bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(r), bits) for r in np.asarray(reals, dtype=np.float64).reshape(-1)]
    return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)


def requant(acc: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """The exact requantization above, on int64 numpy arrays (broadcasting)."""
    acc = np.asarray(acc, dtype=np.int64)
    mult = np.asarray(mult, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    return (acc * mult + (np.int64(1) << (shift - 1))) >> shift


def requant_double(acc: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """TFLite's requantization (MultiplyByQuantizedMultiplier, two roundings) for the same (M, n):
    with s = 31 - n (TFLite's shift, left when > 0), RoundingDivideByPOT(
    SaturatingRoundingDoublingHighMul(acc << max(s, 0), M), max(-s, 0)); acc is int32 there."""
    from edgecomp.quant.tflite_arith import rdbpot, srdhm, wrap32

    acc = np.asarray(acc, dtype=np.int64)
    s = 31 - np.asarray(shift, dtype=np.int64)
    x = wrap32(acc << np.maximum(s, 0))
    return rdbpot(srdhm(x, np.asarray(mult, dtype=np.int64)), np.maximum(-s, 0))


# How a requantization rounds: "single" (edgecomp's own, above) or "double" (TFLite Micro's, for
# models imported from TFLite: bit-exact with its reference kernels and CMSIS-NN).
ROUNDINGS = {"single": requant, "double": requant_double}


def requant_by(rounding: str, acc, mult, shift) -> np.ndarray:
    return ROUNDINGS[rounding](acc, mult, shift)


def multiplier_bits(acc_bound: int) -> int:
    """Multiplier precision for requantizing values with |v| <= acc_bound: as many bits (up to 31)
    as keep v * M + 2**(n-1) inside int64 (< 2**62). Always 31 for int8 activations; int16 layers
    get fewer (TFLite's int16x8 kernels use a fixed 15-bit multiplier; this keeps more)."""
    return max(8, min(31, 62 - int(acc_bound).bit_length()))


def interp_table(table: np.ndarray, u: np.ndarray, step: int = 128) -> np.ndarray:
    """Linear interpolation in a table sampled every `step` (a power of two) at u >= 0:
    t[i] + ((t[i+1] - t[i]) * f + step/2) >> log2(step), i = u // step, f = u % step (int64)."""
    bits = step.bit_length() - 1
    t = table.astype(np.int64)
    i, f = u >> bits, u & (step - 1)
    return t[i] + (((t[i + 1] - t[i]) * f + (step >> 1)) >> bits)


def qrange(dtype: str) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)
