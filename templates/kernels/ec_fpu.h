/* Single-precision helpers for edgecomp's float micro-kernels (conv_f32, dwconv_f32, dense_f32).
 *
 * The kernels are chosen on targets that declare a hardware FPU (cpu.features = ["fpu"]:
 * Cortex-M4F/M7/M33F/M55, Cortex-A7, the host). EC_FMA is one fused multiply-add instruction
 * (VFMA.F32) where the FPU has one: the generated C is ISO C99, where GCC contracts no a + b * c
 * into an FMA on its own, so it is asked for explicitly. Elsewhere (the host build) the same loops
 * multiply, then add: results differ from the device's only in the last bits of rounding.
 * EC_MAXF/EC_MINF are VMAXNM/VMINNM where the FPU has them. */
#ifndef EC_FPU_H
#define EC_FPU_H

/* The kernels are plain C: correct whatever the compiler flags (with a software FPU they are only
 * slow), so unlike ec_dsp.h this header has no check of EC_FEATURE_FPU against the flags. */

#if defined(__ARM_FEATURE_FMA) && __ARM_FEATURE_FMA
#define EC_FMA(acc, a, b) __builtin_fmaf((a), (b), (acc))
#else
#define EC_FMA(acc, a, b) ((acc) + (a) * (b))
#endif

/* VMAXNM/VMINNM: Armv8 FPUs (AArch64, Cortex-M33/M55) and Cortex-M7's FPv5 (the only M-profile FPU
 * with double precision); on others GCC would call the C library's fmaxf. */
#if defined(__aarch64__) || (defined(__arm__) && defined(__ARM_FP) && \
    (__ARM_ARCH >= 8 || (defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M' && (__ARM_FP & 8))))
#define EC_MAXF(a, b) __builtin_fmaxf((a), (b))
#define EC_MINF(a, b) __builtin_fminf((a), (b))
#else
#define EC_MAXF(a, b) ((a) > (b) ? (a) : (b))
#define EC_MINF(a, b) ((a) < (b) ? (a) : (b))
#endif

#endif
