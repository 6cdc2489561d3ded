/* Unit tests of workload: the skew and hot-expert router bias, the hot-token count, and the
 * clustered token generator. */
#include "moesim/router.h"
#include "moesim/rng.h"
#include "moesim/tokens.h"
#include "moesim/workload.h"

#include <check.h>
#include <float.h>
#include <stdbool.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"

/* Test-local SplitMix64 stream for random inputs (independent of src/rng.c). */
#include "testrng.h"

/* ---- bias ---- */

/* ------------------------------------------------------------------ --workload (issue 12) */

static moe_wl wl(moe_wl_kind kind, int E, int k, int n_hot, int period)
{
    return (moe_wl){.kind = kind, .E = E, .k = k, .n_hot = n_hot, .hot_share = 0.5,
                    .period = period, .zero_first = E, .tokens = 1000, .seed = 3};
}

START_TEST(test_wl_hot_sets_hand)
{
    /* E = 8, N = 2 hot: hot-rank {0, 1}; spread-hot floor(j 8 / 2) = {0, 4}; rotating-hotspot
     * with P = 2 starts at 2 floor(t / 2) mod 8: {0,1} {0,1} {2,3} {2,3} {4,5} ... {0,1} at t = 8;
     * burst with P = 3 is hot at t = 2, 5 only, with the seeded set; balanced and
     * zero-expert-rank have none */
    uint8_t hot[8];
    moe_wl w = wl(MOE_WL_HOT_RANK, 8, 2, 2, 1);
    EXPECT(moe_wl_hot_set(hot, &w, 0) == 2 && hot[0] && hot[1]);
    w = wl(MOE_WL_SPREAD, 8, 2, 2, 1);
    EXPECT(moe_wl_hot_set(hot, &w, 5) == 2 && hot[0] && hot[4]);
    w = wl(MOE_WL_ROTATE, 8, 2, 2, 2);
    const int origin[9] = {0, 0, 2, 2, 4, 4, 6, 6, 0};
    for (int t = 0; t < 9; t++) {
        EXPECT(moe_wl_hot_set(hot, &w, t) == 2);
        EXPECT_MSG(hot[origin[t]] && hot[(origin[t] + 1) % 8], "step %d", t);
    }
    /* the wrap: E = 5, N = 2, P = 1: {0,1} {2,3} {4,0} */
    w = wl(MOE_WL_ROTATE, 5, 1, 2, 1);
    uint8_t h5[5];
    moe_wl_hot_set(h5, &w, 2);
    EXPECT(h5[4] && h5[0] && !h5[1] && !h5[2] && !h5[3]);
    w = wl(MOE_WL_BURST, 8, 2, 2, 3);
    uint8_t seeded[8];
    moe_wl hw = wl(MOE_WL_HOT, 8, 2, 2, 1);
    EXPECT(moe_wl_hot_set(seeded, &hw, 0) == 2);
    for (int t = 0; t < 7; t++) {
        int n = moe_wl_hot_set(hot, &w, t);
        EXPECT_MSG(n == (t % 3 == 2 ? 2 : 0), "burst step %d: %d hot", t, n);
        if (n > 0)
            EXPECT(memcmp(hot, seeded, 8) == 0);
    }
    /* hot-experts: the two smallest keys u64(3, stream 8, 2^62 + e) */
    int first = -1, second = -1;
    for (int e = 0; e < 8; e++) {
        uint64_t key = moe_rng_u64(3, MOE_STREAM_WORKLOAD, (UINT64_C(1) << 62) + e);
        if (first < 0 || key < moe_rng_u64(3, MOE_STREAM_WORKLOAD, (UINT64_C(1) << 62) + first)) {
            second = first;
            first = e;
        } else if (second < 0 ||
                   key < moe_rng_u64(3, MOE_STREAM_WORKLOAD, (UINT64_C(1) << 62) + second)) {
            second = e;
        }
    }
    EXPECT(seeded[first] && seeded[second]);
    w = wl(MOE_WL_BALANCED, 8, 2, 2, 1);
    EXPECT(moe_wl_hot_set(hot, &w, 3) == 0);
}
END_TEST

START_TEST(test_wl_route_hand)
{
    /* one token, E = 4, k = 2, hot set {0}, share 0.5: slot c of token g = 0 at step 0 uses
     * u0, u1, u2 = uniform(3, 8, 3c + 0, 1, 2). Recomputed here from the spec, by hand: */
    moe_wl w = wl(MOE_WL_HOT_RANK, 4, 2, 1, 1);
    uint8_t hot[4] = {1, 0, 0, 0};
    int32_t ex[2];
    float g[2], p[4];
    moe_wl_route(ex, g, p, &w, hot, 0, 0, 1);
    int chosen[2];
    double wt[2];
    uint8_t used[4] = {0, 0, 0, 0};
    for (int c = 0; c < 2; c++) {
        double u0 = moe_rng_uniform(3, MOE_STREAM_WORKLOAD, 3 * (uint64_t)c);
        double u1 = moe_rng_uniform(3, MOE_STREAM_WORKLOAD, 3 * (uint64_t)c + 1);
        wt[c] = moe_rng_uniform(3, MOE_STREAM_WORKLOAD, 3 * (uint64_t)c + 2);
        bool take_hot = !used[0] && u0 < 0.5;
        if (take_hot) {
            chosen[c] = 0;
        } else {
            int left[3], m = 0;
            for (int e = 1; e < 4; e++)
                if (!used[e])
                    left[m++] = e;
            chosen[c] = left[(int)(u1 * m)];
        }
        used[chosen[c]] = 1;
    }
    int best = wt[0] >= wt[1] ? 0 : 1;
    EXPECT(ex[0] == chosen[best] && ex[1] == chosen[1 - best]);
    EXPECT(fabs(g[0] - wt[best] / (wt[0] + wt[1])) < 1e-7 && fabs(g[0] + g[1] - 1.0) < 1e-6);
    EXPECT(p[ex[0]] == g[0] && p[ex[1]] == g[1]);
    EXPECT(p[0] + p[1] + p[2] + p[3] == g[0] + g[1]);
}
END_TEST

START_TEST(test_wl_route_properties)
{
    /* seeded kinds, E, k: k distinct experts per token, gates in (0, 1] best first summing to 1,
     * nothing in the zero set, the hot set's share of assignments within 5 standard errors of
     * hot_share (while k leaves a hot and a cold expert free), the same rows however the tokens
     * are cut (first, n) */
    g_state = 0x3C0D;
    for (int trial = 0; trial < 60; trial++) {
        moe_wl_kind kind = (moe_wl_kind)(1 + next_int(MOE_WL_COUNT - 1));
        int E = 4 + next_int(60), k = 1 + next_int(E / 4 < 8 ? E / 4 : 8);
        int n_hot = 1 + next_int(E / 4);
        moe_wl w = wl(kind, E, k, n_hot, 1 + next_int(4));
        w.seed = next_u64();
        w.hot_share = 0.2 + 0.6 * next_unit();
        if (kind == MOE_WL_ZERO)
            w.zero_first = E - 1 - next_int(E / 2);
        int step = next_int(9);
        enum { N = 3000 };
        w.tokens = N;
        uint8_t *hot = calloc((size_t)E, 1);
        int32_t *ex = malloc(N * (size_t)k * sizeof *ex), *ex2 = malloc(N * (size_t)k * sizeof *ex2);
        float *g = malloc(N * (size_t)k * sizeof *g), *g2 = malloc(N * (size_t)k * sizeof *g2);
        int n = moe_wl_hot_set(hot, &w, step);
        moe_wl_route(ex, g, NULL, &w, hot, step, 0, N);
        moe_wl_route(ex2, g2, NULL, &w, hot, step, 0, 1234);
        moe_wl_route(ex2 + 1234 * k, g2 + 1234 * k, NULL, &w, hot, step, 1234, N - 1234);
        EXPECT_MSG(memcmp(ex, ex2, N * (size_t)k * sizeof *ex) == 0 &&
                       memcmp(g, g2, N * (size_t)k * sizeof *g) == 0,
                   "trial %d: rows depend on the cut", trial);
        int64_t hot_assign = 0;
        for (int t = 0; t < N; t++) {
            double sum = 0;
            for (int c = 0; c < k; c++) {
                int e = ex[t * k + c];
                EXPECT_MSG(e >= 0 && e < (kind == MOE_WL_ZERO ? w.zero_first : E),
                           "trial %d (%s): expert %d", trial, moe_wl_name(kind), e);
                for (int c2 = 0; c2 < c; c2++)
                    EXPECT_MSG(ex[t * k + c2] != e, "trial %d: expert %d twice", trial, e);
                EXPECT(g[t * k + c] > 0.0f && g[t * k + c] <= 1.0f);
                if (c > 0)
                    EXPECT(g[t * k + c] <= g[t * k + c - 1]);
                sum += g[t * k + c];
                hot_assign += hot[e];
            }
            EXPECT(fabs(sum - 1.0) < 1e-5);
        }
        if (n > 0 && k < n && k < E - n) {
            /* every slot finds both sets non-empty: hot with probability hot_share */
            double m = (double)N * k, share = (double)hot_assign / m;
            double se = sqrt(w.hot_share * (1 - w.hot_share) / m);
            EXPECT_MSG(fabs(share - w.hot_share) < 5 * se + 1e-9,
                       "trial %d (%s): hot share %.4f, want %.4f", trial, moe_wl_name(kind), share,
                       w.hot_share);
        }
        if (n == 0)
            EXPECT(hot_assign == 0);
        free(hot), free(ex), free(ex2), free(g), free(g2);
    }
}
END_TEST

START_TEST(test_bias_zero)
{
    float bias[16];
    memset(bias, 0xff, sizeof bias);
    moe_workload_bias(bias, 16, 0.0, 0, 0.0);
    for (int e = 0; e < 16; e++)
        ck_assert(bias[e] == 0.0f);
}
END_TEST

START_TEST(test_bias_values)
{
    /* b_e = -s ln(e + 1) (+ hot_bias for e < hot_n), computed in double and rounded once to
     * float: within one float ulp of the double value (FLT_EPSILON relative; the value here is
     * never subnormal). Expert 0 has no skew bias at all: ln 1 = 0. */
    const double skews[] = {0.0, 0.5, 1.2, 3.0};
    const int hots[] = {0, 1, 3};
    const double hot_biases[] = {0.0, 2.5, -1.0};
    enum { E = 12 };
    for (size_t a = 0; a < sizeof skews / sizeof *skews; a++)
        for (size_t b = 0; b < sizeof hots / sizeof *hots; b++)
            for (size_t c = 0; c < sizeof hot_biases / sizeof *hot_biases; c++) {
                float bias[E];
                moe_workload_bias(bias, E, skews[a], hots[b], hot_biases[c]);
                for (int e = 0; e < E; e++) {
                    double want = -skews[a] * log(e + 1.0) + (e < hots[b] ? hot_biases[c] : 0.0);
                    EXPECT_MSG(fabs((double)bias[e] - want) <= FLT_EPSILON * fabs(want),
                               "skew %g hot %d bias %g: b[%d] = %.9g, want %.9g", skews[a], hots[b],
                               hot_biases[c], e, bias[e], want);
                }
                if (hots[b] == 0)
                    EXPECT(bias[0] == 0.0f);
            }
    /* Two hand values: skew 1 at e = 1 is -ln 2; skew 2 at e = 3 is -2 ln 4 = -4 ln 2. */
    float bias[4];
    moe_workload_bias(bias, 4, 1.0, 0, 0.0);
    ck_assert_float_eq_tol(bias[1], -0.69314718f, 1e-7f); /* one float ulp at 0.69 is 6e-8 */
    moe_workload_bias(bias, 4, 2.0, 2, 1.0);
    ck_assert_float_eq_tol(bias[0], 1.0f, 1e-7f);                 /* hot, no skew */
    ck_assert_float_eq_tol(bias[1], 1.0f - 1.38629436f, 1e-7f);   /* hot: 1 - 2 ln 2 */
    ck_assert_float_eq_tol(bias[3], -2.77258872f, 3e-7f);         /* ulp at 2.77 is 2.4e-7 */
    /* Skew makes the bias non-increasing in e. */
    moe_workload_bias(bias, 4, 0.7, 0, 0.0);
    for (int e = 1; e < 4; e++)
        ck_assert(bias[e] < bias[e - 1]);
}
END_TEST

/* --token-mean: h + mu m_j, m_j = normal(seed, 3, 2^61 + j), in double and rounded once; the
 * same shift for every row; mu 0 changes nothing */
START_TEST(test_add_mean)
{
    enum { N = 5, D = 7 };
    float h[N * D], orig[N * D];
    moe_tokens_generate(orig, 4, 100, N, D);
    memcpy(h, orig, sizeof h);
    moe_workload_add_mean(h, 4, N, D, 0.5);
    for (int r = 0; r < N; r++)
        for (int j = 0; j < D; j++) {
            double m = moe_rng_normal(4, MOE_STREAM_CENTRES, (UINT64_C(1) << 61) + (uint64_t)j);
            float want = (float)((double)orig[r * D + j] + 0.5 * m);
            ck_assert_msg(h[r * D + j] == want, "h[%d][%d] = %.9g, want %.9g", r, j,
                          (double)h[r * D + j], (double)want);
        }
    /* every row moved by the same vector (up to the rounding of each entry) */
    for (int j = 0; j < D; j++)
        ck_assert(fabs((h[j] - orig[j]) - (h[D + j] - orig[D + j])) < 1e-6);
    memcpy(h, orig, sizeof h);
    moe_workload_add_mean(h, 4, N, D, 0.0);
    ck_assert(memcmp(h, orig, sizeof h) == 0);
}
END_TEST

START_TEST(test_add_bias)
{
    /* z (3, 4) += bias (4) row by row; every value is a small dyadic, so the sums are exact. */
    float z[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    const float bias[4] = {0.5f, -1.0f, 0.0f, 0.25f};
    moe_workload_add_bias(z, bias, 3, 4);
    const float want[12] = {0.5f, 0.0f, 2.0f,  3.25f, 4.5f,  4.0f,
                            6.0f, 7.25f, 8.5f, 8.0f,  10.0f, 11.25f};
    for (int i = 0; i < 12; i++)
        ck_assert_msg(z[i] == want[i], "z[%d] = %g, want %g", i, z[i], want[i]);
    /* n = 0 touches nothing. */
    float untouched = 42.0f;
    moe_workload_add_bias(&untouched, bias, 0, 4);
    ck_assert(untouched == 42.0f);
}
END_TEST

START_TEST(test_softmax_follows_zipf)
{
    /* Logits otherwise all equal (any constant: softmax removes it): with the skew bias, softmax
     * gives p_e proportional to exp(-s ln(e + 1)) = (e + 1)^-s, i.e. p_e / p_0 = (e + 1)^-s; a hot
     * bias multiplies the hot experts' share by exp(hot_bias). Float logits: the bias is rounded
     * to float (absolute error <= 2^-24 |b| <= 2e-7 here), then expf and the normalization add a
     * few ulps; 2e-6 relative is about 10x that. */
    enum { N = 3, E = 8 };
    const double skews[] = {0.5, 1.0, 1.2, 2.0};
    const float base[N] = {0.0f, 0.7f, -3.0f};
    for (size_t a = 0; a < sizeof skews / sizeof *skews; a++)
        for (int hot = 0; hot <= 2; hot += 2) {
            const double hot_bias = hot ? 1.5 : 0.0;
            float bias[E], z[N * E], p[N * E];
            moe_workload_bias(bias, E, skews[a], hot, hot_bias);
            for (int t = 0; t < N; t++)
                for (int e = 0; e < E; e++)
                    z[t * E + e] = base[t];
            moe_workload_add_bias(z, bias, N, E);
            moe_softmax_rows(p, z, N, E);
            double norm = 0.0;
            for (int e = 0; e < E; e++)
                norm += pow(e + 1.0, -skews[a]) * (e < hot ? exp(hot_bias) : 1.0);
            for (int t = 0; t < N; t++)
                for (int e = 0; e < E; e++) {
                    double want = pow(e + 1.0, -skews[a]) * (e < hot ? exp(hot_bias) : 1.0) / norm;
                    EXPECT_MSG(fabs(p[t * E + e] - want) <= 2e-6 * want,
                               "skew %g hot %d row %d: p[%d] = %.9g, want %.9g", skews[a], hot, t,
                               e, p[t * E + e], want);
                }
        }
}
END_TEST

/* ---- hot tokens ---- */

START_TEST(test_hot_tokens_hand)
{
    /* expert (5, 2). hot_n = 2 (experts 0 and 1): tokens 0 (0), 1 (1), 3 (0), 4 (both, counted
     * once) are hot; token 2 is not. */
    const int32_t expert[10] = {0, 3, 2, 1, 3, 2, 4, 0, 1, 0};
    ck_assert_int_eq(moe_workload_hot_tokens(expert, 5, 2, 2), 4);
    ck_assert_int_eq(moe_workload_hot_tokens(expert, 5, 2, 0), 0); /* no hot expert */
    ck_assert_int_eq(moe_workload_hot_tokens(expert, 5, 2, 1), 3); /* expert 0: tokens 0, 3, 4 */
    ck_assert_int_eq(moe_workload_hot_tokens(expert, 5, 2, 5), 5); /* every expert hot */
    ck_assert_int_eq(moe_workload_hot_tokens(expert, 0, 2, 2), 0);
    /* k = 1 reads the same array as 10 tokens of one choice: 0,3,2,1,3,2,4,0,1,0 */
    ck_assert_int_eq(moe_workload_hot_tokens(expert, 10, 1, 2), 5);
}
END_TEST

START_TEST(test_hot_tokens_monotone_in_bias)
{
    /* The driver bisects the hot bias to reach a share of hot tokens, which needs the count to be
     * non-decreasing in the bias: raising the hot experts' logits can only move them up a token's
     * ranking. Random logits, E = 8, k = 2, hot_n = 2, bias from -20 to 20; at -20 no token keeps
     * a hot expert in its top 2 (6 cold experts remain ahead), at +20 every token does. */
    enum { N = 500, E = 8, K = 2, HOT = 2 };
    static float z0[N * E], z[N * E], gate[N * K];
    static int32_t expert[N * K];
    g_state = 2718;
    for (int i = 0; i < N * E; i++)
        z0[i] = (float)(4.0 * next_unit() - 2.0);
    int64_t prev = -1;
    for (double b = -20.0; b <= 20.0; b += 0.25) {
        float bias[E];
        moe_workload_bias(bias, E, 0.0, HOT, b);
        memcpy(z, z0, sizeof z);
        moe_workload_add_bias(z, bias, N, E);
        moe_softmax_rows(z, z, N, E);
        moe_topk(expert, gate, z, N, E, K, false);
        int64_t hot = moe_workload_hot_tokens(expert, N, K, HOT);
        EXPECT_MSG(hot >= prev, "bias %g: %lld hot tokens, fewer than %lld at the previous bias", b,
                   (long long)hot, (long long)prev);
        if (b == -20.0)
            EXPECT_EQ(hot, 0);
        if (b == 0.0) /* about 1 - C(6,2)/C(8,2) = 46% of the tokens; binomial sd 2.2% */
            EXPECT_MSG(hot > N * 0.35 && hot < N * 0.57, "bias 0: %lld hot tokens", (long long)hot);
        prev = hot;
    }
    ck_assert_int_eq(prev, N);
}
END_TEST

/* ---- clusters ---- */

START_TEST(test_cluster_of_spec)
{
    /* u64(seed, MOE_STREAM_CENTRES, 2^62 + g) mod c, in [0, c), the same on every call. */
    const int64_t cs[] = {1, 2, 3, 7, 100, INT64_C(1) << 40};
    for (size_t a = 0; a < sizeof cs / sizeof *cs; a++)
        for (int64_t g = 0; g < 2000; g += 7) {
            int64_t c = cs[a], m = moe_workload_cluster_of(5, g, c);
            EXPECT_MSG(m >= 0 && m < c, "c %lld g %lld: cluster %lld", (long long)c, (long long)g,
                       (long long)m);
            EXPECT(m == moe_workload_cluster_of(5, g, c));
            uint64_t want = moe_rng_u64(5, MOE_STREAM_CENTRES, (UINT64_C(1) << 62) + (uint64_t)g) %
                            (uint64_t)c;
            EXPECT_EQ(m, (int64_t)want);
        }
    /* Large token ids (beyond 32 bits) too. */
    int64_t g = (INT64_C(1) << 40) + 12345;
    uint64_t u = moe_rng_u64(9, MOE_STREAM_CENTRES, (UINT64_C(1) << 62) + (uint64_t)g);
    ck_assert_int_eq(moe_workload_cluster_of(9, g, 13), (int64_t)(u % 13));
    /* The seed matters. */
    int differ = 0;
    for (int64_t t = 0; t < 64; t++)
        differ += moe_workload_cluster_of(1, t, 1000) != moe_workload_cluster_of(2, t, 1000);
    ck_assert_int_gt(differ, 50);
}
END_TEST

START_TEST(test_cluster_of_uniform)
{
    /* 70000 tokens over 7 clusters, under 20 seeds. Each count is Binomial(70000, 1/7): mean
     * 10000, sd 92.6; 5 sd. The chi-square of a seed's 7 counts has 6 degrees of freedom (mean 6,
     * sd 3.46); its mean over the 20 seeds is checked within 6 +- 5 * 3.46 / sqrt(20) = 6 +- 3.9,
     * which catches counts too uneven and counts too even (g mod c would give 0). A single seed is
     * not enough: seed 42 alone gives chi2 = 29.4, a 1-in-20000 event, and over 2000 seeds the
     * generator's chi2 averaged 6.09 with 18 above the 99% quantile (20 expected). */
    enum { N = 70000, C = 7, SEEDS = 20 };
    double chi2_sum = 0.0;
    for (uint64_t seed = 0; seed < SEEDS; seed++) {
        int64_t count[C] = {0};
        for (int64_t g = 0; g < N; g++)
            count[moe_workload_cluster_of(seed, g, C)]++;
        for (int m = 0; m < C; m++) {
            EXPECT_MSG(llabs(count[m] - 10000) <= 5 * 93, "seed %d cluster %d: %lld tokens",
                       (int)seed, m, (long long)count[m]);
            chi2_sum += (count[m] - 10000.0) * (count[m] - 10000.0) / 10000.0;
        }
    }
    ck_assert_double_eq_tol(chi2_sum / SEEDS, 6.0, 3.9);
}
END_TEST

START_TEST(test_clustered_formula)
{
    /* h[r][j] = (m_{c(g)}[j] + 0.5 n_g[j]) / sqrt(1.25), n_g the plain generator's row (float),
     * the centre entry normal(seed, MOE_STREAM_CENTRES, m d + j). Rebuilt here with the same
     * operations in double and one rounding to float: a difference of at most one float ulp
     * allows for a contracted multiply-add (FLT_EPSILON relative). */
    enum { FIRST = 17, COUNT = 9, D = 11, C = 5 };
    const uint64_t seed = 77;
    float h[COUNT * D], noise[COUNT * D];
    moe_workload_clustered_tokens(h, seed, FIRST, COUNT, D, C);
    moe_tokens_generate(noise, seed, FIRST, COUNT, D);
    for (int r = 0; r < COUNT; r++) {
        int64_t m = moe_workload_cluster_of(seed, FIRST + r, C);
        for (int j = 0; j < D; j++) {
            double centre = moe_rng_normal(seed, MOE_STREAM_CENTRES, (uint64_t)(m * D + j));
            double want = (centre + 0.5 * (double)noise[r * D + j]) / sqrt(1.25);
            EXPECT_MSG(fabs(h[r * D + j] - want) <= FLT_EPSILON * fabs(want) + FLT_MIN,
                       "h[%d][%d] = %.9g, want %.9g", r, j, h[r * D + j], want);
        }
    }
}
END_TEST

START_TEST(test_clustered_deterministic_and_sliced)
{
    /* The same call twice gives the same bits; the rows a rank generates for its slice are bitwise
     * the rows of the whole batch, for rank counts that do and do not divide N. */
    enum { N = 53, D = 6, C = 4 };
    float whole[N * D], again[N * D], part[N * D];
    moe_workload_clustered_tokens(whole, 11, 0, N, D, C);
    moe_workload_clustered_tokens(again, 11, 0, N, D, C);
    ck_assert(memcmp(whole, again, sizeof whole) == 0);
    const int ranks[] = {1, 2, 3, 5, 8, 52, 53, 60};
    for (size_t a = 0; a < sizeof ranks / sizeof *ranks; a++)
        for (int r = 0; r < ranks[a]; r++) {
            int64_t first, count;
            moe_partition(N, ranks[a], r, &first, &count);
            memset(part, 0xff, sizeof part);
            moe_workload_clustered_tokens(part, 11, first, count, D, C);
            EXPECT_MSG(memcmp(part, whole + first * D, (size_t)(count * D) * sizeof(float)) == 0,
                       "R=%d rank %d: slice differs from the whole batch", ranks[a], r);
        }
    /* Another seed gives other tokens. */
    moe_workload_clustered_tokens(again, 12, 0, N, D, C);
    ck_assert(memcmp(whole, again, sizeof whole) != 0);
}
END_TEST

static double dist2(const float *a, const float *b, int d)
{
    double s = 0.0;
    for (int j = 0; j < d; j++)
        s += ((double)a[j] - b[j]) * ((double)a[j] - b[j]);
    return s;
}

START_TEST(test_clustered_geometry)
{
    /* Per entry, h = (m + 0.5 n) / sqrt(1.25): variance 1 in all (a standard-normal token, like the
     * plain generator's), of which 0.2 is the noise. Two tokens of one cluster differ by the noise
     * alone, E||h_a - h_b||^2 = 0.4 d; of different clusters, by the centres too, 2 d on average.
     * Checked: the mean within-cluster squared distance is 0.4 d within 5% (the ~20000 pairs share
     * 400 independent tokens, whose squared noise norms have a relative sd of 18% each: the
     * standard error of the mean is under 1%), the mean between-cluster one is more than
     * twice it (5x expected), and every token is nearer its own centre than any other (own:
     * 0.2 d on average; other: 1.8 d or so; d = 64 makes a swap practically impossible). */
    enum { N = 400, D = 64, C = 4 };
    static float h[N * D], centre[C * D];
    const uint64_t seed = 2024;
    moe_workload_clustered_tokens(h, seed, 0, N, D, C);
    int64_t cl[N];
    for (int g = 0; g < N; g++)
        cl[g] = moe_workload_cluster_of(seed, g, C);
    for (int m = 0; m < C; m++)
        for (int j = 0; j < D; j++)
            centre[m * D + j] = (float)(moe_rng_normal(seed, MOE_STREAM_CENTRES,
                                                       (uint64_t)(m * D + j)) / sqrt(1.25));
    double within = 0.0, between = 0.0;
    int64_t n_within = 0, n_between = 0;
    for (int a = 0; a < N; a++)
        for (int b = a + 1; b < N; b++) {
            double d2 = dist2(&h[a * D], &h[b * D], D);
            if (cl[a] == cl[b]) {
                within += d2;
                n_within++;
            } else {
                between += d2;
                n_between++;
            }
        }
    within /= (double)n_within;
    between /= (double)n_between;
    ck_assert_int_gt(n_within, 1000);
    ck_assert_double_eq_tol(within, 0.4 * D, 0.05 * 0.4 * D);
    ck_assert_double_gt(between, 2.0 * within);
    for (int g = 0; g < N; g++) {
        int best = 0;
        double best_d2 = INFINITY;
        for (int m = 0; m < C; m++) {
            double d2 = dist2(&h[g * D], &centre[m * D], D);
            if (d2 < best_d2) {
                best_d2 = d2;
                best = m;
            }
        }
        EXPECT_MSG(best == cl[g], "token %d of cluster %lld is nearest centre %d", g,
                   (long long)cl[g], best);
    }
}
END_TEST

START_TEST(test_one_cluster)
{
    /* c = 1: every token is in cluster 0 and sits near its centre m_0 / sqrt(1.25): the squared
     * distance is 0.2 chi2_d, mean 0.2 d = 12.8 for d = 64, sd 2.3; every one of 300 tokens is
     * checked below 0.5 d (P(chi2_64 > 160) is about 1e-20), while a plain token (no cluster) is
     * about 1.8 d away, so this bound also fails if the centre were ignored. */
    enum { N = 300, D = 64 };
    static float h[N * D], plain[N * D];
    float centre[D];
    for (int j = 0; j < D; j++)
        centre[j] = (float)(moe_rng_normal(8, MOE_STREAM_CENTRES, (uint64_t)j) / sqrt(1.25));
    moe_workload_clustered_tokens(h, 8, 0, N, D, 1);
    moe_tokens_generate(plain, 8, 0, N, D);
    double mean = 0.0, mean_plain = 0.0;
    for (int g = 0; g < N; g++) {
        EXPECT_EQ(moe_workload_cluster_of(8, g, 1), 0);
        double d2 = dist2(&h[g * D], centre, D);
        EXPECT_MSG(d2 < 0.5 * D, "token %d: squared distance %g from the one centre", g, d2);
        mean += d2 / N;
        mean_plain += dist2(&plain[g * D], centre, D) / N;
    }
    /* mean of 300 draws of 0.2 chi2_64: 12.8, standard error 2.26 / sqrt(300) = 0.13; 5 se. */
    ck_assert_double_eq_tol(mean, 0.2 * D, 5 * 0.13);
    ck_assert_double_gt(mean_plain, 3.0 * mean);
}
END_TEST

static Suite *workload_suite(void)
{
    Suite *s = suite_create("workload");
    TCase *tc = tcase_create("bias");
    tcase_add_test(tc, test_bias_zero);
    tcase_add_test(tc, test_wl_hot_sets_hand);
    tcase_add_test(tc, test_wl_route_hand);
    tcase_add_test(tc, test_wl_route_properties);
    tcase_add_test(tc, test_bias_values);
    tcase_add_test(tc, test_add_bias);
    tcase_add_test(tc, test_add_mean);
    tcase_add_test(tc, test_softmax_follows_zipf);
    tcase_add_test(tc, test_hot_tokens_hand);
    tcase_add_test(tc, test_hot_tokens_monotone_in_bias);
    suite_add_tcase(s, tc);
    tc = tcase_create("clusters");
    tcase_add_test(tc, test_cluster_of_spec);
    tcase_add_test(tc, test_cluster_of_uniform);
    tcase_add_test(tc, test_clustered_formula);
    tcase_add_test(tc, test_clustered_deterministic_and_sliced);
    tcase_add_test(tc, test_clustered_geometry);
    tcase_add_test(tc, test_one_cluster);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(workload_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
