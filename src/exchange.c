#include "moesim/exchange.h"

#include "moesim/config.h"
#include "moesim/error.h"
#include "moesim/tokens.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int moe_mpi_fail(int mpi_rc, const char *call, const char *file, int line, char *msg, size_t msglen)
{
    char text[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(mpi_rc, text, &len);
    return moe_fail(MOE_EMPI, msg, msglen, "%s failed at %s:%d: %s", call, file, line, text);
}

int moe_agree(MPI_Comm comm, int rc, char *msg, size_t msglen)
{
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    /* The lowest failing rank speaks; ranks that succeeded offer nranks. */
    int mine = rc != MOE_OK ? rank : nranks, first = nranks;
    if (MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
        return moe_fail(MOE_EMPI, msg, msglen, "MPI_Allreduce failed while agreeing on an error");
    if (first == nranks)
        return MOE_OK;
    int code = rc;
    char text[1024];
    snprintf(text, sizeof text, "%s", msg != NULL ? msg : "");
    if (MPI_Bcast(&code, 1, MPI_INT, first, comm) != MPI_SUCCESS ||
        MPI_Bcast(text, (int)sizeof text, MPI_CHAR, first, comm) != MPI_SUCCESS)
        return moe_fail(MOE_EMPI, msg, msglen, "MPI_Bcast failed while agreeing on an error");
    if (first != 0 && nranks > 1)
        return moe_fail(code, msg, msglen, "rank %d: %s", first, text);
    return moe_fail(code, msg, msglen, "%s", text);
}

int moe_exchange_init(moe_exchange *ex, MPI_Comm comm, int64_t d, int E, char *msg, size_t msglen)
{
    memset(ex, 0, sizeof *ex);
    ex->comm = comm;
    ex->row = MPI_DATATYPE_NULL;
    MOE_MPI_CHECK(MPI_Comm_rank(comm, &ex->rank), msg, msglen);
    MOE_MPI_CHECK(MPI_Comm_size(comm, &ex->nranks), msg, msglen);
    int R = ex->nranks;
    int *all = calloc((size_t)R * 8, sizeof(int));
    if (all == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for exchange counts");
    ex->cnt_scounts = all;
    ex->cnt_sdispls = all + R;
    ex->cnt_rcounts = all + 2 * R;
    ex->cnt_rdispls = all + 3 * R;
    ex->scounts = all + 4 * R;
    ex->sdispls = all + 5 * R;
    ex->rcounts = all + 6 * R;
    ex->rdispls = all + 7 * R;
    int64_t first, n_le;
    moe_partition(E, R, ex->rank, &first, &n_le);
    for (int r = 0; r < R; r++) {
        int64_t f, n;
        moe_partition(E, R, r, &f, &n);
        ex->cnt_scounts[r] = (int)n;   /* my counts for r's experts */
        ex->cnt_sdispls[r] = (int)f;
        ex->cnt_rcounts[r] = (int)n_le; /* r's counts for my experts */
        ex->cnt_rdispls[r] = (int)(r * n_le);
    }
    ex->row_bytes = d * (int64_t)sizeof(float);
    MOE_MPI_CHECK(MPI_Type_contiguous((int)d, MPI_FLOAT, &ex->row), msg, msglen);
    MOE_MPI_CHECK(MPI_Type_commit(&ex->row), msg, msglen);
    ex->row_out = ex->row_back = ex->row;
    ex->row_out_bytes = ex->row_back_bytes = ex->row_bytes;
    return MOE_OK;
}

/* A contiguous row of `bytes` bytes, or the fp32 row itself. */
static int wire_type(moe_exchange *ex, int64_t bytes, MPI_Datatype *out, char *msg, size_t msglen)
{
    if (bytes == ex->row_bytes) {
        *out = ex->row;
        return MOE_OK;
    }
    MOE_MPI_CHECK(MPI_Type_contiguous((int)bytes, MPI_BYTE, out), msg, msglen);
    MOE_MPI_CHECK(MPI_Type_commit(out), msg, msglen);
    return MOE_OK;
}

int moe_exchange_set_wire(moe_exchange *ex, int64_t out_bytes, int64_t back_bytes, char *msg,
                          size_t msglen)
{
    int rc = wire_type(ex, out_bytes, &ex->row_out, msg, msglen);
    if (rc == MOE_OK)
        rc = wire_type(ex, back_bytes, &ex->row_back, msg, msglen);
    ex->row_out_bytes = out_bytes;
    ex->row_back_bytes = back_bytes;
    return rc;
}

void moe_exchange_free(moe_exchange *ex)
{
    /* the block types first: the ones not built are the row itself */
    for (int r = 0; r < ex->nranks; r++) {
        if (ex->blk_types != NULL && ex->blk_types[r] != ex->row &&
            ex->blk_types[r] != MPI_DATATYPE_NULL)
            MPI_Type_free(&ex->blk_types[r]);
        if (ex->blk_send != NULL && ex->blk_send[r] != ex->row &&
            ex->blk_send[r] != MPI_DATATYPE_NULL)
            MPI_Type_free(&ex->blk_send[r]);
    }
    free(ex->blk_send);
    if (ex->row_out != ex->row && ex->row_out != MPI_DATATYPE_NULL && ex->row_out != 0)
        MPI_Type_free(&ex->row_out);
    if (ex->row_back != ex->row && ex->row_back != MPI_DATATYPE_NULL && ex->row_back != 0)
        MPI_Type_free(&ex->row_back);
    if (ex->row != MPI_DATATYPE_NULL && ex->row != 0)
        MPI_Type_free(&ex->row);
    free(ex->cnt_scounts);
    free(ex->blk_types);
    free(ex->blk_rows);
    free(ex->blk_w);
    free(ex->blk_s);
    free(ex->self_src);
    free(ex->self_dst);
    memset(ex, 0, sizeof *ex);
    ex->row = MPI_DATATYPE_NULL;
}

int moe_exchange_counts(moe_exchange *ex, const int64_t *send, int64_t *recv, bool reverse,
                        char *msg, size_t msglen)
{
    if (!reverse)
        MOE_MPI_CHECK(MPI_Alltoallv(send, ex->cnt_scounts, ex->cnt_sdispls, MPI_INT64_T, recv,
                                    ex->cnt_rcounts, ex->cnt_rdispls, MPI_INT64_T, ex->comm),
                      msg, msglen);
    else
        MOE_MPI_CHECK(MPI_Alltoallv(send, ex->cnt_rcounts, ex->cnt_rdispls, MPI_INT64_T, recv,
                                    ex->cnt_scounts, ex->cnt_sdispls, MPI_INT64_T, ex->comm),
                      msg, msglen);
    return MOE_OK;
}

/* counts and displacements as ints, refusing totals that do not fit */
static int to_int_counts(int *counts, int *displs, const int64_t *rows, int R, const char *what,
                         char *msg, size_t msglen)
{
    int64_t total = 0;
    for (int r = 0; r < R; r++) {
        if (total > INT_MAX || rows[r] > INT_MAX - total)
            return moe_fail(MOE_ERANGE, msg, msglen,
                            "%s more than %d rows on one rank: MPI counts cannot address them; use "
                            "more ranks or fewer tokens",
                            what, INT_MAX);
        counts[r] = (int)rows[r];
        displs[r] = (int)total;
        total += rows[r];
    }
    return MOE_OK;
}

int moe_exchange_set_rows(moe_exchange *ex, const int64_t *send_rows, const int64_t *recv_rows,
                          char *msg, size_t msglen)
{
    int rc = to_int_counts(ex->scounts, ex->sdispls, send_rows, ex->nranks, "sending", msg, msglen);
    if (rc == MOE_OK)
        rc = to_int_counts(ex->rcounts, ex->rdispls, recv_rows, ex->nranks, "receiving", msg, msglen);
    return rc;
}

int moe_exchange_rows(moe_exchange *ex, const void *send, void *recv, bool reverse, bool fp32,
                      char *msg, size_t msglen)
{
    MPI_Datatype t = fp32 ? ex->row : reverse ? ex->row_back : ex->row_out;
    if (!reverse)
        MOE_MPI_CHECK(MPI_Alltoallv(send, ex->scounts, ex->sdispls, t, recv, ex->rcounts,
                                    ex->rdispls, t, ex->comm),
                      msg, msglen);
    else
        MOE_MPI_CHECK(MPI_Alltoallv(send, ex->rcounts, ex->rdispls, t, recv, ex->scounts,
                                    ex->sdispls, t, ex->comm),
                      msg, msglen);
    return MOE_OK;
}

int moe_exchange_blocks_init(moe_exchange *ex, int kind, int slots_max, char *msg, size_t msglen)
{
    int R = ex->nranks;
    /* alltoallw-slots: alltoallw's dispatch, slots' combine */
    ex->blk_back_slots = ex->blk_both = kind == MOE_REGROUP_W_SLOTS;
    ex->blk_kind = ex->blk_both ? MOE_REGROUP_W : kind;
    ex->blk_slots = slots_max;
    if (ex->blk_kind == MOE_REGROUP_W) {
        ex->blk_types = malloc((size_t)R * sizeof *ex->blk_types);
        ex->blk_rows = malloc((size_t)R * sizeof *ex->blk_rows);
        ex->blk_w = calloc((size_t)R * 5, sizeof *ex->blk_w);
        if (ex->blk_types == NULL || ex->blk_rows == NULL || ex->blk_w == NULL)
            return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the block exchange");
        for (int r = 0; r < R; r++)
            ex->blk_types[r] = ex->blk_rows[r] = ex->row;
    }
    if (ex->blk_kind == MOE_REGROUP_SLOTS || ex->blk_both) {
        ex->blk_s = calloc((size_t)R * 4 * (size_t)(slots_max > 0 ? slots_max : 1),
                           sizeof *ex->blk_s);
        if (ex->blk_s == NULL)
            return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the block exchange");
    }
    return MOE_OK;
}

/* room for n rows a rank sends itself */
static int self_reserve(moe_exchange *ex, int64_t n, char *msg, size_t msglen)
{
    if (n <= ex->self_cap)
        return MOE_OK;
    int64_t *src = realloc(ex->self_src, (size_t)n * sizeof *src);
    if (src != NULL)
        ex->self_src = src;
    int64_t *dst = src != NULL ? realloc(ex->self_dst, (size_t)n * sizeof *dst) : NULL;
    if (dst == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the block exchange");
    ex->self_dst = dst;
    ex->self_cap = n;
    return MOE_OK;
}

/* alltoallw: one datatype per source, its rows' runs at their places in the blocks; this rank's
 * own rows as a list of block rows instead (self_dst), sent from the send order's (self_src) */
static int plan_alltoallw(moe_exchange *ex, const int64_t *arrive, int n_ls,
                          const int64_t *block_start, int64_t *placed, char *msg, size_t msglen)
{
    int R = ex->nranks, *bw = ex->blk_w;
    for (int r = 0; r < R; r++) {
        int64_t bytes = (int64_t)ex->sdispls[r] * ex->row_bytes;
        if (bytes > INT_MAX)
            return moe_fail(MOE_ERANGE, msg, msglen,
                            "--regroup alltoallw: rows beyond %d bytes of the send buffer cannot "
                            "be addressed by MPI_Alltoallw's int displacements; use --regroup "
                            "slots",
                            INT_MAX);
        bw[r] = r == ex->rank ? 0 : ex->scounts[r];
        bw[R + r] = (int)bytes;
    }
    int me = ex->rank;
    int64_t n_self = 0;
    for (int j = 0; j < n_ls; j++)
        n_self += arrive[(int64_t)me * n_ls + j];
    if (self_reserve(ex, n_self, msg, msglen) != MOE_OK)
        return MOE_ENOMEM;
    ex->n_self = n_self;
    for (int64_t q = 0; q < n_self; q++) /* the send order's rows, until plan_send says otherwise */
        ex->self_src[q] = (int64_t)ex->sdispls[me] + q;
    int *len = malloc((size_t)(n_ls > 0 ? n_ls : 1) * sizeof *len);
    MPI_Aint *at = malloc((size_t)(n_ls > 0 ? n_ls : 1) * sizeof *at);
    if (len == NULL || at == NULL) {
        free(len);
        free(at);
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the block exchange");
    }
    int rc = MOE_OK;
    for (int s = 0; s < R && rc == MOE_OK; s++) {
        if (ex->blk_types[s] != ex->row)
            MPI_Type_free(&ex->blk_types[s]);
        ex->blk_types[s] = ex->row;
        int runs = 0;
        if (s == me) { /* in order: the q-th row sent to itself is the q-th it receives */
            int64_t q = 0;
            for (int j = 0; j < n_ls; j++) {
                int64_t rows = arrive[(int64_t)s * n_ls + j];
                for (int64_t i = 0; i < rows; i++)
                    ex->self_dst[q++] = block_start[j] + placed[j] + i;
                placed[j] += rows;
            }
            bw[2 * R + s] = bw[3 * R + s] = 0;
            continue;
        }
        for (int j = 0; j < n_ls; j++) {
            int64_t rows = arrive[(int64_t)s * n_ls + j];
            if (rows > 0) {
                len[runs] = (int)rows;
                at[runs++] = (MPI_Aint)((block_start[j] + placed[j]) * ex->row_bytes);
            }
            placed[j] += rows;
        }
        bw[2 * R + s] = runs > 0;
        bw[3 * R + s] = 0;
        if (runs == 0)
            continue;
        MPI_Datatype t;
        int mrc = MPI_Type_create_hindexed(runs, len, at, ex->row, &t);
        if (mrc == MPI_SUCCESS && (mrc = MPI_Type_commit(&t)) == MPI_SUCCESS)
            ex->blk_types[s] = t;
        if (mrc != MPI_SUCCESS)
            rc = moe_mpi_fail(mrc, "MPI_Type_create_hindexed", __FILE__, __LINE__, msg, msglen);
    }
    free(len);
    free(at);
    return rc;
}

/* slots: exchange j carries every rank's j-th slot; rows in int, as moe_exchange_set_rows
 * checked their totals. placed (n_ls) starts at zero. */
static int plan_slots(moe_exchange *ex, const int64_t *slot_rows, const int *first_slot,
                      const int64_t *arrive, int n_ls, const int64_t *block_start, int64_t *placed,
                      char *msg, size_t msglen)
{
    int R = ex->nranks;
    int64_t *at = calloc((size_t)R, sizeof *at);
    if (at == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the block exchange");
    int64_t off = 0;
    for (int r = 0; r < R; r++) { /* where rank r's first slot starts in the send order */
        at[r] = off;
        for (int p = first_slot[r]; p < first_slot[r + 1]; p++)
            off += slot_rows[p];
    }
    for (int j = 0; j < ex->blk_slots; j++) {
        int *sc = ex->blk_s + (int64_t)j * 4 * R, *sd = sc + R, *rcn = sc + 2 * R, *rd = sc + 3 * R;
        for (int r = 0; r < R; r++) {
            int p = first_slot[r] + j;
            int64_t rows = p < first_slot[r + 1] ? slot_rows[p] : 0;
            sc[r] = (int)rows;
            sd[r] = (int)at[r];
            at[r] += rows;
        }
        for (int s = 0; s < R; s++) {
            int64_t rows = j < n_ls ? arrive[(int64_t)s * n_ls + j] : 0;
            rcn[s] = (int)rows;
            rd[s] = j < n_ls ? (int)(block_start[j] + placed[j]) : 0;
            if (j < n_ls)
                placed[j] += rows;
        }
    }
    free(at);
    return MOE_OK;
}

int moe_exchange_blocks_plan(moe_exchange *ex, const int64_t *slot_rows, const int *first_slot,
                             const int64_t *arrive, int n_ls, const int64_t *block_start,
                             char *msg, size_t msglen)
{
    size_t n = (size_t)(n_ls > 0 ? n_ls : 1);
    int64_t *placed = calloc(n, sizeof *placed);
    if (placed == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the block exchange");
    int rc = MOE_OK;
    if (ex->blk_kind == MOE_REGROUP_W)
        rc = plan_alltoallw(ex, arrive, n_ls, block_start, placed, msg, msglen);
    /* the combine of alltoallw-slots: the same blocks, one Alltoallv per slot */
    if (rc == MOE_OK && (ex->blk_kind == MOE_REGROUP_SLOTS || ex->blk_both)) {
        memset(placed, 0, n * sizeof *placed);
        rc = plan_slots(ex, slot_rows, first_slot, arrive, n_ls, block_start, placed, msg, msglen);
    }
    free(placed);
    return rc;
}

int moe_exchange_blocks_plan_send(moe_exchange *ex, const int64_t *row_of, const int64_t *send_rows,
                                  char *msg, size_t msglen)
{
    int R = ex->nranks;
    if (ex->blk_send == NULL) {
        ex->blk_send = malloc((size_t)R * sizeof *ex->blk_send);
        if (ex->blk_send == NULL)
            return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the block exchange");
        for (int r = 0; r < R; r++)
            ex->blk_send[r] = ex->row;
    }
    int64_t most = 0;
    for (int r = 0; r < R; r++)
        most = send_rows[r] > most ? send_rows[r] : most;
    MPI_Aint *at = malloc((size_t)(most > 0 ? most : 1) * sizeof *at);
    if (at == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the block exchange");
    int rc = MOE_OK;
    int64_t i = 0;
    for (int r = 0; r < R && rc == MOE_OK; r++) {
        if (ex->blk_send[r] != ex->row)
            MPI_Type_free(&ex->blk_send[r]);
        ex->blk_send[r] = ex->row;
        if (r == ex->rank) { /* copied by moe_exchange_blocks, outside MPI */
            for (int64_t q = 0; q < send_rows[r] && q < ex->n_self; q++)
                ex->self_src[q] = row_of[i + q];
            i += send_rows[r];
            ex->blk_w[4 * R + r] = 0;
            continue;
        }
        for (int64_t j = 0; j < send_rows[r]; j++)
            at[j] = (MPI_Aint)(row_of[i + j] * ex->row_bytes);
        i += send_rows[r];
        ex->blk_w[4 * R + r] = send_rows[r] > 0;
        if (send_rows[r] == 0)
            continue;
        MPI_Datatype t;
        int mrc = MPI_Type_create_hindexed_block((int)send_rows[r], 1, at, ex->row, &t);
        if (mrc == MPI_SUCCESS && (mrc = MPI_Type_commit(&t)) == MPI_SUCCESS)
            ex->blk_send[r] = t;
        if (mrc != MPI_SUCCESS)
            rc = moe_mpi_fail(mrc, "MPI_Type_create_hindexed_block", __FILE__, __LINE__, msg,
                              msglen);
    }
    free(at);
    return rc;
}

int moe_exchange_blocks(moe_exchange *ex, const void *send, void *recv, bool reverse, char *msg,
                        size_t msglen)
{
    int R = ex->nranks;
    if (ex->blk_kind == MOE_REGROUP_W && !(reverse && ex->blk_back_slots)) {
        int *cnt = ex->blk_w, *dsp = cnt + R, *one = cnt + 2 * R, *zero = cnt + 3 * R;
        if (!reverse && ex->blk_send != NULL) /* rows gathered from the token states by MPI */
            MOE_MPI_CHECK(MPI_Alltoallw(send, cnt + 4 * R, zero, ex->blk_send, recv, one, zero,
                                        ex->blk_types, ex->comm),
                          msg, msglen);
        else if (!reverse)
            MOE_MPI_CHECK(MPI_Alltoallw(send, cnt, dsp, ex->blk_rows, recv, one, zero,
                                        ex->blk_types, ex->comm),
                          msg, msglen);
        else
            MOE_MPI_CHECK(MPI_Alltoallw(send, one, zero, ex->blk_types, recv, cnt, dsp,
                                        ex->blk_rows, ex->comm),
                          msg, msglen);
        if (!reverse) { /* this rank's own rows; the combine leaves them in the blocks */
            size_t rb = (size_t)ex->row_bytes;
            const char *from = send;
            char *to = recv;
            for (int64_t q = 0; q < ex->n_self; q++)
                memcpy(to + (size_t)ex->self_dst[q] * rb, from + (size_t)ex->self_src[q] * rb, rb);
        }
        return MOE_OK;
    }
    for (int j = 0; j < ex->blk_slots; j++) {
        int *sc = ex->blk_s + (int64_t)j * 4 * R, *sd = sc + R, *rcn = sc + 2 * R, *rd = sc + 3 * R;
        if (!reverse)
            MOE_MPI_CHECK(MPI_Alltoallv(send, sc, sd, ex->row, recv, rcn, rd, ex->row, ex->comm),
                          msg, msglen);
        else
            MOE_MPI_CHECK(MPI_Alltoallv(send, rcn, rd, ex->row, recv, sc, sd, ex->row, ex->comm),
                          msg, msglen);
    }
    return MOE_OK;
}

const int64_t *moe_exchange_self_rows(const moe_exchange *ex, int64_t *lo, int64_t *n)
{
    bool left = ex->blk_kind == MOE_REGROUP_W && !ex->blk_back_slots && ex->n_self > 0;
    *lo = left ? ex->sdispls[ex->rank] : 0;
    *n = left ? ex->n_self : 0;
    return left ? ex->self_dst : NULL;
}
