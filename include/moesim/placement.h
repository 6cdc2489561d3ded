/* Placement: which rank holds which expert, and how many copies (replicas) of each there are.
 * Pure: no MPI, no printing. The rules, with their sources, in docs/placement.md.
 *
 * E logical experts (what the router chooses) become P >= E physical slots (what ranks compute),
 * each slot one replica of one logical expert, spread over R ranks:
 *   contiguous  rank r holds the block moe_partition(E, R, r) (tokens.h): today's layout
 *   strided     expert e on rank e mod R
 *   eplb        DeepSeek's Expert Parallelism Load Balancer, global policy, from per-expert loads
 *               (github.com/deepseek-ai/EPLB, eplb.py: replicate_experts, then balanced_packing):
 *     (a) replicate: one replica per expert; N = P - E times, one more replica for the expert with
 *         the largest load per replica, load_e / replicas_e (ties: lower expert id);
 *     (b) pack: physical expert i (the E originals, then the N extra replicas in the order (a)
 *         made them) carries load_e / replicas_e of its expert e; in descending order of that load
 *         (ties: lower i) each goes to the rank with the smallest load so far among those with
 *         fewer than P / R slots (ties: lower rank). P % R must be 0, as in EPLB. When P == R,
 *         EPLB skips the sort and puts physical i on rank i; so does this.
 *     Loads and quotients are compared in double (EPLB casts to float32 first, so near-ties
 *     may break differently).
 *     N = 0 only packs: a placement by load without copies.
 *     Like EPLB's balanced_packing, (b) does not keep two replicas of one expert off the same
 *     rank; moe_expert_map_colocated counts such slots.
 *
 * Slots are rank-major: rank 0's slots first, then rank 1's, ...; inside a rank by logical id, then
 * replica index. Sorting rows by slot therefore sorts them by destination rank. With redundant = 0
 * the contiguous map is moe_partition exactly: slot s is expert s, on moe_partition_owner(E, R, s).
 * (EPLB orders a rank's slots by packing order instead; the ranks' contents are the same.)
 *
 * Replica index j of expert e: 0 for the original, then the order (a) added copies (EPLB's
 * "phyrank"). An assignment (global token t, expert e) goes to replica t mod replicas_e: the same
 * at every rank count, and consecutive tokens of one expert split over its replicas evenly. */
#ifndef MOESIM_PLACEMENT_H
#define MOESIM_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

typedef enum moe_place_kind {
    MOE_PLACE_CONTIGUOUS = 0,
    MOE_PLACE_STRIDED = 1,
    MOE_PLACE_EPLB = 2
} moe_place_kind;

/* "contiguous", "strided", "eplb"; "unknown" otherwise. */
const char *moe_place_kind_name(moe_place_kind kind);

/* Parse one of those names into *out. MOE_OK or MOE_EUSAGE (message lists the names). */
int moe_place_kind_parse(const char *name, moe_place_kind *out, char *msg, size_t msglen);

/* Every array is carved from one allocation owned by the map. */
typedef struct moe_expert_map {
    moe_place_kind kind;
    int E, R, P;             /* logical experts, ranks, physical slots (E + redundant)          */
    int32_t *logical;        /* (P) logical expert of each slot                                  */
    int32_t *replica;        /* (P) replica index of each slot within its expert                 */
    int32_t *rank;           /* (P) rank of each slot, non-decreasing                            */
    int32_t *first_slot;     /* (R + 1) rank r holds slots [first_slot[r], first_slot[r + 1])   */
    int32_t *replicas;       /* (E) replica count of each logical expert, >= 1                   */
    int32_t *replica_start;  /* (E + 1) replica j of expert e is slot                            */
    int32_t *replica_slot;   /* (P)     replica_slot[replica_start[e] + j]                       */
} moe_expert_map;

/* Build *m (any previous content is overwritten, not freed). contiguous and strided need
 * redundant == 0 and ignore loads (may be NULL); eplb needs loads (E), finite and >= 0, and
 * (E + redundant) % R == 0. Needs E >= 1, R >= 1, redundant >= 0, E + redundant <= INT32_MAX.
 * MOE_OK, MOE_EUSAGE (a combination the placement does not allow), MOE_EINVAL (a bad load: the
 * message names the expert) or MOE_ENOMEM; on failure *m is zeroed. */
int moe_expert_map_build(moe_expert_map *m, moe_place_kind kind, int E, int R, int redundant,
                         const double *loads, char *msg, size_t msglen);

/* Free the arrays and zero *m. m may be NULL; a zeroed map is fine. */
void moe_expert_map_free(moe_expert_map *m);

/* Replica choice: the slot that assignment (global token, logical expert) goes to, replica
 * token mod replicas[expert] (a negative token counts from the end, as a mathematical modulo).
 * expert must be in [0, E). */
static inline int32_t moe_expert_map_slot(const moe_expert_map *m, int64_t token, int32_t expert)
{
    int64_t n = m->replicas[expert], j = token % n;
    return m->replica_slot[m->replica_start[expert] + (j < 0 ? j + n : j)];
}

/* Metadata entries of a per-node row (--dispatch per-rank --a2a hierarchical): min(slots per
 * token, the most slots one node holds), nodes from node_of_rank (R entries, 0 .. nodes-1). */
int moe_nodex_meta_slots(int slots_per_token, const moe_expert_map *map, const int *node_of_rank,
                         int R);

/* Slots whose logical expert already has a replica of lower index on the same rank (0 when no rank
 * holds two copies of one expert). */
int moe_expert_map_colocated(const moe_expert_map *m);

/* slot_load (P) = loads[logical[s]] / replicas[logical[s]]: the load of each slot when each
 * expert's load splits evenly over its replicas (EPLB's per-physical weight). loads: (E). */
void moe_expert_map_slot_loads(double *slot_load, const moe_expert_map *m, const double *loads);

/* rank_load (R) = sum of slot_load (P) over each rank's slots; returns the rank overload factor,
 * max over ranks of rank_load over its mean over ranks (moe_max_over_mean, loss.h: the definition
 * of load_balance.rank_overload); 0 when every rank_load is 0. */
double moe_rank_overload(double *rank_load, const moe_expert_map *m, const double *slot_load);

/* EPLB step (a), replicate_experts: phy2log (E + N) and phy_replica (E + N) are the logical expert
 * and replica index of physical expert i (i < E: expert i, replica 0; then the copies in the order
 * they were made); replicas (E) the counts. loads: (E), finite, >= 0. */
void moe_eplb_replicate(int32_t *phy2log, int32_t *phy_replica, int32_t *replicas,
                        const double *loads, int E, int N);

/* EPLB step (b), balanced_packing: pack (n) is the rank of each of n items of the given finite
 * weights (n), n / R per rank. MOE_OK, MOE_EUSAGE when n % R != 0 or n < 1 or R < 1, MOE_ENOMEM. */
int moe_eplb_pack(int32_t *pack, const double *weight, int n, int R, char *msg, size_t msglen);

/* Read E per-expert loads from path (--eplb-from) into loads (E). A file that starts with the .npy
 * magic is a NumPy array: shape (E,), (1, E) or (E, 1), C or Fortran order (the same bytes for a
 * vector), dtype little-endian float32, float64, int32 or int64, format 1.0, 2.0 or 3.0. A file
 * named *.npy without the magic is refused. Anything else is text: one load per line, or a single
 * line of comma-separated loads; an optional first line "load"; blank lines and spaces ignored;
 * '\r\n' fine. Every load must be finite and >= 0 (-0 reads as 0). Messages start with the
 * quoted path (the caller adds the option name) and give the line and value, or the array index.
 * MOE_OK; MOE_EIO or MOE_EUSAGE (cannot open or read; a directory or FIFO); MOE_EFORMAT (malformed,
 * or a bad load); MOE_EUSAGE (a well-formed file with a count other than E); MOE_ERANGE (over
 * 1 GiB); MOE_ENOMEM. */
int moe_loads_read(const char *path, int E, double *loads, char *msg, size_t msglen);

#endif
