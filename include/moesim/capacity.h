/* Capacity and overflow: how many assignments each expert serves, and which ones.
 * C = ceil(cf * G * k / E) slots per expert per capacity group of G tokens (GShard, Lepikhin et al.
 * 2020; Megatron-Core moe_utils); cf = 0 means dropless (no cap). */
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
    MOE_POLICY_POSITION = 0 /* earlier token ids are served first (Switch; Megatron "position") */
} moe_policy;

const char *moe_scope_name(moe_scope s);
const char *moe_policy_name(moe_policy p);

/* Slots per expert for a group of `group_tokens` tokens: ceil(cf * G * k / E), where a value within
 * 16 ulps of an integer counts as that integer, so that binary rounding of an exact product
 * (cf 1.1 * 100 = 110.00000000000001) does not add a slot. cf == 0 returns MOE_CAPACITY_UNLIMITED; G == 0 gives 0. Requires cf >= 0, k, E >= 1. */
int64_t moe_capacity(double cf, int64_t group_tokens, int k, int E);

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
