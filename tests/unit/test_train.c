/* Unit tests of train: every gradient against central finite differences of the function the
 * header defines (evaluated in double where the function allows), the expert forward that saves
 * its intermediates against moe_expert_forward, the task's loss and the optimizers on hand-worked
 * steps. */
#include "moesim/expert.h"
#include "moesim/router.h"
#include "moesim/train.h"

#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"

#include "testrng.h"

/* ---- helpers: the functions the header defines, in double ---- */

static double uniform(double lo, double hi)
{
    return lo + (hi - lo) * next_unit();
}

static double max_abs_d(const double *a, int64_t n)
{
    double m = 0.0;
    for (int64_t i = 0; i < n; i++)
        m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* GELU x Phi(x) in double */
static double gelu_d(double x)
{
    return 0.5 * x * (1.0 + erf(x * M_SQRT1_2));
}

/* log sum_e exp(z_e), stable */
static double lse_d(const double *z, int E)
{
    double mx = -INFINITY, sum = 0.0;
    for (int e = 0; e < E; e++)
        mx = z[e] > mx ? z[e] : mx;
    for (int e = 0; e < E; e++)
        sum += exp(z[e] - mx);
    return mx + log(sum);
}

/* s (E) = softmax(z) or sigmoid(z) */
static void score_d(double *s, const double *z, int E, moe_score kind)
{
    if (kind == MOE_SCORE_SIGMOID) {
        for (int e = 0; e < E; e++)
            s[e] = 1.0 / (1.0 + exp(-z[e]));
        return;
    }
    double l = lse_d(z, E);
    for (int e = 0; e < E; e++)
        s[e] = exp(z[e] - l);
}

/* prob (E) of the aux loss from the scores: s (softmax) or s / sum s (sigmoid) */
static void prob_d(double *prob, const double *s, int E, moe_score kind)
{
    double S = 0.0;
    for (int e = 0; e < E; e++)
        S += s[e];
    for (int e = 0; e < E; e++)
        prob[e] = kind == MOE_SCORE_SIGMOID ? s[e] / S : s[e];
}

/* sum_c dgate_c gate_c(s), gate_c = scale s[e_c] / T, T = sum of the k chosen s with normalize
 * (else 1); T = 0 makes every gate 0 */
static double gate_loss_d(const double *s, const int32_t *expert, const double *dgate, int k,
                          bool normalize, double scale)
{
    double T = 1.0, L = 0.0;
    if (normalize) {
        T = 0.0;
        for (int c = 0; c < k; c++)
            T += s[expert[c]];
        if (T == 0.0)
            return 0.0;
    }
    for (int c = 0; c < k; c++)
        L += dgate[c] * scale * s[expert[c]] / T;
    return L;
}

/* ---- 1. GELU's derivative ---- */

START_TEST(test_gelu_grad_fd)
{
    /* x = i 2^-10 over [-8, 8] (16385 points) and h = 2^-10 (~1e-3), so x +- h are exact floats.
     * (a) Against the central difference of moe_gelu_ref (erff, float): each evaluation is within
     * ~2 ulp of gelu (<= 2^-20 ~ 1e-6 at |gelu| <= 8), so the quotient carries up to
     * 2e-6 / 2h ~ 1e-3 of rounding; truncation h^2/6 max|gelu'''| < 1e-7. Tolerance 2e-3 abs.
     * (b) Against the central difference of GELU in double (h = 1e-3, truncation < 3e-7): what
     * remains is moe_gelu_grad's own error, moe_erf's 5e-7 / 2 plus float roundings of order
     * 1e-7 (values <= 1.13). Tolerance 2e-6 abs: a sign or factor-2 slip in either term (Phi or
     * x phi) is off by far more (x phi reaches 0.24 at x = 1). */
    const double h = 0x1.0p-10, hd = 1e-3;
    double worst_a = 0.0, worst_b = 0.0;
    float at_a = 0.0f, at_b = 0.0f;
    for (int i = -8192; i <= 8192; i++) {
        float x = (float)i * 0x1.0p-10f;
        double g = (double)moe_gelu_grad(x);
        double fd_ref = ((double)moe_gelu_ref((float)(x + h)) - (double)moe_gelu_ref((float)(x - h))) /
                        (2.0 * h);
        double fd_d = (gelu_d((double)x + hd) - gelu_d((double)x - hd)) / (2.0 * hd);
        if (fabs(g - fd_ref) > worst_a)
            worst_a = fabs(g - fd_ref), at_a = x;
        if (fabs(g - fd_d) > worst_b)
            worst_b = fabs(g - fd_d), at_b = x;
    }
    EXPECT_MSG(worst_a <= 2e-3, "max |gelu_grad - FD(gelu_ref)| = %.3g at x = %g", worst_a, at_a);
    EXPECT_MSG(worst_b <= 2e-6, "max |gelu_grad - FD(gelu, double)| = %.3g at x = %g", worst_b, at_b);
    /* known values: GELU'(0) = 1/2; GELU'(sqrt 2) = Phi(sqrt 2) + sqrt 2 phi(sqrt 2) = 1.128904,
     * its maximum; far out 1 and 0 */
    ck_assert_float_eq_tol(moe_gelu_grad(0.0f), 0.5f, 1e-7f);
    ck_assert_float_eq_tol(moe_gelu_grad((float)M_SQRT2), 1.1289041f, 1e-6f);
    ck_assert_float_eq_tol(moe_gelu_grad(10.0f), 1.0f, 1e-6f);
    ck_assert_float_eq_tol(moe_gelu_grad(-10.0f), 0.0f, 1e-6f);
}
END_TEST

/* ---- 2. the forward that saves pre and act ---- */

START_TEST(test_forward_save)
{
    /* y and act bitwise those of moe_expert_forward (the header: the same floats); act ==
     * moe_gelu(pre) bitwise (moe_gelu_rows equals moe_gelu, test_expert); pre against a double
     * loop within 2 (gamma_d sum_j |x_j w1_ij| + u |pre|) (Higham 3.1, u = 2^-24, float
     * accumulation in any order, plus the reference's rounding). */
    static const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {64, 128, 256}, {2, 1, 300}};
    g_state = 2;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const int64_t m = shapes[s][0], d = shapes[s][1], f = shapes[s][2];
        float *x = malloc((size_t)(m * d) * sizeof *x), *w1 = malloc((size_t)(f * d) * sizeof *w1);
        float *w2 = malloc((size_t)(d * f) * sizeof *w2);
        float *y = malloc((size_t)(m * d) * sizeof *y), *y0 = malloc((size_t)(m * d) * sizeof *y0);
        float *pre = malloc((size_t)(m * f) * sizeof *pre), *act = malloc((size_t)(m * f) * sizeof *act);
        float *act0 = malloc((size_t)(m * f) * sizeof *act0);
        for (int64_t i = 0; i < m * d; i++)
            x[i] = (float)uniform(-2.0, 2.0);
        moe_expert_init(w1, w2, 9, (int)s, d, f);
        moe_expert_forward_save(y, pre, act, x, w1, w2, m, d, f);
        moe_expert_forward(y0, act0, x, w1, w2, m, d, f);
        EXPECT_MEM_EQ(y, y0, (size_t)(m * d) * sizeof *y);
        EXPECT_MEM_EQ(act, act0, (size_t)(m * f) * sizeof *act);
        const double u = 0x1.0p-24, gd = d * u / (1 - d * u);
        for (int64_t r = 0; r < m; r++)
            for (int64_t i = 0; i < f; i++) {
                double want = 0.0, a = 0.0;
                for (int64_t j = 0; j < d; j++) {
                    want += (double)x[r * d + j] * w1[i * d + j];
                    a += fabs((double)x[r * d + j] * w1[i * d + j]);
                }
                double tol = 2.0 * (gd * a + u * fabs(want)) + FLT_MIN;
                float p = pre[r * f + i];
                EXPECT_MSG(fabs((double)p - want) <= tol, "(%lld,%lld,%lld) pre[%lld][%lld] = %.9g, want %.9g",
                           (long long)m, (long long)d, (long long)f, (long long)r, (long long)i, p, want);
                EXPECT_MSG(act[r * f + i] == moe_gelu(p), "act[%lld][%lld] = %.9g, gelu(pre) = %.9g",
                           (long long)r, (long long)i, act[r * f + i], moe_gelu(p));
            }
        free(x), free(w1), free(w2), free(y), free(y0), free(pre), free(act), free(act0);
    }
    /* m = 0 touches nothing */
    float y = 42.0f, pre = 43.0f, act = 44.0f, x = 1.0f, w = 1.0f;
    moe_expert_forward_save(&y, &pre, &act, &x, &w, &w, 0, 1, 1);
    ck_assert(y == 42.0f && pre == 43.0f && act == 44.0f);
}
END_TEST

/* ---- 3. the expert's backward ---- */

/* L = sum dy * y(x, W1, W2), y from moe_expert_forward_ref (double accumulation), L in double */
static double expert_loss(const float *dy, const float *x, const float *w1, const float *w2, int64_t m,
                          int64_t d, int64_t f, float *y, float *act)
{
    moe_expert_forward_ref(y, act, x, w1, w2, m, d, f);
    double L = 0.0;
    for (int64_t i = 0; i < m * d; i++)
        L += (double)dy[i] * (double)y[i];
    return L;
}

/* fd[i] = dL/dp[i] for the n entries of p (one of x, w1, w2), central, p[i] +- h in float, the
 * quotient over the step the floats actually took */
static void expert_fd(double *fd, float *p, int64_t n, const float *dy, const float *x,
                      const float *w1, const float *w2, int64_t m, int64_t d, int64_t f, float *y,
                      float *act)
{
    const float h = 1e-2f;
    for (int64_t i = 0; i < n; i++) {
        float old = p[i], up = old + h, dn = old - h;
        p[i] = up;
        double Lp = expert_loss(dy, x, w1, w2, m, d, f, y, act);
        p[i] = dn;
        double Lm = expert_loss(dy, x, w1, w2, m, d, f, y, act);
        p[i] = old;
        fd[i] = (Lp - Lm) / ((double)up - (double)dn);
    }
}

/* |got - fd| <= 2e-3 max|fd| entry by entry: the FD's truncation, h^2/6 |GELU'''| (<= 0.6)
 * times |x|^3 |W2 dy| of order one, ~1e-5 of the gradient, and its rounding (float y, eps 6e-8
 * |y| over 2h), ~1e-5; the analytic side's float GEMMs and moe_erf, ~1e-6. A sign or factor-2
 * error is off by the gradient's own size. */
static void expect_grad(const float *got, const double *fd, int64_t n, const char *what, int64_t m,
                        int64_t d, int64_t f)
{
    double scale = max_abs_d(fd, n), worst = 0.0;
    int64_t at = 0;
    ck_assert_msg(scale > 1e-3, "%s: a degenerate case, max |FD| = %g", what, scale);
    for (int64_t i = 0; i < n; i++)
        if (fabs((double)got[i] - fd[i]) > worst)
            worst = fabs((double)got[i] - fd[i]), at = i;
    EXPECT_MSG(worst <= 2e-3 * scale, "(%lld,%lld,%lld) %s[%lld] = %.7g, FD %.7g: |diff| %.3g > 2e-3 * %.3g",
               (long long)m, (long long)d, (long long)f, what, (long long)at, got[at], fd[at], worst,
               scale);
}

static void check_backward(int64_t m, int64_t d, int64_t f)
{
    const size_t md = (size_t)(m * d), fd_ = (size_t)(f * d), mf = (size_t)(m * f);
    float *x = malloc(md * sizeof *x), *dy = malloc(md * sizeof *dy), *y = malloc(md * sizeof *y);
    float *w1 = malloc(fd_ * sizeof *w1), *w2 = malloc(fd_ * sizeof *w2);
    float *pre = malloc(mf * sizeof *pre), *act = malloc(mf * sizeof *act), *dpre = malloc(mf * sizeof *dpre);
    float *dx = malloc(md * sizeof *dx), *dw1 = calloc(fd_, sizeof *dw1), *dw2 = calloc(fd_, sizeof *dw2);
    float *ew1 = malloc(fd_ * sizeof *ew1), *ew2 = malloc(fd_ * sizeof *ew2);
    double *fdv = malloc((md > fd_ ? md : fd_) * sizeof *fdv);
    for (size_t i = 0; i < md; i++) {
        x[i] = (float)uniform(-2.0, 2.0);
        dy[i] = (float)uniform(-1.0, 1.0);
    }
    /* U(-1, 1) rather than moe_expert_init's 1/sqrt(d) scale, so pre spreads over GELU's bend */
    for (size_t i = 0; i < fd_; i++) {
        w1[i] = (float)uniform(-1.0, 1.0);
        w2[i] = (float)uniform(-1.0, 1.0);
    }
    moe_expert_forward_save(y, pre, act, x, w1, w2, m, d, f);
    moe_expert_backward(dx, dw1, dw2, dpre, dy, x, pre, act, w1, w2, m, d, f);

    float *ys = malloc(md * sizeof *ys), *as = malloc(mf * sizeof *as);
    expert_fd(fdv, x, (int64_t)md, dy, x, w1, w2, m, d, f, ys, as);
    expect_grad(dx, fdv, (int64_t)md, "dx", m, d, f);
    expert_fd(fdv, w1, (int64_t)fd_, dy, x, w1, w2, m, d, f, ys, as);
    expect_grad(dw1, fdv, (int64_t)fd_, "dw1", m, d, f);
    expert_fd(fdv, w2, (int64_t)fd_, dy, x, w1, w2, m, d, f, ys, as);
    expect_grad(dw2, fdv, (int64_t)fd_, "dw2", m, d, f);

    /* dw1 and dw2 accumulate: a second call adds the same again (2A within 1e-6 max|A|, a few
     * float roundings; overwriting would leave A) */
    memcpy(ew1, dw1, fd_ * sizeof *ew1);
    memcpy(ew2, dw2, fd_ * sizeof *ew2);
    moe_expert_backward(dx, dw1, dw2, dpre, dy, x, pre, act, w1, w2, m, d, f);
    float s1 = 0.0f, s2 = 0.0f;
    for (size_t i = 0; i < fd_; i++) {
        s1 = fmaxf(s1, fabsf(ew1[i]));
        s2 = fmaxf(s2, fabsf(ew2[i]));
    }
    for (size_t i = 0; i < fd_; i++) {
        EXPECT_MSG(fabsf(dw1[i] - 2.0f * ew1[i]) <= 1e-6f * s1, "dw1[%zu] twice: %.9g, once %.9g", i,
                   dw1[i], ew1[i]);
        EXPECT_MSG(fabsf(dw2[i] - 2.0f * ew2[i]) <= 1e-6f * s2, "dw2[%zu] twice: %.9g, once %.9g", i,
                   dw2[i], ew2[i]);
    }
    /* dx NULL: not computed, and dw1, dw2 the same floats as with it */
    memset(dw1, 0, fd_ * sizeof *dw1);
    memset(dw2, 0, fd_ * sizeof *dw2);
    moe_expert_backward(NULL, dw1, dw2, dpre, dy, x, pre, act, w1, w2, m, d, f);
    EXPECT_MEM_EQ(dw1, ew1, fd_ * sizeof *dw1);
    EXPECT_MEM_EQ(dw2, ew2, fd_ * sizeof *dw2);

    free(x), free(dy), free(y), free(w1), free(w2), free(pre), free(act), free(dpre), free(dx);
    free(dw1), free(dw2), free(ew1), free(ew2), free(fdv), free(ys), free(as);
}

START_TEST(test_expert_backward_fd)
{
    static const int shapes[][3] = {{3, 5, 7}, {1, 4, 3}, {6, 2, 9}, {5, 8, 1}};
    g_state = 3;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        check_backward(shapes[s][0], shapes[s][1], shapes[s][2]);
    /* m = 0 does nothing: every output keeps its sentinel */
    float dx = 1.0f, dw1[2] = {2.0f, 3.0f}, dw2[2] = {4.0f, 5.0f}, dpre = 6.0f;
    const float one[2] = {1.0f, 1.0f};
    moe_expert_backward(&dx, dw1, dw2, &dpre, one, one, one, one, one, one, 0, 1, 2);
    ck_assert(dx == 1.0f && dw1[0] == 2.0f && dw1[1] == 3.0f && dw2[0] == 4.0f && dw2[1] == 5.0f &&
              dpre == 6.0f);
}
END_TEST

/* ---- 4. through the gates ---- */

START_TEST(test_gate_backward_hand)
{
    /* E 4, k 2, scores s = [1/8, 1/2, 1/8, 1/4] (a softmax's: they sum to 1), chosen experts
     * {1, 3} (the top 2), dgate = [1, 2]. Every value below is exact in binary but the thirds.
     * normalize false: ds_j = scale dgate_c for j = e_c: [0, 1, 0, 2]; scale 2.5: [0, 2.5, 0, 5].
     * normalize true: T = 1/2 + 1/4 = 3/4, dot = sum_c dgate_c s_c = 1/2 + 2/4 = 1,
     * ds_j = scale (dgate_j / T - dot / T^2):
     *   ds_1 = 4/3 - 16/9 = -4/9,  ds_3 = 8/3 - 16/9 = 8/9; scale 2.5: -10/9, 20/9.
     * (Check: the gates are of degree 0 in s, so sum_j s_j ds_j = -2/9 + 2/9 = 0.)
     * Tolerance 1e-6: float roundings of values below 6. */
    const float s[4] = {0.125f, 0.5f, 0.125f, 0.25f}, dgate[2] = {1.0f, 2.0f};
    const int32_t expert[2] = {1, 3};
    const double scales[2] = {1.0, 2.5};
    const double want_plain[4] = {0, 1, 0, 2}, want_norm[4] = {0, -4.0 / 9, 0, 8.0 / 9};
    for (int si = 0; si < 2; si++)
        for (int norm = 0; norm < 2; norm++) {
            float ds[4] = {99.0f, 99.0f, 99.0f, 99.0f}; /* overwritten */
            moe_gate_backward_row(ds, s, expert, dgate, 4, 2, norm, scales[si]);
            for (int e = 0; e < 4; e++) {
                double want = scales[si] * (norm ? want_norm[e] : want_plain[e]);
                EXPECT_MSG(fabs((double)ds[e] - want) <= 1e-6,
                           "scale %g normalize %d: ds[%d] = %.9g, want %.9g", scales[si], norm, e,
                           ds[e], want);
            }
            ck_assert(ds[0] == 0.0f && ds[2] == 0.0f);
        }
    /* T = 0 (the chosen scores are 0) with normalize: every gate is 0, so is every gradient */
    const float z0[4] = {0.5f, 0.0f, 0.5f, 0.0f};
    float ds[4] = {99.0f, 99.0f, 99.0f, 99.0f};
    moe_gate_backward_row(ds, z0, expert, dgate, 4, 2, true, 2.5);
    for (int e = 0; e < 4; e++)
        EXPECT_MSG(ds[e] == 0.0f, "T = 0: ds[%d] = %g", e, ds[e]);
}
END_TEST

START_TEST(test_gate_backward_fd)
{
    /* Random rows: E in 2..8, k in 1..min(E, 4) distinct experts in random order, s in
     * [0.05, 1] (so T >= 0.05), dgate in [-1, 1] with a dropped assignment (dgate 0) now and
     * then. FD in double on s, h = 1e-5: L is rational in s with T >= 0.05, truncation
     * ~h^2 |L'''| < 1e-6, rounding 1e-16 / h. Tolerance 1e-5 (1 + max|FD|): the analytic side
     * rounds terms of at most |dgate| / T <= 20 to float (6e-8 relative) before they cancel. */
    g_state = 4;
    const double h = 1e-5;
    for (int trial = 0; trial < 400; trial++) {
        int E = 2 + next_int(7), k = 1 + next_int(E < 4 ? E : 4);
        bool normalize = next_int(2);
        double scale = next_int(2) ? 1.0 : 2.5;
        float s[8], dgate[4], ds[8];
        double sd[8], dgd[4], fd[8];
        int32_t expert[4];
        int perm[8];
        for (int e = 0; e < E; e++) {
            s[e] = (float)uniform(0.05, 1.0);
            sd[e] = s[e];
            perm[e] = e;
            ds[e] = 99.0f;
        }
        for (int c = 0; c < k; c++) { /* a partial Fisher-Yates shuffle: k distinct experts */
            int j = c + next_int(E - c), t = perm[c];
            perm[c] = perm[j], perm[j] = t;
            expert[c] = perm[c];
            dgate[c] = next_int(5) == 0 ? 0.0f : (float)uniform(-1.0, 1.0);
            dgd[c] = dgate[c];
        }
        moe_gate_backward_row(ds, s, expert, dgate, E, k, normalize, scale);
        for (int e = 0; e < E; e++) {
            double old = sd[e];
            sd[e] = old + h;
            double Lp = gate_loss_d(sd, expert, dgd, k, normalize, scale);
            sd[e] = old - h;
            double Lm = gate_loss_d(sd, expert, dgd, k, normalize, scale);
            sd[e] = old;
            fd[e] = (Lp - Lm) / (2 * h);
        }
        double tol = 1e-5 * (1.0 + max_abs_d(fd, E));
        for (int e = 0; e < E; e++) {
            EXPECT_MSG(fabs((double)ds[e] - fd[e]) <= tol,
                       "trial %d (E %d k %d normalize %d scale %g): ds[%d] = %.9g, FD %.9g", trial, E,
                       k, normalize, scale, e, ds[e], fd[e]);
            bool chosen = false;
            for (int c = 0; c < k; c++)
                chosen |= expert[c] == e;
            if (!chosen)
                EXPECT_MSG(ds[e] == 0.0f, "trial %d: unchosen expert %d has ds %g", trial, e, ds[e]);
        }
    }
}
END_TEST

/* ---- 5. the auxiliary loss through the probabilities ---- */

START_TEST(test_aux_backward_fd)
{
    /* L(s) = sum_e coef_e prob_e(s), prob = s (softmax) or s / sum s (sigmoid); ds must be ADDED
     * to what it holds (random values in [-3, 3]). s in [0.05, 1], coef in [0, 2] (alpha E f_i /
     * N >= 0) and, to exercise signs, some negative. FD in double, h = 1e-5 (truncation ~1e-9).
     * Tolerance 1e-5 (1 + max|FD| + 3) on ds - its old value: the float rounding of the
     * gradient (|coef - dot| / S <= 40 with S >= 0.05) and of the sum with an old value up to 3,
     * 2^-24 relative each. */
    g_state = 5;
    const double h = 1e-5;
    for (int trial = 0; trial < 200; trial++) {
        moe_score kind = trial % 2 ? MOE_SCORE_SIGMOID : MOE_SCORE_SOFTMAX;
        int E = 1 + next_int(8);
        float s[8], ds[8], ds0[8];
        double sd[8], coef[8], fd[8];
        for (int e = 0; e < E; e++) {
            s[e] = (float)uniform(0.05, 1.0);
            sd[e] = s[e];
            coef[e] = next_int(4) == 0 ? uniform(-1.0, 0.0) : uniform(0.0, 2.0);
            ds[e] = ds0[e] = (float)uniform(-3.0, 3.0);
        }
        moe_aux_backward_row(ds, s, coef, E, kind);
        for (int e = 0; e < E; e++) {
            double old = sd[e], prob[8], Lp = 0.0, Lm = 0.0;
            sd[e] = old + h;
            prob_d(prob, sd, E, kind);
            for (int i = 0; i < E; i++)
                Lp += coef[i] * prob[i];
            sd[e] = old - h;
            prob_d(prob, sd, E, kind);
            for (int i = 0; i < E; i++)
                Lm += coef[i] * prob[i];
            sd[e] = old;
            fd[e] = (Lp - Lm) / (2 * h);
        }
        double tol = 1e-5 * (1.0 + max_abs_d(fd, E) + 3.0);
        for (int e = 0; e < E; e++) {
            double got = (double)ds[e] - (double)ds0[e];
            EXPECT_MSG(fabs(got - fd[e]) <= tol, "trial %d (%s, E %d): ds[%d] - old = %.9g, FD %.9g",
                       trial, moe_score_name(kind), E, e, got, fd[e]);
        }
    }
}
END_TEST

/* ---- 6. the score function and the z-loss ---- */

static double score_loss_d(const double *z, const double *dsd, int E, moe_score kind, double zcoef)
{
    double s[16], L = 0.0, l = lse_d(z, E);
    score_d(s, z, E, kind);
    for (int e = 0; e < E; e++)
        L += dsd[e] * s[e];
    return L + zcoef * l * l;
}

START_TEST(test_score_backward_fd)
{
    /* L(z) = sum_e ds_e score_e(z) + zcoef lse(z)^2, score = softmax(z) or sigmoid(z), E 6,
     * z in [-3, 3], ds in [-1, 1], zcoef 0 or in [0.05, 0.5]. score is the router's float row
     * (moe_router_scores). FD in double, h = 1e-5 (truncation ~1e-10). Tolerance
     * 1e-5 (1 + max|FD|): float roundings of the score (2^-24 relative) and of dz. dz is
     * overwritten (it starts at 99). */
    enum { E = 6 };
    g_state = 6;
    const double h = 1e-5;
    for (int trial = 0; trial < 200; trial++) {
        moe_score kind = trial % 2 ? MOE_SCORE_SIGMOID : MOE_SCORE_SOFTMAX;
        double zcoef = (trial / 2) % 2 ? uniform(0.05, 0.5) : 0.0;
        float z[E], score[E], ds[E], dz[E];
        double zd[E], dsd[E], fd[E];
        for (int e = 0; e < E; e++) {
            z[e] = (float)uniform(-3.0, 3.0);
            zd[e] = z[e];
            ds[e] = (float)uniform(-1.0, 1.0);
            dsd[e] = ds[e];
            dz[e] = 99.0f;
        }
        moe_router_scores(score, z, 1, E, kind);
        moe_score_backward_row(dz, ds, score, z, E, kind, zcoef);
        for (int e = 0; e < E; e++) {
            double old = zd[e];
            zd[e] = old + h;
            double Lp = score_loss_d(zd, dsd, E, kind, zcoef);
            zd[e] = old - h;
            double Lm = score_loss_d(zd, dsd, E, kind, zcoef);
            zd[e] = old;
            fd[e] = (Lp - Lm) / (2 * h);
        }
        double tol = 1e-5 * (1.0 + max_abs_d(fd, E));
        for (int e = 0; e < E; e++)
            EXPECT_MSG(fabs((double)dz[e] - fd[e]) <= tol, "trial %d (%s, zcoef %g): dz[%d] = %.9g, FD %.9g",
                       trial, moe_score_name(kind), zcoef, e, dz[e], fd[e]);
    }
}
END_TEST

/* ---- 7. the router's whole chain, logits to loss ---- */

/* L(z) = sum_c w_c gate_c(z) + sum_e coef_e prob_e(z) + zcoef lse(z)^2 for a fixed choice */
static double chain_loss_d(const double *z, const int32_t *expert, const double *w, const double *coef,
                           int E, int k, moe_score kind, bool normalize, double scale, double zcoef)
{
    double s[16], prob[16], l = lse_d(z, E);
    score_d(s, z, E, kind);
    prob_d(prob, s, E, kind);
    double L = gate_loss_d(s, expert, w, k, normalize, scale) + zcoef * l * l;
    for (int e = 0; e < E; e++)
        L += coef[e] * prob[e];
    return L;
}

START_TEST(test_router_chain_fd)
{
    /* One token, E 6, k 2: logits z in [-3, 3]; scores from moe_router_scores; the top 2 by score
     * chosen here (and checked against moe_topk_select's choice and gates). Loss as
     * chain_loss_d, w in [-1, 1], coef in [0, 2], zcoef 0 or 0.1. dz analytic =
     * gate_backward -> aux_backward (adds) -> score_backward. FD in double on z, h = 1e-5; a row
     * is redrawn unless its 2nd and 3rd scores differ by 1e-3 (relative to the 2nd), far more than
     * any score moves under h (|ds/dz| <= 1/4 for either kind), so the choice is the same at
     * z +- h. Tolerance 1e-5 (1 + max|FD|), as in the pieces. All of softmax/sigmoid x
     * normalize x scale {1, 2.5}, 40 rows each. */
    enum { E = 6, K = 2 };
    g_state = 7;
    const double h = 1e-5;
    int redrawn = 0;
    for (int trial = 0; trial < 320; trial++) {
        moe_score kind = trial % 2 ? MOE_SCORE_SIGMOID : MOE_SCORE_SOFTMAX;
        bool normalize = (trial / 2) % 2;
        double scale = (trial / 4) % 2 ? 2.5 : 1.0;
        double zcoef = (trial / 8) % 2 ? 0.1 : 0.0;
        float z[E], score[E];
        double zd[E], sd[E];
        int32_t expert[K];
        for (;;) {
            for (int e = 0; e < E; e++) {
                z[e] = (float)uniform(-3.0, 3.0);
                zd[e] = z[e];
            }
            moe_router_scores(score, z, 1, E, kind);
            score_d(sd, zd, E, kind);
            /* the top K by score, lower id first on ties (none here: the margin) */
            bool taken[E] = {false};
            for (int c = 0; c < K; c++) {
                int best = -1;
                for (int e = 0; e < E; e++)
                    if (!taken[e] && (best < 0 || sd[e] > sd[best]))
                        best = e;
                taken[best] = true;
                expert[c] = best;
            }
            double next = -1.0;
            for (int e = 0; e < E; e++)
                if (!taken[e] && sd[e] > next)
                    next = sd[e];
            if (sd[expert[K - 1]] - next > 1e-3 * sd[expert[K - 1]])
                break;
            redrawn++;
        }
        int32_t sel[K];
        float gate[K];
        moe_topk_select(sel, gate, score, NULL, 1, E, K, normalize, scale);
        EXPECT_MEM_EQ(sel, expert, sizeof sel);

        float w[K], ds[E], dz[E];
        double wd[K], coef[E], fd[E];
        for (int c = 0; c < K; c++) {
            w[c] = (float)uniform(-1.0, 1.0);
            wd[c] = w[c];
        }
        for (int e = 0; e < E; e++)
            coef[e] = uniform(0.0, 2.0);
        /* the gates moe_topk_select made are the gate function's values (1e-6: float roundings) */
        double T = normalize ? sd[expert[0]] + sd[expert[1]] : 1.0;
        for (int c = 0; c < K; c++)
            EXPECT_MSG(fabs((double)gate[c] - scale * sd[expert[c]] / T) <= 1e-6,
                       "trial %d: gate[%d] = %.9g, want %.9g", trial, c, gate[c], scale * sd[expert[c]] / T);

        moe_gate_backward_row(ds, score, expert, w, E, K, normalize, scale);
        moe_aux_backward_row(ds, score, coef, E, kind);
        moe_score_backward_row(dz, ds, score, z, E, kind, zcoef);
        for (int e = 0; e < E; e++) {
            double old = zd[e];
            zd[e] = old + h;
            double Lp = chain_loss_d(zd, expert, wd, coef, E, K, kind, normalize, scale, zcoef);
            zd[e] = old - h;
            double Lm = chain_loss_d(zd, expert, wd, coef, E, K, kind, normalize, scale, zcoef);
            zd[e] = old;
            fd[e] = (Lp - Lm) / (2 * h);
        }
        double tol = 1e-5 * (1.0 + max_abs_d(fd, E));
        for (int e = 0; e < E; e++)
            EXPECT_MSG(fabs((double)dz[e] - fd[e]) <= tol,
                       "trial %d (%s normalize %d scale %g zcoef %g): dz[%d] = %.9g, FD %.9g", trial,
                       moe_score_name(kind), normalize, scale, zcoef, e, dz[e], fd[e]);
    }
    EXPECT_MSG(redrawn < 320, "%d rows redrawn for the margin", redrawn);
}
END_TEST

/* ---- 8. the task's loss ---- */

START_TEST(test_mse_grad_hand)
{
    /* n 2 local rows of d 2, N_global 4: y = [[1, 2], [3, 4]], target = [[0.5, 2], [4, 1]],
     * r = y - t = [0.5, 0, -1, 3]: sum r^2 = 0.25 + 0 + 1 + 9 = 10.25; gy = 2 r / (4 * 2) =
     * r / 4 = [0.125, 0, -0.25, 0.75]. All exact in binary, so compared exactly. */
    const float y[4] = {1, 2, 3, 4}, t[4] = {0.5f, 2, 4, 1};
    float gy[4] = {9, 9, 9, 9};
    ck_assert(moe_mse_grad(gy, y, t, 2, 2, 4) == 10.25);
    const float want[4] = {0.125f, 0.0f, -0.25f, 0.75f};
    for (int i = 0; i < 4; i++)
        EXPECT_MSG(gy[i] == want[i], "gy[%d] = %.9g, want %.9g", i, gy[i], want[i]);
    /* N_global = n = 2: twice that */
    ck_assert(moe_mse_grad(gy, y, t, 2, 2, 2) == 10.25);
    for (int i = 0; i < 4; i++)
        EXPECT(gy[i] == 2.0f * want[i]);
    /* n = 0: no rows, 0, gy untouched */
    gy[0] = 9.0f;
    ck_assert(moe_mse_grad(gy, y, t, 0, 2, 4) == 0.0);
    ck_assert(gy[0] == 9.0f);
}
END_TEST

/* ---- 9. the optimizers ---- */

START_TEST(test_sgd_hand)
{
    /* w = 1, lr 0.1, momentum 0.9, g = 0.5 then -1:
     * v1 = 0.9 * 0 + 0.5 = 0.5, w1 = 1 - 0.1 * 0.5 = 0.95;
     * v2 = 0.9 * 0.5 - 1 = -0.55, w2 = 0.95 + 0.055 = 1.005.
     * A second weight with g = 0 stays put. Tolerance 1e-6: float arithmetic on values near 1. */
    float w[2] = {1.0f, -2.0f}, vel[2] = {0.0f, 0.0f};
    const float g1[2] = {0.5f, 0.0f}, g2[2] = {-1.0f, 0.0f};
    moe_sgd_step(w, vel, g1, 2, 0.1, MOE_SGD_MOMENTUM);
    ck_assert_float_eq_tol(vel[0], 0.5f, 1e-7f);
    ck_assert_float_eq_tol(w[0], 0.95f, 1e-6f);
    moe_sgd_step(w, vel, g2, 2, 0.1, MOE_SGD_MOMENTUM);
    ck_assert_float_eq_tol(vel[0], -0.55f, 1e-6f);
    ck_assert_float_eq_tol(w[0], 1.005f, 1e-6f);
    ck_assert(w[1] == -2.0f && vel[1] == 0.0f);
    /* momentum 0: plain SGD, w = 1 - 0.1 * 0.5 = 0.95 */
    float w0 = 1.0f, v0 = 0.0f;
    moe_sgd_step(&w0, &v0, g1, 1, 0.1, 0.0);
    ck_assert_float_eq_tol(w0, 0.95f, 1e-7f);
    ck_assert(v0 == 0.5f);
}
END_TEST

START_TEST(test_adam_hand)
{
    /* w = 1, lr 0.1, b1 0.9, b2 0.999, eps 1e-8.
     * t = 1, g = 0.5: m = 0.1 * 0.5 = 0.05, v = 0.001 * 0.25 = 0.00025; mhat = 0.05 / 0.1 = 0.5,
     *   vhat = 0.00025 / 0.001 = 0.25, w = 1 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.900000002 -> 0.9f.
     * t = 2, g = -1: m = 0.9 * 0.05 - 0.1 = -0.055, v = 0.999 * 0.00025 + 0.001 = 0.00124975;
     *   1 - b1^2 = 0.19, 1 - b2^2 = 0.001999; mhat = -0.28947368, vhat = 0.62518759,
     *   sqrt = 0.79068805; w = 0.9 + 0.1 * 0.28947368 / 0.79068805 = 0.93661035.
     * A second weight with g = 0: m = v = 0, the step 0 / (0 + eps) = 0, w stays.
     * Tolerances: 1e-6 on w (float), 1e-9 on m and v near 1e-3..1e-1 (float roundings). */
    float w[2] = {1.0f, 3.0f}, m[2] = {0, 0}, v[2] = {0, 0};
    const float g1[2] = {0.5f, 0.0f}, g2[2] = {-1.0f, 0.0f};
    moe_adam_step(w, m, v, g1, 2, 0.1, 1);
    ck_assert_float_eq_tol(m[0], 0.05f, 1e-9f);
    ck_assert_float_eq_tol(v[0], 0.00025f, 1e-10f);
    ck_assert_float_eq_tol(w[0], 0.9f, 1e-6f);
    moe_adam_step(w, m, v, g2, 2, 0.1, 2);
    ck_assert_float_eq_tol(m[0], -0.055f, 1e-9f);
    ck_assert_float_eq_tol(v[0], 0.00124975f, 1e-10f);
    ck_assert_float_eq_tol(w[0], 0.93661035f, 1e-6f);
    ck_assert(w[1] == 3.0f && m[1] == 0.0f && v[1] == 0.0f);
    /* Adam's first step is lr sign(g) for |g| >> eps, whatever |g|: w = 1 +- 0.1 */
    float wa = 1.0f, ma = 0.0f, va = 0.0f, ga = -123.0f;
    moe_adam_step(&wa, &ma, &va, &ga, 1, 0.1, 1);
    ck_assert_float_eq_tol(wa, 1.1f, 1e-6f);
    /* eps is added to sqrt(vhat), not under it: g = 1e-8 gives mhat = 1e-8, sqrt(vhat) = 1e-8, a
     * step 0.1 * 1e-8 / 2e-8 = 0.05 (sqrt(vhat + eps) would step 1e-5) */
    wa = 1.0f, ma = va = 0.0f, ga = 1e-8f;
    moe_adam_step(&wa, &ma, &va, &ga, 1, 0.1, 1);
    ck_assert_float_eq_tol(wa, 0.95f, 1e-6f);
}
END_TEST

START_TEST(test_optimizer_names_state)
{
    ck_assert_str_eq(moe_optimizer_name(MOE_OPT_SGD), "sgd");
    ck_assert_str_eq(moe_optimizer_name(MOE_OPT_ADAM), "adam");
    ck_assert_str_eq(moe_optimizer_name((moe_optimizer)2), "?");
    ck_assert_int_eq(moe_optimizer_state_per_weight(MOE_OPT_SGD), 1);
    ck_assert_int_eq(moe_optimizer_state_per_weight(MOE_OPT_ADAM), 2);
}
END_TEST

static Suite *train_suite(void)
{
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("train");
    tcase_add_test(tc, test_gelu_grad_fd);
    tcase_add_test(tc, test_forward_save);
    tcase_add_test(tc, test_expert_backward_fd);
    tcase_add_test(tc, test_gate_backward_hand);
    tcase_add_test(tc, test_gate_backward_fd);
    tcase_add_test(tc, test_aux_backward_fd);
    tcase_add_test(tc, test_score_backward_fd);
    tcase_add_test(tc, test_router_chain_fd);
    tcase_add_test(tc, test_mse_grad_hand);
    tcase_add_test(tc, test_sgd_hand);
    tcase_add_test(tc, test_adam_hand);
    tcase_add_test(tc, test_optimizer_names_state);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(train_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
