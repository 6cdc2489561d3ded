#include "moesim/dispatch.h"

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

void moe_regroup_to_experts(float *x, const float *recv, const int64_t *counts, int n_src, int n_le,
                            const int64_t *x_start, int64_t d, int64_t *placed)
{
    /* Walk recv in its own order (source-major, experts inside) and place each run of rows. */
    const float *src = recv;
    for (int le = 0; le < n_le; le++)
        placed[le] = 0;
    for (int s = 0; s < n_src; s++)
        for (int le = 0; le < n_le; le++) {
            int64_t rows = counts[(int64_t)s * n_le + le];
            if (rows > 0)
                memcpy(x + (x_start[le] + placed[le]) * d, src, (size_t)(rows * d) * sizeof(float));
            placed[le] += rows;
            src += rows * d;
        }
}
