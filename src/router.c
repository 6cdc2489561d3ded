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

void moe_topk(int32_t *expert, float *gate, const float *p, int64_t n, int E, int k,
              bool renormalize)
{
    for (int64_t t = 0; t < n; t++) {
        const float *pr = p + t * E;
        int32_t *er = expert + t * k;
        float *gr = gate + t * k;
        int filled = 0;
        /* Insertion into a sorted list of at most k: strict '>' keeps the lower id first on ties,
         * because experts are visited in increasing id order. */
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
