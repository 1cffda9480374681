"""TensorFlow Lite Micro's integer arithmetic, bit for bit (its reference kernels, which are also
what CMSIS-NN reproduces): the fixed-point primitives, gemmlowp's fixed-point functions and the
Prepare-time parameter derivations of the int8 ops, in numpy.

The TFLite importer (frontend/tflite/) builds integer-graph ops from these parameters; ops whose
int8 result depends on the input value alone (logistic, tanh, hard-swish, leaky ReLU, ReLU with a
rescale...) become 256-entry tables computed here by running TFLM's algorithm on every input.

Checked against the PyPI `tflite-micro` interpreter (the default double-rounding build:
TFLITE_SINGLE_ROUNDING undefined; every Prepare-time scale ratio in double). Sources cited are in
tensorflow/tflite-micro unless prefixed `gemmlowp:`. Integer math runs in numpy int64 and is
wrapped to int32 (`wrap32`) where the C code works in int32.
"""

from __future__ import annotations

import math

import numpy as np

I32_MIN = -(1 << 31)
I32_MAX = (1 << 31) - 1
f32 = np.float32
ACT_NONE, ACT_RELU, ACT_RELU_N1_TO_1, ACT_RELU6 = 0, 1, 2, 3
PAD_SAME, PAD_VALID = 1, 2  # TfLitePadding values (kTfLitePaddingSame=1, Valid=2)


def round_half_away(x):
    """std::round / roundf (TfLiteRound in tensorflow/lite/kernels/internal/cppmath.h).

    Rounds halfway cases away from zero.  Exact for float32 and float64 inputs:
    ``x - floor(x)`` is exact in binary floating point.  Returns the same
    floating type as the input (Python float -> float, np.float32 -> np.float32).
    """
    if isinstance(x, np.ndarray):
        ax = np.abs(x)
        fl = np.floor(ax)
        r = np.where(ax - fl >= 0.5, fl + 1, fl)
        return np.copysign(r, x).astype(x.dtype)
    if isinstance(x, np.floating):
        t = type(x)
        ax = abs(x)
        fl = t(np.floor(ax))
        r = fl + t(1) if (ax - fl) >= t(0.5) else fl
        return t(-r) if x < 0 else r
    ax = abs(x)
    fl = math.floor(ax)
    r = fl + 1 if (ax - fl) >= 0.5 else fl
    return float(-r if x < 0 else r)


def wrap32(x):
    """Reduce int64 values to int32 with two's-complement wrap (what the C code's
    int32 arithmetic does on overflow in practice)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def trunc_div(a, b):
    """C integer division (truncation toward zero) for int64 numpy arrays, b > 0."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    q = np.abs(a) // b
    return np.where(a < 0, -q, q)


def quantize_multiplier(double_multiplier: float):
    """QuantizeMultiplier(double, int32_t* quantized_multiplier, int* shift).

    q, shift = frexp(m); q_fixed = TfLiteRound(q * 2^31) (double std::round,
    half away from zero); if q_fixed == 2^31: q_fixed /= 2, ++shift;
    if shift < -31: (0, 0).  (TFLITE_SINGLE_ROUNDING clamp to shift<=30 is NOT
    applied: the wheel uses the double-rounding build.)
    Returns (multiplier:int, shift:int) with shift > 0 meaning left shift.
    """
    double_multiplier = float(double_multiplier)
    if double_multiplier == 0.0:
        return 0, 0
    q, shift = math.frexp(double_multiplier)
    q_fixed = int(round_half_away(q * float(1 << 31)))
    assert q_fixed <= (1 << 31)
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    assert q_fixed <= I32_MAX
    if shift < -31:
        shift = 0
        q_fixed = 0
    return q_fixed, shift


def reduce_multiplier_int64(quantized_multiplier: int) -> int:
    """The 15-bit multiplier of MultiplyByQuantizedMultiplier(int64_t x, ...) (common.h, the int16x8
    kernels' int64 accumulators): (m + 2^15) >> 16, or 0x7FFF from 0x7FFF0000 up. That function then
    rounds once: (x * reduced + 2^(14 - shift)) >> (15 - shift)."""
    m = int(quantized_multiplier)
    return (m + (1 << 15)) >> 16 if m < 0x7FFF0000 else 0x7FFF


def quantize_multiplier_smaller_than_one_exp(double_multiplier: float):
    """QuantizeMultiplierSmallerThanOneExp: requires 0 < m < 1; returns
    (multiplier, left_shift) with left_shift <= 0."""
    assert 0.0 < double_multiplier < 1.0
    m, s = quantize_multiplier(double_multiplier)
    assert s <= 0
    return m, s


def quantize_multiplier_greater_than_one(double_multiplier: float):
    """QuantizeMultiplierGreaterThanOne: requires m > 1; returns (multiplier,
    left_shift >= 0)."""
    assert double_multiplier > 1.0
    m, s = quantize_multiplier(double_multiplier)
    assert s >= 0
    return m, s


def calculate_input_radius(input_integer_bits, input_left_shift, total_signed_bits=31):
    """CalculateInputRadius (quantization_util.cc, non-TFLITE_EMULATE_FLOAT):
    floor(1.0 * (2^ib - 1) * 2^(tsb - ib) / 2^left_shift) computed in double."""
    v = 1.0 * ((1 << input_integer_bits) - 1) * float(1 << (total_signed_bits - input_integer_bits))
    v = v / float(2.0 ** input_left_shift)
    return int(math.floor(v))


def preprocess_softmax_scaling(beta: float, input_scale: float, input_integer_bits: int):
    """PreprocessSoftmaxScaling (quantization_util.cc):
    m = min(beta * input_scale * (1 << (31 - ib)), 2^31 - 1)   [all double]
    then QuantizeMultiplierGreaterThanOne(m)."""
    max_real = float((1 << 31) - 1)
    real = min(float(beta) * float(input_scale) * float(1 << (31 - input_integer_bits)), max_real)
    return quantize_multiplier_greater_than_one(real)


def srdhm(a, b):
    """gemmlowp::SaturatingRoundingDoublingHighMul(int32 a, int32 b) (fixedpoint.h).

    ab = (int64)a*b; nudge = ab >= 0 ? 2^30 : 1 - 2^30;
    result = (int32)((ab + nudge) / 2^31)  -- C division, truncates toward 0;
    a == b == INT32_MIN saturates to INT32_MAX.  Ties round UP (toward +inf):
    equivalent to (ab + 2^30) >> 31 (arithmetic shift).  (== ARM VQRDMULH)
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    res = trunc_div(ab + nudge, np.int64(1 << 31))
    overflow = (a == b) & (a == I32_MIN)
    return np.where(overflow, np.int64(I32_MAX), res)


def rdbpot(x, exponent):
    """gemmlowp::RoundingDivideByPOT(x, exponent) (fixedpoint.h).

    mask = 2^e - 1; remainder = x & mask; threshold = (mask >> 1) + (x < 0);
    result = (x >> e) + (remainder > threshold).  I.e. round to nearest, ties
    away from zero.  ``exponent`` may be an array (per-channel), 0..31.
    """
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> e) + (remainder > threshold).astype(np.int64)


def saturating_left_shift32(x, exponent: int):
    """gemmlowp ImplSaturatingRoundingMultiplyByPOT<Exponent>, Exponent > 0, int32.

    threshold = 2^(31-e) - 1; x > threshold -> INT32_MAX; x < -threshold ->
    INT32_MIN; else x * 2^e."""
    x = np.asarray(x, dtype=np.int64)
    if exponent == 0:
        return x
    thr = (1 << (31 - exponent)) - 1
    r = x * (1 << exponent)
    r = np.where(x > thr, np.int64(I32_MAX), r)
    r = np.where(x < -thr, np.int64(I32_MIN), r)
    return r


def sat_rounding_mul_by_pot(x, exponent: int):
    """gemmlowp::SaturatingRoundingMultiplyByPOT<Exponent> (int32):
    exponent > 0: saturating left shift; < 0: RoundingDivideByPOT; 0: identity."""
    if exponent > 0:
        return saturating_left_shift32(x, exponent)
    if exponent < 0:
        return rdbpot(x, -exponent)
    return np.asarray(x, dtype=np.int64)


def rescale(x, src_int_bits: int, dst_int_bits: int):
    """gemmlowp::Rescale<dst>(FixedPoint<int32, src>) =
    SaturatingRoundingMultiplyByPOT<src - dst>(raw)."""
    return sat_rounding_mul_by_pot(x, src_int_bits - dst_int_bits)


def rounding_half_sum(a, b):
    """gemmlowp::RoundingHalfSum<int32>: sum = a + b (int64);
    (sum + (sum >= 0 ? 1 : -1)) / 2 with C truncating division."""
    s = np.asarray(a, dtype=np.int64) + np.asarray(b, dtype=np.int64)
    sign = np.where(s >= 0, 1, -1).astype(np.int64)
    return trunc_div(s + sign, np.int64(2))


def count_leading_zeros32(x):
    """tflite CountLeadingZeros<uint32_t> (common.h): 32 for 0, else __builtin_clz."""
    x = np.asarray(x, dtype=np.int64) & 0xFFFFFFFF
    out = np.full(x.shape, 32, dtype=np.int64)
    nz = x != 0
    # bit_length via float64 is exact for < 2^53
    bl = np.zeros(x.shape, dtype=np.int64)
    bl[nz] = np.floor(np.log2(x[nz].astype(np.float64))).astype(np.int64) + 1
    # guard against log2 rounding at exact powers of two boundaries
    for _ in range(2):
        too_big = nz & ((np.int64(1) << (bl - 1)) > x)
        bl = np.where(too_big, bl - 1, bl)
        too_small = nz & ((np.int64(1) << bl) <= x)
        bl = np.where(too_small, bl + 1, bl)
    out[nz] = 32 - bl[nz]
    return out


def mbqm(x, quantized_multiplier, shift):
    """MultiplyByQuantizedMultiplier(int32_t x, int32_t m, int shift), double
    rounding (TFLITE_SINGLE_ROUNDING undefined):

        left = max(shift, 0); right = max(-shift, 0)
        RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * (1 << left), m), right)

    ``x * (1 << left)`` is int32 arithmetic in C (wraps).  Works elementwise
    with per-channel ``quantized_multiplier``/``shift`` arrays.
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    xs = wrap32(x * (np.int64(1) << left))
    return rdbpot(srdhm(xs, quantized_multiplier), right)


def mbqm_smaller_than_one_exp(x, quantized_multiplier, left_shift):
    """MultiplyByQuantizedMultiplierSmallerThanOneExp (common.h, double rounding):
    RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x, m), -left_shift)."""
    return rdbpot(srdhm(x, quantized_multiplier), -np.asarray(left_shift, dtype=np.int64))


def mbqm_greater_than_one(x, quantized_multiplier, left_shift):
    """MultiplyByQuantizedMultiplierGreaterThanOne (common.h, double rounding):
    SaturatingRoundingDoublingHighMul(x * (1 << left_shift), m)."""
    x = np.asarray(x, dtype=np.int64)
    return srdhm(wrap32(x * (np.int64(1) << np.asarray(left_shift, dtype=np.int64))), quantized_multiplier)


_FP_ONE_Q0 = I32_MAX  # FixedPoint<int32,0>::One()


def exp_on_interval_between_negative_one_quarter_and_0_excl(a):
    """gemmlowp exp_on_interval_between_negative_one_quarter_and_0_excl(F0 a):
    Taylor series around -1/8.  Raw Q0.31 in and out."""
    a = np.asarray(a, dtype=np.int64)
    constant_term = 1895147668          # exp(-1/8)
    constant_1_over_3 = 715827883
    x = wrap32(a + (1 << 28))           # a + 1/8
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rdbpot(x4, 2)
    t = wrap32(srdhm(wrap32(x4_over_4 + x3), constant_1_over_3) + x2)
    x4_over_24_plus_x3_over_6_plus_x2_over_2 = rdbpot(t, 1)
    return wrap32(constant_term + srdhm(constant_term, wrap32(x + x4_over_24_plus_x3_over_6_plus_x2_over_2)))


_EXP_BARREL = [(-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242)]


def exp_on_negative_values(a, integer_bits: int):
    """gemmlowp exp_on_negative_values(FixedPoint<int32, integer_bits> a) -> Q0.31.

    a_mod_q_minus_q = (a & (1/4 - eps)) - 1/4; result = exp_interval(Rescale<0>(..));
    remainder = a_mod_q_minus_q - a; for each bit (Exponent -2..4, only if
    integer_bits > Exponent): if remainder has bit (frac_bits + Exponent) set,
    result = SRDHM(result, exp(-2^Exponent) const); if integer_bits > 5 and
    a < -32: result = 0; if a == 0: result = One (INT32_MAX)."""
    a = np.asarray(a, dtype=np.int64)
    k = integer_bits
    frac = 31 - k
    one_quarter = 1 << (frac - 2)
    mask = one_quarter - 1
    a_mod = wrap32((a & mask) - one_quarter)
    result = exp_on_interval_between_negative_one_quarter_and_0_excl(rescale(a_mod, k, 0))
    remainder = wrap32(a_mod - a)
    for exponent, mult in _EXP_BARREL:
        if k > exponent:
            shift_amount = frac + exponent
            bit = (remainder & (np.int64(1) << shift_amount)) != 0
            result = np.where(bit, srdhm(result, mult), result)
    if k > 5:
        clamp_b = 36 - k
        clamp = -(1 << clamp_b)
        result = np.where(a < clamp, 0, result)
    result = np.where(a == 0, _FP_ONE_Q0, result)
    return result.astype(np.int64)


def _newton_reciprocal_f2(half_denominator):
    """Shared Newton-Raphson body of gemmlowp one_over_one_plus_x_for_x_in_0_1 and
    one_minus_x_over_one_plus_x_for_x_in_0_1: returns x in Q2.29 ~ 1/half_denominator."""
    c48_17 = 1515870810        # 48/17 in Q2.29
    cneg32_17 = -1010580540    # -32/17 in Q2.29
    f2_one = 1 << 29
    x = wrap32(c48_17 + srdhm(half_denominator, cneg32_17))
    for _ in range(3):
        hdx = srdhm(half_denominator, x)
        one_minus = wrap32(f2_one - hdx)
        x = wrap32(x + rescale(srdhm(x, one_minus), 4, 2))
    return x


def one_over_one_plus_x_for_x_in_0_1(a):
    """gemmlowp one_over_one_plus_x_for_x_in_0_1(F0 a) -> F0 1/(1+a).
    half_denominator = RoundingHalfSum(a, One); 3 Newton steps in Q2.29;
    return Rescale<0>(ExactMulByPot<-1>(x)) = saturating_left_shift(x, 1)."""
    half_den = rounding_half_sum(a, _FP_ONE_Q0)
    x = _newton_reciprocal_f2(half_den)
    return rescale(x, 1, 0)


def one_minus_x_over_one_plus_x_for_x_in_0_1(a):
    """gemmlowp one_minus_x_over_one_plus_x_for_x_in_0_1(F0 a) -> (1-a)/(1+a):
    same Newton iteration, returns Rescale<0>(x - F2::One())."""
    half_den = rounding_half_sum(a, _FP_ONE_Q0)
    x = _newton_reciprocal_f2(half_den)
    return rescale(wrap32(x - (1 << 29)), 2, 0)


def fixedpoint_tanh(a, integer_bits: int):
    """gemmlowp tanh(FixedPoint<int32, integer_bits>) -> Q0.31.
    n = a < 0 ? a : -a; t = one_minus_x_over_one_plus_x(exp_on_negative_values(
    ExactMulByPot<1>(n)))  [same raw, integer_bits + 1]; a==0 -> 0; a<0 -> -t."""
    a = np.asarray(a, dtype=np.int64)
    neg = a < 0
    n = np.where(neg, a, -a)
    t = one_minus_x_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(n, integer_bits + 1))
    return np.where(a == 0, 0, np.where(neg, -t, t))


def fixedpoint_logistic(a, integer_bits: int):
    """gemmlowp logistic(FixedPoint<int32, integer_bits>) -> Q0.31.
    abs = a > 0 ? a : -a; rp = one_over_one_plus_x(exp_on_negative_values(-abs));
    a > 0 -> rp; a < 0 -> One - rp; a == 0 -> 1/2 (1 << 30)."""
    a = np.asarray(a, dtype=np.int64)
    pos = a > 0
    absx = np.where(pos, a, -a)
    rp = one_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(-absx, integer_bits))
    rn = wrap32(_FP_ONE_Q0 - rp)
    return np.where(a == 0, 1 << 30, np.where(pos, rp, rn))


def get_reciprocal(x, x_integer_digits: int):
    """tflite GetReciprocal (common.h): headroom_plus_one = clz(x);
    num_bits_over_unit = x_integer_digits - headroom_plus_one;
    shifted_sum_minus_one = (uint32)x << headroom_plus_one - 2^31 (as int32);
    returns (one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one), num_bits_over_unit)."""
    x = np.asarray(x, dtype=np.int64)
    hp1 = count_leading_zeros32(x)
    nbou = x_integer_digits - hp1
    shifted = wrap32(((x & 0xFFFFFFFF) << hp1) - (1 << 31))
    return one_over_one_plus_x_for_x_in_0_1(shifted), nbou


def _quantize_for_act(scale, zero_point, f):
    """kernel_util.cc anonymous Quantize(): tmp = TfLiteRound(f / scale) in
    float32 (f and scale are float); q = zero_point + (int32)tmp."""
    tmp = round_half_away(f32(f) / f32(scale))
    return int(zero_point) + int(tmp)


def calculate_activation_range_quantized(activation, scale, zero_point, qmin=-128, qmax=127):
    """CalculateActivationRangeQuantized / CalculateActivationRangeQuantizedImpl
    (tensorflow/lite/kernels/kernel_util.cc):
      RELU:        [max(qmin, Q(0)), qmax]
      RELU6:       [max(qmin, Q(0)), min(qmax, Q(6))]
      RELU_N1_TO_1:[max(qmin, Q(-1)), min(qmax, Q(1))]
      otherwise    [qmin, qmax]      (TANH/SIGN_BIT fused codes are not clamped)
    with Q(f) = zp + (int)roundf(f / scale) in float32."""
    if activation == ACT_RELU:
        return max(qmin, _quantize_for_act(scale, zero_point, 0.0)), qmax
    if activation == ACT_RELU6:
        return (max(qmin, _quantize_for_act(scale, zero_point, 0.0)),
                min(qmax, _quantize_for_act(scale, zero_point, 6.0)))
    if activation == ACT_RELU_N1_TO_1:
        return (max(qmin, _quantize_for_act(scale, zero_point, -1.0)),
                min(qmax, _quantize_for_act(scale, zero_point, 1.0)))
    return qmin, qmax




def compute_out_size(padding, image_size, filter_size, stride, dilation=1):
    """ComputeOutSize (tensorflow/lite/kernels/padding.h)."""
    eff = (filter_size - 1) * dilation + 1
    if stride == 0:
        return 0
    if padding == PAD_SAME:
        return (image_size + stride - 1) // stride
    if padding == PAD_VALID:
        return (image_size + stride - eff) // stride
    return 0


def compute_padding_with_offset(stride, dilation, in_size, filter_size, out_size):
    """ComputePaddingWithOffset (padding.h): total = max(0, (out-1)*stride + eff - in);
    returns (total // 2, total % 2).  Only the first value (the top/left pad) is
    used by the reference kernels; the extra odd pixel goes to the bottom/right."""
    eff = (filter_size - 1) * dilation + 1
    total = (out_size - 1) * stride + eff - in_size
    total = total if total > 0 else 0
    return total // 2, total % 2


def compute_padding_height_width(stride_h, stride_w, dil_h, dil_w, in_h, in_w, f_h, f_w, padding):
    """ComputePaddingHeightWidth (padding.h).  Returns (pad_h, pad_w, out_h, out_w)."""
    out_w = compute_out_size(padding, in_w, f_w, stride_w, dil_w)
    out_h = compute_out_size(padding, in_h, f_h, stride_h, dil_h)
    pad_h, _ = compute_padding_with_offset(stride_h, dil_h, in_h, f_h, out_h)
    pad_w, _ = compute_padding_with_offset(stride_w, dil_w, in_w, f_w, out_w)
    return pad_h, pad_w, out_h, out_w


def prepare_softmax(input_scale, beta):
    """CalculateSoftmaxParams (micro/kernels/softmax_common.cc), int8 -> int8:
    requires output zp == -128 and output scale == 1/256 exactly.
      PreprocessSoftmaxScaling(beta, input_scale, kScaledDiffIntegerBits=5):
        real = min((double)beta * (double)input_scale * 2^26, 2^31 - 1)
        (input_multiplier, input_left_shift) = QuantizeMultiplierGreaterThanOne(real)
      diff_min = -CalculateInputRadius(5, input_left_shift, 31)
               = -floor(31 * 2^26 / 2^input_left_shift)."""
    m, s = preprocess_softmax_scaling(float(f32(beta)), float(f32(input_scale)), 5)
    diff_min = -calculate_input_radius(5, s, 31)
    return dict(input_multiplier=m, input_left_shift=s, diff_min=diff_min)


def softmax_exp_table(p):
    """Table formulation of the int8 softmax's per-element exp (see SPEC.md section 7).
    Index k = max_in_row - x in [0, 255]:
        EXP[k] = (-k >= diff_min) ? exp_on_negative_values<5>(
                    MBQMGreaterThanOne(-k, input_multiplier, input_left_shift)) : 0
    Returns (EXP int64[256] holding int32 Q0.31 values, included bool[256])."""
    k = np.arange(256, dtype=np.int64)
    d = -k
    included = d >= p['diff_min']
    rescaled = mbqm_greater_than_one(d, p['input_multiplier'], p['input_left_shift'])
    e = exp_on_negative_values(rescaled, 5)
    return np.where(included, e, 0), included


def softmax_int8_table(x, p, table=None):
    """Same result as softmax_int8, written the way a C kernel with precomputed
    tables does it (SPEC.md section 7):
        EXP[k], EXP12[k] = RDBPOT(EXP[k], 12)   for k = max - x in [0, 255]
        sum = sum_i EXP12[k_i];  (S, nbou) = GetReciprocal(sum, 12)
        y_i = clamp(RDBPOT(SRDHM(S, EXP[k_i]), nbou + 23) - 128, -128, 127)
    No separate 'excluded' mask is needed: EXP[k] = 0 yields exactly -128."""
    if table is None:
        table, _ = softmax_exp_table(p)
    exp12 = rdbpot(table, 12)
    shp = x.shape
    xi = x.reshape(-1, shp[-1]).astype(np.int64)
    k = xi.max(axis=1, keepdims=True) - xi
    e = table[k]
    sum_of_exps = exp12[k].sum(axis=1, keepdims=True)
    if not np.all(sum_of_exps < (1 << 28)):
        raise ValueError('softmax: sum of exps >= 512 -> TFLM TFLITE_CHECK abort')
    shifted_scale, nbou = get_reciprocal(sum_of_exps, 12)
    out = np.clip(rdbpot(srdhm(shifted_scale, e), nbou + 23) - 128, -128, 127)
    return out.reshape(shp).astype(np.int8)


def _prepare_logistic_tanh_int8(input_scale):
    """CalculateArithmeticOpDataLogistic (micro/kernels/logistic_common.cc) and
    tanh.cc CalculateArithmeticOpData, int8 branch (kInputIntegerBits = 4):
        real = (double)input_scale * (double)(1 << 27)
        q, left_shift = frexp(real); multiplier = (int32)TfLiteRound(q * 2^31)
        (NB: no q == 2^31 correction here, unlike QuantizeMultiplier)
        input_range_radius = CalculateInputRadius(4, left_shift, 31)."""
    real = float(f32(input_scale)) * float(1 << 27)
    q, ls = math.frexp(real)
    mult = int(round_half_away(q * float(1 << 31)))
    if mult == (1 << 31):        # C: static_cast<int32_t>(2^31) -> INT32_MIN in practice
        mult = I32_MIN
    radius = calculate_input_radius(4, ls, 31)
    return dict(input_multiplier=mult, input_left_shift=ls, input_range_radius=radius)


def prepare_logistic(input_scale, input_zp):
    """LOGISTIC int8 Prepare; output must have zp -128 (checked by TFLM), scale
    is assumed to be 1/256 (not checked)."""
    d = _prepare_logistic_tanh_int8(input_scale)
    d['input_zp'] = int(input_zp)
    return d


def logistic_int8(x, p):
    """reference_integer_ops::Logistic (integer_ops/logistic.h), int8:
      v = q - input_zp
      v <= -radius -> -128;  v >= radius -> 127
      else: q4 = MBQM(v, mult, left_shift)       (Q4.27)
            y  = gemmlowp::logistic(F4(q4))      (Q0.31)
            out = clamp(RoundingDivideByPOT(y, 23) - 128, -128, 127)."""
    v = x.astype(np.int64) - p['input_zp']
    q4 = mbqm(v, p['input_multiplier'], p['input_left_shift'])
    y = fixedpoint_logistic(q4, 4)
    out = np.clip(rdbpot(y, 23) - 128, -128, 127)
    r = p['input_range_radius']
    out = np.where(v <= -r, -128, np.where(v >= r, 127, out))
    return out.astype(np.int8)


def prepare_tanh(input_scale, input_zp):
    """TANH int8 Prepare (micro/kernels/tanh.cc). Output zp/scale NOT checked and
    NOT used: the kernel assumes output scale 1/128, zp 0."""
    d = _prepare_logistic_tanh_int8(input_scale)
    d['input_zp'] = int(input_zp)
    return d


def tanh_int8(x, p):
    """reference_integer_ops::Tanh (integer_ops/tanh.h), int8:
      v = q - input_zp; v <= -radius -> -128; v >= radius -> 127;
      else y = gemmlowp::tanh(F4(MBQM(v, mult, shift))); out = clamp(RDBPOT(y, 24), -128, 127)
      (output zero point ignored)."""
    v = x.astype(np.int64) - p['input_zp']
    q4 = mbqm(v, p['input_multiplier'], p['input_left_shift'])
    y = fixedpoint_tanh(q4, 4)
    out = np.clip(rdbpot(y, 24), -128, 127)
    r = p['input_range_radius']
    out = np.where(v <= -r, -128, np.where(v >= r, 127, out))
    return out.astype(np.int8)


def prepare_requantize(input_scale, output_scale):
    """PrepareQuantizeReference (micro/kernels/quantize_common.cc), int8->int8:
    effective = (double)input_scale / (double)output_scale; QuantizeMultiplier."""
    return quantize_multiplier(float(f32(input_scale)) / float(f32(output_scale)))


def requantize_int8(x, in_zp, out_zp, mult, shift):
    """reference_ops::Requantize (reference/requantize.h), int8->int8:
    out = clamp(MBQM(q - in_zp, m, s) + out_zp, -128, 127)."""
    out = mbqm(x.astype(np.int64) - int(in_zp), mult, shift) + int(out_zp)
    return np.clip(out, -128, 127).astype(np.int8)


def prepare_relu(input_scale, output_scale, output_zp):
    """CalculateReluOpData<int8> (micro/kernels/activations_common.cc):
    real = (double)s_in / (double)s_out -> QuantizeMultiplier;
    act_min = max(-128, zp_out + (int)roundf(0.0f / s_out)) = max(-128, zp_out);
    act_max = 127."""
    m, s = quantize_multiplier(float(f32(input_scale)) / float(f32(output_scale)))
    amin = max(-128, int(output_zp) + int(round_half_away(f32(0.0) / f32(output_scale))))
    return dict(mult=m, shift=s, act_min=amin, act_max=127)


def relu_int8(x, in_zp, out_zp, p):
    """ReluQuantized (micro/kernels/activations_common.cc):
    out = clamp(zp_out + MBQM(q - zp_in, m, s), act_min, act_max)."""
    out = int(out_zp) + mbqm(x.astype(np.int64) - int(in_zp), p['mult'], p['shift'])
    return np.clip(out, p['act_min'], p['act_max']).astype(np.int8)


def relu6_int8(x, input_scale, in_zp):
    """Relu6Prepare / Relu6Quantized (micro/kernels/activations_common.cc, activations.h):
    zero = zp_in; six = FloatToQuantizedType<int8>(6.0f, s_in, zp_in)
         = clamp(round(6.0f / s_in) + zp_in, -128, 127);
    out = clamp(q, zero, six)  -- uses INPUT quantization; no rescale to output."""
    six = int(round_half_away(f32(6.0) / f32(input_scale))) + int(in_zp)
    six = max(-128, min(127, six))
    return np.clip(x.astype(np.int64), int(in_zp), six).astype(np.int8)


def _downscale_int32_to_int16_multiplier(m):
    """DownScaleInt32ToInt16Multiplier (common.h)."""
    if m >= I32_MAX - (1 << 15):
        return 32767
    return (m + (1 << 15)) >> 16


def prepare_hard_swish(input_scale, input_zp, output_scale, output_zp):
    """HardSwishPrepare (micro/kernels/hard_swish_common.cc), as compiled in the wheel:
        hires_input_scale = (1/128.f) * s_in               (float32; exact)
        output_multiplier  = (double)hires / (double)s_out
        reluish_multiplier = (double)hires / (double)(3.f / 32768.f)
    each -> QuantizeMultiplier -> DownScaleInt32ToInt16Multiplier.
    (Source trees that write `static_cast<double>(hires_input_scale / output_scale)`
    divide in float32; the wheel does not.)  TFLM requires output exponent <= 0."""
    hires = f32(1.0 / 128.0) * f32(input_scale)
    reluish_scale = f32(3.0) / f32(32768.0)
    om, oe = quantize_multiplier(float(hires) / float(f32(output_scale)))
    rm, re = quantize_multiplier(float(hires) / float(reluish_scale))
    assert oe <= 0
    return dict(input_zp=int(input_zp), output_zp=int(output_zp),
                out_mult16=_downscale_int32_to_int16_multiplier(om), out_exp=oe,
                relu_mult16=_downscale_int32_to_int16_multiplier(rm), relu_exp=re)


def _srdhm16(a, b):
    """gemmlowp::SaturatingRoundingDoublingHighMul<int16>."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    r = trunc_div(ab + nudge, np.int64(1 << 15))
    r = ((r + 32768) & 0xFFFF) - 32768
    return np.where((a == b) & (a == -32768), 32767, r)


def _sdhm16(a, b):
    """reference_ops::SaturatingDoublingHighMul (reference/hard_swish.h): truncating."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    r = trunc_div(a * b, np.int64(1 << 15))
    r = ((r + 32768) & 0xFFFF) - 32768
    return np.where((a == b) & (a == -32768), 32767, r)


def _sat_lshift16(v, amount):
    """reference_ops::SaturatingLeftShift (reference/hard_swish.h)."""
    r = np.asarray(v, dtype=np.int64) * (1 << amount)
    return np.clip(r, -32768, 32767)


def hard_swish_int8(x, p):
    """reference_ops::HardSwish<int8> quantized (kernels/internal/reference/hard_swish.h),
    all in int16 fixed point:
      iv   = q - zp_in;  hires = iv * 128
      pre  = SRDHM16(hires, out_mult16)
      r    = hires; if relu_exp > 0: r = satshl16(r, relu_exp - 1)
      r    = SRDHM16(r, relu_mult16)
      if relu_exp > 0: r = satshl16(r, 1)
      if relu_exp < 0: r = RDBPOT(r, -relu_exp)
      r    = (r + 32768) >> 1                       # [-1,1] -> [0,1] in Q0.15
      y    = SaturatingDoublingHighMul16(r, pre)    # truncating, NOT rounding
      out  = clamp(RDBPOT(y, -out_exp) + zp_out, -128, 127)."""
    iv = x.astype(np.int64) - p['input_zp']
    hires = iv * 128
    pre = _srdhm16(hires, p['out_mult16'])
    r = hires
    if p['relu_exp'] > 0:
        r = _sat_lshift16(r, p['relu_exp'] - 1)
    r = _srdhm16(r, p['relu_mult16'])
    if p['relu_exp'] > 0:
        r = _sat_lshift16(r, 1)
    if p['relu_exp'] < 0:
        r = rdbpot(r, -p['relu_exp'])
    r = (r + 32768) >> 1
    y = _sdhm16(r, pre)
    out = rdbpot(y, -p['out_exp'])
    out = ((out + p['output_zp'] + 32768) & 0xFFFF) - 32768    # int16 add
    return np.clip(out, -128, 127).astype(np.int8)


def prepare_leaky_relu(input_scale, input_zp, output_scale, output_zp, alpha):
    """CalculateOpDataLeakyRelu (micro/kernels/leaky_relu_common.cc), as compiled in the wheel:
        alpha_multiplier    = (double)s_in * (double)alpha / (double)s_out
        identity_multiplier = (double)s_in / (double)s_out
    both through QuantizeMultiplier (alpha may be negative -> negative multiplier).
    (The source text `static_cast<double>(s_in * alpha / s_out)` is float32 math:
    the wheel computes in double.)"""
    am, ash = quantize_multiplier(float(f32(input_scale)) * float(f32(alpha)) / float(f32(output_scale)))
    im, ish = quantize_multiplier(float(f32(input_scale)) / float(f32(output_scale)))
    return dict(input_zp=int(input_zp), output_zp=int(output_zp), m_alpha=am, s_alpha=ash,
                m_id=im, s_id=ish)


def leaky_relu_int8(x, p):
    """reference_ops::QuantizeLeakyRelu (reference/leaky_relu.h):
    v = q - zp_in; out = zp_out + MBQM(v, v >= 0 ? identity : alpha); clamp int8."""
    v = x.astype(np.int64) - p['input_zp']
    pos = mbqm(v, p['m_id'], p['s_id'])
    neg = mbqm(v, p['m_alpha'], p['s_alpha'])
    out = p['output_zp'] + np.where(v >= 0, pos, neg)
    return np.clip(out, -128, 127).astype(np.int8)


def prepare_mean(input_scale, output_scale):
    """PrepareMeanOrSum (micro/kernels/reduce_common.cc): real = (double)s_in /
    (double)s_out -> QuantizeMultiplier."""
    return quantize_multiplier(float(f32(input_scale)) / float(f32(output_scale)))


def gen_lut_int16(func, input_min: float, input_max: float, output_min: float, output_max: float) -> np.ndarray:
    """gen_lut<float, int16_t, int16_t> (kernels/internal/common.h): 512 samples of `func` over
    [input_min, input_max] plus one end point, each biased by half the error of linear interpolation
    at the midpoint; all in float32 as TFLM computes it (func takes and returns np.float32)."""
    step = (f32(input_max) - f32(input_min)) / f32(512)
    half = step / f32(2)
    inv = f32(65536) / (f32(output_max) - f32(output_min))
    lut = np.zeros(513, np.int64)
    for i in range(512):
        x = f32(input_min) + f32(i) * step
        val, mid, nxt = func(x), func(x + half), func(f32(input_min) + f32(i + 1) * step)
        sample = round_half_away(val * inv)
        interp = round_half_away((nxt * inv + round_half_away(val * inv)) / f32(2))
        bias = round_half_away((interp - round_half_away(mid * inv)) / f32(2))
        lut[i] = int(min(max(sample - bias, f32(-32768)), f32(32767)))
    lut[512] = int(min(max(round_half_away(func(f32(input_max)) * inv), f32(-32768)), f32(32767)))
    return lut


def _expf(x):
    """expf: float64 exp rounded to float32 (glibc's expf is correctly rounded on these inputs)."""
    return f32(math.exp(float(x)))


def softmax_int16_luts() -> tuple[np.ndarray, np.ndarray]:
    """SoftmaxPrepare's int16 tables (micro/kernels/softmax_common.cc): exp over [-10, 0] and
    1 / (1 + x) over [0, 1], both to [-1, 1] in Q0.15."""
    return (gen_lut_int16(_expf, -10.0, 0.0, -1.0, 1.0),
            gen_lut_int16(lambda v: f32(1.0) / (f32(1.0) + v), 0.0, 1.0, -1.0, 1.0))


def prepare_softmax_int16(input_scale: float, beta: float) -> tuple[int, int]:
    """CalculateSoftmaxParams, int16: QuantizeMultiplier((double)s_in * (double)beta / (10.0 / 65535.0))
    (the row's differences [-65535, 0] onto the exp table's [-10, 0])."""
    return quantize_multiplier(float(f32(input_scale)) * float(f32(beta)) / (10.0 / 65535.0))


def lut_lookup_int16(v, lut):
    """lut_lookup_with_interpolation (common.h): int16 v, 513-entry table: base lut[256 + (v >> 7)]
    plus (slope * (v & 127) + 64) >> 7."""
    v = np.asarray(v, dtype=np.int64)
    lut = np.asarray(lut, dtype=np.int64)
    idx = 256 + (v >> 7)
    base = lut[idx]
    return base + (((lut[idx + 1] - base) * (v & 127) + 64) >> 7)


def softmax_int16(x, mult: int, shift: int, exp_lut, recip_lut):
    """reference_ops::SoftmaxInt16 (reference/softmax.h) over the last axis."""
    x = np.asarray(x, dtype=np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    e = lut_lookup_int16(np.clip(mbqm(diff, mult, shift) + 32767, -32768, 32767), exp_lut)
    total = e.sum(axis=-1, keepdims=True)
    hp1 = count_leading_zeros32(total)
    shifted = ((total << (hp1 - 1)) + (1 << 13)) >> 14
    recip = lut_lookup_int16(np.clip(shifted - ((1 << 15) + (1 << 16)), -32768, 32767), recip_lut)
    rs = 31 - hp1
    return np.clip((e * recip + (np.int64(1) << (rs - 1))) >> rs, 0, 32767)


# sigmoid(i / 24) in Q0.16 for i = 0..255: the table of TFLite's int16 LOGISTIC and TANH kernels
# (sigmoid_table_uint16, tensorflow/lite/kernels/internal/common.h; CMSIS-NN arm_nntables.c has the same).
# Not a rounding of the function that can be recomputed (44 entries differ by 1 from round()): kept as TFLM has it.
SIGMOID_TABLE_UINT16 = np.array([
    32768, 33451, 34133, 34813, 35493, 36169, 36843, 37513, 38180, 38841, 39498, 40149, 40794, 41432, 42064, 42688,
    43304, 43912, 44511, 45102, 45683, 46255, 46817, 47369, 47911, 48443, 48964, 49475, 49975, 50464, 50942, 51409,
    51865, 52311, 52745, 53169, 53581, 53983, 54374, 54755, 55125, 55485, 55834, 56174, 56503, 56823, 57133, 57433,
    57724, 58007, 58280, 58544, 58800, 59048, 59288, 59519, 59743, 59959, 60168, 60370, 60565, 60753, 60935, 61110,
    61279, 61441, 61599, 61750, 61896, 62036, 62172, 62302, 62428, 62549, 62666, 62778, 62886, 62990, 63090, 63186,
    63279, 63368, 63454, 63536, 63615, 63691, 63765, 63835, 63903, 63968, 64030, 64090, 64148, 64204, 64257, 64308,
    64357, 64405, 64450, 64494, 64536, 64576, 64614, 64652, 64687, 64721, 64754, 64786, 64816, 64845, 64873, 64900,
    64926, 64950, 64974, 64997, 65019, 65039, 65060, 65079, 65097, 65115, 65132, 65149, 65164, 65179, 65194, 65208,
    65221, 65234, 65246, 65258, 65269, 65280, 65291, 65301, 65310, 65319, 65328, 65337, 65345, 65352, 65360, 65367,
    65374, 65381, 65387, 65393, 65399, 65404, 65410, 65415, 65420, 65425, 65429, 65433, 65438, 65442, 65445, 65449,
    65453, 65456, 65459, 65462, 65465, 65468, 65471, 65474, 65476, 65479, 65481, 65483, 65485, 65488, 65489, 65491,
    65493, 65495, 65497, 65498, 65500, 65501, 65503, 65504, 65505, 65507, 65508, 65509, 65510, 65511, 65512, 65513,
    65514, 65515, 65516, 65517, 65517, 65518, 65519, 65520, 65520, 65521, 65522, 65522, 65523, 65523, 65524, 65524,
    65525, 65525, 65526, 65526, 65526, 65527, 65527, 65528, 65528, 65528, 65529, 65529, 65529, 65529, 65530, 65530,
    65530, 65530, 65531, 65531, 65531, 65531, 65531, 65532, 65532, 65532, 65532, 65532, 65532, 65533, 65533, 65533,
    65533, 65533, 65533, 65533, 65533, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65535,
], np.int64)


def checked_log2(x: float) -> tuple[bool, int]:
    """CheckedLog2 (quantization_util.h): log2 in float32 via logf, rounded; (|frac| < 1e-3, rounded)."""
    lg = f32(f32(math.log(float(f32(x)))) * f32(1.0 / float(f32(math.log(2.0)))))
    r = round_half_away(lg)
    return bool(abs(lg - r) < f32(1e-3)), int(r)


def prepare_sigmoid_int16(input_scale: float, tanh: bool) -> tuple[int, int]:
    """LOGISTIC / TANH int16 Prepare (micro/kernels/logistic_common.cc, tanh.cc): the input onto
    the table's scale 1/(3 * 4096): (multiplier, right shift) as the kernel applies them (a
    power-of-two input scale: 3 << shift, 0). Raises ValueError when TFLM's DCHECK (<= 32767) fails."""
    pot, log2r = checked_log2(input_scale)
    shift = 12 + log2r
    pot = pot and (shift in (0, 1) if tanh else shift == 0)
    if pot:
        return 3 << shift, 0
    m, shift = float(f32(input_scale)) * 4096.0 * 3.0, 0
    while m <= 32767.0 / 2.0 and shift <= 30:
        shift += 1
        m *= 2.0
    if int(m) > 32767:
        raise ValueError(f"input scale {input_scale:g} is too large for TFLite's int16 table (multiplier {int(m)})")
    return int(m), shift


def sigmoid_int16(x, mult: int, shift: int, tanh: bool):
    """reference_integer_ops::Logistic / Tanh, int16 (integer_ops/logistic.h, tanh.h): the input
    rescaled ((x * mult + round) >> shift), |.| looked up in SIGMOID_TABLE_UINT16 with linear
    interpolation (9 fraction bits for logistic, 8 for tanh = 2 * sigmoid(2x) - 1), the sign folded back."""
    x = np.asarray(x, dtype=np.int64)
    v = (x * mult + ((1 << (shift - 1)) if shift > 0 else 0)) >> shift
    a = np.abs(v)
    bits = 8 if tanh else 9
    uh = a >> bits
    i = np.minimum(uh, 254)
    ua, ub = SIGMOID_TABLE_UINT16[i], SIGMOID_TABLE_UINT16[i + 1]
    res = (ua << bits) + (a & ((1 << bits) - 1)) * (ub - ua)
    if tanh:
        res = np.where(uh >= 255, 0xFFFF << 8, res)
        res = np.where(v >= 0, res - (1 << 23) + (1 << 7), -res + (1 << 23) + (1 << 7) - 1)
        return res >> 8
    res = np.where(uh >= 255, 0x7FFF << 10, res)
    res = np.where(v >= 0, res + (1 << 9), (1 << 25) - res + (1 << 9) - 1)
    return res >> 10
