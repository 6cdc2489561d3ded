/* Topology: where each rank runs, and the locality class of traffic between two ranks. Discovery
 * reads hwloc (the real machine, an XML file, or a synthetic description); classification and
 * accounting are pure functions over the resulting placements. No MPI here. */
#ifndef MOESIM_TOPOLOGY_H
#define MOESIM_TOPOLOGY_H

#include "moesim/blocks.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Where one rank runs. -1 where unknown, or where the rank's cores span several of that object. */
typedef struct moe_placement {
    int rank;
    int node;          /* node index: 0 .. n_nodes-1, in order of each node's lowest rank */
    char host[64];
    int package;       /* hwloc logical index of the package holding every bound core */
    int numa;          /* logical index of the NUMA node holding them */
    int core_first;    /* logical index of the first bound core, -1 if unbound */
    int cores;         /* number of cores in the binding */
    uint64_t core_mask; /* bound cores among the first 64 (bit i = logical core i) */
    char cpuset[64];   /* bound PUs as a list, e.g. "0-1" or "3" ("all" when unbound) */
    bool bound;        /* false: the rank may run anywhere on its node */
} moe_placement;

/* Locality classes, closest first. Traffic between two ranks falls in the closest that applies. */
#define MOE_LOCALITIES(X)                   \
    X(MOE_LOC_SAME_RANK, "same_rank")       \
    X(MOE_LOC_SAME_NUMA, "same_numa")       \
    X(MOE_LOC_SAME_PACKAGE, "same_package") \
    X(MOE_LOC_SAME_NODE, "same_node")       \
    X(MOE_LOC_OTHER_NODE, "other_node")

typedef enum moe_locality {
#define MOE_LOC_ENUM(id, name) id,
    MOE_LOCALITIES(MOE_LOC_ENUM)
#undef MOE_LOC_ENUM
        MOE_LOC_COUNT
} moe_locality;

const char *moe_locality_name(int locality);

/* The class of traffic from a to b: same rank; else other node if the nodes differ; else same NUMA
 * node if both NUMA indices are known and equal; else same package likewise; else same node. */
moe_locality moe_locality_of(const moe_placement *a, const moe_placement *b);

typedef struct moe_class_traffic {
    int64_t bytes, messages;
} moe_class_traffic;

/* Accumulate an (R, R) byte matrix, [src][dst], into per-class totals: every nonzero entry is one
 * message of that many bytes. out has MOE_LOC_COUNT entries and is added to, not cleared. If
 * per_rank is not NULL it is (R, MOE_LOC_COUNT) and receives the same split by source rank. */
void moe_traffic_by_class(moe_class_traffic *out, moe_class_traffic *per_rank, const int64_t *bytes,
                          const moe_placement *placement, int R);
/* The same from the nonzero blocks of the matrix (blocks.h). */
void moe_traffic_by_class_blocks(moe_class_traffic *out, moe_class_traffic *per_rank,
                                 const moe_blocks *bytes, const moe_placement *placement);

/* Describe this process: host, and from hwloc its binding and the package, NUMA node and cores it
 * covers. topology_spec: NULL for the real machine; a path ending in ".xml" for an hwloc XML export;
 * anything else is an hwloc synthetic description ("package:2 numa:2 core:4 pu:1"). On a loaded
 * (non-real) topology the process has no real binding there, so it is placed as `mpirun --map-by
 * core --bind-to core` would place local rank local_rank: on core (local_rank mod cores). rank and
 * node are filled by the caller. Returns MOE_OK, or MOE_EUSAGE for a topology that hwloc refuses. */
int moe_topology_describe(moe_placement *out, const char *topology_spec, int local_rank, char *msg,
                          size_t msglen);

/* The same for count processes of this node with one topology load (a node's ranks would
 * otherwise each load it: 4-7 ms apiece here, all at once): process i is pids[i] (0, or pids
 * NULL: this process), with local rank local_ranks[i] (NULL: i) for a loaded topology. Its
 * binding is read with hwloc_get_proc_cpubind, which Linux answers for any process of the
 * caller's user. */
int moe_topology_describe_many(moe_placement *out, int count, const int *pids,
                               const int *local_ranks, const char *topology_spec, char *msg,
                               size_t msglen);

/* Ranks planned with --ranks, never launched: rank r on node r / ranks_per_node (all on node 0
 * when ranks_per_node is 0), host "planned-<node>", package, NUMA node and cores unknown (-1),
 * unbound; so traffic within a node is same_node. out has R entries. */
void moe_topology_planned(moe_placement *out, int R, int ranks_per_node);

/* Warnings about a set of placements on one line each into buf (empty if none): ranks that are
 * unbound, and ranks of one node whose bindings share a core (among the first 64 cores). Returns
 * the number of warnings. */
int moe_topology_warnings(char *buf, size_t len, const moe_placement *placement, int R);

#endif
