/* Memory: what a rank will allocate, estimated from the configuration before anything large is
 * allocated, with overflow-checked arithmetic; and the --max-memory budget. Pure: no MPI.
 *
 * Sizes saturate at INT64_MAX instead of wrapping, so a configuration asking for more than any
 * machine has is refused, never passed as a small number. */
#ifndef MOESIM_MEMORY_H
#define MOESIM_MEMORY_H

#include "moesim/config.h"

#include <stdbool.h>
#include <stdint.h>

#define MOE_BYTES_MAX INT64_MAX

/* a * b and a + b for non-negative sizes, MOE_BYTES_MAX when the result does not fit. */
int64_t moe_bytes_mul(int64_t a, int64_t b);
int64_t moe_bytes_add(int64_t a, int64_t b);

/* What one rank allocates, in bytes, by purpose. */
typedef struct moe_mem_estimate {
    int64_t tokens;      /* h and y: 2 n d floats (h alone under --predict-only)               */
    int64_t router;      /* W (E, d), bias (E), probabilities (n, E), replayed logits (n, E)    */
    int64_t assignments; /* per (token, choice): expert, gate, flag, slot: 17 bytes             */
    int64_t experts;     /* W1 and W2 of the rank's experts: 2 n_le f d floats                  */
    int64_t exchange;    /* send, receive, raw-baseline, expert input, activation, output rows  */
    int64_t results;     /* rank 0: the (R, R) matrices and per-expert arrays of the results    */
    int64_t dumps;       /* rank 0: --dump-output and --dump-routing gathered                   */
    int64_t counts;      /* O(R + E) count arrays and the (R, R) count matrix                   */
    int64_t staging;     /* --a2a hierarchical: the leaders' staging, known once planned        */
    int64_t protocol;    /* known once routed: the owners' capacity keys (keyed policies, expert
                          * choice) and the rows of --dispatch per-rank with their fan-out map  */
    int64_t training;    /* --mode fwd-bwd, train: the teacher (router and T experts), the
                          * targets, output and input gradients (3 n d), saved logits and their
                          * gradient (2 n E), the gates' gradients (n k), the weights' gradients and the optimizer's state
                          * (train: 1 or 2 floats a weight, router and experts)                 */
    int64_t total;
} moe_mem_estimate;

/* Rows of h --predict-only holds at a time: about 64 MiB of them, at least 1, at most n. */
int64_t moe_predict_chunk_rows(int64_t n, int64_t d);

/* Everything but the exchange, for rank `rank` of R holding n tokens and n_le experts. Under
 * --predict-only the experts are not allocated and count zero. */
void moe_memory_fixed(moe_mem_estimate *m, const moe_config *cfg, int R, int rank, int64_t n,
                      int64_t n_le);

/* The exchange buffers once their row counts are known: n_send rows leave this rank, n_recv
 * arrive, n_staged of them through a staging buffer (n_recv with --regroup copy, else 0: they land
 * in the experts' blocks), rows_x are computed (n_recv, or the full capacity when padding);
 * updates total. Under --predict-only nothing is allocated. */
void moe_memory_exchange(moe_mem_estimate *m, const moe_config *cfg, int64_t n_send,
                         int64_t n_staged, int64_t n_recv, int64_t rows_x);

/* The exchange at the mean load of a balanced router (every rank sends and receives n k rows,
 * fewer if the capacity cannot hold them): what any routing needs at least on average, so a run
 * that cannot fit even then is refused before routing. */
void moe_memory_exchange_balanced(moe_mem_estimate *m, const moe_config *cfg, int R, int64_t n,
                                  int64_t n_le);

/* --max-memory: "123", "64K", "1.5G", "2GiB", "1T" (powers of 1024; K, M, G, T with an optional
 * "iB" or "B"), or a percentage of the node's memory, "50%". Fills *bytes, or *percent (> 0) with
 * *bytes = 0 for the percentage form. MOE_EUSAGE on anything else, zero, or over 2^62 bytes. */
int moe_memory_parse_size(const char *text, int64_t *bytes, double *percent, char *msg,
                          size_t msglen);

/* "1.5 GiB": bytes in the largest binary unit that keeps the number >= 1. */
void moe_memory_format(char *buf, size_t len, int64_t bytes);

#endif
