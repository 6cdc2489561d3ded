#include "moesim/combine.h"

#include "moesim/simd.h"

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

/* The one pass, built three times (simd.h): the row loops are a product and a sum per element,
 * never fused (FP_CONTRACT off for clang; GCC does not contract in ISO C mode), so every level gives
 * moe_combine_rows's floats; the wider loads halve the pass where its rows are in cache (64 tokens
 * a rank, d 1024: 25 us in SSE2, 11 in AVX-512 on this EPYC; at 4096 tokens 4.4 ms -> 2.2 ms). The
 * body is forced inline so that each build compiles it for its own target. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
static inline __attribute__((always_inline)) void
one_pass(float *out, const float *h, const float *recv, const moe_rows_here *here,
         const int64_t *slot, const float *gate, const int32_t *expert, int64_t n, int64_t n_send,
         int k, int64_t d, int64_t *pos)
{
    int64_t here_lo = here != NULL ? here->lo : 0, here_n = here != NULL ? here->n : 0;
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
            int64_t i = pos[best], q = i - here_lo; /* row i of the received order */
            const float *restrict r =
                q >= 0 && q < here_n ? here->base + here->at[q] * d : recv + i * d;
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

#define ONE_PASS_ARGS                                                                              \
    float *out, const float *h, const float *recv, const moe_rows_here *here, const int64_t *slot, \
        const float *gate, const int32_t *expert, int64_t n, int64_t n_send, int k, int64_t d,    \
        int64_t *pos
#define ONE_PASS_CALL out, h, recv, here, slot, gate, expert, n, n_send, k, d, pos

static void one_pass_plain(ONE_PASS_ARGS)
{
    one_pass(ONE_PASS_CALL);
}

#if MOE_SIMD_X86
MOE_TARGET_V3 static void one_pass_v3(ONE_PASS_ARGS)
{
    one_pass(ONE_PASS_CALL);
}

MOE_TARGET_V4 static void one_pass_v4(ONE_PASS_ARGS)
{
    one_pass(ONE_PASS_CALL);
}
#endif

void moe_combine_rows_one_pass_here(ONE_PASS_ARGS)
{
#if MOE_SIMD_X86
    int level = moe_simd_level();
    if (level > 0) {
        (level == 2 ? one_pass_v4 : one_pass_v3)(ONE_PASS_CALL);
        return;
    }
#endif
    one_pass_plain(ONE_PASS_CALL);
}

void moe_combine_rows_one_pass(float *out, const float *h, const float *recv, const int64_t *slot,
                               const float *gate, const int32_t *expert, int64_t n,
                               int64_t n_send, int k, int64_t d, int64_t *pos)
{
    moe_combine_rows_one_pass_here(out, h, recv, NULL, slot, gate, expert, n, n_send, k, d, pos);
}
