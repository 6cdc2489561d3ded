#include "moesim/plan.h"

#include "moesim/error.h"
#include "moesim/loss.h"
#include "moesim/overflow.h"
#include "moesim/tokens.h"

#include <stdlib.h>
#include <string.h>

void moe_plan_free(moe_plan *p)
{
    if (p == NULL)
        return;
    free(p->group_cap);
    free(p->loads);
    free(p->routed);
    free(p->accepted);
    free(p->rerouted_in);
    moe_blocks_free(&p->rows);
    free(p->node_of_rank);
    free(p->node_rows);
    free(p->rank_rows);
    free(p->importance);
    moe_expert_map_free(&p->map);
    memset(p, 0, sizeof *p);
}

/* Scratch for the decision of one group of at most n tokens. */
typedef struct plan_scratch {
    uint8_t *flag, *rerouted, *pending, *final_;
    int32_t *serving;                        /* the expert serving each slot (reroute moves it) */
    moe_key *keys, *keys2;
    int64_t *caps, *room, *proposals, *seen; /* (E) */
} plan_scratch;

/* Decide group g (tokens [first, first + n)): flag, rerouted and serving for its slots, as the
 * layer's protocol decides it. Returns reroute's rounds after round 0. */
static int decide_group(plan_scratch *s, const moe_plan_spec *sp, const int32_t *expert,
                        const float *gate, const float *sel, int64_t first, int64_t n, int64_t cap)
{
    int E = sp->E, k = sp->k;
    int64_t A = sp->routing == MOE_ROUTING_EXPERT_CHOICE ? E : k, base = first * A;
    uint8_t *flag = s->flag + base, *rer = s->rerouted + base;
    int32_t *serving = s->serving + base;
    memset(rer, 0, (size_t)(n * A));
    if (sp->routing == MOE_ROUTING_EXPERT_CHOICE) {
        moe_expert_choice_ref(flag, sel + first * E, first, n, E, cap, s->keys);
        for (int64_t i = 0; i < n * A; i++)
            serving[i] = (int32_t)(i % E);
        return 0;
    }
    if (n == 0) /* an empty group (expert may then be NULL) */
        return 0;
    memcpy(serving, expert + base, (size_t)(n * k) * sizeof *serving);
    for (int e = 0; e < E; e++)
        s->caps[e] = cap;
    switch (sp->policy) {
    case MOE_POLICY_POSITION:
        moe_overflow_position_ref(flag, serving, n, k, E, cap, s->seen);
        return 0;
    case MOE_POLICY_REROUTE:
        return moe_overflow_reroute_ref(serving, flag, rer, expert + base, sel + first * E, n, k, E,
                                        s->caps, s->pending, s->final_, s->room, s->proposals,
                                        s->seen);
    default: /* probs, choice, random: keys in slot order, as decide_keyed builds them */
        for (int64_t t = 0; t < n; t++)
            for (int c = 0; c < k; c++) {
                int64_t i = t * k + c;
                s->keys[i] = (moe_key){
                    .key = moe_overflow_key(sp->policy, gate[base + i], c, first + t, k, sp->seed),
                    .token = first + t,
                    .choice = c,
                    .expert = serving[i]};
            }
        moe_overflow_keys_ref(flag, s->keys, n * k, E, s->caps, s->keys2);
        return 0;
    }
}

static void *grab(size_t count, size_t size, int *rc)
{
    if (*rc != MOE_OK)
        return NULL;
    void *p = calloc(count ? count : 1, size);
    if (p == NULL)
        *rc = MOE_ENOMEM;
    return p;
}

static void scratch_free(plan_scratch *s)
{
    void *all[] = {s->flag, s->rerouted, s->pending, s->final_, s->serving, s->keys, s->keys2,
                   s->caps, s->room, s->proposals, s->seen};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
}

/* The traffic and the computed rows of the decided batch. */
static int count_rows(moe_plan *p, const moe_plan_spec *sp, const plan_scratch *s, int64_t *last,
                       int64_t *slot_rows, int64_t *last_node)
{
    for (int b = 0; b < p->n_nodes; b++)
        last_node[b] = -1;
    int R = sp->R, E = sp->E;
    int64_t A = sp->routing == MOE_ROUTING_EXPERT_CHOICE ? E : sp->k;
    for (int r = 0; r < R; r++)
        last[r] = -1;
    for (int64_t t = 0; t < sp->N; t++) {
        int src = moe_partition_owner(sp->N, R, t);
        for (int64_t c = 0; c < A; c++) {
            int64_t i = t * A + c;
            if (!s->flag[i])
                continue;
            int32_t e = s->serving[i], slot = moe_expert_map_slot(&p->map, t, e);
            int dst = p->map.rank[slot];
            p->accepted[e]++;
            p->rerouted_in[e] += s->rerouted[i];
            p->served++;
            slot_rows[slot]++;
            /* per rank: the first served slot of this token on dst makes its row */
            if (!sp->per_rank || last[dst] != t) {
                if (moe_blocks_push(&p->rows, src, dst, 1) != MOE_OK)
                    return MOE_ENOMEM;
                last[dst] = t;
            }
            int node = p->node_of_rank[dst];
            if (p->node_rows != NULL && last_node[node] != t) {
                p->node_rows[(int64_t)src * p->n_nodes + node]++;
                last_node[node] = t;
            }
        }
    }
    /* each rank computes its slots' rows; padded, a replica its share of the capacity */
    int64_t cap = moe_capacity_sum(p->group_cap, p->n_groups);
    for (int q = 0; q < p->map.P; q++) {
        int64_t m = slot_rows[q], share = m;
        if (sp->pad && cap != MOE_CAPACITY_UNLIMITED) {
            int64_t reps = p->map.replicas[p->map.logical[q]];
            share = (cap + reps - 1) / reps;
            share = share > m ? share : m;
        }
        p->rank_rows[p->map.rank[q]] += (double)share;
    }
    moe_blocks_normalize(&p->rows);
    return MOE_OK;
}

int moe_plan_build(moe_plan *out, const moe_plan_spec *sp, const int32_t *expert,
                   const float *gate, const float *sel, char *msg, size_t msglen)
{
    memset(out, 0, sizeof *out);
    int R = sp->R, E = sp->E, k = sp->k, rc = MOE_OK;
    if (R < 1 || R > E || sp->N < 0)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "planning %d ranks needs 1 <= ranks <= experts (%d) and a batch (%lld "
                        "tokens)",
                        R, E, (long long)sp->N);
    bool ec = sp->routing == MOE_ROUTING_EXPERT_CHOICE;
    int64_t A = ec ? E : k, N = sp->N;
    size_t slots = (size_t)(N * A);
    out->R = R;
    out->E = E;
    out->group_cap = grab((size_t)R, sizeof(int64_t), &rc);
    /* one row of loads per capacity group: R in local scope, the whole batch's in global */
    int64_t load_rows = sp->scope == MOE_SCOPE_LOCAL ? R : 1;
    out->loads = grab((size_t)load_rows * (size_t)E, sizeof(int64_t), &rc);
    out->routed = grab((size_t)E, sizeof(int64_t), &rc);
    out->accepted = grab((size_t)E, sizeof(int64_t), &rc);
    out->rerouted_in = grab((size_t)E, sizeof(int64_t), &rc);
    out->rank_rows = grab((size_t)R, sizeof(double), &rc);
    double *loads = grab((size_t)E, sizeof(double), &rc);
    int rpn = sp->ranks_per_node > 0 ? sp->ranks_per_node : R;
    out->n_nodes = (R + rpn - 1) / rpn;
    out->node_of_rank = grab((size_t)R, sizeof(int), &rc);
    for (int r = 0; rc == MOE_OK && r < R; r++)
        out->node_of_rank[r] = r / rpn;
    if (sp->per_rank)
        out->node_rows = grab((size_t)R * (size_t)out->n_nodes, sizeof(int64_t), &rc);
    int64_t *last_node = grab((size_t)out->n_nodes, sizeof(int64_t), &rc);
    if (ec && gate != NULL)
        out->importance = grab((size_t)E, sizeof(double), &rc);
    int64_t *last = grab((size_t)R, sizeof(int64_t), &rc), *slot_rows = NULL;
    int64_t *groups = grab((size_t)R, sizeof(int64_t), &rc);
    plan_scratch s = {0};
    s.flag = grab(slots, 1, &rc);
    s.rerouted = grab(slots, 1, &rc);
    s.serving = grab(slots, sizeof(int32_t), &rc);
    if (!ec && sp->policy == MOE_POLICY_REROUTE) {
        s.pending = grab(slots, 1, &rc);
        s.final_ = grab(slots, 1, &rc);
    }
    bool keyed = ec || sp->policy == MOE_POLICY_PROBS || sp->policy == MOE_POLICY_CHOICE ||
                 sp->policy == MOE_POLICY_RANDOM;
    if (keyed) {
        s.keys = grab(ec ? (size_t)N : slots, sizeof(moe_key), &rc);
        s.keys2 = grab(slots, sizeof(moe_key), &rc);
    }
    s.caps = grab((size_t)E, sizeof(int64_t), &rc);
    s.room = grab((size_t)E, sizeof(int64_t), &rc);
    s.proposals = grab((size_t)E, sizeof(int64_t), &rc);
    s.seen = grab((size_t)E, sizeof(int64_t), &rc);
    if (rc != MOE_OK) {
        moe_fail(rc, msg, msglen, "out of memory planning %d ranks (%lld assignments)", R,
                 (long long)(N * A));
        goto done;
    }
    /* where the experts live: EPLB plans from the given loads or this batch's routing (every
     * slot, as the layer counts them) */
    if (!ec)
        for (size_t i = 0; i < slots; i++)
            out->routed[expert[i]]++;
    for (int e = 0; e < E; e++)
        loads[e] = sp->loads != NULL ? sp->loads[e] : ec ? (double)N : (double)out->routed[e];
    {
        double *before = calloc((size_t)R, sizeof *before);
        for (int e = 0; before != NULL && e < E; e++)
            before[moe_partition_owner(E, R, e)] += ec ? (double)N : (double)out->routed[e];
        out->overload_before = before != NULL ? moe_max_over_mean(before, R) : 0.0;
        free(before);
    }
    if ((rc = moe_expert_map_build(&out->map, sp->placement, E, R, sp->redundant, loads, msg,
                                   msglen)) != MOE_OK)
        goto done;
    /* the groups and their capacities, then the decision, group by group */
    out->n_groups = moe_capacity_groups(groups, sp->scope, N, R);
    moe_group_capacities(out->group_cap, sp->cf, groups, out->n_groups, k, E, sp->min_capacity);
    if (ec)
        moe_group_capacities_at_most_group(out->group_cap, groups, out->n_groups);
    for (int g = 0; g < out->n_groups; g++) {
        int64_t f = 0, n = N;
        if (out->n_groups > 1)
            moe_partition(N, R, g, &f, &n);
        int rounds = decide_group(&s, sp, expert, gate, sel, f, n, out->group_cap[g]);
        out->reroute_rounds = rounds > out->reroute_rounds ? rounds : out->reroute_rounds;
    }
    /* what each source routed before capacity (expert choice: what the experts took) */
    memset(out->routed, 0, (size_t)E * sizeof *out->routed);
    for (int64_t t = 0; t < N; t++) {
        int64_t *row = out->loads + (load_rows > 1 ? (int64_t)moe_partition_owner(N, R, t) : 0) * E;
        for (int64_t c = 0; c < A; c++) {
            int64_t i = t * A + c;
            if (ec && !s.flag[i])
                continue;
            int32_t e = ec ? (int32_t)c : expert[i];
            row[e]++;
            out->routed[e]++;
            if (out->importance != NULL)
                out->importance[e] += gate[i];
        }
    }
    slot_rows = grab((size_t)out->map.P, sizeof *slot_rows, &rc);
    if (rc != MOE_OK) {
        moe_fail(rc, msg, msglen, "out of memory planning %d ranks", R);
        goto done;
    }
    if ((rc = count_rows(out, sp, &s, last, slot_rows, last_node)) != MOE_OK)
        moe_fail(rc, msg, msglen, "out of memory planning %d ranks", R);
done:
    scratch_free(&s);
    free(loads);
    free(last);
    free(last_node);
    free(slot_rows);
    free(groups);
    if (rc != MOE_OK)
        moe_plan_free(out);
    return rc;
}
