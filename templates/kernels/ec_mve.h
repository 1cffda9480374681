/*
 * ec_mve.h - the requantizations of ec_dsp.h on four int32 lanes with Helium (M-profile Vector
 * Extension, Cortex-M55/M85), for the MVE micro-kernels (templates/kernels/conv_mve_s8.c.j2, dwconv_mve_s8.c.j2, dense_mve_s8.c.j2). The same
 * arithmetic lane by lane, so the results are bit-identical to the scalar kernels and the reference.
 */
#ifndef EC_MVE_H
#define EC_MVE_H

#include "ec_features.h" /* EC_FEATURE_MVE: the target file declares Helium */

#if EC_FEATURE_MVE
#if !(defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1))
#error "the target declares MVE (cpu.features) but its compiler flags do not enable Helium's integer instructions"
#endif
#include <arm_mve.h>
#define EC_HAVE_MVE 1

/* ec_requant_s8 on four lanes: clamp((addend + ((acc * m) >> 32)) >> s). VMULH gives the high word
 * of the 64-bit product (SMMLA's, rounded down); nsh = -s, VSHL by a negative count is an
 * arithmetic shift right (rounded down). */
static inline int32x4_t ec_mve_requant(int32x4_t acc, int32x4_t m, int32x4_t addend, int32x4_t nsh, int32_t lo,
                                       int32_t hi)
{
  const int32x4_t r = vshlq_s32(vaddq_s32(vmulhq_s32(acc, m), addend), nsh);
  return vminq_s32(vmaxq_s32(r, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}

/* ec_requant_s8_dbl31 on four lanes (TFLite's rounding, |acc| < 2^30): t = SMMLAR(2 acc, m, addend)
 * is addend + VRMULH(2 acc, m) (the high word rounded: + 2^31 before the shift); then
 * (t + (acc < 0 ? -1 : 0)) >> e with nsh = -e. */
static inline int32x4_t ec_mve_requant_dbl31(int32x4_t acc, int32x4_t m, int32x4_t addend, int32x4_t nsh,
                                             int32_t lo, int32_t hi)
{
  const int32x4_t t = vaddq_s32(vrmulhq_s32(vaddq_s32(acc, acc), m), addend);
  const int32x4_t r = vshlq_s32(vaddq_s32(t, vshrq_n_s32(acc, 31)), nsh);
  return vminq_s32(vmaxq_s32(r, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}

/* v = the 16 bytes at p, then p += 16: one VLDRB with writeback (GCC 12 otherwise keeps a copy of
 * the pointer and adds to it, two instructions more per loop step). */
#define EC_MVE_LD16(v, p)                                                                                     \
  __asm__("vldrb.u8 %q0, [%1], #16" : "=w"(v), "+r"(p) : "m"(*(const int8_t(*)[16])(const void *)(p)))

/* Four int32 lanes from four scalars (two VMOV Q[2], Q[0] pairs). */
static inline int32x4_t ec_mve_x4(int32_t a, int32_t b, int32_t c, int32_t d)
{
  int32x4_t v = vdupq_n_s32(a);
  v = vsetq_lane_s32(b, v, 1);
  v = vsetq_lane_s32(c, v, 2);
  return vsetq_lane_s32(d, v, 3);
}

/* ec_add_s8 (or ec_add_s8_dbl31 with dbl) on four lanes: the int8 values a and b (int32 lanes) look
 * up their rescaled values in 256-entry tables (entry 0 for -128), summed, requantized. */
static inline int32x4_t ec_mve_add_s8(int32x4_t a, int32x4_t b, const int32_t *ta, const int32_t *tb, int32_t mult,
                                      int32_t addend, int32_t sh, int32_t lo, int32_t hi, int dbl)
{
  const uint32x4_t ia = vreinterpretq_u32_s32(vaddq_n_s32(a, 128));
  const uint32x4_t ib = vreinterpretq_u32_s32(vaddq_n_s32(b, 128));
  const int32x4_t s = vaddq_s32(vldrwq_gather_shifted_offset_s32(ta, ia), vldrwq_gather_shifted_offset_s32(tb, ib));
  if (dbl) {
    return ec_mve_requant_dbl31(s, vdupq_n_s32(mult), vdupq_n_s32(addend), vdupq_n_s32(-sh), lo, hi);
  }
  return ec_mve_requant(s, vdupq_n_s32(mult), vdupq_n_s32(addend), vdupq_n_s32(-sh), lo, hi);
}
#else
#define EC_HAVE_MVE 0
#endif

#endif /* EC_MVE_H */
