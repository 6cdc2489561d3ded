#include "moesim/expert.h"

#include "moesim/rng.h"
#include "moesim/simd.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

void moe_expert_init(float *w1, float *w2, uint64_t seed, int e, int64_t d, int64_t f)
{
    /* U(-sqrt(3/d), sqrt(3/d)): variance 1/d as N(0, 1/d) has, at one mix per weight instead of
     * the normal's log and cos (the weights are most of a run's set-up) */
    moe_rng_fill_uniform(w1, (size_t)(f * d), seed, MOE_STREAM_EXPERT + 2 * (uint64_t)e, 0,
                         sqrt(3.0 / (double)d));
    moe_rng_fill_uniform(w2, (size_t)(d * f), seed, MOE_STREAM_EXPERT + 2 * (uint64_t)e + 1, 0,
                         sqrt(3.0 / (double)f));
}

/* A float's bits and back; selecting by integer masks keeps the loops free of float compares,
 * which GCC does not if-convert under -ftrapping-math, so they vectorize. Every helper is forced
 * inline: GCC does not inline a default-target function into a function of another target (the
 * AVX2 and AVX-512 rows below) on its own, and a call per element keeps the loop scalar (2.7 ns an
 * element here). */
#define INLINE static inline __attribute__((always_inline))
INLINE int32_t bits_of(float x)
{
    int32_t i;
    memcpy(&i, &x, sizeof i);
    return i;
}

INLINE float float_of(int32_t i)
{
    float x;
    memcpy(&x, &i, sizeof x);
    return x;
}

/* m ? a : b, m all ones or zero */
INLINE float pick(int32_t m, float a, float b)
{
    return float_of((bits_of(a) & m) | (bits_of(b) & ~m));
}

/* The kernel below exists twice, the same arithmetic in both: erf_fma rounds each polynomial step
 * a * b + c once (an FMA instruction), erf_plain rounds the product and the sum. A function uses
 * erf_fma only where its target has FMA (otherwise fmaf would be a library call per step: 70 ns an
 * element instead of 4). Which one runs is decided once per process from the CPU (simd.h):
 * the FMA kernels on CPUs with AVX2 and FMA, the plain one before them. moe_erf, moe_gelu and
 * moe_gelu_rows follow the same decision, so on one machine every path gives the same floats; a
 * CPU without AVX2 gives floats that differ in the last bits, within the same bound. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* clang would fuse a * b + c on its own where the target has FMA */
#endif
#define MADD_PLAIN(a, b, c) ((a) * (b) + (c))
#define MADD_FMA(a, b, c) __builtin_fmaf(a, b, c)

/* e^-y for 0 <= y <= 87: -y = -k ln 2 + r with |r| <= ln 2 / 2, e^r by its Taylor polynomial to
 * r^7 (truncation below 3e-9 relative), 2^-k from the exponent bits.
 * erf: |x| < 0.5: the Maclaurin series of erf to x^15 (truncation below 1e-10); otherwise
 * Abramowitz & Stegun 7.1.26: erf(a) = 1 - t P(t) e^{-a^2}, t = 1 / (1 + p a), |error| <= 1.5e-7;
 * a^2 above 87 (erf is 1 in float there) as 87, infinities included. */
#define ERF_KERNEL(NAME, MADD)                                                                     \
    INLINE float NAME##_exp_neg(float y)                                                           \
    {                                                                                              \
        const float log2e = 1.44269504f, ln2_hi = 0.693145752f, ln2_lo = 1.42860677e-6f;           \
        float k = (float)(int)(y * log2e + 0.5f); /* round to nearest: y >= 0 */                   \
        float r = MADD(k, ln2_lo, MADD(k, ln2_hi, -y));                                            \
        float p = 1.0f / 5040.0f;                                                                  \
        p = MADD(p, r, 1.0f / 720.0f);                                                             \
        p = MADD(p, r, 1.0f / 120.0f);                                                             \
        p = MADD(p, r, 1.0f / 24.0f);                                                              \
        p = MADD(p, r, 1.0f / 6.0f);                                                               \
        p = MADD(p, r, 0.5f);                                                                      \
        p = MADD(p, r, 1.0f);                                                                      \
        p = MADD(p, r, 1.0f);                                                                      \
        return p * float_of((127 - (int32_t)k) << 23);                                             \
    }                                                                                              \
    INLINE float NAME(float x)                                                                     \
    {                                                                                              \
        float a = fabsf(x), z2 = x * x;                                                            \
        int32_t ia = bits_of(a);                                                                   \
        float s = -1.0f / 75600.0f;                                                                \
        s = MADD(s, z2, 1.0f / 9360.0f);                                                           \
        s = MADD(s, z2, -1.0f / 1320.0f);                                                          \
        s = MADD(s, z2, 1.0f / 216.0f);                                                            \
        s = MADD(s, z2, -1.0f / 42.0f);                                                            \
        s = MADD(s, z2, 1.0f / 10.0f);                                                             \
        s = MADD(s, z2, -1.0f / 3.0f);                                                             \
        s = MADD(s, z2, 1.0f);                                                                     \
        float small = 1.12837917f * x * s; /* 2 / sqrt(pi) */                                      \
        float t = 1.0f / MADD(0.3275911f, a, 1.0f);                                                \
        float q = 1.061405429f;                                                                    \
        q = MADD(q, t, -1.453152027f);                                                             \
        q = MADD(q, t, 1.421413741f);                                                              \
        q = MADD(q, t, -0.284496736f);                                                             \
        q = MADD(q, t, 0.254829592f);                                                              \
        float y = pick(-(int32_t)((bits_of(z2) & 0x7fffffff) > bits_of(87.0f)), 87.0f, z2);       \
        float large = copysignf(MADD(-q * t, NAME##_exp_neg(y), 1.0f), x);                         \
        float r = pick(-(int32_t)(ia < bits_of(0.5f)), small, large);                              \
        return pick(-(int32_t)(ia > 0x7f800000), x, r); /* NaN stays NaN */                        \
    }

ERF_KERNEL(erf_plain, MADD_PLAIN)
#define GELU(ERF, x) (0.5f * (x) * (1.0f + ERF((x) * (float)M_SQRT1_2)))

static void gelu_rows_plain(float *a, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        a[i] = GELU(erf_plain, a[i]);
}

/* The kernel levels (simd.h): 0 the plain kernel (SSE2, or not x86-64), 1 the FMA kernel in AVX2
 * (8 lanes), 2 the FMA kernel in AVX-512 (16 lanes). On the AVX-512 Xeon of 2026-12-03 the GELU
 * rows took 1.0-1.5 ns an element at level 2 (2.0-2.1 before the FMA kernel), about 70 ns had
 * fmaf been a call. */
#if MOE_SIMD_X86
#define V3 MOE_TARGET_V3
#define V4 MOE_TARGET_V4
ERF_KERNEL(erf_fma, MADD_FMA)
#endif

int moe_expert_kernel_level(void)
{
    return moe_simd_level();
}

int moe_expert_set_kernel_level(int level)
{
    return moe_simd_set_level(level);
}

const char *moe_expert_kernel_name(int level)
{
    return level == 2 ? "avx512-fma" : level == 1 ? "avx2-fma" : "plain";
}

#if MOE_SIMD_X86
V3 static float erf_v3(float x)
{
    return erf_fma(x);
}

V3 static void gelu_rows_v3(float *a, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        a[i] = GELU(erf_fma, a[i]);
}

V4 static void gelu_rows_v4(float *a, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        a[i] = GELU(erf_fma, a[i]);
}
#endif

float moe_erf(float x)
{
#if MOE_SIMD_X86
    if (moe_simd_level() > 0)
        return erf_v3(x);
#endif
    return erf_plain(x);
}

void moe_gelu_rows(float *a, int64_t n)
{
#if MOE_SIMD_X86
    int level = moe_simd_level();
    if (level > 0) {
        (level == 2 ? gelu_rows_v4 : gelu_rows_v3)(a, n);
        return;
    }
#endif
    gelu_rows_plain(a, n);
}

float moe_erf_ref(float x)
{
    return erff(x);
}

float moe_gelu(float x)
{
    return GELU(moe_erf, x);
}

float moe_gelu_ref(float x)
{
    return GELU(erff, x);
}

void moe_expert_forward(float *y, float *act, const float *x, const float *w1, const float *w2,
                        int64_t m, int64_t d, int64_t f)
{
    if (m == 0)
        return;
    /* act (m, f) = x (m, d) * W1^T (d, f) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)f, (int)d, 1.0f, x, (int)d,
                w1, (int)d, 0.0f, act, (int)f);
    moe_gelu_rows(act, m * f);
    /* y (m, d) = act (m, f) * W2^T (f, d) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)d, (int)f, 1.0f, act, (int)f,
                w2, (int)f, 0.0f, y, (int)d);
}

void moe_expert_forward_save(float *y, float *pre, float *act, const float *x, const float *w1,
                             const float *w2, int64_t m, int64_t d, int64_t f)
{
    if (m == 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)f, (int)d, 1.0f, x, (int)d,
                w1, (int)d, 0.0f, pre, (int)f);
    memcpy(act, pre, (size_t)(m * f) * sizeof *act);
    moe_gelu_rows(act, m * f);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)d, (int)f, 1.0f, act, (int)f,
                w2, (int)f, 0.0f, y, (int)d);
}

void moe_expert_forward_ref(float *y, float *act, const float *x, const float *w1, const float *w2,
                            int64_t m, int64_t d, int64_t f)
{
    for (int64_t r = 0; r < m; r++) {
        for (int64_t i = 0; i < f; i++) {
            double acc = 0.0;
            for (int64_t j = 0; j < d; j++)
                acc += (double)x[r * d + j] * (double)w1[i * d + j];
            act[r * f + i] = moe_gelu_ref((float)acc);
        }
        for (int64_t j = 0; j < d; j++) {
            double acc = 0.0;
            for (int64_t i = 0; i < f; i++)
                acc += (double)act[r * f + i] * (double)w2[j * f + i];
            y[r * d + j] = (float)acc;
        }
    }
}

double moe_expert_flops_per_row(int64_t d, int64_t f)
{
    return 4.0 * (double)d * (double)f;
}
