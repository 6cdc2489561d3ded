#include "moesim/tokens.h"

#include "moesim/error.h"
#include "moesim/rng.h"

#include <errno.h>
#include <stdlib.h>

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

int moe_tokens_per_rank_parse(const char *list, int parts, int64_t n, int64_t *out, char *msg,
                              size_t msglen)
{
    const char *p = list;
    int64_t sum = 0;
    int i = 0;
    while (1) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno != 0 || v < 0 || (*end != ',' && *end != '\0'))
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--tokens-per-rank '%s': entry %d is not a count of tokens (an "
                            "integer >= 0)",
                            list, i + 1);
        if (i >= parts)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--tokens-per-rank '%s' has more than one count per rank (%d ranks)",
                            list, parts);
        if (out != NULL)
            out[i] = v;
        if (v > n - sum) { /* over the batch (and never an overflowing sum) */
            sum = n + 1;
            break;
        }
        sum += v;
        i++;
        if (*end == '\0')
            break;
        p = end + 1;
    }
    if (i != parts && sum <= n)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--tokens-per-rank '%s' has %d counts for %d ranks: give one per rank", list,
                        i, parts);
    if (sum != n)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        sum > n ? "--tokens-per-rank '%s' sums to more than the batch's %lld tokens"
                                : "--tokens-per-rank '%s' sums to %lld tokens, the batch has %lld",
                        list, (long long)(sum > n ? n : sum), (long long)n);
    return MOE_OK;
}

void moe_tokens_ragged(int64_t *out, int64_t n, int parts)
{
    unsigned __int128 total = (unsigned __int128)parts * (unsigned __int128)(parts + 1);
    int64_t prev = 0;
    for (int r = 0; r < parts; r++) {
        unsigned __int128 m = (unsigned __int128)(r + 1) * (unsigned __int128)(r + 2);
        int64_t c = (int64_t)((unsigned __int128)n * m / total);
        out[r] = c - prev;
        prev = c;
    }
}

void moe_token_block(const int64_t *per_part, int64_t n, int parts, int index, int64_t *first,
                     int64_t *count)
{
    if (per_part == NULL) {
        moe_partition(n, parts, index, first, count);
        return;
    }
    int64_t f = 0;
    for (int r = 0; r < index; r++)
        f += per_part[r];
    *first = f;
    *count = per_part[index];
}
