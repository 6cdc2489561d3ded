/* Combine, the pure half: the owner puts expert outputs back in the order it received the rows, and
 * the source adds gate-weighted results to the residual. The MPI half is in exchange.h.
 * y_t = h_t + sum over served assignments c of token t of gate[t][c] * out(t, c) (Switch §2.2: a token
 * whose assignments were all dropped leaves as exactly h_t). */
#ifndef MOESIM_COMBINE_H
#define MOESIM_COMBINE_H

#include <stdint.h>

/* Inverse of moe_regroup_to_experts: send (source-major, experts inside) from y (expert-major,
 * expert le starting at row y_start[le]). placed is scratch of n_le. */
void moe_regroup_from_experts(float *send, const float *y, const int64_t *counts, int n_src,
                              int n_le, const int64_t *y_start, int64_t d, int64_t *placed);

/* out (n, d) = h, then out[slot[i] / k] += gate[slot[i]] * recv[i] for i in [0, n_send), in that
 * order (expert id order for each token, so the sum is the same whatever the rank count).
 * out may alias h. gate is (n, k). */
void moe_combine_rows(float *out, const float *h, const float *recv, const int64_t *slot,
                      const float *gate, int64_t n, int64_t n_send, int k, int64_t d);

/* The unpack phase: the same sums in one sweep over out, for each token out_t = h_t + its served
 * assignments' gate * recv rows in increasing expert id, each row of out written while it is in
 * cache, instead of a copy of h and then k scattered read-modify-writes. Rows may arrive in any
 * order (a placement sends them by slot): the sums are those moe_combine_rows makes with rows
 * sorted by expert, bit for bit, so y does not depend on where experts live. out may alias h;
 * pos is scratch of n * k. */
void moe_combine_rows_one_pass(float *out, const float *h, const float *recv, const int64_t *slot,
                               const float *gate, const int32_t *expert, int64_t n,
                               int64_t n_send, int k, int64_t d, int64_t *pos);

/* Rows of the received order that never left this rank: rows [lo, lo + n) are at base + at[q] * d,
 * q = row - lo, instead of in recv (the combine leaves a rank's own rows in the experts' blocks:
 * moe_exchange_self_rows). */
typedef struct moe_rows_here {
    const float *base;
    const int64_t *at;
    int64_t lo, n;
} moe_rows_here;

/* moe_combine_rows_one_pass, the rows of here (NULL: none) read where they are: the same floats as
 * with those rows copied into recv. */
void moe_combine_rows_one_pass_here(float *out, const float *h, const float *recv,
                                    const moe_rows_here *here, const int64_t *slot,
                                    const float *gate, const int32_t *expert, int64_t n,
                                    int64_t n_send, int k, int64_t d, int64_t *pos);

#endif
