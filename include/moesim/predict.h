/* Predictions of drops and empty slots, before anything moves. Pure.
 *
 * Closed form ("from the router alone"): in a capacity group of G tokens drawn independently, the
 * number of tokens that select expert i is L_i ~ Binomial(G, q_i), exactly, whatever k is, because
 * each token selects expert i at most once. q_i is the selection probability; moesim estimates it
 * from the router as min(1, k * P_i), P_i the batch's mean gate probability (or k/E for a perfectly
 * uniform router). Then per expert and group, with C slots:
 *     E[dropped] = E[max(L - C, 0)],   E[empty] = E[max(C - L, 0)] = C - G q + E[dropped].
 * Exact ("from the counts"): with the loads L known after the count exchange, dropped = max(L - C, 0)
 * and empty = max(C - L, 0) per expert and group; no payload needs to move. */
#ifndef MOESIM_PREDICT_H
#define MOESIM_PREDICT_H

#include <stdint.h>

/* For L ~ Binomial(G, q), q clamped to [0, 1]: *dropped = E[max(L - C, 0)], *empty = E[max(C - L, 0)].
 * The smaller of the two is summed over the probability mass within 40 standard deviations + 40 of
 * the mean (the rest is negligible), to its own relative precision; the other follows from
 * E[empty] - E[dropped] = C - G q. O(sqrt(G q (1 - q))). C >= 0. */
void moe_predict_binomial(double *dropped, double *empty, int64_t G, double q, int64_t C);

/* Sum of moe_predict_binomial over E experts (selection probabilities q, E values) and n_groups
 * groups of group_tokens[g] tokens, each with capacity moe_capacity(cf, group_tokens[g], k, E).
 * cf == 0 (dropless) gives 0 and 0. */
void moe_predict_closed_form(double *dropped, double *empty, const double *q, int E, int k, double cf,
                             const int64_t *group_tokens, int n_groups);

/* The same with each group's capacity given: group_cap[g] from moe_group_capacities (capacity.h),
 * so a --min-capacity floor counts; MOE_CAPACITY_UNLIMITED (dropless) gives 0 and 0. */
void moe_predict_closed_form_caps(double *dropped, double *empty, const double *q, int E,
                                  const int64_t *group_tokens, const int64_t *group_cap,
                                  int n_groups);

/* Selection probabilities from mean gate probabilities: q[i] = min(1, k * P[i]). */
void moe_predict_selection(double *q, const double *P, int E, int k);

/* Exact drops and empty slots from the loads: loads is (n_groups, E), loads[g][e] the assignments
 * group g routes to expert e; group g has capacity moe_capacity(cf, group_tokens[g], k, E). */
void moe_predict_exact(int64_t *dropped, int64_t *empty, const int64_t *loads, int E, int k, double cf,
                       const int64_t *group_tokens, int n_groups);

/* The same with each group's capacity given (moe_group_capacities). */
void moe_predict_exact_caps(int64_t *dropped, int64_t *empty, const int64_t *loads, int E,
                            const int64_t *group_cap, int n_groups);

#endif
