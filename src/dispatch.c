#include "moesim/dispatch.h"

#include "moesim/combine.h"

#include <stdbool.h>
#include <string.h>

int64_t moe_dispatch_plan(int64_t *slot, int64_t *per_expert, const int32_t *expert,
                          const uint8_t *flag, int64_t n, int k, int E, int64_t *cursor)
{
    /* Counting sort by expert id, stable in (token, choice) order. */
    for (int e = 0; e < E; e++)
        per_expert[e] = 0;
    for (int64_t i = 0; i < n * k; i++)
        if (flag[i])
            per_expert[expert[i]]++;
    int64_t total = 0;
    for (int e = 0; e < E; e++) {
        cursor[e] = total;
        total += per_expert[e];
    }
    for (int64_t i = 0; i < n * k; i++)
        if (flag[i])
            slot[cursor[expert[i]]++] = i;
    return total;
}

void moe_pack_rows(float *send, const float *h, const int64_t *slot, int64_t n_send, int k,
                   int64_t d)
{
    size_t row_bytes = (size_t)d * sizeof(float);
    for (int64_t i = 0; i < n_send; i++)
        memcpy(send + i * d, h + (slot[i] / k) * d, row_bytes);
}

/* Walk the arrival order (source-major, local experts inside) and copy each run of rows between it
 * and the expert-major blocks: into the blocks when to_blocks, out of them otherwise. */
static void regroup(float *arrival, float *blocks, const int64_t *counts, int n_src, int n_le,
                    const int64_t *block_start, int64_t d, int64_t *placed, bool to_blocks)
{
    for (int le = 0; le < n_le; le++)
        placed[le] = 0;
    for (int s = 0; s < n_src; s++)
        for (int le = 0; le < n_le; le++) {
            int64_t rows = counts[(int64_t)s * n_le + le];
            float *block = blocks + (block_start[le] + placed[le]) * d;
            size_t bytes = (size_t)(rows * d) * sizeof(float);
            if (rows > 0)
                memcpy(to_blocks ? block : arrival, to_blocks ? arrival : block, bytes);
            placed[le] += rows;
            arrival += rows * d;
        }
}

void moe_regroup_to_experts(float *x, const float *recv, const int64_t *counts, int n_src, int n_le,
                            const int64_t *x_start, int64_t d, int64_t *placed)
{
    /* recv is only read on this path */
    regroup((float *)recv, x, counts, n_src, n_le, x_start, d, placed, true);
}

void moe_regroup_from_experts(float *send, const float *y, const int64_t *counts, int n_src,
                              int n_le, const int64_t *y_start, int64_t d, int64_t *placed)
{
    /* y is only read on this path */
    regroup(send, (float *)y, counts, n_src, n_le, y_start, d, placed, false);
}
