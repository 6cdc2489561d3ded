#include "moesim/layer.h"

#include "moesim/capacity.h"
#include "moesim/combine.h"
#include "moesim/decide.h"
#include "moesim/dispatch.h"
#include "moesim/driver.h"
#include "moesim/error.h"
#include "moesim/expert.h"
#include "moesim/fileout.h"
#include "moesim/hier.h"
#include "moesim/loss.h"
#include "moesim/memory.h"
#include "moesim/npy.h"
#include "moesim/overflow.h"
#include "moesim/rng.h"
#include "moesim/router.h"
#include "moesim/tokens.h"
#include "moesim/topology.h"
#include "moesim/workload.h"
#include "moesim/xsum.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer_internal.h"

static void *alloc_bytes(moe_layer *L, size_t count, size_t size, int *rc)
{
    if (*rc != MOE_OK)
        return NULL;
    void *p = calloc(count ? count : 1, size);
    if (p == NULL) {
        *rc = MOE_ENOMEM;
        return NULL;
    }
    L->bytes += (int64_t)(count * size);
    moe_driver_advise_huge(p, count * size);
    return p;
}

void *moe_layer_alloc(moe_layer *L, size_t count, size_t size, int *rc)
{
    return alloc_bytes(L, count, size, rc);
}

/* The node's budget: --max-memory (bytes or a share of the node's memory), else MemAvailable; -1
 * when unknown. */
static int64_t node_budget(const moe_config *cfg)
{
    if (cfg->max_memory > 0)
        return cfg->max_memory;
    if (cfg->max_memory_percent > 0.0) {
        int64_t total = moe_driver_mem_total();
        return total > 0 ? (int64_t)((double)total * cfg->max_memory_percent / 100.0) : -1;
    }
    return moe_driver_mem_available();
}

/* Collective: refuse when the ranks of a node together would need more than the node's budget.
 * The sum saturates instead of wrapping (each rank's figure may already be MOE_BYTES_MAX). */
static int check_memory(moe_layer *L, int64_t need, const char *what, char *msg, size_t msglen)
{
    int node_size = 1;
    MOE_MPI_CHECK(MPI_Comm_size(L->node, &node_size), msg, msglen);
    int64_t *all = malloc((size_t)node_size * sizeof *all);
    int rc = all ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK) {
        free(all);
        return rc;
    }
    int mrc = MPI_Allgather(&need, 1, MPI_INT64_T, all, 1, MPI_INT64_T, L->node);
    int64_t node_need = 0;
    for (int i = 0; mrc == MPI_SUCCESS && i < node_size; i++)
        node_need = moe_bytes_add(node_need, all[i]);
    free(all);
    if (mrc != MPI_SUCCESS)
        return moe_mpi_fail(mrc, "MPI_Allgather", __FILE__, __LINE__, msg, msglen);
    int64_t avail = L->budget;
    if (avail > 0 && node_need > avail) {
        char a[32], b[32], c[32];
        moe_memory_format(a, sizeof a, node_need);
        moe_memory_format(b, sizeof b, need);
        moe_memory_format(c, sizeof c, avail);
        rc = moe_fail(MOE_ENOMEM, msg, msglen,
                      "%s would need %s on this node (%s on this rank) but the budget is %s (%s): "
                      "reduce --tokens, --hidden, --ffn or --experts, use more nodes, or %s "
                      "--max-memory",
                      what, a, b, c,
                      L->cfg.max_memory > 0 || L->cfg.max_memory_percent > 0 ? "--max-memory"
                                                                            : "MemAvailable",
                      L->cfg.max_memory > 0 || L->cfg.max_memory_percent > 0 ? "raise" : "set");
    }
    return moe_agree(L->comm, rc, msg, msglen);
}

/* z (n, E) = the router's logits: computed (h W^T) or replayed, plus the workload's bias. */
void moe_layer_logits_rows(moe_layer *L, float *z, int64_t t0, int64_t count)
{
    int64_t E = L->E;
    if (L->z_file != NULL)
        memcpy(z, L->z_file + t0 * E, (size_t)(count * E) * sizeof *z);
    else /* blocks aligned to the global token index: the same floats however the rows are cut */
        moe_router_logits(z, (L->h_route ? L->h_route : L->h) + t0 * L->d, L->w_router,
                          L->tok_off + L->first + t0, count, L->d, L->E, L->router_scratch);
    if (L->has_bias)
        moe_workload_add_bias(z, L->bias, count, L->E);
    if (L->z_noise != NULL) /* Shazeer 2017: H = z + N(0,1) softplus(h W_noise^T) */
        moe_router_add_noise(z, L->z_noise + t0 * E, L->tok_off + L->first + t0, count, L->E,
                             L->cfg.seed);
}

void moe_layer_logits(moe_layer *L, float *z)
{
    moe_layer_logits_rows(L, z, 0, L->n);
}

/* Scores in place of the logits z (n, E), then top-k into L->expert and L->gate: chosen by score +
 * selection bias, gate = the score, normalized over the chosen with --renormalize and always for
 * sigmoid scores (DeepSeek-V3's Gate), times --topk-scale. */
static bool gates_normalized(const moe_config *c)
{
    return c->renormalize || c->score == MOE_SCORE_SIGMOID;
}

/* Token choice into L->expert and L->gate as (n, k): plain or group-limited top-k. */
static void select_top_k(moe_layer *L, const float *p)
{
    const moe_config *c = &L->cfg;
    if (c->group_top_k > 0)
        moe_topk_grouped(L->expert, L->gate, p, L->sel_bias, L->n, L->E, L->k, c->expert_groups,
                         c->group_top_k, gates_normalized(c), c->topk_scale, L->mask, L->gscore);
    else
        moe_topk_select(L->expert, L->gate, p, L->sel_bias, L->n, L->E, L->k, gates_normalized(c),
                        c->topk_scale);
}

static void select_experts(moe_layer *L, float *z)
{
    const moe_config *c = &L->cfg;
    int E = L->E;
    moe_router_scores(z, z, L->n, E, c->score);
    if (L->sel_bias != NULL && L->sel != NULL && z == L->probs)
        for (int64_t t = 0; t < L->n; t++)
            for (int e = 0; e < E; e++)
                L->sel[t * E + e] = z[t * E + e] + L->sel_bias[e];
    if (c->routing != MOE_ROUTING_EXPERT_CHOICE) {
        select_top_k(L, z);
        return;
    }
    /* expert choice: every pair (t, e) is a slot; the experts choose in decide() (Zhou et al.
     * 2022: the gate is the token's softmax score for the expert) */
    for (int64_t t = 0; t < L->n; t++)
        for (int e = 0; e < E; e++) {
            L->expert[t * E + e] = e;
            float g = z[t * E + e];
            L->gate[t * E + e] = c->topk_scale != 1.0 ? (float)((double)g * c->topk_scale) : g;
        }
}

/* Phase 1 of a step: logits, scores, top-k. */
static void route(moe_layer *L)
{
    const moe_config *c = &L->cfg;
    if (c->workload != MOE_WL_NONE) { /* the workload is the routing: no router */
        int step = (int)(L->tok_off / c->tokens);
        moe_wl w = {.kind = c->workload, .E = L->E, .k = L->k, .n_hot = c->wl_hot,
                    .hot_share = c->wl_share, .period = c->period, .tokens = c->tokens,
                    .seed = c->seed, .zero_first = L->E};
        if (c->workload == MOE_WL_ZERO) {
            int64_t first = 0, count = 0;
            moe_partition(L->E, L->R, L->R - 1, &first, &count);
            w.zero_first = (int)first;
        }
        moe_wl_hot_set(L->wl_hot, &w, step);
        moe_wl_route(L->expert, L->gate, L->probs, &w, L->wl_hot, step, L->first, L->n);
        return;
    }
    moe_layer_logits(L, L->probs);
    if (L->z_save != NULL) /* the backward's z-loss and sigmoid need the logits */
        memcpy(L->z_save, L->probs, (size_t)(L->n * L->E) * sizeof *L->z_save);
    select_experts(L, L->probs);
}

static void layout_experts(moe_layer *L);

/* Phase 2: counts to owners, owners decide acceptance under capacity, verdicts back, send plan. */
static int decide(moe_layer *L, char *msg, size_t msglen)
{
    moe_decide_io io = {.sel = L->sel_bias ? L->sel : L->probs,
                        .p = L->probs,
                        .group_cap = L->group_cap,
                        .expert = L->expert,
                        .gate = L->gate,
                        .orig = L->orig,
                        .flag = L->flag,
                        .rerouted = L->rerouted,
                        .routed = L->routed,
                        .cnt_owner = L->cnt_owner,
                        .acc_owner = L->acc_owner,
                        .accepted = L->accepted};
    if (L->orig_gate != NULL) /* the router's gates, for the balance figures */
        memcpy(L->orig_gate, L->gate, (size_t)(L->n * L->k) * sizeof *L->gate);
    int rc = moe_decide(L->decider, &io, msg, msglen);
    if (rc != MOE_OK)
        return rc;
    L->rounds = io.rounds;
    /* the decision is per logical expert; rows go to the physical slot serving each one */
    if (L->mapped)
        for (int64_t t = 0; t < L->n; t++)
            for (int c = 0; c < L->A; c++) {
                int64_t i = t * L->A + c;
                L->phys[i] = L->flag[i] ? moe_expert_map_slot(&L->map, L->first + t, L->expert[i])
                                        : 0;
            }
    int P = L->map.P;
    L->n_send = moe_dispatch_plan(L->slot, L->per_slot, L->phys, L->flag, L->n, L->A, P,
                                  L->scratch);
    if (L->mapped) { /* the owners learn what each source sends each of their slots */
        int mrc = MPI_Alltoallv(L->per_slot, L->slot_sc, L->slot_sd, MPI_INT64_T, L->acc_slot,
                                L->slot_rc, L->slot_rd, MPI_INT64_T, L->comm);
        if (mrc != MPI_SUCCESS)
            return moe_mpi_fail(mrc, "MPI_Alltoallv", __FILE__, __LINE__, msg, msglen);
    }
    L->n_recv = 0;
    for (int r = 0; r < L->R; r++) {
        L->send_rows[r] = 0;
        for (int p = L->map.first_slot[r]; p < L->map.first_slot[r + 1]; p++)
            L->send_rows[r] += L->per_slot[p];
        L->recv_rows[r] = 0;
        for (int64_t ls = 0; ls < L->n_ls; ls++)
            L->recv_rows[r] += L->acc_slot[r * L->n_ls + ls];
        L->n_recv += L->recv_rows[r];
    }
    rc = moe_exchange_set_rows(&L->ex, L->send_rows, L->recv_rows, msg, msglen);
    if (rc == MOE_OK && moe_driver_fault("set_rows", L->rank))
        rc = moe_fail(MOE_ERANGE, msg, msglen, "injected fault (MOESIM_FAULT=set_rows)");
    if (L->per_rank) { /* one row per (token, rank) instead: counted, exchanged, planned */
        if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
            return rc;
        rc = moe_dedup_plan(L, msg, msglen);
        if ((rc = moe_agree(L->comm, rc, msg, msglen)) == MOE_OK && L->nodex)
            rc = moe_nodex_plan(L, msg, msglen);
    }
    if (rc == MOE_OK && L->ex.blk_kind != 0) { /* where each source's rows land in the blocks */
        layout_experts(L);
        rc = moe_exchange_blocks_plan(&L->ex, L->per_slot, L->map.first_slot, L->acc_slot,
                                      (int)L->n_ls, L->x_start, msg, msglen);
        /* fp32 rows need no pack: MPI gathers them from h (send_pos is free until the unpack) */
        if (rc == MOE_OK && L->ex.blk_kind == MOE_REGROUP_W && L->wire_out == MOE_WIRE_FP32) {
            for (int64_t i = 0; i < L->n_send; i++)
                L->send_pos[i] = L->slot[i] / L->A;
            rc = moe_exchange_blocks_plan_send(&L->ex, L->send_pos, L->send_rows, msg, msglen);
        }
    }
    if (L->hier == NULL)
        return rc; /* the callers agree on it before the next collective */
    /* The two-level exchange plans collectively next: agree first, or a rank whose counts do not
     * fit would leave the others waiting in its gathers. */
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    /* each node's leader plans from its members' rows and columns: no rank holds R x R counts */
    const int64_t *out = L->per_rank ? L->dd_send_rows : L->send_rows;
    const int64_t *in = L->per_rank ? L->dd_recv_rows : L->recv_rows;
    rc = moe_hier_plan_rows(L->hier, out, in, msg, msglen);
    if (rc == MOE_OK && L->hier_back != NULL)
        rc = moe_hier_plan_rows(L->hier_back, out, in, msg, msglen);
    if (rc == MOE_OK && moe_driver_fault("hier_plan", L->rank))
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "injected fault (MOESIM_FAULT=hier_plan)");
    return rc;
}

/* What the capacity protocol and the deduplicated dispatch hold once routing is known: the
 * owners' keys (every key sent to my experts, and the most of one expert again), and the rows of
 * --dispatch per-rank out and in, both ways, with the owner's fan-out map. */
static int64_t protocol_bytes(const moe_layer *L)
{
    const moe_config *c = &L->cfg;
    int64_t bytes = 0;
    bool keyed = c->routing == MOE_ROUTING_EXPERT_CHOICE || c->policy == MOE_POLICY_PROBS ||
                 c->policy == MOE_POLICY_CHOICE || c->policy == MOE_POLICY_RANDOM;
    if (keyed && c->scope == MOE_SCOPE_GLOBAL) {
        int64_t all = 0, most = 0;
        for (int64_t le = 0; le < L->n_le; le++) {
            int64_t m = 0;
            for (int s = 0; s < L->R; s++)
                m += L->cnt_owner[s * L->n_le + le];
            all += m;
            most = m > most ? m : most;
        }
        bytes = moe_bytes_mul(moe_bytes_add(all, most), (int64_t)sizeof(moe_key));
    }
    if (L->per_rank && !c->predict_only) {
        int64_t per_row = L->ex.row_out_bytes + L->ex.row_back_bytes;
        bytes = moe_bytes_add(bytes, moe_bytes_mul(L->dd_n_send + L->dd_n_recv, per_row));
        bytes = moe_bytes_add(bytes, moe_bytes_mul(L->dd_n_recv, 8 * (int64_t)L->meta_slots));
    }
    return bytes;
}

/* Capacity of every local expert summed over groups, or MOE_CAPACITY_UNLIMITED. */
int64_t moe_layer_expert_capacity(const moe_layer *L)
{
    return moe_capacity_sum(L->group_cap, L->cfg.scope == MOE_SCOPE_GLOBAL ? 1 : L->R);
}

/* Where each local expert's rows sit in x: accepted rows, or the full capacity when padding. */
static void layout_experts(moe_layer *L)
{
    int64_t cap = moe_layer_expert_capacity(L);
    L->rows_x = 0;
    for (int64_t ls = 0; ls < L->n_ls; ls++) {
        int64_t m = 0;
        for (int s = 0; s < L->R; s++)
            m += L->acc_slot[s * L->n_ls + ls];
        /* padding: a replica computes its share of its expert's capacity, rounded up (or more,
         * when the tokens' t mod m choice sent it more than that share) */
        int64_t share = cap;
        if (L->mapped && cap != MOE_CAPACITY_UNLIMITED) {
            int64_t reps = L->map.replicas[L->map.logical[L->first_ls + ls]];
            share = (cap + reps - 1) / reps;
            share = share > m ? share : m;
        }
        L->x_start[ls] = L->rows_x;
        L->x_rows[ls] = L->cfg.pad_to_capacity ? share : m;
        L->rows_x += L->x_rows[ls];
    }
}

/* Hot experts: find the extra bias b on experts 0..n-1 that makes the chosen share of the batch's
 * tokens pick at least one of them. The share grows monotonically with b, so bisect; each probe
 * routes the local tokens as routing does (select_experts) and sums over ranks. Collective. */
static int calibrate_hot(moe_layer *L, char *msg, size_t msglen)
{
    const moe_config *c = &L->cfg;
    moe_workload_bias(L->bias, L->E, c->skew, 0, 0.0);
    L->has_bias = c->skew != 0.0 || c->hot_experts > 0;
    if (c->hot_experts == 0)
        return MOE_OK;
    float *z = malloc((size_t)(L->n * L->E + 1) * sizeof *z);
    float *biased = malloc((size_t)(L->n * L->E + 1) * sizeof *biased);
    int rc = z && biased ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory calibrating hot experts");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    L->has_bias = 0;
    moe_layer_logits(L, z); /* without bias */
    double lo = -50.0, hi = 50.0, target = c->hot_share * (double)c->tokens;
    int64_t hot_all = 0;
    for (int it = 0; it < 60; it++) {
        double mid = 0.5 * (lo + hi);
        moe_workload_bias(L->bias, L->E, c->skew, c->hot_experts, mid);
        memcpy(biased, z, (size_t)(L->n * L->E) * sizeof *z);
        moe_workload_add_bias(biased, L->bias, L->n, L->E);
        /* rank the float32 scores (and selection bias) as routing does: logits one ulp apart
         * can tie there */
        moe_router_scores(biased, biased, L->n, L->E, c->score);
        select_top_k(L, biased);
        int64_t hot = moe_workload_hot_tokens(L->expert, L->n, L->k, c->hot_experts);
        int mrc = MPI_Allreduce(&hot, &hot_all, 1, MPI_INT64_T, MPI_SUM, L->comm);
        if (mrc != MPI_SUCCESS) {
            rc = moe_mpi_fail(mrc, "MPI_Allreduce", __FILE__, __LINE__, msg, msglen);
            goto done;
        }
        if ((double)hot_all < target)
            lo = mid;
        else
            hi = mid;
    }
    /* hi reaches the target (or is the largest bias tried); the share it achieves is measured on
     * the routing itself once the layer routes (measure_hot_share) */
    L->hot_bias = hi;
    moe_workload_bias(L->bias, L->E, c->skew, c->hot_experts, hi);
    L->has_bias = 1;
done:
    free(z);
    free(biased);
    return rc;
}

/* The share of tokens that routing sends to at least one hot expert, from the routing itself (the
 * same float32 probabilities and ties), so the reported share is the routed one. Collective. */
static int measure_hot_share(moe_layer *L, char *msg, size_t msglen)
{
    if (L->cfg.hot_experts == 0)
        return MOE_OK;
    int64_t hot = moe_workload_hot_tokens(L->expert, L->n, L->k, L->cfg.hot_experts), all = 0;
    MOE_MPI_CHECK(MPI_Allreduce(&hot, &all, 1, MPI_INT64_T, MPI_SUM, L->comm), msg, msglen);
    L->hot_share = (double)all / (double)L->cfg.tokens;
    return MOE_OK;
}

/* --expert-bias-file: E float32 values, as shape (1, E) or (E, 1), read by every rank (the
 * caller agrees on the outcome). Finite values only (the reader refuses NaN and infinity). */
static int load_selection_bias(moe_layer *L, char *msg, size_t msglen)
{
    const char *path = L->cfg.expert_bias_file;
    moe_npy_header hdr;
    char inner[768];
    int rc = moe_input_check(path, "--expert-bias-file", msg, msglen);
    if (rc == MOE_OK && (rc = moe_npy_read_header(path, &hdr, inner, sizeof inner)) != MOE_OK)
        return moe_fail(rc, msg, msglen,
                        "--expert-bias-file: %s (it must hold E = %d float32 values, saved as "
                        "shape (1, %d) or (%d, 1))",
                        inner, L->E, L->E, L->E);
    if (rc != MOE_OK)
        return rc;
    if (!((hdr.rows == 1 && hdr.cols == L->E) || (hdr.rows == L->E && hdr.cols == 1)))
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--expert-bias-file '%s' has shape (%lld, %lld), but the layer has %d "
                        "experts: it must be (1, %d) or (%d, 1)",
                        path, (long long)hdr.rows, (long long)hdr.cols, L->E, L->E, L->E);
    rc = moe_npy_read_rows(path, &hdr, 0, hdr.rows, L->sel_bias, inner, sizeof inner);
    if (rc != MOE_OK)
        return moe_fail(rc, msg, msglen, "--expert-bias-file: %s", inner);
    return MOE_OK;
}

/* Token states h of this rank's tokens [off, off + count) into L->h (count rows). */
static int load_tokens(moe_layer *L, int64_t off, int64_t count, char *msg, size_t msglen)
{
    const moe_config *c = &L->cfg;
    int rc = MOE_OK;
    if (c->tokens_file != NULL) {
        moe_npy_header hdr;
        rc = moe_npy_read_header(c->tokens_file, &hdr, msg, msglen);
        if (rc == MOE_OK)
            rc = moe_npy_read_rows(c->tokens_file, &hdr, L->tok_off + L->first + off, count, L->h,
                                   msg, msglen);
    } else if (c->clusters > 0) {
        moe_workload_clustered_tokens(L->h, c->seed, L->tok_off + L->first + off, count, L->d,
                                      c->clusters);
    } else {
        moe_tokens_generate(L->h, c->seed, L->tok_off + L->first + off, count, L->d);
    }
    if (c->token_mean != 0.0 && c->tokens_file == NULL)
        moe_workload_add_mean(L->h, c->seed, count, L->d, c->token_mean);
    return rc;
}

/* --predict-only: the logits h W^T (unless replayed) and the noise logits of --noisy-top-k,
 * chunk by chunk of h (jittered first with --input-jitter), into the (n, E) buffers the step
 * would use; the same values as a real run computes from the whole h. Not collective. */
static int logits_by_chunks(moe_layer *L, char *msg, size_t msglen)
{
    const moe_config *c = &L->cfg;
    if (c->logits_file != NULL && !c->noisy_top_k)
        return MOE_OK;
    int rc = MOE_OK;
    for (int64_t off = 0; rc == MOE_OK && off < L->n; off += L->h_rows) {
        int64_t count = L->n - off < L->h_rows ? L->n - off : L->h_rows;
        if ((rc = load_tokens(L, off, count, msg, msglen)) != MOE_OK)
            break;
        if (c->input_jitter > 0.0)
            moe_router_jitter(L->h, L->h, L->first + off, count, L->d, c->input_jitter, c->seed);
        if (c->logits_file == NULL)
            moe_router_logits(L->z_file + off * L->E, L->h, L->w_router, L->first + off, count,
                              L->d, L->E, L->router_scratch);
        if (L->z_noise != NULL)
            moe_router_logits(L->z_noise + off * L->E, L->h, L->w_noise, L->first + off, count,
                              L->d, L->E, L->router_scratch);
    }
    return rc;
}

/* This step's batch: h and the replayed logits of this rank's tokens, the step's slice (tokens
 * tok_off + first + [0, n) of the generator or the files). */
static int load_batch(moe_layer *L, char *msg, size_t msglen)
{
    const moe_config *c = &L->cfg;
    int rc = MOE_OK;
    if (!c->predict_only) /* --predict-only: h comes a chunk at a time (logits_by_chunks) */
        rc = load_tokens(L, 0, L->n, msg, msglen);
    if (rc == MOE_OK && c->logits_file != NULL) {
        moe_npy_header hdr;
        rc = moe_npy_read_header(c->logits_file, &hdr, msg, msglen);
        if (rc == MOE_OK)
            rc = moe_npy_read_rows(c->logits_file, &hdr, L->tok_off + L->first, L->n, L->z_file,
                                   msg, msglen);
    }
    return rc;
}

static int load_inputs(moe_layer *L, char *msg, size_t msglen)
{
    const moe_config *c = &L->cfg;
    int rc = load_batch(L, msg, msglen);
    if (rc != MOE_OK || c->logits_file != NULL) {
        /* the logits replace the router */
    } else if (c->router_file != NULL) {
        moe_npy_header hdr;
        rc = moe_npy_read_header(c->router_file, &hdr, msg, msglen);
        if (rc == MOE_OK)
            rc = moe_npy_read_rows(c->router_file, &hdr, 0, hdr.rows, L->w_router, msg, msglen);
    } else if (rc == MOE_OK) {
        /* W ~ N(0, 1/d): logits of order one for standard-normal tokens */
        moe_rng_fill_normal(L->w_router, (size_t)(L->E * L->d), c->seed, MOE_STREAM_ROUTER, 0,
                            1.0 / sqrt((double)L->d));
    }
    if (rc == MOE_OK && c->expert_bias_file != NULL)
        rc = load_selection_bias(L, msg, msglen);
    /* shared expert s has the weights a routed expert of id MOE_MAX_EXPERTS + s would have */
    for (int s = 0; rc == MOE_OK && L->ws1 != NULL && s < L->S; s++)
        moe_expert_init(L->ws1 + (int64_t)s * L->fs * L->d, L->ws2 + (int64_t)s * L->d * L->fs,
                        c->seed, MOE_MAX_EXPERTS + s, L->d, L->fs);
    if (rc == MOE_OK && L->w_noise != NULL) /* W_noise ~ N(0, 1/d), as W */
        moe_rng_fill_normal(L->w_noise, (size_t)(L->E * L->d), c->seed, MOE_STREAM_ROUTER_NOISE, 0,
                            1.0 / sqrt((double)L->d));
    return rc;
}

/* Where every rank runs: node grouping (shared memory, or --ranks-per-node), then hwloc on each
 * rank, gathered everywhere. Collective. */
static int discover_placement(moe_layer *L, char *msg, size_t msglen)
{
    int R = L->R, rc = MOE_OK, mrc;
    int local_rank = 0;
    if (L->cfg.ranks_per_node > 0) {
        L->node_of_rank[L->rank] = L->rank / L->cfg.ranks_per_node;
        local_rank = L->rank % L->cfg.ranks_per_node;
    } else {
        /* the node is named by its lowest world rank; index nodes in that order */
        int lowest = L->rank;
        MOE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &lowest, 1, MPI_INT, MPI_MIN, L->node), msg, msglen);
        MOE_MPI_CHECK(MPI_Comm_rank(L->node, &local_rank), msg, msglen);
        L->node_of_rank[L->rank] = lowest;
    }
    MOE_MPI_CHECK(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, L->node_of_rank, 1, MPI_INT,
                                L->comm),
                  msg, msglen);
    if (L->cfg.ranks_per_node == 0) {
        /* lowest ranks -> 0, 1, 2, ... in order of first appearance */
        int next = 0;
        for (int r = 0; r < R; r++) {
            int name = L->node_of_rank[r];
            if (name == r) {
                for (int q = r; q < R; q++)
                    if (L->node_of_rank[q] == name)
                        L->node_of_rank[q] = -1 - next;
                next++;
            }
        }
        for (int r = 0; r < R; r++)
            L->node_of_rank[r] = -1 - L->node_of_rank[r];
    }
    /* one hwloc load per node: the node's first rank describes every rank of it by pid */
    int node_rank = 0, node_size = 1;
    MOE_MPI_CHECK(MPI_Comm_rank(L->node, &node_rank), msg, msglen);
    MOE_MPI_CHECK(MPI_Comm_size(L->node, &node_size), msg, msglen);
    int me[2] = {(int)getpid(), local_rank};
    /* on the first: the gathered (pid, local rank) pairs, then the pids, then the local ranks */
    int *ids = node_rank == 0 ? malloc(4 * (size_t)node_size * sizeof *ids) : NULL;
    moe_placement *all = node_rank == 0 ? malloc((size_t)node_size * sizeof *all) : NULL;
    rc = node_rank == 0 && (!ids || !all) ? moe_fail(MOE_ENOMEM, msg, msglen, "out of memory")
                                          : MOE_OK;
    mrc = MPI_Gather(me, 2, MPI_INT, ids, 2, MPI_INT, 0, L->node);
    if (mrc != MPI_SUCCESS)
        rc = moe_mpi_fail(mrc, "MPI_Gather", __FILE__, __LINE__, msg, msglen);
    if (rc == MOE_OK && node_rank == 0) {
        int *pids = ids + 2 * node_size, *lranks = ids + 3 * node_size;
        for (int i = 0; i < node_size; i++) {
            pids[i] = i == 0 ? 0 : ids[2 * i]; /* 0: this process */
            lranks[i] = ids[2 * i + 1];
        }
        rc = moe_topology_describe_many(all, node_size, pids, lranks, L->cfg.topology, msg,
                                        msglen);
    }
    moe_placement mine;
    mrc = MPI_Scatter(all, (int)sizeof mine, MPI_BYTE, &mine, (int)sizeof mine, MPI_BYTE, 0,
                      L->node);
    free(ids);
    free(all);
    if (rc == MOE_OK && mrc != MPI_SUCCESS)
        rc = moe_mpi_fail(mrc, "MPI_Scatter", __FILE__, __LINE__, msg, msglen);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    mine.rank = L->rank;
    mine.node = L->node_of_rank[L->rank];
    mrc = MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, L->placement, (int)sizeof mine, MPI_BYTE,
                        L->comm);
    if (mrc != MPI_SUCCESS)
        return moe_mpi_fail(mrc, "MPI_Allgather", __FILE__, __LINE__, msg, msglen);
    return MOE_OK;
}

static void plan_raw_rows(moe_layer *L, int *counts);

/* What routing needs once the inputs are there: the jittered copy of h and the noise logits,
 * both fixed for the life of the layer (the counter generator gives the same values each step). */
static void prepare_router(moe_layer *L)
{
    const moe_config *c = &L->cfg;
    if (L->h_route != NULL)
        moe_router_jitter(L->h_route, L->h, L->tok_off + L->first, L->n, L->d, c->input_jitter,
                          c->seed);
    if (L->z_noise != NULL)
        moe_router_logits(L->z_noise, L->h_route ? L->h_route : L->h, L->w_noise,
                          L->tok_off + L->first, L->n,
                          L->d, L->E, L->router_scratch);
}

/* Group-limited routing with only --group-top-k: one group per node (node-limited routing,
 * DeepSeek-V2/V3), checked as the option parser checks explicit groups. Every rank sees the same
 * placement, so every rank decides the same. */
static int resolve_groups(moe_layer *L, char *msg, size_t msglen)
{
    moe_config *c = &L->cfg;
    if (c->hot_experts > 0 && c->routing == MOE_ROUTING_EXPERT_CHOICE)
        return moe_agree(L->comm,
                         moe_fail(MOE_EUSAGE, msg, msglen,
                                  "--hot-experts calibrates a top-k router: with --routing "
                                  "expert-choice shape the load with --skew instead"),
                         msg, msglen);
    if (c->group_top_k == 0)
        return MOE_OK;
    int G = c->expert_groups;
    if (G == 0) {
        for (int r = 0; r < L->R; r++)
            G = L->node_of_rank[r] + 1 > G ? L->node_of_rank[r] + 1 : G;
        c->expert_groups = G;
    }
    int M = c->group_top_k, rc = MOE_OK;
    if (L->E % G != 0)
        rc = moe_fail(MOE_EUSAGE, msg, msglen,
                      "group-limited routing: %d experts do not split into %d groups of equal size "
                      "(one per node); give --expert-groups G with G dividing %d",
                      L->E, G, L->E);
    else if (M > G)
        rc = moe_fail(MOE_EUSAGE, msg, msglen,
                      "--%s %d is more than the %d expert groups (one per node here)",
                      c->spelled.group_top_k, M, G);
    else if ((int64_t)M * (L->E / G) < L->k)
        rc = moe_fail(MOE_EUSAGE, msg, msglen,
                      "--%s %d keeps %d groups of %d experts: fewer than --%s %d",
                      c->spelled.group_top_k, M, M, L->E / G, c->spelled.top_k, L->k);
    else if (M > L->k)
        rc = moe_fail(MOE_EUSAGE, msg, msglen,
                      "--group-top-k %d is more than --top-k %d: a group's score is the sum of its "
                      "top k/M experts",
                      M, L->k);
    if (rc == MOE_OK && c->routing == MOE_ROUTING_EXPERT_CHOICE)
        rc = moe_fail(MOE_EUSAGE, msg, msglen,
                      "group-limited routing limits the experts a token chooses: it has no meaning "
                      "with --routing expert-choice");
    return moe_agree(L->comm, rc, msg, msglen);
}

/* Raw baseline counts: the same rows as bytes (MPI_BYTE) when every count and displacement fits an
 * int, else in rows of the row type. Not collective; the choice is the same on every rank only if
 * the sizes are, so it is agreed by the caller. */
/* The rows that travel: per (token, expert), or per (token, rank) with --dispatch per-rank. */
static const int64_t *travel_send(const moe_layer *L)
{
    return L->per_rank ? L->dd_send_rows : L->send_rows;
}

static const int64_t *travel_recv(const moe_layer *L)
{
    return L->per_rank ? L->dd_recv_rows : L->recv_rows;
}

static int plan_raw(moe_layer *L, int *counts, int64_t unit, int *use_bytes)
{
    int R = L->R;
    const int64_t *send_rows = travel_send(L), *recv_rows = travel_recv(L);
    int64_t total_s = 0, total_r = 0;
    for (int r = 0; r < R; r++) {
        total_s += send_rows[r];
        total_r += recv_rows[r];
    }
    *use_bytes = (total_s * unit <= INT_MAX && total_r * unit <= INT_MAX);
    int64_t scale = *use_bytes ? unit : 1;
    int *sc = counts, *sd = sc + R, *rcn = sc + 2 * R, *rd = sc + 3 * R;
    int64_t so = 0, ro = 0;
    for (int r = 0; r < R; r++) {
        sc[r] = (int)(send_rows[r] * scale);
        sd[r] = (int)so;
        so += send_rows[r] * scale;
        rcn[r] = (int)(recv_rows[r] * scale);
        rd[r] = (int)ro;
        ro += recv_rows[r] * scale;
    }
    return MOE_OK;
}

/* Raw baseline in rows, when some rank's bytes overflow an int. */
static void plan_raw_rows(moe_layer *L, int *counts)
{
    int R = L->R;
    int *sc = counts, *sd = sc + R, *rcn = sc + 2 * R, *rd = sc + 3 * R;
    const int64_t *send_rows = travel_send(L), *recv_rows = travel_recv(L);
    int64_t so = 0, ro = 0;
    for (int r = 0; r < R; r++) {
        sc[r] = (int)send_rows[r];
        sd[r] = (int)so;
        so += send_rows[r];
        rcn[r] = (int)recv_rows[r];
        rd[r] = (int)ro;
        ro += recv_rows[r];
    }
}

/* Collective: the expert map (placement.h) from the configuration and, for EPLB, the loads (this
 * batch's routed counts, or --eplb-from); the per-slot arrays; then this rank's experts' weights
 * (a replica has its expert's). The rank overload of plain contiguous experts is kept for the
 * report. Every rank builds the same map from the same loads. */
static int place_experts(moe_layer *L, char *msg, size_t msglen)
{
    const moe_config *c = &L->cfg;
    int E = L->E, R = L->R, rc = MOE_OK;
    double *loads = calloc((size_t)E, sizeof *loads);
    int64_t *routed = calloc((size_t)E, sizeof *routed), *all = calloc((size_t)E, sizeof *all);
    if (!loads || !routed || !all)
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory placing experts");
    if (rc == MOE_OK && c->placement == MOE_PLACE_EPLB && c->routing == MOE_ROUTING_EXPERT_CHOICE)
        rc = moe_fail(MOE_EUSAGE, msg, msglen,
                      "expert choice balances itself (every expert takes C tokens): EPLB "
                      "placement is for token choice");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    /* the router's choices before capacity: the load EPLB balances */
    for (int64_t i = 0; i < L->n * L->A; i++)
        routed[L->expert[i]]++;
    MOE_MPI_CHECK(MPI_Allreduce(routed, all, E, MPI_INT64_T, MPI_SUM, L->comm), msg, msglen);
    for (int e = 0; e < E; e++)
        loads[e] = (double)all[e];
    if (c->placement == MOE_PLACE_EPLB && c->eplb_from != NULL) {
        char inner[768];
        rc = moe_loads_read(c->eplb_from, E, loads, inner, sizeof inner);
        if (rc != MOE_OK)
            moe_fail(MOE_EUSAGE, msg, msglen, "--eplb-from %s", inner);
    }
    if (rc == MOE_OK)
        rc = moe_expert_map_build(&L->map, c->placement, E, R, c->redundant_experts, loads, msg,
                                  msglen);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    {
        /* before: contiguous experts, no replicas, each rank computing its experts' routed rows */
        double *per_rank = calloc((size_t)R, sizeof *per_rank);
        for (int e = 0; per_rank && e < E; e++)
            per_rank[moe_partition_owner(E, R, e)] += (double)all[e];
        L->overload_before = per_rank ? moe_max_over_mean(per_rank, R) : 0.0;
        free(per_rank);
    }
    int P = L->map.P;
    L->mapped = c->placement != MOE_PLACE_CONTIGUOUS || c->redundant_experts > 0;
    L->first_ls = L->map.first_slot[L->rank];
    L->n_ls = L->map.first_slot[L->rank + 1] - L->first_ls;
    if (L->mapped) {
        L->phys = calloc((size_t)(L->n * L->A + 1), sizeof *L->phys);
        L->per_slot = calloc((size_t)P, sizeof *L->per_slot);
        L->acc_slot = calloc((size_t)R * (size_t)(L->n_ls + 1), sizeof *L->acc_slot);
        L->slot_sc = calloc(4 * (size_t)R, sizeof *L->slot_sc);
        if (!L->phys || !L->per_slot || !L->acc_slot || !L->slot_sc)
            rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory placing experts");
        else {
            L->bytes += (L->n * L->A) * 4 + P * 8 + R * L->n_ls * 8;
            L->slot_sd = L->slot_sc + R;
            L->slot_rc = L->slot_sc + 2 * R;
            L->slot_rd = L->slot_sc + 3 * R;
            for (int r = 0; r < R; r++) {
                L->slot_sc[r] = L->map.first_slot[r + 1] - L->map.first_slot[r];
                L->slot_sd[r] = L->map.first_slot[r];
                L->slot_rc[r] = (int)L->n_ls;
                L->slot_rd[r] = (int)(r * L->n_ls);
            }
        }
    } else { /* the identity: slots are experts */
        L->phys = L->expert;
        L->per_slot = L->per_expert;
        L->acc_slot = L->acc_owner;
    }
    if (rc == MOE_OK) {
        L->owner_of = alloc_bytes(L, (size_t)P, sizeof(int), &rc);
        L->local_of = alloc_bytes(L, (size_t)P, sizeof(int), &rc);
    }
    for (int p = 0; rc == MOE_OK && p < P; p++) {
        L->owner_of[p] = L->map.rank[p];
        L->local_of[p] = p - L->map.first_slot[L->map.rank[p]];
    }
    /* rows straight into the experts' blocks, as many exchanges as the busiest rank's slots */
    L->regroup = moe_config_regroup(c, R);
    L->probe[0] = L->probe[1] = NAN;
    /* auto: alltoallw's dispatch, and the combine the probe finds faster on this machine */
    L->probe_pending = moe_config_regroup_probes(c, R);
    if (rc == MOE_OK && L->regroup != MOE_REGROUP_COPY && !c->predict_only) {
        int most = 0;
        for (int r = 0; r < R; r++)
            if (L->map.first_slot[r + 1] - L->map.first_slot[r] > most)
                most = L->map.first_slot[r + 1] - L->map.first_slot[r];
        rc = moe_exchange_blocks_init(&L->ex,
                                      L->probe_pending ? MOE_REGROUP_W_SLOTS : (int)L->regroup,
                                      most, msg, msglen);
        L->ex.blk_back_slots = L->regroup == MOE_REGROUP_W_SLOTS;
    }
    /* this rank's experts: one per local slot, with its logical expert's weights */
    bool weights = !c->predict_only && c->mode != MOE_MODE_DISPATCH;
    size_t w = weights ? (size_t)L->n_ls * (size_t)(L->f * L->d) : 0;
    if (rc == MOE_OK) {
        L->mem.experts = (int64_t)w * 2 * (int64_t)sizeof(float) +
                         (L->S > 0 && weights ? 2 * (int64_t)L->S * L->fs * L->d * 4 +
                                                    L->n * (L->fs + L->d) * 4
                                              : 0);
        L->w1 = alloc_bytes(L, w, sizeof(float), &rc);
        L->w2 = alloc_bytes(L, w, sizeof(float), &rc);
        if (rc != MOE_OK)
            moe_fail(rc, msg, msglen, "out of memory for the experts' weights");
    }
    for (int64_t ls = 0; rc == MOE_OK && weights && ls < L->n_ls; ls++)
        moe_expert_init(L->w1 + ls * L->f * L->d, L->w2 + ls * L->d * L->f, c->seed,
                        L->map.logical[L->first_ls + ls], L->d, L->f);
    rc = moe_agree(L->comm, rc, msg, msglen);
done:
    free(loads);
    free(routed);
    free(all);
    return rc;
}

int moe_layer_create(moe_layer **out, const moe_config *cfg, MPI_Comm comm, char *msg,
                     size_t msglen)
{
    *out = NULL;
    moe_layer *L = calloc(1, sizeof *L);
    int rc = L == NULL ? moe_fail(MOE_ENOMEM, msg, msglen, "out of memory") : MOE_OK;
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK) {
        free(L);
        return rc;
    }
    *out = L;
    L->cfg = *cfg;
    L->comm = comm;
    L->node = MPI_COMM_NULL;
    L->ex.row = MPI_DATATYPE_NULL;
    MPI_Comm_rank(comm, &L->rank);
    MPI_Comm_size(comm, &L->R);
    L->E = cfg->experts;
    L->k = cfg->top_k;
    L->A = cfg->routing == MOE_ROUTING_EXPERT_CHOICE ? L->E : L->k;
    L->S = cfg->shared_experts;
    L->fs = cfg->shared_ffn > 0 ? cfg->shared_ffn : cfg->ffn;
    L->d = cfg->hidden;
    L->f = cfg->ffn;
    /* the ranks' token blocks: --tokens-per-rank, source-ragged's shares, or even */
    if (cfg->tokens_per_rank != NULL || cfg->workload == MOE_WL_RAGGED) {
        /* the list was checked for R by moe_config_resolve: NULL here is memory */
        L->blocks = moe_config_token_blocks(cfg, L->R);
        rc = L->blocks == NULL ? moe_fail(MOE_ENOMEM, msg, msglen, "out of memory") : MOE_OK;
        if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
            return rc;
    }
    moe_token_block(L->blocks, cfg->tokens, L->R, L->rank, &L->first, &L->n);
    moe_partition(L->E, L->R, L->rank, &L->first_e, &L->n_le);

    int mrc = MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, L->rank, MPI_INFO_NULL, &L->node);
    rc = mrc == MPI_SUCCESS ? MOE_OK
                            : moe_mpi_fail(mrc, "MPI_Comm_split_type", __FILE__, __LINE__, msg, msglen);
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    /* What this rank will allocate whatever the routing, from the configuration alone and
     * before the first allocation that grows with the run (and before the topology is
     * discovered, which takes a while): tokens, router, assignments, experts, results, dumps. A
     * run whose fixed part cannot fit is refused here, in well under a second. The exchange and
     * expert buffers depend on what capacity accepts; they are added exactly once routing is
     * known, and checked then (moe_layer_set_capacity_factor), before they are allocated. The
     * fixed part is a lower bound of the final estimate, so the figure that refuses a run is
     * never below the one a successful run reports. */
    L->budget = node_budget(cfg);
    moe_memory_fixed(&L->mem, cfg, L->R, L->rank, L->n, L->n_le);
    if ((rc = check_memory(L, L->mem.total, "this run", msg, msglen)) != MOE_OK)
        return rc;
    rc = moe_exchange_init(&L->ex, comm, L->d, L->E, msg, msglen);
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    L->raw_type = L->raw_type_back = MPI_BYTE;
    L->wire_out = cfg->wire;
    L->wire_back = cfg->wire_combine;
    /* per-rank rows carry their metadata; the combine sends payload only */
    L->per_rank = cfg->dispatch == MOE_DISPATCH_PER_RANK;
    /* a rank holds at most ceil(P / R) slots, P = experts + replicas: a token's entries there */
    L->meta_slots =
        L->per_rank ? moe_dedup_meta_slots(L->A, L->E + cfg->redundant_experts, L->R) : 0;
    rc = moe_exchange_set_wire(
        &L->ex, moe_dedup_row_bytes(moe_wire_row_bytes(L->wire_out, L->d), L->meta_slots),
        moe_wire_row_bytes(L->wire_back, L->d), msg, msglen);
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    L->placement = calloc((size_t)L->R, sizeof *L->placement);
    L->node_of_rank = calloc((size_t)L->R, sizeof *L->node_of_rank);
    L->raw_counts = calloc((size_t)L->R * 8, sizeof *L->raw_counts);
    rc = L->placement && L->node_of_rank && L->raw_counts
             ? MOE_OK
             : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    if ((rc = discover_placement(L, msg, msglen)) != MOE_OK)
        return rc;
    if ((rc = resolve_groups(L, msg, msglen)) != MOE_OK)
        return rc;
    /* per-rank rows under the two-level exchange cross it once per node instead (nodex.c,
     * created once the experts are placed) */
    L->nodex = cfg->hierarchical && L->per_rank;
    if (cfg->hierarchical && !L->nodex) {
        rc = moe_hier_create(&L->hier, comm, L->node_of_rank, L->ex.row_out, L->ex.row_out_bytes,
                             msg, msglen);
        /* rows that come back in another format need a two-level exchange of their own */
        if (rc == MOE_OK && L->ex.row_back_bytes != L->ex.row_out_bytes)
            rc = moe_hier_create(&L->hier_back, comm, L->node_of_rank, L->ex.row_back,
                                 L->ex.row_back_bytes, msg, msglen);
        if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
            return rc;
    }

    double need = (double)L->mem.total;

    size_t R = (size_t)L->R, En = (size_t)L->E, nk = (size_t)(L->n * L->A), le = (size_t)L->n_le;
    size_t nd = (size_t)(L->n * L->d);
    rc = MOE_OK;
    /* --predict-only holds no token payload: h is read or generated a chunk of rows at a time
     * and only the logits (n, E) are kept, so any hidden size plans in little memory */
    L->h_rows = cfg->predict_only ? moe_predict_chunk_rows(L->n, L->d) : L->n;
    L->h = alloc_bytes(L, (size_t)(L->h_rows * L->d), sizeof(float), &rc);
    L->y = alloc_bytes(L, cfg->predict_only ? 0 : nd, sizeof(float), &rc); /* no output without a step */
    L->w_router = alloc_bytes(L, En * (size_t)L->d, sizeof(float), &rc);
    L->router_scratch =
        alloc_bytes(L, (size_t)MOE_ROUTER_BLOCK * (size_t)(L->d + L->E), sizeof(float), &rc);
    L->bias = alloc_bytes(L, En, sizeof(float), &rc);
    if (moe_config_has_selection_bias(cfg))
        L->sel_bias = alloc_bytes(L, En, sizeof(float), &rc); /* zeros: calloc */
    if (cfg->logits_file != NULL || cfg->predict_only) /* replayed, or computed once */
        L->z_file = alloc_bytes(L, (size_t)L->n * En, sizeof(float), &rc);
    L->probs = alloc_bytes(L, (size_t)L->n * En, sizeof(float), &rc);
    if (moe_config_has_selection_bias(cfg))
        L->sel = alloc_bytes(L, (size_t)L->n * En, sizeof(float), &rc);
    if (cfg->noisy_top_k) {
        L->w_noise = alloc_bytes(L, En * (size_t)L->d, sizeof(float), &rc);
        L->z_noise = alloc_bytes(L, (size_t)L->n * En, sizeof(float), &rc);
    }
    if (cfg->input_jitter > 0.0 && !cfg->predict_only) /* predict-only jitters its chunks */
        L->h_route = alloc_bytes(L, nd, sizeof(float), &rc);
    if (cfg->group_top_k > 0) {
        L->mask = alloc_bytes(L, En, sizeof(uint8_t), &rc);
        L->gscore = alloc_bytes(L, (size_t)L->cfg.expert_groups + (size_t)L->cfg.top_k,
                                sizeof(double), &rc);
    }
    if (cfg->workload != MOE_WL_NONE)
        L->wl_hot = alloc_bytes(L, En, sizeof(uint8_t), &rc);
    L->expert = alloc_bytes(L, nk, sizeof(int32_t), &rc);
    L->gate = alloc_bytes(L, nk, sizeof(float), &rc);
    L->flag = alloc_bytes(L, nk, sizeof(uint8_t), &rc);
    L->rerouted = alloc_bytes(L, nk, sizeof(uint8_t), &rc);

    if (L->per_rank) {
        size_t pairs = (size_t)L->n * (size_t)(L->A < L->R ? L->A : L->R);
        L->dd_tok = alloc_bytes(L, pairs, sizeof(int64_t), &rc);
        L->dd_send_rows = alloc_bytes(L, R, sizeof(int64_t), &rc);
        L->dd_recv_rows = alloc_bytes(L, R, sizeof(int64_t), &rc);
        L->dd_cursor = alloc_bytes(L, R, sizeof(int64_t), &rc);
        L->dd_last = alloc_bytes(L, R, sizeof(int64_t), &rc);
        L->dd_seen = alloc_bytes(L, R, sizeof(int), &rc);
        L->dd_sum = alloc_bytes(L, (size_t)L->d, sizeof(float), &rc);
    }
    if (cfg->wire != MOE_WIRE_FP32)
        L->send_tok = alloc_bytes(L, nk, sizeof(int64_t), &rc);
    if (cfg->policy == MOE_POLICY_REROUTE && cfg->routing == MOE_ROUTING_TOKEN_CHOICE) {
        L->orig = alloc_bytes(L, (size_t)(L->n * L->k), sizeof(int32_t), &rc);
        L->orig_gate = alloc_bytes(L, (size_t)(L->n * L->k), sizeof(float), &rc);
    }
    /* dispatch mode: identity experts, so no weights, and the shared experts (which move no
     * data) are left out */
    if (cfg->mode == MOE_MODE_DISPATCH)
        L->S = 0;
    if (L->S > 0 && !cfg->predict_only) {
        size_t ws = (size_t)L->S * (size_t)(L->fs * L->d);
        L->ws1 = alloc_bytes(L, ws, sizeof(float), &rc);
        L->ws2 = alloc_bytes(L, ws, sizeof(float), &rc);
        L->s_act = alloc_bytes(L, (size_t)(L->n * L->fs), sizeof(float), &rc);
        L->s_out = alloc_bytes(L, nd, sizeof(float), &rc);
    }
    L->slot = alloc_bytes(L, nk, sizeof(int64_t), &rc);
    L->send_pos = alloc_bytes(L, nk, sizeof(int64_t), &rc); /* the unpack's scratch */
    L->routed = alloc_bytes(L, En, sizeof(int64_t), &rc);
    L->accepted = alloc_bytes(L, En, sizeof(int64_t), &rc);
    L->per_expert = alloc_bytes(L, En, sizeof(int64_t), &rc);
    /* scratch: E, or every physical slot with replicas (the dispatch plan's cursor) */
    L->scratch = alloc_bytes(L, En + (size_t)cfg->redundant_experts, sizeof(int64_t), &rc);
    L->send_rows = alloc_bytes(L, R, sizeof(int64_t), &rc);
    L->recv_rows = alloc_bytes(L, R, sizeof(int64_t), &rc);
    L->group_cap = alloc_bytes(L, R, sizeof(int64_t), &rc);
    L->cnt_owner = alloc_bytes(L, R * le, sizeof(int64_t), &rc);
    L->acc_owner = alloc_bytes(L, R * le, sizeof(int64_t), &rc);
    /* per local slot: at most every expert and replica */
    size_t slots_max = (size_t)(L->E + cfg->redundant_experts);
    L->x_start = alloc_bytes(L, slots_max, sizeof(int64_t), &rc);
    L->x_rows = alloc_bytes(L, slots_max, sizeof(int64_t), &rc);
    L->placed = alloc_bytes(L, slots_max, sizeof(int64_t), &rc);
    /* --predict-only never runs an expert: no weights */
    if (rc != MOE_OK)
        moe_fail(rc, msg, msglen, "out of memory allocating %.2f GiB of tokens, router and experts",
                 need / 1073741824.0);
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
        return rc;

    rc = load_inputs(L, msg, msglen);
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    L->backward = MOE_MODE_HAS_BACKWARD(cfg->mode);
    if (L->backward && (rc = moe_train_create(L, msg, msglen)) != MOE_OK)
        return rc;
    if (rc == MOE_OK)
        rc = moe_decider_create(&L->decider, &L->ex, cfg->policy, cfg->scope, cfg->routing, L->n,
                                L->first, L->E, L->k, gates_normalized(cfg), cfg->topk_scale,
                                cfg->seed, msg, msglen);
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    L->bytes += moe_decider_bytes(L->decider);
    if (cfg->predict_only)
        rc = logits_by_chunks(L, msg, msglen);
    else
        prepare_router(L);
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    if ((rc = calibrate_hot(L, msg, msglen)) != MOE_OK)
        return rc;

    /* Route once; routing is deterministic, so every step repeats it exactly. */
    route(L);
    if ((rc = measure_hot_share(L, msg, msglen)) != MOE_OK)
        return rc;
    /* where the experts live, planned from the loads, then their weights */
    if ((rc = place_experts(L, msg, msglen)) != MOE_OK)
        return rc;
    if (L->nodex && (rc = moe_nodex_create(L, msg, msglen)) != MOE_OK)
        return rc;
    return moe_layer_set_capacity_factor(L, cfg->capacity_factor, msg, msglen);
}

int moe_layer_update_expert_bias(moe_layer *L, char *msg, size_t msglen)
{
    int E = L->E;
    int64_t *mine = calloc((size_t)E, sizeof *mine), *all = calloc((size_t)E, sizeof *all);
    int rc = mine && all ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) == MOE_OK) {
        /* the router's choices before capacity, as Megatron's tokens_per_expert */
        for (int64_t i = 0; i < L->n * L->A; i++)
            mine[L->expert[i]]++;
        int mrc = MPI_Allreduce(mine, all, E, MPI_INT64_T, MPI_SUM, L->comm);
        if (mrc != MPI_SUCCESS)
            rc = moe_mpi_fail(mrc, "MPI_Allreduce", __FILE__, __LINE__, msg, msglen);
        else /* the same loads and the same arithmetic on every rank: the same bias */
            moe_expert_bias_update(L->sel_bias, all, E, L->cfg.bias_update_rate);
    }
    free(mine);
    free(all);
    return rc;
}

const float *moe_layer_selection_bias(const moe_layer *L)
{
    return L->sel_bias;
}

/* --eplb-from previous: before step `step` (>= 1) the routing arrays still hold the step before;
 * EPLB plans again from its global loads. Every rank holds the same number of slots whatever the
 * loads ((E + N) / R), so the buffers sized by slots stay; the slots' experts and weights change.
 * Collective. */
static int replan_from_previous(moe_layer *L, char *msg, size_t msglen)
{
    const moe_config *c = &L->cfg;
    int E = L->E, R = L->R, rc = MOE_OK;
    int64_t *mine = calloc((size_t)E, sizeof *mine), *all = calloc((size_t)E, sizeof *all);
    double *loads = calloc((size_t)E, sizeof *loads);
    moe_expert_map next = {0};
    if (!mine || !all || !loads)
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory re-planning the experts");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    /* the router's choices before capacity (a reroute rewrote L->expert), as place_experts and
     * steps[].routed count them */
    for (int e = 0; e < E; e++)
        mine[e] = L->routed[e];
    {
        int mrc = MPI_Allreduce(mine, all, E, MPI_INT64_T, MPI_SUM, L->comm);
        if (mrc != MPI_SUCCESS) {
            rc = moe_mpi_fail(mrc, "MPI_Allreduce", __FILE__, __LINE__, msg, msglen);
            goto done;
        }
    }
    for (int e = 0; e < E; e++)
        loads[e] = (double)all[e];
    rc = moe_expert_map_build(&next, c->placement, E, R, c->redundant_experts, loads, msg, msglen);
    for (int r = 0; rc == MOE_OK && r <= R; r++)
        if (next.first_slot[r] != L->map.first_slot[r])
            rc = moe_fail(MOE_EINVAL, msg, msglen,
                          "internal error: EPLB gave rank %d another slot count on re-planning", r);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    bool weights = !c->predict_only && c->mode != MOE_MODE_DISPATCH;
    for (int64_t ls = 0; weights && ls < L->n_ls; ls++) { /* only the slots whose expert moved */
        int32_t was = L->map.logical[L->first_ls + ls], now = next.logical[L->first_ls + ls];
        if (was != now)
            moe_expert_init(L->w1 + ls * L->f * L->d, L->w2 + ls * L->d * L->f, c->seed, now,
                            L->d, L->f);
    }
    moe_expert_map_free(&L->map);
    L->map = next;
    memset(&next, 0, sizeof next);
    for (int p = 0; p < L->map.P; p++) {
        L->owner_of[p] = L->map.rank[p];
        L->local_of[p] = p - L->map.first_slot[L->map.rank[p]];
    }
done:
    moe_expert_map_free(&next);
    free(mine);
    free(all);
    free(loads);
    return rc;
}

int moe_layer_set_step(moe_layer *L, int step, char *msg, size_t msglen)
{
    if (L->cfg.eplb_previous && L->cfg.placement == MOE_PLACE_EPLB && step > 0) {
        int rc = replan_from_previous(L, msg, msglen);
        if (rc != MOE_OK)
            return rc;
    }
    L->tok_off = (int64_t)step * L->cfg.tokens;
    int rc = load_batch(L, msg, msglen);
    if (rc == MOE_OK)
        prepare_router(L);
    if (rc == MOE_OK && L->backward)
        moe_train_target(L);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    return moe_layer_set_capacity_factor(L, L->cfg.capacity_factor, msg, msglen);
}

/* --regroup auto: which combine is faster here, one MPI_Alltoallw sending from the blocks through
 * hindexed datatypes, or one MPI_Alltoallv per slot sending each block's rows for a rank as one
 * contiguous run. Which wins depends on the machine's MPI as much as on the shape (docs/model.md):
 * the datatypes cost a pack where the transport copies contiguous bytes once, the slots a
 * collective's latency each. So both run on this step's buffers, three times each, alternating,
 * behind a barrier; the slowest rank's best time of each decides, the same on every rank. Once,
 * at the first capacity factor (later ones keep the choice); either gives the same y. The
 * results it writes into the send buffer are overwritten by the step's own combine. Collective. */
static int probe_combine(moe_layer *L, char *msg, size_t msglen)
{
    L->probe_pending = false;
    const float *out = L->cfg.mode == MOE_MODE_DISPATCH ? L->x : L->yexp;
    double best[2] = {INFINITY, INFINITY};
    for (int rep = 0; rep < 3; rep++)
        for (int way = 0; way < 2; way++) {
            L->ex.blk_back_slots = way == 1;
            MOE_MPI_CHECK(MPI_Barrier(L->comm), msg, msglen);
            double t0 = MPI_Wtime();
            int rc = moe_exchange_blocks(&L->ex, out, L->sendbuf, true, msg, msglen);
            if (rc != MOE_OK)
                return rc;
            double t = MPI_Wtime() - t0;
            best[way] = t < best[way] ? t : best[way];
        }
    MOE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, best, 2, MPI_DOUBLE, MPI_MAX, L->comm), msg, msglen);
    L->probe[0] = best[0];
    L->probe[1] = best[1];
    L->ex.blk_back_slots = best[1] < best[0];
    L->ex.blk_both = L->ex.blk_back_slots; /* alltoallw chosen: no slots plan in later steps */
    L->regroup = L->ex.blk_back_slots ? MOE_REGROUP_W_SLOTS : MOE_REGROUP_W;
    return MOE_OK;
}

moe_regroup_kind moe_layer_regroup(const moe_layer *L, double probe[2])
{
    if (probe != NULL) {
        probe[0] = L->probe[0];
        probe[1] = L->probe[1];
    }
    return L->regroup;
}

int moe_layer_set_capacity_factor(moe_layer *L, double cf, char *msg, size_t msglen)
{
    const moe_config *cfg = &L->cfg;
    MPI_Comm comm = L->comm;
    int rc = MOE_OK;
    L->cfg.capacity_factor = cf;
    /* the groups' tokens, then their capacities in place (capacity.c); R <= E, so the scratch of
     * E holds them, and decide() below uses it only afterwards */
    int n_groups = moe_capacity_groups_blocks(L->scratch, cfg->scope, cfg->tokens, L->R, L->blocks);
    moe_group_capacities(L->group_cap, cf, L->scratch, n_groups, L->k, L->E, cfg->min_capacity);
    /* expert choice: an expert cannot take more tokens than its group holds */
    if (cfg->routing == MOE_ROUTING_EXPERT_CHOICE)
        moe_group_capacities_at_most_group(L->group_cap, L->scratch, n_groups);

    /* Route again (a reroute rewrites the experts and gates of the last decision), decide
     * acceptance under this capacity to learn the exchange sizes, then size the buffers. */
    route(L);
    rc = decide(L, msg, msglen);
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    int use_bytes = 0, all_bytes = 0;
    int *raw_back = L->raw_counts + 4 * L->R;
    int use_back = 0, all_back = 0;
    plan_raw(L, L->raw_counts, L->ex.row_out_bytes, &use_bytes);
    plan_raw(L, raw_back, L->ex.row_back_bytes, &use_back);
    MOE_MPI_CHECK(MPI_Allreduce(&use_back, &all_back, 1, MPI_INT, MPI_MIN, comm), msg, msglen);
    if (all_back != use_back)
        plan_raw_rows(L, raw_back);
    L->raw_type_back = all_back ? MPI_BYTE : L->ex.row_back;
    MOE_MPI_CHECK(MPI_Allreduce(&use_bytes, &all_bytes, 1, MPI_INT, MPI_MIN, comm), msg, msglen);
    if (all_bytes != use_bytes)
        plan_raw_rows(L, L->raw_counts);
    L->raw_type = all_bytes ? MPI_BYTE : L->ex.row_out;
    layout_experts(L);
    if (L->rows_x > INT_MAX)
        rc = moe_fail(MOE_ERANGE, msg, msglen,
                      "%lld expert rows on one rank are more than one sgemm call can address",
                      (long long)L->rows_x);
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    /* the raw baselines deliver into a buffer of their own: the larger direction's bytes */
    int64_t raw_rows = L->n_send > L->n_recv ? L->n_send : L->n_recv;
    int64_t raw_bytes = raw_rows * L->d * (int64_t)sizeof(float);
    if (L->per_rank) {
        int64_t rows = L->dd_n_send > L->dd_n_recv ? L->dd_n_send : L->dd_n_recv;
        int64_t unit = L->ex.row_out_bytes > L->ex.row_back_bytes ? L->ex.row_out_bytes
                                                                   : L->ex.row_back_bytes;
        raw_bytes = rows * unit > raw_bytes ? rows * unit : raw_bytes;
    }
    L->mem.staging = (int64_t)(moe_hier_staging_bytes(L->hier) + moe_hier_staging_bytes(L->hier_back));
    if (L->nodex)
        L->mem.staging += moe_nodex_buffer_bytes(L);
    L->mem.protocol = protocol_bytes(L);
    moe_memory_exchange(&L->mem, cfg, L->n_send, L->regroup == MOE_REGROUP_COPY ? L->n_recv : 0,
                        L->n_recv, L->rows_x);
    if ((rc = check_memory(L, L->mem.total, "the exchange and expert buffers", msg, msglen)) !=
        MOE_OK)
        return rc;
    if (cfg->predict_only) /* nothing will move: no exchange or expert buffers */
        return MOE_OK;
    double exch = (double)L->mem.exchange;
    void *old[] = {L->sendbuf, L->recvbuf, L->rawbuf, L->x, L->act, L->yexp, L->send_enc,
                   L->back_enc, L->recv_enc, L->rback_enc, L->pre, L->dpre, L->gout};
    L->pre = L->dpre = L->gout = NULL;
    for (size_t i = 0; i < sizeof old / sizeof old[0]; i++)
        free(old[i]);
    L->bytes -= L->exch_bytes;
    int64_t before = L->bytes;
    L->sendbuf = alloc_bytes(L, (size_t)(L->n_send * L->d), sizeof(float), &rc);
    /* staged arrivals: only where rows do not go straight into the experts' blocks */
    L->recvbuf = L->regroup == MOE_REGROUP_COPY
                     ? alloc_bytes(L, (size_t)(L->n_recv * L->d), sizeof(float), &rc)
                     : NULL;
    L->rawbuf = alloc_bytes(L, (size_t)((raw_bytes + 3) / 4), sizeof(float), &rc);

    L->x = alloc_bytes(L, (size_t)(L->rows_x * L->d), sizeof(float), &rc); /* zero: the padding */
    /* dispatch mode: identity experts need no activation and return x itself */
    size_t expert_rows = cfg->mode == MOE_MODE_DISPATCH ? 0 : (size_t)L->rows_x;
    L->act = alloc_bytes(L, expert_rows * (size_t)L->f, sizeof(float), &rc);
    L->yexp = alloc_bytes(L, expert_rows * (size_t)L->d, sizeof(float), &rc);
    /* encoded rows (--wire, --wire-combine), beside the float rows they come from and go to */
    L->send_enc = L->recv_enc = L->back_enc = L->rback_enc = NULL;
    if (L->wire_out != MOE_WIRE_FP32) {
        L->send_enc = alloc_bytes(L, (size_t)L->n_send, (size_t)L->ex.row_out_bytes, &rc);
        L->recv_enc = alloc_bytes(L, (size_t)L->n_recv, (size_t)L->ex.row_out_bytes, &rc);
    }
    if (L->wire_back != MOE_WIRE_FP32) {
        L->rback_enc = alloc_bytes(L, (size_t)L->n_recv, (size_t)L->ex.row_back_bytes, &rc);
        L->back_enc = alloc_bytes(L, (size_t)L->n_send, (size_t)L->ex.row_back_bytes, &rc);
    }
    if (rc == MOE_OK && L->backward)
        rc = moe_train_size(L, msg, msglen);
    L->exch_bytes = L->bytes - before;
    if (rc != MOE_OK)
        moe_fail(rc, msg, msglen, "out of memory allocating %.2f GiB of exchange buffers",
                 exch / 1073741824.0);
    if ((rc = moe_agree(comm, rc, msg, msglen)) != MOE_OK || !L->probe_pending)
        return rc;
    return probe_combine(L, msg, msglen);
}

void moe_layer_destroy(moe_layer *L)
{
    if (L == NULL)
        return;
    moe_hier_destroy(L->hier);
    moe_hier_destroy(L->hier_back);
    if (L->nodex)
        moe_nodex_destroy(L);
    moe_decider_destroy(L->decider);
    moe_expert_map_free(&L->map);
    if (L->mapped) {
        free(L->phys);
        free(L->per_slot);
        free(L->acc_slot);
        free(L->slot_sc);
    }
    moe_exchange_free(&L->ex);
    moe_train_free(L);
    free(L->blocks);
    if (L->node != MPI_COMM_NULL)
        MPI_Comm_free(&L->node);
    void *owned[] = {L->placement, L->node_of_rank, L->raw_counts,
                     L->h, L->y, L->send_pos, L->w_router, L->router_scratch, L->z_file, L->bias, L->sel_bias, L->probs, L->expert, L->gate, L->flag, L->slot,
                     L->routed, L->accepted, L->per_expert, L->scratch, L->send_rows,
                     L->recv_rows, L->group_cap, L->cnt_owner, L->acc_owner, L->x_start,
                     L->x_rows, L->placed, L->w1, L->w2, L->sendbuf, L->recvbuf, L->rawbuf, L->x, L->act,
                     L->yexp, L->sel, L->w_noise, L->z_noise, L->h_route, L->mask, L->gscore, L->wl_hot,
                     L->rerouted, L->orig, L->orig_gate, L->ws1, L->ws2, L->s_act, L->s_out,
                     L->send_tok, L->send_enc, L->back_enc, L->recv_enc, L->rback_enc,
                     L->owner_of, L->local_of, L->dd_tok, L->dd_send_rows, L->dd_recv_rows,
                     L->dd_cursor, L->dd_last, L->dd_seen, L->dd_sum, L->dd_send, L->dd_recv,
                     L->dd_back_send, L->dd_back_recv, L->dd_fan};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        free(owned[i]);
    free(L);
}

const moe_placement *moe_layer_placement(const moe_layer *L)
{
    return L->placement;
}

void moe_layer_get_shape(const moe_layer *L, moe_layer_shape *out)
{
    *out = (moe_layer_shape){.tokens = L->n,
                             .first_token = L->first,
                             .n_send = L->n_send,
                             .n_recv = L->n_recv,
                             .n_local_experts = L->n_ls,
                             .first_expert = L->first_ls,
                             .hidden = L->d,
                             .ffn = L->f,
                             .send_rows = L->send_rows,
                             .recv_rows = L->recv_rows,
                             .expert_rows = L->x_rows};
    int64_t lo;
    if (L->regroup != MOE_REGROUP_COPY && L->wire_back == MOE_WIRE_FP32 && !L->per_rank)
        moe_exchange_self_rows(&L->ex, &lo, &out->combine_left);
}

int64_t moe_layer_bytes(const moe_layer *L)
{
    return L->bytes;
}

const moe_expert_map *moe_layer_expert_map(const moe_layer *L)
{
    return &L->map;
}

const int64_t *moe_layer_token_blocks(const moe_layer *L)
{
    return L->blocks;
}

const moe_config *moe_layer_config(const moe_layer *L)
{
    return &L->cfg;
}

void moe_layer_memory(const moe_layer *L, moe_mem_estimate *estimate, int64_t *budget)
{
    *estimate = L->mem;
    *budget = L->budget;
}

/* The real exchange: flat (one MPI_Alltoallv) or two-level. reverse = the combine direction. */
static int exchange(moe_layer *L, const void *send, void *recv, bool reverse, char *msg,
                    size_t msglen)
{
    if (L->nodex) /* per-rank rows once per node across the leaders (nodex.c) */
        return reverse ? moe_nodex_combine(L, msg, msglen) : moe_nodex_dispatch(L, msg, msglen);
    moe_hier *h = reverse && L->hier_back != NULL ? L->hier_back : L->hier;
    if (h != NULL)
        return moe_hier_exchange(h, send, recv, reverse, msg, msglen);
    return moe_exchange_rows(&L->ex, send, recv, reverse, false, msg, msglen);
}

/* The baseline: a plain MPI_Alltoallv of the same counts, in bytes where they fit an int. */
static int raw_exchange(moe_layer *L, const void *send, void *recv, bool reverse, char *msg,
                        size_t msglen)
{
    int R = L->R, *sc = L->raw_counts + (reverse ? 4 * R : 0), *sd = sc + R, *rcn = sc + 2 * R,
        *rd = sc + 3 * R;
    if (reverse)
        MOE_MPI_CHECK(MPI_Alltoallv(send, rcn, rd, L->raw_type_back, recv, sc, sd,
                                    L->raw_type_back, L->comm),
                      msg, msglen);
    else
        MOE_MPI_CHECK(MPI_Alltoallv(send, sc, sd, L->raw_type, recv, rcn, rd, L->raw_type, L->comm),
                      msg, msglen);
    return MOE_OK;
}

/* One exchange as the step runs it. seconds (3): the barrier before it (this rank's wait for the
 * slowest one), the exchange itself, and the raw baseline run right after behind an untimed
 * barrier, into a buffer of its own so that it can never stand in for the real result. */
static int exchange_timed(moe_layer *L, const void *send, void *recv, bool reverse,
                          double *seconds, char *msg, size_t msglen);

int moe_layer_exchange_timed(moe_layer *L, const void *send, void *recv, bool reverse,
                             double *seconds, char *msg, size_t msglen)
{
    return exchange_timed(L, send, recv, reverse, seconds, msg, msglen);
}

static int exchange_timed(moe_layer *L, const void *send, void *recv, bool reverse,
                          double *seconds, char *msg, size_t msglen)
{
    int rc;
    double t0 = MPI_Wtime();
    MOE_MPI_CHECK(MPI_Barrier(L->comm), msg, msglen);
    double t1 = MPI_Wtime();
    /* fp32 rows straight into the experts' blocks, or out of them (--regroup alltoallw, slots) */
    bool blocks = L->ex.blk_kind != 0 && !(reverse ? L->wire_back : L->wire_out);
    if ((rc = blocks ? moe_exchange_blocks(&L->ex, send, recv, reverse, msg, msglen)
                     : exchange(L, send, recv, reverse, msg, msglen)) != MOE_OK)
        return rc;
    double t2 = MPI_Wtime();
    seconds[0] = t1 - t0;
    seconds[1] = t2 - t1;
    seconds[2] = NAN; /* not run this step (--raw-baseline) */
    if (!L->raw_this_step)
        return MOE_OK;
    MOE_MPI_CHECK(MPI_Barrier(L->comm), msg, msglen);
    double t3 = MPI_Wtime();
    /* the same bytes from a contiguous buffer of the same size (the token states h, which MPI
     * gathers rows from without a pack, hold fewer rows than are sent) */
    const void *raw_send = send == (const void *)L->h ? (const void *)L->sendbuf : send;
    if ((rc = raw_exchange(L, raw_send, L->rawbuf, reverse, msg, msglen)) != MOE_OK)
        return rc;
    seconds[2] = MPI_Wtime() - t3;
    return MOE_OK;
}

/* Encoded rows between their arrival order (source-major, slots inside) and the experts' blocks:
 * decoded into the blocks, or encoded out of them; one pass, no fp32 staging. */
static void wire_blocks(moe_layer *L, uint8_t *arrival, float *blocks, moe_wire w, bool decode)
{
    int64_t rb = moe_wire_row_bytes(w, L->d), d = L->d, n_ls = L->n_ls;
    for (int64_t ls = 0; ls < n_ls; ls++)
        L->placed[ls] = 0;
    for (int s = 0; s < L->R; s++)
        for (int64_t ls = 0; ls < n_ls; ls++) {
            int64_t rows = L->acc_slot[s * n_ls + ls];
            float *block = blocks + (L->x_start[ls] + L->placed[ls]) * d;
            if (rows > 0 && decode)
                moe_wire_decode_rows(block, arrival, rows, d, w);
            else if (rows > 0)
                moe_wire_encode_rows(arrival, block, NULL, rows, d, w);
            L->placed[ls] += rows;
            arrival += rows * rb;
        }
}

/* Shared experts (DeepSeekMoE): every token, on its own rank, gate 1, after the routed sum. */
static void add_shared(moe_layer *L, float *y)
{
    for (int s = 0; s < L->S; s++) {
        moe_expert_forward(L->s_out, L->s_act, L->h, L->ws1 + (int64_t)s * L->fs * L->d,
                           L->ws2 + (int64_t)s * L->d * L->fs, L->n, L->d, L->fs);
        for (int64_t i = 0; i < L->n * L->d; i++)
            y[i] += L->s_out[i];
    }
}

/* The rows the combine of moe_exchange_blocks left in the experts' blocks (out), for the unpack;
 * NULL when it delivered every row. Only after that combine (fp32 rows back). */
static const moe_rows_here *rows_here(moe_layer *L, const float *out, moe_rows_here *here)
{
    here->base = out;
    here->at = moe_exchange_self_rows(&L->ex, &here->lo, &here->n);
    return here->at != NULL ? here : NULL;
}

/* The experts of this rank on x into their outputs (identity with --mode dispatch, which returns
 * x itself). */
static const float *run_experts(moe_layer *L)
{
    if (L->cfg.mode == MOE_MODE_DISPATCH)
        return L->x;
    for (int64_t ls = 0; ls < L->n_ls; ls++) {
        int64_t at = L->x_start[ls];
        if (L->backward) /* the same floats, the pre-activation kept for the backward */
            moe_expert_forward_save(L->yexp + at * L->d, L->pre + at * L->f, L->act + at * L->f,
                                    L->x + at * L->d, L->w1 + ls * L->f * L->d,
                                    L->w2 + ls * L->d * L->f, L->x_rows[ls], L->d, L->f);
        else
            moe_expert_forward(L->yexp + at * L->d, L->act + at * L->f, L->x + at * L->d,
                               L->w1 + ls * L->f * L->d, L->w2 + ls * L->d * L->f, L->x_rows[ls],
                               L->d, L->f);
    }
    return L->yexp;
}

int moe_layer_wire_error(moe_layer *L, double *max_rel, double *rms_rel, char *msg, size_t msglen)
{
    int64_t nd = L->n * L->d;
    float *y32 = malloc((size_t)(nd + 1) * sizeof *y32);
    int rc = y32 ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the fp32 reference");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK) {
        free(y32);
        return rc;
    }
    /* the same routing and rows, as fp32 through the flat exchange (the two-level one moves the
     * same rows to the same places) */
    moe_pack_rows(L->sendbuf, L->h, L->slot, L->n_send, L->A, L->d);
    /* per (token, expert) rows, whatever --dispatch: the reference is the plain exchange */
    if (L->per_rank)
        rc = moe_exchange_set_rows(&L->ex, L->send_rows, L->recv_rows, msg, msglen);
    const float *blocks_out = NULL; /* the experts' outputs the combine sent from */
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) == MOE_OK && L->ex.blk_kind != 0) {
        /* fp32 rows straight into the blocks and back out of them */
        rc = moe_exchange_blocks(&L->ex, L->ex.blk_send != NULL ? (void *)L->h : L->sendbuf,
                                 L->x, false, msg, msglen);
        if (rc == MOE_OK)
            rc = moe_exchange_blocks(&L->ex, blocks_out = run_experts(L), L->sendbuf, true, msg,
                                     msglen);
    } else if (rc == MOE_OK) {
        rc = moe_exchange_rows(&L->ex, L->sendbuf, L->recvbuf, false, true, msg, msglen);
    }
    if (rc == MOE_OK && L->ex.blk_kind == 0) {
        moe_regroup_to_experts(L->x, L->recvbuf, L->acc_slot, L->R, (int)L->n_ls, L->x_start,
                               L->d, L->placed);
        moe_regroup_from_experts(L->recvbuf, run_experts(L), L->acc_slot, L->R, (int)L->n_ls,
                                 L->x_start, L->d, L->placed);
        rc = moe_exchange_rows(&L->ex, L->recvbuf, L->sendbuf, true, true, msg, msglen);
    }
    if (rc == MOE_OK) {
        moe_rows_here here;
        moe_combine_rows_one_pass_here(y32, L->h, L->sendbuf,
                                       blocks_out != NULL ? rows_here(L, blocks_out, &here) : NULL,
                                       L->slot, L->gate, L->expert, L->n, L->n_send, L->A, L->d,
                                       L->send_pos);
        add_shared(L, y32);
    }
    if (rc == MOE_OK && L->per_rank)
        rc = moe_exchange_set_rows(&L->ex, L->dd_send_rows, L->dd_recv_rows, msg, msglen);
    /* max |y - y32|, max |y32|, sum (y - y32)^2, sum y32^2 over the batch */
    double mine[4] = {0.0, 0.0, 0.0, 0.0}, all[4] = {0.0, 0.0, 0.0, 0.0};
    for (int64_t i = 0; rc == MOE_OK && i < nd; i++) {
        double ref = y32[i], diff = fabs((double)L->y[i] - ref);
        mine[0] = diff > mine[0] ? diff : mine[0];
        mine[1] = fabs(ref) > mine[1] ? fabs(ref) : mine[1];
        mine[2] += diff * diff;
        mine[3] += ref * ref;
    }
    free(y32);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    MOE_MPI_CHECK(MPI_Allreduce(mine, all, 2, MPI_DOUBLE, MPI_MAX, L->comm), msg, msglen);
    MOE_MPI_CHECK(MPI_Allreduce(mine + 2, all + 2, 2, MPI_DOUBLE, MPI_SUM, L->comm), msg, msglen);
    *max_rel = all[1] > 0.0 ? all[0] / all[1] : 0.0;
    *rms_rel = all[3] > 0.0 ? sqrt(all[2] / all[3]) : 0.0;
    return MOE_OK;
}

int moe_layer_step(moe_layer *L, double *seconds, char *msg, size_t msglen)
{
    double t[11];
    int64_t planned_send = L->n_send, planned_recv = L->n_recv;
    int rc;

    t[0] = MPI_Wtime();
    route(L);
    t[1] = MPI_Wtime();
    /* the ranks' skew is the barrier's, not the count exchange's */
    MOE_MPI_CHECK(MPI_Barrier(L->comm), msg, msglen);
    double counts_start = MPI_Wtime();
    if ((rc = decide(L, msg, msglen)) != MOE_OK)
        return rc;
    if (L->n_send != planned_send || L->n_recv != planned_recv)
        return moe_fail(MOE_EINVAL, msg, msglen,
                        "internal error: routing changed between steps (%lld/%lld rows, planned "
                        "%lld/%lld)",
                        (long long)L->n_send, (long long)L->n_recv, (long long)planned_send,
                        (long long)planned_recv);
    t[2] = MPI_Wtime();
    bool enc_out = L->wire_out != MOE_WIRE_FP32, enc_back = L->wire_back != MOE_WIRE_FP32;
    double dispatch[3], combine[3]; /* wait, exchange, raw baseline */
    if (L->per_rank) { /* one row per (token, rank): dedup.c */
        moe_dedup_pack(L);
        if (L->nodex)
            moe_nodex_pack(L);
        t[3] = MPI_Wtime();
        if ((rc = exchange_timed(L, L->dd_send, L->dd_recv, false, dispatch, msg, msglen)) !=
            MOE_OK)
            return rc;
        t[4] = MPI_Wtime();
        moe_dedup_fan_out(L);
        t[5] = MPI_Wtime();
        const float *out = run_experts(L);
        t[6] = MPI_Wtime();
        moe_dedup_fan_in(L, out);
        t[7] = MPI_Wtime();
        if ((rc = exchange_timed(L, L->dd_back_send, L->dd_back_recv, true, combine, msg,
                                 msglen)) != MOE_OK)
            return rc;
        t[8] = MPI_Wtime();
        if (L->nodex)
            moe_nodex_combine_y(L, L->y);
        else
            moe_dedup_combine(L, L->y);
        t[9] = MPI_Wtime();
    } else {
    bool direct = L->regroup != MOE_REGROUP_COPY; /* rows straight into the blocks, and back */
    if (enc_out) {
        for (int64_t i = 0; i < L->n_send; i++)
            L->send_tok[i] = L->slot[i] / L->A;
        moe_wire_encode_rows(L->send_enc, L->h, L->send_tok, L->n_send, L->d, L->wire_out);
    } else if (L->ex.blk_send == NULL) { /* else MPI gathers the rows from h itself */
        moe_pack_rows(L->sendbuf, L->h, L->slot, L->n_send, L->A, L->d);
    }
    t[3] = MPI_Wtime();
    if ((rc = exchange_timed(L, enc_out ? (void *)L->send_enc
                                : L->ex.blk_send != NULL ? (void *)L->h
                                                         : L->sendbuf,
                             enc_out ? (void *)L->recv_enc : direct ? L->x : L->recvbuf, false,
                             dispatch, msg, msglen)) != MOE_OK)
        return rc;
    t[4] = MPI_Wtime();
    if (direct && enc_out) /* decoded where the experts read them */
        wire_blocks(L, L->recv_enc, L->x, L->wire_out, true);
    if (!direct) {
        if (enc_out)
            moe_wire_decode_rows(L->recvbuf, L->recv_enc, L->n_recv, L->d, L->wire_out);
        moe_regroup_to_experts(L->x, L->recvbuf, L->acc_slot, L->R, (int)L->n_ls, L->x_start,
                               L->d, L->placed);
    }
    t[5] = MPI_Wtime();
    const float *expert_out = run_experts(L); /* --mode dispatch: each returns its input */
    t[6] = MPI_Wtime();
    if (direct && enc_back)
        wire_blocks(L, L->rback_enc, (float *)expert_out, L->wire_back, false);
    if (!direct) {
        moe_regroup_from_experts(L->recvbuf, expert_out, L->acc_slot, L->R, (int)L->n_ls,
                                 L->x_start, L->d, L->placed);
        if (enc_back)
            moe_wire_encode_rows(L->rback_enc, L->recvbuf, NULL, L->n_recv, L->d, L->wire_back);
    }
    t[7] = MPI_Wtime();
    if ((rc = exchange_timed(L,
                             enc_back ? (const void *)L->rback_enc
                             : direct ? (const void *)expert_out
                                      : (const void *)L->recvbuf,
                             enc_back ? (void *)L->back_enc : L->sendbuf, true, combine, msg,
                             msglen)) != MOE_OK)
        return rc;
    t[8] = MPI_Wtime();
    if (enc_back)
        moe_wire_decode_rows(L->sendbuf, L->back_enc, L->n_send, L->d, L->wire_back);
    /* one sweep over y, each token's results in expert id order: the same y at any placement */
    moe_rows_here here; /* under alltoallw the combine left this rank's own rows in the blocks */
    moe_combine_rows_one_pass_here(L->y, L->h, L->sendbuf,
                                   direct && !enc_back ? rows_here(L, expert_out, &here) : NULL,
                                   L->slot, L->gate, L->expert, L->n, L->n_send, L->A, L->d,
                                   L->send_pos);
    t[9] = MPI_Wtime();
    }
    add_shared(L, L->y);
    t[10] = MPI_Wtime();
    if (L->backward && (rc = moe_train_backward(L, seconds, msg, msglen)) != MOE_OK)
        return rc;

    if (seconds != NULL) {
        seconds[MOE_PHASE_ROUTER] = t[1] - t[0];
        seconds[MOE_PHASE_COUNT_WAIT] = counts_start - t[1];
        seconds[MOE_PHASE_COUNTS] = t[2] - counts_start;
        seconds[MOE_PHASE_PACK] = t[3] - t[2];
        seconds[MOE_PHASE_DISPATCH_WAIT] = dispatch[0];
        seconds[MOE_PHASE_DISPATCH] = dispatch[1];
        seconds[MOE_PHASE_DISPATCH_RAW] = dispatch[2];
        seconds[MOE_PHASE_REGROUP] = (t[5] - t[4]) + (t[7] - t[6]);
        seconds[MOE_PHASE_EXPERT] = t[6] - t[5];
        seconds[MOE_PHASE_COMBINE_WAIT] = combine[0];
        seconds[MOE_PHASE_COMBINE] = combine[1];
        seconds[MOE_PHASE_COMBINE_RAW] = combine[2];
        seconds[MOE_PHASE_UNPACK] = t[9] - t[8];
        seconds[MOE_PHASE_SHARED] = t[10] - t[9];
        for (int p = MOE_PHASE_SHARED + 1; !L->backward && p < MOE_PHASE_COUNT; p++)
            seconds[p] = NAN; /* no backward: not run */
    }
    return MOE_OK;
}

int moe_layer_exchange(moe_layer *L, bool reverse, char *msg, size_t msglen)
{
    if (L->per_rank)
        return reverse ? exchange(L, L->dd_back_send, L->dd_back_recv, true, msg, msglen)
                       : exchange(L, L->dd_send, L->dd_recv, false, msg, msglen);
    bool direct = L->regroup != MOE_REGROUP_COPY;
    if (!reverse && L->wire_out != MOE_WIRE_FP32)
        return exchange(L, L->send_enc, L->recv_enc, false, msg, msglen);
    if (reverse && L->wire_back != MOE_WIRE_FP32)
        return exchange(L, L->rback_enc, L->back_enc, true, msg, msglen);
    const float *out = L->cfg.mode == MOE_MODE_DISPATCH ? L->x : L->yexp;
    if (direct)
        return reverse ? moe_exchange_blocks(&L->ex, out, L->sendbuf, true, msg, msglen)
                       : moe_exchange_blocks(&L->ex,
                                             L->ex.blk_send != NULL ? (void *)L->h : L->sendbuf,
                                             L->x, false, msg, msglen);
    return reverse ? exchange(L, L->recvbuf, L->sendbuf, true, msg, msglen)
                   : exchange(L, L->sendbuf, L->recvbuf, false, msg, msglen);
}

void moe_layer_set_raw_baseline(moe_layer *L, bool run)
{
    L->raw_this_step = run;
}

void moe_layer_workload(const moe_layer *L, const float **bias, double *hot_bias, double *hot_share)
{
    *bias = L->bias;
    *hot_bias = L->hot_bias;
    *hot_share = L->hot_share;
}

