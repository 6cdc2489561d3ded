/* moesim driver: a list of phases. Set up, validate and agree, build the layer, warm up, time,
 * reduce, report. Only rank 0 prints; every error is agreed first so that all ranks leave together. */
#include "moesim/config.h"
#include "moesim/driver.h"
#include "moesim/error.h"
#include "moesim/exchange.h"
#include "moesim/fileout.h"
#include "moesim/layer.h"
#include "moesim/memory.h"
#include "moesim/npy.h"
#include "moesim/planned.h"
#include "moesim/predict.h"
#include "moesim/projection.h"
#include "moesim/tokens.h"
#include "moesim/report.h"
#include "moesim/verdict.h"
#include "moesim/stats.h"

#include <cblas.h>
#include <errno.h>
#include <hwloc.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MSG_LEN 1024

/* Exit statuses: 2 for anything refused before the layer runs (options, inputs, sizes), 1 for a
 * failure while running or writing results, 128 + the signal (130 SIGINT, 143 SIGTERM) when a signal
 * stopped the run before its outputs were written. */
enum { EXIT_REFUSED = 2, EXIT_FAILED = 1, EXIT_SIGNAL_BASE = 128 };

/* SIGINT and SIGTERM only set this; every rank looks at phase boundaries (check_interrupt). */
static volatile sig_atomic_t g_signal;
static int g_agreed_signal;

static void on_signal(int sig)
{
    if (g_signal == 0)
        g_signal = sig;
}

static void install_signal_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* a FIFO or socket whose reader went away is a write error (EPIPE) to report, not a reason to
     * die with half a temporary beside another output */
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

/* Collective, at a phase boundary: if a signal reached any rank, every rank stops here. */
static int interrupted(int any, const char *phase, char *msg);

static int check_interrupt(MPI_Comm comm, const char *phase, char *msg)
{
    int mine = g_signal, any = 0;
    if (MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
        return moe_fail(MOE_EMPI, msg, MSG_LEN, "MPI_Allreduce failed while checking for signals");
    return interrupted(any, phase, msg);
}

/* MOE_OK when no rank had a signal (any == 0), else the agreed stop. */
static int interrupted(int any, const char *phase, char *msg)
{
    if (any == 0)
        return MOE_OK;
    g_agreed_signal = any;
    return moe_fail(MOE_EINTR, msg, MSG_LEN,
                    "interrupted by %s %s: stopped there, no output was written (exit status %d)",
                    any == SIGINT ? "SIGINT" : any == SIGTERM ? "SIGTERM" : "a signal", phase,
                    EXIT_SIGNAL_BASE + any);
}

static int finish(int rank, int rc, const char *msg, int status)
{
    if (rank == 0 && rc != MOE_OK)
        fprintf(stderr, "moesim: %s%s\n", rc == MOE_EINTR ? "" : "error: ", msg);
    MPI_Finalize();
    if (rc == MOE_EINTR)
        return EXIT_SIGNAL_BASE + g_agreed_signal;
    return rc == MOE_OK ? 0 : status;
}

/* The outputs in the order they are written: --json, --dump-routing, --dump-output, --steps-csv. */
enum { OUT_JSON, OUT_ROUTING, OUT_OUTPUT, OUT_STEPS, OUT_COUNT };
static const char *const OUT_OPTION[OUT_COUNT] = {"--json", "--dump-routing", "--dump-output",
                                                  "--steps-csv"};

static void output_paths(const moe_config *cfg, const char *paths[OUT_COUNT], bool binary[OUT_COUNT])
{
    paths[OUT_JSON] = cfg->json_path;
    paths[OUT_ROUTING] = cfg->dump_routing;
    paths[OUT_OUTPUT] = cfg->dump_output;
    paths[OUT_STEPS] = cfg->steps_csv;
    binary[OUT_JSON] = false;
    binary[OUT_STEPS] = false;
    binary[OUT_ROUTING] = cfg->dump_routing && moe_config_dump_is_npy(cfg->dump_routing);
    binary[OUT_OUTPUT] = true;
}

/* Whether any output goes to standard output: the text report then goes to stderr. */
static bool outputs_use_stdout(const moe_config *cfg)
{
    const char *paths[OUT_COUNT];
    bool binary[OUT_COUNT];
    output_paths(cfg, paths, binary);
    for (int i = 0; i < OUT_COUNT; i++)
        if (paths[i] != NULL && strcmp(paths[i], "-") == 0)
            return true;
    return false;
}

/* Rank 0 checks, before anything runs, that every output can be written and that no output is an
 * input or another output (device and inode). */
static int check_outputs(const moe_config *cfg, int rank, MPI_Comm comm, char *msg)
{
    int rc = MOE_OK;
    if (rank == 0) {
        const char *paths[OUT_COUNT];
        bool binary[OUT_COUNT];
        output_paths(cfg, paths, binary);
        bool tty = moe_driver_stdout_is_terminal();
        for (int i = 0; rc == MOE_OK && i < OUT_COUNT; i++) {
            moe_out_target t;
            if (paths[i] != NULL)
                rc = moe_out_classify(&t, paths[i], OUT_OPTION[i], binary[i], tty, msg, MSG_LEN);
        }
        const char *inputs[] = {cfg->tokens_file, cfg->router_file, cfg->logits_file, cfg->network,
                                cfg->topology, cfg->expert_bias_file};
        const char *in_opts[] = {"--tokens-file", "--router-file", "--logits-file", "--network",
                                 "--topology", "--expert-bias-file"};
        if (rc == MOE_OK)
            rc = moe_out_check_distinct(paths, OUT_OPTION, OUT_COUNT, inputs, in_opts, 6, tty, msg,
                                        MSG_LEN);
    }
    return moe_agree(comm, rc, msg, MSG_LEN);
}

/* Seconds this process spent inside moe_layer_step (environment.step_seconds). */
static double g_step_seconds;

static int run_steps(moe_layer *layer, const moe_config *cfg, double cf, double *seconds, int rank,
                     MPI_Comm comm, char *msg)
{
    int total = cfg->warmup + cfg->iters;
    int progress = rank == 0 && !cfg->quiet && moe_driver_stdout_is_terminal();
    /* The signals are agreed by an MPI_Iallreduce started after each step and completed after the
     * next: it progresses inside the next step's collectives, so no rank waits for the others'
     * end of step outside the steps (a blocking agreement costs a step's skew every step). A signal
     * therefore stops every rank after the step it arrived in or the one after. */
    MPI_Request agree = MPI_REQUEST_NULL;
    int mine = 0, any = 0;
    int rc = MOE_OK;
    for (int i = 0; i < total && rc == MOE_OK; i++) {
        double *dst = i < cfg->warmup ? NULL : seconds + (int64_t)(i - cfg->warmup) * MOE_PHASE_COUNT;
        /* first: on the first timed iteration, and once before it untimed, in the last warm-up
         * step (the first call on its buffers costs Open MPI several times a warm one) */
        moe_layer_set_raw_baseline(layer, cfg->raw_baseline == MOE_RAW_ON ||
                                              (cfg->raw_baseline == MOE_RAW_FIRST &&
                                               (i == cfg->warmup || i + 1 == cfg->warmup)));
        double t0 = MPI_Wtime();
        rc = moe_layer_step(layer, dst, msg, MSG_LEN);
        g_step_seconds += MPI_Wtime() - t0;
        if (rc != MOE_OK)
            return rc;
        char phase[64];
        snprintf(phase, sizeof phase, "after step %d of %d (cf %g)", i + 1, total, cf);
        if (agree != MPI_REQUEST_NULL) {
            if (MPI_Wait(&agree, MPI_STATUS_IGNORE) != MPI_SUCCESS)
                return moe_fail(MOE_EMPI, msg, MSG_LEN, "MPI_Iallreduce failed while checking for "
                                                        "signals");
            rc = interrupted(any, phase, msg);
        }
        mine = g_signal;
        if (rc == MOE_OK && i + 1 < total &&
            MPI_Iallreduce(&mine, &any, 1, MPI_INT, MPI_MAX, comm, &agree) != MPI_SUCCESS)
            return moe_fail(MOE_EMPI, msg, MSG_LEN, "MPI_Iallreduce failed while checking for "
                                                    "signals");
        if (rc == MOE_OK && i + 1 == total)
            rc = check_interrupt(comm, phase, msg);
        if (rc != MOE_OK) {
            if (progress)
                fprintf(stderr, "\r%40s\r", "");
            return rc;
        }
        if (progress) {
            fprintf(stderr, "\r  cf %g: %s %d/%d   ", cf, i < cfg->warmup ? "warm-up" : "iteration",
                    i < cfg->warmup ? i + 1 : i + 1 - cfg->warmup,
                    i < cfg->warmup ? cfg->warmup : cfg->iters);
            fflush(stderr);
        }
    }
    if (progress)
        fprintf(stderr, "\r%40s\r", "");
    return MOE_OK;
}

/* What the dumps hold, gathered on rank 0 after the first capacity factor's run and written with
 * the JSON at the very end, so that a run stopped early publishes nothing. */
typedef struct dumps {
    float *logits;              /* (N, E), --dump-routing X.npy */
    moe_route_record *records;  /* (n_records), --dump-routing X.csv  */
    int64_t n_records;
    float *y;                   /* (N, d), --dump-output        */
} dumps;

static void dumps_free(dumps *d)
{
    free(d->logits);
    free(d->records);
    free(d->y);
    memset(d, 0, sizeof *d);
}

/* Collective: gather what the dumps need to rank 0. */
static int gather_dumps(moe_layer *layer, const moe_config *cfg, dumps *out, MPI_Comm comm,
                        char *msg)
{
    int rc = MOE_OK;
    if (cfg->dump_routing != NULL && moe_config_dump_is_npy(cfg->dump_routing))
        rc = moe_layer_gather_logits(layer, &out->logits, msg, MSG_LEN);
    else if (cfg->dump_routing != NULL)
        rc = moe_layer_gather_routing(layer, &out->records, &out->n_records, msg, MSG_LEN);
    if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) != MOE_OK)
        return rc;
    if (cfg->dump_output != NULL)
        rc = moe_layer_gather_output(layer, &out->y, msg, MSG_LEN);
    int rank;
    MPI_Comm_rank(comm, &rank);
    if (rc == MOE_OK && moe_driver_fault("gather_dumps", rank))
        rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN, "injected fault (MOESIM_FAULT=gather_dumps)");
    return moe_agree(comm, rc, msg, MSG_LEN);
}

/* Rank 0: write every output, then publish them together; on any failure none is published and
 * no temporary is left. A signal arriving from here on no longer stops the run: the outputs are
 * completed and the exit status is 0. */
static int write_outputs(const moe_config *cfg, const moe_results *res, const dumps *d, char *msg)
{
    const char *paths[OUT_COUNT];
    bool binary[OUT_COUNT];
    output_paths(cfg, paths, binary);
    moe_outfile files[OUT_COUNT];
    moe_outfile *open_files[OUT_COUNT] = {NULL, NULL, NULL, NULL};
    bool tty = moe_driver_stdout_is_terminal();
    int rc = MOE_OK, last = -1;
    for (int i = 0; i < OUT_COUNT; i++)
        if (paths[i] != NULL && (!cfg->predict_only || i == OUT_JSON))
            last = i;
    for (int i = 0; i < OUT_COUNT && rc == MOE_OK; i++) {
        if (paths[i] == NULL || (cfg->predict_only && i != OUT_JSON))
            continue;
        /* a FIFO gets a minute to find its reader */
        if ((rc = moe_outfile_open_cancellable(&files[i], paths[i], OUT_OPTION[i], binary[i], tty,
                                               60.0, &g_signal, msg, MSG_LEN)) != MOE_OK) {
            if (rc == MOE_EINTR) { /* a signal while waiting for a FIFO's reader: give up */
                g_agreed_signal = g_signal;
                snprintf(msg + strlen(msg), MSG_LEN - strlen(msg),
                         ": interrupted by %s, no output was written (exit status %d)",
                         g_signal == SIGINT ? "SIGINT" : "SIGTERM", EXIT_SIGNAL_BASE + g_signal);
            }
            break;
        }
        open_files[i] = &files[i];
        FILE *f = files[i].f;
        int wrc = MOE_OK;
        if (i == OUT_JSON)
            wrc = moe_report_json_file(f, cfg, res, msg, MSG_LEN);
        else if (i == OUT_ROUTING && d->logits != NULL)
            wrc = moe_npy_write_f32_file(f, d->logits, cfg->tokens, cfg->experts);
        else if (i == OUT_ROUTING)
            wrc = moe_report_routing_csv_file(f, d->records, d->n_records);
        else if (i == OUT_STEPS)
            wrc = moe_report_steps_csv_file(f, res);
        else
            wrc = moe_npy_write_f32_file(f, d->y, cfg->tokens, cfg->hidden);
        if (wrc == MOE_OK && i == last && moe_driver_fault("write_outputs", 0)) {
            errno = EIO; /* the last output fails after the others were written */
            wrc = MOE_EIO;
        }
        if (wrc != MOE_OK) { /* the commit below reports it with the errno */
            files[i].failed = true;
            files[i].err = errno;
        }
    }
    if (rc != MOE_OK) {
        for (int i = 0; i < OUT_COUNT; i++)
            moe_outfile_discard(open_files[i]);
        return rc;
    }
    return moe_outfiles_commit(open_files, OUT_COUNT, msg, MSG_LEN);
}

/* Predict drops and empty slots for every capacity factor from the router statistics and the
 * exchanged counts, before any token row moves; rank 0 fills res (ablation rows, P, routed). */
static int predict(moe_layer *layer, const moe_config *cfg, moe_results *res, int rank, int nranks,
                   moe_plan *plan, MPI_Comm comm, char *msg)
{
    int E = cfg->experts, k = cfg->top_k, nprocs = nranks;
    MPI_Comm_size(comm, &nprocs); /* --ranks: fewer processes than the ranks planned */
    double *P = calloc((size_t)E, sizeof *P), *q = calloc((size_t)E, sizeof *q);
    /* the processes' routed counts; --ranks: the plan's own per capacity group (n_groups x E)
     * instead */
    int64_t *gathered = rank == 0 ? calloc((size_t)nprocs * (size_t)E, sizeof *gathered) : NULL;
    int64_t *loads = plan != NULL ? plan->loads : gathered;
    int64_t *groups = calloc((size_t)nranks, sizeof *groups);
    int64_t *caps = calloc((size_t)nranks, sizeof *caps);
    int rc = P && q && groups && caps && (rank != 0 || gathered)
                 ? MOE_OK
                 : moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory");
    if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) == MOE_OK)
        rc = moe_layer_router_stats(layer, P, gathered, msg, MSG_LEN);
    if (rc == MOE_OK && rank == 0) {
        /* groups: the whole batch (global) or one per source rank (local) */
        int n_groups = moe_capacity_groups_blocks(groups, cfg->scope, cfg->tokens, nranks,
                                                  moe_layer_token_blocks(layer));
        if (n_groups == 1 && plan == NULL) /* the plan's loads are per group already */
            for (int s = 1; s < nranks; s++)
                for (int e = 0; e < E; e++)
                    loads[e] += loads[(int64_t)s * E + e];
        /* what dropping nothing takes: the same for every cf, since routing does not depend on it */
        int64_t max_load;
        double cf_needed;
        moe_capacity_needed(&max_load, &cf_needed, loads, groups, n_groups, E, k, E);
        if (cfg->routing == MOE_ROUTING_EXPERT_CHOICE)
            cf_needed = 0.0; /* nothing overflows under expert choice (JSON null) */
        for (int e = 0; e < E; e++) {
            res->routed[e] = 0;
            for (int s = 0; s < (n_groups == 1 ? 1 : nranks); s++)
                res->routed[e] += loads[(int64_t)s * E + e];
        }
        double *psum = P; /* moe_load_balance wants sums: P * N */
        for (int e = 0; e < E; e++)
            psum[e] *= (double)cfg->tokens;
        res->aux_loss = moe_load_balance(res->f, res->P, res->routed, psum, E, cfg->tokens, k);
        moe_predict_selection(q, res->P, E, k);
        double *uniform = calloc((size_t)E, sizeof *uniform);
        if (uniform == NULL)
            rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory");
        for (int e = 0; uniform && e < E; e++)
            uniform[e] = (double)k / E;
        for (int i = 0; rc == MOE_OK && i < cfg->n_cf; i++) {
            moe_ablation_row *row = &res->ablation[i];
            double cf = cfg->cf_list[i];
            row->capacity_factor = cf;
            moe_group_capacities(caps, cf, groups, n_groups, k, E, cfg->min_capacity);
            if (cfg->routing == MOE_ROUTING_EXPERT_CHOICE)
                moe_group_capacities_at_most_group(caps, groups, n_groups);
            row->capacity = moe_capacity_sum(caps, n_groups); /* -1 when dropless */
            moe_predict_closed_form_caps(&row->expected_dropped, &row->expected_empty, q, E, groups,
                                         caps, n_groups);
            moe_predict_closed_form_caps(&row->expected_dropped_uniform,
                                         &row->expected_empty_uniform, uniform, E, groups, caps,
                                         n_groups);
            moe_predict_exact_caps(&row->exact_dropped, &row->exact_empty, loads, E, caps, n_groups);
            row->max_expert_load = max_load;
            row->cf_needed = cf_needed;
        }
        free(uniform);
    }
    free(P);
    free(q);
    free(gathered);
    free(groups);
    free(caps);
    return moe_agree(comm, rc, msg, MSG_LEN);
}

/* Rank 0: traffic by locality class for the flat and the two-level exchange, and the projection
 * onto a cluster (net may be NULL). */
static int locality(moe_results *res, const moe_network *net, char *msg)
{
    int R = res->ranks, rc = MOE_OK;
    moe_blocks stage[3] = {{0}};
    const moe_blocks *matrices[2] = {&res->dispatch_bytes, &res->combine_bytes};
    double *proj_flat[2] = {&res->proj_flat_dispatch, &res->proj_flat_combine};
    double *proj_hier[2] = {&res->proj_hier_dispatch, &res->proj_hier_combine};
    for (int m = 0; m < 2 && rc == MOE_OK; m++) {
        moe_traffic_by_class_blocks(res->by_class, res->by_class_per_rank, matrices[m],
                                    res->placement);
        int64_t node_bytes = m == 0 ? res->node_row_bytes : res->row_bytes_combine;
        int64_t rank_bytes = m == 0 ? res->row_bytes : res->row_bytes_combine;
        if (res->node_rows != NULL) /* per-rank rows: once per node across the leaders */
            rc = moe_hier_schedule_nodes_blocks(stage, res->node_rows, res->n_nodes, &res->rows,
                                                node_bytes, rank_bytes, res->placement, R, m == 1);
        else
            rc = moe_hier_schedule_blocks(stage, matrices[m], res->placement, R);
        *proj_hier[m] = 0.0;
        for (int st = 0; st < 3 && rc == MOE_OK; st++) {
            moe_traffic_by_class_blocks(res->by_class_hier, NULL, &stage[st], res->placement);
            if (net != NULL)
                *proj_hier[m] += moe_project_stage_blocks(&stage[st], res->placement, R, net);
        }
        if (net != NULL)
            *proj_flat[m] = moe_project_stage_blocks(matrices[m], res->placement, R, net);
    }
    res->projected = net != NULL;
    if (net != NULL)
        snprintf(res->network, sizeof res->network, "%s", net->name);
    for (int st = 0; st < 3; st++)
        moe_blocks_free(&stage[st]);
    if (rc != MOE_OK)
        return moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory for the traffic classes");
    return MOE_OK;
}

/* Collective: every rank's memory estimate, peak RSS, baseline RSS and budget to rank 0. */
static int collect_memory(moe_layer *layer, moe_results *res, int64_t baseline_rss, int rank,
                          int nranks, MPI_Comm comm, char *msg)
{
    moe_mem_estimate est;
    enum { N_FIELDS = 5 };
    int64_t mine[N_FIELDS], *all = rank == 0 ? malloc((size_t)nranks * sizeof mine) : NULL;
    int rc = rank != 0 || all ? MOE_OK : moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory");
    if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) != MOE_OK)
        return rc;
    moe_layer_memory(layer, &est, &mine[3]);
    mine[0] = est.total;
    mine[1] = moe_driver_peak_rss();
    mine[2] = baseline_rss;
    mine[4] = 0;
    const moe_config *cfg = moe_layer_config(layer);
    if (cfg->predict_only && cfg->plan_ranks == 0) { /* --ranks: the plan has it */
        /* what a real run of this configuration would allocate, the exchange at a balanced
         * router's load: the planning figure --predict-only is for */
        moe_config full = *cfg;
        full.predict_only = false;
        int64_t first, n, first_e, n_le;
        moe_token_block(moe_layer_token_blocks(layer), cfg->tokens, nranks, rank, &first, &n);
        moe_partition(cfg->experts, nranks, rank, &first_e, &n_le);
        moe_mem_estimate m;
        moe_memory_fixed(&m, &full, nranks, rank, n, n_le);
        moe_memory_exchange_balanced(&m, &full, nranks, n, n_le);
        mine[4] = m.total;
    }
    int mrc = MPI_Gather(mine, N_FIELDS, MPI_INT64_T, all, N_FIELDS, MPI_INT64_T, 0, comm);
    if (mrc == MPI_SUCCESS && rank == 0) {
        if (cfg->plan_ranks == 0) /* --ranks: the plan's own figure (moe_planned_results) */
            res->mem_full_run = cfg->predict_only ? 0 : -1;
        for (int r = 0; r < nranks; r++) {
            res->mem_estimate[r] = all[N_FIELDS * r];
            res->mem_peak_rss[r] = all[N_FIELDS * r + 1];
            res->mem_baseline_rss[r] = all[N_FIELDS * r + 2];
            res->mem_budget[r] = all[N_FIELDS * r + 3];
            bool full = cfg->predict_only && cfg->plan_ranks == 0;
            if (full && all[N_FIELDS * r + 4] > res->mem_full_run)
                res->mem_full_run = all[N_FIELDS * r + 4];
        }
        res->mem_budget_given = moe_layer_config(layer)->max_memory > 0 ||
                                moe_layer_config(layer)->max_memory_percent > 0;
    }
    free(all);
    if (mrc != MPI_SUCCESS)
        rc = moe_mpi_fail(mrc, "MPI_Gather", __FILE__, __LINE__, msg, MSG_LEN);
    return moe_agree(comm, rc, msg, MSG_LEN);
}

/* MOE_OK when the verdict is VALID; else MOE_ECHECK with the failed checks in msg. */
static int invalid_run(const moe_results *res, char *msg)
{
    moe_check checks[MOE_CHECK_COUNT];
    if (moe_verdict(res, checks))
        return MOE_OK;
    size_t used = (size_t)snprintf(msg, MSG_LEN, "INVALID: the run's self-checks failed:");
    for (int i = 0; i < MOE_CHECK_COUNT && used < MSG_LEN; i++)
        if (checks[i].ran && !checks[i].passed)
            used += (size_t)snprintf(msg + used, MSG_LEN - used, " %s (%s)", checks[i].name,
                                     checks[i].detail);
    return MOE_ECHECK;
}

/* Copy what one capacity factor's run measured into its ablation row. */
static void record_measurement(moe_ablation_row *row, const moe_results *r)
{
    row->measured = true;
    row->dropped_assignments = r->dropped_assignments;
    row->dropped_tokens = r->dropped_tokens;
    row->rerouted = r->rerouted;
    row->empty_slots = r->empty_slots;
    row->flops_wasted = r->flops_wasted;
    row->dispatch_bytes = moe_blocks_total(&r->dispatch_bytes);
    row->dispatch = r->phase[MOE_PHASE_DISPATCH];
    row->combine = r->phase[MOE_PHASE_COMBINE];
    row->expert = r->phase[MOE_PHASE_EXPERT];
    row->step = r->step;
}

/* --steps: steps 1 .. N-1 after the run of step 0, each on its batch (moe_layer_set_step): the
 * same prediction, timed steps, results and balance as step 0, appended to res's series with the
 * closed form from the previous step's loads (q_i = min(1, routed_i / N)). Rank 0 shows progress
 * on a terminal. A signal stops the run between steps as between timed iterations. */
static int run_more_steps(moe_layer *layer, const moe_config *cfg, moe_results *res,
                          moe_results *cur, double *seconds, int rank, int R, MPI_Comm comm,
                          char *msg)
{
    int E = cfg->experts, k = cfg->top_k;
    int64_t *prev = calloc((size_t)E, sizeof *prev);
    int64_t *groups = calloc((size_t)R, sizeof *groups), *caps = calloc((size_t)R, sizeof *caps);
    double *q = calloc((size_t)E, sizeof *q);
    int rc = prev && groups && caps && q ? MOE_OK : moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory");
    rc = moe_agree(comm, rc, msg, MSG_LEN);
    if (rc == MOE_OK && rank == 0)
        memcpy(prev, res->routed, (size_t)E * sizeof *prev);
    bool progress = rank == 0 && !cfg->quiet && moe_driver_stdout_is_terminal();
    double start = MPI_Wtime();
    for (int t = 1; t < cfg->steps && rc == MOE_OK; t++) {
        if (progress) {
            double el = MPI_Wtime() - start, left = el / (t - 1 > 0 ? t - 1 : 1) * (cfg->steps - t);
            fprintf(stderr, "\r  step %d of %d, %.1f s elapsed%s", t + 1, cfg->steps, el,
                    t > 1 ? "" : "          ");
            if (t > 1)
                fprintf(stderr, ", about %.0f s left   ", left);
            fflush(stderr);
        }
        rc = moe_layer_set_step(layer, t, msg, MSG_LEN);
        if (rc == MOE_OK)
            rc = predict(layer, cfg, cur, rank, R, NULL, comm, msg);
        if (rc != MOE_OK)
            break;
        if ((rc = run_steps(layer, cfg, cfg->capacity_factor, seconds, rank, comm, msg)) ==
            MOE_EINTR)
            break;
        if (rc != MOE_OK) {
            fprintf(stderr, "moesim: error on rank %d: %s\n", rank, msg);
            MPI_Abort(comm, EXIT_FAILED);
        }
        rc = moe_layer_results(layer, rank == 0 ? cur : NULL, seconds, cfg->iters, msg, MSG_LEN);
        if (rc == MOE_OK)
            rc = moe_layer_balance(layer, rank == 0 ? &cur->balance : NULL, msg, MSG_LEN);
        if (rc == MOE_OK && rank == 0) {
            moe_layer_training(layer, &cur->training);
            res->training = cur->training; /* the run's figures are the last step's */
            /* the self-checks cover every step (verdict.h) */
            moe_selfcheck_add(&res->check, &cur->check);
            res->check.step_predictions++;
            res->check.step_predictions_wrong +=
                cur->ablation[0].exact_dropped != cur->dropped_assignments;
            moe_step_prediction pred = {.valid = true};
            for (int e = 0; e < E; e++) {
                double share = (double)prev[e] / (double)cfg->tokens;
                q[e] = share < 1.0 ? share : 1.0;
            }
            int n_groups = moe_capacity_groups_blocks(groups, cfg->scope, cfg->tokens, R,
                                                      moe_layer_token_blocks(layer));
            moe_group_capacities(caps, cfg->capacity_factor, groups, n_groups, k, E,
                                 cfg->min_capacity);
            if (cfg->routing == MOE_ROUTING_EXPERT_CHOICE)
                moe_group_capacities_at_most_group(caps, groups, n_groups);
            moe_predict_closed_form_caps(&pred.dropped, &pred.empty, q, E, groups, caps, n_groups);
            if (moe_report_step_add(res, cur, t, &pred, moe_layer_selection_bias(layer)) != MOE_OK)
                rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory for the steps' series");
            memcpy(prev, cur->routed, (size_t)E * sizeof *prev);
        }
        rc = moe_agree(comm, rc, msg, MSG_LEN);
        if (rc == MOE_OK && cfg->expert_bias)
            rc = moe_layer_update_expert_bias(layer, msg, MSG_LEN);
        if (rc == MOE_OK)
            rc = moe_agree(comm, moe_layer_train_update(layer, msg, MSG_LEN), msg, MSG_LEN);
    }
    if (progress)
        fprintf(stderr, "\r%70s\r", "");
    free(prev);
    free(groups);
    free(caps);
    free(q);
    return rc;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    double wall_start = MPI_Wtime();
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    char msg[MSG_LEN] = "";
    install_signal_handlers();
    int64_t baseline_rss = moe_driver_peak_rss(); /* MPI and the libraries, before any buffer */
    moe_environment env; /* cores, load average, start time, library versions */
    moe_driver_environment(&env);

    /* One BLAS thread per rank unless the user asked otherwise: ranks already fill the cores. */
    if (getenv("OPENBLAS_NUM_THREADS") == NULL)
        openblas_set_num_threads(1);

    /* Phase 1: options, identical on every rank, so no agreement is needed yet. */
    moe_config cfg;
    moe_config_defaults(&cfg);
    int rc = moe_config_parse(&cfg, argc, argv, msg, MSG_LEN);
    if (rc != MOE_OK)
        return finish(rank, rc, msg, EXIT_REFUSED);
    if (cfg.help || cfg.version) {
        if (rank == 0 && cfg.help)
            fputs(moe_config_usage(), stdout);
        else if (rank == 0)
            printf("moesim %s (MPI %d.%d, hwloc API 0x%x, OpenBLAS %s)\n", MOE_VERSION, MPI_VERSION,
                   MPI_SUBVERSION, (unsigned)hwloc_get_api_version(), openblas_get_config());
        return finish(rank, MOE_OK, msg, 0);
    }

    /* Phase 2: inputs and outputs, checked before any work. */
    moe_network net;
    if ((rc = moe_driver_resolve(&cfg, nranks, comm, msg, MSG_LEN)) != MOE_OK ||
        (rc = check_outputs(&cfg, rank, comm, msg)) != MOE_OK)
        return finish(rank, rc, msg, EXIT_REFUSED);
    rc = cfg.network != NULL ? moe_network_load(cfg.network, &net, msg, MSG_LEN) : MOE_OK;
    if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) != MOE_OK)
        return finish(rank, rc, msg, EXIT_REFUSED);

    /* Phase 3: the layer (tokens, router, experts, buffers sized by one routing pass). */
    /* --ranks: the processes route, rank 0 plans the ranks (planned.c) */
    bool planned = cfg.plan_ranks > 0;
    int R = planned ? cfg.plan_ranks : nranks; /* the ranks the results describe */
    moe_config layer_cfg = planned ? moe_planned_layer_config(&cfg) : cfg;
    moe_layer *layer = NULL;
    rc = moe_layer_create(&layer, &layer_cfg, comm, msg, MSG_LEN);
    if (rc != MOE_OK) {
        moe_layer_destroy(layer);
        return finish(rank, rc, msg, rc == MOE_EMPI ? EXIT_FAILED : EXIT_REFUSED);
    }

    /* what the layer settled from the placement (one expert group per node by default) */
    cfg.expert_groups = moe_layer_config(layer)->expert_groups;

    /* Phase 4: predict, before any token row moves. */
    moe_results res = {0}, more = {0};
    moe_plan plan = {0};
    rc = rank == 0 ? moe_results_init(&res, cfg.experts, R, cfg.n_cf) : MOE_OK;
    if (rc == MOE_OK && rank == 0 && (cfg.n_cf > 1 || cfg.steps > 1))
        rc = moe_results_init(&more, cfg.experts, R, 1);
    if (rc == MOE_OK && rank == 0 && planned)
        rc = moe_results_set_processes(&res, nranks);
    double *seconds = calloc((size_t)cfg.iters * MOE_PHASE_COUNT, sizeof *seconds);
    if (rc != MOE_OK || seconds == NULL)
        rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory for results");
    if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) == MOE_OK && planned)
        rc = moe_planned_build(layer, &cfg, &plan, comm, msg, MSG_LEN);
    if (rc == MOE_OK)
        rc = predict(layer, &cfg, &res, rank, R, planned && rank == 0 ? &plan : NULL, comm, msg);
    if (rc != MOE_OK)
        goto out;
    if (rc == MOE_OK && cfg.predict_only) /* otherwise measured with the first cf's run */
        rc = moe_layer_balance(layer, rank == 0 ? &res.balance : NULL, msg, MSG_LEN);
    if (rc != MOE_OK || (rc = check_interrupt(comm, "before the run", msg)) != MOE_OK)
        goto out;
    /* With an output on standard output, the text report moves to stderr. */
    FILE *report_out = outputs_use_stdout(&cfg) ? stderr : stdout;
    bool plan_failed = false;
    if (rank == 0) {
        const float *bias;
        moe_layer_workload(layer, &bias, &res.hot_bias, &res.hot_share);
        const moe_expert_map *map = moe_layer_expert_map(layer);
        for (int e = 0; e < cfg.experts; e++) {
            res.router_bias[e] = bias[e];
            res.owner[e] = map->rank[map->replica_slot[map->replica_start[e]]];
        }
        res.tokens = cfg.tokens;
        res.hidden = cfg.hidden;
        res.ffn = cfg.ffn;
        res.top_k = cfg.top_k;
        memcpy(planned ? res.proc_placement : res.placement, moe_layer_placement(layer),
               (size_t)nranks * sizeof *res.placement);
        /* owners, placement, traffic, balance and memory of the planned ranks */
        if (planned && moe_planned_results(&res, &cfg, &plan) != MOE_OK)
            plan_failed = true;
        res.hierarchical = cfg.hierarchical;
        res.matrix_full = moe_config_full_matrix(&cfg, planned ? cfg.plan_ranks : nranks);
        /* what ran: under --regroup auto the layer's probe chose the combine */
        res.regroup = cfg.dispatch == MOE_DISPATCH_PER_RANK ? "fan-out"
                      : planned ? moe_regroup_name(moe_config_regroup(&cfg, cfg.plan_ranks))
                                : moe_regroup_name(moe_layer_regroup(layer, res.regroup_probe));
        res.env = env;
        if (!cfg.quiet) {
            moe_report_placement(report_out, &res);
            moe_report_prediction(report_out, &cfg, &res);
            fflush(report_out);
        }
    }
    /* --predict-only: the traffic the decision makes and its projection, with nothing moved */
    if (cfg.predict_only) {
        rc = plan_failed  ? moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory for the planned traffic")
             : planned ? MOE_OK
                       : moe_layer_traffic(layer, &res, msg, MSG_LEN);
        if (rc == MOE_OK && rank == 0)
            rc = locality(&res, cfg.network ? &net : NULL, msg);
        if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) != MOE_OK)
            goto out;
        if (rank == 0 && !cfg.quiet)
            moe_report_planned_traffic(report_out, &res);
    }

    /* Phase 5: for each capacity factor, warm-up and timed steps, then statistics to rank 0. A
     * failure inside a step is an MPI or internal error that other ranks may not see: abort rather
     * than risk a hang. A signal is agreed after every step and stops every rank there. */
    dumps dump = {0};
    for (int i = 0; !cfg.predict_only && i < cfg.n_cf && rc == MOE_OK; i++) {
        moe_results *cur = i == 0 ? &res : &more;
        if (i > 0 && (rc = moe_layer_set_capacity_factor(layer, cfg.cf_list[i], msg, MSG_LEN)) != MOE_OK)
            break;
        if ((rc = run_steps(layer, &cfg, cfg.cf_list[i], seconds, rank, comm, msg)) == MOE_EINTR)
            break;
        if (rc != MOE_OK) {
            fprintf(stderr, "moesim: error on rank %d: %s\n", rank, msg);
            MPI_Abort(comm, EXIT_FAILED);
        }
        rc = moe_layer_results(layer, rank == 0 ? cur : NULL, seconds, cfg.iters, msg, MSG_LEN);
        /* the wire formats' error against fp32 rows of the same batch, measured here */
        if (rc == MOE_OK && i == 0 &&
            (cfg.wire != MOE_WIRE_FP32 || cfg.wire_combine != MOE_WIRE_FP32)) {
            rc = moe_layer_wire_error(layer, &res.y_error_max_rel, &res.y_error_rms_rel, msg,
                                      MSG_LEN);
            res.wire_measured = rc == MOE_OK;
        }
        if (rc == MOE_OK && i == 0)
            rc = moe_layer_balance(layer, rank == 0 ? &res.balance : NULL, msg, MSG_LEN);
        if (rc == MOE_OK && rank == 0)
            moe_layer_training(layer, &cur->training);
        if (rc == MOE_OK && rank == 0)
            record_measurement(&res.ablation[i], cur);
        if (rc == MOE_OK && rank == 0 && i > 0)
            moe_selfcheck_add(&res.check, &more.check);
        if (rc == MOE_OK && rank == 0 && i == 0)
            rc = locality(&res, cfg.network ? &net : NULL, msg);
        if (rc == MOE_OK && rank == 0 && moe_driver_fault("locality", rank))
            rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN, "injected fault (MOESIM_FAULT=locality)");
        rc = moe_agree(comm, rc, msg, MSG_LEN); /* locality ran on rank 0 alone */
        if (rc == MOE_OK && i == 0)
            rc = gather_dumps(layer, &cfg, &dump, comm, msg);
    }

    /* --steps: step 0 is the run above; the others follow, each on its own batch */
    if (rc == MOE_OK && !cfg.predict_only && rank == 0 &&
        moe_report_step_add(&res, &res, 0, NULL, moe_layer_selection_bias(layer)) != MOE_OK)
        rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory for the steps' series");
    if (!cfg.predict_only && rc != MOE_EINTR)
        rc = moe_agree(comm, rc, msg, MSG_LEN);
    if (rc == MOE_OK && cfg.expert_bias) /* after every step, for the next */
        rc = moe_layer_update_expert_bias(layer, msg, MSG_LEN);
    if (rc == MOE_OK && !cfg.predict_only) /* --mode train: the optimizer step */
        rc = moe_agree(comm, moe_layer_train_update(layer, msg, MSG_LEN), msg, MSG_LEN);
    if (rc == MOE_OK && cfg.steps > 1)
        rc = run_more_steps(layer, &cfg, &res, &more, seconds, rank, R, comm, msg);
    if (rc == MOE_OK && rank == 0 && !cfg.predict_only) { /* the last step's update counted */
        moe_training last;
        moe_layer_training(layer, &last);
        res.training.optimizer_steps = last.optimizer_steps;
    }

    /* Phase 6: the outputs, all published together, then the report. Past this check a signal no
     * longer stops the run. */
    if (rc == MOE_OK)
        rc = collect_memory(layer, &res, baseline_rss, rank, nranks, comm, msg);
    if (rc == MOE_OK)
        rc = check_interrupt(comm, "before writing the outputs", msg);
    if (rc == MOE_OK && rank == 0) {
        res.env.load_end = moe_driver_load_average();
        res.env.wall_seconds = MPI_Wtime() - wall_start;
        res.env.step_seconds = g_step_seconds;
        rc = write_outputs(&cfg, &res, &dump, msg);
        bool color = report_out == stdout && moe_driver_stdout_is_terminal() &&
                     getenv("NO_COLOR") == NULL;
        if (rc == MOE_OK && !cfg.quiet && !cfg.predict_only) {
            moe_report_text(report_out, &cfg, &res, color);
            moe_report_ablation(report_out, &cfg, &res);
            moe_report_steps_text(report_out, &cfg, &res);
            moe_report_verdict(report_out, &res, color);
        } else if (rc == MOE_OK && !cfg.quiet) {
            moe_report_memory(report_out, &res, color);
        }
        if (rc == MOE_OK && g_signal != 0)
            fprintf(stderr, "moesim: %s arrived while the outputs were being written: they are "
                            "complete\n", g_signal == SIGINT ? "SIGINT" : "SIGTERM");
        if (rc == MOE_OK && !cfg.predict_only) /* INVALID: the outputs say so, and the status */
            rc = invalid_run(&res, msg);
    }
    rc = moe_agree(comm, rc, msg, MSG_LEN);
    if (rc == MOE_EINTR) { /* stopped on rank 0 while writing: every rank exits with its status */
        int sig = g_agreed_signal;
        MPI_Allreduce(&sig, &g_agreed_signal, 1, MPI_INT, MPI_MAX, comm);
    }
    dumps_free(&dump);
out:
    moe_plan_free(&plan);
    moe_report_steps_free(&res);
    moe_results_free(&res);
    moe_results_free(&more);
    free(seconds);
    moe_layer_destroy(layer);
    return finish(rank, rc, msg, EXIT_FAILED);
}
