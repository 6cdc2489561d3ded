/* Exact sums of floats, so that a figure summed over ranks does not depend on how the batch was
 * split: a float is m * 2^e with |m| < 2^24 and -149 <= e <= 104, so every float, and any sum of up
 * to 2^40 of them, is an integer multiple of 2^-149 below 2^168: it fits a fixed-point
 * accumulator of MOE_XSUM_LIMBS 32-bit digits held in int64 (room for carries). Adding is exact,
 * merging accumulators is exact, and the final rounding to double happens once, so the result is
 * the same for any order of the terms. Pure. */
#ifndef MOESIM_XSUM_H
#define MOESIM_XSUM_H

#include <stddef.h>
#include <stdint.h>

#define MOE_XSUM_LIMBS 10

typedef struct moe_xsum {
    int64_t limb[MOE_XSUM_LIMBS]; /* value = sum limb[i] * 2^(32 i - 149) */
    int64_t pending;              /* additions since the last carry propagation */
} moe_xsum;

void moe_xsum_init(moe_xsum *s);
/* Add one finite float (non-finite values are ignored: callers check finiteness elsewhere). */
void moe_xsum_add(moe_xsum *s, float x);
/* Add n floats. */
void moe_xsum_add_array(moe_xsum *s, const float *x, size_t n);
/* Propagate carries: every limb but the last in [0, 2^32). Afterwards the limbs of equal sums are
 * equal, so they may be summed limb by limb across ranks (MPI_SUM on int64) and normalised again. */
void moe_xsum_normalize(moe_xsum *s);
/* The sum rounded to the nearest double, ties to even, once (normalises first). */
double moe_xsum_value(moe_xsum *s);

#endif
