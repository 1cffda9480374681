/* Dual 16-bit multiply-accumulate and requantization for edgecomp's micro-kernels.
 *
 * On targets that declare the Arm DSP extension (cpu.features = ["dsp"]: Cortex-M4/M7/M33/M55,
 * Cortex-A7) these are single instructions (SMLAD, SXTB16); elsewhere (Cortex-M0+/M3, the host build) portable C with the same results, so
 * the host build checks the same arithmetic that runs on the device. */
#ifndef EC_DSP_H
#define EC_DSP_H

#include <stdint.h>
#include <string.h>

#include "ec_features.h" /* EC_FEATURE_DSP: the target file declares the DSP extension */

#if EC_FEATURE_DSP
#if !(defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP)
#error "the target declares the DSP extension (cpu.features) but its compiler flags do not enable it"
#endif
#include <arm_acle.h>
#define EC_HAVE_DSP 1
#else
#define EC_HAVE_DSP 0
#endif

/* Keeps a hot loop in a function of its own (GCC and Clang). */
#define EC_NOINLINE __attribute__((noinline))

/* A 32-bit word from any address (a single LDR on cores with unaligned access). */
static inline uint32_t ec_load32(const void *p)
{
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* Store a 32-bit word at any address (a single STR on cores with unaligned access). */
static inline void ec_store32(void *p, uint32_t v)
{
  memcpy(p, &v, sizeof v);
}

/* Two consecutive words from an 8-byte aligned address (the code generator guarantees it). */
static inline uint64_t ec_load64(const void *p)
{
  uint64_t v;
  memcpy(&v, __builtin_assume_aligned(p, 8), sizeof v);
  return v;
}

/* lo, hi = the two words at byte offset `off` (a literal multiple of 4, |off| <= 1020) from the
 * word-aligned `base`: one LDRD on cores with the DSP extension, which GCC does not emit for
 * ec_load64 on its own. The memory operand tells the compiler which bytes the load reads. */
#if EC_HAVE_DSP
#define EC_LDRD(lo, hi, base, off)                                                                            \
  __asm__("ldrd %0, %1, [%2, #" #off "]"                                                                 \
          : "=r"(lo), "=r"(hi)                                                                            \
          : "r"(base), "m"(*(const uint8_t(*)[(off) + 8])(const void *)(base)))
#else
#define EC_LDRD(lo, hi, base, off)                                                                            \
  do {                                                                                                    \
    uint32_t ec_w_[2];                                                                                    \
    memcpy(ec_w_, (const uint8_t *)(base) + (off), sizeof ec_w_);                                          \
    (lo) = ec_w_[0];                                                                                      \
    (hi) = ec_w_[1];                                                                                      \
  } while (0)
#endif

/* acc + lo(a)*lo(b) + hi(a)*hi(b), the 16-bit halves signed; wraps like SMLAD. */
static inline int32_t ec_smlad(uint32_t a, uint32_t b, int32_t acc)
{
#if EC_HAVE_DSP
  return __smlad((int16x2_t)a, (int16x2_t)b, acc);
#else
  uint32_t lo = (uint32_t)((int32_t)(int16_t)(a & 0xFFFFu) * (int32_t)(int16_t)(b & 0xFFFFu));
  uint32_t hi = (uint32_t)((int32_t)(int16_t)(a >> 16) * (int32_t)(int16_t)(b >> 16));
  return (int32_t)((uint32_t)acc + lo + hi);
#endif
}

/* Bytes 0 and 2 of v, sign-extended to the low and high 16-bit halves. */
static inline uint32_t ec_sxtb16(uint32_t v)
{
#if EC_HAVE_DSP
  return (uint32_t)__sxtb16((int8x4_t)v);
#else
  return (uint32_t)(uint16_t)(int16_t)(int8_t)(v & 0xFFu) |
         ((uint32_t)(uint16_t)(int16_t)(int8_t)((v >> 16) & 0xFFu) << 16);
#endif
}

/* Bytes 1 and 3 of v, sign-extended (SXTB16 with ROR #8). */
static inline uint32_t ec_sxtb16_ror8(uint32_t v)
{
#if EC_HAVE_DSP
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
#else
  return ec_sxtb16(v >> 8);
#endif
}

/* k int8 values (k a multiple of 4) widened to int16, each group of four as (x0, x2), (x1, x3):
 * SXTB16's lanes, so they pair with weights widened by SXTB16 / SXTB16 ROR 8. */
static inline void ec_widen_pairs(const int8_t *x, int16_t *xw, int32_t k)
{
  for (int32_t i = 0; i < k; i += 4) {
    const uint32_t v = ec_load32(x + i);
    ec_store32(xw + i, ec_sxtb16(v));
    ec_store32(xw + i + 2, ec_sxtb16_ror8(v));
  }
}

/* Two int16 values as one word (lo, hi). */
static inline uint32_t ec_pack16(int32_t lo, int32_t hi)
{
  return (uint32_t)(uint16_t)lo | ((uint32_t)(uint16_t)hi << 16);
}

/* The top word of addend * 2^32 + a * b: one SMMLA on cores with the DSP extension. */
static inline int32_t ec_smmla(int32_t a, int32_t b, int32_t addend)
{
#if EC_HAVE_DSP
  int32_t r;
  __asm__("smmla %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(addend));
  return r;
#else
  return (int32_t)(((int64_t)a * b + (int64_t)addend * ((int64_t)1 << 32)) >> 32);
#endif
}

/* Clamp to [lo, hi] within int8's range; with constant bounds at int8's top this is one SSAT.
 * The result is an int32 (an int8 value): used as a table index it needs no sign extension. */
static inline int32_t ec_clamp_s8(int32_t v, int32_t lo, int32_t hi)
{
#if EC_HAVE_DSP
  if (hi == 127) {
    return __ssat((lo > -128 && v < lo) ? lo : v, 8);
  }
#endif
  return v < lo ? lo : (v > hi ? hi : v);
}

/* The requantization of quant/fixedpoint.py, ((acc * M + 2^(n-1)) >> n) + zp clamped, for n > 32:
 * the rounding term and the zero point are multiples of 2^32 apart from acc * M, so it equals
 * (addend + ((acc * M) >> 32)) >> (n - 32) with the per-channel constant
 * addend = 2^(n-33) + zp * 2^(n-32) (microkernels.smmla_form): one SMMLA and one ASR. */
static inline int32_t ec_requant_s8(int32_t acc, int32_t mult, int32_t addend, int32_t sh, int32_t lo, int32_t hi)
{
  return ec_clamp_s8(ec_smmla(acc, mult, addend) >> sh, lo, hi);
}

/* ec_requant_s8 for layers whose NEON kernels use ec_neon.h's SQDMULH form: the same function. */
static inline int32_t ec_requant_s8_q31(int32_t acc, int32_t mult, int32_t addend, int32_t sh, int32_t lo, int32_t hi)
{
  return ec_requant_s8(acc, mult, addend, sh, lo, hi);
}

/* The definition itself, for layers outside ec_requant_s8's form (a multiplier of 1/4 or more,
 * n <= 32): ((acc * M + 2^(n-1)) >> n) in int64, + the zero point, clamped. */
static inline int32_t ec_requant_s8_int64(int32_t acc, int32_t mult, int32_t zp, int32_t n, int32_t lo, int32_t hi)
{
  const int64_t v = (((int64_t)acc * mult + ((int64_t)1 << (n - 1))) >> n) + zp;
  return v < lo ? lo : (v > hi ? hi : (int32_t)v);
}

/* The integer Add of quant/reference.py for int8 addends a and b: their rescaled values looked
 * up in 256-entry tables (microkernels.add_tables; ta and tb point at the entries for 0), summed,
 * then requantized as above. */
static inline int32_t ec_add_s8(int32_t a, int32_t b, const int32_t *ta, const int32_t *tb, int32_t mult,
                                int32_t addend, int32_t sh, int32_t lo, int32_t hi)
{
  return ec_requant_s8(ta[a] + tb[b], mult, addend, sh, lo, hi);
}

/* TFLite's requantization (quant/tflite_arith.py mbqm: MultiplyByQuantizedMultiplier, two
 * roundings), for models imported from TFLite: with s = 31 - n (TFLite's shift, left when > 0),
 * RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc << max(s, 0), M), max(-s, 0)) + zp. */
static inline int32_t ec_srdhm(int32_t a, int32_t b)
{
  /* gemmlowp's round(a * b / 2^31), ties up; the arithmetic shift is its nudge and division. */
  if (a == b && a == INT32_MIN) {
    return INT32_MAX;
  }
  return (int32_t)(((int64_t)a * b + ((int64_t)1 << 30)) >> 31);
}

/* gemmlowp's RoundingDivideByPOT: x / 2^e rounded, ties away from zero (0 <= e <= 31). */
static inline int32_t ec_rdbpot(int32_t x, int32_t e)
{
  const int32_t mask = (int32_t)(((uint32_t)1 << e) - 1u);
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + ((x & mask) > threshold ? 1 : 0);
}

static inline int32_t ec_requant_s8_dbl(int32_t acc, int32_t mult, int32_t zp, int32_t n, int32_t lo, int32_t hi)
{
  const int32_t s = 31 - n;
  const int32_t x = s > 0 ? (int32_t)((uint32_t)acc << s) : acc;
  const int32_t v = ec_rdbpot(ec_srdhm(x, mult), s < 0 ? -s : 0) + zp;
  return v < lo ? lo : (v > hi ? hi : v);
}

/* ec_requant_s8_dbl in five instructions, for layers where TFLite's shift is a right shift by
 * e = n - 31 >= 1, |acc| < 2^30 and |addend| < 2^30 (lower/kernels/requant.py dbl31_form):
 * the SaturatingRoundingDoublingHighMul h is SMMULR(2 acc, M), and RoundingDivideByPOT(h, e) + zp
 * == (h + addend - (h < 0)) >> e with addend = 2^(e-1) + zp * 2^e (ties away from zero); h + addend
 * is one SMMLAR, and (h < 0) may be (acc < 0): they differ only at h = 0, where the shift of
 * 2^(e-1) - 1 or of 2^(e-1) gives the same. */
static inline int32_t ec_requant_s8_dbl31(int32_t acc, int32_t mult, int32_t addend, int32_t e, int32_t lo,
                                          int32_t hi)
{
#if EC_HAVE_DSP
  int32_t t;
  __asm__("smmlar %0, %1, %2, %3" : "=r"(t) : "r"(acc * 2), "r"(mult), "r"(addend));
#else
  const int32_t t = (int32_t)(((int64_t)(acc * 2) * mult + (int64_t)addend * ((int64_t)1 << 32) + ((int64_t)1 << 31)) >> 32);
#endif
  return ec_clamp_s8((t + (acc >> 31)) >> e, lo, hi);
}

/* ec_add_s8 with TFLite's requantization of the sum (tables from TFLite's input rescaling). */
static inline int32_t ec_add_s8_dbl(int32_t a, int32_t b, const int32_t *ta, const int32_t *tb, int32_t mult,
                                    int32_t zp, int32_t n, int32_t lo, int32_t hi)
{
  return ec_requant_s8_dbl(ta[a] + tb[b], mult, zp, n, lo, hi);
}

/* The same with ec_requant_s8_dbl31's form (mult, addend, e). */
static inline int32_t ec_add_s8_dbl31(int32_t a, int32_t b, const int32_t *ta, const int32_t *tb, int32_t mult,
                                      int32_t addend, int32_t e, int32_t lo, int32_t hi)
{
  return ec_requant_s8_dbl31(ta[a] + tb[b], mult, addend, e, lo, hi);
}

#endif /* EC_DSP_H */
