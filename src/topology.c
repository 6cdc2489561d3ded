#include "moesim/topology.h"

#include "moesim/error.h"

#include <hwloc.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *const locality_names[] = {
#define MOE_LOC_NAME(id, name) name,
    MOE_LOCALITIES(MOE_LOC_NAME)
#undef MOE_LOC_NAME
};

const char *moe_locality_name(int locality)
{
    return locality >= 0 && locality < MOE_LOC_COUNT ? locality_names[locality] : "?";
}

moe_locality moe_locality_of(const moe_placement *a, const moe_placement *b)
{
    if (a->rank == b->rank)
        return MOE_LOC_SAME_RANK;
    if (a->node != b->node)
        return MOE_LOC_OTHER_NODE;
    if (a->numa >= 0 && a->numa == b->numa)
        return MOE_LOC_SAME_NUMA;
    if (a->package >= 0 && a->package == b->package)
        return MOE_LOC_SAME_PACKAGE;
    return MOE_LOC_SAME_NODE;
}

void moe_traffic_by_class_blocks(moe_class_traffic *out, moe_class_traffic *per_rank,
                                 const moe_blocks *bytes, const moe_placement *placement)
{
    for (int64_t i = 0; i < bytes->n; i++) {
        const moe_block *e = &bytes->v[i];
        if (e->val <= 0)
            continue;
        moe_locality c = moe_locality_of(&placement[e->src], &placement[e->dst]);
        out[c].bytes += e->val;
        out[c].messages += 1;
        if (per_rank != NULL) {
            per_rank[(int64_t)e->src * MOE_LOC_COUNT + c].bytes += e->val;
            per_rank[(int64_t)e->src * MOE_LOC_COUNT + c].messages += 1;
        }
    }
}

void moe_traffic_by_class(moe_class_traffic *out, moe_class_traffic *per_rank, const int64_t *bytes,
                          const moe_placement *placement, int R)
{
    moe_blocks b = {0};
    if (moe_blocks_from_dense(&b, bytes, R, 1, false) == MOE_OK)
        moe_traffic_by_class_blocks(out, per_rank, &b, placement);
    moe_blocks_free(&b);
}

/* Logical index of the only object of `type` whose cpuset contains set, or -1. */
static int only_container(hwloc_topology_t topo, hwloc_obj_type_t type, hwloc_const_cpuset_t set)
{
    int n = hwloc_get_nbobjs_by_type(topo, type), found = -1;
    for (int i = 0; i < n; i++) {
        hwloc_obj_t obj = hwloc_get_obj_by_type(topo, type, (unsigned)i);
        if (obj->cpuset != NULL && hwloc_bitmap_isincluded(set, obj->cpuset)) {
            if (found >= 0)
                return -1;
            found = (int)obj->logical_index;
        }
    }
    return found;
}

/* One process's placement in a loaded topology: its binding from hwloc (pid 0: this process) or,
 * on a loaded description, the core of its local rank. */
static void describe_one(moe_placement *out, hwloc_topology_t topo, bool loaded, int pid,
                         int local_rank, const char *host, hwloc_bitmap_t set)
{
    memset(out, 0, sizeof *out);
    out->package = out->numa = out->core_first = -1;
    snprintf(out->host, sizeof out->host, "%s", host);
    hwloc_const_cpuset_t whole = hwloc_topology_get_topology_cpuset(topo);
    int n_cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
    if (loaded) {
        /* No real binding exists in a loaded topology: place as --map-by core --bind-to core. */
        if (n_cores > 0)
            hwloc_bitmap_copy(set, hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE,
                                                         (unsigned)(local_rank % n_cores))
                                       ->cpuset);
        else
            hwloc_bitmap_copy(set, whole);
    } else if ((pid == 0 ? hwloc_get_cpubind(topo, set, HWLOC_CPUBIND_PROCESS)
                         : hwloc_get_proc_cpubind(topo, (hwloc_pid_t)pid, set,
                                                  HWLOC_CPUBIND_PROCESS)) != 0) {
        hwloc_bitmap_copy(set, whole); /* binding unknown: treat as unbound */
    }
    hwloc_bitmap_and(set, set, whole);
    out->bound = !hwloc_bitmap_isequal(set, whole) || n_cores <= 1;
    out->package = only_container(topo, HWLOC_OBJ_PACKAGE, set);
    out->numa = only_container(topo, HWLOC_OBJ_NUMANODE, set);
    for (int i = 0; i < n_cores; i++) {
        hwloc_obj_t core = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, (unsigned)i);
        if (!hwloc_bitmap_intersects(core->cpuset, set))
            continue;
        if (out->core_first < 0)
            out->core_first = i;
        out->cores++;
        if (i < 64)
            out->core_mask |= UINT64_C(1) << i;
    }
    if (!out->bound)
        snprintf(out->cpuset, sizeof out->cpuset, "all");
    else if (hwloc_bitmap_list_snprintf(out->cpuset, sizeof out->cpuset, set) >=
             (int)sizeof out->cpuset)
        strcpy(out->cpuset + sizeof out->cpuset - 4, "...");
}

int moe_topology_describe_many(moe_placement *out, int count, const int *pids,
                               const int *local_ranks, const char *topology_spec, char *msg,
                               size_t msglen)
{
    char host[64];
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';

    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) != 0)
        return moe_fail(MOE_ENOMEM, msg, msglen, "hwloc could not initialise a topology");
    if (topology_spec != NULL) {
        size_t n = strlen(topology_spec);
        int bad = n >= 4 && strcmp(topology_spec + n - 4, ".xml") == 0
                      ? hwloc_topology_set_xml(topo, topology_spec)
                      : hwloc_topology_set_synthetic(topo, topology_spec);
        if (bad != 0) {
            hwloc_topology_destroy(topo);
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--topology '%s': hwloc refused it (an .xml export from lstopo, or a "
                            "synthetic description such as \"package:2 numa:2 core:4 pu:1\")",
                            topology_spec);
        }
    }
    if (hwloc_topology_load(topo) != 0) {
        hwloc_topology_destroy(topo);
        return moe_fail(MOE_EUSAGE, msg, msglen, "hwloc could not load the topology%s%s",
                        topology_spec ? " " : "", topology_spec ? topology_spec : "");
    }
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    int rc = set == NULL ? moe_fail(MOE_ENOMEM, msg, msglen, "out of memory in hwloc") : MOE_OK;
    for (int i = 0; rc == MOE_OK && i < count; i++)
        describe_one(&out[i], topo, topology_spec != NULL, pids ? pids[i] : 0,
                     local_ranks ? local_ranks[i] : i, host, set);
    hwloc_bitmap_free(set);
    hwloc_topology_destroy(topo);
    return rc;
}

int moe_topology_describe(moe_placement *out, const char *topology_spec, int local_rank, char *msg,
                          size_t msglen)
{
    return moe_topology_describe_many(out, 1, NULL, &local_rank, topology_spec, msg, msglen);
}

int moe_topology_warnings(char *buf, size_t len, const moe_placement *placement, int R)
{
    int n = 0;
    size_t used = 0;
    if (len > 0)
        buf[0] = '\0';
#define WARN(...) (n++, moe_appendf(buf, len, &used, __VA_ARGS__))
    for (int r = 0; r < R; r++)
        if (!placement[r].bound)
            WARN("warning: rank %d on %s is not bound to a core: the OS may move it (mpirun "
                 "--bind-to core)\n",
                 r, placement[r].host);
    for (int a = 0; a < R; a++)
        for (int b = a + 1; b < R; b++)
            if (placement[a].bound && placement[b].bound && placement[a].node == placement[b].node &&
                (placement[a].core_mask & placement[b].core_mask) != 0)
                WARN("warning: ranks %d and %d on %s share a core: their timings disturb each other\n",
                     a, b, placement[a].host);
#undef WARN
    return n;
}

void moe_topology_planned(moe_placement *out, int R, int ranks_per_node)
{
    for (int r = 0; r < R; r++) {
        moe_placement *p = &out[r];
        memset(p, 0, sizeof *p);
        p->rank = r;
        p->node = ranks_per_node > 0 ? r / ranks_per_node : 0;
        snprintf(p->host, sizeof p->host, "planned-%d", p->node);
        p->package = p->numa = p->core_first = -1;
        p->cores = 0;
        p->core_mask = 0;
        snprintf(p->cpuset, sizeof p->cpuset, "planned");
        p->bound = false;
    }
}
