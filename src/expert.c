#include "moesim/expert.h"

#include "moesim/rng.h"

#include <cblas.h>
#include <math.h>
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
 * inline: GCC does not inline a default-target function into the AVX2 clone of moe_gelu_rows on
 * its own, and a call per element keeps the loop scalar (2.7 ns an element here). */
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

/* e^-y for 0 <= y <= 87: -y = -k ln 2 + r with |r| <= ln 2 / 2, e^r by its Taylor polynomial to
 * r^7 (truncation below 3e-9 relative), 2^-k from the exponent bits. */
INLINE float exp_neg(float y)
{
    const float log2e = 1.44269504f, ln2_hi = 0.693145752f, ln2_lo = 1.42860677e-6f;
    float k = (float)(int)(y * log2e + 0.5f); /* round to nearest: y >= 0 */
    float r = (k * ln2_hi - y) + k * ln2_lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * float_of((127 - (int32_t)k) << 23);
}

INLINE float erf_fast(float x)
{
    float a = fabsf(x), z2 = x * x;
    int32_t ia = bits_of(a);
    /* |x| < 0.5: the Maclaurin series of erf to x^15 (truncation below 1e-10) */
    float s = -1.0f / 75600.0f;
    s = s * z2 + 1.0f / 9360.0f;
    s = s * z2 - 1.0f / 1320.0f;
    s = s * z2 + 1.0f / 216.0f;
    s = s * z2 - 1.0f / 42.0f;
    s = s * z2 + 1.0f / 10.0f;
    s = s * z2 - 1.0f / 3.0f;
    s = s * z2 + 1.0f;
    float small = 1.12837917f * x * s; /* 2 / sqrt(pi) */
    /* otherwise Abramowitz & Stegun 7.1.26: erf(a) = 1 - t P(t) e^{-a^2}, t = 1 / (1 + p a),
     * |error| <= 1.5e-7; a^2 above 87 (erf is 1 in float there) as 87, infinities included */
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float q = 1.061405429f;
    q = q * t - 1.453152027f;
    q = q * t + 1.421413741f;
    q = q * t - 0.284496736f;
    q = q * t + 0.254829592f;
    float y = pick(-(int32_t)((bits_of(z2) & 0x7fffffff) > bits_of(87.0f)), 87.0f, z2);
    float large = copysignf(1.0f - q * t * exp_neg(y), x);
    float r = pick(-(int32_t)(ia < bits_of(0.5f)), small, large);
    return pick(-(int32_t)(ia > 0x7f800000), x, r); /* NaN stays NaN */
}

float moe_erf(float x)
{
    return erf_fast(x);
}

float moe_erf_ref(float x)
{
    return erff(x);
}

float moe_gelu(float x)
{
    return 0.5f * x * (1.0f + erf_fast(x * (float)M_SQRT1_2));
}

float moe_gelu_ref(float x)
{
    return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
}

/* Cloned for x86-64-v4 (AVX-512: 16 lanes) and x86-64-v3 (AVX2: 8) where the CPU has them, SSE2
 * otherwise, chosen at load time by the CPU's features. ("arch=haswell" is chosen by CPU model
 * instead, so an AMD CPU with AVX2 got the SSE2 clone: 2.7 ns an element against 1.26 there; on
 * an AVX-512 Xeon the v4 clone takes 1.85 ns against the v3 clone's 2.25.) No contraction in C11
 * mode, so every clone computes the same floats. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* (not under clang: clang 14 emits the clones and their resolver but no symbol of the plain name,
 * so a call from another file, test_expert.c's for one, did not link) */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
void moe_gelu_rows(float *a, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        a[i] = 0.5f * a[i] * (1.0f + erf_fast(a[i] * (float)M_SQRT1_2));
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
