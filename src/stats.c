#include "moesim/stats.h"

#include "moesim/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const phase_names[] = {
#define MOE_PHASE_NAME(id, name, what, in_step) name,
    MOE_PHASES(MOE_PHASE_NAME)
#undef MOE_PHASE_NAME
};
static const char *const phase_whats[] = {
#define MOE_PHASE_WHAT(id, name, what, in_step) what,
    MOE_PHASES(MOE_PHASE_WHAT)
#undef MOE_PHASE_WHAT
};

static const int phase_in_step[] = {
#define MOE_PHASE_IN_STEP(id, name, what, in_step) in_step,
    MOE_PHASES(MOE_PHASE_IN_STEP)
#undef MOE_PHASE_IN_STEP
};

int moe_phase_in_step(int phase)
{
    return phase >= 0 && phase < MOE_PHASE_COUNT ? phase_in_step[phase] : 0;
}

bool moe_phase_is_backward(int phase)
{
    return moe_phase_in_step(phase) == 2;
}

const char *moe_phase_name(int phase)
{
    return phase >= 0 && phase < MOE_PHASE_COUNT ? phase_names[phase] : "?";
}

const char *moe_phase_what(int phase)
{
    return phase >= 0 && phase < MOE_PHASE_COUNT ? phase_whats[phase] : "?";
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double moe_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

moe_summary moe_summarize(const double *v, int n)
{
    moe_summary s = {v[0], 0.0, v[0]};
    for (int i = 0; i < n; i++) {
        s.min = v[i] < s.min ? v[i] : s.min;
        s.max = v[i] > s.max ? v[i] : s.max;
        s.mean += v[i];
    }
    s.mean /= n;
    return s;
}

double moe_load_balance(double *f, double *P, const int64_t *routed, const double *psum, int E,
                        int64_t N, int k)
{
    /* N k assignments under token choice; under expert choice as many as the experts took, so
     * that the f_i are shares summing to 1 either way */
    int64_t total = 0;
    for (int e = 0; e < E; e++)
        total += routed[e];
    double denom = total > 0 ? (double)total : (double)N * k;
    double aux = 0.0;
    for (int e = 0; e < E; e++) {
        f[e] = (double)routed[e] / denom;
        P[e] = psum[e] / (double)N;
        aux += f[e] * P[e];
    }
    return aux * E;
}

int moe_results_init(moe_results *r, int E, int R, int n_cf)
{
    memset(r, 0, sizeof *r);
    r->experts = E;
    r->ranks = R;
    r->owner = calloc((size_t)E, sizeof *r->owner);
    r->routed = calloc((size_t)E, sizeof *r->routed);
    r->accepted = calloc((size_t)E, sizeof *r->accepted);
    r->capacity = calloc((size_t)E, sizeof *r->capacity);
    r->f = calloc((size_t)E, sizeof *r->f);
    r->P = calloc((size_t)E, sizeof *r->P);
    r->router_bias = calloc((size_t)E, sizeof *r->router_bias);
    r->placement = calloc((size_t)R, sizeof *r->placement);
    r->by_class_per_rank = calloc((size_t)R * MOE_LOC_COUNT, sizeof *r->by_class_per_rank);
    r->ablation = calloc((size_t)(n_cf > 0 ? n_cf : 1), sizeof *r->ablation);
    r->rerouted_in = calloc((size_t)E, sizeof *r->rerouted_in);
    r->experts_per_token = calloc((size_t)E + 1, sizeof *r->experts_per_token);
    int64_t *reach = calloc(4 * ((size_t)R + 1), sizeof *reach);
    r->reach_ranks = reach;
    r->reach_nodes = reach ? reach + (R + 1) : NULL;
    r->reach_ranks_unlimited = reach ? reach + 2 * (R + 1) : NULL;
    r->reach_nodes_unlimited = reach ? reach + 3 * (R + 1) : NULL;
    r->n_ablation = n_cf;
    int64_t *mem = calloc((size_t)R * 4, sizeof *mem);
    r->mem_estimate = mem;
    r->mem_peak_rss = mem ? mem + R : NULL;
    r->mem_baseline_rss = mem ? mem + 2 * R : NULL;
    r->mem_budget = mem ? mem + 3 * R : NULL;
    r->mem_full_run = -1;
    r->processes = R;
    if (!mem || !reach || !r->rerouted_in || !r->experts_per_token || !r->placement || !r->by_class_per_rank || !r->router_bias || !r->ablation || !r->owner || !r->routed || !r->accepted || !r->capacity || !r->f || !r->P) {
        moe_results_free(r);
        return MOE_ENOMEM;
    }
    return MOE_OK;
}

int moe_results_set_processes(moe_results *r, int P)
{
    int64_t *mem = calloc((size_t)P * 4, sizeof *mem);
    moe_placement *pl = calloc((size_t)P, sizeof *pl);
    if (mem == NULL || pl == NULL) {
        free(mem);
        free(pl);
        return MOE_ENOMEM;
    }
    free(r->mem_estimate);
    free(r->proc_placement);
    r->mem_estimate = mem;
    r->mem_peak_rss = mem + P;
    r->mem_baseline_rss = mem + 2 * P;
    r->mem_budget = mem + 3 * P;
    r->proc_placement = pl;
    r->processes = P;
    r->planned = true;
    return MOE_OK;
}

int moe_results_traffic(moe_results *r, int64_t served, int64_t payload_bytes)
{
    int64_t all_rows = moe_blocks_total(&r->rows);
    r->metadata_bytes = all_rows * (r->row_bytes - payload_bytes);
    r->dedup_saving = served * (payload_bytes + r->row_bytes_combine) -
                      all_rows * (r->row_bytes + r->row_bytes_combine);
    if (moe_blocks_scaled(&r->dispatch_bytes, &r->rows, r->row_bytes, false) != MOE_OK ||
        moe_blocks_scaled(&r->combine_bytes, &r->rows, r->row_bytes_combine, true) != MOE_OK)
        return MOE_ENOMEM;
    return MOE_OK;
}

void moe_selfcheck_add(moe_selfcheck *a, const moe_selfcheck *b)
{
    if (!b->measured)
        return;
    a->measured = true;
    a->rows_sent += b->rows_sent;
    a->rows_received += b->rows_received;
    a->returned += b->returned;
    a->served += b->served;
    a->y_values += b->y_values;
    a->y_nonfinite += b->y_nonfinite;
    a->step_predictions += b->step_predictions;
    a->step_predictions_wrong += b->step_predictions_wrong;
}

void moe_results_free(moe_results *r)
{
    if (r == NULL)
        return;
    free(r->rank_tokens); /* rank_rows shares its allocation */
    free(r->rank_median);
    free(r->owner);
    free(r->routed);
    free(r->accepted);
    free(r->capacity);
    free(r->f);
    free(r->P);
    moe_blocks_free(&r->dispatch_bytes);
    moe_blocks_free(&r->combine_bytes);
    moe_blocks_free(&r->rows);
    free(r->slot_expert);
    r->slot_expert = r->slot_rank = NULL;
    free(r->router_bias);
    free(r->placement);
    free(r->by_class_per_rank);
    free(r->mem_estimate);
    free(r->proc_placement);
    r->proc_placement = NULL;
    free(r->node_rows);
    r->node_rows = NULL;
    free(r->rerouted_in);
    free(r->experts_per_token);
    free(r->reach_ranks);
    r->rerouted_in = r->experts_per_token = NULL;
    r->reach_ranks = r->reach_nodes = r->reach_ranks_unlimited = r->reach_nodes_unlimited = NULL;
    r->mem_estimate = r->mem_peak_rss = r->mem_baseline_rss = r->mem_budget = NULL;
    r->placement = NULL;
    r->by_class_per_rank = NULL;
    free(r->ablation);
    r->router_bias = NULL;
    r->ablation = NULL;
    r->owner = NULL;
    r->routed = r->accepted = r->capacity = NULL;
    r->f = r->P = NULL;
}

void moe_results_totals(moe_results *r, double flops_per_row)
{
    int64_t accepted = 0, rerouted = 0;
    r->assignments = 0;
    r->slots = 0;
    for (int e = 0; e < r->experts; e++) {
        r->assignments += r->routed[e];
        accepted += r->accepted[e];
        rerouted += r->rerouted_in ? r->rerouted_in[e] : 0;
        r->slots += r->capacity[e] < 0 ? r->accepted[e] : r->capacity[e];
    }
    r->rerouted = rerouted;
    r->dropped_assignments = r->assignments - (accepted - rerouted);
    r->empty_slots = r->slots - accepted;
    r->flops_useful = (double)accepted * flops_per_row;
    r->flops_wasted = (double)r->empty_slots * flops_per_row;
}

double moe_spread_ratio(moe_spread s)
{
    if (!isfinite(s.iter_min) || !isfinite(s.iter_max) || !(s.iter_min > 0.0))
        return NAN;
    return (s.iter_max - s.iter_min) / s.iter_min;
}

moe_a2a_bandwidth moe_a2a_bandwidth_blocks(const moe_blocks *bytes,
                                           const moe_placement *placement, int R, double seconds)
{
    moe_a2a_bandwidth b = {0};
    int64_t row = 0;
    for (int64_t i = 0; i < bytes->n; i++) { /* sorted by source: one run per sending rank */
        const moe_block *e = &bytes->v[i];
        row += e->val;
        b.off_rank_bytes += e->src != e->dst ? e->val : 0;
        b.off_node_bytes += placement[e->src].node != placement[e->dst].node ? e->val : 0;
        if (i + 1 == bytes->n || bytes->v[i + 1].src != e->src) {
            b.send_bytes = row > b.send_bytes ? row : b.send_bytes;
            row = 0;
        }
    }
    /* nccl-tests: algBw = count * nranks * typesize / sec, the bytes one rank sends (its own block
     * included); busBw = algBw * (nranks - 1) / nranks, the share that crosses a link */
    b.algbw = seconds > 0.0 ? (double)b.send_bytes / seconds : 0.0;
    b.busbw = R > 0 ? b.algbw * (double)(R - 1) / (double)R : 0.0;
    return b;
}

moe_a2a_bandwidth moe_a2a_bandwidth_of(const int64_t *bytes, const moe_placement *placement,
                                       int R, double seconds)
{
    moe_blocks b = {0};
    moe_a2a_bandwidth out = {0};
    if (moe_blocks_from_dense(&b, bytes, R, 1, false) == MOE_OK)
        out = moe_a2a_bandwidth_blocks(&b, placement, R, seconds);
    moe_blocks_free(&b);
    return out;
}

int moe_run_warnings(char *buf, size_t len, const moe_results *r)
{
    int n = 0;
    size_t used = 0;
    if (len > 0)
        buf[0] = '\0';
#define WARN(...) (n++, moe_appendf(buf, len, &used, __VA_ARGS__))
    const moe_environment *env = &r->env;
    const double loads[2] = {env->load_start, env->load_end};
    const char *const when[2] = {"start", "end"};
    for (int i = 0; i < 2; i++)
        if (env->cores > 0 && isfinite(loads[i]) && loads[i] > (double)env->cores)
            WARN("load average %.2f at the %s exceeds the %lld online cores: the machine was "
                 "shared\n", loads[i], when[i], (long long)env->cores);
    const int phases[2] = {MOE_PHASE_DISPATCH, MOE_PHASE_COMBINE};
    for (int i = 0; i < 2; i++) {
        moe_spread s = r->phase_iter[phases[i]];
        double spread = moe_spread_ratio(s);
        if (isfinite(spread) && spread > MOE_SPREAD_WARN)
            WARN("%s times spread %.0f%% over ranks and iterations (%.3g to %.3g ms)\n",
                 moe_phase_name(phases[i]), spread * 100.0, s.iter_min * 1e3, s.iter_max * 1e3);
    }
#undef WARN
    return n;
}
