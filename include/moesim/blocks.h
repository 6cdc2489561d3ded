/* Rank-to-rank traffic as a list of its nonzero blocks: (source, destination, value), sorted by
 * source then destination, one entry per pair. A traffic matrix has at most min(R^2, rows) nonzero
 * blocks, so at 16384 ranks the list stays small where a dense R x R matrix of int64 would take
 * 2 GiB. Pure, MPI-free. */
#ifndef MOESIM_BLOCKS_H
#define MOESIM_BLOCKS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct moe_block {
    int32_t src, dst;
    int64_t val;
} moe_block;

typedef struct moe_blocks {
    moe_block *v;
    int64_t n, cap;
} moe_blocks;

/* Append (src, dst, val); any order, duplicates allowed until moe_blocks_normalize. MOE_OK or
 * MOE_ENOMEM (the list unchanged). */
int moe_blocks_push(moe_blocks *b, int src, int dst, int64_t val);
/* Sort by (src, dst), add up duplicates, drop zeros. */
void moe_blocks_normalize(moe_blocks *b);
/* The nonzero entries of the dense (R, R) matrix m, times scale, transposed when asked; replaces
 * out's contents. MOE_OK or MOE_ENOMEM. */
int moe_blocks_from_dense(moe_blocks *out, const int64_t *m, int R, int64_t scale, bool transpose);
/* out = in times scale, transposed when asked (normalized); out != in. MOE_OK or MOE_ENOMEM. */
int moe_blocks_scaled(moe_blocks *out, const moe_blocks *in, int64_t scale, bool transpose);
/* The dense (R, R) matrix of b into m (zeroed first). */
void moe_blocks_to_dense(int64_t *m, const moe_blocks *b, int R);
/* The value at (src, dst) of a normalized list, 0 where no block is (binary search). */
int64_t moe_blocks_get(const moe_blocks *b, int src, int dst);
/* Sum of the values. */
int64_t moe_blocks_total(const moe_blocks *b);
/* Empty the list (keeping its storage). */
void moe_blocks_clear(moe_blocks *b);
/* Free; accepts a zeroed list. */
void moe_blocks_free(moe_blocks *b);

#endif
