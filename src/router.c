#include "moesim/router.h"

#include <cblas.h>
#include <math.h>

void moe_router_logits(float *z, const float *h, const float *w, int64_t n, int64_t d, int E)
{
    if (n == 0)
        return;
    /* z (n, E) = h (n, d) * W^T (d, E) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, E, (int)d, 1.0f, h, (int)d, w,
                (int)d, 0.0f, z, E);
}

void moe_router_logits_ref(float *z, const float *h, const float *w, int64_t n, int64_t d, int E)
{
    for (int64_t t = 0; t < n; t++)
        for (int e = 0; e < E; e++) {
            double acc = 0.0;
            for (int64_t j = 0; j < d; j++)
                acc += (double)h[t * d + j] * (double)w[(int64_t)e * d + j];
            z[t * E + e] = (float)acc;
        }
}

void moe_softmax_rows(float *p, const float *z, int64_t n, int E)
{
    for (int64_t t = 0; t < n; t++) {
        const float *zr = z + t * E;
        float *pr = p + t * E;
        float zmax = zr[0];
        for (int e = 1; e < E; e++)
            zmax = zr[e] > zmax ? zr[e] : zmax;
        double sum = 0.0;
        for (int e = 0; e < E; e++) {
            pr[e] = expf(zr[e] - zmax);
            sum += pr[e];
        }
        float inv = (float)(1.0 / sum);
        for (int e = 0; e < E; e++)
            pr[e] *= inv;
    }
}

const char *moe_score_name(moe_score s)
{
    return s == MOE_SCORE_SIGMOID ? "sigmoid" : "softmax";
}

void moe_sigmoid_rows(float *s, const float *z, int64_t n, int E)
{
    for (int64_t i = 0; i < n * E; i++)
        s[i] = (float)(1.0 / (1.0 + exp(-(double)z[i])));
}

void moe_router_scores(float *p, const float *z, int64_t n, int E, moe_score score)
{
    if (score == MOE_SCORE_SIGMOID)
        moe_sigmoid_rows(p, z, n, E);
    else
        moe_softmax_rows(p, z, n, E);
}

void moe_router_probs_row(float *prob, const float *score, int E, moe_score kind)
{
    if (kind != MOE_SCORE_SIGMOID) {
        for (int e = 0; e < E; e++)
            prob[e] = score[e];
        return;
    }
    double sum = 0.0;
    for (int e = 0; e < E; e++)
        sum += score[e];
    for (int e = 0; e < E; e++)
        prob[e] = sum > 0.0 ? (float)(score[e] / sum) : 0.0f;
}

void moe_topk_select(int32_t *expert, float *gate, const float *p, const float *bias, int64_t n,
                     int E, int k, bool normalize, double scale)
{
    for (int64_t t = 0; t < n; t++) {
        const float *pr = p + t * E;
        int32_t *er = expert + t * k;
        float *gr = gate + t * k;
        int filled = 0;
        /* Insertion of the keys into a sorted list of at most k, kept in gr: strict '>' keeps the
         * lower id first on ties, because experts are visited in increasing id order. */
        for (int e = 0; e < E; e++) {
            float v = bias != NULL ? pr[e] + bias[e] : pr[e];
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
        /* the bias chose; the gate is the score alone (DeepSeek-V3) */
        if (bias != NULL)
            for (int c = 0; c < k; c++)
                gr[c] = pr[er[c]];
        if (normalize) {
            double sum = 0.0;
            for (int c = 0; c < k; c++)
                sum += gr[c];
            for (int c = 0; c < k; c++)
                gr[c] = sum > 0.0 ? (float)(gr[c] / sum) : 0.0f;
        }
        if (scale != 1.0)
            for (int c = 0; c < k; c++)
                gr[c] = (float)((double)gr[c] * scale);
    }
}

void moe_topk(int32_t *expert, float *gate, const float *p, int64_t n, int E, int k,
              bool renormalize)
{
    moe_topk_select(expert, gate, p, NULL, n, E, k, renormalize, 1.0);
}

void moe_router_accumulate(int64_t *routed, double *psum, const int32_t *expert, const float *p,
                           int64_t n, int E, int k)
{
    for (int64_t t = 0; t < n; t++) {
        for (int c = 0; c < k; c++)
            routed[expert[t * k + c]]++;
        for (int e = 0; e < E; e++)
            psum[e] += p[t * E + e];
    }
}
