/* One expert-parallel MoE layer on one rank: the buffers, one forward step, and the reductions of
 * its statistics to rank 0. Driver layer: calls MPI through exchange.h and the pure modules for
 * everything else. Every function here is collective over the layer's communicator unless it says
 * otherwise, and returns the same code on every rank (errors are agreed with moe_agree). */
#ifndef MOESIM_LAYER_H
#define MOESIM_LAYER_H

#include "moesim/config.h"
#include "moesim/exchange.h"
#include "moesim/loss.h"
#include "moesim/memory.h"
#include "moesim/router.h"
#include "moesim/stats.h"

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct moe_layer moe_layer;

/* Load or generate tokens and router, generate this rank's experts, route once to size the
 * exchange buffers, check that they fit in memory, and allocate them. cfg must be resolved. */
int moe_layer_create(moe_layer **out, const moe_config *cfg, MPI_Comm comm, char *msg,
                     size_t msglen);
/* Switch to capacity factor cf (routing unchanged): decide acceptance again from the exchanged
 * counts and resize the exchange and expert buffers. For the --capacity-factor list ablation. */
int moe_layer_set_capacity_factor(moe_layer *layer, double cf, char *msg, size_t msglen);

/* Collective. --steps: make `step` (0-based) the batch: tokens step·N + [0, N) of the generator
 * (or of --tokens-file / --logits-file), jittered and noised as tokens of those ids; then route,
 * decide and size the buffers again at the current capacity factor, as
 * moe_layer_set_capacity_factor does. Placement, weights and the workload's bias stay. */
int moe_layer_set_step(moe_layer *layer, int step, char *msg, size_t msglen);

/* Collective. --expert-bias: update the selection bias from this step's global loads (one
 * MPI_Allreduce of the E routed counts; moe_expert_bias_update). The next routing uses it. */
int moe_layer_update_expert_bias(moe_layer *layer, char *msg, size_t msglen);

/* The selection bias (E floats) in use, or NULL without one. */
const float *moe_layer_selection_bias(const moe_layer *layer);

/* Router statistics of the routing, before anything moves. On rank 0 (ignored elsewhere): P (E),
 * the mean gate probability of each expert over the batch, and loads (R, E), loads[s][e] the
 * assignments rank s routes to expert e (the counts the count exchange carries). */
int moe_layer_router_stats(moe_layer *layer, double *P, int64_t *loads, char *msg, size_t msglen);

/* The balance figures of the routing (loss.h) on rank 0 (b ignored elsewhere): z-loss, importance
 * CV^2, the count figures over the routed counts, and the rank overload of the rows each rank
 * computes under the current capacity factor. Sums are exact, so the figures do not depend on R
 * (but rank_overload, which is about ranks). */
int moe_layer_balance(moe_layer *layer, moe_balance *b, char *msg, size_t msglen);

/* The workload's router bias (E values, the same on every rank), and for --hot-experts the extra
 * bias found and the share of tokens it achieved. Not collective. */
void moe_layer_workload(const moe_layer *layer, const float **bias, double *hot_bias,
                        double *hot_share);

/* Gather the router logits (bias included) (N, E) on rank 0 into *z (malloc'd; NULL elsewhere). */
int moe_layer_gather_logits(moe_layer *layer, float **z, char *msg, size_t msglen);

/* Free everything; accepts NULL. Not collective. */
void moe_layer_destroy(moe_layer *layer);

/* One forward step; if seconds != NULL it receives the time of each phase on this rank
 * (MOE_PHASE_COUNT values). Nothing is allocated. */
int moe_layer_step(moe_layer *layer, double *seconds, char *msg, size_t msglen);

/* --wire, --wire-combine: run the last step's routing once more with fp32 rows (flat exchange,
 * untimed) and compare with the y of the last step: *max_rel = max |y - y32| / max |y32| and
 * *rms_rel = sqrt(sum (y - y32)^2 / sum y32^2) over the batch, the same on every rank. y is kept. */
int moe_layer_wire_error(moe_layer *layer, double *max_rel, double *rms_rel, char *msg,
                         size_t msglen);

/* The traffic the current decision makes, on rank 0 (res ignored elsewhere): traffic.rows and
 * the byte matrices as the rows travel, metadata and dedup saving. For --predict-only, where
 * nothing moves; moe_layer_results fills the same after a run. */
int moe_layer_traffic(moe_layer *layer, moe_results *res, char *msg, size_t msglen);

/* Reduce the statistics of the last step to rank 0 into res (which rank 0 must have initialised with
 * moe_results_init; other ranks may pass NULL). phase_seconds is (iters, MOE_PHASE_COUNT) of this
 * rank. */
int moe_layer_results(moe_layer *layer, moe_results *res, const double *phase_seconds, int iters,
                      char *msg, size_t msglen);

/* Gather the routing of the last step on rank 0 into *records (malloc'd, caller frees; NULL
 * elsewhere) and their number into *count: token-major, N*k records under token choice (one per
 * choice), one per chosen (token, expert) pair under expert choice. */
int moe_layer_gather_routing(moe_layer *layer, moe_route_record **records, int64_t *count,
                             char *msg, size_t msglen);

/* What --predict-only --ranks needs to plan other rank counts (plan.h), gathered on rank 0
 * (NULL elsewhere; caller frees): under token choice the router's choices *expert (N, k) and,
 * for the probs, choice and random policies, their gates *gate (N, k); under expert choice every
 * pair's gate *gate (N, E); for reroute and expert choice the selection scores *sel (N, E). What a configuration does not use stays NULL. */
int moe_layer_gather_plan(moe_layer *layer, int32_t **expert, float **gate, float **sel,
                          char *msg, size_t msglen);

/* Whether the next steps run the raw MPI_Alltoallv baselines after each exchange (timed as
 * dispatch_raw and combine_raw; NaN in those phases otherwise). Not collective, but every rank
 * must set the same. Off until set. */
void moe_layer_set_raw_baseline(moe_layer *layer, bool run);

/* Gather y (N, d) on rank 0 into *y (malloc'd, caller frees; NULL elsewhere). */
int moe_layer_gather_output(moe_layer *layer, float **y, char *msg, size_t msglen);

/* What this rank moves and computes in one step, as planned at creation. Pointers stay valid until
 * moe_layer_destroy. Not collective. Used by bench/ to time floors of the same shapes. */
typedef struct moe_layer_shape {
    int64_t tokens;          /* this rank's tokens                              */
    int64_t first_token;     /* global id of the first one                      */
    int64_t n_send, n_recv;  /* rows leaving / arriving in dispatch             */
    int64_t n_local_experts, first_expert;
    int64_t hidden, ffn;
    const int64_t *send_rows, *recv_rows; /* (R) dispatch rows to / from each rank */
    const int64_t *expert_rows;           /* (n_local_experts) rows each expert computes */
    int64_t combine_left; /* of the n_send rows back, those the combine leaves in the experts'
                           * blocks for the unpack to read there (a rank's own, alltoallw) */
} moe_layer_shape;
void moe_layer_get_shape(const moe_layer *layer, moe_layer_shape *out);

/* Where every rank runs (R placements, the same on every rank). Not collective. */
const moe_placement *moe_layer_placement(const moe_layer *layer);

/* Bytes this rank holds for the layer (buffers and weights), for reporting. Not collective. */
int64_t moe_layer_bytes(const moe_layer *layer);

/* This rank's memory estimate (exact once the exchange is sized) and its node's budget in bytes
 * (-1 when unknown). Not collective. */
void moe_layer_memory(const moe_layer *layer, moe_mem_estimate *estimate, int64_t *budget);

/* How rows reach the experts' blocks and leave them (--regroup): under auto, what the probe of
 * the two combines chose at the first capacity factor, probe (if not NULL) receiving their
 * slowest-rank best times in seconds (alltoallw, alltoallw-slots; NaN when no probe ran). The
 * same on every rank. Not collective. */
moe_regroup_kind moe_layer_regroup(const moe_layer *layer, double probe[2]);

/* Where the experts live: the physical slots (placement.h), the same on every rank. Not
 * collective. */
const moe_expert_map *moe_layer_expert_map(const moe_layer *layer);

/* The step's exchange alone, on the layer's own buffers and the rows of its last step: the
 * dispatch, or the combine when reverse (the very calls moe_layer_step times as `dispatch` and
 * `combine`, without their barriers). For benchmarks: it overwrites what the step's next phase
 * reads, so run a step again before reading y. Collective. */
int moe_layer_exchange(moe_layer *layer, bool reverse, char *msg, size_t msglen);

/* --mode train: one optimizer step (--optimizer, --lr) with the gradients of the last step's
 * backward, on the rank's experts and on its copy of the router (the all-reduced gradient, so
 * every copy stays the same). Nothing for other modes. Not collective. */
int moe_layer_train_update(moe_layer *layer, char *msg, size_t msglen);
/* What the last backward found (stats.h; ran false without one). Not collective. */
void moe_layer_training(const moe_layer *layer, moe_training *out);
/* Every rank's token count (R values) when the blocks are uneven (--tokens-per-rank,
 * --workload source-ragged), NULL for moe_partition's even blocks. Not collective. */
const int64_t *moe_layer_token_blocks(const moe_layer *layer);
/* The configuration the layer runs (resolved). Not collective. */
const moe_config *moe_layer_config(const moe_layer *layer);

#endif
