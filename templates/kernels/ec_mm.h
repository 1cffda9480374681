/* Helpers of the blocked int8 matrix-product kernels (conv_mm_s8.c.j2, dwconv_rows_s8.c.j2): the
 * context their hand-scheduled Thumb-2 loops take, and the requantizations of their portable C paths
 * (ec_dsp.h's arithmetic; bit-identical). */
#ifndef EC_MM_H
#define EC_MM_H

#include <stdint.h>

#include "ec_dsp.h"

/* The Thumb-2 loops (inline assembly, all fourteen registers) are used on cores with the DSP
 * extension when the compiler optimises (at -O0 GCC keeps r7 as frame pointer); the portable C
 * computes the same bytes everywhere else. */
#if EC_HAVE_DSP && defined(__thumb2__) && defined(__OPTIMIZE__)
#define EC_MM_ASM 1
#else
#define EC_MM_ASM 0
#endif

/* Helpers a kernel may leave unused (static functions of a template rendered for many shapes). */
#define EC_MM_UNUSED __attribute__((unused))

/* What a kernel's assembly loop reads (word offsets are fixed: the loops load it with one LDM). */
typedef struct {
  const void *w;       /* first weight record */
  const void *wend;    /* end of the last record */
  const int16_t *x;    /* im2col block: pixel pairs */
  const int16_t *xend; /* its end */
  int8_t *y;           /* output of the first record's first channel at the block's first pixel */
  const int32_t *tconv; /* fused Add: the conv result's table (at index 0) */
  const int32_t *tres;  /* the residual's table */
  int32_t resd;         /* residual address - output address */
  int32_t add_mult;     /* the Add's requantization */
  int32_t add_addend;
} ec_mm_ctx;

/* The top word of addend * 2^32 + a * b + 2^31: SMMLAR. */
static inline int32_t ec_smmlar(int32_t a, int32_t b, int32_t addend)
{
#if EC_HAVE_DSP
  int32_t r;
  __asm__("smmlar %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(addend));
  return r;
#else
  return (int32_t)(((int64_t)a * b + (int64_t)addend * ((int64_t)1 << 32) + ((int64_t)1 << 31)) >> 32);
#endif
}

/* ec_requant_s8_dbl31 of acc, given acc2 = 2 acc (weights and bias doubled in the records). */
static inline int32_t ec_requant_s8_dbl31_x2(int32_t acc2, int32_t mult, int32_t addend, int32_t e, int32_t lo,
                                             int32_t hi)
{
  return ec_clamp_s8((ec_smmlar(acc2, mult, addend) + (acc2 >> 31)) >> e, lo, hi);
}

/* Both 16-bit halves doubled (SADD16 v, v; the values fit). */
static inline uint32_t ec_double16(uint32_t v)
{
  return ((v << 1) & 0xFFFEFFFEu);
}

/* (lo's low half, hi's low half): one PKHBT on cores with the DSP extension. */
static inline uint32_t ec_pkhbt(uint32_t lo, uint32_t hi)
{
#if EC_HAVE_DSP
  uint32_t r;
  __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(lo), "r"(hi));
  return r;
#else
  return (lo & 0xFFFFu) | (hi << 16);
#endif
}

/* (lo's high half, hi's high half): one PKHTB. */
static inline uint32_t ec_pkhtb(uint32_t lo, uint32_t hi)
{
#if EC_HAVE_DSP
  uint32_t r;
  __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(hi), "r"(lo));
  return r;
#else
  return (lo >> 16) | (hi & 0xFFFF0000u);
#endif
}

/* Two bytes from any address, zero-extended. */
static inline uint32_t ec_load16u(const void *p)
{
  uint16_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

#endif /* EC_MM_H */
