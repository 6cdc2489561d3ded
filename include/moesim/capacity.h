/* Capacity and overflow: how many assignments each expert serves, and which ones.
 * C = max(ceil(cf * G * k / E), min_capacity) slots per expert per capacity group of G tokens
 * (GShard, Lepikhin et al. 2020; Megatron-Core moe_utils.get_capacity; the floor is DeepSpeed's
 * min_capacity); cf = 0 means dropless (no cap). This is the only place group capacities are
 * computed: the layer, the prediction and the memory estimate all ask here. */
#ifndef MOESIM_CAPACITY_H
#define MOESIM_CAPACITY_H

#include <stdint.h>

/* Returned by moe_capacity for cf == 0: no cap. */
#define MOE_CAPACITY_UNLIMITED INT64_C(-1)

/* Where capacity is counted. */
typedef enum moe_scope {
    MOE_SCOPE_GLOBAL = 0, /* one group: the whole batch (FastMoE, MegaBlocks)              */
    MOE_SCOPE_LOCAL = 1   /* each source rank is a group (GShard, Switch, DeepSpeed, Megatron) */
} moe_scope;

/* Which assignments overflow when an expert is over capacity. */
typedef enum moe_policy {
    MOE_POLICY_POSITION = 0, /* earlier token ids first (Switch; Megatron "position")            */
    MOE_POLICY_PROBS = 1,    /* higher gate first (Megatron "probs"; V-MoE batch priority)        */
    MOE_POLICY_CHOICE = 2,   /* all first choices before any second (GShard, DeepSpeed, Tutel)    */
    MOE_POLICY_RANDOM = 3,   /* a random order (DeepSpeed random token selection)                 */
    MOE_POLICY_REROUTE = 4   /* position, then an overflowing assignment moves to the token's
                              * next-best expert with room, in rounds (overflow.h)               */
} moe_policy;

const char *moe_scope_name(moe_scope s);
const char *moe_policy_name(moe_policy p);

/* Slots per expert for a group of `group_tokens` tokens: max(ceil(cf * G * k / E), min_capacity),
 * where a value within 16 ulps of an integer counts as that integer, so that binary rounding of an
 * exact product (cf 1.1 * 100 = 110.00000000000001) does not add a slot. The floor applies to
 * every group, an empty one included (DeepSpeed: capacity = max(capacity, min_capacity)).
 * cf == 0 returns MOE_CAPACITY_UNLIMITED whatever min_capacity is. Requires cf >= 0,
 * min_capacity >= 0, k, E >= 1. */
int64_t moe_group_capacity(double cf, int64_t group_tokens, int k, int E, int64_t min_capacity);

/* moe_group_capacity without a floor (min_capacity 0). */
int64_t moe_capacity(double cf, int64_t group_tokens, int k, int E);

/* The capacity groups of a batch of n_tokens tokens held by R source ranks in contiguous blocks
 * (moe_partition): global scope one group of n_tokens, local scope R groups of each rank's
 * tokens. Fills group_tokens (room for R values) and returns the number of groups. */
int moe_capacity_groups(int64_t *group_tokens, moe_scope scope, int64_t n_tokens, int R);
/* The same where the ranks hold the blocks per_rank (R counts; NULL: the even blocks): in local
 * scope group s is rank s's block. */
int moe_capacity_groups_blocks(int64_t *group_tokens, moe_scope scope, int64_t n_tokens, int R,
                               const int64_t *per_rank);

/* cap[g] = moe_group_capacity(cf, group_tokens[g], k, E, min_capacity) for every group; cap may
 * alias group_tokens. */
void moe_group_capacities(int64_t *cap, double cf, const int64_t *group_tokens, int n_groups, int k,
                          int E, int64_t min_capacity);

/* Expert choice (Zhou et al. 2022): an expert takes at most the tokens its group holds, so
 * cap[g] = min(cap[g], group_tokens[g]) (MOE_CAPACITY_UNLIMITED stays). */
void moe_group_capacities_at_most_group(int64_t *cap, const int64_t *group_tokens, int n_groups);

/* An expert's slots summed over the groups (cap from moe_group_capacities), or
 * MOE_CAPACITY_UNLIMITED when dropless. */
int64_t moe_capacity_sum(const int64_t *cap, int n_groups);

/* What a static-shape system needs to drop nothing, from the loads before capacity. loads is
 * (n_groups, n_exp), row-major: loads[g][e] assignments group g routes to expert e (n_exp may be a
 * subset of the E experts, such as the ones a rank owns; E is the layer's expert count).
 *   *max_load  = max over g, e of loads[g][e]
 *   *cf_needed = max over g (with group_tokens[g] > 0) and e of loads[g][e] * E / (G_g * k):
 *                the smallest cf whose exact slot count cf * G_g * k / E reaches the load in
 *                every group, so that C = ceil(cf G k / E) >= loads[g][e] everywhere (equal in
 *                the tightest group) and nothing drops; any cf <= max over g of
 *                (L_g - 1) E / (G_g k), L_g the group's largest load, drops at least one.
 * Both are 0 when there is no load. Independent of min_capacity (a floor only adds slots). */
void moe_capacity_needed(int64_t *max_load, double *cf_needed, const int64_t *loads,
                         const int64_t *group_tokens, int n_groups, int n_exp, int k, int E);

/* Position policy over counts. counts and accepted are (n_src, n_exp), row-major: counts[s][e]
 * assignments for expert e come from source s, whose tokens all precede those of source s+1.
 * For each expert, sources are served in order until `capacity` is used:
 * accepted[s][e] = clamp(capacity - sum_{s' < s} counts[s'][e], 0, counts[s][e]).
 * capacity == MOE_CAPACITY_UNLIMITED accepts everything. */
void moe_overflow_position(int64_t *accepted, const int64_t *counts, int n_src, int n_exp,
                           int64_t capacity);

/* Per-assignment verdicts for n tokens of one source, given how many of its assignments each
 * expert accepts: walk tokens in order, the first accepted_per_expert[e] assignments to e are
 * accepted (flag 1), the rest dropped (0). expert and flag are (n, k); seen is scratch of E. */
void moe_mark_accepted(uint8_t *flag, const int32_t *expert, int64_t n, int k, int E,
                       const int64_t *accepted_per_expert, int64_t *seen);

/* Serial reference of the whole position policy on one group: flag (n, k) from expert (n, k) and
 * capacity, token order; load is scratch of E. Used by tests against the distributed path. */
void moe_overflow_position_ref(uint8_t *flag, const int32_t *expert, int64_t n, int k, int E,
                               int64_t capacity, int64_t *load);

#endif
