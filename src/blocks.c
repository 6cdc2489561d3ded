#include "moesim/blocks.h"

#include "moesim/error.h"

#include <stdlib.h>
#include <string.h>

int moe_blocks_push(moe_blocks *b, int src, int dst, int64_t val)
{
    if (b->n == b->cap) {
        int64_t cap = b->cap > 0 ? 2 * b->cap : 64;
        moe_block *v = realloc(b->v, (size_t)cap * sizeof *v);
        if (v == NULL)
            return MOE_ENOMEM;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = (moe_block){(int32_t)src, (int32_t)dst, val};
    return MOE_OK;
}

static int by_pair(const void *pa, const void *pb)
{
    const moe_block *a = pa, *b = pb;
    if (a->src != b->src)
        return a->src < b->src ? -1 : 1;
    return a->dst < b->dst ? -1 : a->dst > b->dst;
}

void moe_blocks_normalize(moe_blocks *b)
{
    if (b->n > 1) {
        /* already in order (the common case: built row by row) costs one pass */
        bool sorted = true;
        for (int64_t i = 1; i < b->n && sorted; i++)
            sorted = by_pair(&b->v[i - 1], &b->v[i]) < 0;
        if (!sorted)
            qsort(b->v, (size_t)b->n, sizeof *b->v, by_pair);
    }
    int64_t out = 0, kept = 0;
    for (int64_t i = 0; i < b->n; i++)
        if (out > 0 && b->v[out - 1].src == b->v[i].src && b->v[out - 1].dst == b->v[i].dst)
            b->v[out - 1].val += b->v[i].val;
        else
            b->v[out++] = b->v[i];
    for (int64_t i = 0; i < out; i++)
        if (b->v[i].val != 0)
            b->v[kept++] = b->v[i];
    b->n = kept;
}

int moe_blocks_from_dense(moe_blocks *out, const int64_t *m, int R, int64_t scale, bool transpose)
{
    moe_blocks_clear(out);
    for (int s = 0; s < R; s++)
        for (int d = 0; d < R; d++) {
            int64_t v = m[(int64_t)s * R + d];
            if (v != 0 && moe_blocks_push(out, transpose ? d : s, transpose ? s : d, v * scale) !=
                              MOE_OK)
                return MOE_ENOMEM;
        }
    moe_blocks_normalize(out);
    return MOE_OK;
}

int moe_blocks_scaled(moe_blocks *out, const moe_blocks *in, int64_t scale, bool transpose)
{
    moe_blocks_clear(out);
    for (int64_t i = 0; i < in->n; i++) {
        const moe_block *e = &in->v[i];
        if (moe_blocks_push(out, transpose ? e->dst : e->src, transpose ? e->src : e->dst,
                            e->val * scale) != MOE_OK)
            return MOE_ENOMEM;
    }
    moe_blocks_normalize(out);
    return MOE_OK;
}

void moe_blocks_to_dense(int64_t *m, const moe_blocks *b, int R)
{
    memset(m, 0, (size_t)R * (size_t)R * sizeof *m);
    for (int64_t i = 0; i < b->n; i++)
        m[(int64_t)b->v[i].src * R + b->v[i].dst] += b->v[i].val;
}

int64_t moe_blocks_total(const moe_blocks *b)
{
    int64_t t = 0;
    for (int64_t i = 0; i < b->n; i++)
        t += b->v[i].val;
    return t;
}

void moe_blocks_clear(moe_blocks *b)
{
    b->n = 0;
}

void moe_blocks_free(moe_blocks *b)
{
    free(b->v);
    memset(b, 0, sizeof *b);
}

int64_t moe_blocks_get(const moe_blocks *b, int src, int dst)
{
    int64_t lo = 0, hi = b->n; /* first block not below (src, dst) */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const moe_block *m = &b->v[mid];
        if (m->src < src || (m->src == src && m->dst < dst))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < b->n && b->v[lo].src == src && b->v[lo].dst == dst ? b->v[lo].val : 0;
}
