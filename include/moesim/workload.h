/* Workloads with imbalance you can dial. Pure.
 * - Skew: a router bias b_e = -s ln(e + 1) added to the logits makes expert popularity fall off as a
 *   Zipf-like law, p_e roughly proportional to (e + 1)^-s (exactly so when the logits are otherwise
 *   equal). s = 0 is the seed's uniform router.
 * - Hot experts: the first n experts get an extra bias b_hot, chosen by the driver (bisection over the
 *   batch) so that a chosen share of the tokens routes to at least one hot expert.
 * - Clusters: token g sits near one of c centres, h_g = (m_{c(g)} + 0.5 n_g) / sqrt(1.25), so routing
 *   is correlated: tokens of one cluster tend to pick the same experts. */
#ifndef MOESIM_WORKLOAD_H
#define MOESIM_WORKLOAD_H

#include <stdint.h>
#include <stddef.h>

/* bias (E) = -skew * ln(e + 1) + (e < hot_n ? hot_bias : 0). */
void moe_workload_bias(float *bias, int E, double skew, int hot_n, double hot_bias);

/* z[t][e] += bias[e] for n rows. */
void moe_workload_add_bias(float *z, const float *bias, int64_t n, int E);

/* Tokens among the n whose top-k (in expert (n, k)) contains an expert id below hot_n. */
int64_t moe_workload_hot_tokens(const int32_t *expert, int64_t n, int k, int hot_n);

/* Cluster of global token g among c: u64(seed, MOE_STREAM_CENTRES, 2^62 + g) mod c. */
int64_t moe_workload_cluster_of(uint64_t seed, int64_t g, int64_t clusters);

/* h (count, d) for global tokens [first, first + count) around `clusters` centres; centre m has
 * entries normal(seed, MOE_STREAM_CENTRES, m*d + j), the noise is the plain token generator's. */
/* --token-mean MU: h[r][j] += MU m_j in double, rounded once, m_j = normal(seed,
 * MOE_STREAM_CENTRES, 2^61 + j): every token shares one mean direction, as the hidden states of
 * a trained model do (docs/training.md: without it no router collapses on isotropic tokens). */
void moe_workload_add_mean(float *h, uint64_t seed, int64_t count, int64_t d, double mu);

void moe_workload_clustered_tokens(float *h, uint64_t seed, int64_t first, int64_t count, int64_t d,
                                   int64_t clusters);

/* Workloads defined on the routing itself (--workload; Megatron-Core's token-imbalance benchmark,
 * NVIDIA/Megatron-LM pull request 7488): each token's k distinct experts and gates come from
 * (seed, step, token) alone, with no router, so the same logical routing runs at any rank count
 * and hidden size. docs/workloads.md defines every kind. */
#define MOE_WL_MAX_K 64 /* top-k of a --workload */

typedef enum {
    MOE_WL_NONE,     /* the router decides                                              */
    MOE_WL_BALANCED, /* uniform over the experts                                        */
    MOE_WL_HOT,      /* hot-experts: a hot set drawn from the seed                      */
    MOE_WL_HOT_RANK, /* hot-rank: the first N experts (rank 0's)                        */
    MOE_WL_SPREAD,   /* spread-hot: N experts evenly spaced, on N different ranks       */
    MOE_WL_ZERO,     /* zero-expert-rank: the last rank's experts get nothing           */
    MOE_WL_ROTATE,   /* rotating-hotspot: a block of N experts that moves every P steps */
    MOE_WL_BURST,    /* burst: balanced steps, every P-th step hot-experts              */
    MOE_WL_RAGGED,   /* source-ragged: balanced routing, ranks holding unequal token
                      * blocks (--tokens-per-rank, else a share of rank r + 1)          */
    MOE_WL_COUNT
} moe_wl_kind;

const char *moe_wl_name(moe_wl_kind kind);

typedef struct moe_wl {
    moe_wl_kind kind;
    int E, k;
    int n_hot;        /* the hot set's size (--hot-experts; default max(1, E/8)) */
    double hot_share; /* the share of assignments the hot set receives (--hot-share 0.5) */
    int period;       /* rotating-hotspot and burst: P (--period) */
    int zero_first;   /* zero-expert-rank: experts [zero_first, E) get nothing (the last rank's) */
    int64_t tokens;   /* N, the batch: the counters of step t start at t N */
    uint64_t seed;
} moe_wl;

/* The hot set of step `step` into hot (E flags, 1 = hot); returns its size (0: a balanced
 * step). Experts at or above zero_first are never hot (zero-expert-rank has no hot set). */
int moe_wl_hot_set(uint8_t *hot, const moe_wl *w, int step);

/* Tokens [first, first + n) of the batch of step `step`: expert and gate (n, k), the k distinct
 * experts best gate first (ties to the lower id), gates summing to 1; probs (n, E), when not
 * NULL, the gates at the chosen experts and 0 elsewhere. hot: moe_wl_hot_set's flags for the
 * step. Per slot c of token g, three uniforms u0, u1, u2 of (seed, MOE_STREAM_WORKLOAD,
 * 3 ((step N + g) k + c) + 0, 1, 2): the slot takes a hot expert when one is left and (no cold
 * one is left or u0 < hot_share), else a cold one (never one of the zero set); the floor(u1 |S|)-th
 * of the set S left, in id order; weight u2. Gates: weights over their sum. */
void moe_wl_route(int32_t *expert, float *gate, float *probs, const moe_wl *w, const uint8_t *hot,
                  int step, int64_t first, int64_t n);

#endif
