#include "moesim/capacity.h"

#include "moesim/tokens.h"

#include <float.h>
#include <math.h>

const char *moe_scope_name(moe_scope s)
{
    return s == MOE_SCOPE_LOCAL ? "local" : "global";
}

const char *moe_policy_name(moe_policy p)
{
    switch (p) {
    case MOE_POLICY_PROBS:
        return "probs";
    case MOE_POLICY_CHOICE:
        return "choice";
    case MOE_POLICY_RANDOM:
        return "random";
    case MOE_POLICY_REROUTE:
        return "reroute";
    case MOE_POLICY_POSITION:
    default:
        return "position";
    }
}

int64_t moe_group_capacity(double cf, int64_t group_tokens, int k, int E, int64_t min_capacity)
{
    if (cf == 0.0)
        return MOE_CAPACITY_UNLIMITED;
    double slots = cf * (double)group_tokens * (double)k / (double)E;
    /* A product that is an integer up to binary rounding counts as that integer: the tolerance is
     * 16 ulps of the value, so a tiny but genuine fraction (cf 1e-9) still rounds up. */
    double nearest = nearbyint(slots);
    double tol = 16.0 * DBL_EPSILON * slots;
    int64_t c = fabs(slots - nearest) <= tol ? (int64_t)nearest : (int64_t)ceil(slots);
    /* DeepSpeed's floor (sharded_moe.py: capacity = max(capacity, min_capacity)) */
    return c > min_capacity ? c : min_capacity;
}

int64_t moe_capacity(double cf, int64_t group_tokens, int k, int E)
{
    return moe_group_capacity(cf, group_tokens, k, E, 0);
}

int moe_capacity_groups(int64_t *group_tokens, moe_scope scope, int64_t n_tokens, int R)
{
    return moe_capacity_groups_blocks(group_tokens, scope, n_tokens, R, NULL);
}

int moe_capacity_groups_blocks(int64_t *group_tokens, moe_scope scope, int64_t n_tokens, int R,
                               const int64_t *per_rank)
{
    if (scope == MOE_SCOPE_GLOBAL) {
        group_tokens[0] = n_tokens;
        return 1;
    }
    for (int s = 0; s < R; s++) {
        int64_t first;
        moe_token_block(per_rank, n_tokens, R, s, &first, &group_tokens[s]);
    }
    return R;
}

void moe_group_capacities(int64_t *cap, double cf, const int64_t *group_tokens, int n_groups, int k,
                          int E, int64_t min_capacity)
{
    for (int g = 0; g < n_groups; g++)
        cap[g] = moe_group_capacity(cf, group_tokens[g], k, E, min_capacity);
}

void moe_group_capacities_at_most_group(int64_t *cap, const int64_t *group_tokens, int n_groups)
{
    for (int g = 0; g < n_groups; g++)
        if (cap[g] != MOE_CAPACITY_UNLIMITED && cap[g] > group_tokens[g])
            cap[g] = group_tokens[g];
}

int64_t moe_capacity_sum(const int64_t *cap, int n_groups)
{
    int64_t sum = 0;
    for (int g = 0; g < n_groups; g++) {
        if (cap[g] == MOE_CAPACITY_UNLIMITED)
            return MOE_CAPACITY_UNLIMITED;
        sum += cap[g];
    }
    return sum;
}

void moe_capacity_needed(int64_t *max_load, double *cf_needed, const int64_t *loads,
                         const int64_t *group_tokens, int n_groups, int n_exp, int k, int E)
{
    *max_load = 0;
    *cf_needed = 0.0;
    for (int g = 0; g < n_groups; g++) {
        int64_t top = 0;
        for (int e = 0; e < n_exp; e++) {
            int64_t L = loads[(int64_t)g * n_exp + e];
            top = L > top ? L : top;
        }
        *max_load = top > *max_load ? top : *max_load;
        if (group_tokens[g] <= 0 || top == 0)
            continue;
        /* C = ceil(cf G k / E) >= L  <=  cf G k / E >= L: cf = L E / (G k), within two roundings
         * of the exact ratio, so that the capacity's 16-ulp guard gives exactly L slots. */
        double need = (double)top * (double)E / ((double)group_tokens[g] * (double)k);
        *cf_needed = need > *cf_needed ? need : *cf_needed;
    }
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
