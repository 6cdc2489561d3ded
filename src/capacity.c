#include "moesim/capacity.h"

#include <float.h>
#include <math.h>

const char *moe_scope_name(moe_scope s)
{
    return s == MOE_SCOPE_LOCAL ? "local" : "global";
}

const char *moe_policy_name(moe_policy p)
{
    (void)p;
    return "position";
}

int64_t moe_capacity(double cf, int64_t group_tokens, int k, int E)
{
    if (cf == 0.0)
        return MOE_CAPACITY_UNLIMITED;
    double slots = cf * (double)group_tokens * (double)k / (double)E;
    /* A product that is an integer up to binary rounding counts as that integer: the tolerance is
     * 16 ulps of the value, so a tiny but genuine fraction (cf 1e-9) still rounds up. */
    double nearest = nearbyint(slots);
    double tol = 16.0 * DBL_EPSILON * slots;
    if (fabs(slots - nearest) <= tol)
        return (int64_t)nearest;
    return (int64_t)ceil(slots);
}

void moe_overflow_position(int64_t *accepted, const int64_t *counts, int n_src, int n_exp,
                           int64_t capacity)
{
    for (int e = 0; e < n_exp; e++) {
        int64_t used = 0;
        for (int s = 0; s < n_src; s++) {
            int64_t want = counts[(int64_t)s * n_exp + e];
            int64_t take = want;
            if (capacity != MOE_CAPACITY_UNLIMITED) {
                int64_t left = capacity - used > 0 ? capacity - used : 0;
                take = want < left ? want : left;
            }
            accepted[(int64_t)s * n_exp + e] = take;
            used += take;
        }
    }
}

void moe_mark_accepted(uint8_t *flag, const int32_t *expert, int64_t n, int k, int E,
                       const int64_t *accepted_per_expert, int64_t *seen)
{
    for (int e = 0; e < E; e++)
        seen[e] = 0;
    for (int64_t i = 0; i < n * k; i++) {
        int e = expert[i];
        flag[i] = seen[e] < accepted_per_expert[e];
        seen[e]++;
    }
}

void moe_overflow_position_ref(uint8_t *flag, const int32_t *expert, int64_t n, int k, int E,
                               int64_t capacity, int64_t *load)
{
    for (int e = 0; e < E; e++)
        load[e] = 0;
    for (int64_t t = 0; t < n; t++)
        for (int c = 0; c < k; c++) {
            int e = expert[t * k + c];
            flag[t * k + c] = capacity == MOE_CAPACITY_UNLIMITED || load[e] < capacity;
            load[e]++;
        }
}
