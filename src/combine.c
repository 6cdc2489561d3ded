#include "moesim/combine.h"

#include <string.h>

void moe_regroup_from_experts(float *send, const float *y, const int64_t *counts, int n_src,
                              int n_le, const int64_t *y_start, int64_t d, int64_t *placed)
{
    float *dst = send;
    for (int le = 0; le < n_le; le++)
        placed[le] = 0;
    for (int s = 0; s < n_src; s++)
        for (int le = 0; le < n_le; le++) {
            int64_t rows = counts[(int64_t)s * n_le + le];
            if (rows > 0)
                memcpy(dst, y + (y_start[le] + placed[le]) * d, (size_t)(rows * d) * sizeof(float));
            placed[le] += rows;
            dst += rows * d;
        }
}

void moe_combine_rows(float *out, const float *h, const float *recv, const int64_t *slot,
                      const float *gate, int64_t n, int64_t n_send, int k, int64_t d)
{
    if (out != h)
        memcpy(out, h, (size_t)(n * d) * sizeof(float));
    for (int64_t i = 0; i < n_send; i++) {
        float g = gate[slot[i]];
        float *o = out + (slot[i] / k) * d;
        const float *r = recv + i * d;
        for (int64_t j = 0; j < d; j++)
            o[j] += g * r[j];
    }
}
