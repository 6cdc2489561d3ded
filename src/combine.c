#include "moesim/combine.h"

#include <stdbool.h>
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

void moe_combine_rows_one_pass(float *out, const float *h, const float *recv, const int64_t *slot,
                               const float *gate, const int32_t *expert, int64_t n,
                               int64_t n_send, int k, int64_t d, int64_t *pos)
{
    for (int64_t i = 0; i < n * k; i++)
        pos[i] = -1;
    for (int64_t i = 0; i < n_send; i++)
        pos[slot[i]] = i; /* where assignment slot[i]'s result arrived */
    for (int64_t t = 0; t < n; t++) {
        const float *hr = h + t * d;
        float *o = out + t * d;
        int32_t last = -1;
        bool first = true;
        for (;;) { /* the next served assignment of t by expert id: k is small */
            int64_t best = -1;
            for (int c = 0; c < k; c++) {
                int64_t i = t * k + c;
                if (pos[i] >= 0 && expert[i] > last && (best < 0 || expert[i] < expert[best]))
                    best = i;
            }
            if (best < 0)
                break;
            last = expert[best];
            float g = gate[best];
            const float *restrict r = recv + pos[best] * d;
            if (first) /* y_t = h_t + g r, the row written once */
                for (int64_t j = 0; j < d; j++)
                    o[j] = hr[j] + g * r[j];
            else /* the row is in cache now */
                for (int64_t j = 0; j < d; j++)
                    o[j] += g * r[j];
            first = false;
        }
        if (first && o != hr) /* every assignment dropped: the residual */
            memcpy(o, hr, (size_t)d * sizeof *o);
    }
}
