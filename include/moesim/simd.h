/* Which vector kernels this process runs, decided once from the CPU (pure: no MPI). Level 0 is
 * the x86-64 baseline (SSE2, or any CPU that is not x86-64), level 1 AVX2 with FMA, level 2
 * AVX-512 (F, VL, BW, DQ). The GELU (expert.h) and the unpack (combine.h) exist in a build for
 * each level, the router's logits for up to MOE_ROUTER_SMALL_E experts (router.h) in one for
 * levels 1 and 2 (sgemm at level 0). A level changes the floats only where a kernel says so: the
 * GELU's erf and the logits use FMA from level 1 on (levels 1 and 2 agree); the unpack's floats are
 * the same at every level. */
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
