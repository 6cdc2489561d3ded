/* Statistics: load balance, drops, waste, timing summaries. Plain arithmetic over arrays that the
 * driver has already reduced to rank 0; no MPI here. */
#ifndef MOESIM_STATS_H
#define MOESIM_STATS_H

#include <stdbool.h>
#include <stdint.h>

/* Phases of one layer step, in execution order. */
#define MOE_PHASES(X)                                                                     \
    X(MOE_PHASE_ROUTER, "router", "logits, softmax, top-k")                               \
    X(MOE_PHASE_COUNTS, "count_exchange", "count all-to-alls and capacity decision")      \
    X(MOE_PHASE_PACK, "pack", "copy accepted rows into the send buffer")                  \
    X(MOE_PHASE_DISPATCH, "dispatch", "MPI_Alltoallv of token rows to expert owners")     \
    X(MOE_PHASE_REGROUP, "regroup", "owner: rows to expert-major and back")               \
    X(MOE_PHASE_EXPERT, "expert", "expert FFNs (two sgemm + GELU)")                       \
    X(MOE_PHASE_COMBINE, "combine", "MPI_Alltoallv of expert outputs back to sources")    \
    X(MOE_PHASE_UNPACK, "unpack", "residual plus gate-weighted outputs")

enum moe_phase {
#define MOE_PHASE_ENUM(id, name, what) id,
    MOE_PHASES(MOE_PHASE_ENUM)
#undef MOE_PHASE_ENUM
        MOE_PHASE_COUNT
};

const char *moe_phase_name(int phase);
const char *moe_phase_what(int phase);

typedef struct moe_summary {
    double min, mean, max;
} moe_summary;

/* Median of n >= 1 values; sorts v in place. Even n: mean of the two middle values. */
double moe_median(double *v, int n);

/* min, mean and max of n >= 1 values. */
moe_summary moe_summarize(const double *v, int n);

/* Switch load-balancing loss (Fedus et al. 2021, eq. 4; top-k counting as Megatron-Core):
 * f_i = routed_i / (N k), P_i = psum_i / N, returns aux = E * sum_i f_i P_i (alpha = 1).
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
    /* measurement, after the run (valid when measured) */
    bool measured;
    int64_t dropped_assignments, dropped_tokens, empty_slots, dispatch_bytes;
    double flops_wasted;
    moe_summary dispatch, combine, expert, step;
} moe_ablation_row;

/* Everything the report shows; filled by the driver on rank 0. Arrays are owned by the struct. */
typedef struct moe_results {
    int ranks, experts, top_k;
    int64_t tokens, hidden, ffn;
    /* per expert (E) */
    int *owner;
    int64_t *routed, *accepted, *capacity; /* capacity: summed over groups; -1 when dropless */
    double *f, *P;
    double aux_loss;
    /* totals */
    int64_t assignments, dropped_assignments, dropped_tokens;
    int64_t slots, empty_slots;           /* slots = sum of capacity (accepted when dropless) */
    double flops_useful, flops_wasted;    /* flops_wasted: empty slots times FLOPs per row     */
    bool padded;                          /* empty slots were computed (--pad-to-capacity)     */
    /* traffic (R, R): [src][dst] bytes of token rows */
    int64_t *dispatch_bytes, *combine_bytes;
    /* timing: each rank's median over iterations, then min/mean/max over ranks */
    moe_summary phase[MOE_PHASE_COUNT];
    moe_summary step;
    double dispatch_bytes_per_second, combine_bytes_per_second;
    double output_checksum; /* sum over all of y, double accumulation: a quick fingerprint */
    /* workload */
    float *router_bias;     /* (E) bias added to the logits (skew, hot experts)        */
    double hot_bias, hot_share;
    /* capacity-factor ablation and prediction: one row per --capacity-factor value */
    moe_ablation_row *ablation;
    int n_ablation;
} moe_results;

/* Allocate the arrays for E experts, R ranks and n_cf ablation rows (zeroed). 0 or MOE_ENOMEM. */
int moe_results_init(moe_results *r, int E, int R, int n_cf);
/* Free the arrays; accepts a zeroed or NULL struct. */
void moe_results_free(moe_results *r);

/* Fill the derived totals from the per-expert arrays: dropped assignments, slots, empty slots and
 * the FLOPs (flops_per_row from moe_expert_flops_per_row). */
void moe_results_totals(moe_results *r, double flops_per_row);

#endif
