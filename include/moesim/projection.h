/* Projection of exchange times onto a cluster with an alpha-beta model. Pure.
 *
 * The network gives, for each locality class c, a latency alpha_c (seconds) and a bandwidth beta_c
 * (bytes per second). A message of b bytes in class c costs alpha_c + b / beta_c. Each rank sends
 * its messages one after another, and receives one after another; send and receive overlap. A
 * stage of an exchange ends when its slowest rank ends:
 *     T_stage = max over ranks r of max(sum of its sends, sum of its receives).
 * Flat all-to-all: one stage, the byte matrix itself. Hierarchical: three stages (gather to the node
 * leader, leaders exchange, scatter from the leader), each its own byte matrix
 * (moe_hier_schedule); their times add. Self-messages (src == dst) are counted with the same_rank
 * class (a memory copy). */
#ifndef MOESIM_PROJECTION_H
#define MOESIM_PROJECTION_H

#include "moesim/topology.h"

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct moe_network {
    char name[128];
    double latency[MOE_LOC_COUNT];   /* seconds */
    double bandwidth[MOE_LOC_COUNT]; /* bytes per second, > 0 */
} moe_network;

/* Largest network file moe_network_load reads; a bigger one is refused unread. */
#define MOE_NETWORK_MAX_BYTES (1 << 20)

/* Parse the text of a network file, `len` bytes (not NUL-terminated; a NUL byte ends its line):
 * lines "key = value", '#' comments, blank lines. Keys: name (text; default: `name`), and for each
 * class C in same_rank, same_numa, same_package, same_node, other_node: C.latency_us (microseconds,
 * >= 0) and C.bandwidth_GBps (10^9 bytes per second, > 0). Every class must be given. Unknown keys,
 * missing classes, bad numbers: MOE_EUSAGE with the line number; messages name the file as
 * `name` ("--network 'NAME' line 3: ..."). Pure: exposed for unit tests and fuzzing. */
int moe_network_parse(const char *text, size_t len, const char *name, moe_network *out, char *msg,
                      size_t msglen);

/* Read the network file at path and parse it as moe_network_parse, naming it by its path. A file
 * that cannot be opened or read, or is over MOE_NETWORK_MAX_BYTES: MOE_EUSAGE. */
int moe_network_load(const char *path, moe_network *out, char *msg, size_t msglen);

/* Seconds for one stage: bytes is (R, R) [src][dst]. */
double moe_project_stage(const int64_t *bytes, const moe_placement *placement, int R,
                         const moe_network *net);
/* The same from the matrix's nonzero blocks (blocks.h); NAN when out of memory. */
double moe_project_stage_blocks(const moe_blocks *bytes, const moe_placement *placement, int R,
                                const moe_network *net);

/* The three byte matrices of the two-level exchange of `bytes` (each (R, R), written): stage 0,
 * every rank sends all its rows (for every destination) to its node's leader; stage 1, each leader
 * sends to each other node's leader everything its node's ranks send to that node's ranks; stage 2,
 * each leader sends each rank of its node everything addressed to it. A node's leader is its lowest
 * rank. Rows that stay on one rank (leader to itself) appear on the diagonal. */
void moe_hier_schedule(int64_t *stage0, int64_t *stage1, int64_t *stage2, const int64_t *bytes,
                       const moe_placement *placement, int R);
/* The same on nonzero blocks: stage[0..2] replaced (normalized). MOE_OK or MOE_ENOMEM. */
int moe_hier_schedule_blocks(moe_blocks *stage, const moe_blocks *bytes,
                             const moe_placement *placement, int R);

/* The same stages for per-rank rows under the two-level exchange (nodex.c), which cross the
 * leaders' stage once per (token, destination node): node_rows (R, n_nodes) [src][node], rows
 * (R, R) the per-rank rows they become at the destination leader, node_bytes and rank_bytes their
 * sizes. Dispatch (reverse false): stage0 [s][leader(s)] += s's node rows x node_bytes, stage1
 * [leader(s)][leader(b)] += node_rows[s][b] x node_bytes, stage2 [leader(node(d))][d] += rows[s][d]
 * x rank_bytes. Combine (reverse true), the way back: stage0 [d][leader(d)] += rows[s][d] x
 * rank_bytes, stage1 [leader(b)][leader(s)] and stage2 [leader(s)][s] the node rows x node_bytes.
 * Nodes are placement[].node, 0 .. n_nodes-1; a node's leader its lowest rank. Each stage (R, R),
 * overwritten. */
/* Of node_rows (R, n_nodes) [src][node], those bound for another node than their source's. */
int64_t moe_node_rows_off_node(const int64_t *node_rows, int n_nodes,
                               const moe_placement *placement, int R);

void moe_hier_schedule_nodes(int64_t *stage0, int64_t *stage1, int64_t *stage2,
                             const int64_t *node_rows, int n_nodes, const int64_t *rows,
                             int64_t node_bytes, int64_t rank_bytes,
                             const moe_placement *placement, int R, bool reverse);
/* The same with the per-rank rows as nonzero blocks; stage[0..2] replaced (normalized). MOE_OK or
 * MOE_ENOMEM. */
int moe_hier_schedule_nodes_blocks(moe_blocks *stage, const int64_t *node_rows, int n_nodes,
                                   const moe_blocks *rows, int64_t node_bytes, int64_t rank_bytes,
                                   const moe_placement *placement, int R, bool reverse);

#endif
