/* Unit tests of router: logits, softmax, sigmoid, top-k (plain, and with a selection bias and a
 * route scale), statistics; and the uniform-router aux loss. */
#include "moesim/router.h"
#include "moesim/simd.h"
#include "moesim/stats.h"

#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"

/* Test-local SplitMix64 stream for random inputs (independent of src/rng.c). */
#include "testrng.h"
/* Roughly normal (sum of 4 uniforms, centred, scaled to unit variance). */
static double next_gauss(void)
{
    return (next_unit() + next_unit() + next_unit() + next_unit() - 2.0) * sqrt(3.0);
}

/* ---- logits ---- */

START_TEST(test_logits_hand)
{
    /* h (2, 2), W (3, 2): z = h W^T = [[1, 2, 3], [3, 4, 7]], all exact in float. */
    const float h[] = {1, 2, 3, 4};
    const float w[] = {1, 0, 0, 1, 1, 1};
    const float want[] = {1, 2, 3, 3, 4, 7};
    float z[6], scratch[MOE_ROUTER_BLOCK * (2 + 3)];
    moe_router_logits(z, h, w, 0, 2, 2, 3, scratch);
    ck_assert_mem_eq(z, want, sizeof want);
    memset(z, 0, sizeof z);
    moe_router_logits_ref(z, h, w, 2, 2, 3);
    ck_assert_mem_eq(z, want, sizeof want);
    /* n = 0 touches nothing. */
    z[0] = 42.0f;
    moe_router_logits(z, h, w, 5, 0, 2, 3, scratch);
    moe_router_logits_ref(z, h, w, 0, 2, 3);
    ck_assert(z[0] == 42.0f);
}
END_TEST

START_TEST(test_logits_split_invariant)
{
    /* A token's logits do not depend on how the batch is split into calls: N = 1001 tokens (E 12,
     * the shape where OpenBLAS's Haswell sgemm rounds rows by call size) computed whole, then in
     * pieces of 1, 7, 31, 250, 333 and 500 rows starting anywhere, give the same floats. */
    enum { N = 1001, D = 24, NE = 12 };
    float *h = malloc(sizeof(float) * N * D), *w = malloc(sizeof(float) * NE * D);
    float *z = malloc(sizeof(float) * N * NE), *z2 = malloc(sizeof(float) * N * NE);
    float *scratch = malloc(sizeof(float) * MOE_ROUTER_BLOCK * (D + NE));
    g_state = 5;
    for (int i = 0; i < N * D; i++)
        h[i] = (float)next_gauss();
    for (int i = 0; i < NE * D; i++)
        w[i] = (float)next_gauss();
    moe_router_logits(z, h, w, 0, N, D, NE, scratch);
    static const int64_t pieces[] = {1, 7, 31, 250, 333, 500};
    for (size_t q = 0; q < sizeof pieces / sizeof *pieces; q++) {
        for (int64_t off = 0; off < N; off += pieces[q]) {
            int64_t c = off + pieces[q] > N ? N - off : pieces[q];
            moe_router_logits(z2 + off * NE, h + off * D, w, off, c, D, NE, scratch);
        }
        EXPECT_MSG(memcmp(z, z2, sizeof(float) * N * NE) == 0,
                   "pieces of %lld rows: logits differ from the whole batch's", (long long)pieces[q]);
    }
    free(h), free(w), free(z), free(z2), free(scratch);
}
END_TEST

START_TEST(test_logits_levels)
{
    /* The small-E kernel (E <= MOE_ROUTER_SMALL_E, AVX2 or AVX-512): the same floats at both
     * levels, for every d (whole 16s and tails), every E up to the limit and 1, 2 or 3 tokens (the
     * AVX-512 build pairs them); each level within the reference's bound is test_logits_vs_ref's
     * at the CPU's level, checked here at level 1 too. Level 0 is the sgemm path. */
    int top = moe_simd_set_level(-1);
    g_state = 23;
    for (int it = 0; it < 300; it++) {
        int n = 1 + next_int(3), d = 1 + next_int(80), E = 1 + next_int(MOE_ROUTER_SMALL_E);
        float *h = malloc(sizeof(float) * n * d), *w = malloc(sizeof(float) * E * d);
        float *z[3], *ref = malloc(sizeof(float) * n * E);
        float *scratch = malloc(sizeof(float) * MOE_ROUTER_BLOCK * (d + E));
        for (int i = 0; i < n * d; i++)
            h[i] = (float)next_gauss();
        for (int i = 0; i < E * d; i++)
            w[i] = (float)next_gauss();
        moe_router_logits_ref(ref, h, w, n, d, E);
        for (int level = 0; level <= 2; level++) {
            z[level] = malloc(sizeof(float) * n * E);
            if (level > top)
                continue;
            EXPECT(moe_simd_set_level(level) == level);
            moe_router_logits(z[level], h, w, 7, n, d, E, scratch);
            for (int t = 0; t < n; t++)
                for (int e = 0; e < E; e++) {
                    double mag = 0.0, g = d * 0x1p-24 / (1.0 - d * 0x1p-24);
                    for (int j = 0; j < d; j++)
                        mag += fabs((double)h[t * d + j] * (double)w[e * d + j]);
                    double err = fabs((double)z[level][t * E + e] - (double)ref[t * E + e]);
                    EXPECT_MSG(err <= g * mag + 0x1p-24 * fabs((double)ref[t * E + e]),
                               "iteration %d level %d: |z - ref| %g above the bound", it, level,
                               err);
                }
        }
        if (top == 2)
            EXPECT_MSG(memcmp(z[1], z[2], sizeof(float) * n * E) == 0,
                       "iteration %d (n %d, d %d, E %d): AVX2 and AVX-512 logits differ", it, n, d,
                       E);
        moe_simd_set_level(-1);
        free(h), free(w), free(ref), free(scratch), free(z[0]), free(z[1]), free(z[2]);
    }
}
END_TEST

START_TEST(test_logits_vs_ref)
{
    /* Tolerance per element, rigorous for any summation order (blocking, FMA): a float dot product
     * of d terms has |error| <= gamma_d * sum_j |h_j w_j| with gamma_d = d u / (1 - d u), u = 2^-24
     * (Higham, Accuracy and Stability, 3.1). The reference accumulates in double and rounds once:
     * add u |z_ref|. */
    static const int shapes[][3] = {{1, 1, 1}, {1, 16, 8}, {7, 3, 5}, {33, 65, 7}, {128, 512, 64},
                                    {5, 1000, 3}, {257, 31, 2}};
    g_state = 11;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int64_t n = shapes[s][0], d = shapes[s][1];
        int E = shapes[s][2];
        float *h = malloc((size_t)(n * d) * sizeof *h), *w = malloc((size_t)(E * d) * sizeof *w);
        float *z = malloc((size_t)(n * E) * sizeof *z), *zr = malloc((size_t)(n * E) * sizeof *zr);
        float *scratch = malloc((size_t)(MOE_ROUTER_BLOCK * (d + E)) * sizeof *scratch);
        for (int64_t i = 0; i < n * d; i++)
            h[i] = (float)next_gauss();
        for (int64_t i = 0; i < E * d; i++)
            w[i] = (float)(next_gauss() / sqrt((double)d));
        moe_router_logits(z, h, w, 3 * (int64_t)s, n, d, E, scratch);
        free(scratch);
        moe_router_logits_ref(zr, h, w, n, d, E);
        const double u = 0x1.0p-24, gamma = d * u / (1 - d * u);
        for (int64_t t = 0; t < n; t++)
            for (int e = 0; e < E; e++) {
                double abs_sum = 0;
                for (int64_t j = 0; j < d; j++)
                    abs_sum += fabs((double)h[t * d + j] * w[e * d + j]);
                double tol = gamma * abs_sum + u * fabs(zr[t * E + e]);
                double diff = fabs((double)z[t * E + e] - zr[t * E + e]);
                EXPECT_MSG(diff <= tol, "shape (%lld,%lld,%d) z[%lld][%d]: sgemm %.9g ref %.9g "
                              "diff %.3g > tol %.3g", (long long)n, (long long)d, E, (long long)t, e,
                              z[t * E + e], zr[t * E + e], diff, tol);
            }
        free(h), free(w), free(z), free(zr);
    }
}
END_TEST

/* ---- softmax ---- */

START_TEST(test_softmax_hand_and_extremes)
{
    float p[4];
    /* Equal logits: exactly 1/E (exp(0) = 1, 1/4 exact). */
    const float z1[] = {3, 3, 3, 3};
    moe_softmax_rows(p, z1, 1, 4);
    for (int e = 0; e < 4; e++)
        ck_assert(p[e] == 0.25f);
    /* z = [0, ln 3]: p = [1/4, 3/4]. ln 3 rounded to float moves p by ~1e-8; 1e-7 covers that plus
     * the few roundings of expf and the normalization. */
    const float z2[] = {0.0f, (float)log(3.0)};
    moe_softmax_rows(p, z2, 1, 2);
    ck_assert_float_eq_tol(p[0], 0.25f, 1e-7f);
    ck_assert_float_eq_tol(p[1], 0.75f, 1e-7f);
    /* Logits of +-1000 would overflow exp without the max subtraction: exact results expected,
     * exp(0) = 1 and exp(-1000), exp(-2000) underflow to exactly 0. */
    const float z3[] = {1000, -1000, 0, 1000};
    moe_softmax_rows(p, z3, 1, 4);
    ck_assert(p[0] == 0.5f && p[1] == 0.0f && p[2] == 0.0f && p[3] == 0.5f);
    const float z4[] = {-1000, -1000};
    moe_softmax_rows(p, z4, 1, 2);
    ck_assert(p[0] == 0.5f && p[1] == 0.5f);
    const float z5[] = {-FLT_MAX / 2, FLT_MAX / 2, 0};
    moe_softmax_rows(p, z5, 1, 3);
    ck_assert(p[0] == 0.0f && p[1] == 1.0f && p[2] == 0.0f);
    /* E = 1: always exactly 1. */
    const float z6[] = {-12345.0f};
    moe_softmax_rows(p, z6, 1, 1);
    ck_assert(p[0] == 1.0f);
}
END_TEST

START_TEST(test_softmax_rows_sum_to_one)
{
    /* Each p_e is exp(z_e - max) times a float 1/sum, with at most ~2.5 ulp relative error
     * (expf < 1 ulp, rounding 1/sum and the product 0.5 ulp each), so |sum_e p_e - 1| <=
     * 2.5 * 2^-23 ~ 3e-7 whatever E is; 1e-6 leaves room. The sum is taken in double. */
    static const int Es[] = {1, 2, 3, 8, 64, 257};
    g_state = 12;
    for (size_t a = 0; a < sizeof Es / sizeof *Es; a++) {
        int E = Es[a];
        enum { N = 300 };
        float *z = malloc((size_t)N * E * sizeof *z), *p = malloc((size_t)N * E * sizeof *p);
        for (int64_t i = 0; i < (int64_t)N * E; i++)
            z[i] = (float)(4.0 * next_gauss());
        moe_softmax_rows(p, z, N, E);
        for (int t = 0; t < N; t++) {
            double sum = 0;
            for (int e = 0; e < E; e++) {
                EXPECT(p[t * E + e] >= 0.0f && p[t * E + e] <= 1.0f);
                sum += p[t * E + e];
            }
            EXPECT_MSG(fabs(sum - 1.0) <= 1e-6, "E=%d row %d sums to %.9g", E, t, sum);
        }
        free(z), free(p);
    }
}
END_TEST

START_TEST(test_softmax_shift_invariance_exact)
{
    /* Logits on a grid of 1/1024 in [-8, 8] shifted by c in {1, -3.5, 64, 1000, -1000}: z + c and
     * every z_e - max are exact in float (at most 21 significant bits), so the exp arguments are the
     * same numbers and the outputs must be bitwise equal. */
    enum { N = 50, E = 9 };
    float z[N * E], zs[N * E], p[N * E], ps[N * E];
    g_state = 13;
    for (int i = 0; i < N * E; i++)
        z[i] = (float)(next_int(16 * 1024 + 1) - 8 * 1024) / 1024.0f;
    const float shifts[] = {1.0f, -3.5f, 64.0f, 1000.0f, -1000.0f};
    moe_softmax_rows(p, z, N, E);
    for (size_t s = 0; s < sizeof shifts / sizeof *shifts; s++) {
        for (int i = 0; i < N * E; i++) {
            zs[i] = z[i] + shifts[s];
            EXPECT(zs[i] - shifts[s] == z[i]); /* the premise: the shift is exact */
        }
        moe_softmax_rows(ps, zs, N, E);
        EXPECT_MSG(memcmp(p, ps, sizeof p) == 0, "shift by %g changed the probabilities", shifts[s]);
    }
}
END_TEST

START_TEST(test_softmax_vs_double_and_alias)
{
    /* Against softmax in double. Error of p_e: the float subtraction z_e - max rounds by at most
     * u |z_e - max| (absolute, in the exponent, hence relative in p_e), expf 1 ulp, normalization
     * ~2 ulp: |p - p_ref| <= (|z_e - max| + 8) * 2^-23 * p_ref, plus the smallest normal float for
     * values that underflow to subnormals. */
    enum { N = 200, E = 16 };
    float z[N * E], p[N * E], q[N * E];
    g_state = 14;
    for (int i = 0; i < N * E; i++)
        z[i] = (float)(6.0 * next_gauss());
    moe_softmax_rows(p, z, N, E);
    for (int t = 0; t < N; t++) {
        double zmax = z[t * E], sum = 0;
        for (int e = 1; e < E; e++)
            zmax = fmax(zmax, z[t * E + e]);
        for (int e = 0; e < E; e++)
            sum += exp(z[t * E + e] - zmax);
        for (int e = 0; e < E; e++) {
            double ref = exp(z[t * E + e] - zmax) / sum;
            double tol = (fabs(z[t * E + e] - zmax) + 8) * FLT_EPSILON * ref + FLT_MIN;
            EXPECT_MSG(fabs(p[t * E + e] - ref) <= tol, "p[%d][%d] = %.9g, double %.9g", t, e,
                          p[t * E + e], ref);
        }
    }
    /* p may alias z: same result, bitwise. */
    memcpy(q, z, sizeof z);
    moe_softmax_rows(q, q, N, E);
    EXPECT_MEM_EQ(q, p, sizeof p);
}
END_TEST

/* ---- top-k ---- */

START_TEST(test_topk_hand)
{
    const float p[] = {0.1f, 0.4f, 0.2f, 0.3f};
    int32_t ex[4];
    float g[4];
    moe_topk(ex, g, p, 1, 4, 2, false);
    ck_assert_int_eq(ex[0], 1);
    ck_assert_int_eq(ex[1], 3);
    ck_assert(g[0] == 0.4f && g[1] == 0.3f); /* Switch: the gate is p itself, bitwise */
    moe_topk(ex, g, p, 1, 4, 2, true);
    ck_assert_int_eq(ex[0], 1);
    ck_assert_int_eq(ex[1], 3);
    /* 0.4 / 0.7 = 4/7: the float inputs differ from the decimals by < 2^-25 relative and the ratio
     * rounds once, so within ~2e-7 of 4/7 and 3/7. */
    ck_assert_float_eq_tol(g[0], 4.0f / 7.0f, 2e-7f);
    ck_assert_float_eq_tol(g[1], 3.0f / 7.0f, 2e-7f);
    /* k = 1: argmax. */
    moe_topk(ex, g, p, 1, 4, 1, false);
    ck_assert_int_eq(ex[0], 1);
    ck_assert(g[0] == 0.4f);
    moe_topk(ex, g, p, 1, 4, 1, true); /* renormalized single gate is exactly 1 */
    ck_assert(g[0] == 1.0f);
    /* k = E: every expert, best first. */
    moe_topk(ex, g, p, 1, 4, 4, false);
    const int32_t order[] = {1, 3, 2, 0};
    ck_assert_mem_eq(ex, order, sizeof order);
    ck_assert(g[0] == 0.4f && g[1] == 0.3f && g[2] == 0.2f && g[3] == 0.1f);
    /* Two tokens in one call: rows are independent. */
    const float p2[] = {0.7f, 0.2f, 0.1f, 0.1f, 0.1f, 0.8f};
    int32_t ex2[4];
    float g2[4];
    moe_topk(ex2, g2, p2, 2, 3, 2, false);
    const int32_t want2[] = {0, 1, 2, 0};
    ck_assert_mem_eq(ex2, want2, sizeof want2);
}
END_TEST

START_TEST(test_topk_ties_lower_id)
{
    int32_t ex[5];
    float g[5];
    const float uni[] = {0.25f, 0.25f, 0.25f, 0.25f};
    moe_topk(ex, g, uni, 1, 4, 2, false);
    ck_assert_int_eq(ex[0], 0);
    ck_assert_int_eq(ex[1], 1);
    moe_topk(ex, g, uni, 1, 4, 3, true);
    ck_assert_int_eq(ex[0], 0);
    ck_assert_int_eq(ex[1], 1);
    ck_assert_int_eq(ex[2], 2);
    const float t1[] = {0.1f, 0.3f, 0.3f, 0.3f};
    moe_topk(ex, g, t1, 1, 4, 2, false);
    ck_assert_int_eq(ex[0], 1);
    ck_assert_int_eq(ex[1], 2);
    const float t2[] = {0.3f, 0.1f, 0.3f, 0.2f, 0.3f};
    moe_topk(ex, g, t2, 1, 5, 1, false);
    ck_assert_int_eq(ex[0], 0);
    moe_topk(ex, g, t2, 1, 5, 3, false);
    ck_assert_int_eq(ex[0], 0);
    ck_assert_int_eq(ex[1], 2);
    ck_assert_int_eq(ex[2], 4);
    moe_topk(ex, g, t2, 1, 5, 4, false);
    ck_assert_int_eq(ex[3], 3);
    /* A tie for the last place that only appears late: the earlier id keeps its place. */
    const float t3[] = {0.2f, 0.5f, 0.1f, 0.2f};
    moe_topk(ex, g, t3, 1, 4, 2, false);
    ck_assert_int_eq(ex[0], 1);
    ck_assert_int_eq(ex[1], 0);
}
END_TEST

/* The contract as a predicate: distinct experts, gates are their p in non-increasing order, and
 * every expert not chosen ranks after the last chosen one under (p descending, id ascending). */
static void check_topk_row(const int32_t *ex, const float *g, const float *p, int E, int k)
{
    char chosen[512] = {0};
    for (int c = 0; c < k; c++) {
        EXPECT(ex[c] >= 0 && ex[c] < E);
        EXPECT_MSG(!chosen[ex[c]], "expert %d chosen twice", ex[c]);
        chosen[ex[c]] = 1;
        EXPECT(g[c] == p[ex[c]]);
        if (c > 0)
            EXPECT(p[ex[c - 1]] > p[ex[c]] || (p[ex[c - 1]] == p[ex[c]] && ex[c - 1] < ex[c]));
    }
    int last = ex[k - 1];
    for (int e = 0; e < E; e++)
        if (!chosen[e])
            EXPECT_MSG(p[e] < p[last] || (p[e] == p[last] && e > last),
                          "expert %d (p %.9g) left out but expert %d (p %.9g) chosen", e, p[e], last,
                          p[last]);
}

START_TEST(test_topk_property)
{
    /* Random probabilities, half the rows quantized to 4 levels so ties are common. */
    enum { N = 400 };
    static const int Es[] = {1, 2, 3, 8, 13, 64};
    g_state = 15;
    for (size_t a = 0; a < sizeof Es / sizeof *Es; a++) {
        int E = Es[a];
        float *p = malloc((size_t)N * E * sizeof *p);
        int32_t *ex = malloc((size_t)N * E * sizeof *ex);
        float *g = malloc((size_t)N * E * sizeof *g);
        for (int t = 0; t < N; t++)
            for (int e = 0; e < E; e++)
                p[t * E + e] = t % 2 ? (float)next_unit() : 0.25f * (float)next_int(4);
        for (int k = 1; k <= E; k++) {
            moe_topk(ex, g, p, N, E, k, false);
            for (int t = 0; t < N; t++)
                check_topk_row(ex + t * k, g + t * k, p + t * E, E, k);
        }
        free(p), free(ex), free(g);
    }
}
END_TEST

START_TEST(test_topk_renormalize_is_softmax_of_chosen)
{
    /* Mixtral: renormalized gates = softmax over the k chosen logits. Error: each p carries a
     * relative error <= (|z - max| + 8) 2^-23 (see the softmax test), a ratio of them twice that,
     * plus the final rounding; with these logits |z - max| < 20, so 2 * 28 * 2^-23 < 7e-6. */
    enum { N = 300, E = 8 };
    float z[N * E], p[N * E], g[N * E];
    int32_t ex[N * E];
    g_state = 16;
    for (int i = 0; i < N * E; i++)
        z[i] = (float)(2.0 * next_gauss());
    moe_softmax_rows(p, z, N, E);
    for (int k = 1; k <= E; k++) {
        moe_topk(ex, g, p, N, E, k, true);
        for (int t = 0; t < N; t++) {
            double zmax = -INFINITY, sum = 0, gsum = 0;
            for (int c = 0; c < k; c++)
                zmax = fmax(zmax, z[t * E + ex[t * k + c]]);
            for (int c = 0; c < k; c++)
                sum += exp(z[t * E + ex[t * k + c]] - zmax);
            for (int c = 0; c < k; c++) {
                double want = exp(z[t * E + ex[t * k + c]] - zmax) / sum;
                EXPECT_MSG(fabs(g[t * k + c] - want) <= 7e-6, "k=%d token %d choice %d: %.9g vs %.9g",
                              k, t, c, g[t * k + c], want);
                gsum += g[t * k + c];
            }
            /* The gates are g_c / sum(g) rounded once each: they sum to 1 within k * 2^-24. */
            EXPECT_MSG(fabs(gsum - 1.0) <= 1e-6, "k=%d token %d gates sum to %.9g", k, t, gsum);
        }
    }
}
END_TEST

/* ---- sigmoid scores, selection bias, route scale (issue 9) ---- */

START_TEST(test_sigmoid_hand_and_extremes)
{
    float s[6];
    /* sigmoid(0) = 1/2 exactly; sigmoid(ln 3) = 3/4 (ln 3 in float moves it by ~1e-8); far out,
     * exactly 0 and 1 (exp(1000) is inf in double, 1/inf = 0), never NaN. */
    const float z[] = {0.0f, (float)log(3.0), -(float)log(3.0), 1000.0f, -1000.0f, -FLT_MAX};
    moe_sigmoid_rows(s, z, 1, 6);
    ck_assert(s[0] == 0.5f);
    ck_assert_float_eq_tol(s[1], 0.75f, 1e-7f);
    ck_assert_float_eq_tol(s[2], 0.25f, 1e-7f);
    ck_assert(s[3] == 1.0f && s[4] == 0.0f && s[5] == 0.0f);
    /* Against 1 / (1 + e^-z) in long double, rounded once: equal (the double computation errs by
     * far less than half a float ulp), and in [0, 1]; in place gives the same bits. */
    enum { N = 64, E = 9 };
    float zz[N * E], ss[N * E];
    g_state = 31;
    for (int i = 0; i < N * E; i++)
        zz[i] = (float)(8.0 * next_gauss());
    moe_sigmoid_rows(ss, zz, N, E);
    int mismatches = 0;
    for (int i = 0; i < N * E; i++) {
        long double ref = 1.0L / (1.0L + expl(-(long double)zz[i]));
        EXPECT(ss[i] >= 0.0f && ss[i] <= 1.0f);
        EXPECT_MSG(fabsl((long double)ss[i] - ref) <= 0.5000001L * FLT_EPSILON * ref + FLT_MIN,
                   "sigmoid(%.9g) = %.9g, long double %.12Lg", zz[i], ss[i], ref);
        mismatches += ss[i] != (float)ref;
    }
    ck_assert_int_le(mismatches, 2); /* a double rounding can differ only at a float midpoint */
    memcpy(s, z, sizeof s);
    moe_sigmoid_rows(s, s, 1, 6);
    float t[6];
    moe_sigmoid_rows(t, z, 1, 6);
    ck_assert_mem_eq(s, t, sizeof t);
}
END_TEST

START_TEST(test_router_scores_dispatch)
{
    /* moe_router_scores is the softmax or the sigmoid, bit for bit. */
    enum { N = 40, E = 7 };
    float z[N * E], a[N * E], b[N * E];
    g_state = 32;
    for (int i = 0; i < N * E; i++)
        z[i] = (float)(3.0 * next_gauss());
    moe_router_scores(a, z, N, E, MOE_SCORE_SOFTMAX);
    moe_softmax_rows(b, z, N, E);
    ck_assert_mem_eq(a, b, sizeof a);
    moe_router_scores(a, z, N, E, MOE_SCORE_SIGMOID);
    moe_sigmoid_rows(b, z, N, E);
    ck_assert_mem_eq(a, b, sizeof a);
    ck_assert_str_eq(moe_score_name(MOE_SCORE_SOFTMAX), "softmax");
    ck_assert_str_eq(moe_score_name(MOE_SCORE_SIGMOID), "sigmoid");
}
END_TEST

START_TEST(test_probs_row)
{
    /* softmax scores are copied; sigmoid scores are divided by their sum (Megatron-Core's aux-loss
     * scores): dyadic values, so exact. */
    const float p[] = {0.5f, 0.25f, 0.125f, 0.125f};
    float q[4];
    moe_router_probs_row(q, p, 4, MOE_SCORE_SOFTMAX);
    ck_assert_mem_eq(q, p, sizeof p);
    const float s[] = {0.75f, 0.5f, 0.5f, 0.25f}; /* sum 2 */
    moe_router_probs_row(q, s, 4, MOE_SCORE_SIGMOID);
    ck_assert(q[0] == 0.375f && q[1] == 0.25f && q[2] == 0.25f && q[3] == 0.125f);
    const float zero[] = {0.0f, 0.0f, 0.0f};
    moe_router_probs_row(q, zero, 3, MOE_SCORE_SIGMOID);
    ck_assert(q[0] == 0.0f && q[1] == 0.0f && q[2] == 0.0f);
    /* random sigmoid rows sum to 1 within E rounding of 2^-24 */
    g_state = 33;
    for (int trial = 0; trial < 200; trial++) {
        enum { EE = 16 };
        float z[EE], sg[EE], pr[EE];
        for (int e = 0; e < EE; e++)
            z[e] = (float)(4.0 * next_gauss());
        moe_sigmoid_rows(sg, z, 1, EE);
        moe_router_probs_row(pr, sg, EE, MOE_SCORE_SIGMOID);
        double sum = 0.0;
        for (int e = 0; e < EE; e++)
            sum += pr[e];
        EXPECT_MSG(fabs(sum - 1.0) <= EE * 0x1.0p-24, "sum %.9g", sum);
    }
}
END_TEST

START_TEST(test_topk_select_hand)
{
    /* Scores (dyadic, so every sum and ratio below is exact) and a bias that changes the choice:
     *   s    = 0.75  0.625  0.25  0.5
     *   b    = 0    -0.5    0.5   0
     *   s+b  = 0.75  0.125  0.75  0.5   -> top-2 {0, 2} (a tie at 0.75: the lower id first)
     * Without the bias the top-2 is {0, 1}. The gate is s, never s + b: normalized, 0.75 / 1.0 and
     * 0.25 / 1.0; times 2.5, 1.875 and 0.625. */
    const float sc[] = {0.75f, 0.625f, 0.25f, 0.5f};
    const float b[] = {0.0f, -0.5f, 0.5f, 0.0f};
    int32_t ex[4];
    float g[4];
    moe_topk_select(ex, g, sc, NULL, 1, 4, 2, false, 1.0);
    ck_assert(ex[0] == 0 && ex[1] == 1 && g[0] == 0.75f && g[1] == 0.625f);
    moe_topk_select(ex, g, sc, b, 1, 4, 2, false, 1.0);
    ck_assert(ex[0] == 0 && ex[1] == 2);
    ck_assert(g[0] == 0.75f && g[1] == 0.25f); /* the scores, not s + b (0.75, 0.75) */
    moe_topk_select(ex, g, sc, b, 1, 4, 2, true, 1.0);
    ck_assert(ex[0] == 0 && ex[1] == 2 && g[0] == 0.75f && g[1] == 0.25f); /* sum 1 already */
    moe_topk_select(ex, g, sc, b, 1, 4, 2, true, 2.5);
    ck_assert(g[0] == 1.875f && g[1] == 0.625f); /* they sum to the scale */
    moe_topk_select(ex, g, sc, NULL, 1, 4, 2, true, 2.5);
    ck_assert(ex[0] == 0 && ex[1] == 1);
    /* 0.75 / 1.375 = 6/11, 0.625 / 1.375 = 5/11, each rounded to float, then times 2.5 */
    ck_assert(g[0] == (float)((double)(float)(0.75 / 1.375) * 2.5));
    ck_assert(g[1] == (float)((double)(float)(0.625 / 1.375) * 2.5));
    /* k = 3 with the bias: keys 0.75, 0.75, 0.5 (0.125 last); unnormalized and scaled by 2 */
    moe_topk_select(ex, g, sc, b, 1, 4, 3, false, 2.0);
    ck_assert(ex[0] == 0 && ex[1] == 2 && ex[2] == 3);
    ck_assert(g[0] == 1.5f && g[1] == 0.5f && g[2] == 1.0f);
    /* a bias large enough to pick the lowest score alone, k = 1 */
    const float big[] = {0.0f, 0.0f, 0.0f, 0.0f};
    const float b2[] = {-1.0f, -1.0f, -1.0f, 0.0f};
    moe_topk_select(ex, g, sc, b2, 1, 4, 1, false, 1.0);
    ck_assert(ex[0] == 3 && g[0] == 0.5f);
    moe_topk_select(ex, g, sc, b2, 1, 4, 1, true, 1.0);
    ck_assert(ex[0] == 3 && g[0] == 1.0f);
    /* every chosen score 0: normalized gates are 0, not NaN */
    moe_topk_select(ex, g, big, NULL, 1, 4, 2, true, 2.5);
    ck_assert(ex[0] == 0 && ex[1] == 1 && g[0] == 0.0f && g[1] == 0.0f);
    /* two tokens: rows are independent, the bias is the same for both */
    const float sc2[] = {0.75f, 0.625f, 0.25f, 0.5f, 0.25f, 0.5f, 0.0625f, 0.75f};
    int32_t ex2[4];
    float g2[4];
    moe_topk_select(ex2, g2, sc2, b, 2, 4, 2, false, 1.0);
    const int32_t want2[] = {0, 2, 3, 2}; /* row 2 keys 0.25, 0, 0.5625, 0.75 */
    ck_assert_mem_eq(ex2, want2, sizeof want2);
}
END_TEST

/* The top-k as it was before the selection bias existed (copied from the commit before issue 9),
 * so the plain path can be checked bit for bit against the code that produced every earlier
 * result. */
static void topk_before_issue9(int32_t *expert, float *gate, const float *p, int64_t n, int E, int k,
                               bool renormalize)
{
    for (int64_t t = 0; t < n; t++) {
        const float *pr = p + t * E;
        int32_t *er = expert + t * k;
        float *gr = gate + t * k;
        int filled = 0;
        for (int e = 0; e < E; e++) {
            float v = pr[e];
            if (filled == k && !(v > gr[k - 1]))
                continue;
            int pos = filled < k ? filled++ : k - 1;
            while (pos > 0 && v > gr[pos - 1]) {
                er[pos] = er[pos - 1];
                gr[pos] = gr[pos - 1];
                pos--;
            }
            er[pos] = e;
            gr[pos] = v;
        }
        if (renormalize) {
            double sum = 0.0;
            for (int c = 0; c < k; c++)
                sum += gr[c];
            for (int c = 0; c < k; c++)
                gr[c] = (float)(gr[c] / sum);
        }
    }
}

START_TEST(test_topk_softmax_path_unchanged)
{
    /* moe_topk, and moe_topk_select without a bias at scale 1, give the old top-k's experts and
     * gates bit for bit, with and without renormalization, on softmax rows with many ties. */
    enum { N = 300 };
    static const int Es[] = {1, 2, 5, 8, 33};
    g_state = 34;
    for (size_t a = 0; a < sizeof Es / sizeof *Es; a++) {
        int E = Es[a];
        float *z = malloc((size_t)N * E * sizeof *z), *p = malloc((size_t)N * E * sizeof *p);
        int32_t *e1 = malloc((size_t)N * E * sizeof *e1), *e2 = malloc((size_t)N * E * sizeof *e2);
        int32_t *e3 = malloc((size_t)N * E * sizeof *e3);
        float *g1 = malloc((size_t)N * E * sizeof *g1), *g2 = malloc((size_t)N * E * sizeof *g2);
        float *g3 = malloc((size_t)N * E * sizeof *g3);
        for (int i = 0; i < N * E; i++)
            z[i] = i % 3 ? (float)(2.0 * next_gauss()) : (float)next_int(3); /* ties */
        moe_softmax_rows(p, z, N, E);
        for (int k = 1; k <= E; k++)
            for (int renorm = 0; renorm <= 1; renorm++) {
                topk_before_issue9(e1, g1, p, N, E, k, renorm);
                moe_topk(e2, g2, p, N, E, k, renorm);
                moe_topk_select(e3, g3, p, NULL, N, E, k, renorm, 1.0);
                size_t nk = (size_t)N * (size_t)k;
                EXPECT_MSG(memcmp(e1, e2, nk * sizeof *e1) == 0 && memcmp(g1, g2, nk * sizeof *g1) == 0,
                           "E=%d k=%d renorm=%d: moe_topk differs from the old top-k", E, k, renorm);
                EXPECT_MSG(memcmp(e1, e3, nk * sizeof *e1) == 0 && memcmp(g1, g3, nk * sizeof *g1) == 0,
                           "E=%d k=%d renorm=%d: moe_topk_select differs", E, k, renorm);
            }
        free(z), free(p), free(e1), free(e2), free(e3), free(g1), free(g2), free(g3);
    }
}
END_TEST

START_TEST(test_topk_select_property)
{
    /* Random sigmoid scores, random biases (half the rows quantized so keys tie), every k, with and
     * without normalization, scale 1 and 2.5:
     *  - the chosen experts are the top-k of the float32 keys s + b under (key descending, id
     *    ascending), distinct;
     *  - the bias never reaches the gate: unnormalized, gate = s of the chosen expert exactly;
     *    normalized, gate = (float)(s / sum of the chosen s) exactly, times the scale;
     *  - normalized gates sum to 1 within k * 2^-24 before the scale and to S within S k 2^-23
     *    after it;
     *  - a bias of zeros chooses exactly what no bias chooses (s + 0 = s);
     *  - the bias changes the choice on a good share of the tokens (it is not ignored). */
    enum { N = 400 };
    static const int Es[] = {2, 3, 8, 16};
    g_state = 35;
    for (size_t a = 0; a < sizeof Es / sizeof *Es; a++) {
        int E = Es[a];
        float *z = malloc((size_t)N * E * sizeof *z), *s = malloc((size_t)N * E * sizeof *s);
        float *key = malloc((size_t)N * E * sizeof *key), *b = malloc((size_t)E * sizeof *b);
        float *zero = calloc((size_t)E, sizeof *zero);
        int32_t *ex = malloc((size_t)N * E * sizeof *ex), *ex0 = malloc((size_t)N * E * sizeof *ex0);
        float *g = malloc((size_t)N * E * sizeof *g), *g0 = malloc((size_t)N * E * sizeof *g0);
        for (int i = 0; i < N * E; i++)
            z[i] = (i / E) % 2 ? (float)(2.0 * next_gauss()) : (float)(next_int(3) - 1);
        moe_sigmoid_rows(s, z, N, E);
        for (int e = 0; e < E; e++)
            b[e] = (float)(0.25 * (next_int(5) - 2)); /* -0.5 ... 0.5 in quarters */
        for (int i = 0; i < N * E; i++)
            key[i] = s[i] + b[i % E];
        int64_t changed = 0, rows = 0;
        for (int k = 1; k <= E; k++)
            for (int norm = 0; norm <= 1; norm++)
                for (int sc = 0; sc <= 1; sc++) {
                    double S = sc ? 2.5 : 1.0;
                    moe_topk_select(ex, g, s, b, N, E, k, norm, S);
                    moe_topk_select(ex0, g0, s, NULL, N, E, k, norm, S);
                    for (int t = 0; t < N; t++) {
                        const int32_t *er = ex + t * k;
                        const float *sr = s + t * E, *kr = key + t * E;
                        char chosen[64] = {0};
                        double sum = 0.0, gsum = 0.0;
                        for (int c = 0; c < k; c++) {
                            EXPECT(er[c] >= 0 && er[c] < E && !chosen[er[c]]);
                            chosen[er[c]] = 1;
                            sum += sr[er[c]];
                            if (c > 0)
                                EXPECT(kr[er[c - 1]] > kr[er[c]] ||
                                       (kr[er[c - 1]] == kr[er[c]] && er[c - 1] < er[c]));
                        }
                        int last = er[k - 1];
                        for (int e = 0; e < E; e++)
                            if (!chosen[e])
                                EXPECT_MSG(kr[e] < kr[last] || (kr[e] == kr[last] && e > last),
                                           "E=%d k=%d token %d: expert %d left out", E, k, t, e);
                        for (int c = 0; c < k; c++) {
                            float want = norm ? (sum > 0 ? (float)(sr[er[c]] / sum) : 0.0f) : sr[er[c]];
                            if (S != 1.0)
                                want = (float)((double)want * S);
                            EXPECT_MSG(g[t * k + c] == want, "E=%d k=%d token %d choice %d: gate %.9g, "
                                       "want %.9g", E, k, t, c, g[t * k + c], want);
                            gsum += g[t * k + c];
                        }
                        if (norm && sum > 0)
                            EXPECT_MSG(fabs(gsum - S) <= S * k * 0x1.0p-23, "E=%d k=%d: gates sum "
                                       "to %.9g, not %g", E, k, gsum, S);
                        if (k < E) {
                            rows++;
                            changed += memcmp(er, ex0 + t * k, (size_t)k * sizeof *er) != 0;
                        }
                    }
                    moe_topk_select(ex0, g0, s, zero, N, E, k, norm, S);
                    moe_topk_select(ex, g, s, NULL, N, E, k, norm, S);
                    EXPECT(memcmp(ex, ex0, (size_t)N * k * sizeof *ex) == 0);
                    EXPECT(memcmp(g, g0, (size_t)N * k * sizeof *g) == 0);
                }
        /* quarters of bias against scores in (0, 1): the choice moves on many tokens */
        EXPECT_MSG(rows == 0 || changed * 10 > rows, "E=%d: the bias changed %lld of %lld choices",
                   E, (long long)changed, (long long)rows);
        free(z), free(s), free(key), free(b), free(zero), free(ex), free(ex0), free(g), free(g0);
    }
}
END_TEST

/* ---- statistics ---- */

START_TEST(test_expert_bias_update_hand)
{
    /* loads 10, 2, 6, 6 (mean 6): the hot expert's bias falls by gamma, the cold one's rises, the
     * two at the mean keep theirs (sign 0), from any start */
    float b[4] = {0.5f, -0.25f, 0.0f, 1.0f};
    const int64_t loads[4] = {10, 2, 6, 6};
    moe_expert_bias_update(b, loads, 4, 0.125);
    EXPECT(b[0] == 0.375f && b[1] == -0.125f && b[2] == 0.0f && b[3] == 1.0f);
    /* a mean that is not an integer: 7 assignments over 2 experts, 4 > 3.5 > 3 */
    float c[2] = {0, 0};
    const int64_t l2[2] = {4, 3};
    moe_expert_bias_update(c, l2, 2, 1e-3);
    EXPECT(c[0] == (float)-1e-3 && c[1] == (float)1e-3);
    /* gamma 0 changes nothing; all loads equal change nothing */
    const int64_t even[4] = {5, 5, 5, 5};
    moe_expert_bias_update(b, even, 4, 0.5);
    moe_expert_bias_update(b, loads, 4, 0.0);
    EXPECT(b[0] == 0.375f && b[1] == -0.125f && b[2] == 0.0f && b[3] == 1.0f);
}
END_TEST

START_TEST(test_expert_bias_update_property)
{
    /* on seeded random loads: every bias moves by exactly gamma (rounded to float) against its
     * load's side of the mean, and repeated on fixed loads the biases of the experts above and
     * below the mean move by gamma a step, linearly (the rule has no memory but the bias) */
    g_state = 0xB1A5;
    for (int trial = 0; trial < 200; trial++) {
        int E = 1 + next_int(64);
        int64_t loads[64], total = 0;
        float b[64], b0[64];
        for (int e = 0; e < E; e++) {
            loads[e] = next_int(50);
            total += loads[e];
            b[e] = b0[e] = (float)(next_unit() - 0.5);
        }
        const double gamma = 1e-3;
        for (int rep = 1; rep <= 3; rep++) {
            moe_expert_bias_update(b, loads, E, gamma);
            for (int e = 0; e < E; e++) {
                double dir = loads[e] * E < total ? 1 : loads[e] * E > total ? -1 : 0;
                EXPECT_MSG(fabs((double)b[e] - ((double)b0[e] + rep * dir * gamma)) < 1e-6,
                           "trial %d rep %d expert %d: %g from %g", trial, rep, e, (double)b[e],
                           (double)b0[e]);
            }
        }
    }
}
END_TEST

START_TEST(test_accumulate_hand)
{
    /* 3 tokens, E = 3, k = 2. */
    const int32_t ex[] = {0, 1, 1, 2, 1, 0};
    const float p[] = {0.5f, 0.25f, 0.25f, 0.125f, 0.5f, 0.375f, 0.25f, 0.75f, 0.0f};
    int64_t routed[3] = {0, 0, 0};
    double psum[3] = {0, 0, 0};
    moe_router_accumulate(routed, psum, ex, p, 3, 3, 2);
    ck_assert_int_eq(routed[0], 2);
    ck_assert_int_eq(routed[1], 3);
    ck_assert_int_eq(routed[2], 1);
    ck_assert(psum[0] == 0.875 && psum[1] == 1.5 && psum[2] == 0.625); /* dyadic: exact */
    /* It accumulates: a second call over the first token only adds to the totals. */
    moe_router_accumulate(routed, psum, ex, p, 1, 3, 2);
    ck_assert_int_eq(routed[0], 3);
    ck_assert_int_eq(routed[1], 4);
    ck_assert_int_eq(routed[2], 1);
    ck_assert(psum[0] == 1.375 && psum[1] == 1.75 && psum[2] == 0.875);
    /* n = 0 changes nothing. */
    moe_router_accumulate(routed, psum, ex, p, 0, 3, 2);
    ck_assert_int_eq(routed[0], 3);
}
END_TEST

START_TEST(test_uniform_router_aux_is_one)
{
    /* "A perfectly uniform router gives 1": all logits equal, so p = 1/E exactly. Top-k of uniform p
     * sends every token to experts 0..k-1 (ties go to the lower id, checked), so the balanced
     * routing the formula assumes is assigned round-robin by hand. Then f_i = P_i = 1/E and
     * aux = E * E * (1/E)^2 = 1; every value is dyadic, so exactly 1. */
    enum { E = 4, N = 8 };
    for (int k = 1; k <= 2; k++) {
        float z[N * E], p[N * E], g[N * k];
        int32_t ex[N * k];
        for (int i = 0; i < N * E; i++)
            z[i] = 0.5f;
        moe_softmax_rows(p, z, N, E);
        for (int i = 0; i < N * E; i++)
            ck_assert(p[i] == 0.25f);
        moe_topk(ex, g, p, N, E, k, false);
        for (int t = 0; t < N; t++)
            for (int c = 0; c < k; c++) {
                ck_assert_int_eq(ex[t * k + c], c);
                ex[t * k + c] = (t * k + c) % E;
            }
        int64_t routed[E] = {0};
        double psum[E] = {0}, f[E], P[E];
        moe_router_accumulate(routed, psum, ex, p, N, E, k);
        double aux = moe_load_balance(f, P, routed, psum, E, N, k);
        ck_assert_msg(aux == 1.0, "k=%d: aux = %.17g", k, aux); /* dyadic values: exact */
        for (int e = 0; e < E; e++)
            ck_assert(f[e] == 0.25 && P[e] == 0.25);
    }
}
END_TEST

static Suite *router_suite(void)
{
    Suite *s = suite_create("router");
    TCase *tc = tcase_create("logits");
    tcase_add_test(tc, test_logits_hand);
    tcase_add_test(tc, test_logits_vs_ref);
    tcase_add_test(tc, test_logits_levels);
    tcase_add_test(tc, test_logits_split_invariant);
    suite_add_tcase(s, tc);
    tc = tcase_create("softmax");
    tcase_add_test(tc, test_softmax_hand_and_extremes);
    tcase_add_test(tc, test_softmax_rows_sum_to_one);
    tcase_add_test(tc, test_softmax_shift_invariance_exact);
    tcase_add_test(tc, test_softmax_vs_double_and_alias);
    suite_add_tcase(s, tc);
    tc = tcase_create("topk");
    tcase_add_test(tc, test_topk_hand);
    tcase_add_test(tc, test_topk_ties_lower_id);
    tcase_add_test(tc, test_topk_property);
    tcase_add_test(tc, test_topk_renormalize_is_softmax_of_chosen);
    suite_add_tcase(s, tc);
    tc = tcase_create("sigmoid_bias_scale");
    tcase_add_test(tc, test_sigmoid_hand_and_extremes);
    tcase_add_test(tc, test_router_scores_dispatch);
    tcase_add_test(tc, test_probs_row);
    tcase_add_test(tc, test_topk_select_hand);
    tcase_add_test(tc, test_topk_softmax_path_unchanged);
    tcase_add_test(tc, test_topk_select_property);
    suite_add_tcase(s, tc);
    tc = tcase_create("statistics");
    tcase_add_test(tc, test_accumulate_hand);
    tcase_add_test(tc, test_expert_bias_update_hand);
    tcase_add_test(tc, test_expert_bias_update_property);
    tcase_add_test(tc, test_uniform_router_aux_is_one);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(router_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
