/* Tokens: how the global batch is split over ranks, and the synthetic token states. */
#ifndef MOESIM_TOKENS_H
#define MOESIM_TOKENS_H

#include <stddef.h>
#include <stdint.h>

/* Block partition of n items over `parts`: part i holds [*first, *first + *count); the first
 * n mod parts parts hold one more item. Used for tokens over ranks and experts over ranks. */
void moe_partition(int64_t n, int parts, int index, int64_t *first, int64_t *count);

/* The part that holds item `item` under moe_partition(n, parts, ...). */
int moe_partition_owner(int64_t n, int parts, int64_t item);

/* --tokens-per-rank LIST: the comma list of `parts` counts (integers >= 0) summing to n, into
 * out (parts values; NULL: only checked). MOE_OK, or MOE_EUSAGE with a message naming the problem
 * (a count that is not an integer, too few or too many, a sum other than n). Pure. */
int moe_tokens_per_rank_parse(const char *list, int parts, int64_t n, int64_t *out, char *msg,
                              size_t msglen);
/* --workload source-ragged without a list: part r holds a share of n proportional to r + 1,
 * out[r] = c(r + 1) - c(r) with c(m) = floor(n m (m + 1) / (parts (parts + 1))). */
void moe_tokens_ragged(int64_t *out, int64_t n, int parts);
/* Part i's block of n items: moe_partition, or with per_part (parts counts) the blocks of those
 * sizes in order. */
void moe_token_block(const int64_t *per_part, int64_t n, int parts, int index, int64_t *first,
                     int64_t *count);

/* h: (count, d), row-major. Row r is global token first + r:
 * h[r][j] = normal(seed, MOE_STREAM_TOKENS, (first + r) * d + j). Standard normal entries. */
void moe_tokens_generate(float *h, uint64_t seed, int64_t first, int64_t count, int64_t d);

#endif
