#include "moesim/train.h"

#include "moesim/expert.h"
#include "moesim/loss.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

float moe_gelu_grad(float x)
{
    /* Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) */
    float phi = 0.3989422804014327f * expf(-0.5f * x * x);
    return 0.5f * (1.0f + moe_erf(x * (float)M_SQRT1_2)) + x * phi;
}

void moe_expert_backward(float *dx, float *dw1, float *dw2, float *dpre, const float *dy,
                         const float *x, const float *pre, const float *act, const float *w1,
                         const float *w2, int64_t m, int64_t d, int64_t f)
{
    if (m == 0)
        return;
    /* dW2 (d, f) += dy^T (d, m) act (m, f) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d, (int)f, (int)m, 1.0f, dy, (int)d,
                act, (int)f, 1.0f, dw2, (int)f);
    /* dact (m, f) = dy (m, d) W2 (d, f), then times GELU'(pre) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)f, (int)d, 1.0f, dy, (int)d,
                w2, (int)f, 0.0f, dpre, (int)f);
    for (int64_t i = 0; i < m * f; i++)
        dpre[i] *= moe_gelu_grad(pre[i]);
    /* dW1 (f, d) += dpre^T (f, m) x (m, d) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)f, (int)d, (int)m, 1.0f, dpre, (int)f,
                x, (int)d, 1.0f, dw1, (int)d);
    /* dx (m, d) = dpre (m, f) W1 (f, d) */
    if (dx != NULL)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d, (int)f, 1.0f, dpre,
                    (int)f, w1, (int)d, 0.0f, dx, (int)d);
}

void moe_gate_backward_row(float *ds, const float *score, const int32_t *expert,
                           const float *dgate, int E, int k, bool normalize, double scale)
{
    for (int e = 0; e < E; e++)
        ds[e] = 0.0f;
    if (!normalize) {
        for (int c = 0; c < k; c++)
            ds[expert[c]] += (float)(scale * (double)dgate[c]);
        return;
    }
    /* gate_c = scale s_c / T: dgate_c/ds_j = scale (delta_cj / T - s_c / T^2) for chosen j */
    double T = 0.0, dot = 0.0;
    for (int c = 0; c < k; c++)
        T += (double)score[expert[c]];
    if (T <= 0.0)
        return;
    for (int c = 0; c < k; c++)
        dot += (double)dgate[c] * (double)score[expert[c]];
    for (int c = 0; c < k; c++)
        ds[expert[c]] += (float)(scale * ((double)dgate[c] / T - dot / (T * T)));
}

void moe_aux_backward_row(float *ds, const float *score, const double *coef, int E,
                          moe_score kind)
{
    if (kind == MOE_SCORE_SOFTMAX) {
        for (int e = 0; e < E; e++)
            ds[e] += (float)coef[e];
        return;
    }
    /* prob_i = s_i / S: dprob_i/ds_j = (delta_ij - prob_i) / S */
    double S = 0.0, dot = 0.0;
    for (int e = 0; e < E; e++)
        S += (double)score[e];
    if (S <= 0.0)
        return;
    for (int e = 0; e < E; e++)
        dot += coef[e] * (double)score[e] / S;
    for (int e = 0; e < E; e++)
        ds[e] += (float)((coef[e] - dot) / S);
}

void moe_score_backward_row(float *dz, const float *ds, const float *score, const float *z,
                            int E, moe_score kind, double zcoef)
{
    if (kind == MOE_SCORE_SOFTMAX) {
        double dot = 0.0;
        for (int e = 0; e < E; e++)
            dot += (double)score[e] * (double)ds[e];
        for (int e = 0; e < E; e++)
            dz[e] = (float)((double)score[e] * ((double)ds[e] - dot));
    } else {
        for (int e = 0; e < E; e++)
            dz[e] = (float)((double)ds[e] * (double)score[e] * (1.0 - (double)score[e]));
    }
    if (zcoef == 0.0)
        return;
    /* d lse^2 / dz = 2 lse softmax(z), softmax(z)_e = exp(z_e - lse) */
    double lse;
    moe_logsumexp_rows(&lse, z, 1, E);
    for (int e = 0; e < E; e++)
        dz[e] += (float)(zcoef * 2.0 * lse * exp((double)z[e] - lse));
}

double moe_mse_grad(float *gy, const float *y, const float *target, int64_t n, int64_t d,
                    int64_t n_global)
{
    double sq = 0.0, scale = 2.0 / ((double)n_global * (double)d);
    for (int64_t i = 0; i < n * d; i++) {
        double r = (double)y[i] - (double)target[i];
        sq += r * r;
        gy[i] = (float)(scale * r);
    }
    return sq;
}

static const char *const optimizer_names[] = {"sgd", "adam"};

const char *moe_optimizer_name(moe_optimizer o)
{
    return (unsigned)o < 2 ? optimizer_names[o] : "?";
}

void moe_sgd_step(float *w, float *vel, const float *g, int64_t n, double lr, double momentum)
{
    float mu = (float)momentum, a = (float)lr;
    for (int64_t i = 0; i < n; i++) {
        vel[i] = mu * vel[i] + g[i];
        w[i] -= a * vel[i];
    }
}

void moe_adam_step(float *w, float *m, float *v, const float *g, int64_t n, double lr, int64_t t)
{
    const double b1 = MOE_ADAM_BETA1, b2 = MOE_ADAM_BETA2;
    double c1 = 1.0 - pow(b1, (double)t), c2 = 1.0 - pow(b2, (double)t);
    for (int64_t i = 0; i < n; i++) {
        double gi = (double)g[i];
        m[i] = (float)(b1 * (double)m[i] + (1.0 - b1) * gi);
        v[i] = (float)(b2 * (double)v[i] + (1.0 - b2) * gi * gi);
        double mh = (double)m[i] / c1, vh = (double)v[i] / c2;
        w[i] = (float)((double)w[i] - lr * mh / (sqrt(vh) + MOE_ADAM_EPS));
    }
}

int moe_optimizer_state_per_weight(moe_optimizer o)
{
    return o == MOE_OPT_ADAM ? 2 : 1;
}
