/* Tokens: how the global batch is split over ranks, and the synthetic token states. */
#ifndef MOESIM_TOKENS_H
#define MOESIM_TOKENS_H

#include <stdint.h>

/* Block partition of n items over `parts`: part i holds [*first, *first + *count); the first
 * n mod parts parts hold one more item. Used for tokens over ranks and experts over ranks. */
void moe_partition(int64_t n, int parts, int index, int64_t *first, int64_t *count);

/* The part that holds item `item` under moe_partition(n, parts, ...). */
int moe_partition_owner(int64_t n, int parts, int64_t item);

/* h: (count, d), row-major. Row r is global token first + r:
 * h[r][j] = normal(seed, MOE_STREAM_TOKENS, (first + r) * d + j). Standard normal entries. */
void moe_tokens_generate(float *h, uint64_t seed, int64_t first, int64_t count, int64_t d);

#endif
