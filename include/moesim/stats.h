/* Statistics: load balance, drops, waste, timing summaries. Plain arithmetic over arrays that the
 * driver has already reduced to rank 0; no MPI here. */
#ifndef MOESIM_STATS_H
#define MOESIM_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moesim/loss.h"
#include "moesim/topology.h"
#include "moesim/wire.h"

/* Phases of one layer step, in execution order: X(id, name, what, part of the step). Each exchange
 * starts with a barrier, timed as its own *_wait phase: the time this rank waits for the slowest
 * one (load imbalance), which a collective would otherwise hide inside the exchange. The two raw
 * baselines run right after the real exchange, after an untimed barrier, on the same buffers; they
 * are timed but not part of the step. The last seven (part 2) are the backward of --mode fwd-bwd
 * and train (docs/training.md): part of the step when run, NaN and left out of every report
 * otherwise. */
#define MOE_PHASES(X)                                                                         \
    X(MOE_PHASE_ROUTER, "router", "logits, scores, top-k", 1)                                 \
    X(MOE_PHASE_COUNT_WAIT, "count_wait", "barrier: waiting for the slowest router", 1)       \
    X(MOE_PHASE_COUNTS, "count_exchange", "count all-to-alls and capacity decision", 1)       \
    X(MOE_PHASE_PACK, "pack", "copy accepted rows into the send buffer", 1)                   \
    X(MOE_PHASE_DISPATCH_WAIT, "dispatch_wait", "barrier: waiting for the slowest rank", 1)   \
    X(MOE_PHASE_DISPATCH, "dispatch", "token rows to expert owners", 1)                       \
    X(MOE_PHASE_DISPATCH_RAW, "dispatch_raw", "baseline: raw MPI_Alltoallv, same bytes", 0)   \
    X(MOE_PHASE_REGROUP, "regroup", "owner: rows into the experts' blocks and back", 1)                \
    X(MOE_PHASE_EXPERT, "expert", "expert FFNs (two sgemm + GELU)", 1)                        \
    X(MOE_PHASE_COMBINE_WAIT, "combine_wait", "barrier: waiting for the slowest expert rank", 1) \
    X(MOE_PHASE_COMBINE, "combine", "expert outputs back to sources", 1)                      \
    X(MOE_PHASE_COMBINE_RAW, "combine_raw", "baseline: raw MPI_Alltoallv, same bytes", 0)     \
    X(MOE_PHASE_UNPACK, "unpack", "residual plus gate-weighted outputs", 1)                   \
    X(MOE_PHASE_SHARED, "shared", "always-on shared experts, on each token's rank", 1)    \
    X(MOE_PHASE_COMBINE_BWD_WAIT, "combine_bwd_wait", "barrier: waiting for the slowest rank", 2) \
    X(MOE_PHASE_COMBINE_BWD, "combine_bwd", "dL/dy: gate gradients, rows to the experts", 2)   \
    X(MOE_PHASE_EXPERT_BWD, "expert_bwd", "expert backward (four sgemm + GELU')", 2)          \
    X(MOE_PHASE_DISPATCH_BWD_WAIT, "dispatch_bwd_wait", "barrier: waiting for the slowest expert rank", 2) \
    X(MOE_PHASE_DISPATCH_BWD, "dispatch_bwd", "input gradients back to the sources, summed", 2) \
    X(MOE_PHASE_ROUTER_BWD, "router_bwd", "router gradient through gates, aux and z-loss", 2)   \
    X(MOE_PHASE_ALLREDUCE, "allreduce", "loss sums, then the router gradient over ranks", 2)

enum moe_phase {
#define MOE_PHASE_ENUM(id, name, what, in_step) id,
    MOE_PHASES(MOE_PHASE_ENUM)
#undef MOE_PHASE_ENUM
        MOE_PHASE_COUNT
};

const char *moe_phase_name(int phase);
const char *moe_phase_what(int phase);
/* Whether a phase counts towards the step time (the raw baselines do not). */
int moe_phase_in_step(int phase);
/* A backward phase (part 2): reported only where it ran. */
bool moe_phase_is_backward(int phase);

typedef struct moe_summary {
    double min, mean, max;
} moe_summary;

/* Median of n >= 1 values; sorts v in place. Even n: mean of the two middle values. */
double moe_median(double *v, int n);

/* min, mean and max of n >= 1 values. */
moe_summary moe_summarize(const double *v, int n);

/* Switch load-balancing loss (Fedus et al. 2021, eq. 4; top-k counting as Megatron-Core):
 * f_i = routed_i / sum_j routed_j (= N k under token choice; the pairs the experts took under
 * expert choice; N k when nothing was routed), P_i = psum_i / N, returns aux = E * sum_i f_i P_i
 * (alpha = 1).
 * A perfectly uniform router gives 1. f and P are (E). */
double moe_load_balance(double *f, double *P, const int64_t *routed, const double *psum, int E,
                        int64_t N, int k);

/* One capacity factor of the ablation: prediction first, then what the run measured. */
typedef struct moe_ablation_row {
    double capacity_factor;
    int64_t capacity;              /* slots per expert, summed over groups; -1 when dropless */
    /* prediction, before anything moves */
    double expected_dropped, expected_empty;                 /* closed form, batch mean P  */
    double expected_dropped_uniform, expected_empty_uniform; /* closed form, uniform router */
    int64_t exact_dropped, exact_empty;                      /* from the exchanged counts  */
    int64_t max_expert_load;  /* largest load of one expert in one group, from the counts */
    double cf_needed;         /* smallest cf that drops nothing (moe_capacity_needed); the
                               * same in every row: routing does not depend on cf */
    /* measurement, after the run (valid when measured) */
    bool measured;
    int64_t dropped_assignments, dropped_tokens, empty_slots, dispatch_bytes;
    int64_t rerouted;         /* of dropped_assignments, served by another expert (reroute) */
    double flops_wasted;
    moe_summary dispatch, combine, expert, step;
} moe_ablation_row;

/* The smallest and largest single-iteration time of one phase over every rank and iteration
 * (beside moe_summary's figures over the ranks' medians). */
typedef struct moe_spread {
    double iter_min, iter_max;
} moe_spread;

/* (iter_max - iter_min) / iter_min: how far one phase's iterations spread, noise between
 * iterations and differences between ranks together. NAN when iter_min <= 0 (below the timer's
 * resolution, or nothing was timed) or either is not finite. */
double moe_spread_ratio(moe_spread s);

/* One all-to-all read as nccl-tests reads it (src/alltoall.cu AlltoAllGetBw, doc/PERFORMANCE.md):
 * algbw = bytes one rank sends / time, busbw = algbw (R - 1) / R. */
typedef struct moe_a2a_bandwidth {
    double algbw, busbw;    /* bytes per second                                     */
    int64_t send_bytes;     /* the largest row sum: what the busiest sender sends     */
    int64_t off_rank_bytes; /* source != destination (off the diagonal)              */
    int64_t off_node_bytes; /* placement[source].node != placement[destination].node */
} moe_a2a_bandwidth;

/* The figures of one exchange from its byte matrix bytes (R, R), [src][dst], where each rank ran
 * (placement, R) and the slowest rank's time in seconds. algbw and busbw are 0 when seconds is not
 * positive; busbw is 0 at R = 1 (nothing crosses a link). */
moe_a2a_bandwidth moe_a2a_bandwidth_of(const int64_t *bytes, const moe_placement *placement,
                                       int R, double seconds);
/* The same from the nonzero blocks of the matrix (normalized, blocks.h). */
moe_a2a_bandwidth moe_a2a_bandwidth_blocks(const moe_blocks *bytes,
                                           const moe_placement *placement, int R, double seconds);

/* What the run ran on, probed by the driver on rank 0 (driver.h). */
typedef struct moe_environment {
    int64_t cores;               /* online CPUs of rank 0's node; -1 unknown            */
    double load_start, load_end; /* one-minute load average at start and end; NAN unknown */
    char utc[32];                /* the run's start, ISO 8601 UTC: 2026-12-01T20:15:03Z   */
    char mpi_library[256];       /* first line of MPI_Get_library_version, trimmed        */
    char openblas[256];          /* openblas_get_config()                                 */
    const char *gelu_kernel;     /* moe_expert_kernel_name of the GELU kernel in force    */
    double wall_seconds;         /* rank 0: MPI_Init returned .. the outputs are written   */
    double step_seconds;         /* rank 0: inside moe_layer_step, warm-up and every cf    */
} moe_environment;

/* What the ranks saw of their own exchange, summed over ranks and over the capacity factors run:
 * the inputs of the run's self-checks (verdict.h). Each pair is counted by different ranks from
 * different data, so a broken count exchange, a lost row or a corrupted output shows. */
typedef struct moe_selfcheck {
    bool measured;
    int64_t rows_sent;     /* dispatch rows by the senders' send counts                     */
    int64_t rows_received; /* dispatch rows by the receivers' receive counts                */
    int64_t returned;      /* assignments whose expert output the sources' unpack added       */
    int64_t served;        /* assignments the owners' experts accepted and computed          */
    int64_t y_values;      /* values of y, n d per rank                                     */
    int64_t y_nonfinite;   /* of them NaN or infinite                                       */
    /* --steps: the steps after the first, whose exact prediction (from the exchanged counts)
     * was compared with the drops they measured, and how many of them differed */
    int64_t step_predictions, step_predictions_wrong;
} moe_selfcheck;

/* Everything the report shows; filled by the driver on rank 0. Arrays are owned by the struct. */
/* What the backward of the last step found (--mode fwd-bwd, train), the same on every rank:
 * the weighted losses (task: the MSE to the teacher; aux: alpha E sum f_i P_i; z: beta mean
 * lse^2) and the 2-norms of the gradients (the router's after the all-reduce, the experts' over
 * every rank, the layer input's dL/dh over the batch). */
typedef struct moe_training {
    bool ran;
    double task_loss, aux_loss, z_loss;
    double grad_norm_router, grad_norm_experts, grad_norm_input;
    int64_t optimizer_steps;
} moe_training;

typedef struct moe_results {
    int ranks, experts, top_k;
    int64_t tokens, hidden, ffn;
    /* per expert (E) */
    int *owner;
    int64_t *routed, *accepted, *capacity; /* capacity: summed over groups; -1 when dropless */
    int64_t *rerouted_in;                  /* rows served at e after a reroute (accepted has them) */
    int64_t rerouted;                      /* all of them                                   */
    int reroute_rounds;                    /* rounds after round 0 (most over the groups)    */
    /* routing: slots per token (k, or E under expert choice); histogram of served slots per
     * token (E + 1 entries, the first slots + 1 used); how far tokens reach (R + 1 entries each:
     * tokens whose routed experts sit on exactly j ranks / nodes), with and without the group
     * limit (the latter only when group_limited) */
    int slots_per_token;
    int64_t *experts_per_token;
    int64_t *reach_ranks, *reach_nodes, *reach_ranks_unlimited, *reach_nodes_unlimited;
    bool group_limited;
    int shared_experts;                    /* S always-on experts of inner size shared_ffn    */
    int64_t shared_ffn;
    double flops_shared;                   /* their FLOPs over the batch                      */
    double *f, *P;
    double aux_loss;
    moe_balance balance;                   /* z-loss, importance CV^2, count figures, overload */
    /* totals */
    int64_t assignments, dropped_assignments, dropped_tokens;
    int64_t slots, empty_slots;           /* slots = sum of capacity (accepted when dropless) */
    int64_t max_expert_load;              /* largest load of one expert in one group          */
    double cf_needed;                     /* the cf a static-shape system needs to drop nothing */
    double flops_useful, flops_wasted;    /* flops_wasted: empty slots times FLOPs per row     */
    bool padded;                          /* empty slots were computed (--pad-to-capacity)     */
    /* traffic [src][dst] as nonzero blocks (blocks.h; a dense R x R matrix would not fit at large
     * R): rows dispatched (diagonal included), their bytes, and the combine's bytes (the
     * transpose, in the combine's row format) */
    moe_blocks rows, dispatch_bytes, combine_bytes;
    bool matrix_full;                     /* the JSON holds them as dense R x R matrices       */
    bool per_rank;                        /* --dispatch per-rank: a row per (token, rank)        */
    /* --dispatch per-rank: the rows of the two-level exchange's leaders' stage, one per (token,
     * destination node) (nodex.c), and their size; NULL otherwise (owned, freed with the rest) */
    int n_nodes;
    int64_t *node_rows;                   /* (R, n_nodes) [src][node]                            */
    int64_t node_row_bytes;
    /* placement (--placement, --redundant-experts): P physical slots, each a logical expert on a
     * rank (allocated when filled; freed by moe_results_free) */
    int n_slots;
    int32_t *slot_expert, *slot_rank;
    double overload_before;               /* contiguous experts, no replicas: busiest / mean rows */
    int64_t extra_weight_bytes;           /* the replicas' weights, (P - E) 2 f d floats         */
    int64_t metadata_bytes;               /* of the dispatch bytes, the per-rank rows' metadata  */
    int64_t dedup_saving;                 /* bytes per-expert rows would have moved, minus these */
    moe_wire wire, wire_combine;          /* the rows' formats, dispatch and combine (wire.h)   */
    int64_t row_bytes, row_bytes_combine; /* bytes of one row as it travels, each way            */
    bool wire_measured;                   /* y_error below was measured (a format is not fp32) */
    double y_error_max_rel, y_error_rms_rel; /* against an fp32 exchange of the same batch   */
    /* timing: each rank's median over iterations, then min/mean/max over ranks */
    moe_summary phase[MOE_PHASE_COUNT];
    moe_summary step;
    moe_spread phase_iter[MOE_PHASE_COUNT]; /* single iterations: min and max over ranks too */
    moe_spread step_iter;                   /* the same for each iteration's step sum        */
    double dispatch_bytes_per_second, combine_bytes_per_second;
    moe_a2a_bandwidth dispatch_a2a, combine_a2a; /* nccl-tests style, slowest rank's time   */
    moe_environment env;
    double output_checksum; /* sum over all of y, double accumulation: a quick fingerprint */
    /* workload */
    float *router_bias;     /* (E) bias added to the logits (skew, hot experts)        */
    double hot_bias, hot_share;
    /* topology: where each rank ran, traffic by locality class, projection */
    moe_placement *placement;             /* (R) */
    moe_class_traffic by_class[MOE_LOC_COUNT];        /* dispatch + combine, flat exchange  */
    moe_class_traffic by_class_hier[MOE_LOC_COUNT];   /* the same over the three two-level stages */
    moe_class_traffic *by_class_per_rank;             /* (R, MOE_LOC_COUNT), flat, by source rank */
    bool hierarchical;                    /* which exchange ran                               */
    const char *regroup;                  /* how rows reached the experts' blocks (--regroup):
                                           * alltoallw, slots, alltoallw-slots, copy, or fan-out
                                           * (per-rank rows) */
    double regroup_probe[2];              /* auto's probe of the combine, slowest rank's best
                                           * (s): alltoallw, alltoallw-slots; NaN or 0: none */
    bool projected;                       /* --network given                                  */
    char network[128];
    double proj_flat_dispatch, proj_flat_combine, proj_hier_dispatch, proj_hier_combine;
    /* --ranks: the R ranks above are planned, not launched; `processes` ran (they are R
     * otherwise), where proc_placement says (NULL: placement); the memory arrays are theirs */
    bool planned;
    int processes;
    moe_placement *proc_placement;
    /* memory, per process (processes): the estimate made before allocating, the peak RSS (getrusage), the RSS
     * before moesim allocated anything (MPI and libraries), and the node's budget */
    int64_t *mem_estimate, *mem_peak_rss, *mem_baseline_rss, *mem_budget;
    bool mem_budget_given;                /* --max-memory, else MemAvailable */
    int64_t mem_full_run;                 /* --predict-only: the largest rank's estimate for a real
                                           * run (exchange at a balanced load); -1 otherwise */
    /* capacity-factor ablation and prediction: one row per --capacity-factor value */
    moe_ablation_row *ablation;
    int n_ablation;
    void *steps; /* --steps: the per-step series (report.c), NULL until the first is added */
    moe_training training; /* --mode fwd-bwd, train: the last step's losses and gradients */
    moe_selfcheck check;   /* the run's self-checks' inputs (verdict.h) */
    /* per rank, from the run (NULL under --predict-only): tokens it routed, rows its experts
     * computed (padding included), and its median seconds per phase, (R, MOE_PHASE_COUNT + 1)
     * with the step last */
    int64_t *rank_tokens, *rank_rows;
    double *rank_median;
} moe_results;

/* Adds b's self-check counts into a's (another capacity factor's run). */
void moe_selfcheck_add(moe_selfcheck *a, const moe_selfcheck *b);

/* Allocate the arrays for E experts, R ranks and n_cf ablation rows (zeroed). 0 or MOE_ENOMEM. */
int moe_results_init(moe_results *r, int E, int R, int n_cf);
/* --ranks: the R ranks are planned by P processes: the memory arrays become P entries (zeroed)
 * and proc_placement P placements (zeroed). 0 or MOE_ENOMEM. */
int moe_results_set_processes(moe_results *r, int P);

/* The rows (r->rows, normalized blocks) as bytes: dispatch rows of r->row_bytes, the combine the
 * transpose in rows of r->row_bytes_combine; metadata_bytes (the dispatch rows' bytes beyond
 * payload_bytes each) and dedup_saving (against one payload row per served assignment each way).
 * MOE_OK or MOE_ENOMEM. */
int moe_results_traffic(moe_results *r, int64_t served, int64_t payload_bytes);

/* Free the arrays; accepts a zeroed or NULL struct. */
void moe_results_free(moe_results *r);

/* Warnings about how far the run's timings can be trusted, one line each ending in '\n' and without
 * a prefix, into buf (empty if none; truncated to len): the load average at the start or the end
 * above the online cores (other work shared the machine), and a spread (moe_spread_ratio) of the
 * dispatch or combine iterations above MOE_SPREAD_WARN. Returns the number of warnings. */
#define MOE_SPREAD_WARN 0.25
int moe_run_warnings(char *buf, size_t len, const moe_results *r);

/* Fill the derived totals from the per-expert arrays: dropped assignments (routed - (accepted -
 * rerouted_in) per expert: a rerouted row counts where it was routed), slots, empty slots and
 * the FLOPs (flops_per_row from moe_expert_flops_per_row). */
void moe_results_totals(moe_results *r, double flops_per_row);

#endif
