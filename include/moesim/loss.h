/* Balance figures of a routing: the auxiliary losses a trainer would add and the shape of the load
 * over experts and ranks. Pure: no MPI. Sources, one line each, in docs/model.md.
 *
 *   z-loss (Zoph et al. 2022, ST-MoE eq. 5)      mean over tokens of logsumexp(z)^2
 *   importance CV^2 (Shazeer et al. 2017 sec. 4) importance_e = sum over tokens of e's gate;
 *                                                population variance over the squared mean
 *   entropy                                      -sum s_e ln s_e of the shares s_e = routed_e / sum
 *   Gini coefficient                             mean absolute difference over twice the mean
 *                                                (no n - 1 correction)
 *   tokens per expert                            min, max, mean, population std of routed_e
 *   max over mean                                the hottest expert's routed count over the mean
 *   rank overload (Megatron-Core)                rows the busiest rank computes over the mean */
#ifndef MOESIM_LOSS_H
#define MOESIM_LOSS_H

#include <stdint.h>

typedef struct moe_balance {
    double z_loss, importance_cv2;
    double entropy, gini, max_over_mean;
    double tpe_min, tpe_max, tpe_mean, tpe_std; /* tokens (assignments) per expert */
    double rank_overload;                       /* < 0 when unknown (nothing computed) */
} moe_balance;

/* lse[t] = logsumexp of the logits row z[t] (n, E), in double, stable (max subtracted). */
void moe_logsumexp_rows(double *lse, const float *z, int64_t n, int E);

/* The count figures over routed (E): entropy, Gini, max over mean, tokens per expert. All zero
 * when nothing is routed. */
void moe_balance_from_counts(moe_balance *b, const int64_t *routed, int E);

/* Gini coefficient of n >= 1 non-negative values in O(n log n) (sorted form), and its O(n^2)
 * twin from the definition (mean absolute difference over twice the mean). 0 when all are 0. */
double moe_gini(const double *x, int n);
double moe_gini_ref(const double *x, int n);

/* Population variance over the squared mean of n values; 0 when the mean is 0. */
double moe_cv2(const double *x, int n);

/* Largest over mean of n values (rows per rank); 0 when the mean is 0. */
double moe_max_over_mean(const double *x, int n);

#endif
