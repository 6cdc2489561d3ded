/* Unit tests of expert: GELU, weight initialization, the FFN against its reference twin. */
#include "moesim/expert.h"
#include "moesim/rng.h"

#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"

#include "testrng.h"

/* The stated bound at one kernel level, |moe_erf(x) - erf(x)| <= 5e-7 against double erf, over the
 * whole float range: every stride-th bit pattern of [0, inf) (257th: 8 million values, subnormals
 * and the switch at 0.5 included) and its negative, then every float of [0.45, 0.55] and [3.9, 4.1]. The
 * special values: erf(+-0) = +-0, erf(+-inf) = +-1, erf(NaN) is NaN. Measured worst on a full sweep
 * of every 7th pattern: 3.40e-7 at x = 0.5192 with the FMA kernel, 3.48e-7 at 0.5226 without. */
static void erf_bound_at(int level, uint64_t stride)
{
    double worst = 0.0;
    float at = 0.0f;
    for (uint64_t b = 0; b < 0x7f800000u; b += stride)
        for (int sign = 0; sign < 2; sign++) {
            uint32_t u = (uint32_t)b | (sign ? 0x80000000u : 0u);
            float x;
            memcpy(&x, &u, sizeof x);
            double e = fabs((double)moe_erf(x) - erf((double)x));
            if (e > worst) {
                worst = e;
                at = x;
            }
        }
    const float ranges[2][2] = {{0.45f, 0.55f}, {3.9f, 4.1f}};
    for (int r = 0; r < 2; r++)
        for (float x = ranges[r][0]; x <= ranges[r][1]; x = nextafterf(x, INFINITY)) {
            double e = fabs((double)moe_erf(x) - erf((double)x));
            if (e > worst) {
                worst = e;
                at = x;
            }
        }
    EXPECT_MSG(worst <= 5e-7, "level %d: max |moe_erf - erf| = %.3g at x = %.9g", level, worst, at);
    EXPECT(moe_erf(0.0f) == 0.0f && !signbit(moe_erf(0.0f)) && signbit(moe_erf(-0.0f)));
    EXPECT(moe_erf(INFINITY) == 1.0f && moe_erf(-INFINITY) == -1.0f);
    EXPECT(isnan(moe_erf(NAN)) && isnan(moe_erf(-NAN)));
}

/* the vectorized rows give moe_gelu's values exactly at the level in force (odd n: the loop's tail
 * too), and stay within 1e-6 of the _ref twin for values of order one; out receives the rows */
static void gelu_rows_at(int level, float *out, int n)
{
    float w[1001];
    for (int i = 0; i < n; i++)
        out[i] = w[i] = (float)(i - 500) / 50.0f + (float)i * 1e-5f;
    moe_gelu_rows(out, n);
    for (int i = 0; i < n; i++) {
        EXPECT_MSG(out[i] == moe_gelu(w[i]), "level %d: rows[%d] = %.9g, moe_gelu %.9g", level, i,
                   out[i], moe_gelu(w[i]));
        EXPECT_MSG(fabsf(out[i] - moe_gelu_ref(w[i])) <= 1e-6f, "level %d: x = %g", level, w[i]);
    }
}

START_TEST(test_erf_bound)
{
    /* every kernel this CPU can run, the plain one always: each within the bound, each path of a
     * level the same floats; the two FMA levels (AVX2, AVX-512) the same floats as each other */
    EXPECT(moe_erf_ref(0.5f) == erff(0.5f));
    int top = moe_expert_set_kernel_level(-1);
    EXPECT(top >= 0 && top <= 2 && moe_expert_kernel_level() == top);
    EXPECT(strcmp(moe_expert_kernel_name(0), "plain") == 0 &&
           strcmp(moe_expert_kernel_name(1), "avx2-fma") == 0 &&
           strcmp(moe_expert_kernel_name(2), "avx512-fma") == 0);
    static float rows[3][1001];
    for (int level = 0; level <= top; level++) {
        EXPECT(moe_expert_set_kernel_level(level) == level);
        erf_bound_at(level, level == top ? 257 : 1021); /* the CPU's own the finest */
        gelu_rows_at(level, rows[level], 1001);
    }
    if (top == 2)
        EXPECT(memcmp(rows[1], rows[2], sizeof rows[1]) == 0);
    /* asking above the CPU runs the CPU's best; a negative level restores it */
    EXPECT(moe_expert_set_kernel_level(99) == top);
    EXPECT(moe_expert_set_kernel_level(-1) == top);
    /* the FMA and plain kernels differ somewhere (else the FMA kernel would not be in use) */
    if (top >= 1) {
        int differ = 0;
        for (int i = 0; i < 1001; i++)
            differ += rows[0][i] != rows[1][i];
        EXPECT_MSG(differ > 0, "the FMA kernel gave the plain kernel's floats on all %d values", 1001);
    }
}
END_TEST

START_TEST(test_gelu_values)
{
    /* GELU x Phi(x); references from Python's math.erf in double. Tolerance: moe_erf is within
     * 3.5e-7 of erf (test_erf_bound), times |x| / 2, and three float roundings. */
    EXPECT(moe_gelu(0.0f) == 0.0f);
    ck_assert_float_eq_tol(moe_gelu(1.0f), 0.8413447460685429f, 5e-7f);
    ck_assert_float_eq_tol(moe_gelu(-1.0f), -0.15865525393145707f, 5e-7f);
    ck_assert_float_eq_tol(moe_gelu(0.5f), 0.34573123063700656f, 5e-7f);
    ck_assert_float_eq_tol(moe_gelu(3.0f), 2.99595030590511f, 2e-6f);
    /* For negative x, 1 + erf(x / sqrt 2) cancels: its absolute error is that of erff near -1,
     * a few 2^-24, times |x| / 2. */
    ck_assert_float_eq_tol(moe_gelu(-3.0f), -0.00404969409489031f, 4e-7f);
    ck_assert_float_eq_tol(moe_gelu(1e-3f), 0.000500398942213911f, 1e-10f);
    /* Large positive: x (Phi(10) = 1 - 7.6e-24 rounds to 1); large negative: 0 (or -0). */
    EXPECT(moe_gelu(10.0f) == 10.0f);
    EXPECT(moe_gelu(1000.0f) == 1000.0f);
    EXPECT(fabsf(moe_gelu(-10.0f)) <= 1e-20f);
    EXPECT(fabsf(moe_gelu(-1000.0f)) == 0.0f);
    /* Properties on a grid: gelu(x) - gelu(-x) = x (Phi(x) + Phi(-x) = 1), within a few ulp of x;
     * gelu >= -0.17 (its minimum is -0.16997 at x = -0.7518). */
    for (int i = -4000; i <= 4000; i++) {
        float x = (float)i / 500.0f;
        float g = moe_gelu(x), gm = moe_gelu(-x);
        EXPECT_MSG(fabsf((g - gm) - x) <= 4 * FLT_EPSILON * (fabsf(x) + 1), "x=%g", x);
        EXPECT(g >= -0.17f);
    }
}
END_TEST

START_TEST(test_flops)
{
    ck_assert(moe_expert_flops_per_row(3, 5) == 60.0);
    ck_assert(moe_expert_flops_per_row(512, 1024) == 4.0 * 512 * 1024);
    ck_assert(moe_expert_flops_per_row(1, 1) == 4.0);
}
END_TEST

START_TEST(test_init_determinism_and_streams)
{
    enum { D = 24, F = 40 };
    float a1[F * D], a2[D * F], b1[F * D], b2[D * F], w[F * D];
    moe_expert_init(a1, a2, 7, 3, D, F);
    moe_expert_init(b1, b2, 7, 3, D, F);
    ck_assert_mem_eq(a1, b1, sizeof a1);
    ck_assert_mem_eq(a2, b2, sizeof a2);
    /* The documented streams and bounds, bitwise: W1 from stream 0x100 + 2e, U(-b, b) with
     * b = sqrt(3/d), W2 from 0x100 + 2e + 1 with sqrt(3/f), counters in row-major order. */
    moe_rng_fill_uniform(w, F * D, 7, MOE_STREAM_EXPERT + 6, 0, sqrt(3.0 / D));
    ck_assert_mem_eq(a1, w, sizeof a1);
    moe_rng_fill_uniform(w, D * F, 7, MOE_STREAM_EXPERT + 7, 0, sqrt(3.0 / F));
    ck_assert_mem_eq(a2, w, sizeof a2);
    /* Another expert, another seed: different weights. */
    moe_expert_init(b1, b2, 7, 4, D, F);
    ck_assert(memcmp(a1, b1, sizeof a1) != 0 && memcmp(a2, b2, sizeof a2) != 0);
    moe_expert_init(b1, b2, 8, 3, D, F);
    ck_assert(memcmp(a1, b1, sizeof a1) != 0 && memcmp(a2, b2, sizeof a2) != 0);
}
END_TEST

START_TEST(test_init_scale)
{
    /* W1 ~ U(-sqrt(3/d), sqrt(3/d)), W2 likewise with f: standard deviations 1/sqrt(d) and
     * 1/sqrt(f). With n = f d = 131072 samples the sample standard deviation of a uniform has
     * relative standard error sqrt(0.8 / (4n)) = 0.0012; allow 1%. Mean: standard error
     * std/sqrt(n); allow 5 of them. Every weight within the bound. */
    enum { D = 256, F = 512 };
    float *w1 = malloc((size_t)F * D * sizeof *w1), *w2 = malloc((size_t)D * F * sizeof *w2);
    moe_expert_init(w1, w2, 1, 0, D, F);
    const float *ws[2] = {w1, w2};
    const double want_std[2] = {1.0 / sqrt(D), 1.0 / sqrt(F)};
    for (int m = 0; m < 2; m++) {
        double s1 = 0, s2 = 0, n = (double)F * D;
        for (int64_t i = 0; i < (int64_t)F * D; i++) {
            EXPECT(fabs((double)ws[m][i]) <= sqrt(3.0) * want_std[m]);
            s1 += ws[m][i];
            s2 += (double)ws[m][i] * ws[m][i];
        }
        double mean = s1 / n, std = sqrt(s2 / n - mean * mean);
        ck_assert_double_eq_tol(mean, 0.0, 5 * want_std[m] / sqrt(n));
        ck_assert_msg(fabs(std / want_std[m] - 1.0) < 0.01, "matrix %d: std %.6f, expected %.6f", m + 1,
                      std, want_std[m]);
    }
    free(w1), free(w2);
}
END_TEST

/* Forward vs its reference, with a tolerance derived from the data.
 * First GEMM: |act_pre - ref_pre| <= gamma_d * sum_j |x_j w1_ij| (float accumulation, any order;
 * Higham 3.1, gamma_n = n u / (1 - n u), u = 2^-24), plus u |ref_pre| for the reference's rounding.
 * GELU is 1.13-Lipschitz (max of Phi(x) + x phi(x), at x = sqrt 2) and erff adds ~2 ulp:
 * |dact| <= 1.13 e1 + 4 u |act| + FLT_MIN. Second GEMM: |dy| <= gamma_f sum_i |act_i w2_ji| +
 * sum_i |w2_ji| |dact_i| + u |y|. The test allows twice that bound. */
static void check_forward(int64_t m, int64_t d, int64_t f)
{
    float *x = malloc((size_t)(m * d + 1) * sizeof *x), *w1 = malloc((size_t)(f * d) * sizeof *w1);
    float *w2 = malloc((size_t)(d * f) * sizeof *w2);
    float *y = malloc((size_t)(m * d + 1) * sizeof *y), *yr = malloc((size_t)(m * d + 1) * sizeof *yr);
    float *act = malloc((size_t)(m * f + 1) * sizeof *act), *actr = malloc((size_t)(m * f + 1) * sizeof *actr);
    double *dact = malloc((size_t)(f + 1) * sizeof *dact);
    for (int64_t i = 0; i < m * d; i++)
        x[i] = (float)(4.0 * next_unit() - 2.0);
    moe_expert_init(w1, w2, 5, (int)(m + d + f), d, f);
    moe_expert_forward(y, act, x, w1, w2, m, d, f);
    moe_expert_forward_ref(yr, actr, x, w1, w2, m, d, f);
    const double u = 0x1.0p-24, gd = d * u / (1 - d * u), gf = f * u / (1 - f * u);
    for (int64_t r = 0; r < m; r++) {
        for (int64_t i = 0; i < f; i++) {
            double a = 0, pre = 0;
            for (int64_t j = 0; j < d; j++) {
                a += fabs((double)x[r * d + j] * w1[i * d + j]);
                pre += (double)x[r * d + j] * w1[i * d + j];
            }
            double e1 = gd * a + u * fabs(pre);
            dact[i] = 1.13 * e1 + 4 * u * fabs((double)actr[r * f + i]) + FLT_MIN;
            EXPECT_MSG(fabs((double)act[r * f + i] - actr[r * f + i]) <= 2 * dact[i],
                          "(%lld,%lld,%lld) act[%lld][%lld]: %.9g vs ref %.9g", (long long)m,
                          (long long)d, (long long)f, (long long)r, (long long)i, act[r * f + i],
                          actr[r * f + i]);
        }
        for (int64_t j = 0; j < d; j++) {
            double a = 0, prop = 0;
            for (int64_t i = 0; i < f; i++) {
                a += fabs((double)actr[r * f + i] * w2[j * f + i]);
                prop += fabs((double)w2[j * f + i]) * dact[i];
            }
            double tol = 2 * (gf * a + prop + u * fabs((double)yr[r * d + j]) + FLT_MIN);
            double diff = fabs((double)y[r * d + j] - yr[r * d + j]);
            EXPECT_MSG(diff <= tol, "(%lld,%lld,%lld) y[%lld][%lld]: %.9g vs ref %.9g, diff %.3g > %.3g",
                          (long long)m, (long long)d, (long long)f, (long long)r, (long long)j,
                          y[r * d + j], yr[r * d + j], diff, tol);
        }
    }
    free(x), free(w1), free(w2), free(y), free(yr), free(act), free(actr), free(dact);
}

START_TEST(test_forward_vs_ref)
{
    static const int shapes[][3] = {{1, 1, 1}, {1, 7, 13}, {3, 5, 2}, {1, 64, 128}, {17, 33, 65},
                                    {64, 128, 256}, {9, 255, 31}, {2, 1, 300}};
    g_state = 41;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        check_forward(shapes[s][0], shapes[s][1], shapes[s][2]);
}
END_TEST

START_TEST(test_forward_hand_and_empty)
{
    /* d = 2, f = 2, W1 = I: act = gelu(x) for x = [1, -1]; W2 = [[1, 1], [2, 0]]:
     * y = [gelu(1) + gelu(-1), 2 gelu(1)] = [Phi(1) - Phi(-1), 2 Phi(1)] = [0.68268949, 1.68268949].
     * Tolerance 1e-6: a few ulps of GELU values of order one. */
    const float x[] = {1.0f, -1.0f}, w1[] = {1, 0, 0, 1}, w2[] = {1, 1, 2, 0};
    float y[2], act[2], yr[2], actr[2];
    moe_expert_forward(y, act, x, w1, w2, 1, 2, 2);
    moe_expert_forward_ref(yr, actr, x, w1, w2, 1, 2, 2);
    ck_assert_float_eq_tol(y[0], 0.6826894921370859f, 1e-6f);
    ck_assert_float_eq_tol(y[1], 1.6826894921370859f, 1e-6f);
    ck_assert_float_eq_tol(yr[0], 0.6826894921370859f, 1e-6f);
    ck_assert_float_eq_tol(yr[1], 1.6826894921370859f, 1e-6f);
    /* m = 0 touches nothing. */
    y[0] = y[1] = 42.0f;
    act[0] = 43.0f;
    moe_expert_forward(y, act, x, w1, w2, 0, 2, 2);
    moe_expert_forward_ref(y, act, x, w1, w2, 0, 2, 2);
    ck_assert(y[0] == 42.0f && y[1] == 42.0f && act[0] == 43.0f);
}
END_TEST

static Suite *expert_suite(void)
{
    Suite *s = suite_create("expert");
    TCase *tc = tcase_create("expert");
    tcase_add_test(tc, test_gelu_values);
    tcase_add_test(tc, test_erf_bound);
    tcase_add_test(tc, test_flops);
    tcase_add_test(tc, test_init_determinism_and_streams);
    tcase_add_test(tc, test_init_scale);
    tcase_add_test(tc, test_forward_hand_and_empty);
    tcase_add_test(tc, test_forward_vs_ref);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(expert_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
