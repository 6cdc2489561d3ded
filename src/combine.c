#include "moesim/combine.h"

#include <string.h>

/* moe_regroup_from_experts lives beside its inverse in dispatch.c: one walk serves both. */

void moe_combine_rows(float *out, const float *h, const float *recv, const int64_t *slot,
                      const float *gate, int64_t n, int64_t n_send, int k, int64_t d)
{
    if (out != h)
        memcpy(out, h, (size_t)(n * d) * sizeof(float));
    for (int64_t i = 0; i < n_send; i++) {
        float g = gate[slot[i]];
        /* out and recv never overlap: restrict lets the compiler vectorize the row update */
        float *restrict o = out + (slot[i] / k) * d;
        const float *restrict r = recv + i * d;
        for (int64_t j = 0; j < d; j++)
            o[j] += g * r[j];
    }
}
