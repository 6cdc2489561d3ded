#include "moesim/predict.h"

#include "moesim/capacity.h"

#include <math.h>

void moe_predict_binomial(double *dropped, double *empty, int64_t G, double q, int64_t C)
{
    q = q < 0.0 ? 0.0 : (q > 1.0 ? 1.0 : q);
    double mean = (double)G * q;
    /* E[max(C - L, 0)] = sum_{l < C} (C - l) pmf(l); only l <= G has mass. */
    double short_of_c = 0.0;
    int64_t top = C - 1 < G ? C - 1 : G;
    if (q == 0.0) {
        short_of_c = (double)C; /* L = 0 surely */
    } else if (q == 1.0) {
        short_of_c = C > G ? (double)(C - G) : 0.0;
    } else {
        double lg = lgamma((double)G + 1.0), lq = log(q), l1q = log1p(-q);
        for (int64_t l = 0; l <= top; l++) {
            double logp = lg - lgamma((double)l + 1.0) - lgamma((double)(G - l) + 1.0) +
                          (double)l * lq + (double)(G - l) * l1q;
            short_of_c += (double)(C - l) * exp(logp);
        }
    }
    *empty = short_of_c;
    /* max(L - C, 0) = L - C + max(C - L, 0) */
    double over = mean - (double)C + short_of_c;
    *dropped = over > 0.0 ? over : 0.0;
}

void moe_predict_selection(double *q, const double *P, int E, int k)
{
    for (int e = 0; e < E; e++)
        q[e] = k * P[e] > 1.0 ? 1.0 : k * P[e];
}

void moe_predict_closed_form(double *dropped, double *empty, const double *q, int E, int k, double cf,
                             const int64_t *group_tokens, int n_groups)
{
    *dropped = 0.0;
    *empty = 0.0;
    if (cf == 0.0)
        return;
    for (int g = 0; g < n_groups; g++) {
        int64_t C = moe_capacity(cf, group_tokens[g], k, E);
        for (int e = 0; e < E; e++) {
            double d, m;
            moe_predict_binomial(&d, &m, group_tokens[g], q[e], C);
            *dropped += d;
            *empty += m;
        }
    }
}

void moe_predict_exact(int64_t *dropped, int64_t *empty, const int64_t *loads, int E, int k, double cf,
                       const int64_t *group_tokens, int n_groups)
{
    *dropped = 0;
    *empty = 0;
    if (cf == 0.0)
        return;
    for (int g = 0; g < n_groups; g++) {
        int64_t C = moe_capacity(cf, group_tokens[g], k, E);
        for (int e = 0; e < E; e++) {
            int64_t L = loads[(int64_t)g * E + e];
            *dropped += L > C ? L - C : 0;
            *empty += C > L ? C - L : 0;
        }
    }
}
