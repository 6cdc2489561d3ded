/* Per-node deduplicated dispatch (--dispatch per-rank --a2a hierarchical; DeepEP's internode
 * path): a token crosses the leaders' stage once per destination node, with one metadata entry
 * (destination rank, its local expert id, gate) per served slot there, and is fanned out to the
 * node's ranks by the destination leader; the combine reduces a token's results inside the node
 * before they cross back. Part of the layer (layer_internal.h).
 *
 * Dispatch, at a source: the per-rank rows (dedup.c) are merged into node rows, destination node
 * then token; the two-level exchange (hier.c, with every row bound for the destination node's
 * leader) gathers them to the source's leader and moves them between leaders. The destination
 * leader expands each node row into one per-rank row per rank of its node that serves the token,
 * member by member in arrival order (source rank, then token): exactly the rows, in exactly the
 * order, the flat per-rank exchange delivers; one MPI_Scatterv hands each rank its block.
 * Combine, the way back: MPI_Gatherv of the per-rank results to the leader, which sums, for each
 * node row, its ranks' results in rank order (in float, then re-encoded in --wire-combine); the
 * two-level exchange returns one row per node row; the source adds them to y in node order. */
#include "layer_internal.h"

#include "moesim/error.h"
#include "moesim/wire.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* One node-row entry as it travels. */
typedef struct nodex_entry {
    int32_t rank;   /* destination rank; -1 unused */
    int32_t expert; /* its local expert id          */
    float gate;
} nodex_entry;
_Static_assert(sizeof(nodex_entry) == MOE_NODEX_ENTRY_BYTES, "a node-row entry is 12 bytes");

/* The per-rank metadata entry (dedup.c): its layout, read here. */
typedef struct rank_entry {
    int32_t expert;
    float gate;
} rank_entry;

int moe_nodex_create(moe_layer *L, char *msg, size_t msglen)
{
    int R = L->R, rc = MOE_OK;
    L->nx_node = MPI_COMM_NULL;
    L->nx_row = MPI_DATATYPE_NULL;
    L->nx_meta = moe_nodex_meta_slots(L->A, &L->map, L->node_of_rank, R);
    L->nx_row_bytes = moe_wire_row_bytes(L->wire_out, L->d) +
                      (int64_t)L->nx_meta * MOE_NODEX_ENTRY_BYTES;
    L->n_nodes = 0;
    for (int r = 0; r < R; r++)
        L->n_nodes = L->node_of_rank[r] + 1 > L->n_nodes ? L->node_of_rank[r] + 1 : L->n_nodes;
    L->nx_leader = calloc((size_t)L->n_nodes, sizeof *L->nx_leader);
    L->nx_send_rows = calloc(2 * (size_t)R, sizeof *L->nx_send_rows);
    L->nx_recv_rows = L->nx_send_rows == NULL ? NULL : L->nx_send_rows + R;
    L->nx_node_rows = calloc((size_t)L->n_nodes, sizeof *L->nx_node_rows);
    L->nx_cur = calloc(2 * (size_t)R, sizeof *L->nx_cur);
    L->nx_seen = calloc((size_t)L->n_nodes, sizeof *L->nx_seen);
    if (!L->nx_leader || !L->nx_send_rows || !L->nx_node_rows || !L->nx_cur || !L->nx_seen)
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the per-node dispatch");
    for (int r = R - 1; rc == MOE_OK && r >= 0; r--)
        L->nx_leader[L->node_of_rank[r]] = r; /* the lowest rank of each node */
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    L->bytes += (int64_t)(L->n_nodes * 12 + R * 24);
    int me = L->node_of_rank[L->rank];
    int mrc = MPI_Comm_split(L->comm, me, L->rank, &L->nx_node);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Comm_set_errhandler(L->nx_node, MPI_ERRORS_RETURN);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Comm_size(L->nx_node, &L->nx_size);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Type_contiguous((int)L->nx_row_bytes, MPI_BYTE, &L->nx_row);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Type_commit(&L->nx_row);
    rc = mrc == MPI_SUCCESS ? MOE_OK
                            : moe_mpi_fail(mrc, "MPI_Comm_split", __FILE__, __LINE__, msg, msglen);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    L->nx_cnt = calloc(3 * (size_t)L->nx_size, sizeof *L->nx_cnt);
    L->nx_one = calloc((size_t)L->d, sizeof *L->nx_one);
    rc = L->nx_cnt && L->nx_one ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    L->nx_dsp = L->nx_cnt ? L->nx_cnt + L->nx_size : NULL;
    L->nx_member = L->nx_cnt ? L->nx_cnt + 2 * L->nx_size : NULL;
    for (int r = 0, m = 0; rc == MOE_OK && r < R; r++) /* my node's ranks, in rank order */
        if (L->node_of_rank[r] == me && m < L->nx_size)
            L->nx_member[m++] = r;
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    rc = moe_hier_create(&L->nx_hier, L->comm, L->node_of_rank, L->nx_row, L->nx_row_bytes, msg,
                         msglen);
    if (rc == MOE_OK)
        rc = moe_hier_create(&L->nx_hier_back, L->comm, L->node_of_rank, L->ex.row_back,
                             L->ex.row_back_bytes, msg, msglen);
    return moe_agree(L->comm, rc, msg, msglen);
}

void moe_nodex_destroy(moe_layer *L)
{
    moe_hier_destroy(L->nx_hier);
    moe_hier_destroy(L->nx_hier_back);
    if (L->nx_node != MPI_COMM_NULL)
        MPI_Comm_free(&L->nx_node);
    if (L->nx_row != MPI_DATATYPE_NULL)
        MPI_Type_free(&L->nx_row);
    void *owned[] = {L->nx_leader, L->nx_send_rows, L->nx_node_rows, L->nx_cur, L->nx_seen,
                     L->nx_cnt, L->nx_one, L->nx_send, L->nx_recv, L->nx_expand, L->nx_back_send,
                     L->nx_back_recv, L->nx_gather, L->nx_tok, L->nx_fan};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        free(owned[i]);
}

/* Grow *p to need items of size bytes (never shrinks). */
static int grow(moe_layer *L, void **p, int64_t *cap, int64_t need, int64_t size)
{
    if (need <= *cap)
        return MOE_OK;
    void *q = realloc(*p, (size_t)(need * size));
    if (q == NULL)
        return MOE_ENOMEM;
    L->bytes += (need - *cap) * size;
    *p = q;
    *cap = need;
    return MOE_OK;
}

int64_t moe_nodex_buffer_bytes(const moe_layer *L)
{
    return (L->nx_cap_send + L->nx_cap_recv) * L->nx_row_bytes +
           (L->nx_cap_expand) * L->ex.row_out_bytes +
           (L->nx_cap_back_send + L->nx_cap_back_recv) * L->ex.row_back_bytes +
           L->nx_cap_gather * L->ex.row_back_bytes + L->nx_cap_tok * 8 + L->nx_cap_fan * 8 +
           (int64_t)(moe_hier_staging_bytes(L->nx_hier) + moe_hier_staging_bytes(L->nx_hier_back));
}

int moe_nodex_plan(moe_layer *L, char *msg, size_t msglen)
{
    int R = L->R, A = L->A;
    /* node rows: a token counts once for each node holding one of its served slots */
    for (int b = 0; b < L->n_nodes; b++) {
        L->nx_node_rows[b] = 0;
        L->nx_seen[b] = -1;
    }
    for (int64_t t = 0; t < L->n; t++)
        for (int c = 0; c < A; c++) {
            int64_t i = t * A + c;
            if (!L->flag[i])
                continue;
            int b = L->node_of_rank[L->owner_of[L->phys[i]]];
            if (L->nx_seen[b] != t) {
                L->nx_seen[b] = t;
                L->nx_node_rows[b]++;
            }
        }
    L->nx_n_send = 0;
    for (int r = 0; r < R; r++)
        L->nx_send_rows[r] = 0;
    for (int b = 0; b < L->n_nodes; b++) {
        L->nx_send_rows[L->nx_leader[b]] = L->nx_node_rows[b];
        L->nx_n_send += L->nx_node_rows[b];
    }
    /* the node rows each source sends me, for the two-level plan (its rows all end at leaders) */
    MOE_MPI_CHECK(MPI_Alltoall(L->nx_send_rows, 1, MPI_INT64_T, L->nx_recv_rows, 1, MPI_INT64_T,
                               L->comm),
                  msg, msglen);
    if (L->cfg.predict_only) /* the counts are the plan */
        return MOE_OK;
    int rc = moe_hier_plan_rows(L->nx_hier, L->nx_send_rows, L->nx_recv_rows, msg, msglen);
    if (rc == MOE_OK)
        rc = moe_hier_plan_rows(L->nx_hier_back, L->nx_send_rows, L->nx_recv_rows, msg, msglen);
    if (rc != MOE_OK)
        return rc; /* agreed by the plans */
    /* the leader: node rows arriving, and each member's per-rank rows (its dd_n_recv) */
    int64_t in = 0;
    for (int s = 0; s < R; s++)
        in += L->nx_recv_rows[s];
    L->nx_n_recv = in;
    int mine = L->dd_n_recv > INT_MAX ? -1 : (int)L->dd_n_recv;
    MOE_MPI_CHECK(MPI_Gather(&mine, 1, MPI_INT, L->nx_cnt, 1, MPI_INT, 0, L->nx_node), msg, msglen);
    int64_t expand = 0;
    bool leader = L->rank == L->nx_leader[L->node_of_rank[L->rank]];
    for (int m = 0; leader && m < L->nx_size; m++) {
        if (L->nx_cnt[m] < 0 || expand + L->nx_cnt[m] > INT_MAX)
            rc = moe_fail(MOE_ERANGE, msg, msglen,
                          "the per-node dispatch: a node receives more per-rank rows than one "
                          "MPI_Scatterv can address");
        L->nx_dsp[m] = (int)(expand < INT_MAX ? expand : 0);
        expand += L->nx_cnt[m] > 0 ? L->nx_cnt[m] : 0;
    }
    L->nx_n_expand = expand;
    if (rc == MOE_OK &&
        (grow(L, &L->nx_send, &L->nx_cap_send, L->nx_n_send, L->nx_row_bytes) ||
         grow(L, (void **)&L->nx_tok, &L->nx_cap_tok, L->nx_n_send, 8) ||
         grow(L, &L->nx_back_recv, &L->nx_cap_back_recv, L->nx_n_send, L->ex.row_back_bytes) ||
         grow(L, &L->nx_recv, &L->nx_cap_recv, in, L->nx_row_bytes) ||
         grow(L, (void **)&L->nx_fan, &L->nx_cap_fan, in * L->nx_meta, 8) ||
         grow(L, &L->nx_back_send, &L->nx_cap_back_send, in, L->ex.row_back_bytes) ||
         grow(L, &L->nx_expand, &L->nx_cap_expand, expand, L->ex.row_out_bytes) ||
         grow(L, &L->nx_gather, &L->nx_cap_gather, expand, L->ex.row_back_bytes)))
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the per-node dispatch");
    return rc;
}

void moe_nodex_pack(moe_layer *L)
{
    int R = L->R, M = L->meta_slots, Mn = L->nx_meta;
    int64_t row = L->ex.row_out_bytes, payload = moe_wire_row_bytes(L->wire_out, L->d);
    int64_t *cur = L->nx_cur, *end = L->nx_cur + R;
    int64_t acc = 0;
    for (int r = 0; r < R; r++) { /* the per-rank rows to r: [cur, end), token order */
        cur[r] = acc;
        acc += L->dd_send_rows[r];
        end[r] = acc;
    }
    int64_t i = 0;
    for (int b = 0; b < L->n_nodes; b++)
        for (int64_t t = 0; t < L->n; t++) {
            uint8_t *out = (uint8_t *)L->nx_send + i * L->nx_row_bytes;
            nodex_entry *meta = (nodex_entry *)(out + payload);
            int used = 0;
            for (int r = L->nx_leader[b]; r < R; r++) {
                if (L->node_of_rank[r] != b || cur[r] >= end[r] || L->dd_tok[cur[r]] != t)
                    continue;
                const uint8_t *src = (const uint8_t *)L->dd_send + cur[r] * row;
                if (used == 0)
                    memcpy(out, src, (size_t)payload); /* the payload, already encoded */
                const rank_entry *e = (const rank_entry *)(src + payload);
                for (int m = 0; m < M && e[m].expert >= 0 && used < Mn; m++)
                    meta[used++] = (nodex_entry){.rank = r, .expert = e[m].expert,
                                                 .gate = e[m].gate};
                cur[r]++;
            }
            if (used == 0)
                continue;
            for (int m = used; m < Mn; m++)
                meta[m] = (nodex_entry){.rank = -1, .expert = -1, .gate = 0.0f};
            L->nx_tok[i++] = t;
        }
}

int moe_nodex_dispatch(moe_layer *L, char *msg, size_t msglen)
{
    int rc = moe_hier_exchange(L->nx_hier, L->nx_send, L->nx_recv, false, msg, msglen);
    if (rc != MOE_OK)
        return rc;
    /* the leader expands node rows into its members' per-rank rows, member-major */
    int64_t payload = moe_wire_row_bytes(L->wire_out, L->d), row = L->ex.row_out_bytes;
    int Mn = L->nx_meta, M = L->meta_slots;
    int64_t *placed = L->nx_cur; /* (nx_size <= R) rows placed per member */
    for (int m = 0; m < L->nx_size; m++)
        placed[m] = 0;
    bool bad = false;
    for (int64_t i = 0; i < L->nx_n_recv; i++) {
        const uint8_t *in = (const uint8_t *)L->nx_recv + i * L->nx_row_bytes;
        const nodex_entry *meta = (const nodex_entry *)(in + payload);
        int f = 0;
        for (int j = 0; j < Mn && meta[j].rank >= 0;) {
            int r = meta[j].rank, m = 0;
            while (m < L->nx_size && L->nx_member[m] != r)
                m++;
            if (m == L->nx_size || placed[m] >= L->nx_cnt[m]) {
                bad = true;
                break;
            }
            int64_t pos = L->nx_dsp[m] + placed[m]++;
            uint8_t *out = (uint8_t *)L->nx_expand + pos * row;
            memcpy(out, in, (size_t)payload);
            rank_entry *e = (rank_entry *)(out + payload);
            int used = 0;
            for (; j < Mn && meta[j].rank == r; j++)
                if (used < M)
                    e[used++] = (rank_entry){.expert = meta[j].expert, .gate = meta[j].gate};
            for (; used < M; used++)
                e[used] = (rank_entry){.expert = -1, .gate = 0.0f};
            L->nx_fan[i * Mn + f++] = pos;
        }
        for (; f < Mn; f++)
            L->nx_fan[i * Mn + f] = -1;
    }
    if (bad)
        return moe_fail(MOE_EINVAL, msg, msglen,
                        "internal error: a node row names a rank outside its node or beyond its "
                        "planned rows");
    MOE_MPI_CHECK(MPI_Scatterv(L->nx_expand, L->nx_cnt, L->nx_dsp, L->ex.row_out, L->dd_recv,
                               (int)L->dd_n_recv, L->ex.row_out, 0, L->nx_node),
                  msg, msglen);
    return MOE_OK;
}

int moe_nodex_combine(moe_layer *L, char *msg, size_t msglen)
{
    MOE_MPI_CHECK(MPI_Gatherv(L->dd_back_send, (int)L->dd_n_recv, L->ex.row_back, L->nx_gather,
                              L->nx_cnt, L->nx_dsp, L->ex.row_back, 0, L->nx_node),
                  msg, msglen);
    /* the leader: each node row's results summed over its ranks, in rank order */
    int64_t back = L->ex.row_back_bytes;
    int Mn = L->nx_meta;
    float *sum = L->dd_sum, *one = L->nx_one;
    for (int64_t i = 0; i < L->nx_n_recv; i++) {
        for (int64_t x = 0; x < L->d; x++)
            sum[x] = 0.0f;
        for (int f = 0; f < Mn && L->nx_fan[i * Mn + f] >= 0; f++) {
            moe_wire_decode_rows(one, (const uint8_t *)L->nx_gather + L->nx_fan[i * Mn + f] * back,
                                 1, L->d, L->wire_back);
            for (int64_t x = 0; x < L->d; x++)
                sum[x] += one[x];
        }
        moe_wire_encode_rows((uint8_t *)L->nx_back_send + i * back, sum, NULL, 1, L->d,
                             L->wire_back);
    }
    return moe_hier_exchange(L->nx_hier_back, L->nx_back_send, L->nx_back_recv, true, msg, msglen);
}

void moe_nodex_combine_y(moe_layer *L, float *y)
{
    /* node-major: a token's contributions are added in node order */
    moe_dedup_add_back(L, y, L->nx_back_recv, L->nx_tok, L->nx_n_send);
}
