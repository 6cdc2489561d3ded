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
    float score;      /* the selection score of (token, expert): p + b        */
    int32_t rerouted; /* 1: served by expert after a reroute (--drop-policy reroute) */
} moe_route_record;

/* z = h W^T for rows that are global tokens first .. first + n - 1 (n may be 0). With at most
 * MOE_ROUTER_SMALL_E experts at simd level 1 or 2 (simd.h), a kernel of moesim's own (the same
 * floats at both levels; src/router.c); otherwise cblas_sgemm. Each token's logits are the same
 * floats however the batch is split into calls: OpenBLAS's
 * sgemm may round a row differently with the row count it is called with (its kernels treat the
 * remainder rows apart; seen with E = 12 on a Haswell-kernel build), so every call covers blocks
 * of MOE_ROUTER_BLOCK rows aligned to the global token index, a token always at the same position
 * of a block of the same size: whole blocks in place, a partial one (at either end) through
 * scratch, zero-padded. scratch: MOE_ROUTER_BLOCK * (d + E) floats. */
#define MOE_ROUTER_BLOCK 32
#define MOE_ROUTER_SMALL_E 32
void moe_router_logits(float *z, const float *h, const float *w, int64_t first, int64_t n,
                       int64_t d, int E, float *scratch);
/* Plain-loop twin of moe_router_logits, accumulating in double. */
void moe_router_logits_ref(float *z, const float *h, const float *w, int64_t n, int64_t d, int E);

/* How logits become scores. */
typedef enum moe_score {
    MOE_SCORE_SOFTMAX = 0, /* p = softmax(z) (Shazeer 2017, Switch, Mixtral)  */
    MOE_SCORE_SIGMOID = 1  /* s = sigmoid(z) per expert (DeepSeek-V3)          */
} moe_score;

const char *moe_score_name(moe_score s);

/* Who chooses. */
typedef enum moe_routing {
    MOE_ROUTING_TOKEN_CHOICE = 0, /* each token takes its top-k experts (everything before 2022) */
    MOE_ROUTING_EXPERT_CHOICE = 1 /* each expert takes its top C tokens (Zhou et al. 2022)       */
} moe_routing;

const char *moe_routing_name(moe_routing r);

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

/* Group-limited top-k (DeepSeek-V2/V3; Megatron-Core group_limited_topk). The E experts form G
 * contiguous groups of E/G (G divides E). With key v = p + bias (p without a bias), a group's
 * score is the sum of its k/M highest keys (float32 values summed in double); each token keeps its
 * M best groups (equal scores: the lower group id) and takes its top-k inside them, exactly as
 * moe_topk_select does over the kept experts (gate = p, normalize, scale). Requires 1 <= M <= G,
 * M <= k and k <= M * E / G. mask is scratch of E bytes, gscore of G + k / M doubles. */
void moe_topk_grouped(int32_t *expert, float *gate, const float *p, const float *bias, int64_t n,
                      int E, int k, int G, int M, bool normalize, double scale, uint8_t *mask,
                      double *gscore);

/* Noisy top-k logits (Shazeer et al. 2017, eq. 3-5): z[t][e] += eps * softplus(zn[t][e]) with
 * eps = normal(seed, MOE_STREAM_GATE_NOISE, (first + t) * E + e) and zn = h W_noise^T the noise
 * logits (n, E) (W_noise from stream MOE_STREAM_ROUTER_NOISE like W). softplus(x) =
 * log1p(exp(x)), computed stably in double. */
void moe_router_add_noise(float *z, const float *zn, int64_t first, int64_t n, int E,
                          uint64_t seed);

/* Input jitter (Switch Transformers; Megatron --moe-input-jitter-eps): hj[t][j] = h[t][j] * u,
 * u = 1 - eps + 2 eps * uniform(seed, MOE_STREAM_JITTER, (first + t) * d + j), for routing only.
 * hj may alias h. */
void moe_router_jitter(float *hj, const float *h, int64_t first, int64_t n, int64_t d, double eps,
                       uint64_t seed);

/* How far tokens reach: for each token, the distinct ranks and nodes among the experts of its
 * slots with flag != 0 (flag NULL: every slot; expert < 0 slots are skipped). rank_of_expert (E),
 * node_of_rank (R). hist_ranks[j] / hist_nodes[j] += tokens reaching exactly j (room for
 * max_reach + 1 entries; more is counted in the last). seen is scratch of max(R, nodes) ints,
 * all -1 on entry and on return. */
void moe_router_reach(int64_t *hist_ranks, int64_t *hist_nodes, const int32_t *expert,
                      const uint8_t *flag, int64_t n, int slots, const int *rank_of_expert,
                      const int *node_of_rank, int max_reach, int *seen_ranks, int *seen_nodes);

/* Accumulate the router statistics of n tokens: routed[e] += number of (token, choice) pairs that
 * chose e; psum[e] += sum over tokens of p[t][e] (double, for the aux loss's P_i). */
void moe_router_accumulate(int64_t *routed, double *psum, const int32_t *expert, const float *p,
                           int64_t n, int E, int k);

/* DeepSeek-V3's auxiliary-loss-free balancing (Wang et al. 2024): after a step with loads[i]
 * assignments routed to expert i (before capacity, over the whole batch), b_i += gamma ·
 * sign(mean - loads_i), mean = Σ loads / E, sign(0) = 0: an overloaded expert's selection bias
 * falls, an underloaded one's rises, by gamma each step. The bias enters selection only. */
void moe_expert_bias_update(float *bias, const int64_t *loads, int E, double gamma);

#endif
