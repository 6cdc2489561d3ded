/* Dispatch, the pure half: which rows leave a rank, in what order, and how an owner regroups the
 * rows it receives by expert. The MPI half is in exchange.h.
 *
 * Send order: accepted assignments sorted by expert id, token order inside an expert. Experts sit in
 * contiguous blocks over ranks, so this is also destination-rank order, and each destination's
 * segment is already grouped by its local experts. Gates never travel: the source keeps them. */
#ifndef MOESIM_DISPATCH_H
#define MOESIM_DISPATCH_H

#include <stdint.h>

/* Fill slot (n_send) with t*k + c for every accepted assignment (flag[t*k+c] != 0) in send order,
 * and per_expert (E) with the number of accepted assignments to each expert. Returns n_send.
 * slot must hold n*k entries; cursor is scratch of E. */
int64_t moe_dispatch_plan(int64_t *slot, int64_t *per_expert, const int32_t *expert,
                          const uint8_t *flag, int64_t n, int k, int E, int64_t *cursor);

/* send[i] = h[slot[i] / k]: rows of d floats. send (n_send, d), h (n, d). */
void moe_pack_rows(float *send, const float *h, const int64_t *slot, int64_t n_send, int k,
                   int64_t d);

/* Owner side. recv holds, for each source s in order, counts[s][0..n_le) rows for its local experts
 * in order (counts is (n_src, n_le)). Copy them into x, expert-major: expert le's rows start at row
 * x_start[le], sources in order. Rows of x beyond an expert's received rows are left untouched (the
 * zero padding of --pad-to-capacity). placed is scratch of n_le. */
void moe_regroup_to_experts(float *x, const float *recv, const int64_t *counts, int n_src, int n_le,
                            const int64_t *x_start, int64_t d, int64_t *placed);

#endif
