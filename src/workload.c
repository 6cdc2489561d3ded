#include "moesim/workload.h"

#include "moesim/rng.h"
#include "moesim/tokens.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

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

void moe_workload_add_mean(float *h, uint64_t seed, int64_t count, int64_t d, double mu)
{
    for (int64_t j = 0; j < d; j++) {
        double m = mu * moe_rng_normal(seed, MOE_STREAM_CENTRES, (UINT64_C(1) << 61) + (uint64_t)j);
        for (int64_t r = 0; r < count; r++)
            h[r * d + j] = (float)((double)h[r * d + j] + m);
    }
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

static const char *const wl_names[MOE_WL_COUNT] = {
    "none",  "balanced", "hot-experts", "hot-rank", "spread-hot", "zero-expert-rank",
    "rotating-hotspot", "burst", "source-ragged"};

const char *moe_wl_name(moe_wl_kind kind)
{
    return kind >= 0 && kind < MOE_WL_COUNT ? wl_names[kind] : "?";
}

/* hot-experts and burst: the n_hot experts of smallest key u64(seed, stream, 2^62 + e), ties to
 * the lower id (a seeded choice without replacement, the same for every step) */
static void seeded_hot(uint8_t *hot, const moe_wl *w)
{
    for (int j = 0; j < w->n_hot; j++) {
        int best = -1;
        uint64_t best_key = 0;
        for (int e = 0; e < w->E; e++) {
            uint64_t key = moe_rng_u64(w->seed, MOE_STREAM_WORKLOAD, (UINT64_C(1) << 62) + e);
            if (!hot[e] && (best < 0 || key < best_key)) {
                best = e;
                best_key = key;
            }
        }
        hot[best] = 1;
    }
}

int moe_wl_hot_set(uint8_t *hot, const moe_wl *w, int step)
{
    int E = w->E, n = w->n_hot;
    memset(hot, 0, (size_t)E);
    switch (w->kind) {
    case MOE_WL_HOT:
        seeded_hot(hot, w);
        break;
    case MOE_WL_BURST:
        if (step % w->period == w->period - 1)
            seeded_hot(hot, w);
        break;
    case MOE_WL_HOT_RANK:
        for (int e = 0; e < n; e++)
            hot[e] = 1;
        break;
    case MOE_WL_SPREAD:
        for (int j = 0; j < n; j++)
            hot[(int64_t)j * E / n] = 1;
        break;
    case MOE_WL_ROTATE: {
        int64_t origin = (int64_t)n * (step / w->period) % E;
        for (int i = 0; i < n; i++)
            hot[(origin + i) % E] = 1;
        break;
    }
    default: /* balanced, zero-expert-rank, source-ragged */
        break;
    }
    int size = 0;
    for (int e = 0; e < E; e++)
        size += hot[e];
    return size;
}

/* The j-th expert (0-based, id order) with mark[e] == want among [0, limit) */
static int nth_marked(const uint8_t *mark, uint8_t want, int limit, int64_t j)
{
    for (int e = 0; e < limit; e++)
        if (mark[e] == want && j-- == 0)
            return e;
    return -1;
}

void moe_wl_route(int32_t *expert, float *gate, float *probs, const moe_wl *w, const uint8_t *hot,
                  int step, int64_t first, int64_t n)
{
    int E = w->E, k = w->k, limit = w->kind == MOE_WL_ZERO ? w->zero_first : E;
    int n_hot = 0;
    for (int e = 0; e < limit; e++)
        n_hot += hot[e];
    /* mark: 0 cold, 1 hot, 2 chosen by this token (reset after it) */
    uint8_t *mark = malloc((size_t)E);
    if (mark == NULL)
        return; /* the caller sized everything; E bytes cannot fail in practice */
    memcpy(mark, hot, (size_t)E);
    int32_t ch[MOE_WL_MAX_K];
    double wt[MOE_WL_MAX_K];
    for (int64_t t = 0; t < n; t++) {
        int hot_left = n_hot, cold_left = limit - n_hot;
        uint64_t base = ((uint64_t)step * (uint64_t)w->tokens + (uint64_t)(first + t)) * (uint64_t)k;
        double sum = 0;
        for (int c = 0; c < k; c++) {
            uint64_t ctr = 3 * (base + (uint64_t)c);
            double u0 = moe_rng_uniform(w->seed, MOE_STREAM_WORKLOAD, ctr);
            double u1 = moe_rng_uniform(w->seed, MOE_STREAM_WORKLOAD, ctr + 1);
            double u2 = moe_rng_uniform(w->seed, MOE_STREAM_WORKLOAD, ctr + 2);
            bool take_hot = hot_left > 0 && (cold_left == 0 || u0 < w->hot_share);
            int64_t size = take_hot ? hot_left : cold_left;
            int64_t j = (int64_t)(u1 * (double)size);
            j = j < size ? j : size - 1;
            int e = nth_marked(mark, take_hot ? 1 : 0, limit, j);
            mark[e] = 2;
            if (take_hot)
                hot_left--;
            else
                cold_left--;
            ch[c] = e;
            wt[c] = u2;
            sum += u2;
        }
        /* best gate first, ties to the lower id (insertion sort of k) */
        for (int a = 1; a < k; a++)
            for (int b = a; b > 0 && (wt[b] > wt[b - 1] || (wt[b] == wt[b - 1] && ch[b] < ch[b - 1]));
                 b--) {
                double tw = wt[b];
                int32_t te = ch[b];
                wt[b] = wt[b - 1], ch[b] = ch[b - 1];
                wt[b - 1] = tw, ch[b - 1] = te;
            }
        if (probs != NULL)
            memset(probs + t * E, 0, (size_t)E * sizeof *probs);
        for (int c = 0; c < k; c++) {
            expert[t * k + c] = ch[c];
            gate[t * k + c] = (float)(wt[c] / sum);
            if (probs != NULL)
                probs[t * E + ch[c]] = gate[t * k + c];
            mark[ch[c]] = hot[ch[c]];
        }
    }
    free(mark);
}
