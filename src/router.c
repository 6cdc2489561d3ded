#include "moesim/router.h"

#include "moesim/rng.h"
#include "moesim/simd.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* The small-E kernel: each token's E dot products in one pass over its row, while it is in cache,
 * instead of sgemm, whose packing of h costs more than its arithmetic when N = E is small. Lane l
 * of 16 sums the products at j = l mod 16 with one FMA each, in increasing j; the lanes are then
 * summed by halves (8, 4, 2, 1). AVX-512 holds the 16 lanes in one register, AVX2 in two: the same
 * operations, so the same floats at simd levels 1 and 2, and a token's logits do not depend on
 * the call (first is not needed). Eight experts and two tokens at a time in AVX-512, four experts
 * (eight registers) in AVX2: their sums stay in registers, and as many independent FMA chains hide
 * the FMA's latency (an expert past E in the last group reads expert e0's row again; its sums are
 * not stored). */
#if MOE_SIMD_X86
#include <immintrin.h>

/* Lanes l and l + 8, then l + 4, l + 2, l + 1 (pairs as halves of the register): the one order
 * both builds sum a 16-lane accumulator in; lo holds lanes 0-7, hi lanes 8-15. */
MOE_TARGET_V3 static inline __attribute__((always_inline)) float sum_halves(__m256 lo, __m256 hi)
{
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

/* mask of the first r of 8 lanes, for the products past the last whole 16 (0 <= r <= 8) */
MOE_TARGET_V3 static inline __attribute__((always_inline)) __m256i first_lanes(int64_t r)
{
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r), idx);
}

/* nt (1 or 2) tokens' logits for experts e0 .. e0 + 7 (those below E): 8 nt FMA chains, each
 * expert's row loaded once for both tokens */
MOE_TARGET_V4 static inline __attribute__((always_inline)) void
v4_group(float *z, const float *hr, const float *w, int64_t d, int E, int e0, int nt)
{
    int64_t whole = d - d % 16;
    __mmask16 tail = (__mmask16)((1u << (d % 16)) - 1u);
    int ne = E - e0 < 8 ? E - e0 : 8;
    const float *wq[8];
    __m512 a[2][8];
    for (int q = 0; q < 8; q++) {
        wq[q] = w + (int64_t)(e0 + (q < ne ? q : 0)) * d;
        a[0][q] = a[1][q] = _mm512_setzero_ps();
    }
    for (int64_t j = 0; j < whole; j += 16) {
        __m512 x0 = _mm512_loadu_ps(hr + j), x1 = nt > 1 ? _mm512_loadu_ps(hr + d + j) : x0;
        for (int q = 0; q < 8; q++) {
            __m512 wv = _mm512_loadu_ps(wq[q] + j);
            a[0][q] = _mm512_fmadd_ps(x0, wv, a[0][q]);
            if (nt > 1)
                a[1][q] = _mm512_fmadd_ps(x1, wv, a[1][q]);
        }
    }
    for (int u = 0; u < nt; u++) {
        __m512 xt = _mm512_maskz_loadu_ps(tail, hr + u * d + whole);
        for (int q = 0; q < ne; q++) {
            /* past the end: 0 * 0 added to lanes the tail does not reach */
            __m512 v = _mm512_fmadd_ps(xt, _mm512_maskz_loadu_ps(tail, wq[q] + whole), a[u][q]);
            z[u * E + e0 + q] =
                sum_halves(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
        }
    }
}

MOE_TARGET_V4 static void logits_small_v4(float *z, const float *h, const float *w, int64_t n,
                                          int64_t d, int E)
{
    int64_t t = 0;
    for (; t + 2 <= n; t += 2) /* two tokens at a time: a token's floats do not depend on it */
        for (int e0 = 0; e0 < E; e0 += 8)
            v4_group(z + t * E, h + t * d, w, d, E, e0, 2);
    for (; t < n; t++)
        for (int e0 = 0; e0 < E; e0 += 8)
            v4_group(z + t * E, h + t * d, w, d, E, e0, 1);
}

MOE_TARGET_V3 static void logits_small_v3(float *z, const float *h, const float *w, int64_t n,
                                          int64_t d, int E)
{
    int64_t whole = d - d % 16, r = d % 16;
    __m256i mlo = first_lanes(r < 8 ? r : 8), mhi = first_lanes(r > 8 ? r - 8 : 0);
    for (int64_t t = 0; t < n; t++) {
        const float *hr = h + t * d;
        __m256 xl = _mm256_maskload_ps(hr + whole, mlo);
        __m256 xh = _mm256_maskload_ps(hr + whole + 8, mhi);
        for (int e0 = 0; e0 < E; e0 += 4) { /* 4 experts x 2 registers: 8 FMA chains */
            int ne = E - e0 < 4 ? E - e0 : 4;
            const float *wq[4];
            __m256 lo[4], hi[4];
            for (int q = 0; q < 4; q++) {
                wq[q] = w + (int64_t)(e0 + (q < ne ? q : 0)) * d;
                lo[q] = hi[q] = _mm256_setzero_ps();
            }
            for (int64_t j = 0; j < whole; j += 16) {
                __m256 x0 = _mm256_loadu_ps(hr + j), x1 = _mm256_loadu_ps(hr + j + 8);
                for (int q = 0; q < 4; q++) {
                    lo[q] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(wq[q] + j), lo[q]);
                    hi[q] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(wq[q] + j + 8), hi[q]);
                }
            }
            for (int q = 0; q < ne; q++) {
                __m256 vl = _mm256_fmadd_ps(xl, _mm256_maskload_ps(wq[q] + whole, mlo), lo[q]);
                __m256 vh = _mm256_fmadd_ps(xh, _mm256_maskload_ps(wq[q] + whole + 8, mhi), hi[q]);
                z[t * E + e0 + q] = sum_halves(vl, vh);
            }
        }
    }
}
#endif

void moe_router_logits(float *z, const float *h, const float *w, int64_t first, int64_t n,
                       int64_t d, int E, float *scratch)
{
#if MOE_SIMD_X86
    int level = moe_simd_level();
    if (level > 0 && E <= MOE_ROUTER_SMALL_E) {
        (level == 2 ? logits_small_v4 : logits_small_v3)(z, h, w, n, d, E);
        return;
    }
#endif
    const int64_t B = MOE_ROUTER_BLOCK;
    float *hs = scratch, *zs = scratch + B * d;
    for (int64_t start = first - first % B; start < first + n; start += B) {
        int64_t lo = start > first ? start : first;
        int64_t hi = start + B < first + n ? start + B : first + n;
        if (lo == start && hi == start + B) { /* a whole block: z (B, E) = h (B, d) * W^T (d, E) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)B, E, (int)d, 1.0f,
                        h + (lo - first) * d, (int)d, w, (int)d, 0.0f, z + (lo - first) * E, E);
            continue;
        }
        /* a partial block: its rows at their place in the block, the others zero */
        memset(hs, 0, (size_t)(B * d) * sizeof *hs);
        memcpy(hs + (lo - start) * d, h + (lo - first) * d, (size_t)((hi - lo) * d) * sizeof *hs);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)B, E, (int)d, 1.0f, hs, (int)d, w,
                    (int)d, 0.0f, zs, E);
        memcpy(z + (lo - first) * E, zs + (lo - start) * E, (size_t)((hi - lo) * E) * sizeof *z);
    }
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

const char *moe_routing_name(moe_routing r)
{
    return r == MOE_ROUTING_EXPERT_CHOICE ? "expert-choice" : "token-choice";
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

/* One token's top-k over the experts with mask[e] != 0 (mask NULL: all E), the selection and gate
 * arithmetic of moe_topk_select; shared with moe_topk_grouped so the two agree bit for bit. */
static void topk_row(int32_t *er, float *gr, const float *pr, const float *bias, const uint8_t *mask,
                     int E, int k, bool normalize, double scale)
{
    int filled = 0;
    /* Insertion of the keys into a sorted list of at most k, kept in gr: strict '>' keeps the
     * lower id first on ties, because experts are visited in increasing id order. */
    for (int e = 0; e < E; e++) {
        if (mask != NULL && !mask[e])
            continue;
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

void moe_topk_select(int32_t *expert, float *gate, const float *p, const float *bias, int64_t n,
                     int E, int k, bool normalize, double scale)
{
    for (int64_t t = 0; t < n; t++)
        topk_row(expert + t * k, gate + t * k, p + t * E, bias, NULL, E, k, normalize, scale);
}

void moe_topk_grouped(int32_t *expert, float *gate, const float *p, const float *bias, int64_t n,
                      int E, int k, int G, int M, bool normalize, double scale, uint8_t *mask,
                      double *gscore)
{
    const int per_group = E / G, top_in_group = k / M; /* Megatron: topk // group_topk */
    for (int64_t t = 0; t < n; t++) {
        const float *pr = p + t * E;
        /* group score: the sum in double of the group's top_in_group largest keys, largest first.
         * One pass a group keeps them sorted in top[]: each key is passed down the list, the larger
         * of it and each entry staying (no data-dependent branch); only values matter, since equal
         * keys add the same whichever expert holds them */
        memset(mask, 0, (size_t)E);
        double *top = gscore + G; /* the scratch past the G scores */
        for (int g = 0; g < G; g++) {
            const int e0 = g * per_group;
            if (top_in_group <= 2) { /* DeepSeek-V3's 8 / 4: the two largest kept in registers */
                double a = -INFINITY, b = -INFINITY;
                for (int e = e0; e < e0 + per_group; e++) {
                    double v = bias != NULL ? (double)(pr[e] + bias[e]) : (double)pr[e];
                    double lo = v > a ? a : v;
                    a = v > a ? v : a;
                    b = lo > b ? lo : b;
                }
                gscore[g] = top_in_group == 1 ? a : a + b;
                continue;
            }
            for (int j = 0; j < top_in_group; j++)
                top[j] = -INFINITY;
            for (int e = e0; e < e0 + per_group; e++) {
                double v = bias != NULL ? (double)(pr[e] + bias[e]) : (double)pr[e];
                for (int j = 0; j < top_in_group; j++) {
                    double hi = v > top[j] ? v : top[j];
                    v = v > top[j] ? top[j] : v;
                    top[j] = hi;
                }
            }
            double sum = 0.0;
            for (int j = 0; j < top_in_group; j++)
                sum += top[j];
            gscore[g] = sum;
        }
        /* keep the M best groups, equal scores to the lower group id */
        for (int m = 0; m < M; m++) {
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!mask[g * per_group] && (best < 0 || gscore[g] > gscore[best]))
                    best = g;
            memset(mask + best * per_group, 1, (size_t)per_group);
        }
        topk_row(expert + t * k, gate + t * k, pr, bias, mask, E, k, normalize, scale);
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

/* softplus(x) = log(1 + e^x) without overflow: x + log1p(e^-x) for x > 0 */
static double softplus(double x)
{
    return x > 0.0 ? x + log1p(exp(-x)) : log1p(exp(x));
}

void moe_router_add_noise(float *z, const float *zn, int64_t first, int64_t n, int E,
                          uint64_t seed)
{
    /* Shazeer et al. 2017, eq. 4: H(x) = x W_g + StandardNormal() * Softplus(x W_noise); eps is
     * the generator's normal, a float32 (docs/generator.md), so NumPy can regenerate it */
    for (int64_t t = 0; t < n; t++)
        for (int e = 0; e < E; e++) {
            int64_t i = t * E + e;
            double eps = (float)moe_rng_normal(seed, MOE_STREAM_GATE_NOISE,
                                               (uint64_t)((first + t) * E + e));
            z[i] = (float)((double)z[i] + eps * softplus((double)zn[i]));
        }
}

void moe_router_jitter(float *hj, const float *h, int64_t first, int64_t n, int64_t d, double eps,
                       uint64_t seed)
{
    /* Switch Transformers, section 2.4 (multiplicative jitter U(1-eps, 1+eps) on the router input) */
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < d; j++) {
            double u = moe_rng_uniform(seed, MOE_STREAM_JITTER, (uint64_t)((first + t) * d + j));
            hj[t * d + j] = (float)((double)h[t * d + j] * (1.0 - eps + 2.0 * eps * u));
        }
}

void moe_router_reach(int64_t *hist_ranks, int64_t *hist_nodes, const int32_t *expert,
                      const uint8_t *flag, int64_t n, int slots, const int *rank_of_expert,
                      const int *node_of_rank, int max_reach, int *seen_ranks, int *seen_nodes)
{
    for (int64_t t = 0; t < n; t++) {
        const int32_t *er = expert + t * slots;
        const uint8_t *fr = flag != NULL ? flag + t * slots : NULL;
        int ranks = 0, nodes = 0;
        for (int c = 0; c < slots; c++) {
            if (er[c] < 0 || (fr != NULL && !fr[c]))
                continue;
            int r = rank_of_expert[er[c]], nd = node_of_rank[r];
            if (seen_ranks[r] < 0)
                seen_ranks[r] = 0, ranks++;
            if (seen_nodes[nd] < 0)
                seen_nodes[nd] = 0, nodes++;
        }
        /* back to all -1: only the entries this token set */
        for (int c = 0; c < slots; c++) {
            if (er[c] < 0)
                continue;
            int r = rank_of_expert[er[c]];
            seen_ranks[r] = -1;
            seen_nodes[node_of_rank[r]] = -1;
        }
        hist_ranks[ranks < max_reach ? ranks : max_reach]++;
        hist_nodes[nodes < max_reach ? nodes : max_reach]++;
    }
}

void moe_expert_bias_update(float *bias, const int64_t *loads, int E, double gamma)
{
    int64_t total = 0;
    for (int e = 0; e < E; e++)
        total += loads[e];
    /* compare loads_i * E with the total: exact in integers, no rounding of the mean */
    for (int e = 0; e < E; e++) {
        int64_t scaled = loads[e] * (int64_t)E;
        double step = scaled < total ? gamma : scaled > total ? -gamma : 0.0;
        bias[e] = (float)((double)bias[e] + step);
    }
}
