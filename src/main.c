/* moesim driver: a list of phases. Set up, validate and agree, build the layer, warm up, time,
 * reduce, report. Only rank 0 prints; every error is agreed first so that all ranks leave together. */
#include "moesim/config.h"
#include "moesim/driver.h"
#include "moesim/error.h"
#include "moesim/exchange.h"
#include "moesim/layer.h"
#include "moesim/npy.h"
#include "moesim/predict.h"
#include "moesim/projection.h"
#include "moesim/tokens.h"
#include "moesim/report.h"
#include "moesim/stats.h"

#include <cblas.h>
#include <hwloc.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MSG_LEN 1024

/* Exit statuses: 2 for anything refused before the layer runs (options, inputs, sizes), 1 for a
 * failure while running or writing results. */
enum { EXIT_REFUSED = 2, EXIT_FAILED = 1 };

static int finish(int rank, int rc, const char *msg, int status)
{
    if (rank == 0 && rc != MOE_OK)
        fprintf(stderr, "moesim: error: %s\n", msg);
    MPI_Finalize();
    return rc == MOE_OK ? 0 : status;
}

/* Rank 0 checks that every output path can be created before anything runs. */
static int check_outputs(const moe_config *cfg, int rank, MPI_Comm comm, char *msg)
{
    int rc = MOE_OK;
    if (rank == 0) {
        if (cfg->json_path)
            rc = moe_report_check_writable(cfg->json_path, "--json", msg, MSG_LEN);
        if (rc == MOE_OK && cfg->dump_routing)
            rc = moe_report_check_writable(cfg->dump_routing, "--dump-routing", msg, MSG_LEN);
        if (rc == MOE_OK && cfg->dump_output)
            rc = moe_report_check_writable(cfg->dump_output, "--dump-output", msg, MSG_LEN);
    }
    return moe_agree(comm, rc, msg, MSG_LEN);
}

static int run_steps(moe_layer *layer, const moe_config *cfg, double cf, double *seconds, int rank,
                     char *msg)
{
    int total = cfg->warmup + cfg->iters;
    int progress = rank == 0 && !cfg->quiet && moe_driver_stdout_is_terminal();
    for (int i = 0; i < total; i++) {
        double *dst = i < cfg->warmup ? NULL : seconds + (int64_t)(i - cfg->warmup) * MOE_PHASE_COUNT;
        int rc = moe_layer_step(layer, dst, msg, MSG_LEN);
        if (rc != MOE_OK)
            return rc;
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

/* The dumps describe the first capacity factor's run: call right after it. */
static int write_dumps(moe_layer *layer, const moe_config *cfg, int rank, MPI_Comm comm, char *msg)
{
    int rc = MOE_OK;
    if (cfg->dump_routing != NULL && moe_config_dump_is_npy(cfg->dump_routing)) {
        float *z = NULL;
        rc = moe_layer_gather_logits(layer, &z, msg, MSG_LEN);
        if (rc == MOE_OK && rank == 0)
            rc = moe_npy_write_f32(cfg->dump_routing, z, cfg->tokens, cfg->experts, msg, MSG_LEN);
        free(z);
        if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) != MOE_OK)
            return rc;
    } else if (cfg->dump_routing != NULL) {
        moe_route_record *records = NULL;
        rc = moe_layer_gather_routing(layer, &records, msg, MSG_LEN);
        if (rc == MOE_OK && rank == 0)
            rc = moe_report_routing_csv(cfg->dump_routing, records, cfg->tokens * cfg->top_k, msg,
                                        MSG_LEN);
        free(records);
        if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) != MOE_OK)
            return rc;
    }
    if (cfg->dump_output != NULL) {
        float *y = NULL;
        rc = moe_layer_gather_output(layer, &y, msg, MSG_LEN);
        if (rc == MOE_OK && rank == 0)
            rc = moe_npy_write_f32(cfg->dump_output, y, cfg->tokens, cfg->hidden, msg, MSG_LEN);
        free(y);
        rc = moe_agree(comm, rc, msg, MSG_LEN);
    }
    return rc;
}

/* Predict drops and empty slots for every capacity factor from the router statistics and the
 * exchanged counts, before any token row moves; rank 0 fills res (ablation rows, P, routed). */
static int predict(moe_layer *layer, const moe_config *cfg, moe_results *res, int rank, int nranks,
                   MPI_Comm comm, char *msg)
{
    int E = cfg->experts, k = cfg->top_k;
    double *P = calloc((size_t)E, sizeof *P), *q = calloc((size_t)E, sizeof *q);
    int64_t *loads = rank == 0 ? calloc((size_t)nranks * (size_t)E, sizeof *loads) : NULL;
    int64_t *groups = calloc((size_t)nranks, sizeof *groups);
    int rc = P && q && groups && (rank != 0 || loads) ? MOE_OK
                                                       : moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory");
    if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) == MOE_OK)
        rc = moe_layer_router_stats(layer, P, loads, msg, MSG_LEN);
    if (rc == MOE_OK && rank == 0) {
        /* groups: the whole batch (global) or one per source rank (local) */
        int n_groups = cfg->scope == MOE_SCOPE_GLOBAL ? 1 : nranks;
        int64_t first;
        if (n_groups == 1) {
            groups[0] = cfg->tokens;
            for (int s = 1; s < nranks; s++)
                for (int e = 0; e < E; e++)
                    loads[e] += loads[(int64_t)s * E + e];
        } else {
            for (int s = 0; s < nranks; s++)
                moe_partition(cfg->tokens, nranks, s, &first, &groups[s]);
        }
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
            row->capacity = cf == 0.0 ? -1 : 0;
            for (int g = 0; cf != 0.0 && g < n_groups; g++)
                row->capacity += moe_capacity(cf, groups[g], k, E);
            moe_predict_closed_form(&row->expected_dropped, &row->expected_empty, q, E, k, cf, groups,
                                    n_groups);
            moe_predict_closed_form(&row->expected_dropped_uniform, &row->expected_empty_uniform,
                                    uniform, E, k, cf, groups, n_groups);
            moe_predict_exact(&row->exact_dropped, &row->exact_empty, loads, E, k, cf, groups,
                              n_groups);
        }
        free(uniform);
    }
    free(P);
    free(q);
    free(loads);
    free(groups);
    return moe_agree(comm, rc, msg, MSG_LEN);
}

/* Rank 0: traffic by locality class for the flat and the two-level exchange, and the projection
 * onto a cluster (net may be NULL). */
static int locality(moe_results *res, const moe_network *net, char *msg)
{
    int R = res->ranks;
    size_t n = (size_t)R * (size_t)R;
    int64_t *stage = malloc(3 * n * sizeof *stage);
    if (stage == NULL)
        return moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory for the traffic classes");
    const int64_t *matrices[2] = {res->dispatch_bytes, res->combine_bytes};
    double *proj_flat[2] = {&res->proj_flat_dispatch, &res->proj_flat_combine};
    double *proj_hier[2] = {&res->proj_hier_dispatch, &res->proj_hier_combine};
    for (int m = 0; m < 2; m++) {
        moe_traffic_by_class(res->by_class, res->by_class_per_rank, matrices[m], res->placement, R);
        moe_hier_schedule(stage, stage + n, stage + 2 * n, matrices[m], res->placement, R);
        *proj_hier[m] = 0.0;
        for (int st = 0; st < 3; st++) {
            moe_traffic_by_class(res->by_class_hier, NULL, stage + st * n, res->placement, R);
            if (net != NULL)
                *proj_hier[m] += moe_project_stage(stage + st * n, res->placement, R, net);
        }
        if (net != NULL)
            *proj_flat[m] = moe_project_stage(matrices[m], res->placement, R, net);
    }
    res->projected = net != NULL;
    if (net != NULL)
        snprintf(res->network, sizeof res->network, "%s", net->name);
    free(stage);
    return MOE_OK;
}

/* Copy what one capacity factor's run measured into its ablation row. */
static void record_measurement(moe_ablation_row *row, const moe_results *r)
{
    row->measured = true;
    row->dropped_assignments = r->dropped_assignments;
    row->dropped_tokens = r->dropped_tokens;
    row->empty_slots = r->empty_slots;
    row->flops_wasted = r->flops_wasted;
    row->dispatch_bytes = 0;
    for (int64_t i = 0; i < (int64_t)r->ranks * r->ranks; i++)
        row->dispatch_bytes += r->dispatch_bytes[i];
    row->dispatch = r->phase[MOE_PHASE_DISPATCH];
    row->combine = r->phase[MOE_PHASE_COMBINE];
    row->expert = r->phase[MOE_PHASE_EXPERT];
    row->step = r->step;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    char msg[MSG_LEN] = "";

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
    moe_layer *layer = NULL;
    rc = moe_layer_create(&layer, &cfg, comm, msg, MSG_LEN);
    if (rc != MOE_OK) {
        moe_layer_destroy(layer);
        return finish(rank, rc, msg, rc == MOE_EMPI ? EXIT_FAILED : EXIT_REFUSED);
    }

    /* Phase 4: predict, before any token row moves. */
    moe_results res = {0}, more = {0};
    rc = rank == 0 ? moe_results_init(&res, cfg.experts, nranks, cfg.n_cf) : MOE_OK;
    if (rc == MOE_OK && rank == 0 && cfg.n_cf > 1)
        rc = moe_results_init(&more, cfg.experts, nranks, 1);
    double *seconds = calloc((size_t)cfg.iters * MOE_PHASE_COUNT, sizeof *seconds);
    if (rc != MOE_OK || seconds == NULL)
        rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory for results");
    if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) == MOE_OK)
        rc = predict(layer, &cfg, &res, rank, nranks, comm, msg);
    if (rc != MOE_OK)
        goto out;
    if (rank == 0) {
        const float *bias;
        moe_layer_workload(layer, &bias, &res.hot_bias, &res.hot_share);
        for (int e = 0; e < cfg.experts; e++) {
            res.router_bias[e] = bias[e];
            res.owner[e] = moe_partition_owner(cfg.experts, nranks, e);
        }
        res.tokens = cfg.tokens;
        res.hidden = cfg.hidden;
        res.ffn = cfg.ffn;
        res.top_k = cfg.top_k;
        memcpy(res.placement, moe_layer_placement(layer), (size_t)nranks * sizeof *res.placement);
        res.hierarchical = cfg.hierarchical;
        if (!cfg.quiet) {
            moe_report_placement(stdout, &res);
            moe_report_prediction(stdout, &cfg, &res);
            fflush(stdout);
        }
    }
    if (cfg.predict_only) {
        if (rank == 0 && cfg.json_path != NULL)
            rc = moe_report_json(cfg.json_path, &cfg, &res, msg, MSG_LEN);
        rc = moe_agree(comm, rc, msg, MSG_LEN);
        goto out;
    }

    /* Phase 5: for each capacity factor, warm-up and timed steps, then statistics to rank 0. A
     * failure inside a step is an MPI or internal error that other ranks may not see: abort rather
     * than risk a hang. */
    for (int i = 0; i < cfg.n_cf && rc == MOE_OK; i++) {
        moe_results *cur = i == 0 ? &res : &more;
        if (i > 0 && (rc = moe_layer_set_capacity_factor(layer, cfg.cf_list[i], msg, MSG_LEN)) != MOE_OK)
            break;
        if ((rc = run_steps(layer, &cfg, cfg.cf_list[i], seconds, rank, msg)) != MOE_OK) {
            fprintf(stderr, "moesim: error on rank %d: %s\n", rank, msg);
            MPI_Abort(comm, EXIT_FAILED);
        }
        rc = moe_layer_results(layer, rank == 0 ? cur : NULL, seconds, cfg.iters, msg, MSG_LEN);
        if (rc == MOE_OK && rank == 0)
            record_measurement(&res.ablation[i], cur);
        if (rc == MOE_OK && rank == 0 && i == 0)
            rc = locality(&res, cfg.network ? &net : NULL, msg);
        if (rc == MOE_OK && i == 0)
            rc = write_dumps(layer, &cfg, rank, comm, msg);
    }

    /* Phase 6: the report and the JSON. */
    if (rc == MOE_OK && rank == 0) {
        if (cfg.json_path != NULL)
            rc = moe_report_json(cfg.json_path, &cfg, &res, msg, MSG_LEN);
        if (!cfg.quiet) {
            moe_report_text(stdout, &cfg, &res, moe_driver_stdout_is_terminal() && getenv("NO_COLOR") == NULL);
            moe_report_ablation(stdout, &cfg, &res);
        }
    }
    rc = moe_agree(comm, rc, msg, MSG_LEN);
out:
    moe_results_free(&res);
    moe_results_free(&more);
    free(seconds);
    moe_layer_destroy(layer);
    return finish(rank, rc, msg, EXIT_FAILED);
}
