/* Unit tests of loss, the balance figures of a routing: hand-worked cases for every function
 * (logsumexp rows, Gini and its O(n^2) twin, CV^2, max over mean, the count figures), moe_gini
 * against moe_gini_ref on seeded random vectors, and the properties the figures promise (ranges,
 * equality cases, invariance to scaling, zeros and no NaN when nothing is routed).
 *
 * Tolerances, relative unless said:
 *   hand cases 1e-15 (about 4.5 ulps): each figure is a few libm calls (exp, log, sqrt, within
 *     1 ulp) and a handful of roundings of short sums; many are exact and are compared with ==
 *     where every intermediate is an integer or a short dyadic fraction, so rounding cannot enter.
 *   moe_gini vs moe_gini_ref 1e-12: both are double sums of at most a few million terms. On
 *     integers below 2^20 (counts) every partial sum is an exact integer below 2^53, so only the
 *     final divisions round (a few ulps); on reals in [0, 1) each sum of m terms carries a relative
 *     error below m * 2^-53 in the worst case (n <= 500: 3e-11 for the n^2 sum of the twin, the
 *     errors of random terms cancel to about sqrt(m) * 2^-53 = 6e-14), so 1e-12 separates rounding
 *     from a wrong weight, a missing term or an off-by-one in the rank (Gini moves by 1/n or more).
 *   scaling 1e-14: a figure of c x is the same rational as the figure of x (a ratio of sums),
 *     computed with a few roundings that need not coincide.
 *   entropy against ln E: when the counts (at most 1000 each, E <= 32) are not all equal, Pinsker
 *     puts ln E - H = KL(s, uniform) >= 2 / (E T)^2 >= 1.9e-12 (T the total), so "strictly below ln E - 1e-13" is
 *     decided far from rounding (a few ulps of ln E, 1e-15). */
#include "moesim/loss.h"

#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"
#include "testrng.h"

#define HAND_RTOL 1e-15
#define TWIN_RTOL 1e-12
#define SCALE_RTOL 1e-14

/* |got - want| <= rtol |want| (and both finite); when want is 0, got must be 0 exactly. */
static void expect_rel(const char *what, double got, double want, double rtol)
{
    EXPECT_MSG(isfinite(got) && fabs(got - want) <= rtol * fabs(want) && (want != 0.0 || got == 0.0),
               "%s: got %.17g, expected %.17g (rtol %g)", what, got, want, rtol);
}

static void expect_exact(const char *what, double got, double want)
{
    EXPECT_MSG(got == want, "%s: got %.17g, expected exactly %.17g", what, got, want);
}

static moe_balance counts_figures(const int64_t *routed, int E)
{
    moe_balance b;
    memset(&b, 0xA5, sizeof b); /* garbage: every count figure must be written */
    moe_balance_from_counts(&b, routed, E);
    return b;
}

/* ---------------------------------------------------------------------------------------------
 * moe_logsumexp_rows */

START_TEST(test_lse_hand_rows)
{
    /* (6, 2): the large and the very negative rows overflow or underflow a naive exp */
    const float z[] = {1000.0f, 1000.0f, /* 1000 + ln 2 */
                       -1000.0f, -1000.0f, /* -1000 + ln 2 */
                       0.0f, 0.0f, /* ln 2 */
                       1000.0f, 0.0f, /* 1000 + ln(1 + e^-1000) = 1000 in double */
                       -FLT_MAX, 0.0f, /* 0 */
                       88.0f, 89.0f}; /* 89 + ln(1 + e^-1) */
    double lse[6 + 1];
    lse[6] = 12345.0; /* sentinel: n rows, not one more */
    moe_logsumexp_rows(lse, z, 6, 2);
    expect_rel("lse(1000, 1000)", lse[0], 1000.0 + M_LN2, HAND_RTOL);
    expect_rel("lse(-1000, -1000)", lse[1], -1000.0 + M_LN2, HAND_RTOL);
    expect_rel("lse(0, 0)", lse[2], M_LN2, HAND_RTOL);
    expect_exact("lse(1000, 0)", lse[3], 1000.0);
    expect_exact("lse(-FLT_MAX, 0)", lse[4], 0.0);
    expect_rel("lse(88, 89)", lse[5], 89.0 + log1p(exp(-1.0)), HAND_RTOL);
    expect_exact("row n left untouched", lse[6], 12345.0);
}
END_TEST

START_TEST(test_lse_hand_wide_rows)
{
    /* (3, 4): ln(e + e^2 + e^3 + e^4) = 4 + ln(1 + e^-1 + e^-2 + e^-3); four zeros, ln 4; and a
     * row of -1e4 with one -1e4 + 3: the max is not the first entry */
    const float z[] = {1.0f, 2.0f, 3.0f, 4.0f,
                       0.0f, 0.0f, 0.0f, 0.0f,
                       -1e4f, -1e4f + 3.0f, -1e4f, -1e4f};
    double lse[3];
    moe_logsumexp_rows(lse, z, 3, 4);
    expect_rel("lse(1, 2, 3, 4)", lse[0], 4.0 + log(1.0 + exp(-1.0) + exp(-2.0) + exp(-3.0)),
               HAND_RTOL);
    expect_rel("lse(0, 0, 0, 0)", lse[1], log(4.0), HAND_RTOL);
    expect_rel("lse(-1e4 .. -1e4 + 3 ..)", lse[2], -1e4 + 3.0 + log1p(3.0 * exp(-3.0)), HAND_RTOL);
    /* one expert: lse is the logit itself, exactly */
    const float one[] = {-7.25f, 1e30f, -1e30f};
    moe_logsumexp_rows(lse, one, 3, 1);
    expect_exact("lse of one logit -7.25", lse[0], -7.25);
    expect_exact("lse of one logit 1e30f", lse[1], (double)1e30f);
    expect_exact("lse of one logit -1e30f", lse[2], (double)-1e30f);
}
END_TEST

START_TEST(test_lse_properties)
{
    /* random rows: max <= lse <= max + ln E; lse(z + c) = lse(z) + c for an integer c (z integers
     * below 2^10, so z + c is exact in float); and, for moderate logits, the naive
     * log(sum exp) in double agrees to 1e-14 (a sum of E <= 64 terms, each within an ulp) */
    g_state = 20240617;
    enum { N = 200, EMAX = 64 };
    float *z = malloc(sizeof(float) * N * EMAX), *zs = malloc(sizeof(float) * N * EMAX);
    double *lse = malloc(sizeof(double) * N), *lss = malloc(sizeof(double) * N);
    ck_assert(z && zs && lse && lss);
    for (int round = 0; round < 20; round++) {
        int E = 1 + next_int(EMAX);
        float c = (float)(next_int(2001) - 1000);
        for (int i = 0; i < N * E; i++) {
            z[i] = (float)(next_int(41) - 20); /* integers in [-20, 20] */
            zs[i] = z[i] + c;
        }
        moe_logsumexp_rows(lse, z, N, E);
        moe_logsumexp_rows(lss, zs, N, E);
        for (int t = 0; t < N; t++) {
            double mx = z[t * E], naive = 0.0;
            for (int e = 0; e < E; e++) {
                mx = z[t * E + e] > mx ? z[t * E + e] : mx;
                naive += exp((double)z[t * E + e]);
            }
            naive = log(naive);
            EXPECT_MSG(lse[t] >= mx && lse[t] <= mx + log((double)E) * (1.0 + 1e-15),
                       "E=%d row %d: lse %.17g outside [max %.17g, max + ln E]", E, t, lse[t], mx);
            EXPECT_MSG(fabs(lse[t] - naive) <= 1e-14 * fabs(naive) + 1e-15,
                       "E=%d row %d: lse %.17g, naive %.17g", E, t, lse[t], naive);
            EXPECT_MSG(fabs(lss[t] - (lse[t] + c)) <= 1e-14 * (fabs(lse[t]) + fabs(c)),
                       "E=%d row %d: lse(z + %g) = %.17g, lse(z) + c = %.17g", E, t, c, lss[t],
                       lse[t] + c);
        }
    }
    free(z);
    free(zs);
    free(lse);
    free(lss);
}
END_TEST

START_TEST(test_lse_no_rows)
{
    double lse[1] = {42.0};
    const float z[1] = {1.0f};
    moe_logsumexp_rows(lse, z, 0, 1);
    expect_exact("n = 0 writes nothing", lse[0], 42.0);
}
END_TEST

/* ---------------------------------------------------------------------------------------------
 * moe_gini, moe_gini_ref */

START_TEST(test_gini_hand)
{
    /* {0,0,0,4}: sum_ij |x_i - x_j| = 2 * 3 * 4 = 24, over n^2 = 16 is 1.5, over 2 * mean = 2: 0.75
     * {1,2,3,4}: pair differences 1+2+3+1+2+1 = 10, ordered 20, / 16 = 1.25, / (2 * 2.5): 0.25
     * {1,1,1,1}: 0;  {5}: 0;  {0,0}: 0 (all zero);  {0, 1}: 2 / 4 / 1 = 0.5 = 1 - 1/2
     * {1, 3}: 4 / 4 / 4 = 0.25;  {2, 2, 8}: 2*(6+6) = 24, / 9, / 8 = 1/3 */
    static const struct {
        int n;
        double x[4], want;
        int exact; /* every intermediate an integer or short dyadic fraction */
    } cases[] = {
        {4, {0, 0, 0, 4}, 0.75, 1}, {4, {1, 2, 3, 4}, 0.25, 1}, {4, {4, 3, 2, 1}, 0.25, 1},
        {4, {1, 1, 1, 1}, 0.0, 1},  {1, {5}, 0.0, 1},            {2, {0, 0}, 0.0, 1},
        {2, {0, 1}, 0.5, 1},        {2, {1, 3}, 0.25, 1},        {3, {2, 2, 8}, 1.0 / 3.0, 0},
        {3, {8, 2, 2}, 1.0 / 3.0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[96];
        double x[4];
        memcpy(x, cases[i].x, sizeof x);
        double g = moe_gini(x, cases[i].n), r = moe_gini_ref(x, cases[i].n);
        EXPECT_MSG(memcmp(x, cases[i].x, sizeof x) == 0, "case %zu: moe_gini changed its input", i);
        snprintf(what, sizeof what, "case %zu: moe_gini", i);
        if (cases[i].exact)
            expect_exact(what, g, cases[i].want);
        else
            expect_rel(what, g, cases[i].want, HAND_RTOL);
        snprintf(what, sizeof what, "case %zu: moe_gini_ref", i);
        if (cases[i].exact)
            expect_exact(what, r, cases[i].want);
        else
            expect_rel(what, r, cases[i].want, HAND_RTOL);
    }
}
END_TEST

START_TEST(test_gini_one_hot_is_the_maximum)
{
    /* one nonzero of n: Gini = 1 - 1/n, the largest value (n - 1 pairs of difference c each way,
     * 2 (n - 1) c / n^2 over 2 c / n) */
    double x[64];
    for (int n = 1; n <= 64; n++) {
        for (int pos = 0; pos < n; pos += (n > 8 ? 7 : 1)) {
            for (int i = 0; i < n; i++)
                x[i] = i == pos ? 37.0 : 0.0;
            double want = 1.0 - 1.0 / n;
            char what[64];
            snprintf(what, sizeof what, "one-hot n=%d at %d: moe_gini", n, pos);
            expect_rel(what, moe_gini(x, n), want, HAND_RTOL);
            snprintf(what, sizeof what, "one-hot n=%d at %d: moe_gini_ref", n, pos);
            expect_rel(what, moe_gini_ref(x, n), want, HAND_RTOL);
        }
    }
}
END_TEST

START_TEST(test_gini_against_ref_integers)
{
    /* integers below 2^20, n up to 2000: both sums exact, only the last divisions round */
    g_state = 7001;
    double *x = malloc(2000 * sizeof *x), *copy = malloc(2000 * sizeof *x);
    ck_assert(x && copy);
    for (int round = 0; round < 60; round++) {
        int n = round < 50 ? 1 + next_int(100) : 1 + next_int(2000);
        int spread = 1 << next_int(21); /* values in [0, spread): sometimes all equal (spread 1) */
        int sparse = next_int(3) == 0;  /* mostly zeros, as counts of a skewed router */
        for (int i = 0; i < n; i++)
            x[i] = sparse && next_int(4) != 0 ? 0.0 : (double)next_int(spread);
        memcpy(copy, x, (size_t)n * sizeof *x);
        double g = moe_gini(x, n), r = moe_gini_ref(x, n);
        EXPECT_MSG(memcmp(x, copy, (size_t)n * sizeof *x) == 0, "n=%d: moe_gini changed its input", n);
        EXPECT_MSG(fabs(g - r) <= TWIN_RTOL * fabs(r) && (r != 0.0 || g == 0.0),
                   "round %d n=%d spread %d: gini %.17g, ref %.17g", round, n, spread, g, r);
        /* range [0, 1 - 1/n]; 0 iff all equal */
        int all_equal = 1;
        for (int i = 1; i < n; i++)
            all_equal &= x[i] == x[0];
        EXPECT_MSG(g >= 0.0 && g <= (1.0 - 1.0 / n) * (1.0 + 1e-15),
                   "n=%d: gini %.17g outside [0, 1 - 1/n]", n, g);
        EXPECT_MSG(all_equal ? g == 0.0 : g > 0.0, "n=%d all_equal=%d: gini %.17g", n, all_equal, g);
    }
    free(x);
    free(copy);
}
END_TEST

START_TEST(test_gini_against_ref_reals)
{
    g_state = 99;
    double x[500], perm[500];
    for (int round = 0; round < 40; round++) {
        int n = 1 + next_int(500);
        for (int i = 0; i < n; i++)
            x[i] = next_unit() * (round % 2 ? 1e6 : 1e-3);
        double g = moe_gini(x, n), r = moe_gini_ref(x, n);
        EXPECT_MSG(fabs(g - r) <= TWIN_RTOL * fabs(r) && (r != 0.0 || g == 0.0),
                   "round %d n=%d: gini %.17g, ref %.17g", round, n, g, r);
        EXPECT_MSG(g >= 0.0 && g <= 1.0 - 1.0 / n + 1e-15, "n=%d: gini %.17g out of range", n, g);
        /* a permutation changes nothing in the sorted form, bit for bit */
        memcpy(perm, x, (size_t)n * sizeof *x);
        for (int i = n - 1; i > 0; i--) {
            int j = next_int(i + 1);
            double t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        expect_exact("gini of a permutation", moe_gini(perm, n), g);
    }
}
END_TEST

/* ---------------------------------------------------------------------------------------------
 * moe_cv2, moe_max_over_mean */

START_TEST(test_cv2_hand)
{
    /* {1,2,3,4}: mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25, / 6.25 = 0.2
     * {0,0,0,4}: mean 1, variance (1 + 1 + 1 + 9) / 4 = 3: 3
     * {0, 3}: mean 1.5, variance 2.25: 1;  {2,2,2}: 0;  {7}: 0;  {0,0,0}: 0 (mean 0, no NaN)
     * {-1, 1}: mean 0: 0 by contract;  {1, 1, 1, 5}: mean 2, variance (1+1+1+9)/4 = 3: 0.75 */
    const double a[] = {1, 2, 3, 4}, b[] = {0, 0, 0, 4}, c[] = {0, 3}, d[] = {2, 2, 2}, e[] = {7},
                 f[] = {0, 0, 0}, g[] = {-1, 1}, h[] = {1, 1, 1, 5};
    expect_rel("cv2{1,2,3,4}", moe_cv2(a, 4), 0.2, HAND_RTOL);
    expect_exact("cv2{0,0,0,4}", moe_cv2(b, 4), 3.0);
    expect_exact("cv2{0,3}", moe_cv2(c, 2), 1.0);
    expect_exact("cv2{2,2,2}", moe_cv2(d, 3), 0.0);
    expect_exact("cv2{7}", moe_cv2(e, 1), 0.0);
    expect_exact("cv2{0,0,0}", moe_cv2(f, 3), 0.0);
    expect_exact("cv2{-1,1}", moe_cv2(g, 2), 0.0);
    expect_exact("cv2{1,1,1,5}", moe_cv2(h, 4), 0.75);
    /* a real-valued case: importance of gates {0.5, 0.25, 0.25}: mean 1/3, variance
     * ((1/6)^2 + 2 (1/12)^2) / 3 = 1/72, over 1/9: 0.125 */
    const double imp[] = {0.5, 0.25, 0.25};
    expect_rel("cv2{0.5,0.25,0.25}", moe_cv2(imp, 3), 0.125, HAND_RTOL);
}
END_TEST

START_TEST(test_max_over_mean_hand)
{
    /* {1,2,3,4}: 4 / 2.5 = 1.6;  {0,0,0,4}: 4 / 1 = 4;  {3,3}: 1;  {2,0,0,0,0}: 2 / 0.4 = 5;
     * {0,0,0,0}: 0 (mean 0, no NaN);  {9}: 1;  {4,1,1}: 4 / 2 = 2 (the max first) */
    const double a[] = {1, 2, 3, 4}, b[] = {0, 0, 0, 4}, c[] = {3, 3}, d[] = {2, 0, 0, 0, 0},
                 e[] = {0, 0, 0, 0}, f[] = {9}, g[] = {4, 1, 1};
    expect_rel("max/mean{1,2,3,4}", moe_max_over_mean(a, 4), 1.6, HAND_RTOL);
    expect_exact("max/mean{0,0,0,4}", moe_max_over_mean(b, 4), 4.0);
    expect_exact("max/mean{3,3}", moe_max_over_mean(c, 2), 1.0);
    expect_rel("max/mean{2,0,0,0,0}", moe_max_over_mean(d, 5), 5.0, HAND_RTOL);
    expect_exact("max/mean{0,0,0,0}", moe_max_over_mean(e, 4), 0.0);
    expect_exact("max/mean{9}", moe_max_over_mean(f, 1), 1.0);
    expect_exact("max/mean{4,1,1}", moe_max_over_mean(g, 3), 2.0);
}
END_TEST

/* ---------------------------------------------------------------------------------------------
 * moe_balance_from_counts */

START_TEST(test_counts_hand)
{
    const int64_t hot[] = {0, 0, 0, 4}, even[] = {1, 1, 1, 1}, ramp[] = {1, 2, 3, 4};
    moe_balance b = counts_figures(hot, 4);
    expect_exact("{0,0,0,4} entropy", b.entropy, 0.0);
    expect_exact("{0,0,0,4} gini", b.gini, 0.75);
    expect_exact("{0,0,0,4} max_over_mean", b.max_over_mean, 4.0);
    expect_exact("{0,0,0,4} min", b.tpe_min, 0.0);
    expect_exact("{0,0,0,4} max", b.tpe_max, 4.0);
    expect_exact("{0,0,0,4} mean", b.tpe_mean, 1.0);
    expect_rel("{0,0,0,4} std = sqrt(3)", b.tpe_std, sqrt(3.0), HAND_RTOL);

    b = counts_figures(even, 4);
    expect_rel("{1,1,1,1} entropy = ln 4", b.entropy, log(4.0), HAND_RTOL);
    expect_exact("{1,1,1,1} gini", b.gini, 0.0);
    expect_exact("{1,1,1,1} max_over_mean", b.max_over_mean, 1.0);
    expect_exact("{1,1,1,1} min", b.tpe_min, 1.0);
    expect_exact("{1,1,1,1} max", b.tpe_max, 1.0);
    expect_exact("{1,1,1,1} mean", b.tpe_mean, 1.0);
    expect_exact("{1,1,1,1} std", b.tpe_std, 0.0);

    /* {1,2,3,4}: shares c/10, H = ln 10 - (2 ln 2 + 3 ln 3 + 4 ln 4) / 10 = ln 5 - 0.3 ln 3
     * = 1.2798542258336676; Gini 0.25; max/mean 4 / 2.5 = 1.6; std sqrt(1.25) */
    b = counts_figures(ramp, 4);
    expect_rel("{1,2,3,4} entropy", b.entropy, 1.2798542258336676, HAND_RTOL);
    expect_rel("{1,2,3,4} entropy = ln 5 - 0.3 ln 3", b.entropy, log(5.0) - 0.3 * log(3.0),
               HAND_RTOL);
    expect_exact("{1,2,3,4} gini", b.gini, 0.25);
    expect_rel("{1,2,3,4} max_over_mean", b.max_over_mean, 1.6, HAND_RTOL);
    expect_exact("{1,2,3,4} min", b.tpe_min, 1.0);
    expect_exact("{1,2,3,4} max", b.tpe_max, 4.0);
    expect_exact("{1,2,3,4} mean", b.tpe_mean, 2.5);
    expect_rel("{1,2,3,4} std = sqrt(1.25)", b.tpe_std, sqrt(1.25), HAND_RTOL);

    /* the order of the experts does not matter: {4,3,2,1} and {4,0,0,0} */
    const int64_t ramp_down[] = {4, 3, 2, 1}, hot_first[] = {4, 0, 0, 0};
    moe_balance c = counts_figures(ramp_down, 4);
    expect_rel("{4,3,2,1} entropy", c.entropy, 1.2798542258336676, HAND_RTOL);
    expect_exact("{4,3,2,1} gini", c.gini, 0.25);
    c = counts_figures(hot_first, 4);
    expect_exact("{4,0,0,0} entropy", c.entropy, 0.0);
    expect_exact("{4,0,0,0} gini", c.gini, 0.75);
    expect_exact("{4,0,0,0} max_over_mean", c.max_over_mean, 4.0);
    expect_exact("{4,0,0,0} min", c.tpe_min, 0.0);

    /* {2, 6}: shares 1/4, 3/4, H = ln 4 - 0.75 ln 3; Gini 2 * 4 / 4 / 8 = 0.25; max/mean 1.5;
     * std 2 */
    const int64_t two[] = {2, 6};
    c = counts_figures(two, 2);
    expect_rel("{2,6} entropy", c.entropy, log(4.0) - 0.75 * log(3.0), HAND_RTOL);
    expect_exact("{2,6} gini", c.gini, 0.25);
    expect_exact("{2,6} max_over_mean", c.max_over_mean, 1.5);
    expect_exact("{2,6} std", c.tpe_std, 2.0);
}
END_TEST

START_TEST(test_counts_nothing_routed)
{
    /* all-zero counts: every figure 0, none NaN, for E = 1, 4, 12 */
    int64_t zero[12] = {0};
    const int Es[] = {1, 4, 12};
    for (size_t i = 0; i < sizeof Es / sizeof Es[0]; i++) {
        moe_balance b = counts_figures(zero, Es[i]);
        const double v[] = {b.entropy, b.gini, b.max_over_mean, b.tpe_min, b.tpe_max, b.tpe_mean,
                            b.tpe_std};
        for (size_t j = 0; j < sizeof v / sizeof v[0]; j++)
            EXPECT_MSG(v[j] == 0.0 && !signbit(v[j]) && !isnan(v[j]),
                       "E=%d all-zero counts: figure %zu is %g, not 0", Es[i], j, v[j]);
    }
    /* one expert with everything: entropy 0, Gini 0, max/mean 1, std 0 */
    const int64_t one[] = {1001};
    moe_balance b = counts_figures(one, 1);
    expect_exact("E=1 entropy", b.entropy, 0.0);
    expect_exact("E=1 gini", b.gini, 0.0);
    expect_exact("E=1 max_over_mean", b.max_over_mean, 1.0);
    expect_exact("E=1 mean", b.tpe_mean, 1001.0);
    expect_exact("E=1 std", b.tpe_std, 0.0);
}
END_TEST

/* Figures of random counts against a recomputation here from the definitions. */
START_TEST(test_counts_random_properties)
{
    g_state = 424242;
    int64_t routed[32], scaled[32];
    double x[32];
    for (int round = 0; round < 2000; round++) {
        int E = 1 + next_int(32);
        int kind = next_int(4); /* 0 uniform, 1 random, 2 sparse, 3 nearly uniform */
        int64_t base = 1 + next_int(1000);
        for (int e = 0; e < E; e++) {
            switch (kind) {
            case 0: routed[e] = base; break;
            case 1: routed[e] = next_int(1001); break;
            case 2: routed[e] = next_int(3) == 0 ? next_int(1001) : 0; break;
            default: routed[e] = base - (next_int(E) == 0); break;
            }
            x[e] = (double)routed[e];
        }
        int64_t total = 0, mn = routed[0], mx = routed[0];
        for (int e = 0; e < E; e++) {
            total += routed[e];
            mn = routed[e] < mn ? routed[e] : mn;
            mx = routed[e] > mx ? routed[e] : mx;
        }
        moe_balance b = counts_figures(routed, E);
        if (total == 0) {
            EXPECT_MSG(b.entropy == 0.0 && b.gini == 0.0 && b.max_over_mean == 0.0 &&
                           b.tpe_std == 0.0 && b.tpe_mean == 0.0,
                       "E=%d: nothing routed, figures not zero", E);
            continue;
        }
        double mean = (double)total / E, var = 0.0, H = 0.0;
        for (int e = 0; e < E; e++) {
            var += ((double)routed[e] - mean) * ((double)routed[e] - mean);
            if (routed[e] > 0)
                H -= (double)routed[e] / total * log((double)routed[e] / total);
        }
        var /= E;
        expect_exact("min", b.tpe_min, (double)mn);
        expect_exact("max", b.tpe_max, (double)mx);
        expect_rel("mean", b.tpe_mean, mean, HAND_RTOL);
        EXPECT_MSG(fabs(b.tpe_std - sqrt(var)) <= 1e-12 * sqrt(var) + 1e-12 * mean,
                   "E=%d: std %.17g, expected %.17g", E, b.tpe_std, sqrt(var));
        EXPECT_MSG(fabs(b.entropy - H) <= 1e-13 * (H + 1e-300) + 1e-15,
                   "E=%d: entropy %.17g, expected %.17g", E, b.entropy, H);
        EXPECT_MSG(fabs(b.gini - moe_gini_ref(x, E)) <= TWIN_RTOL * moe_gini_ref(x, E),
                   "E=%d: gini %.17g, ref %.17g", E, b.gini, moe_gini_ref(x, E));
        expect_rel("max_over_mean", b.max_over_mean, (double)mx / mean, HAND_RTOL);
        /* entropy <= ln E, equal iff uniform; Gini in [0, 1 - 1/E], 0 iff uniform */
        int uniform = mn == mx;
        double lnE = log((double)E);
        if (uniform) {
            EXPECT_MSG(fabs(b.entropy - lnE) <= 4e-15 * lnE + 1e-15,
                       "E=%d uniform: entropy %.17g, ln E %.17g", E, b.entropy, lnE);
            EXPECT_MSG(b.gini == 0.0 && b.max_over_mean == 1.0 && b.tpe_std == 0.0,
                       "E=%d uniform: gini %g max/mean %g std %g", E, b.gini, b.max_over_mean,
                       b.tpe_std);
        } else {
            EXPECT_MSG(b.entropy < lnE - 1e-13 && b.entropy >= 0.0,
                       "E=%d not uniform (kind %d): entropy %.17g, ln E %.17g", E, kind, b.entropy,
                       lnE);
            EXPECT_MSG(b.gini > 0.0 && b.gini <= (1.0 - 1.0 / E) * (1.0 + 1e-15),
                       "E=%d: gini %.17g outside (0, 1 - 1/E]", E, b.gini);
            EXPECT_MSG(b.max_over_mean > 1.0 && b.max_over_mean <= E * (1.0 + 1e-15),
                       "E=%d: max/mean %.17g outside (1, E]", E, b.max_over_mean);
        }
        /* scaling every count by c leaves entropy, Gini, CV^2 and max/mean unchanged, and scales
         * min, max, mean and std by c */
        static const int64_t cs[] = {2, 3, 7, 1000, 65537};
        int64_t c = cs[next_int(5)];
        for (int e = 0; e < E; e++)
            scaled[e] = routed[e] * c;
        moe_balance s = counts_figures(scaled, E);
        char what[96];
        snprintf(what, sizeof what, "E=%d x%lld: entropy", E, (long long)c);
        expect_rel(what, s.entropy, b.entropy, SCALE_RTOL);
        snprintf(what, sizeof what, "E=%d x%lld: gini", E, (long long)c);
        expect_rel(what, s.gini, b.gini, SCALE_RTOL);
        snprintf(what, sizeof what, "E=%d x%lld: max_over_mean", E, (long long)c);
        expect_rel(what, s.max_over_mean, b.max_over_mean, SCALE_RTOL);
        snprintf(what, sizeof what, "E=%d x%lld: cv2 = (std/mean)^2", E, (long long)c);
        expect_rel(what, (s.tpe_std / s.tpe_mean) * (s.tpe_std / s.tpe_mean),
                   (b.tpe_std / b.tpe_mean) * (b.tpe_std / b.tpe_mean), SCALE_RTOL);
        double xs[32];
        for (int e = 0; e < E; e++)
            xs[e] = (double)scaled[e];
        snprintf(what, sizeof what, "E=%d x%lld: moe_cv2", E, (long long)c);
        expect_rel(what, moe_cv2(xs, E), moe_cv2(x, E), SCALE_RTOL);
        expect_exact("scaled min", s.tpe_min, b.tpe_min * c);
        expect_exact("scaled max", s.tpe_max, b.tpe_max * c);
        snprintf(what, sizeof what, "E=%d x%lld: mean", E, (long long)c);
        expect_rel(what, s.tpe_mean, b.tpe_mean * c, SCALE_RTOL);
        snprintf(what, sizeof what, "E=%d x%lld: std", E, (long long)c);
        expect_rel(what, s.tpe_std, b.tpe_std * c, SCALE_RTOL);
    }
}
END_TEST

static Suite *loss_suite(void)
{
    Suite *s = suite_create("loss");
    TCase *tc = tcase_create("hand");
    tcase_add_test(tc, test_lse_hand_rows);
    tcase_add_test(tc, test_lse_hand_wide_rows);
    tcase_add_test(tc, test_lse_no_rows);
    tcase_add_test(tc, test_gini_hand);
    tcase_add_test(tc, test_gini_one_hot_is_the_maximum);
    tcase_add_test(tc, test_cv2_hand);
    tcase_add_test(tc, test_max_over_mean_hand);
    tcase_add_test(tc, test_counts_hand);
    tcase_add_test(tc, test_counts_nothing_routed);
    suite_add_tcase(s, tc);
    tc = tcase_create("property");
    tcase_add_test(tc, test_lse_properties);
    tcase_add_test(tc, test_gini_against_ref_integers);
    tcase_add_test(tc, test_gini_against_ref_reals);
    tcase_add_test(tc, test_counts_random_properties);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(loss_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
