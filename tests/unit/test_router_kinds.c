/* Unit tests of the router kinds: group-limited top-k (DeepSeek-V2/V3), noisy top-k logits
 * (Shazeer et al. 2017), input jitter (Switch Transformers) and the reach histograms. */
#include "moesim/rng.h"
#include "moesim/router.h"

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"

#include "testrng.h"

static uint32_t float_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* ---- group-limited top-k ---- */

static void grouped1(int32_t *expert, float *gate, const float *p, const float *bias, int E, int k,
                     int G, int M)
{
    uint8_t mask[64];
    double gscore[64];
    moe_topk_grouped(expert, gate, p, bias, 1, E, k, G, M, false, 1.0, mask, gscore);
}

START_TEST(test_grouped_hand)
{
    /* E = 8 in G = 4 groups of 2: g0 {0,1} g1 {2,3} g2 {4,5} g3 {6,7}
     * p = [.10 .05 | .26 .00 | .25 .24 | .30 .29] */
    const float p[8] = {.10f, .05f, .26f, .00f, .25f, .24f, .30f, .29f};
    int32_t ex[8];
    float g[8];

    /* k = 2, M = 2: a group's score is its k/M = 1 best key: .10 .26 .25 .30, so g3 and g1 are
     * kept and the top 2 of {2, 3, 6, 7} are 6 (.30) and 7 (.29). (With k = M the plain top-k is
     * always inside the M groups of highest maximum: an expert outside them has the M maxima of
     * the kept groups above it. So this equals moe_topk_select, checked below on random rows.) */
    grouped1(ex, g, p, NULL, 8, 2, 4, 2);
    ck_assert_int_eq(ex[0], 6);
    ck_assert_int_eq(ex[1], 7);
    ck_assert(g[0] == .30f && g[1] == .29f);

    /* k = 4, M = 2: the score is the sum of the 2 best keys: g0 .15, g1 .26, g2 .49, g3 .59, so
     * g3 and g2 are kept: 6 .30, 7 .29, 4 .25, 5 .24; the plain top 4 would take 2 (.26) over 5 */
    grouped1(ex, g, p, NULL, 8, 4, 4, 2);
    const int32_t want4[4] = {6, 7, 4, 5};
    ck_assert_mem_eq(ex, want4, sizeof want4);
    ck_assert(g[0] == .30f && g[1] == .29f && g[2] == .25f && g[3] == .24f);
    float gp[4];
    moe_topk_select(ex, gp, p, NULL, 1, 8, 4, false, 1.0);
    ck_assert_int_eq(ex[2], 2);

    /* a bias of .25 on expert 3 (selection only): keys of g1 are .26 .25, score .51 > .49, so g3
     * and g1 are kept: 6 .30, 7 .29, 2 .26, 3 .25 by key; the gates are p: .30 .29 .26 .00 */
    const float bias[8] = {0, 0, 0, .25f, 0, 0, 0, 0};
    grouped1(ex, g, p, bias, 8, 4, 4, 2);
    const int32_t want_b[4] = {6, 7, 2, 3};
    ck_assert_mem_eq(ex, want_b, sizeof want_b);
    ck_assert(g[0] == .30f && g[1] == .29f && g[2] == .26f && g[3] == 0.0f);

    /* equal group scores go to the lower group: E = 4, G = 2, k = 2, M = 1, p = [.375 .125 .25
     * .25]: g0 .5, g1 .5 (exact), g0 is kept: experts 0, 1 (the plain top 2 is 0, 2) */
    const float q[4] = {.375f, .125f, .25f, .25f};
    grouped1(ex, g, q, NULL, 4, 2, 2, 1);
    ck_assert(ex[0] == 0 && ex[1] == 1);
    const float r[4] = {.25f, .25f, .375f, .125f};
    grouped1(ex, g, r, NULL, 4, 2, 2, 1);
    ck_assert(ex[0] == 0 && ex[1] == 1); /* g0 again; inside it equal keys to the lower id */
}
END_TEST

/* The grouped selection built independently: group scores by sorting, kept groups by sorting,
 * the other experts' scores set to -inf, then moe_topk_select. */
static int cmp_float_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : x < y ? 1 : 0;
}

static void grouped_by_hand(int32_t *expert, float *gate, const float *p, const float *bias, int E,
                            int k, int G, int M, bool normalize, double scale)
{
    int per = E / G, q = k / M;
    double score[64];
    int order[64];
    float v[64], masked[64];
    for (int g = 0; g < G; g++) {
        for (int j = 0; j < per; j++) {
            int e = g * per + j;
            v[j] = bias ? p[e] + bias[e] : p[e];
        }
        qsort(v, (size_t)per, sizeof *v, cmp_float_desc);
        score[g] = 0.0;
        for (int j = 0; j < q; j++)
            score[g] += v[j];
        order[g] = g;
    }
    /* stable selection sort: score descending, lower id first */
    for (int i = 0; i < G; i++)
        for (int j = i + 1; j < G; j++)
            if (score[order[j]] > score[order[i]] ||
                (score[order[j]] == score[order[i]] && order[j] < order[i])) {
                int t = order[i];
                order[i] = order[j], order[j] = t;
            }
    for (int e = 0; e < E; e++)
        masked[e] = -INFINITY;
    for (int m = 0; m < M; m++)
        for (int j = 0; j < per; j++)
            masked[order[m] * per + j] = p[order[m] * per + j];
    moe_topk_select(expert, gate, masked, bias, 1, E, k, normalize, scale);
}

START_TEST(test_grouped_property)
{
    static const int EG[][2] = {{1, 1}, {2, 1}, {2, 2}, {4, 2}, {6, 3}, {8, 4}, {8, 8},
                                {16, 4}, {64, 8}, {12, 6}};
    g_state = 88;
    uint8_t mask[64];
    double gscore[64];
    for (size_t s = 0; s < sizeof EG / sizeof *EG; s++)
        for (int trial = 0; trial < 150; trial++) {
            int E = EG[s][0], G = EG[s][1], per = E / G;
            int M = 1 + next_int(G);
            int k = M + next_int(M * per - M + 1); /* M <= k <= M E / G */
            bool ties = trial % 3 == 0, normalize = next_int(2), with_bias = next_int(2);
            double scale = next_int(2) ? 1.0 : 2.5;
            int64_t n = 1 + next_int(8);
            float p[8 * 64], bias[64], g1[8 * 64], g2[8 * 64];
            int32_t e1[8 * 64], e2[8 * 64];
            for (int64_t i = 0; i < n * E; i++)
                p[i] = ties ? (float)next_int(4) / 8.0f : (float)next_unit();
            for (int e = 0; e < E; e++)
                bias[e] = ties ? (float)next_int(2) / 8.0f : (float)(0.1 * next_unit());
            const float *b = with_bias ? bias : NULL;
            moe_topk_grouped(e1, g1, p, b, n, E, k, G, M, normalize, scale, mask, gscore);
            for (int64_t t = 0; t < n; t++) {
                /* from at most M groups, k distinct experts */
                int groups_used = 0;
                uint64_t used = 0;
                for (int c = 0; c < k; c++) {
                    int grp = e1[t * k + c] / per;
                    if (!(used >> grp & 1))
                        groups_used++;
                    used |= UINT64_C(1) << grp;
                    for (int c2 = 0; c2 < c; c2++)
                        EXPECT(e1[t * k + c] != e1[t * k + c2]);
                }
                EXPECT_MSG(groups_used <= M, "E %d G %d M %d k %d: %d groups", E, G, M, k,
                           groups_used);
                /* the independent construction, bit for bit */
                grouped_by_hand(e2 + t * k, g2 + t * k, p + t * E, b, E, k, G, M, normalize,
                                scale);
                for (int c = 0; c < k; c++) {
                    EXPECT_EQ(e1[t * k + c], e2[t * k + c]);
                    EXPECT_UEQ(float_bits(g1[t * k + c]), float_bits(g2[t * k + c]));
                }
            }
            /* M == G, and k == M: moe_topk_select, bit for bit */
            int Ms[2] = {G, k <= G ? k : 0};
            for (int mi = 0; mi < 2; mi++) {
                int MM = Ms[mi];
                if (MM == 0 || k > MM * per)
                    continue;
                moe_topk_grouped(e1, g1, p, b, n, E, k, G, MM, normalize, scale, mask, gscore);
                moe_topk_select(e2, g2, p, b, n, E, k, normalize, scale);
                EXPECT_MEM_EQ(e1, e2, (size_t)(n * k) * sizeof *e1);
                EXPECT_MEM_EQ(g1, g2, (size_t)(n * k) * sizeof *g1);
            }
        }
}
END_TEST

/* ---- noisy top-k ---- */

START_TEST(test_noise_hand)
{
    /* z = [1, -2, .5], zn = [0, 1000, -1000], token 3 (first 3, n 1), E 3, seed 5:
     * eps_e = normal(5, MOE_STREAM_GATE_NOISE, 3 * 3 + e) as float32; softplus(0) = ln 2,
     * softplus(1000) = 1000 (no overflow), softplus(-1000) = 0 (z unchanged) */
    float z[3] = {1.0f, -2.0f, 0.5f};
    const float zn[3] = {0.0f, 1000.0f, -1000.0f};
    moe_router_add_noise(z, zn, 3, 1, 3, 5);
    double eps0 = (float)moe_rng_normal(5, MOE_STREAM_GATE_NOISE, 9);
    double eps1 = (float)moe_rng_normal(5, MOE_STREAM_GATE_NOISE, 10);
    ck_assert(z[0] == (float)(1.0 + eps0 * log(2.0)));
    ck_assert(isfinite(z[1]) && z[1] == (float)(-2.0 + eps1 * 1000.0));
    ck_assert(z[2] == 0.5f);
    /* the formula element by element, bit for bit (eps the float32 normal of docs/generator.md;
     * a double eps differs in the last bit of some results) */
    enum { N = 4000, EE = 8 };
    static float zz[N], zzn[N], z0[N];
    g_state = 8;
    for (int i = 0; i < N; i++) {
        z0[i] = zz[i] = (float)(next_unit() * 8 - 4);
        zzn[i] = (float)(next_unit() * 60 - 30);
    }
    moe_router_add_noise(zz, zzn, 100, N / EE, EE, 5);
    for (int i = 0; i < N; i++) {
        double eps = (float)moe_rng_normal(5, MOE_STREAM_GATE_NOISE, (uint64_t)(100 * EE + i));
        double x = zzn[i], sp = x > 0 ? x + log1p(exp(-x)) : log1p(exp(x));
        EXPECT_UEQ(float_bits(zz[i]), float_bits((float)((double)z0[i] + eps * sp)));
    }
}
END_TEST

START_TEST(test_noise_slice_and_seed)
{
    const int64_t n = 50;
    const int E = 7;
    float z[350], zn[350], full[350], part[350], other[350];
    g_state = 3;
    for (int i = 0; i < n * E; i++) {
        z[i] = (float)(next_unit() * 4 - 2);
        zn[i] = (float)(next_unit() * 10 - 5);
    }
    memcpy(full, z, sizeof z);
    moe_router_add_noise(full, zn, 0, n, E, 11);
    /* deterministic */
    memcpy(part, z, sizeof z);
    moe_router_add_noise(part, zn, 0, n, E, 11);
    ck_assert_mem_eq(part, full, sizeof full);
    /* rows 13..29 computed alone with first = 13 are the same rows of the full batch */
    memcpy(part, z + 13 * E, 17 * E * sizeof *z);
    moe_router_add_noise(part, zn + 13 * E, 13, 17, E, 11);
    ck_assert_mem_eq(part, full + 13 * E, 17 * E * sizeof *z);
    /* another seed changes (nearly) every element */
    memcpy(other, z, sizeof z);
    moe_router_add_noise(other, zn, 0, n, E, 12);
    int differ = 0;
    for (int i = 0; i < n * E; i++)
        differ += other[i] != full[i];
    ck_assert_int_gt(differ, n * E * 9 / 10);
}
END_TEST

START_TEST(test_noise_is_standard_normal)
{
    /* with zn = 0 the added noise is eps ln 2, eps ~ N(0, 1): over 20000 draws the mean is within
     * 5 sigma/sqrt(n) = 0.035 of 0 and the variance within 0.06 of 1 (its sd is sqrt(2/n) = .01) */
    enum { N = 20000 };
    static float z[N], zn[N];
    moe_router_add_noise(z, zn, 0, N / 4, 4, 2026);
    double sum = 0, sq = 0;
    for (int i = 0; i < N; i++) {
        double e = z[i] / log(2.0);
        sum += e, sq += e * e;
    }
    double mean = sum / N, var = sq / N - mean * mean;
    ck_assert_double_lt(fabs(mean), 0.035);
    ck_assert_double_lt(fabs(var - 1.0), 0.06);
}
END_TEST

/* ---- input jitter ---- */

START_TEST(test_jitter)
{
    const int64_t n = 40, d = 250;
    float *h = malloc((size_t)(n * d) * sizeof *h), *hj = malloc((size_t)(n * d) * sizeof *hj);
    float *part = malloc((size_t)(n * d) * sizeof *h);
    g_state = 17;
    for (int64_t i = 0; i < n * d; i++)
        h[i] = (float)(next_unit() * 6 - 3);
    /* eps 0 leaves h unchanged bit for bit, in place too */
    moe_router_jitter(hj, h, 0, n, d, 0.0, 7);
    ck_assert_mem_eq(hj, h, (size_t)(n * d) * sizeof *h);
    memcpy(part, h, (size_t)(n * d) * sizeof *h);
    moe_router_jitter(part, part, 5, n, d, 0.0, 7);
    ck_assert_mem_eq(part, h, (size_t)(n * d) * sizeof *h);
    /* eps .1: every factor within [.9, 1.1] up to one float rounding of the product (relative
     * 2^-24), and the factors fill the range (10000 uniforms: min < .91 and max > 1.09) */
    const double eps = 0.1;
    moe_router_jitter(hj, h, 0, n, d, eps, 7);
    double lo = 2, hi = 0;
    for (int64_t i = 0; i < n * d; i++) {
        if (h[i] == 0.0f)
            continue;
        double r = (double)hj[i] / h[i];
        EXPECT_MSG(r >= (1 - eps) * (1 - 0x1p-23) && r <= (1 + eps) * (1 + 0x1p-23),
                   "factor %.9g at %lld", r, (long long)i);
        lo = r < lo ? r : lo, hi = r > hi ? r : hi;
    }
    ck_assert_double_lt(lo, 0.91);
    ck_assert_double_gt(hi, 1.09);
    /* one element by hand: token 2 + 1, column 2, d 250: counter 3 * 250 + 2 */
    double u = moe_rng_uniform(7, MOE_STREAM_JITTER, 752);
    moe_router_jitter(part, h + 2 * d, 2, n - 2, d, eps, 7);
    ck_assert(part[1 * d + 2] == (float)((double)h[3 * d + 2] * (1 - eps + 2 * eps * u)));
    /* slice: rows 2.. computed with first = 2 are rows 2.. of the full batch */
    ck_assert_mem_eq(part, hj + 2 * d, (size_t)((n - 2) * d) * sizeof *h);
    /* in place equals out of place */
    memcpy(part, h, (size_t)(n * d) * sizeof *h);
    moe_router_jitter(part, part, 0, n, d, eps, 7);
    ck_assert_mem_eq(part, hj, (size_t)(n * d) * sizeof *h);
    free(h), free(hj), free(part);
}
END_TEST

/* ---- reach ---- */

START_TEST(test_reach_hand)
{
    /* E = 6 on R = 3 ranks (2 each), ranks 0, 1 on node 0 and rank 2 on node 1; k = 2:
     *   t0 (0,1) flags 1 1: ranks {0}       nodes {0}
     *   t1 (0,2)       1 1: ranks {0,1}     nodes {0}
     *   t2 (1,4)       1 1: ranks {0,2}     nodes {0,1}
     *   t3 (3,5)       0 0: nothing         (with every slot: ranks {1,2}, nodes {0,1})
     *   t4 (2,5)       1 0: ranks {1}       nodes {0}   (every slot: {1,2}, {0,1})
     *   t5 (-1,4)      1 1: the -1 skipped, ranks {2}, nodes {1}
     * max_reach 2 with flags: ranks [1 3 2], nodes [1 4 1]; every slot: ranks [0 2 4], nodes
     * [0 3 3]; max_reach 1 with flags: ranks [1 5], nodes [1 5] (two reaches counted in the last) */
    const int32_t expert[12] = {0, 1, 0, 2, 1, 4, 3, 5, 2, 5, -1, 4};
    const uint8_t flag[12] = {1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1};
    const int rank_of_expert[6] = {0, 0, 1, 1, 2, 2}, node_of_rank[3] = {0, 0, 1};
    int seen_r[3] = {-1, -1, -1}, seen_n[3] = {-1, -1, -1};
    const int minus[3] = {-1, -1, -1};
    int64_t hr[3] = {0}, hn[3] = {0};
    moe_router_reach(hr, hn, expert, flag, 6, 2, rank_of_expert, node_of_rank, 2, seen_r, seen_n);
    const int64_t want_r[3] = {1, 3, 2}, want_n[3] = {1, 4, 1};
    ck_assert_mem_eq(hr, want_r, sizeof hr);
    ck_assert_mem_eq(hn, want_n, sizeof hn);
    ck_assert_mem_eq(seen_r, minus, sizeof seen_r);
    ck_assert_mem_eq(seen_n, minus, sizeof seen_n);
    /* it accumulates */
    moe_router_reach(hr, hn, expert, flag, 6, 2, rank_of_expert, node_of_rank, 2, seen_r, seen_n);
    ck_assert(hr[0] == 2 && hr[1] == 6 && hr[2] == 4 && hn[1] == 8);
    int64_t ar[3] = {0}, an[3] = {0};
    moe_router_reach(ar, an, expert, NULL, 6, 2, rank_of_expert, node_of_rank, 2, seen_r, seen_n);
    const int64_t all_r[3] = {0, 2, 4}, all_n[3] = {0, 3, 3};
    ck_assert_mem_eq(ar, all_r, sizeof ar);
    ck_assert_mem_eq(an, all_n, sizeof an);
    int64_t cr[2] = {0}, cn[2] = {0};
    moe_router_reach(cr, cn, expert, flag, 6, 2, rank_of_expert, node_of_rank, 1, seen_r, seen_n);
    ck_assert(cr[0] == 1 && cr[1] == 5 && cn[0] == 1 && cn[1] == 5);
    ck_assert_mem_eq(seen_r, minus, sizeof seen_r);
    ck_assert_mem_eq(seen_n, minus, sizeof seen_n);
}
END_TEST

static Suite *router_kinds_suite(void)
{
    Suite *s = suite_create("router_kinds");
    TCase *tc = tcase_create("grouped");
    tcase_add_test(tc, test_grouped_hand);
    tcase_add_test(tc, test_grouped_property);
    suite_add_tcase(s, tc);
    tc = tcase_create("noise_jitter");
    tcase_add_test(tc, test_noise_hand);
    tcase_add_test(tc, test_noise_slice_and_seed);
    tcase_add_test(tc, test_noise_is_standard_normal);
    tcase_add_test(tc, test_jitter);
    suite_add_tcase(s, tc);
    tc = tcase_create("reach");
    tcase_add_test(tc, test_reach_hand);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(router_kinds_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
