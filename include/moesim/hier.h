/* Hierarchical (two-level) all-to-all of rows: tokens are gathered within each node to its
 * leader, leaders exchange across nodes, and each destination leader scatters inside its node (the
 * scheme of Tutel and DeepSpeed). The stages are those of moe_hier_schedule (projection.h), so the
 * traffic model and the real exchange agree. The result is bit for bit that of the flat
 * MPI_Alltoallv: every row is only copied, never combined.
 *
 * Nodes: node_of_rank (R entries) gives each rank's node, 0 .. n_nodes-1, numbered in order of each
 * node's lowest rank; a node's ranks need not be contiguous (node = rank % 2 is valid). A node's
 * leader is its lowest rank. Rows are one committed MPI datatype, so every count and displacement
 * is in rows and is an int (checked by moe_hier_plan).
 *
 * Stages, for the matrix C (R, R) [src][dst] in rows, at the leader of node a:
 *   0. MPI_Gatherv on the node communicator: every other rank s of a sends its whole send buffer
 *      (grouped by destination in rank order); the leader's own rows are read in place.
 *   1. pack into per-destination-node blocks, block (a -> b) = [s in a, rank order][t in b, rank
 *      order]; MPI_Alltoallv on the leaders' communicator. Rows staying in node a are not sent.
 *   2. unpack into per-destination-rank blocks, sources in global rank order (the flat receive
 *      layout); the leader's own block goes straight to its recv. MPI_Scatterv on the node
 *      communicator.
 * Nodes of one rank skip stages 0 and 2; one node skips stage 1. */
#ifndef MOESIM_HIER_H
#define MOESIM_HIER_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct moe_hier moe_hier;

/* Message statistics of the forward direction for this rank, per stage (0 gather, 1 leaders,
 * 2 scatter): messages it sends through MPI to another rank, and their bytes. Rows a rank keeps
 * (the leader's own rows in stages 0 and 2, a node's internal rows in stage 1) are not messages:
 * they are counted in copy_bytes with the leader's pack and unpack copies. */
typedef struct moe_hier_stats {
    int64_t messages[3];
    int64_t bytes[3];
    int64_t copy_bytes; /* bytes this rank moves with memcpy (pack and unpack; leaders only) */
} moe_hier_stats;

/* Collective over comm. Splits comm into per-node communicators (MPI_Comm_split by node, ranks in
 * comm order) and a leaders' communicator (node k's leader is its rank k; MPI_COMM_NULL on the
 * other ranks), both with MPI_ERRORS_RETURN. node_of_rank: (R) as above, else MOE_EINVAL; it must
 * be identical on every rank (compared with one MPI_Allreduce before the splits, MOE_EINVAL
 * everywhere if not). row: the MPI datatype of one row, committed by the caller and kept by it
 * until moe_hier_destroy; row_bytes its size (> 0). Local failures are agreed over comm before
 * the splits, so every rank returns the same code. *out is NULL on failure. */
int moe_hier_create(moe_hier **out, MPI_Comm comm, const int *node_of_rank, MPI_Datatype row,
                    int64_t row_bytes, char *msg, size_t msglen);

/* Not collective (every rank passes the same matrix). counts: (R, R) rows [src][dst], identical on
 * every rank. Sizes the staging buffers and precomputes every count, displacement and copy for both
 * directions: forward uses counts, reverse uses its transpose. Fails with MOE_EINVAL on a negative
 * count; MOE_ERANGE if a count or displacement of any rank's stage does not fit an int, checked for
 * every rank so that all ranks fail alike (beyond the flat exchange's limits, the rows a leader
 * gathers, scatters, sends to other nodes and receives from them must each fit an int); MOE_ENOMEM
 * (may differ between ranks: agree with moe_agree before exchanging). On failure the previous plan
 * stays in effect. Call it again when the counts change; it reallocates only if the staging
 * buffers or the copy lists must grow. */
int moe_hier_plan(moe_hier *h, const int64_t *counts, char *msg, size_t msglen);

/* Collective over the comm of moe_hier_create. The same plan from what each rank knows of the
 * matrix: send_rows (R), the rows it sends to each rank (its row of C), and recv_rows (R), the
 * rows it receives from each (its column). The node's rows and columns are gathered to its leader
 * (MPI_Gather on the node communicator), so a leader holds 2 x node_size x R counts and plans in
 * O(node_size x R), a non-leader 2 R and O(R): no rank needs the R x R matrix. Validation as
 * above, each rank checking what it holds (a leader its node's stages); the verdict is agreed
 * (moe_agree) before any plan changes, so every rank returns the same code and, on a refusal,
 * keeps its previous plan. MOE_ENOMEM is agreed too, but ranks that had the memory have planned. */
int moe_hier_plan_rows(moe_hier *h, const int64_t *send_rows, const int64_t *recv_rows, char *msg,
                       size_t msglen);

/* Collective. Same contract as MPI_Alltoallv with rows: send holds this rank's rows grouped by
 * destination in rank order (counts[me][0], counts[me][1], ...), recv receives rows grouped by
 * source in rank order (counts[0][me], counts[1][me], ...); they must not overlap. reverse = true
 * exchanges with the transposed counts (the combine direction: send is what was received). Requires
 * a successful moe_hier_plan (MOE_EINVAL otherwise). Nothing allocated here. */
int moe_hier_exchange(moe_hier *h, const void *send, void *recv, bool reverse, char *msg,
                      size_t msglen);

/* Message statistics of the last plan, for reports: for this rank, in forward direction, how many
 * messages it sends in each stage and how many bytes (0 where none). Zeros before the first
 * plan. */
void moe_hier_stats_get(const moe_hier *h, moe_hier_stats *out);

/* Accepts NULL; frees the communicators and buffers (not the row datatype). */
void moe_hier_destroy(moe_hier *h);

/* Bytes of staging, copy plans and count blocks held for the current plan (0 for NULL). Not
 * collective. */
size_t moe_hier_staging_bytes(const moe_hier *h);

#endif
