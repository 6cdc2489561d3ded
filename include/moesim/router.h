/* Router: logits, softmax and top-k selection of experts for each token.
 * Shapes: h (n, d), W (E, d), z and p (n, E), expert and gate (n, k); all row-major.
 * Sources: Shazeer et al. 2017 (softmax gating); Fedus et al. 2021, Switch Transformers (gate = p of
 * the chosen expert); Jiang et al. 2024, Mixtral (the k chosen gates renormalized to sum to 1). */
#ifndef MOESIM_ROUTER_H
#define MOESIM_ROUTER_H

#include <stdbool.h>
#include <stdint.h>

/* One routing decision, as --dump-routing writes it. */
typedef struct moe_route_record {
    int64_t token;
    int32_t choice, expert;
    float gate;
    int32_t accepted;
} moe_route_record;

/* z = h W^T with cblas_sgemm. n may be 0. */
void moe_router_logits(float *z, const float *h, const float *w, int64_t n, int64_t d, int E);
/* Plain-loop twin of moe_router_logits, accumulating in double. */
void moe_router_logits_ref(float *z, const float *h, const float *w, int64_t n, int64_t d, int E);

/* p[t] = softmax(z[t]) row by row, stable (max subtracted). p may alias z. */
void moe_softmax_rows(float *p, const float *z, int64_t n, int E);

/* For each token the k experts of highest p, best first; equal probabilities go to the lower
 * expert id. gate[t][c] = p[t][expert[t][c]], or with renormalize that value divided by the sum of
 * the token's k chosen probabilities (equal to a softmax over the k chosen logits). 1 <= k <= E. */
void moe_topk(int32_t *expert, float *gate, const float *p, int64_t n, int E, int k,
              bool renormalize);

/* Accumulate the router statistics of n tokens: routed[e] += number of (token, choice) pairs that
 * chose e; psum[e] += sum over tokens of p[t][e] (double, for the aux loss's P_i). */
void moe_router_accumulate(int64_t *routed, double *psum, const int32_t *expert, const float *p,
                           int64_t n, int E, int k);

#endif
