#include "moesim/predict.h"

#include "moesim/capacity.h"

#include <math.h>

void moe_predict_binomial(double *dropped, double *empty, int64_t G, double q, int64_t C)
{
    q = q < 0.0 ? 0.0 : (q > 1.0 ? 1.0 : q);
    if (q == 0.0 || q == 1.0 || G == 0) {
        int64_t L = q == 1.0 ? G : 0; /* the load is certain */
        *dropped = L > C ? (double)(L - C) : 0.0;
        *empty = C > L ? (double)(C - L) : 0.0;
        return;
    }
    /* Sum both sides directly, each to its own relative precision, over the window where the
     * mass lives: mean +- (40 standard deviations + 40). Outside it the mass is negligible both for
     * a wide binomial (beyond 40 sd, below e^-800) and a narrow, Poisson-like one (beyond 40 counts
     * from a mean m < 1, about m^40 / 40!). The pmf is stepped by its ratio in log space from a
     * start computed with lgamma. */
    double mean = (double)G * q, sd = sqrt(mean * (1.0 - q));
    int64_t lo = (int64_t)fmax(0.0, floor(mean - 40.0 * sd - 40.0));
    int64_t hi = (int64_t)fmin((double)G, ceil(mean + 40.0 * sd + 40.0));
    const double lq = log(q), l1q = log1p(-q), lgG = lgamma((double)G + 1.0);
    double odds = lq - l1q, over = 0.0, under = 0.0, mass = 0.0, logp = 0.0;
    for (int64_t l = lo; l <= hi; l++) {
        /* re-anchor every 32 steps so the recurrence's rounding cannot drift */
        if ((l - lo) % 32 == 0)
            logp = lgG - lgamma((double)l + 1.0) - lgamma((double)(G - l) + 1.0) + (double)l * lq +
                   (double)(G - l) * l1q;
        double p = exp(logp);
        mass += p;
        if (l > C)
            over += (double)(l - C) * p;
        else
            under += (double)(C - l) * p;
        logp += log((double)(G - l)) - log((double)(l + 1)) + odds;
    }
    /* The smaller side is summed (normalised by the mass, which cancels the common rounding of the
     * lgamma terms); the larger follows from E[empty] - E[dropped] = C - G q, exact in the mean. */
    if ((double)C >= mean) {
        *dropped = over / mass;
        *empty = (double)C - mean + *dropped;
    } else {
        *empty = under / mass;
        *dropped = mean - (double)C + *empty;
    }
}

void moe_predict_selection(double *q, const double *P, int E, int k)
{
    for (int e = 0; e < E; e++)
        q[e] = k * P[e] > 1.0 ? 1.0 : k * P[e];
}

/* One group of G tokens with capacity C: the closed form summed over the experts. */
static void closed_form_group(double *dropped, double *empty, const double *q, int E, int64_t G,
                              int64_t C)
{
    for (int e = 0; e < E; e++) {
        double d, m;
        moe_predict_binomial(&d, &m, G, q[e], C);
        *dropped += d;
        *empty += m;
    }
}

/* One group's loads (E) against capacity C. */
static void exact_group(int64_t *dropped, int64_t *empty, const int64_t *loads, int E, int64_t C)
{
    for (int e = 0; e < E; e++) {
        int64_t L = loads[e];
        *dropped += L > C ? L - C : 0;
        *empty += C > L ? C - L : 0;
    }
}

void moe_predict_closed_form(double *dropped, double *empty, const double *q, int E, int k, double cf,
                             const int64_t *group_tokens, int n_groups)
{
    *dropped = 0.0;
    *empty = 0.0;
    if (cf == 0.0)
        return;
    for (int g = 0; g < n_groups; g++)
        closed_form_group(dropped, empty, q, E, group_tokens[g],
                          moe_capacity(cf, group_tokens[g], k, E));
}

void moe_predict_closed_form_caps(double *dropped, double *empty, const double *q, int E,
                                  const int64_t *group_tokens, const int64_t *group_cap,
                                  int n_groups)
{
    *dropped = 0.0;
    *empty = 0.0;
    for (int g = 0; g < n_groups; g++)
        if (group_cap[g] != MOE_CAPACITY_UNLIMITED)
            closed_form_group(dropped, empty, q, E, group_tokens[g], group_cap[g]);
}

void moe_predict_exact(int64_t *dropped, int64_t *empty, const int64_t *loads, int E, int k, double cf,
                       const int64_t *group_tokens, int n_groups)
{
    *dropped = 0;
    *empty = 0;
    if (cf == 0.0)
        return;
    for (int g = 0; g < n_groups; g++)
        exact_group(dropped, empty, loads + (int64_t)g * E, E,
                    moe_capacity(cf, group_tokens[g], k, E));
}

void moe_predict_exact_caps(int64_t *dropped, int64_t *empty, const int64_t *loads, int E,
                            const int64_t *group_cap, int n_groups)
{
    *dropped = 0;
    *empty = 0;
    for (int g = 0; g < n_groups; g++)
        if (group_cap[g] != MOE_CAPACITY_UNLIMITED)
            exact_group(dropped, empty, loads + (int64_t)g * E, E, group_cap[g]);
}
