/*
 * ec_neon.h - the requantizations of ec_dsp.h on four int32 lanes, for the AArch64 NEON micro-kernels
 * (templates/kernels/conv_neon_s8.c.j2, dwconv_s8.c.j2). Same arithmetic, lane by lane: bit-identical.
 */
#ifndef EC_NEON_H
#define EC_NEON_H

#include "ec_features.h" /* EC_FEATURE_NEON: the target file declares AArch64 Advanced SIMD */

#if EC_FEATURE_NEON
#if !(defined(__aarch64__) && defined(__ARM_NEON))
#error "the target declares NEON (cpu.features) but it is not an AArch64 target with Advanced SIMD"
#endif
#include <arm_neon.h>
#define EC_HAVE_NEON 1

/* ec_requant_s8 on four lanes: clamp((d + ((acc * m) >> 32)) >> s) - the high words of the 64-bit
 * products (SMMLA's), then an arithmetic shift. */
static inline int32x4_t ec_requant_s8_x4(int32x4_t acc, int32_t m, int32_t d, int32_t s, int32_t lo, int32_t hi)
{
  const int64x2_t pl = vmull_s32(vget_low_s32(acc), vdup_n_s32(m));
  const int64x2_t ph = vmull_high_s32(acc, vdupq_n_s32(m));
  const int32x4_t top = vuzp2q_s32(vreinterpretq_s32_s64(pl), vreinterpretq_s32_s64(ph));
  const int32x4_t r = vshlq_s32(vaddq_s32(top, vdupq_n_s32(d)), vdupq_n_s32(-s));
  return vminq_s32(vmaxq_s32(r, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}

/* The same in three instructions, for layers where q + 2d cannot overflow int32
 * (lower/kernels/requant.py q31_form_fits): SQDMULH gives q = (acc * m) >> 31 (saturating only for
 * acc = m = INT32_MIN; m > 0 here), and floor((floor(q / 2) + d) / 2^s) == floor((q + 2d) / 2^(s+1)). */
static inline int32x4_t ec_requant_s8_q31_x4(int32x4_t acc, int32_t m, int32_t d, int32_t s, int32_t lo,
                                             int32_t hi)
{
  const int32x4_t q = vqdmulhq_s32(acc, vdupq_n_s32(m));
  const int32x4_t r = vshlq_s32(vaddq_s32(q, vdupq_n_s32(2 * d)), vdupq_n_s32(-(s + 1)));
  return vminq_s32(vmaxq_s32(r, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}

/* ec_requant_s8_int64 on four lanes: clamp(((acc * m + 2^(n-1)) >> n) + zp), in int64. */
static inline int32x4_t ec_requant_s8_int64_x4(int32x4_t acc, int32_t m, int32_t zp, int32_t n, int32_t lo,
                                               int32_t hi)
{
  const int64x2_t half = vdupq_n_s64((int64_t)1 << (n - 1));
  const int64x2_t shift = vdupq_n_s64(-n);
  const int64x2_t z = vdupq_n_s64(zp);
  const int64x2_t pl = vaddq_s64(vshlq_s64(vaddq_s64(vmull_s32(vget_low_s32(acc), vdup_n_s32(m)), half), shift), z);
  const int64x2_t ph = vaddq_s64(vshlq_s64(vaddq_s64(vmull_high_s32(acc, vdupq_n_s32(m)), half), shift), z);
  /* The results can exceed int32 before the clamp: saturate, as the clamp then does anyway. */
  const int32x4_t r = vcombine_s32(vqmovn_s64(pl), vqmovn_s64(ph));
  return vminq_s32(vmaxq_s32(r, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}

/* ec_requant_s8_dbl on four lanes: SQRDMULH is gemmlowp's SaturatingRoundingDoublingHighMul, and
 * gemmlowp's own NEON RoundingDivideByPOT (subtract one from negative values, then a rounding
 * shift) rounds ties away from zero. */
static inline int32x4_t ec_requant_s8_dbl_x4(int32x4_t acc, int32_t m, int32_t zp, int32_t n, int32_t lo,
                                             int32_t hi)
{
  const int32_t s = 31 - n;
  const int32x4_t x = s > 0 ? vshlq_s32(acc, vdupq_n_s32(s)) : acc;
  const int32x4_t h = vqrdmulhq_s32(x, vdupq_n_s32(m));
  const int32x4_t shift = vdupq_n_s32(s < 0 ? s : 0); /* -e */
  const int32x4_t fixup = vshrq_n_s32(vandq_s32(h, shift), 31);
  const int32x4_t r = vaddq_s32(vrshlq_s32(vqaddq_s32(h, fixup), shift), vdupq_n_s32(zp));
  return vminq_s32(vmaxq_s32(r, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}

/* ec_requant_s8_dbl31 on four lanes: SQRDMULH is h, then (h + (h < 0 ? -1 : 0) + addend) >> e. */
static inline int32x4_t ec_requant_s8_dbl31_x4(int32x4_t acc, int32_t m, int32_t addend, int32_t e, int32_t lo,
                                               int32_t hi)
{
  const int32x4_t h = vqrdmulhq_s32(acc, vdupq_n_s32(m));
  const int32x4_t t = vaddq_s32(vaddq_s32(h, vshrq_n_s32(h, 31)), vdupq_n_s32(addend));
  const int32x4_t r = vshlq_s32(t, vdupq_n_s32(-e));
  return vminq_s32(vmaxq_s32(r, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}

/* Eight clamped int32 lanes (two vectors) to eight int8. */
static inline int8x8_t ec_narrow8(int32x4_t a, int32x4_t b)
{
  return vmovn_s16(vcombine_s16(vmovn_s32(a), vmovn_s32(b)));
}
#endif

#endif /* EC_NEON_H */
