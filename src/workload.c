#include "moesim/workload.h"

#include "moesim/rng.h"
#include "moesim/tokens.h"

#include <math.h>

void moe_workload_bias(float *bias, int E, double skew, int hot_n, double hot_bias)
{
    for (int e = 0; e < E; e++)
        bias[e] = (float)(-skew * log((double)e + 1.0) + (e < hot_n ? hot_bias : 0.0));
}

void moe_workload_add_bias(float *z, const float *bias, int64_t n, int E)
{
    for (int64_t t = 0; t < n; t++)
        for (int e = 0; e < E; e++)
            z[t * E + e] += bias[e];
}

int64_t moe_workload_hot_tokens(const int32_t *expert, int64_t n, int k, int hot_n)
{
    int64_t hot = 0;
    for (int64_t t = 0; t < n; t++) {
        int any = 0;
        for (int c = 0; c < k; c++)
            any |= expert[t * k + c] < hot_n;
        hot += any;
    }
    return hot;
}

int64_t moe_workload_cluster_of(uint64_t seed, int64_t g, int64_t clusters)
{
    /* counters from 2^62 up: far from the ones the centres use */
    return (int64_t)(moe_rng_u64(seed, MOE_STREAM_CENTRES, (UINT64_C(1) << 62) + (uint64_t)g) %
                     (uint64_t)clusters);
}

void moe_workload_clustered_tokens(float *h, uint64_t seed, int64_t first, int64_t count, int64_t d,
                                   int64_t clusters)
{
    moe_tokens_generate(h, seed, first, count, d); /* the noise n_g */
    const double scale = 1.0 / sqrt(1.25);
    for (int64_t r = 0; r < count; r++) {
        int64_t m = moe_workload_cluster_of(seed, first + r, clusters);
        for (int64_t j = 0; j < d; j++) {
            double centre = moe_rng_normal(seed, MOE_STREAM_CENTRES, (uint64_t)(m * d + j));
            h[r * d + j] = (float)((centre + 0.5 * h[r * d + j]) * scale);
        }
    }
}
