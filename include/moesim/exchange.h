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

#endif
