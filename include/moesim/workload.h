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
void moe_workload_clustered_tokens(float *h, uint64_t seed, int64_t first, int64_t count, int64_t d,
                                   int64_t clusters);

#endif
