/* Reductions and gathers of the layer's results to rank 0: counts, balance figures, routing
 * figures, timings, and the dumps (--dump-routing, --dump-output). Collective over the layer's
 * communicator; moved out of layer.c, which keeps creation, buffers and the step. */
#include "layer_internal.h"

#include "moesim/capacity.h"
#include "moesim/driver.h"
#include "moesim/error.h"
#include "moesim/expert.h"
#include "moesim/loss.h"
#include "moesim/projection.h"
#include "moesim/router.h"
#include "moesim/stats.h"
#include "moesim/tokens.h"
#include "moesim/wire.h"
#include "moesim/xsum.h"

#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Reduce int64 arrays to rank 0 (sum). */
static int reduce_i64(const moe_layer *L, const int64_t *in, int64_t *out, int n, char *msg,
                      size_t msglen)
{
    MOE_MPI_CHECK(MPI_Reduce(in, out, n, MPI_INT64_T, MPI_SUM, 0, L->comm), msg, msglen);
    return MOE_OK;
}

/* Collective: count exact sums (one per entry of sums), rounded to double on rank 0 into out (may
 * be NULL elsewhere). Exact: the result does not depend on R or on how the terms were split. */
static int reduce_xsums(const moe_layer *L, moe_xsum *sums, int count, double *out, char *msg,
                        size_t msglen)
{
    size_t n = (size_t)count * MOE_XSUM_LIMBS;
    int64_t *limbs = malloc(n * sizeof *limbs), *all = L->rank == 0 ? malloc(n * sizeof *all) : NULL;
    int rc = limbs && (L->rank != 0 || all) ? MOE_OK
                                            : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    for (int i = 0; i < count; i++) {
        moe_xsum_normalize(&sums[i]);
        memcpy(limbs + (size_t)i * MOE_XSUM_LIMBS, sums[i].limb, sizeof sums[i].limb);
    }
    int mrc = MPI_Reduce(limbs, all, (int)n, MPI_INT64_T, MPI_SUM, 0, L->comm);
    if (mrc != MPI_SUCCESS) {
        rc = moe_mpi_fail(mrc, "MPI_Reduce", __FILE__, __LINE__, msg, msglen);
        goto done;
    }
    for (int i = 0; L->rank == 0 && i < count; i++) {
        moe_xsum t;
        moe_xsum_init(&t);
        memcpy(t.limb, all + (size_t)i * MOE_XSUM_LIMBS, sizeof t.limb);
        out[i] = moe_xsum_value(&t);
    }
done:
    free(limbs);
    free(all);
    return rc;
}

/* Collective: psum[e] = the sum over the batch of p_e, exactly (see reduce_xsums), on rank 0. p is
 * the softmax probability, or the sigmoid scores divided by their sum over the experts
 * (moe_router_probs_row), so that it is a distribution either way. */
static int prob_sums(const moe_layer *L, double *psum, char *msg, size_t msglen)
{
    moe_xsum *sums = calloc((size_t)L->E, sizeof *sums);
    float *row = malloc((size_t)L->E * sizeof *row);
    int rc = sums && row ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK) {
        free(sums);
        free(row);
        return rc;
    }
    for (int64_t t = 0; t < L->n; t++) {
        moe_router_probs_row(row, L->probs + t * L->E, L->E, L->cfg.score);
        for (int e = 0; e < L->E; e++)
            moe_xsum_add(&sums[e], row[e]);
    }
    rc = reduce_xsums(L, sums, L->E, psum, msg, msglen);
    free(sums);
    free(row);
    return rc;
}

/* Collective: the largest expert load of one group and the capacity factor that would drop
 * nothing (moe_capacity_needed), over the experts this rank owns from the counts it received, then
 * the largest over ranks on rank 0 (out may be NULL elsewhere). */
static int capacity_needed(const moe_layer *L, int64_t *max_load, double *cf_needed, char *msg,
                           size_t msglen)
{
    int R = L->R;
    int64_t n_le = L->n_le;
    bool global = L->cfg.scope == MOE_SCOPE_GLOBAL;
    int64_t *groups = malloc((size_t)R * sizeof *groups);
    int64_t *loads = global ? calloc((size_t)(n_le ? n_le : 1), sizeof *loads) : NULL;
    int rc = groups && (!global || loads) ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    int n_groups = moe_capacity_groups_blocks(groups, L->cfg.scope, L->cfg.tokens, R, L->blocks);
    /* global: one group, each expert's load summed over the sources; local: a group per source */
    for (int s = 0; global && s < R; s++)
        for (int64_t le = 0; le < n_le; le++)
            loads[le] += L->cnt_owner[s * n_le + le];
    int64_t mine_load;
    double mine_cf;
    moe_capacity_needed(&mine_load, &mine_cf, global ? loads : L->cnt_owner, groups, n_groups,
                        (int)n_le, L->k, L->E);
    int64_t all_load = 0;
    double all_cf = 0.0;
    int mrc = MPI_Reduce(&mine_load, &all_load, 1, MPI_INT64_T, MPI_MAX, 0, L->comm);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Reduce(&mine_cf, &all_cf, 1, MPI_DOUBLE, MPI_MAX, 0, L->comm);
    if (mrc != MPI_SUCCESS) {
        rc = moe_mpi_fail(mrc, "MPI_Reduce", __FILE__, __LINE__, msg, msglen);
        goto done;
    }
    if (max_load != NULL) {
        *max_load = all_load;
        *cf_needed = all_cf;
    }
done:
    free(groups);
    free(loads);
    return rc;
}

/* Collective: the routing figures to rank 0 (res NULL elsewhere): rows rerouted to each expert,
 * the histogram of served slots per token, and how many ranks and nodes each token's routed
 * experts sit on, with and without the group limit. */
static int routing_figures(moe_layer *L, moe_results *res, char *msg, size_t msglen)
{
    int E = L->E, R = L->R, A = L->A, k = L->k;
    size_t hist = (size_t)R + 1;
    int64_t *buf = calloc((size_t)E + (size_t)E + 1 + 4 * hist, sizeof *buf);
    int64_t *sum = calloc((size_t)E + (size_t)E + 1 + 4 * hist, sizeof *sum);
    int *owner = malloc((size_t)E * sizeof *owner);
    int *seen = malloc(2 * hist * sizeof *seen);
    bool limited = L->cfg.group_top_k > 0;
    int32_t *plain = limited ? malloc((size_t)(L->n * k + 1) * sizeof *plain) : NULL;
    float *plain_gate = limited ? malloc((size_t)(L->n * k + 1) * sizeof *plain_gate) : NULL;
    int rc = buf && sum && owner && seen && (!limited || (plain && plain_gate))
                 ? MOE_OK
                 : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the routing figures");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    int64_t *rerouted_in = buf, *per_token = buf + E, *reach = buf + 2 * E + 1;
    for (int64_t i = 0; i < L->n * A; i++)
        if (L->flag[i] && L->rerouted[i])
            rerouted_in[L->expert[i]]++;
    for (int64_t t = 0; t < L->n; t++) {
        int served = 0;
        for (int c = 0; c < A; c++)
            served += L->flag[t * A + c];
        per_token[served]++;
    }
    /* an expert's rank: its first replica's (its only one without replicas) */
    for (int e = 0; e < E; e++)
        owner[e] = L->map.rank[L->map.replica_slot[L->map.replica_start[e]]];
    for (size_t i = 0; i < 2 * hist; i++)
        seen[i] = -1;
    /* reach of what the router chose: the top-k (before capacity; the router's own choices when
     * rerouting moved some), or under expert choice the pairs the experts took */
    const int32_t *routed = L->orig != NULL ? L->orig : L->expert;
    moe_router_reach(reach, reach + hist, routed, A == k ? NULL : L->flag, L->n, A, owner,
                     L->node_of_rank, R, seen, seen + hist);
    if (limited) {
        moe_topk_select(plain, plain_gate, L->probs, L->sel_bias, L->n, E, k, false, 1.0);
        moe_router_reach(reach + 2 * hist, reach + 3 * hist, plain, NULL, L->n, k, owner,
                         L->node_of_rank, R, seen, seen + hist);
    }
    int count = (int)(2 * E + 1 + 4 * (int)hist);
    MOE_MPI_CHECK(MPI_Reduce(buf, sum, count, MPI_INT64_T, MPI_SUM, 0, L->comm), msg, msglen);
    if (res != NULL) {
        memcpy(res->rerouted_in, sum, (size_t)E * sizeof *sum);
        memcpy(res->experts_per_token, sum + E, ((size_t)E + 1) * sizeof *sum);
        memcpy(res->reach_ranks, sum + 2 * E + 1, 4 * hist * sizeof *sum);
        res->group_limited = limited;
    }
done:
    free(buf);
    free(sum);
    free(owner);
    free(seen);
    free(plain);
    free(plain_gate);
    return rc;
}

/* Collective: each source's rows per destination node under per-rank dispatch (distinct (token,
 * node) pairs of its served slots), gathered on rank 0 into res->node_rows with their size. */
static int node_rows_figures(moe_layer *L, moe_results *res, char *msg, size_t msglen)
{
    int R = L->R, nodes = 0;
    for (int r = 0; r < R; r++)
        nodes = L->node_of_rank[r] + 1 > nodes ? L->node_of_rank[r] + 1 : nodes;
    int64_t *mine = calloc((size_t)nodes, sizeof *mine), *seen = malloc((size_t)nodes * sizeof *seen);
    int64_t *all = res != NULL ? calloc((size_t)R * (size_t)nodes, sizeof *all) : NULL;
    int rc = mine && seen && (res == NULL || all) ? MOE_OK
                                                  : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    for (int b = 0; b < nodes; b++)
        seen[b] = -1;
    for (int64_t t = 0; t < L->n; t++)
        for (int c = 0; c < L->A; c++) {
            int64_t i = t * L->A + c;
            if (!L->flag[i])
                continue;
            int b = L->node_of_rank[L->owner_of[L->phys[i]]];
            if (seen[b] != t) {
                seen[b] = t;
                mine[b]++;
            }
        }
    int mrc = MPI_Gather(mine, nodes, MPI_INT64_T, all, nodes, MPI_INT64_T, 0, L->comm);
    if (mrc != MPI_SUCCESS) {
        rc = moe_mpi_fail(mrc, "MPI_Gather", __FILE__, __LINE__, msg, msglen);
        goto done;
    }
    if (res != NULL) {
        free(res->node_rows);
        res->node_rows = all;
        all = NULL;
        res->n_nodes = nodes;
        res->node_row_bytes = moe_wire_row_bytes(L->wire_out, L->d) +
                              (int64_t)moe_nodex_meta_slots(L->A, &L->map, L->node_of_rank, R) *
                                  MOE_NODEX_ENTRY_BYTES;
    }
done:
    free(mine);
    free(seen);
    free(all);
    return rc;
}

/* Collective: each rank's nonzero row counts to each destination, gathered on rank 0 into
 * res->rows as blocks (res NULL elsewhere): O(nonzero blocks) there, never R x R. */
static int gather_traffic(moe_layer *L, moe_results *res, const int64_t *send_rows, char *msg,
                       size_t msglen)
{
    int R = L->R, mine = 0;
    int64_t *pairs = malloc(2 * (size_t)R * sizeof *pairs); /* (dst, rows) */
    int *counts = res != NULL ? malloc(2 * (size_t)R * sizeof *counts) : NULL;
    int64_t *all = NULL;
    int rc = pairs && (res == NULL || counts) ? MOE_OK
                                              : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    for (int d = 0; rc == MOE_OK && d < R; d++)
        if (send_rows[d] != 0) {
            pairs[2 * mine] = d;
            pairs[2 * mine + 1] = send_rows[d];
            mine++;
        }
    mine *= 2;
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    MOE_MPI_CHECK(MPI_Gather(&mine, 1, MPI_INT, counts, 1, MPI_INT, 0, L->comm), msg, msglen);
    int64_t total = 0;
    int *displs = counts != NULL ? counts + R : NULL;
    for (int r = 0; res != NULL && r < R; r++) {
        displs[r] = (int)total; /* at most 2 R^2 entries: within int up to R = 32768 */
        total += counts[r];
    }
    if (res != NULL && (all = malloc((size_t)(total > 0 ? total : 1) * sizeof *all)) == NULL)
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory gathering the traffic");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    MOE_MPI_CHECK(MPI_Gatherv(pairs, mine, MPI_INT64_T, all, counts, displs, MPI_INT64_T, 0,
                              L->comm),
                  msg, msglen);
    if (res != NULL) {
        moe_blocks_clear(&res->rows);
        for (int s = 0; rc == MOE_OK && s < R; s++)
            for (int j = displs[s]; j < displs[s] + counts[s]; j += 2)
                if (moe_blocks_push(&res->rows, s, (int)all[j], all[j + 1]) != MOE_OK)
                    rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the traffic blocks");
        moe_blocks_normalize(&res->rows);
    }
done:
    free(pairs);
    free(counts);
    free(all);
    return rc;
}

/* Collective: the rows each rank sends each rank, gathered on rank 0 (res NULL elsewhere), and
 * the bytes as they travel: dispatch rows in the --wire format (with per-rank metadata), the
 * combine the transpose in the --wire-combine format; the metadata's share and what per-rank
 * rows save against one row per served (token, expert), dispatch and combine together. Needs only
 * the decision, so --predict-only has it too. */
static int traffic_figures(moe_layer *L, moe_results *res, char *msg, size_t msglen)
{
    if (res != NULL && res->slot_expert == NULL) { /* the placement, for the report */
        int P = L->map.P;
        res->slot_expert = malloc(2 * (size_t)P * sizeof *res->slot_expert);
        if (res->slot_expert != NULL) {
            res->slot_rank = res->slot_expert + P;
            res->n_slots = P;
            memcpy(res->slot_expert, L->map.logical, (size_t)P * sizeof *res->slot_expert);
            memcpy(res->slot_rank, L->map.rank, (size_t)P * sizeof *res->slot_rank);
        }
        res->overload_before = L->overload_before;
        res->extra_weight_bytes = (int64_t)(P - L->E) * 2 * L->f * L->d * (int64_t)sizeof(float);
    }
    int64_t served_mine = 0, served = 0;
    for (int e = 0; e < L->E; e++)
        served_mine += L->accepted[e];
    MOE_MPI_CHECK(MPI_Reduce(&served_mine, &served, 1, MPI_INT64_T, MPI_SUM, 0, L->comm), msg,
                  msglen);
    int rc = gather_traffic(L, res, L->per_rank ? L->dd_send_rows : L->send_rows, msg, msglen);
    /* per-rank rows: the node rows the two-level exchange sends, one per (token, node) */
    if (rc == MOE_OK && L->per_rank)
        rc = node_rows_figures(L, res, msg, msglen);
    if (rc != MOE_OK || res == NULL)
        return rc;
    res->wire = L->wire_out;
    res->wire_combine = L->wire_back;
    res->row_bytes = L->ex.row_out_bytes;
    res->row_bytes_combine = L->ex.row_back_bytes;
    res->per_rank = L->per_rank;
    if (moe_results_traffic(res, served, moe_wire_row_bytes(L->wire_out, L->d)) != MOE_OK)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the traffic blocks");
    return MOE_OK;
}

int moe_layer_traffic(moe_layer *L, moe_results *res, char *msg, size_t msglen)
{
    return traffic_figures(L, L->rank == 0 ? res : NULL, msg, msglen);
}

static int results_counts(moe_layer *L, moe_results *res, char *msg, size_t msglen)
{
    int E = L->E, R = L->R, rc;
    int64_t *mine = calloc((size_t)(2 * E + R), sizeof *mine);
    double *psum_all = calloc((size_t)E, sizeof *psum_all);
    rc = mine && psum_all ? MOE_OK : MOE_ENOMEM;
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;

    /* accepted and capacity of the experts I own; zero elsewhere so a sum gathers them */
    int64_t cap = moe_layer_expert_capacity(L);
    for (int64_t le = 0; le < L->n_le; le++) {
        int64_t a = 0;
        for (int s = 0; s < R; s++)
            a += L->acc_owner[s * L->n_le + le];
        mine[L->first_e + le] = a;
        mine[E + L->first_e + le] = cap;
    }
    if ((rc = reduce_i64(L, L->routed, res ? res->routed : NULL, E, msg, msglen)) != MOE_OK ||
        (rc = reduce_i64(L, mine, res ? res->accepted : NULL, E, msg, msglen)) != MOE_OK ||
        (rc = reduce_i64(L, mine + E, res ? res->capacity : NULL, E, msg, msglen)) != MOE_OK)
        goto done;

    if ((rc = prob_sums(L, psum_all, msg, msglen)) != MOE_OK)
        goto done;
    if ((rc = capacity_needed(L, res ? &res->max_expert_load : NULL, res ? &res->cf_needed : NULL,
                              msg, msglen)) != MOE_OK)
        goto done;
    if (res != NULL && L->cfg.routing == MOE_ROUTING_EXPERT_CHOICE)
        res->cf_needed = 0.0; /* nothing overflows: no capacity is "needed" (JSON null) */

    int64_t dropped_tokens = 0, dropped_all = 0;
    for (int64_t t = 0; t < L->n; t++) {
        int any = 0;
        for (int c = 0; c < L->A; c++)
            any |= L->flag[t * L->A + c];
        dropped_tokens += !any;
    }
    if ((rc = reduce_i64(L, &dropped_tokens, &dropped_all, 1, msg, msglen)) != MOE_OK)
        goto done;
    if ((rc = routing_figures(L, res, msg, msglen)) != MOE_OK)
        goto done;

    /* the self-checks' counts (verdict.h): each rank's own view, summed */
    {
        const int64_t *sr = L->per_rank ? L->dd_send_rows : L->send_rows;
        const int64_t *rr = L->per_rank ? L->dd_recv_rows : L->recv_rows;
        int64_t v[5] = {0, 0, 0, 0, L->n * L->d}, all[5] = {0};
        for (int r = 0; r < R; r++) {
            v[0] += sr[r];
            v[1] += rr[r];
        }
        for (int64_t i = 0; i < L->n * L->A; i++)
            v[2] += L->flag[i] != 0;
        for (int64_t i = 0; i < L->n * L->d; i++)
            v[3] += !isfinite(L->y[i]);
        /* MOESIM_FAULT: one count off, so that tests see the verdict fail on a real run */
        if (moe_driver_fault("selfcheck-bytes", L->rank))
            v[1] += 1;
        if (moe_driver_fault("selfcheck-combine", L->rank))
            v[2] -= 1;
        if (moe_driver_fault("selfcheck-finite", L->rank))
            v[3] += 1;
        MOE_MPI_CHECK(MPI_Reduce(v, all, 5, MPI_INT64_T, MPI_SUM, 0, L->comm), msg, msglen);
        if (res != NULL)
            res->check = (moe_selfcheck){.measured = true, .rows_sent = all[0],
                                         .rows_received = all[1], .returned = all[2],
                                         .y_values = all[4], .y_nonfinite = all[3]};
    }

    /* an exact sum: the same y gives the same checksum at any R */
    double checksum_all = 0.0;
    moe_xsum checksum;
    moe_xsum_init(&checksum);
    moe_xsum_add_array(&checksum, L->y, (size_t)(L->n * L->d));
    if ((rc = reduce_xsums(L, &checksum, 1, &checksum_all, msg, msglen)) != MOE_OK)
        goto done;

    if ((rc = traffic_figures(L, res, msg, msglen)) != MOE_OK)
        goto done;
    if (res != NULL) { /* the rows ranks would compute with contiguous experts and no replicas */
        double *per_rank = calloc((size_t)R, sizeof *per_rank);
        for (int e = 0; per_rank && e < E; e++)
            per_rank[moe_partition_owner(E, R, e)] +=
                (double)(L->cfg.pad_to_capacity && res->capacity[e] >= 0 ? res->capacity[e]
                                                                          : res->accepted[e]);
        if (per_rank != NULL)
            res->overload_before = moe_max_over_mean(per_rank, R);
        free(per_rank);
    }

    if (res != NULL) {
        res->tokens = L->cfg.tokens;
        res->hidden = L->d;
        res->ffn = L->f;
        res->top_k = L->k;
        res->dropped_tokens = dropped_all;
        res->slots_per_token = L->A;
        res->reroute_rounds = L->rounds;
        res->shared_experts = L->S;
        res->shared_ffn = L->S > 0 ? L->fs : 0;
        res->flops_shared = (double)L->cfg.tokens * L->S * moe_expert_flops_per_row(L->d, L->fs);
        res->output_checksum = checksum_all;
        res->padded = L->cfg.pad_to_capacity;
        for (int e = 0; e < E; e++)
            res->owner[e] = L->map.rank[L->map.replica_slot[L->map.replica_start[e]]];
        res->aux_loss = moe_load_balance(res->f, res->P, res->routed, psum_all, E, L->cfg.tokens,
                                         L->k);
        moe_results_totals(res, moe_expert_flops_per_row(L->d, L->f));
        for (int e = 0; e < E; e++) /* what the owners' experts computed (padding aside) */
            res->check.served += res->accepted[e];
    }
done:
    free(mine);
    free(psum_all);
    return rc;
}

/* Collective: phase_seconds is this rank's (iters, MOE_PHASE_COUNT) times. On rank 0 (res not
 * NULL): per phase and for the step, the min/mean/max over ranks of each rank's median, the
 * smallest and largest single iteration over ranks and iterations (MPI_MIN, MPI_MAX), and the
 * bandwidth figures from the slowest rank's median. */
static int results_timing(moe_layer *L, moe_results *res, const double *phase_seconds, int iters,
                          char *msg, size_t msglen)
{
    int R = L->R, P = MOE_PHASE_COUNT + 1; /* phases, then the whole step */
    double *col = malloc((size_t)iters * sizeof *col);
    /* med, lo, hi (P each) on every rank; the reduced lo and hi (P each) on rank 0 */
    double *med = malloc((size_t)(5 * P) * sizeof *med);
    double *all = L->rank == 0 ? malloc((size_t)(P * R) * sizeof *all) : NULL;
    double *one = malloc((size_t)R * sizeof *one);
    /* tokens in and rows computed of every rank, (R, 2), on rank 0 */
    int64_t *pairs = L->rank == 0 ? malloc((size_t)(2 * R) * sizeof *pairs) : NULL;
    int rc = col && med && one && (L->rank != 0 || (all && pairs)) ? MOE_OK : MOE_ENOMEM;
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    double *lo = med + P, *hi = med + 2 * P, *lo_all = med + 3 * P, *hi_all = med + 4 * P;
    for (int p = 0; p < P; p++) {
        for (int i = 0; i < iters; i++) {
            const double *it = phase_seconds + (int64_t)i * MOE_PHASE_COUNT;
            if (p < MOE_PHASE_COUNT) {
                col[i] = it[p];
            } else {
                col[i] = 0.0;
                for (int q = 0; q < MOE_PHASE_COUNT; q++) /* a backward not run is NaN */
                    col[i] += moe_phase_in_step(q) && !isnan(it[q]) ? it[q] : 0.0;
            }
        }
        /* a phase not run in some iterations (the raw baselines under --raw-baseline first
         * or off) has NaN there: its figures are over the iterations that ran it */
        int ran = 0;
        for (int i = 0; i < iters; i++)
            if (!isnan(col[i]))
                col[ran++] = col[i];
        moe_summary s = ran > 0 ? moe_summarize(col, ran) : (moe_summary){INFINITY, NAN, -INFINITY};
        lo[p] = s.min;
        hi[p] = s.max;
        med[p] = ran > 0 ? moe_median(col, ran) : NAN;
    }
    if (res != NULL && (res->rank_median == NULL || res->rank_tokens == NULL)) {
        free(res->rank_median);
        free(res->rank_tokens);
        res->rank_median = malloc((size_t)(P * R) * sizeof *res->rank_median);
        res->rank_tokens = malloc((size_t)(2 * R) * sizeof *res->rank_tokens);
        res->rank_rows = res->rank_tokens ? res->rank_tokens + R : NULL;
        if (!res->rank_median || !res->rank_tokens)
            rc = MOE_ENOMEM;
    }
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    {
        int64_t mine[2] = {L->n, L->rows_x};
        int mrc = MPI_Gather(mine, 2, MPI_INT64_T, pairs, 2, MPI_INT64_T, 0, L->comm);
        if (mrc == MPI_SUCCESS)
            mrc = MPI_Gather(med, P, MPI_DOUBLE, all, P, MPI_DOUBLE, 0, L->comm);
        if (mrc == MPI_SUCCESS)
            mrc = MPI_Reduce(lo, lo_all, P, MPI_DOUBLE, MPI_MIN, 0, L->comm);
        if (mrc == MPI_SUCCESS)
            mrc = MPI_Reduce(hi, hi_all, P, MPI_DOUBLE, MPI_MAX, 0, L->comm);
        if (mrc != MPI_SUCCESS) {
            rc = moe_mpi_fail(mrc, "MPI_Gather/MPI_Reduce", __FILE__, __LINE__, msg, msglen);
            goto done;
        }
    }
    if (res != NULL) {
        for (int r = 0; r < R; r++) {
            res->rank_tokens[r] = pairs[2 * r];
            res->rank_rows[r] = pairs[2 * r + 1];
        }
        memcpy(res->rank_median, all, (size_t)(P * R) * sizeof *all);
        for (int p = 0; p < P; p++) {
            for (int r = 0; r < R; r++)
                one[r] = all[(int64_t)r * P + p];
            moe_summary s = moe_summarize(one, R);
            moe_spread sp = {isfinite(lo_all[p]) ? lo_all[p] : NAN,
                             isfinite(hi_all[p]) ? hi_all[p] : NAN};
            if (isnan(s.mean)) /* not run on any iteration */
                s = (moe_summary){NAN, NAN, NAN};
            if (p < MOE_PHASE_COUNT) {
                res->phase[p] = s;
                res->phase_iter[p] = sp;
            } else {
                res->step = s;
                res->step_iter = sp;
            }
        }
        int64_t total = moe_blocks_total(&res->dispatch_bytes);
        double td = res->phase[MOE_PHASE_DISPATCH].max, tc = res->phase[MOE_PHASE_COMBINE].max;
        res->dispatch_bytes_per_second = td > 0 ? (double)total / td : 0.0;
        res->combine_bytes_per_second = tc > 0 ? (double)total / tc : 0.0;
        res->dispatch_a2a = moe_a2a_bandwidth_blocks(&res->dispatch_bytes, L->placement, R, td);
        res->combine_a2a = moe_a2a_bandwidth_blocks(&res->combine_bytes, L->placement, R, tc);
        if (L->nodex && res->node_rows != NULL) { /* what leaves a node is the node rows */
            int64_t off = moe_node_rows_off_node(res->node_rows, res->n_nodes, L->placement, R);
            res->dispatch_a2a.off_node_bytes = off * res->node_row_bytes;
            res->combine_a2a.off_node_bytes = off * res->row_bytes_combine;
        }
    }
done:
    free(col);
    free(med);
    free(all);
    free(one);
    free(pairs);
    return rc;
}

int moe_layer_results(moe_layer *L, moe_results *res, const double *phase_seconds, int iters,
                      char *msg, size_t msglen)
{
    if (L->rank != 0)
        res = NULL;
    int rc = results_counts(L, res, msg, msglen);
    if (rc == MOE_OK)
        rc = results_timing(L, res, phase_seconds, iters, msg, msglen);
    return rc;
}

/* Gather n_local items of `item` type from every rank to rank 0. */
static int gather_items(moe_layer *L, const void *local, int64_t n_local, int64_t n_total,
                        MPI_Datatype item, size_t item_bytes, void **out, char *msg, size_t msglen)
{
    int R = L->R, rc = MOE_OK;
    *out = NULL;
    int *counts = calloc((size_t)R, sizeof *counts), *displs = calloc((size_t)R, sizeof *displs);
    int n = (int)n_local;
    if (counts == NULL || displs == NULL)
        rc = MOE_ENOMEM;
    if (rc == MOE_OK && L->rank == 0 && (*out = malloc((size_t)n_total * item_bytes + 1)) == NULL)
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory gathering %lld items on rank 0",
                      (long long)n_total);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    {
        int mrc = MPI_Gather(&n, 1, MPI_INT, counts, 1, MPI_INT, 0, L->comm);
        if (mrc == MPI_SUCCESS && L->rank == 0)
            for (int r = 1; r < R; r++)
                displs[r] = displs[r - 1] + counts[r - 1];
        if (mrc == MPI_SUCCESS)
            mrc = MPI_Gatherv(local, n, item, *out, counts, displs, item, 0, L->comm);
        if (mrc != MPI_SUCCESS)
            rc = moe_mpi_fail(mrc, "MPI_Gatherv", __FILE__, __LINE__, msg, msglen);
    }
done:
    free(counts);
    free(displs);
    if (rc != MOE_OK) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

int moe_layer_gather_routing(moe_layer *L, moe_route_record **records, int64_t *count, char *msg,
                             size_t msglen)
{
    int64_t slots = L->n * L->A, n_mine = 0;
    bool chosen_only = L->cfg.routing == MOE_ROUTING_EXPERT_CHOICE; /* one row per chosen pair */
    moe_route_record *mine = malloc((size_t)(slots ? slots : 1) * sizeof *mine);
    MPI_Datatype rec = MPI_DATATYPE_NULL;
    *count = 0;
    int rc = mine ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for routing records");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    const float *sel = L->sel_bias ? L->sel : L->probs;
    for (int64_t t = 0; t < L->n; t++)
        for (int c = 0, j = 0; c < L->A; c++) {
            int64_t i = t * L->A + c;
            if (chosen_only && !L->flag[i])
                continue;
            int e = L->expert[i];
            /* expert choice: choice = the index among the token's chosen experts */
            mine[n_mine++] = (moe_route_record){.token = L->first + t,
                                                .choice = chosen_only ? j++ : c,
                                                .expert = e,
                                                .gate = L->gate[i],
                                                .accepted = L->flag[i],
                                                .score = sel[t * L->E + e],
                                                .rerouted = L->rerouted[i]};
        }
    int64_t n_all = 0;
    int mrc = MPI_Allreduce(&n_mine, &n_all, 1, MPI_INT64_T, MPI_SUM, L->comm);
    if (mrc == MPI_SUCCESS && n_all > INT_MAX)
        rc = moe_fail(MOE_ERANGE, msg, msglen,
                      "--dump-routing is for small runs: %lld records are more than one gather "
                      "can hold", (long long)n_all);
    /* a datatype that failed on one rank must not leave the others in the gather */
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Type_contiguous((int)sizeof *mine, MPI_BYTE, &rec);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Type_commit(&rec);
    if (mrc != MPI_SUCCESS)
        rc = moe_mpi_fail(mrc, "MPI_Type_commit", __FILE__, __LINE__, msg, msglen);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) == MOE_OK)
        rc = gather_items(L, mine, n_mine, n_all, rec, sizeof *mine, (void **)records, msg, msglen);
    if (rc == MOE_OK)
        *count = n_all;
    if (rec != MPI_DATATYPE_NULL)
        MPI_Type_free(&rec);
done:
    free(mine);
    return rc;
}

/* Gather n rows of `per_row` items of type `item` from every rank's tokens to rank 0: one
 * derived row type, so the counts are tokens and any batch of up to INT_MAX tokens fits. */
static int gather_rows(moe_layer *L, const void *local, int per_row, MPI_Datatype item,
                       size_t item_bytes, void **out, char *msg, size_t msglen)
{
    MPI_Datatype row = MPI_DATATYPE_NULL;
    int mrc = MPI_Type_contiguous(per_row, item, &row);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Type_commit(&row);
    int rc = mrc == MPI_SUCCESS ? MOE_OK
                                : moe_mpi_fail(mrc, "MPI_Type_commit", __FILE__, __LINE__, msg,
                                               msglen);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) == MOE_OK)
        rc = gather_items(L, local, L->n, L->cfg.tokens, row, (size_t)per_row * item_bytes, out,
                          msg, msglen);
    if (row != MPI_DATATYPE_NULL)
        MPI_Type_free(&row);
    return rc;
}

int moe_layer_gather_plan(moe_layer *L, int32_t **expert, float **gate, float **sel, char *msg,
                          size_t msglen)
{
    const moe_config *c = &L->cfg;
    bool ec = c->routing == MOE_ROUTING_EXPERT_CHOICE;
    bool keyed = c->policy == MOE_POLICY_PROBS || c->policy == MOE_POLICY_CHOICE ||
                 c->policy == MOE_POLICY_RANDOM;
    *expert = NULL;
    *gate = *sel = NULL;
    int rc = MOE_OK;
    /* the router's own choices and gates: a reroute rewrote expert and gate, not orig */
    if (!ec)
        rc = gather_rows(L, L->orig ? L->orig : L->expert, L->k, MPI_INT32_T, sizeof(int32_t),
                         (void **)expert, msg, msglen);
    if (rc == MOE_OK && (ec || keyed)) /* expert choice: every pair's gate, for the importance */
        rc = gather_rows(L, L->orig_gate ? L->orig_gate : L->gate, L->A, MPI_FLOAT, sizeof(float),
                         (void **)gate, msg, msglen);
    if (rc == MOE_OK && (ec || c->policy == MOE_POLICY_REROUTE))
        rc = gather_rows(L, L->sel_bias ? L->sel : L->probs, L->E, MPI_FLOAT, sizeof(float),
                         (void **)sel, msg, msglen);
    if (rc != MOE_OK) {
        free(*expert);
        free(*gate);
        *expert = NULL;
        *gate = NULL;
    }
    return rc;
}

/* What the router chose, before capacity: routed[e] += assignments to e, and, if importance is
 * not NULL, importance[e] += their gates (exactly). The top-k (the router's own choices and gates
 * when rerouting moved some), or under expert choice the pairs the experts took. */
static void router_counts(const moe_layer *L, int64_t *routed, moe_xsum *importance)
{
    bool chosen_only = L->cfg.routing == MOE_ROUTING_EXPERT_CHOICE;
    const int32_t *expert = L->orig ? L->orig : L->expert;
    const float *gate = L->orig ? L->orig_gate : L->gate;
    for (int64_t i = 0; i < L->n * L->A; i++) {
        if (chosen_only && !L->flag[i])
            continue;
        routed[expert[i]]++;
        if (importance != NULL)
            moe_xsum_add(&importance[expert[i]], gate[i]);
    }
}

int moe_layer_router_stats(moe_layer *L, double *P, int64_t *loads, char *msg, size_t msglen)
{
    int E = L->E;
    double *psum = calloc((size_t)E, sizeof *psum);
    int64_t *routed = calloc((size_t)E, sizeof *routed);
    int rc = psum && routed ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) == MOE_OK)
        rc = prob_sums(L, psum, msg, msglen);
    if (rc == MOE_OK) {
        router_counts(L, routed, NULL);
        int mrc = MPI_Gather(routed, E, MPI_INT64_T, loads, E, MPI_INT64_T, 0, L->comm);
        if (mrc != MPI_SUCCESS)
            rc = moe_mpi_fail(mrc, "MPI_Gather", __FILE__, __LINE__, msg, msglen);
        if (rc == MOE_OK && L->rank == 0)
            for (int e = 0; e < E; e++)
                P[e] = psum[e] / (double)L->cfg.tokens;
    }
    free(psum);
    free(routed);
    return rc;
}

int moe_layer_balance(moe_layer *L, moe_balance *b, char *msg, size_t msglen)
{
    int E = L->E, R = L->R;
    /* per expert: the importance sum (E), then the z-loss sum in two parts, exactly */
    moe_xsum *sums = calloc((size_t)E + 2, sizeof *sums);
    /* the logits a chunk of rows at a time (about 4 MiB): a whole (n, E) copy is 1 GiB at
     * n = E = 16384 */
    int64_t chunk = ((int64_t)1 << 20) / E > 0 ? ((int64_t)1 << 20) / E : 1;
    chunk = chunk < L->n ? chunk : (L->n > 0 ? L->n : 1);
    float *z = malloc((size_t)(chunk * E + 1) * sizeof *z);
    double *lse = malloc((size_t)(chunk + 1) * sizeof *lse), *out = calloc((size_t)E + 2, sizeof *out);
    int64_t *routed = calloc((size_t)E, sizeof *routed), *routed_all = calloc((size_t)E, sizeof *routed);
    double *rows = L->rank == 0 ? calloc((size_t)R, sizeof *rows) : NULL;
    int rc = sums && z && lse && out && routed && routed_all && (L->rank != 0 || rows)
                 ? MOE_OK
                 : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the balance figures");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    /* Shazeer's importance: the gates of every routed assignment, before capacity */
    router_counts(L, routed, sums);
    /* z-loss terms lse^2 in double, each split into two floats (48 of its 53 bits) so that the
     * exact sum keeps them. Replayed logits can reach 3.4e38, whose square no float holds: terms
     * from 2^100 up are summed apart, scaled by 2^-160 (exactly), and scaled back at the end. */
    for (int64_t t0 = 0; t0 < L->n; t0 += chunk) {
        int64_t m = L->n - t0 < chunk ? L->n - t0 : chunk;
        moe_layer_logits_rows(L, z, t0, m);
        moe_logsumexp_rows(lse, z, m, E);
        for (int64_t t = 0; t < m; t++) {
            double v = lse[t] * lse[t];
            int big = v >= 0x1p100;
            if (big)
                v = ldexp(v, -160);
            float hi = (float)v;
            moe_xsum_add(&sums[E + big], hi);
            moe_xsum_add(&sums[E + big], (float)(v - (double)hi));
        }
    }
    if ((rc = reduce_xsums(L, sums, E + 2, out, msg, msglen)) != MOE_OK)
        goto done;
    /* rows each rank computes (padding included: what its GEMMs run over) */
    double mine = (double)L->rows_x;
    int mrc = MPI_Reduce(routed, routed_all, E, MPI_INT64_T, MPI_SUM, 0, L->comm);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Gather(&mine, 1, MPI_DOUBLE, rows, 1, MPI_DOUBLE, 0, L->comm);
    if (mrc != MPI_SUCCESS) {
        rc = moe_mpi_fail(mrc, "MPI_Reduce/MPI_Gather", __FILE__, __LINE__, msg, msglen);
        goto done;
    }
    if (L->rank == 0) {
        moe_balance_from_counts(b, routed_all, E);
        b->importance_cv2 = moe_cv2(out, E);
        b->z_loss = (out[E] + ldexp(out[E + 1], 160)) / (double)L->cfg.tokens;
        b->rank_overload = moe_max_over_mean(rows, R);
    }
done:
    free(sums);
    free(z);
    free(lse);
    free(out);
    free(routed);
    free(routed_all);
    free(rows);
    return rc;
}

int moe_layer_gather_logits(moe_layer *L, float **z, char *msg, size_t msglen)
{
    float *mine = malloc((size_t)(L->n * L->E + 1) * sizeof *mine);
    MPI_Datatype row = MPI_DATATYPE_NULL;
    int rc = mine ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for logits");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    moe_layer_logits(L, mine);
    int mrc = MPI_Type_contiguous(L->E, MPI_FLOAT, &row);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Type_commit(&row);
    rc = mrc == MPI_SUCCESS ? MOE_OK : moe_mpi_fail(mrc, "MPI_Type_commit", __FILE__, __LINE__, msg, msglen);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) == MOE_OK)
        rc = gather_items(L, mine, L->n, L->cfg.tokens, row, (size_t)L->E * sizeof(float), (void **)z,
                      msg, msglen);
    if (row != MPI_DATATYPE_NULL)
        MPI_Type_free(&row);
done:
    free(mine);
    return rc;
}

int moe_layer_gather_output(moe_layer *L, float **y, char *msg, size_t msglen)
{
    return gather_items(L, L->y, L->n, L->cfg.tokens, L->ex.row, (size_t)L->ex.row_bytes,
                        (void **)y, msg, msglen);
}
