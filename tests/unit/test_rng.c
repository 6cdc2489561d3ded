/* Unit tests of rng: the counter-based generator of include/moesim/rng.h. */
#include "moesim/rng.h"

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "expect.h"

#define GOLDEN UINT64_C(0x9E3779B97F4A7C15)

START_TEST(test_mix_splitmix64_reference)
{
    /* The SplitMix64 generator with state 0 outputs mix(1 * golden), mix(2 * golden), ...; its first
     * two outputs are the published reference values (Vigna's splitmix64.c, also reproduced by an
     * independent Python implementation at authoring time). */
    ck_assert_uint_eq(moe_rng_mix(0), 0);
    ck_assert_uint_eq(moe_rng_mix(GOLDEN), UINT64_C(0xe220a8397b1dcdaf));
    ck_assert_uint_eq(moe_rng_mix(2 * GOLDEN), UINT64_C(0x6e789e6aa1b965f4));
    ck_assert_uint_eq(moe_rng_mix(1), UINT64_C(0x5692161d100b05e5));
}
END_TEST

START_TEST(test_u64_hard_coded)
{
    /* Literals computed at authoring time by a 15-line Python script that implements the spec in
     * rng.h with Python integers masked to 64 bits (mix, key(k, s) = mix(k ^ mix(s + golden)),
     * u64 = mix(key + (i + 1) * golden)); it shares no code with src/rng.c. */
    ck_assert_uint_eq(moe_rng_u64(0, 0, 0), UINT64_C(0x568a9b0b1a2c05ec));
    ck_assert_uint_eq(moe_rng_u64(1, 1, 0), UINT64_C(0x21a5715431dc4cc7));
    ck_assert_uint_eq(moe_rng_u64(1, 1, 1), UINT64_C(0xe1a26c101cc38752));
    ck_assert_uint_eq(moe_rng_u64(42, 2, 12345), UINT64_C(0xa17a5199ee4d9212));
    ck_assert_uint_eq(moe_rng_u64(UINT64_MAX, 0x100, UINT64_C(1) << 40),
                      UINT64_C(0x216ff52b66b77bf6));
}
END_TEST

START_TEST(test_normal_hard_coded)
{
    /* Same Python script, normal() from the spec in double (math.log, math.cos). Tolerance 1e-12:
     * libm's log and cos are correctly rounded or within an ulp, so the two may differ in the last
     * bits (about 1e-16 relative), not more. */
    ck_assert_double_eq_tol(moe_rng_normal(1, 1, 0), 1.4805109248489758, 1e-12);
    ck_assert_double_eq_tol(moe_rng_normal(1, 1, 7), 0.98983669286199882, 1e-12);
    ck_assert_double_eq_tol(moe_rng_normal(7, 3, 100), -0.016950770890835881, 1e-12);
}
END_TEST

START_TEST(test_uniform_spec)
{
    /* uniform(x) = ((x >> 11) + 0.5) * 2^-53: exact in double, so equality is exact. */
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t x = moe_rng_u64(5, 9, i);
        double u = moe_rng_uniform(5, 9, i);
        EXPECT(u == ((double)(x >> 11) + 0.5) * 0x1.0p-53);
        EXPECT(u > 0.0 && u < 1.0);
    }
}
END_TEST

START_TEST(test_fill_uniform_spec)
{
    /* the expert weights' generator: bound * (2 uniform(u64(seed, s, first + i)) - 1), in double,
     * rounded once to float; slices agree with the whole (any rank can fill any part), every value
     * lies in [-bound, bound], and the moments are those of U(-b, b): mean 0, variance b^2 / 3 */
    enum { N = 1 << 16 };
    static float w[N], part[100];
    const double b = sqrt(3.0 / 512.0);
    moe_rng_fill_uniform(w, N, 3, 0x105, 0, b);
    moe_rng_fill_uniform(part, 100, 3, 0x105, 1000, b);
    double sum = 0, sq = 0;
    for (size_t i = 0; i < N; i++) {
        double u = moe_rng_uniform(3, 0x105, i);
        EXPECT_MSG(w[i] == (float)(b * (2.0 * u - 1.0)), "element %zu: %g", i, (double)w[i]);
        EXPECT(fabs((double)w[i]) <= b);
        sum += w[i];
        sq += (double)w[i] * w[i];
    }
    for (size_t i = 0; i < 100; i++)
        EXPECT(part[i] == w[1000 + i]);
    double mean = sum / N, var = sq / N - mean * mean;
    /* standard errors: b / sqrt(3 N) for the mean, 0.89 (b^2 / 3) / sqrt(N) = 0.35% for the variance */
    EXPECT_MSG(fabs(mean) < 5.0 * b / sqrt(3.0 * N), "mean %g", mean);
    EXPECT_MSG(fabs(var / (b * b / 3.0) - 1.0) < 0.02, "variance %g, expected %g", var, b * b / 3.0);
}
END_TEST

START_TEST(test_determinism)
{
    /* A pure function of (seed, stream, counter): calling again, in any order, gives the same. */
    uint64_t first[256];
    for (int i = 0; i < 256; i++)
        first[i] = moe_rng_u64(123, MOE_STREAM_TOKENS, (uint64_t)i);
    for (int i = 255; i >= 0; i--)
        EXPECT_UEQ(moe_rng_u64(123, MOE_STREAM_TOKENS, (uint64_t)i), first[i]);
    for (int i = 0; i < 256; i++)
        EXPECT(moe_rng_normal(9, 2, (uint64_t)i) == moe_rng_normal(9, 2, (uint64_t)i));
}
END_TEST

START_TEST(test_streams_and_seeds_differ)
{
    /* Over 2000 counters, no value of stream 1 equals the value of stream 2 (or of another seed) at
     * the same counter: a 64-bit collision by chance has probability ~1e-16. The first 64 values of
     * the two streams share no value at any position either. */
    for (uint64_t i = 0; i < 2000; i++) {
        uint64_t a = moe_rng_u64(1, MOE_STREAM_TOKENS, i);
        EXPECT_UNE(a, moe_rng_u64(1, MOE_STREAM_ROUTER, i));
        EXPECT_UNE(a, moe_rng_u64(2, MOE_STREAM_TOKENS, i));
        EXPECT_UNE(a, moe_rng_u64(1, MOE_STREAM_TOKENS, i + 1));
    }
    for (uint64_t i = 0; i < 64; i++)
        for (uint64_t j = 0; j < 64; j++)
            EXPECT_UNE(moe_rng_u64(1, MOE_STREAM_EXPERT, i),
                              moe_rng_u64(1, MOE_STREAM_EXPERT + 1, j));
}
END_TEST

START_TEST(test_fill_normal_matches_normal)
{
    /* fill_normal is documented as (float)(scale * normal(first + i)): bitwise equality. */
    enum { N = 1000 };
    float out[N + 1];
    out[N] = 12345.0f; /* sentinel: must not be written */
    const double scales[] = {1.0, 0.125, 1.0 / sqrt(384.0)};
    const uint64_t firsts[] = {0, 1, 999999937};
    for (int si = 0; si < 3; si++)
        for (int fi = 0; fi < 3; fi++) {
            moe_rng_fill_normal(out, N, 77, MOE_STREAM_ROUTER, firsts[fi], scales[si]);
            for (int i = 0; i < N; i++) {
                float want = (float)(scales[si] * moe_rng_normal(77, MOE_STREAM_ROUTER,
                                                                 firsts[fi] + (uint64_t)i));
                EXPECT_MSG(out[i] == want, "fill[%d] = %.9g, normal = %.9g", i, out[i], want);
            }
            EXPECT(out[N] == 12345.0f);
        }
    moe_rng_fill_normal(out, 0, 77, 1, 0, 1.0); /* n = 0 writes nothing */
    EXPECT(out[N] == 12345.0f);
}
END_TEST

START_TEST(test_normal_moments)
{
    /* 100000 draws of N(0, 1). Standard errors: mean 1/sqrt(n) = 0.0032, variance sqrt(2/n) =
     * 0.0045, fourth moment sqrt(96/n) = 0.031. Tolerances are 5 standard errors (the seed is
     * fixed, so this never flakes; 5 sigma still catches a wrong scale or a biased transform). */
    enum { N = 100000 };
    double s1 = 0, s2 = 0, s4 = 0;
    int64_t beyond3 = 0;
    for (uint64_t i = 0; i < N; i++) {
        double x = moe_rng_normal(2024, MOE_STREAM_TOKENS, i);
        EXPECT(isfinite(x));
        s1 += x;
        s2 += x * x;
        s4 += x * x * x * x;
        beyond3 += fabs(x) > 3.0;
    }
    double mean = s1 / N, var = s2 / N - mean * mean;
    ck_assert_double_eq_tol(mean, 0.0, 5 * 0.0032);
    ck_assert_double_eq_tol(var, 1.0, 5 * 0.0045);
    ck_assert_double_eq_tol(s4 / N, 3.0, 5 * 0.031);
    /* P(|x| > 3) = 0.0027: expect 270, binomial sd 16.4; 5 sd. */
    ck_assert_int_ge(beyond3, 270 - 82);
    ck_assert_int_le(beyond3, 270 + 82);
}
END_TEST

START_TEST(test_uniform_mean)
{
    /* mean of 100000 uniforms: 0.5 with standard error sqrt(1/12/n) = 0.00091; 5 sigma. */
    double s = 0;
    for (uint64_t i = 0; i < 100000; i++)
        s += moe_rng_uniform(3, 3, i);
    ck_assert_double_eq_tol(s / 100000, 0.5, 5 * 0.00091);
}
END_TEST

static Suite *rng_suite(void)
{
    Suite *s = suite_create("rng");
    TCase *tc = tcase_create("spec");
    tcase_add_test(tc, test_mix_splitmix64_reference);
    tcase_add_test(tc, test_u64_hard_coded);
    tcase_add_test(tc, test_normal_hard_coded);
    tcase_add_test(tc, test_uniform_spec);
    suite_add_tcase(s, tc);
    tc = tcase_create("properties");
    tcase_add_test(tc, test_fill_uniform_spec);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_streams_and_seeds_differ);
    tcase_add_test(tc, test_fill_normal_matches_normal);
    tcase_add_test(tc, test_normal_moments);
    tcase_add_test(tc, test_uniform_mean);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(rng_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
