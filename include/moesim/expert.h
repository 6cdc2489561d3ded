/* Expert FFN: y = GELU(x W1^T) W2^T, d -> f -> d, no biases.
 * Shapes: x, y (m, d); W1 (f, d); W2 (d, f); act (m, f) scratch; all row-major.
 * GELU is x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (Hendrycks & Gimpel 2016), erf from moe_erf. */
#ifndef MOESIM_EXPERT_H
#define MOESIM_EXPERT_H

#include <stdint.h>

/* Weights of expert e from (seed, e): W1 ~ U(-sqrt(3/d), sqrt(3/d)) from stream
 * MOE_STREAM_EXPERT + 2e, W2 ~ U(-sqrt(3/f), sqrt(3/f)) from stream MOE_STREAM_EXPERT + 2e + 1
 * (moe_rng_fill_uniform), counters in row-major order. Variances 1/d and 1/f keep activations of
 * order one, as a trained layer's are; uniform rather than normal because a run's set-up is mostly
 * these weights (1 ns a weight against the normal's 40). */
void moe_expert_init(float *w1, float *w2, uint64_t seed, int e, int64_t d, int64_t f);

/* erf in float, vectorizable (no call, no branch): the Maclaurin series below |x| = 0.5, above it
 * Abramowitz & Stegun 7.1.26 with its own exp; |moe_erf(x) - erf(x)| <= 5e-7 on every float
 * (tests/unit/test_expert.c sweeps the range against double erf); NaN stays NaN. moe_erf_ref is
 * the C library's erff. */
float moe_erf(float x);
float moe_erf_ref(float x);

/* GELU with moe_erf (the expert phase), and its _ref twin with erff. */
float moe_gelu(float x);
float moe_gelu_ref(float x);

/* a[i] = moe_gelu(a[i]) for n values: the loop the expert phase runs, vectorized. */
void moe_gelu_rows(float *a, int64_t n);

/* The kernel moe_erf, moe_gelu and moe_gelu_rows run, chosen once from the CPU: 2 FMA steps in
 * AVX-512, 1 FMA steps in AVX2 (levels 1 and 2 give the same floats), 0 a multiply and an add per
 * step, SSE2 (a CPU without AVX2 and FMA, or not x86-64; its floats differ in the last bits, within
 * the same bound). These are moe_simd_level and moe_simd_set_level (simd.h): the level is the
 * process's, the unpack's kernel follows it too. set_kernel_level is for tests: it runs level
 * min(level, the CPU's) from then on (a negative level: the CPU's again) and returns the level in
 * force. Not thread-safe. */
int moe_expert_kernel_level(void);
int moe_expert_set_kernel_level(int level);
/* "avx512-fma", "avx2-fma" or "plain" (environment.gelu_kernel) */
const char *moe_expert_kernel_name(int level);

/* Two cblas_sgemm calls around an elementwise GELU. m may be 0. */
void moe_expert_forward(float *y, float *act, const float *x, const float *w1, const float *w2,
                        int64_t m, int64_t d, int64_t f);
/* The expert FFN forward that keeps what its backward needs: pre = x W1^T (m, f), act =
 * GELU(pre) (m, f), y = act W2^T (m, d). The same floats as moe_expert_forward. */
void moe_expert_forward_save(float *y, float *pre, float *act, const float *x, const float *w1,
                             const float *w2, int64_t m, int64_t d, int64_t f);

/* Plain-loop twin, accumulating in double, with moe_gelu_ref. */
void moe_expert_forward_ref(float *y, float *act, const float *x, const float *w1, const float *w2,
                            int64_t m, int64_t d, int64_t f);

/* Floating-point operations of one row through an expert: two GEMMs of 2*d*f each (GELU not
 * counted). */
double moe_expert_flops_per_row(int64_t d, int64_t f);

#endif
