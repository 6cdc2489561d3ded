#include "moesim/tokens.h"

#include "moesim/rng.h"

void moe_partition(int64_t n, int parts, int index, int64_t *first, int64_t *count)
{
    int64_t base = n / parts, extra = n % parts;
    *count = base + (index < extra ? 1 : 0);
    *first = index * base + (index < extra ? index : extra);
}

int moe_partition_owner(int64_t n, int parts, int64_t item)
{
    int64_t base = n / parts, extra = n % parts;
    int64_t big = extra * (base + 1); /* items held by the parts with one more */
    if (item < big)
        return (int)(item / (base + 1));
    return (int)(extra + (item - big) / base);
}

void moe_tokens_generate(float *h, uint64_t seed, int64_t first, int64_t count, int64_t d)
{
    moe_rng_fill_normal(h, (size_t)(count * d), seed, MOE_STREAM_TOKENS, (uint64_t)(first * d), 1.0);
}
