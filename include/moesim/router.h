/* Router: logits, scores (softmax or sigmoid) and top-k selection of experts for each token.
 * Shapes: h (n, d), W (E, d), z and p (n, E), expert and gate (n, k), bias (E); all row-major.
 * Sources: Shazeer et al. 2017 (softmax gating); Fedus et al. 2021, Switch Transformers (gate = p of
 * the chosen expert); Jiang et al. 2024, Mixtral (the k chosen gates renormalized to sum to 1);
 * DeepSeek-V3 technical report 2024 (sigmoid scores, a per-expert bias used for selection only,
 * the chosen scores normalized to sum 1 and multiplied by a route scale). */
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

/* How logits become scores. */
typedef enum moe_score {
    MOE_SCORE_SOFTMAX = 0, /* p = softmax(z) (Shazeer 2017, Switch, Mixtral)  */
    MOE_SCORE_SIGMOID = 1  /* s = sigmoid(z) per expert (DeepSeek-V3)          */
} moe_score;

const char *moe_score_name(moe_score s);

/* p[t] = softmax(z[t]) row by row, stable (max subtracted). p may alias z. */
void moe_softmax_rows(float *p, const float *z, int64_t n, int E);

/* s = sigmoid(z) = 1 / (1 + exp(-z)) element by element, in double and rounded once, so s is in
 * [0, 1] (exactly 0 or 1 far out). s may alias z. */
void moe_sigmoid_rows(float *s, const float *z, int64_t n, int E);

/* scores (n, E) from logits z in place of moe_softmax_rows or moe_sigmoid_rows. p may alias z. */
void moe_router_scores(float *p, const float *z, int64_t n, int E, moe_score score);

/* The probabilities of the balance figures (P_i of the aux loss, the prediction's selection
 * probabilities) from the scores of one token: softmax scores are already a distribution
 * (copied); sigmoid scores are divided by their sum over the E experts, as Megatron-Core's
 * compute_routing_scores_for_aux_loss does (all zero if they sum to 0). prob and score are (E). */
void moe_router_probs_row(float *prob, const float *score, int E, moe_score kind);

/* For each token the k experts of highest p, best first; equal probabilities go to the lower
 * expert id. gate[t][c] = p[t][expert[t][c]], or with renormalize that value divided by the sum of
 * the token's k chosen probabilities (equal to a softmax over the k chosen logits). 1 <= k <= E. */
void moe_topk(int32_t *expert, float *gate, const float *p, int64_t n, int E, int k,
              bool renormalize);

/* Top-k with a selection bias and a route scale (DeepSeek-V3; Megatron-Core
 * topk_softmax_with_capacity). For each token the k experts of highest key p[t][e] + bias[e] (a
 * float32 sum; bias NULL: the key is p, as moe_topk), best first, equal keys to the lower expert
 * id. The gate is p of the chosen expert, never the bias; with normalize it is divided by the sum
 * of the token's k chosen p (left 0 if that sum is 0); then, if scale != 1, multiplied by scale.
 * With bias NULL, normalize = renormalize and scale 1 this is moe_topk, bit for bit. */
void moe_topk_select(int32_t *expert, float *gate, const float *p, const float *bias, int64_t n,
                     int E, int k, bool normalize, double scale);

/* Accumulate the router statistics of n tokens: routed[e] += number of (token, choice) pairs that
 * chose e; psum[e] += sum over tokens of p[t][e] (double, for the aux loss's P_i). */
void moe_router_accumulate(int64_t *routed, double *psum, const int32_t *expert, const float *p,
                           int64_t n, int E, int k);

#endif
