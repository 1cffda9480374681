/* int4 weights for edgecomp's micro-kernels (templates/kernels/conv_s4.c.j2, dense_s4.c.j2;
 * lower/kernels/int4.py): eight weights per word, laid out by pack_s4_pairs so that
 * (v << 12) & M, (v << 8) & M, (v << 4) & M and v & M with M = 0xF000F000 are the int16 pairs
 * 4096 * (w0, w1), (w2, w3), (w4, w5), (w6, w7): one AND with a shifted operand per SMLAD. At most
 * EC_S4_CHUNK such products are summed (|sum| <= 2^30) before an exact ASR 12. */
#ifndef EC_S4_H
#define EC_S4_H

#include <stdint.h>

#include "ec_dsp.h"

#define EC_S4_CHUNK 256

/* 0xF000F000, opaque to the compiler so that it stays in a register (not an immediate): then
 * (v << n) & m is a single AND with a shifted register operand. */
static inline uint32_t ec_s4_mask(void)
{
  uint32_t m = 0xF000F000u;
  __asm__("" : "+r"(m));
  return m;
}

/* The SMMLA addend 2^(sh-1) + zp * 2^sh (lower/kernels/requant.py smmla_form) of a channel whose
 * constants leave it out (lower/kernels/int4.py compact_requant): 4 bytes of flash a channel. */
static inline int32_t ec_s4_addend(int32_t sh, int32_t zp)
{
  return (int32_t)(((uint32_t)1 << (sh - 1)) + ((uint32_t)zp << sh));
}

/* acc += 4096 * the dot product of the eight weights in v with the int16 pairs x0..x3. With the DSP
 * extension one block of AND, SMLAD pairs through a single scratch register: left to itself GCC
 * computes all the masked words of a step first and spills them. */
#if EC_HAVE_DSP
#define EC_S4_MAC(acc, v, m, x0, x1, x2, x3)                                                                \
  do {                                                                                                      \
    uint32_t ec_t_;                                                                                         \
    __asm__("and %[t], %[m], %[w], lsl #12\n\t"                                                             \
            "smlad %[a], %[t], %[p0], %[a]\n\t"                                                             \
            "and %[t], %[m], %[w], lsl #8\n\t"                                                              \
            "smlad %[a], %[t], %[p1], %[a]\n\t"                                                             \
            "and %[t], %[m], %[w], lsl #4\n\t"                                                              \
            "smlad %[a], %[t], %[p2], %[a]\n\t"                                                             \
            "and %[t], %[m], %[w]\n\t"                                                                      \
            "smlad %[a], %[t], %[p3], %[a]"                                                                 \
            : [a] "+r"(acc), [t] "=&r"(ec_t_)                                                               \
            : [m] "r"(m), [w] "r"(v), [p0] "r"(x0), [p1] "r"(x1), [p2] "r"(x2), [p3] "r"(x3));              \
  } while (0)
#else
#define EC_S4_MAC(acc, v, m, x0, x1, x2, x3)                                                                \
  do {                                                                                                      \
    (acc) = ec_smlad(((v) << 12) & (m), (x0), (acc));                                                       \
    (acc) = ec_smlad(((v) << 8) & (m), (x1), (acc));                                                        \
    (acc) = ec_smlad(((v) << 4) & (m), (x2), (acc));                                                        \
    (acc) = ec_smlad((v) & (m), (x3), (acc));                                                               \
  } while (0)
#endif

/* The dot product of one row's packed weights (k8 / 2 bytes, k8 a multiple of 8) with k8 int16
 * values. */
static inline int32_t ec_s4_dot(const uint8_t *w, const int16_t *x, int32_t k8)
{
  const uint32_t m = ec_s4_mask();
  int32_t total = 0;
  for (int32_t k0 = 0; k0 < k8; k0 += EC_S4_CHUNK) {
    const int32_t kn = k8 - k0 < EC_S4_CHUNK ? k8 - k0 : EC_S4_CHUNK;
    int32_t acc = 0;
    for (int32_t k = 0; k < kn; k += 8, w += 4, x += 8) {
      const uint32_t v = ec_load32(w);
      EC_S4_MAC(acc, v, m, ec_load32(x), ec_load32(x + 2), ec_load32(x + 4), ec_load32(x + 6));
    }
    total += acc >> 12;
  }
  return total;
}

#endif /* EC_S4_H */
