/* --predict-only --ranks R: the layer's processes route the batch, rank 0 plans R ranks from it
 * (plan.h) and fills the results as a real R-rank --predict-only run fills them. */
#ifndef MOESIM_PLANNED_H
#define MOESIM_PLANNED_H

#include "moesim/config.h"
#include "moesim/layer.h"
#include "moesim/plan.h"
#include "moesim/stats.h"

#include <mpi.h>
#include <stddef.h>

/* The layer the processes create to route for a plan: cfg without what only the planned ranks
 * have (placement, replicas, per-rank rows, the two-level exchange), which the plan takes over. */
moe_config moe_planned_layer_config(const moe_config *cfg);

/* Collective: gather the routing of the layer (created from moe_planned_layer_config(cfg)) on
 * rank 0 and plan cfg->plan_ranks ranks into *plan there (zeroed elsewhere). Agreed. */
int moe_planned_build(moe_layer *layer, const moe_config *cfg, moe_plan *plan, MPI_Comm comm,
                      char *msg, size_t msglen);

/* Rank 0, after the prediction and the balance figures: what the plan decides in res (sized for
 * the planned ranks, moe_results_set_processes done): owners, the planned placement, the traffic
 * as its rows travel, the replication figures, the balance counts and rank overload, and the
 * largest planned rank's memory for a real run. */
int moe_planned_results(moe_results *res, const moe_config *cfg, const moe_plan *plan);

#endif
