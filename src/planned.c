#include "moesim/planned.h"

#include "moesim/error.h"
#include "moesim/exchange.h"
#include "moesim/loss.h"
#include "moesim/memory.h"
#include "moesim/tokens.h"
#include "moesim/topology.h"
#include "moesim/wire.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

moe_config moe_planned_layer_config(const moe_config *cfg)
{
    moe_config c = *cfg;
    c.placement = MOE_PLACE_CONTIGUOUS;
    c.redundant_experts = 0;
    c.eplb_from = NULL;
    c.set_placement = c.set_eplb_from = false;
    c.dispatch = MOE_DISPATCH_PER_EXPERT;
    c.hierarchical = false;
    return c;
}

int moe_planned_build(moe_layer *layer, const moe_config *cfg, moe_plan *plan, MPI_Comm comm,
                      char *msg, size_t msglen)
{
    memset(plan, 0, sizeof *plan);
    int rank;
    MPI_Comm_rank(comm, &rank);
    int32_t *expert = NULL;
    float *gate = NULL, *sel = NULL;
    int rc = moe_layer_gather_plan(layer, &expert, &gate, &sel, msg, msglen);
    if (rc != MOE_OK)
        return rc;
    double *loads = NULL;
    /* the loads EPLB plans from, as the layer reads them */
    if (rank == 0 && cfg->eplb_from != NULL) {
        char inner[768];
        loads = calloc((size_t)cfg->experts, sizeof *loads);
        rc = loads == NULL
                 ? moe_fail(MOE_ENOMEM, msg, msglen, "out of memory")
                 : moe_loads_read(cfg->eplb_from, cfg->experts, loads, inner, sizeof inner);
        if (rc != MOE_OK && loads != NULL)
            moe_fail(MOE_EUSAGE, msg, msglen, "--eplb-from %s", inner);
    }
    if (rank == 0 && rc == MOE_OK) {
        moe_plan_spec spec = {.R = cfg->plan_ranks,
                              .N = cfg->tokens,
                              .E = cfg->experts,
                              .k = cfg->top_k,
                              .routing = cfg->routing,
                              .scope = cfg->scope,
                              .policy = cfg->policy,
                              .cf = cfg->capacity_factor,
                              .min_capacity = cfg->min_capacity,
                              .seed = cfg->seed,
                              .pad = cfg->pad_to_capacity,
                              .per_rank = cfg->dispatch == MOE_DISPATCH_PER_RANK,
                              .placement = cfg->placement,
                              .redundant = cfg->redundant_experts,
                              .loads = loads,
                              .ranks_per_node = cfg->ranks_per_node};
        rc = moe_plan_build(plan, &spec, expert, gate, sel, msg, msglen);
    }
    free(loads);
    free(expert);
    free(gate);
    free(sel);
    return moe_agree(comm, rc, msg, msglen);
}

int moe_planned_results(moe_results *res, const moe_config *cfg, const moe_plan *p)
{
    int E = cfg->experts, R = p->R, P = p->map.P;
    const moe_expert_map *m = &p->map;
    for (int e = 0; e < E; e++)
        res->owner[e] = m->rank[m->replica_slot[m->replica_start[e]]];
    moe_topology_planned(res->placement, R, cfg->ranks_per_node);
    /* replication */
    free(res->slot_expert);
    res->slot_expert = malloc(2 * (size_t)P * sizeof *res->slot_expert);
    res->slot_rank = res->slot_expert != NULL ? res->slot_expert + P : NULL;
    res->n_slots = res->slot_expert != NULL ? P : 0;
    if (res->slot_expert != NULL) {
        memcpy(res->slot_expert, m->logical, (size_t)P * sizeof *res->slot_expert);
        memcpy(res->slot_rank, m->rank, (size_t)P * sizeof *res->slot_rank);
    }
    res->overload_before = p->overload_before;
    res->extra_weight_bytes =
        (int64_t)(P - E) * 2 * cfg->ffn * cfg->hidden * (int64_t)sizeof(float);
    /* the traffic, in rows of the planned rank count's size */
    bool per_rank = cfg->dispatch == MOE_DISPATCH_PER_RANK;
    int A = cfg->routing == MOE_ROUTING_EXPERT_CHOICE ? E : cfg->top_k;
    int64_t payload = moe_wire_row_bytes(cfg->wire, cfg->hidden);
    res->wire = cfg->wire;
    res->wire_combine = cfg->wire_combine;
    res->per_rank = per_rank;
    res->row_bytes =
        per_rank ? moe_dedup_row_bytes(payload, moe_dedup_meta_slots(A, P, R)) : payload;
    res->row_bytes_combine = moe_wire_row_bytes(cfg->wire_combine, cfg->hidden);
    if (moe_blocks_scaled(&res->rows, &p->rows, 1, false) != MOE_OK ||
        moe_results_traffic(res, p->served, payload) != MOE_OK)
        return MOE_ENOMEM;
    free(res->node_rows);
    res->node_rows = NULL;
    if (p->node_rows != NULL) { /* the two-level exchange's rows, once per (token, node) */
        size_t n = (size_t)R * (size_t)p->n_nodes;
        res->node_rows = malloc(n * sizeof *res->node_rows);
        if (res->node_rows != NULL)
            memcpy(res->node_rows, p->node_rows, n * sizeof *res->node_rows);
        res->n_nodes = p->n_nodes;
        int Mn = moe_nodex_meta_slots(A, m, p->node_of_rank, R);
        res->node_row_bytes = payload + (int64_t)Mn * MOE_NODEX_ENTRY_BYTES;
    }
    /* balance: the counts the planned decision gives (they differ from the processes' under
     * expert choice with local scope), and the rows the planned ranks compute */
    double cv2 = res->balance.importance_cv2, z = res->balance.z_loss;
    moe_balance_from_counts(&res->balance, p->routed, E);
    res->balance.importance_cv2 = p->importance != NULL ? moe_cv2(p->importance, E) : cv2;
    res->balance.z_loss = z;
    res->balance.rank_overload = moe_max_over_mean(p->rank_rows, R);
    /* what a real run of the planned ranks would allocate on its largest rank */
    moe_config full = *cfg;
    full.predict_only = false;
    res->mem_full_run = 0;
    for (int v = 0; v < R; v++) {
        int64_t first, n, first_e, n_le;
        moe_partition(cfg->tokens, R, v, &first, &n);
        moe_partition(E, R, v, &first_e, &n_le);
        moe_mem_estimate est;
        moe_memory_fixed(&est, &full, R, v, n, n_le);
        moe_memory_exchange_balanced(&est, &full, R, n, n_le);
        res->mem_full_run = est.total > res->mem_full_run ? est.total : res->mem_full_run;
    }
    return MOE_OK;
}
