/* Planning ranks that were not launched (--predict-only --ranks R): from the whole batch's routing,
 * what R ranks would decide, send and compute. Pure and MPI-free: the driver gathers the routing on
 * rank 0 and calls it there. The decision is the one the layer's capacity protocol makes
 * (decide.c): with global scope one group, the whole batch, which the protocol decides the same
 * at any rank count; with local scope one group per rank, decided by the same serial functions the
 * layer runs on each source (overflow.h, capacity.h). Everything else follows the layer: tokens
 * in contiguous blocks (moe_partition), experts where moe_expert_map_build puts them for R ranks,
 * an assignment to a replicated expert on replica t mod m, rows per (token, expert) or, per rank,
 * one per (token, destination rank). */
#ifndef MOESIM_PLAN_H
#define MOESIM_PLAN_H

#include "moesim/blocks.h"
#include "moesim/capacity.h"
#include "moesim/placement.h"
#include "moesim/router.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct moe_plan_spec {
    int R;             /* ranks planned                                          */
    int64_t N;         /* tokens of the batch                                    */
    int E, k;          /* experts, top-k                                          */
    moe_routing routing;
    moe_scope scope;
    moe_policy policy;
    double cf;         /* capacity factor; 0 = dropless                           */
    int64_t min_capacity;
    uint64_t seed;     /* the random policy's keys                                */
    bool pad;          /* --pad-to-capacity: ranks compute every slot             */
    bool per_rank;     /* --dispatch per-rank: one row per (token, rank)          */
    moe_place_kind placement;
    int redundant;     /* replicas (eplb)                                         */
    const double *loads; /* (E) what EPLB plans from; NULL: this batch's routed counts */
    int ranks_per_node;  /* nodes of this many ranks (0: one node), for the per-node rows */
} moe_plan_spec;

typedef struct moe_plan {
    int R, E, n_groups;
    int64_t *group_cap;    /* (n_groups) slots per expert in each group; MOE_CAPACITY_UNLIMITED */
    int64_t *loads;        /* (n_groups, E) routed before capacity in each capacity group: by
                            * source rank in local scope, the batch's in global (expert choice:
                            * the pairs the experts took), what the prediction counts          */
    int64_t *routed;       /* (E) the same summed over ranks                                    */
    int64_t *accepted;     /* (E) served by each expert (rerouted rows where they are served)   */
    int64_t *rerouted_in;  /* (E) of them, rows that reached e by a reroute                     */
    moe_blocks rows;       /* rows dispatched [src][dst], diagonal included, nonzero blocks     */
    int n_nodes;           /* ceil(R / ranks_per_node), or 1                                     */
    int *node_of_rank;     /* (R)                                                                */
    int64_t *node_rows;    /* (R, n_nodes) per_rank: distinct (token, node) of each source's
                            * served slots, the two-level exchange's rows (nodex.c); else NULL */
    double *rank_rows;     /* (R) rows each rank's experts compute (padding included)          */
    double *importance;    /* (E) expert choice: the gates of the pairs each expert took (the
                            * importance; token choice has it before the decision, so NULL)  */
    double overload_before; /* contiguous experts, no replicas: busiest rank's routed / mean   */
    int64_t served;        /* served assignments                                                */
    int reroute_rounds;    /* rounds after round 0, most over the groups                        */
    moe_expert_map map;    /* where the experts live on the R ranks                             */
} moe_plan;

/* Plan spec->R ranks. expert (N * A, A = k; token-major) are the router's choices (unused under
 * expert choice, where A = E); gate (N * k) their gates (used by the probs, choice and random
 * keys; under expert choice gate is (N * E), the gates of every pair); sel (N * E) the scores experts are chosen by (reroute's next-best expert, expert choice's
 * ranking; NULL otherwise). Needs 1 <= R <= E and N >= 0 (ranks may hold no token). MOE_OK, MOE_EUSAGE (a placement the rank
 * count does not allow; message set) or MOE_ENOMEM; on failure *out is zeroed. */
int moe_plan_build(moe_plan *out, const moe_plan_spec *spec, const int32_t *expert,
                   const float *gate, const float *sel, char *msg, size_t msglen);

/* Free the arrays and zero *p; a zeroed plan is fine. */
void moe_plan_free(moe_plan *p);

#endif
