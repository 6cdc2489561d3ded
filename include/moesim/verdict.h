/* The run's checks on itself, ended by one VALID or INVALID verdict (HPCG's and nccl-tests' habit).
 * Pure: no MPI, no printing. The inputs are counts the ranks made themselves (moe_selfcheck, the
 * ablation rows' predictions and measurements), summed on rank 0; docs/validation.md lists them.
 *
 *   drops     every capacity factor's (and every step's) exact prediction from the exchanged
 *             counts equals the dropped assignments the run measured;
 *   bytes     the dispatch rows (and so bytes) the senders' counts sent equal those the receivers'
 *             counts received;
 *   combine   the assignments whose output the sources added equal those the owners' experts
 *             served: the combine returned every served row;
 *   finite    no value of y is NaN or infinite. */
#ifndef MOESIM_VERDICT_H
#define MOESIM_VERDICT_H

#include <stdbool.h>

#include "moesim/stats.h"

enum { MOE_CHECK_DROPS, MOE_CHECK_BYTES, MOE_CHECK_COMBINE, MOE_CHECK_FINITE, MOE_CHECK_COUNT };

typedef struct moe_check {
    const char *name;  /* "drops", "bytes", "combine", "finite" (the JSON's verdict.checks[].name) */
    const char *what;  /* what it checks, one short phrase                                       */
    bool ran;          /* false when the run has nothing to check it on (--predict-only)        */
    bool passed;       /* meaningful when ran                                                    */
    char detail[160];  /* the numbers compared                                                   */
} moe_check;

/* Fills checks[MOE_CHECK_COUNT] from r; returns true (VALID) when every check that ran passed and
 * at least one ran. */
bool moe_verdict(const moe_results *r, moe_check checks[MOE_CHECK_COUNT]);

#endif
