#include "moesim/expert.h"

#include "moesim/rng.h"

#include <cblas.h>
#include <math.h>

void moe_expert_init(float *w1, float *w2, uint64_t seed, int e, int64_t d, int64_t f)
{
    moe_rng_fill_normal(w1, (size_t)(f * d), seed, MOE_STREAM_EXPERT + 2 * (uint64_t)e, 0,
                        1.0 / sqrt((double)d));
    moe_rng_fill_normal(w2, (size_t)(d * f), seed, MOE_STREAM_EXPERT + 2 * (uint64_t)e + 1, 0,
                        1.0 / sqrt((double)f));
}

float moe_gelu(float x)
{
    return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
}

void moe_expert_forward(float *y, float *act, const float *x, const float *w1, const float *w2,
                        int64_t m, int64_t d, int64_t f)
{
    if (m == 0)
        return;
    /* act (m, f) = x (m, d) * W1^T (d, f) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)f, (int)d, 1.0f, x, (int)d,
                w1, (int)d, 0.0f, act, (int)f);
    for (int64_t i = 0; i < m * f; i++)
        act[i] = moe_gelu(act[i]);
    /* y (m, d) = act (m, f) * W2^T (f, d) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)d, (int)f, 1.0f, act, (int)f,
                w2, (int)f, 0.0f, y, (int)d);
}

void moe_expert_forward_ref(float *y, float *act, const float *x, const float *w1, const float *w2,
                            int64_t m, int64_t d, int64_t f)
{
    for (int64_t r = 0; r < m; r++) {
        for (int64_t i = 0; i < f; i++) {
            double acc = 0.0;
            for (int64_t j = 0; j < d; j++)
                acc += (double)x[r * d + j] * (double)w1[i * d + j];
            act[r * f + i] = moe_gelu((float)acc);
        }
        for (int64_t j = 0; j < d; j++) {
            double acc = 0.0;
            for (int64_t i = 0; i < f; i++)
                acc += (double)act[r * f + i] * (double)w2[j * f + i];
            y[r * d + j] = (float)acc;
        }
    }
}

double moe_expert_flops_per_row(int64_t d, int64_t f)
{
    return 4.0 * (double)d * (double)f;
}
