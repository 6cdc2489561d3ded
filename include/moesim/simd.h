/* Which vector kernels this process runs, decided once from the CPU (pure: no MPI). The GELU
 * (expert.h) and the unpack (combine.h) each exist in three builds of the same C: level 0 for the
 * x86-64 baseline (SSE2, or any CPU that is not x86-64), level 1 for AVX2 with FMA, level 2 for
 * AVX-512 (F, VL, BW, DQ). A level changes the floats only where a kernel says so (the GELU's erf
 * rounds its polynomial steps once with FMA from level 1 on); the unpack's floats are the same at
 * every level. */
#ifndef MOESIM_SIMD_H
#define MOESIM_SIMD_H

/* The level in force: the CPU's, unless moe_simd_set_level chose a lower one. */
int moe_simd_level(void);
/* For tests: run min(level, the CPU's) from now on (negative: the CPU's again); returns the level
 * in force. Not thread-safe (moesim runs one thread per rank). */
int moe_simd_set_level(int level);

#if defined(__x86_64__) && defined(__GNUC__)
#define MOE_SIMD_X86 1
/* The targets of levels 1 and 2, for a function's attributes. */
#define MOE_TARGET_V3 __attribute__((target("avx2,fma")))
#define MOE_TARGET_V4 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#else
#define MOE_SIMD_X86 0
#endif

#endif
