#include "moesim/hier.h"

#include "moesim/error.h"
#include "moesim/exchange.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Buffers a leader's copies read from and write to; resolved at each exchange. */
enum { SRC_SEND, SRC_GATHER, SRC_XRECV, SRC_COUNT };
enum { DST_XSEND, DST_SCATTER, DST_RECV, DST_COUNT };

/* One contiguous run of rows: rows from (src, src_off) to (dst, dst_off), offsets in rows. */
typedef struct hier_copy {
    int64_t src_off, dst_off, rows;
    int src, dst;
} hier_copy;

/* Everything one direction needs at exchange time. Arrays are carved at create, copy lists at
 * plan. */
typedef struct hier_dir {
    int send_rows, recv_rows;              /* stage 0 / 2 counts of a non-leader (leader: 0) */
    int *gather_counts, *gather_displs;    /* (node_size): stage 0 at the leader; [0] = 0 */
    int *scatter_counts, *scatter_displs;  /* (node_size): stage 2 at the leader; [0] = 0 */
    int *x_scounts, *x_sdispls;            /* (n_nodes): stage 1, per destination node; own = 0 */
    int *x_rcounts, *x_rdispls;            /* (n_nodes): stage 1, per source node; own = 0 */
    hier_copy *pack, *unpack;              /* leader: before and after stage 1 */
    int64_t n_pack, n_unpack;
} hier_dir;

struct moe_hier {
    MPI_Comm comm, node_comm, leader_comm; /* leader_comm: MPI_COMM_NULL on non-leaders */
    MPI_Datatype row;
    int64_t row_bytes;
    int R, rank, n_nodes, node, node_size, local;
    bool leader, planned;
    int *node_of_rank;  /* (R) */
    int *local_of_rank; /* (R) index of each rank within its node, rank order */
    int *members;       /* (node_size) ranks of this node, rank order; members[0] is the leader */
    int *ints;          /* one block carved into the int arrays of dir[0] and dir[1] */
    /* plan scratch, int64, 4 R + 6 n_nodes: the full-matrix plan's sums (2 R); the block plan's
     * member sums (2 node_size), cursor (n_nodes) and ycur (node_size) */
    int64_t *scratch;
    /* the counts planned from: this node's members' rows and columns on its leader
     * ((node_size, R) each), this rank's own row and column elsewhere ((1, R)) */
    int64_t *blk_rows, *blk_cols;
    int64_t n_pack_fwd, n_unpack_fwd, n_pack_back; /* copy list lengths of the last plan */
    /* what validate_blocks summed for plan_blocks (a leader's node): gathered and scattered rows,
     * rows out of and into the node, nonzero pairs out of it, into it, from and to its members */
    int64_t g_row, g_col, x_out, x_in, nz_in_out, nz_out_in, nz_from_me, nz_to_me;
    hier_dir dir[2]; /* [0] forward (counts), [1] reverse (transpose) */
    hier_copy *copies;
    int64_t copies_cap;
    char *staging; /* one block: gather | xrecv | xsend, which stage 2 reuses as scatter */
    size_t staging_bytes;
    char *gather_buf, *xrecv_buf, *xsend_buf, *scatter_buf;
    moe_hier_stats stats;
};

/* ---------------------------------------------------------------- create / destroy */

void moe_hier_destroy(moe_hier *h)
{
    if (h == NULL)
        return;
    if (h->node_comm != MPI_COMM_NULL)
        MPI_Comm_free(&h->node_comm);
    if (h->leader_comm != MPI_COMM_NULL)
        MPI_Comm_free(&h->leader_comm);
    free(h->node_of_rank);
    free(h->local_of_rank);
    free(h->members);
    free(h->ints);
    free(h->scratch);
    free(h->blk_rows);
    free(h->copies);
    free(h->staging);
    free(h);
}

/* Node numbers in [0, R), each new node numbered one more than the highest so far. */
static int check_nodes(const int *node_of_rank, int R, int *n_nodes, char *msg, size_t msglen)
{
    if (node_of_rank == NULL)
        return moe_fail(MOE_EINVAL, msg, msglen, "hierarchical exchange: no node layout");
    int top = -1;
    for (int r = 0; r < R; r++) {
        int k = node_of_rank[r];
        if (k < 0 || k > top + 1)
            return moe_fail(MOE_EINVAL, msg, msglen,
                            "hierarchical exchange: rank %d is on node %d, but nodes must be "
                            "numbered 0, 1, ... in order of their lowest rank (a new node here "
                            "would be %d)",
                            r, k, top + 1);
        if (k > top)
            top = k;
    }
    *n_nodes = top + 1;
    return MOE_OK;
}

/* Local part of create: validation and allocation, no collective. */
static int hier_alloc(moe_hier *h, const int *node_of_rank, char *msg, size_t msglen)
{
    int rc = check_nodes(node_of_rank, h->R, &h->n_nodes, msg, msglen);
    if (rc != MOE_OK)
        return rc;
    if (h->row_bytes <= 0)
        return moe_fail(MOE_EINVAL, msg, msglen, "hierarchical exchange: row size %lld bytes",
                        (long long)h->row_bytes);
    int R = h->R;
    h->node = node_of_rank[h->rank];
    h->node_of_rank = malloc((size_t)R * sizeof(int));
    h->local_of_rank = malloc((size_t)R * sizeof(int));
    h->scratch = malloc(((size_t)R * 3 + (size_t)h->n_nodes * 6 + (size_t)R) * sizeof(int64_t));
    if (h->node_of_rank == NULL || h->local_of_rank == NULL || h->scratch == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the hierarchical exchange");
    memcpy(h->node_of_rank, node_of_rank, (size_t)R * sizeof(int));
    int64_t *size_of_node = h->scratch; /* borrowed: (n_nodes) */
    memset(size_of_node, 0, (size_t)h->n_nodes * sizeof(int64_t));
    for (int r = 0; r < R; r++)
        h->local_of_rank[r] = (int)size_of_node[node_of_rank[r]]++;
    h->node_size = (int)size_of_node[h->node];
    h->local = h->local_of_rank[h->rank];
    h->leader = h->local == 0;
    h->members = malloc((size_t)h->node_size * sizeof(int));
    /* per direction: 4 arrays of node_size, 4 of n_nodes */
    size_t per_dir = 4 * (size_t)h->node_size + 4 * (size_t)h->n_nodes;
    h->ints = calloc(2 * per_dir, sizeof(int));
    if (h->members == NULL || h->ints == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the hierarchical exchange");
    for (int r = 0, j = 0; r < R; r++)
        if (node_of_rank[r] == h->node)
            h->members[j++] = r;
    size_t held = h->leader ? (size_t)h->node_size : 1;
    h->blk_rows = malloc(2 * held * (size_t)R * sizeof(int64_t));
    if (h->blk_rows == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the hierarchical exchange");
    h->blk_cols = h->blk_rows + held * (size_t)R;
    for (int dir = 0; dir < 2; dir++) {
        int *p = h->ints + dir * per_dir, m = h->node_size, n = h->n_nodes;
        hier_dir *D = &h->dir[dir];
        D->gather_counts = p, p += m;
        D->gather_displs = p, p += m;
        D->scatter_counts = p, p += m;
        D->scatter_displs = p, p += m;
        D->x_scounts = p, p += n;
        D->x_sdispls = p, p += n;
        D->x_rcounts = p, p += n;
        D->x_rdispls = p;
    }
    return MOE_OK;
}

/* Collective part of create: the layout must be the same everywhere, then the two splits. */
static int hier_split(moe_hier *h, char *msg, size_t msglen)
{
    int R = h->R;
    /* Element-wise max of (x, -x) over ranks gives max and -min: equal everywhere iff identical. */
    int *both = malloc(2 * (size_t)R * sizeof(int));
    int rc = both != NULL ? MOE_OK
                          : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the node layout");
    rc = moe_agree(h->comm, rc, msg, msglen);
    if (rc != MOE_OK) {
        free(both);
        return rc;
    }
    for (int r = 0; r < R; r++) {
        both[r] = h->node_of_rank[r];
        both[R + r] = -h->node_of_rank[r];
    }
    int mpi_rc = MPI_Allreduce(MPI_IN_PLACE, both, 2 * R, MPI_INT, MPI_MAX, h->comm);
    if (mpi_rc != MPI_SUCCESS) {
        free(both);
        return moe_mpi_fail(mpi_rc, "MPI_Allreduce(node layout)", __FILE__, __LINE__, msg, msglen);
    }
    int differs = -1;
    for (int r = 0; r < R && differs < 0; r++)
        if (both[r] != -both[R + r])
            differs = r;
    free(both);
    if (differs >= 0) /* seen alike by every rank: no agreement needed */
        return moe_fail(MOE_EINVAL, msg, msglen,
                        "hierarchical exchange: ranks disagree on the node of rank %d", differs);

    MOE_MPI_CHECK(MPI_Comm_split(h->comm, h->node, h->rank, &h->node_comm), msg, msglen);
    MOE_MPI_CHECK(MPI_Comm_set_errhandler(h->node_comm, MPI_ERRORS_RETURN), msg, msglen);
    /* Leaders keep comm order, and node k's leader is the k-th leader: leader_comm rank = node. */
    MOE_MPI_CHECK(MPI_Comm_split(h->comm, h->leader ? 0 : MPI_UNDEFINED, h->rank, &h->leader_comm),
                  msg, msglen);
    if (h->leader_comm != MPI_COMM_NULL)
        MOE_MPI_CHECK(MPI_Comm_set_errhandler(h->leader_comm, MPI_ERRORS_RETURN), msg, msglen);
    return MOE_OK;
}

int moe_hier_create(moe_hier **out, MPI_Comm comm, const int *node_of_rank, MPI_Datatype row,
                    int64_t row_bytes, char *msg, size_t msglen)
{
    *out = NULL;
    int rank, R;
    MOE_MPI_CHECK(MPI_Comm_rank(comm, &rank), msg, msglen);
    MOE_MPI_CHECK(MPI_Comm_size(comm, &R), msg, msglen);
    moe_hier *h = calloc(1, sizeof *h);
    int rc = MOE_OK;
    if (h == NULL) {
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the hierarchical exchange");
    } else {
        h->comm = comm;
        h->node_comm = MPI_COMM_NULL;
        h->leader_comm = MPI_COMM_NULL;
        h->row = row;
        h->row_bytes = row_bytes;
        h->rank = rank;
        h->R = R;
        rc = hier_alloc(h, node_of_rank, msg, msglen);
    }
    rc = moe_agree(comm, rc, msg, msglen);
    if (rc == MOE_OK)
        rc = hier_split(h, msg, msglen);
    if (rc != MOE_OK) {
        moe_hier_destroy(h);
        return rc;
    }
    *out = h;
    return MOE_OK;
}

/* ---------------------------------------------------------------- plan */

/* The counts a plan reads, held as this node's blocks: rows[j * R + t] = C[members[j]][t] (what
 * member j sends) and cols[j * R + s] = C[s][members[j]] (what it receives); a non-leader holds its
 * own row and column (j = 0 only). Direction 0 is C, direction 1 its transpose. */
static inline int64_t member_out(const moe_hier *h, int dir, int j, int t)
{
    return (dir == 0 ? h->blk_rows : h->blk_cols)[(int64_t)j * h->R + t];
}

static inline int64_t member_in(const moe_hier *h, int dir, int s, int j)
{
    return (dir == 0 ? h->blk_cols : h->blk_rows)[(int64_t)j * h->R + s];
}

/* Append a copy, extending the previous one when both sides continue it. */
static void emit(hier_copy *list, int64_t *n, int src, int64_t src_off, int dst, int64_t dst_off,
                 int64_t rows)
{
    if (*n > 0) {
        hier_copy *last = &list[*n - 1];
        if (last->src == src && last->dst == dst && last->src_off + last->rows == src_off &&
            last->dst_off + last->rows == dst_off) {
            last->rows += rows;
            return;
        }
    }
    list[(*n)++] = (hier_copy){.src_off = src_off, .dst_off = dst_off, .rows = rows, .src = src,
                               .dst = dst};
}

/* counts/displacements from int64 sizes already checked to total at most INT_MAX */
static void prefix(int *counts, int *displs, const int64_t *sizes, int n)
{
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        counts[i] = (int)sizes[i];
        displs[i] = (int)total;
        total += sizes[i];
    }
}

/* Fill direction dir of a validated plan from the blocks. out_m/in_m: (node_size) rows each
 * member sends and receives in direction 0; ycur: (node_size), cursor: (n_nodes) scratch. A
 * leader's work is O(node_size x R). */
static void plan_dir(moe_hier *h, int dir, const int64_t *out_m, const int64_t *in_m,
                     int64_t *ycur, int64_t *cursor)
{
    hier_dir *D = &h->dir[dir];
    int R = h->R, m = h->node_size, n = h->n_nodes, me = h->node;
    const int *node_of = h->node_of_rank;
    /* the reverse swaps what is sent and received */
    const int64_t *out_rows = dir == 0 ? out_m : in_m, *in_rows = dir == 0 ? in_m : out_m;
    D->n_pack = D->n_unpack = 0;
    if (!h->leader) {
        D->send_rows = (int)out_rows[0];
        D->recv_rows = (int)in_rows[0];
        return;
    }
    D->send_rows = D->recv_rows = 0;

    /* stages 0 and 2: one block per member, the leader's own block is not sent */
    for (int j = 0; j < m; j++)
        ycur[j] = j == 0 ? 0 : out_rows[j];
    prefix(D->gather_counts, D->gather_displs, ycur, m);
    for (int j = 0; j < m; j++)
        ycur[j] = j == 0 ? 0 : in_rows[j];
    prefix(D->scatter_counts, D->scatter_displs, ycur, m);

    /* stage 1: block (me -> b) holds what my members send to b's ranks, and (a -> me) likewise */
    memset(cursor, 0, (size_t)n * sizeof *cursor);
    for (int j = 0; j < m; j++)
        for (int t = 0; t < R; t++)
            if (node_of[t] != me)
                cursor[node_of[t]] += member_out(h, dir, j, t);
    prefix(D->x_scounts, D->x_sdispls, cursor, n);
    memset(cursor, 0, (size_t)n * sizeof *cursor);
    for (int j = 0; j < m; j++)
        for (int s = 0; s < R; s++)
            if (node_of[s] != me)
                cursor[node_of[s]] += member_in(h, dir, s, j);
    prefix(D->x_rcounts, D->x_rdispls, cursor, n);

    /* pack: block (me -> b) is [s in me, rank order][t in b, rank order]; s reads its own send
     * buffer (the leader) or its block of the gather buffer */
    memset(cursor, 0, (size_t)n * sizeof *cursor);
    for (int j = 0; j < m; j++) {
        int src = j == 0 ? SRC_SEND : SRC_GATHER;
        int64_t base = j == 0 ? 0 : D->gather_displs[j], p = 0;
        for (int t = 0; t < R; t++) {
            int64_t c = member_out(h, dir, j, t);
            int b = node_of[t];
            if (c > 0 && b != me) {
                emit(D->pack, &D->n_pack, src, base + p, DST_XSEND, D->x_sdispls[b] + cursor[b], c);
                cursor[b] += c;
            }
            p += c;
        }
    }

    /* unpack: member t's block is [s in global rank order], the flat receive layout. Rows from
     * my own node come from the send or gather buffer at their place in s's send buffer (the
     * rows s sends to the ranks before t); from node a, from s's sub-block of block (a -> me),
     * which starts at cursor[a] and lists my members in rank order. */
    memset(cursor, 0, (size_t)n * sizeof *cursor);
    memset(ycur, 0, (size_t)m * sizeof *ycur);
    for (int s = 0; s < R; s++) {
        int a = node_of[s], js = h->local_of_rank[s];
        int64_t p = 0, run = 0; /* p: position in s's send buffer (s in my node); run: in its sub-block */
        int t_done = 0;
        for (int jt = 0; jt < m; jt++) {
            int t = h->members[jt];
            int64_t c = member_in(h, dir, s, jt);
            if (a == me) /* the rows s sends to the ranks before t */
                for (; t_done < t; t_done++)
                    p += member_out(h, dir, js, t_done);
            if (c > 0) {
                int src, dst = jt == 0 ? DST_RECV : DST_SCATTER;
                int64_t src_off, dst_off = (jt == 0 ? 0 : D->scatter_displs[jt]) + ycur[jt];
                if (a == me) {
                    src = js == 0 ? SRC_SEND : SRC_GATHER;
                    src_off = (js == 0 ? 0 : D->gather_displs[js]) + p;
                } else {
                    src = SRC_XRECV;
                    src_off = D->x_rdispls[a] + cursor[a] + run;
                    run += c;
                }
                emit(D->unpack, &D->n_unpack, src, src_off, dst, dst_off, c);
                ycur[jt] += c;
            }
        }
        if (a != me)
            cursor[a] += run;
    }
}

static int too_many(const char *what, int who, int64_t rows, char *msg, size_t msglen)
{
    return moe_fail(MOE_ERANGE, msg, msglen,
                    "hierarchical exchange: %s %d has %lld rows, more than MPI counts can address "
                    "(%d); use more nodes, more ranks or fewer tokens",
                    what, who, (long long)rows, INT_MAX);
}

/* Check the counts this rank holds, and on a leader its node's stages: entries, each member's
 * rows out and in, the gather, the scatter and the rows crossing the node boundary must each be
 * non-negative and fit an int. out_m, in_m: (node_size) filled with each member's sums. */
static int validate_blocks(moe_hier *h, int64_t *out_m, int64_t *in_m, char *msg,
                           size_t msglen)
{
    int R = h->R, me = h->node, held = h->leader ? h->node_size : 1;
    int64_t g_row = 0, g_col = 0, x_out = 0, x_in = 0;
    int64_t nz_in_out = 0, nz_out_in = 0, nz_from_me = 0, nz_to_me = 0;
    for (int j = 0; j < held; j++) {
        int r = h->leader ? h->members[j] : h->rank;
        out_m[j] = in_m[j] = 0;
        for (int t = 0; t < R; t++) {
            int64_t o = h->blk_rows[(int64_t)j * R + t], i = h->blk_cols[(int64_t)j * R + t];
            if (o < 0 || i < 0)
                return moe_fail(MOE_EINVAL, msg, msglen,
                                "hierarchical exchange: negative count %lld from rank %d to %d",
                                (long long)(o < 0 ? o : i), o < 0 ? r : t, o < 0 ? t : r);
            if (o > INT_MAX || i > INT_MAX)
                return too_many("the pair from rank", o > INT_MAX ? r : t, o > INT_MAX ? o : i, msg,
                                msglen);
            out_m[j] += o;
            in_m[j] += i;
            bool away = h->node_of_rank[t] != me;
            if (away) {
                x_out += o;
                x_in += i;
            }
            nz_from_me += o > 0;
            nz_to_me += i > 0;
            nz_in_out += o > 0 && away;
            nz_out_in += i > 0 && away;
        }
        if (out_m[j] > INT_MAX)
            return too_many("sending rank", r, out_m[j], msg, msglen);
        if (in_m[j] > INT_MAX)
            return too_many("receiving rank", r, in_m[j], msg, msglen);
        if (j > 0) { /* the leader's own rows are not gathered or scattered */
            g_row += out_m[j];
            g_col += in_m[j];
        }
    }
    h->g_row = g_row, h->g_col = g_col, h->x_out = x_out, h->x_in = x_in;
    h->nz_in_out = nz_in_out, h->nz_out_in = nz_out_in;
    h->nz_from_me = nz_from_me, h->nz_to_me = nz_to_me;
    if (!h->leader)
        return MOE_OK;
    if (g_row > INT_MAX || g_col > INT_MAX)
        return too_many("the leader gathering or scattering node", me, g_row > g_col ? g_row : g_col,
                        msg, msglen);
    if (x_out > INT_MAX || x_in > INT_MAX)
        return too_many("the leader exchanging for node", me, x_out > x_in ? x_out : x_in, msg,
                        msglen);
    return MOE_OK;
}

/* Plan both directions from the blocks held, validated by validate_blocks into the first
 * 2 node_size entries of the scratch (out_m, in_m): staging, copy lists, statistics. */
static int plan_blocks(moe_hier *h, char *msg, size_t msglen)
{
    int n = h->n_nodes, m = h->node_size;
    int64_t *out_m = h->scratch, *in_m = out_m + m, *cursor = in_m + m, *ycur = cursor + n;

    /* 1. this rank's staging, in rows: gather | xrecv | xsend (reused for scatter), and the copy
     * lists' bounds: nonzero pairs from my node out of it, into it from outside, to my members and
     * from them */
    int64_t g = 0, x = 0, sy = 0, n_copies = 0;
    if (h->leader) {
        g = h->g_row > h->g_col ? h->g_row : h->g_col;
        x = h->x_in > h->x_out ? h->x_in : h->x_out;
        sy = x > g ? x : g; /* xsend of one direction is xrecv of the other; scatter is gather's */
        n_copies = h->nz_in_out + h->nz_out_in + h->nz_to_me + h->nz_from_me;
        h->n_pack_fwd = h->nz_in_out;
        h->n_unpack_fwd = h->nz_to_me;
        h->n_pack_back = h->nz_out_in;
    }
    int64_t rows = g + x + sy;
    if (rows > 0 && (uint64_t)h->row_bytes > SIZE_MAX / 2 / (uint64_t)rows)
        return moe_fail(MOE_ERANGE, msg, msglen,
                        "hierarchical exchange: staging of %lld rows of %lld bytes does not fit "
                        "in memory",
                        (long long)rows, (long long)h->row_bytes);
    size_t need = h->leader ? (size_t)rows * (size_t)h->row_bytes + 64 : 0;

    /* 2. grow: allocate everything new first, so a failure leaves the previous plan whole */
    hier_copy *copies = NULL;
    char *staging = NULL;
    if (n_copies > h->copies_cap) {
        copies = malloc((size_t)n_copies * sizeof *copies);
        if (copies == NULL)
            return moe_fail(MOE_ENOMEM, msg, msglen,
                            "out of memory for %lld copies of the hierarchical exchange",
                            (long long)n_copies);
    }
    if (need > h->staging_bytes) {
        staging = malloc(need);
        if (staging == NULL) {
            free(copies);
            return moe_fail(MOE_ENOMEM, msg, msglen,
                            "out of memory for %zu bytes of hierarchical staging", need);
        }
    }
    if (copies != NULL) {
        free(h->copies);
        h->copies = copies;
        h->copies_cap = n_copies;
    }
    if (staging != NULL) {
        free(h->staging);
        h->staging = staging;
        h->staging_bytes = need;
    }
    h->gather_buf = h->staging;
    h->xrecv_buf = h->leader ? h->gather_buf + g * h->row_bytes : NULL;
    h->xsend_buf = h->leader ? h->xrecv_buf + x * h->row_bytes : NULL;
    h->scatter_buf = h->xsend_buf;
    h->dir[0].pack = h->copies;
    h->dir[0].unpack = h->dir[0].pack + (h->leader ? h->n_pack_fwd : 0);
    h->dir[1].pack = h->dir[0].unpack + (h->leader ? h->n_unpack_fwd : 0);
    h->dir[1].unpack = h->dir[1].pack + (h->leader ? h->n_pack_back : 0);

    /* 3. fill both directions */
    for (int dir = 0; dir < 2; dir++)
        plan_dir(h, dir, out_m, in_m, ycur, cursor);
    h->planned = true;

    /* statistics of the forward direction */
    moe_hier_stats *st = &h->stats;
    memset(st, 0, sizeof *st);
    const hier_dir *F = &h->dir[0];
    if (!h->leader) {
        st->messages[0] = F->send_rows > 0;
        st->bytes[0] = F->send_rows * h->row_bytes;
    } else {
        for (int k = 0; k < n; k++) {
            st->messages[1] += F->x_scounts[k] > 0;
            st->bytes[1] += F->x_scounts[k] * h->row_bytes;
        }
        for (int j = 1; j < h->node_size; j++) {
            st->messages[2] += F->scatter_counts[j] > 0;
            st->bytes[2] += F->scatter_counts[j] * h->row_bytes;
        }
        for (int64_t i = 0; i < F->n_pack; i++)
            st->copy_bytes += F->pack[i].rows * h->row_bytes;
        for (int64_t i = 0; i < F->n_unpack; i++)
            st->copy_bytes += F->unpack[i].rows * h->row_bytes;
    }
    return MOE_OK;
}

int moe_hier_plan(moe_hier *h, const int64_t *counts, char *msg, size_t msglen)
{
    int R = h->R;
    /* 1. validate, for every rank, so every rank reaches the same verdict without communicating:
     * a rank's entries, its sums, and each node's stages (node sums in the first n_nodes entries
     * of the scratch arrays) */
    int64_t *row_sum = h->scratch, *col_sum = row_sum + R;
    memset(row_sum, 0, 2 * (size_t)R * sizeof *row_sum);
    for (int s = 0; s < R; s++)
        for (int t = 0; t < R; t++) {
            int64_t c = counts[(int64_t)s * R + t];
            if (c < 0)
                return moe_fail(MOE_EINVAL, msg, msglen,
                                "hierarchical exchange: negative count %lld from rank %d to %d",
                                (long long)c, s, t);
            if (c > INT_MAX)
                return too_many("the pair from rank", s, c, msg, msglen);
            row_sum[s] += c;
            col_sum[t] += c;
        }
    for (int r = 0; r < R; r++) {
        if (row_sum[r] > INT_MAX)
            return too_many("sending rank", r, row_sum[r], msg, msglen);
        if (col_sum[r] > INT_MAX)
            return too_many("receiving rank", r, col_sum[r], msg, msglen);
    }
    /* per node: gathered, scattered (members other than the leader), out of and into it */
    int64_t *node_sum = calloc(4 * (size_t)h->n_nodes, sizeof *node_sum);
    if (node_sum == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the hierarchical plan");
    for (int s = 0; s < R; s++) {
        int a = h->node_of_rank[s];
        if (h->local_of_rank[s] != 0) {
            node_sum[4 * a] += row_sum[s];
            node_sum[4 * a + 1] += col_sum[s];
        }
        for (int t = 0; t < R; t++) {
            int b = h->node_of_rank[t];
            if (a != b) {
                node_sum[4 * a + 2] += counts[(int64_t)s * R + t];
                node_sum[4 * b + 3] += counts[(int64_t)s * R + t];
            }
        }
    }
    int rc = MOE_OK;
    for (int k = 0; k < h->n_nodes && rc == MOE_OK; k++) {
        const int64_t *q = node_sum + 4 * k;
        if (q[0] > INT_MAX || q[1] > INT_MAX)
            rc = too_many("the leader gathering or scattering node", k, q[0] > q[1] ? q[0] : q[1],
                          msg, msglen);
        else if (q[2] > INT_MAX || q[3] > INT_MAX)
            rc = too_many("the leader exchanging for node", k, q[2] > q[3] ? q[2] : q[3], msg,
                          msglen);
    }
    free(node_sum);
    if (rc != MOE_OK)
        return rc;
    /* 2. this node's blocks, then the plan */
    int held = h->leader ? h->node_size : 1;
    for (int j = 0; j < held; j++) {
        int r = h->leader ? h->members[j] : h->rank;
        memcpy(h->blk_rows + (int64_t)j * R, counts + (int64_t)r * R, (size_t)R * sizeof *counts);
        for (int s = 0; s < R; s++)
            h->blk_cols[(int64_t)j * R + s] = counts[(int64_t)s * R + r];
    }
    rc = validate_blocks(h, h->scratch, h->scratch + h->node_size, msg, msglen); /* the sums */
    return rc == MOE_OK ? plan_blocks(h, msg, msglen) : rc;
}

int moe_hier_plan_rows(moe_hier *h, const int64_t *send_rows, const int64_t *recv_rows, char *msg,
                       size_t msglen)
{
    int R = h->R, rc = MOE_OK, mrc;
    /* the node's rows and columns to its leader, in member order (the node communicator's) */
    mrc = MPI_Gather(send_rows, R, MPI_INT64_T, h->blk_rows, R, MPI_INT64_T, 0, h->node_comm);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Gather(recv_rows, R, MPI_INT64_T, h->blk_cols, R, MPI_INT64_T, 0, h->node_comm);
    if (mrc != MPI_SUCCESS)
        rc = moe_mpi_fail(mrc, "MPI_Gather(hierarchical counts)", __FILE__, __LINE__, msg, msglen);
    if (rc == MOE_OK && !h->leader) { /* a non-leader plans from its own row and column */
        memcpy(h->blk_rows, send_rows, (size_t)R * sizeof *send_rows);
        memcpy(h->blk_cols, recv_rows, (size_t)R * sizeof *recv_rows);
    }
    /* agreed before anything changes: on a refusal every rank keeps its previous plan */
    if (rc == MOE_OK)
        rc = validate_blocks(h, h->scratch, h->scratch + h->node_size, msg, msglen);
    if ((rc = moe_agree(h->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    rc = plan_blocks(h, msg, msglen);
    return moe_agree(h->comm, rc, msg, msglen);
}

void moe_hier_stats_get(const moe_hier *h, moe_hier_stats *out)
{
    *out = h->stats;
}

/* ---------------------------------------------------------------- exchange */

static void run_copies(const hier_copy *list, int64_t n, const char *const *src,
                       char *const *dst, int64_t row_bytes)
{
    for (int64_t i = 0; i < n; i++)
        memcpy(dst[list[i].dst] + list[i].dst_off * row_bytes,
               src[list[i].src] + list[i].src_off * row_bytes, (size_t)(list[i].rows * row_bytes));
}

int moe_hier_exchange(moe_hier *h, const void *send, void *recv, bool reverse, char *msg,
                      size_t msglen)
{
    if (!h->planned)
        return moe_fail(MOE_EINVAL, msg, msglen, "hierarchical exchange before any plan");
    const hier_dir *D = &h->dir[reverse ? 1 : 0];
    bool gathered = h->node_size > 1;

    /* stage 0: to the leader; its own rows stay where they are (count 0 on both sides) */
    if (gathered) {
        if (h->leader)
            MOE_MPI_CHECK(MPI_Gatherv(send, 0, h->row, h->gather_buf, D->gather_counts,
                                      D->gather_displs, h->row, 0, h->node_comm),
                          msg, msglen);
        else
            MOE_MPI_CHECK(MPI_Gatherv(send, D->send_rows, h->row, NULL, NULL, NULL, h->row, 0,
                                      h->node_comm),
                          msg, msglen);
    }

    /* stage 1: pack per destination node, leaders exchange, unpack per destination rank */
    if (h->leader) {
        const char *src[SRC_COUNT] = {[SRC_SEND] = send, [SRC_GATHER] = h->gather_buf,
                                      [SRC_XRECV] = h->xrecv_buf};
        char *dst[DST_COUNT] = {[DST_XSEND] = h->xsend_buf, [DST_SCATTER] = h->scatter_buf,
                                [DST_RECV] = recv};
        run_copies(D->pack, D->n_pack, src, dst, h->row_bytes);
        if (h->n_nodes > 1)
            MOE_MPI_CHECK(MPI_Alltoallv(h->xsend_buf, D->x_scounts, D->x_sdispls, h->row,
                                        h->xrecv_buf, D->x_rcounts, D->x_rdispls, h->row,
                                        h->leader_comm),
                          msg, msglen);
        /* the scatter buffer is the send buffer of stage 1, free again now */
        run_copies(D->unpack, D->n_unpack, src, dst, h->row_bytes);
    }

    /* stage 2: from the leader; its own block was written straight to recv */
    if (gathered) {
        if (h->leader)
            MOE_MPI_CHECK(MPI_Scatterv(h->scatter_buf, D->scatter_counts, D->scatter_displs,
                                       h->row, recv, 0, h->row, 0, h->node_comm),
                          msg, msglen);
        else
            MOE_MPI_CHECK(MPI_Scatterv(NULL, NULL, NULL, h->row, recv, D->recv_rows, h->row, 0,
                                       h->node_comm),
                          msg, msglen);
    }
    return MOE_OK;
}

size_t moe_hier_staging_bytes(const moe_hier *h)
{
    if (h == NULL)
        return 0;
    size_t held = h->leader ? (size_t)h->node_size : 1; /* the counts' blocks */
    return h->staging_bytes + (size_t)h->copies_cap * sizeof(hier_copy) +
           2 * held * (size_t)h->R * sizeof(int64_t);
}
