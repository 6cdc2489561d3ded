/* Exchange: the MPI half of dispatch and combine, and the agreement on errors. This module and the
 * driver are the only ones that call MPI.
 *
 * Rows travel as one derived datatype (d contiguous floats), so counts and displacements are in rows
 * and stay within int for any d; a rank whose rows would still not fit an int is refused before the
 * exchange (moe_exchange_set_rows). */
#ifndef MOESIM_EXCHANGE_H
#define MOESIM_EXCHANGE_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Check an MPI call (communicators are set to MPI_ERRORS_RETURN); on failure fill msg with the call,
 * file:line and MPI's error string, and return MOE_EMPI from the enclosing function. */
#define MOE_MPI_CHECK(call, msg, msglen)                                              \
    do {                                                                              \
        int moe_mpi_rc_ = (call);                                                     \
        if (moe_mpi_rc_ != MPI_SUCCESS)                                               \
            return moe_mpi_fail(moe_mpi_rc_, #call, __FILE__, __LINE__, msg, msglen); \
    } while (0)

int moe_mpi_fail(int mpi_rc, const char *call, const char *file, int line, char *msg, size_t msglen);

/* Collective: every rank passes its own outcome; every rank returns the same code, that of the
 * lowest failing rank (MOE_OK if none failed). On rank 0, msg then holds that rank's message. Used
 * after every fallible step so that no rank enters a collective another rank has left. */
int moe_agree(MPI_Comm comm, int rc, char *msg, size_t msglen);

typedef struct moe_exchange {
    MPI_Comm comm;
    int rank, nranks;
    MPI_Datatype row;        /* d contiguous floats */
    int64_t row_bytes;
    /* rows as they travel (--wire, --wire-combine): one encoded row out (dispatch) and back
     * (combine); the fp32 row above when the format is fp32 */
    MPI_Datatype row_out, row_back;
    int64_t row_out_bytes, row_back_bytes;
    /* expert-count exchange: per-expert counts to owners and back (fixed by the partition) */
    int *cnt_scounts, *cnt_sdispls, *cnt_rcounts, *cnt_rdispls;
    /* row exchange, in rows: dispatch direction; combine swaps send and receive */
    int *scounts, *sdispls, *rcounts, *rdispls;
    /* rows straight into the experts' blocks and back out of them (--regroup alltoallw, slots,
     * alltoallw-slots): blk_kind is MOE_REGROUP_W or MOE_REGROUP_SLOTS once
     * moe_exchange_blocks_init ran, else 0. blk_both: alltoallw-slots, both plans kept
     * (blk_kind MOE_REGROUP_W, blk_s planned too); blk_back_slots: the combine runs slots'
     * (settable while blk_both: --regroup auto probes both) */
    int blk_kind, blk_slots;
    bool blk_both, blk_back_slots;
    MPI_Datatype *blk_types; /* (R) alltoallw: each source's rows scattered into the blocks */
    MPI_Datatype *blk_rows;  /* (R) alltoallw: the fp32 row, for the contiguous side */
    int *blk_w;              /* (5R) alltoallw: rows and byte offsets of the contiguous side;
                              * 1 or 0 and 0 for the block side; 1 or 0 for the send types */
    int *blk_s;              /* (blk_slots, 4R) slots: scounts, sdispls, rcounts, rdispls in rows */
    MPI_Datatype *blk_send;  /* (R) alltoallw with moe_exchange_blocks_plan_send: the rows for
                              * each destination gathered straight from the token states; NULL
                              * when the dispatch sends a packed buffer */
    /* alltoallw: the rows a rank sends itself never enter MPI (its own datatypes would cost a
     * pack and an unpack through MPI's convertor). The dispatch copies them, self_src[q] of the
     * send (a token state's row, or the send order's) to row self_dst[q] of the blocks, q <
     * n_self; the combine leaves them in the blocks, where the unpack reads them
     * (moe_exchange_self_rows). self_cap: the arrays' length. */
    int64_t n_self, self_cap;
    int64_t *self_src, *self_dst;
} moe_exchange;

/* Set up for rows of d floats and E experts in contiguous blocks over the ranks of comm. */
int moe_exchange_init(moe_exchange *ex, MPI_Comm comm, int64_t d, int E, char *msg, size_t msglen);
/* The travelling rows: out_bytes per dispatched row, back_bytes per combined row (the fp32 row
 * when equal to row_bytes). Not collective. */
int moe_exchange_set_wire(moe_exchange *ex, int64_t out_bytes, int64_t back_bytes, char *msg,
                          size_t msglen);

/* Release; accepts a zeroed struct. */
void moe_exchange_free(moe_exchange *ex);

/* Per-expert counts to owners: send (E), one value per expert; recv (R, n_le): recv[s][le] is what
 * rank s sent for local expert le. reverse = true does the opposite direction: send (R, n_le) from
 * the owner, recv (E) at each source. */
int moe_exchange_counts(moe_exchange *ex, const int64_t *send, int64_t *recv, bool reverse,
                        char *msg, size_t msglen);

/* Row counts of the dispatch direction: send_rows[dst] rows leave for dst, recv_rows[src] rows
 * arrive from src. Fails with MOE_ERANGE if a total does not fit an int. Not collective. */
int moe_exchange_set_rows(moe_exchange *ex, const int64_t *send_rows, const int64_t *recv_rows,
                          char *msg, size_t msglen);

/* MPI_Alltoallv of rows with the counts of moe_exchange_set_rows; reverse = true is the combine
 * direction (what was received is sent back). Rows as they travel: row_out forward, row_back in
 * reverse; with fp32 true, the fp32 row either way (the reference exchange of --wire). */
int moe_exchange_rows(moe_exchange *ex, const void *send, void *recv, bool reverse, bool fp32,
                      char *msg, size_t msglen);

/* Rows straight into the experts' blocks (--regroup alltoallw or slots; kind is one of the two):
 * arrays for slots_max local-expert slots on the busiest rank. Not collective. */
int moe_exchange_blocks_init(moe_exchange *ex, int kind, int slots_max, char *msg, size_t msglen);
/* The plan of one step's rows, after moe_exchange_set_rows. Sender side: slot_rows[p] rows leave
 * for slot p, in slot order (slots rank-major, first_slot (R + 1) the first slot of each rank).
 * Owner side: arrive (R, n_ls) the rows each source sends each of my n_ls slots, slot j's block
 * starting at row block_start[j]; each source's rows are placed in source order. Not collective. */
int moe_exchange_blocks_plan(moe_exchange *ex, const int64_t *slot_rows, const int *first_slot,
                             const int64_t *arrive, int n_ls, const int64_t *block_start,
                             char *msg, size_t msglen);
/* Alltoallw only: the dispatch sends without a pack, every row straight from the token states:
 * row i of the send order (slot order, rank-major) is row_of[i] of them, send_rows[r] rows for
 * rank r. After moe_exchange_blocks_plan; replaces the previous step's types. Not collective. */
int moe_exchange_blocks_plan_send(moe_exchange *ex, const int64_t *row_of, const int64_t *send_rows,
                                  char *msg, size_t msglen);
/* The fp32 rows of dispatch from send (slot order; the token states themselves after
 * moe_exchange_blocks_plan_send) straight into the blocks (recv); reverse = true sends the blocks
 * (send) back into the slot order (recv). Under alltoallw the combine does not deliver the rows a
 * rank sent itself: they stay in the blocks (moe_exchange_self_rows). Collective. */
int moe_exchange_blocks(moe_exchange *ex, const void *send, void *recv, bool reverse, char *msg,
                        size_t msglen);
/* After the combine of moe_exchange_blocks: NULL when it delivered every row (slots); else the
 * rows [*lo, *lo + *n) of the slot order that it left in the blocks, row *lo + q being block row
 * returned[q]. */
const int64_t *moe_exchange_self_rows(const moe_exchange *ex, int64_t *lo, int64_t *n);

#endif
