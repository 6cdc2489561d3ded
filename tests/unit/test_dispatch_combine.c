/* Unit tests of the pure halves of dispatch and combine: send plan, packing, regrouping by expert
 * and back, and the gate-weighted residual sum. */
#include "moesim/combine.h"
#include "moesim/dispatch.h"
#include "moesim/simd.h"

#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"

#include "testrng.h"

/* A float that identifies row r, column j (exact in float for r, j < 2^10). */
static float tag(int64_t r, int64_t j) { return (float)(r * 1024 + j) + 0.5f; }

START_TEST(test_plan_hand)
{
    /* 4 tokens, k = 2, E = 3. Assignment index t*k + c:
     *   index   0 1 2 3 4 5 6 7
     *   expert  2 0 1 2 0 1 2 1
     *   flag    1 1 1 0 1 1 1 1
     * Accepted by expert, token order inside: e0: 1, 4; e1: 2, 5, 7; e2: 0, 6 (3 was dropped). */
    const int32_t ex[] = {2, 0, 1, 2, 0, 1, 2, 1};
    const uint8_t flag[] = {1, 1, 1, 0, 1, 1, 1, 1};
    const int64_t want_slot[] = {1, 4, 2, 5, 7, 0, 6};
    const int64_t want_per[] = {2, 3, 2};
    int64_t slot[8], per[3], cursor[3];
    memset(slot, 0xff, sizeof slot);
    ck_assert_int_eq(moe_dispatch_plan(slot, per, ex, flag, 4, 2, 3, cursor), 7);
    ck_assert_mem_eq(slot, want_slot, sizeof want_slot);
    ck_assert_mem_eq(per, want_per, sizeof want_per);
    ck_assert_int_eq(slot[7], -1); /* nothing written past n_send */

    /* Nothing accepted: 0 rows, zero counts. An expert nobody chose counts 0. */
    const uint8_t none[8] = {0};
    ck_assert_int_eq(moe_dispatch_plan(slot, per, ex, none, 4, 2, 3, cursor), 0);
    ck_assert(per[0] == 0 && per[1] == 0 && per[2] == 0);
    const int32_t ex4[] = {3, 0, 3, 0};
    const uint8_t all4[] = {1, 1, 1, 1};
    int64_t per4[5], cursor4[5];
    ck_assert_int_eq(moe_dispatch_plan(slot, per4, ex4, all4, 2, 2, 5, cursor4), 4);
    const int64_t want4[] = {1, 3, 0, 2}, want_per4[] = {2, 0, 0, 2, 0};
    ck_assert_mem_eq(slot, want4, sizeof want4);
    ck_assert_mem_eq(per4, want_per4, sizeof want_per4);
}
END_TEST

START_TEST(test_plan_property)
{
    /* Random routings and flags: slot lists each accepted assignment once, ordered by
     * (expert, index); per_expert counts them. */
    g_state = 31;
    for (int trial = 0; trial < 200; trial++) {
        int E = 1 + next_int(20), k = 1 + next_int(E < 4 ? E : 4);
        int64_t n = next_int(300);
        int32_t *ex = malloc((size_t)(n * k + 1) * sizeof *ex);
        uint8_t *flag = malloc((size_t)(n * k + 1));
        int64_t *slot = malloc((size_t)(n * k + 1) * sizeof *slot);
        int64_t *per = malloc((size_t)E * sizeof *per), *cursor = malloc((size_t)E * sizeof *cursor);
        for (int64_t i = 0; i < n * k; i++) {
            ex[i] = next_int(E);
            flag[i] = next_int(4) != 0;
        }
        int64_t n_send = moe_dispatch_plan(slot, per, ex, flag, n, k, E, cursor);
        int64_t accepted = 0, sum_per = 0;
        for (int64_t i = 0; i < n * k; i++)
            accepted += flag[i];
        for (int e = 0; e < E; e++) {
            int64_t want = 0;
            for (int64_t i = 0; i < n * k; i++)
                want += flag[i] && ex[i] == e;
            EXPECT_EQ(per[e], want);
            sum_per += per[e];
        }
        EXPECT_EQ(n_send, accepted);
        EXPECT_EQ(sum_per, accepted);
        for (int64_t i = 0; i < n_send; i++) {
            EXPECT(slot[i] >= 0 && slot[i] < n * k);
            EXPECT(flag[slot[i]]);
            if (i > 0) {
                int32_t ea = ex[slot[i - 1]], eb = ex[slot[i]];
                EXPECT(ea < eb || (ea == eb && slot[i - 1] < slot[i])); /* also: no repeats */
            }
        }
        free(ex), free(flag), free(slot), free(per), free(cursor);
    }
}
END_TEST

START_TEST(test_pack_rows)
{
    enum { N = 6, K = 3, D = 5 };
    float h[N * D], send[N * K * D + D];
    for (int r = 0; r < N; r++)
        for (int j = 0; j < D; j++)
            h[r * D + j] = tag(r, j);
    /* slots t*k + c: tokens 5, 0, 0, 3, 5 */
    const int64_t slot[] = {15, 1, 2, 9, 17};
    const int tok[] = {5, 0, 0, 3, 5};
    for (int j = 0; j < D; j++)
        send[5 * D + j] = -1.0f;
    moe_pack_rows(send, h, slot, 5, K, D);
    for (int i = 0; i < 5; i++)
        ck_assert_mem_eq(send + i * D, h + tok[i] * D, D * sizeof(float));
    for (int j = 0; j < D; j++)
        ck_assert(send[5 * D + j] == -1.0f); /* nothing past n_send rows */
    moe_pack_rows(send, h, slot, 0, K, D);   /* n_send = 0 is a no-op */
    ck_assert(send[5 * D] == -1.0f);
}
END_TEST

START_TEST(test_regroup_hand)
{
    /* Owner with 2 local experts, 3 sources. counts (source, le) = [[2, 0], [1, 3], [0, 1]].
     * recv rows in order: s0 le0: R0 R1 | s1 le0: R2, le1: R3 R4 R5 | s2 le1: R6.
     * x_start = [0, 5]: expert 0 gets rows 0..2 (then padding rows 3, 4), expert 1 rows 5..8
     * (then padding row 9). */
    enum { D = 3, XROWS = 10 };
    const int64_t counts[] = {2, 0, 1, 3, 0, 1};
    const int64_t x_start[] = {0, 5};
    float recv[7 * D], x[XROWS * D], back[7 * D + D];
    int64_t placed[2];
    for (int r = 0; r < 7; r++)
        for (int j = 0; j < D; j++)
            recv[r * D + j] = tag(r, j);
    for (int i = 0; i < XROWS * D; i++)
        x[i] = -7.0f; /* padding marker */
    moe_regroup_to_experts(x, recv, counts, 3, 2, x_start, D, placed);
    const int want_row[XROWS] = {0, 1, 2, -1, -1, 3, 4, 5, 6, -1};
    for (int r = 0; r < XROWS; r++)
        for (int j = 0; j < D; j++) {
            float want = want_row[r] < 0 ? -7.0f : tag(want_row[r], j);
            ck_assert_msg(x[r * D + j] == want, "x[%d][%d] = %g, expected %g", r, j, x[r * D + j], want);
        }
    /* And back: the received layout, exactly; padding rows never read into it. */
    for (int j = 0; j < D; j++)
        back[7 * D + j] = 123.0f;
    moe_regroup_from_experts(back, x, counts, 3, 2, x_start, D, placed);
    ck_assert_mem_eq(back, recv, sizeof recv);
    ck_assert(back[7 * D] == 123.0f);
}
END_TEST

START_TEST(test_regroup_round_trip_property)
{
    /* Random counts, random padding after each expert's block: to_experts then from_experts is the
     * identity on recv, the padding keeps its marker, and each expert's block holds its rows source
     * by source. */
    g_state = 32;
    for (int trial = 0; trial < 200; trial++) {
        int n_src = 1 + next_int(8), n_le = 1 + next_int(5);
        int64_t d = 1 + next_int(9);
        int64_t *counts = malloc((size_t)(n_src * n_le) * sizeof *counts);
        int64_t *x_start = malloc((size_t)n_le * sizeof *x_start), *placed = malloc((size_t)n_le * 8);
        int64_t *got = calloc((size_t)n_le, sizeof *got);
        int64_t total = 0;
        for (int i = 0; i < n_src * n_le; i++) {
            counts[i] = next_int(3) == 0 ? 0 : next_int(6);
            total += counts[i];
        }
        int64_t xrows = 0;
        for (int le = 0; le < n_le; le++) {
            for (int s = 0; s < n_src; s++)
                got[le] += counts[s * n_le + le];
            x_start[le] = xrows;
            xrows += got[le] + next_int(4); /* padding gap */
        }
        float *recv = malloc((size_t)(total * d + 1) * sizeof *recv);
        float *x = malloc((size_t)(xrows * d + 1) * sizeof *x);
        float *back = malloc((size_t)(total * d + 1) * sizeof *back);
        for (int64_t r = 0; r < total; r++)
            for (int64_t j = 0; j < d; j++)
                recv[r * d + j] = tag(r, j);
        for (int64_t i = 0; i < xrows * d; i++)
            x[i] = -7.0f;
        moe_regroup_to_experts(x, recv, counts, n_src, n_le, x_start, d, placed);
        /* expected position of every received row */
        int64_t r = 0;
        int64_t *fill = calloc((size_t)n_le, sizeof *fill);
        for (int s = 0; s < n_src; s++)
            for (int le = 0; le < n_le; le++)
                for (int64_t q = 0; q < counts[s * n_le + le]; q++, r++)
                    EXPECT_MEM_EQ(x + (x_start[le] + fill[le]++) * d, recv + r * d,
                                     (size_t)d * sizeof(float));
        for (int le = 0; le < n_le; le++) {
            int64_t end = le + 1 < n_le ? x_start[le + 1] : xrows;
            for (int64_t i = (x_start[le] + got[le]) * d; i < end * d; i++)
                EXPECT(x[i] == -7.0f);
        }
        moe_regroup_from_experts(back, x, counts, n_src, n_le, x_start, d, placed);
        EXPECT(total == 0 || memcmp(back, recv, (size_t)(total * d) * sizeof(float)) == 0);
        free(counts), free(x_start), free(placed), free(got), free(recv), free(x), free(back);
        free(fill);
    }
}
END_TEST

START_TEST(test_combine_hand)
{
    /* n = 3 tokens, k = 2, d = 2; all values dyadic, so every sum is exact.
     * h = [[1, 2], [3, 4], [-0, 0.1]], gate = [[0.5, 0.25], [0.75, 0.125], [1, 1]].
     * Served (slot, recv row): (0, [2, 4]) token 0 c 0; (3, [8, 16]) token 1 c 1;
     * (1, [4, 8]) token 0 c 1. Token 2 was dropped entirely.
     * y0 = [1, 2] + 0.5 [2, 4] + 0.25 [4, 8] = [3, 6]; y1 = [3, 4] + 0.125 [8, 16] = [4, 6];
     * y2 = h2, bitwise: -0.0 stays -0.0 (adding +0.0 would have turned it into +0.0). */
    const float h[] = {1, 2, 3, 4, -0.0f, 0.1f};
    const float gate[] = {0.5f, 0.25f, 0.75f, 0.125f, 1, 1};
    const float recv[] = {2, 4, 8, 16, 4, 8};
    const int64_t slot[] = {0, 3, 1};
    const float want[] = {3, 6, 4, 6, -0.0f, 0.1f};
    float out[6];
    memset(out, 0xff, sizeof out);
    moe_combine_rows(out, h, recv, slot, gate, 3, 3, 2, 2);
    ck_assert_mem_eq(out, want, sizeof want);
    ck_assert(signbit(out[4]));
    /* out aliasing h: same result in place. */
    float hh[6];
    memcpy(hh, h, sizeof h);
    moe_combine_rows(hh, hh, recv, slot, gate, 3, 3, 2, 2);
    ck_assert_mem_eq(hh, want, sizeof want);
    /* Nothing served: y = h bitwise. */
    moe_combine_rows(out, h, recv, slot, gate, 3, 0, 2, 2);
    ck_assert_mem_eq(out, h, sizeof h);
}
END_TEST

START_TEST(test_dispatch_combine_pipeline)
{
    /* The pure pipeline on one rank with an identity "expert" of weight 2: plan, pack, regroup to
     * experts (with padding), y = 2 x, regroup back, combine. Every token must come out as
     * h + sum over accepted choices of gate * 2 h, computed here in the same order (by expert id,
     * as the contract says); dropped tokens exactly h. Values are dyadic, so equality is exact. */
    enum { N = 64, K = 2, E = 4, D = 3 };
    g_state = 33;
    int32_t ex[N * K];
    uint8_t flag[N * K];
    float h[N * D], gate[N * K];
    for (int t = 0; t < N; t++) {
        int a = next_int(E), b = (a + 1 + next_int(E - 1)) % E;
        ex[t * K] = a, ex[t * K + 1] = b;
        gate[t * K] = 0.25f * (float)(1 + next_int(3));
        gate[t * K + 1] = 1.0f - gate[t * K];
        flag[t * K] = next_int(5) != 0;
        flag[t * K + 1] = next_int(5) != 0;
        for (int j = 0; j < D; j++)
            h[t * D + j] = (float)(next_int(64) - 32) / 8.0f;
    }
    int64_t slot[N * K], per[E], cursor[E], placed[E], x_start[E];
    int64_t n_send = moe_dispatch_plan(slot, per, ex, flag, N, K, E, cursor);
    float send[N * K * D], x[(N * K + 2 * E) * D], back[N * K * D], y[N * D];
    moe_pack_rows(send, h, slot, n_send, K, D);
    int64_t xr = 0;
    for (int e = 0; e < E; e++) {
        x_start[e] = xr;
        xr += per[e] + 2;
    }
    moe_regroup_to_experts(x, send, per, 1, E, x_start, D, placed);
    for (int64_t i = 0; i < xr * D; i++)
        x[i] *= 2.0f; /* the expert; padding rows hold garbage and are never read back */
    moe_regroup_from_experts(back, x, per, 1, E, x_start, D, placed);
    moe_combine_rows(y, h, back, slot, gate, N, n_send, K, D);
    for (int t = 0; t < N; t++)
        for (int j = 0; j < D; j++) {
            float want = h[t * D + j];
            /* served choices in expert-id order */
            int c0 = ex[t * K] < ex[t * K + 1] ? 0 : 1;
            for (int q = 0; q < 2; q++) {
                int c = q == 0 ? c0 : 1 - c0;
                if (flag[t * K + c])
                    want += gate[t * K + c] * (2.0f * h[t * D + j]);
            }
            EXPECT_MSG(y[t * D + j] == want, "token %d col %d: %g vs %g", t, j, y[t * D + j], want);
        }
}
END_TEST

/* Rows arriving in another order than expert id (a placement) combine to the same bits as
 * moe_combine_rows over rows sorted by expert. */
START_TEST(test_combine_by_expert_order)
{
    enum { n = 5, k = 2, d = 3, E = 4 };
    const int32_t expert[n * k] = {2, 0, 1, 3, 3, 2, 0, 1, 1, 2};
    float gate[n * k], h[n * d];
    for (int i = 0; i < n * k; i++)
        gate[i] = 0.1f + 0.07f * (float)i;
    for (int i = 0; i < n * d; i++)
        h[i] = 0.3f * (float)i - 1.7f;
    uint8_t flag[n * k];
    for (int i = 0; i < n * k; i++)
        flag[i] = i != 4; /* one dropped */
    int64_t slot[n * k], per[E], cursor[E];
    int64_t n_send = moe_dispatch_plan(slot, per, expert, flag, n, k, E, cursor);
    float recv[n * k * d];
    for (int64_t i = 0; i < n_send * d; i++)
        recv[i] = 0.9f / (float)(i + 1) + (float)(i % 7);
    float want[n * d], got[n * d];
    moe_combine_rows(want, h, recv, slot, gate, n, n_send, k, d);
    /* the same rows in reversed order, as another placement would send them */
    int64_t slot2[n * k], pos[n * k];
    float recv2[n * k * d];
    for (int64_t i = 0; i < n_send; i++) {
        slot2[i] = slot[n_send - 1 - i];
        memcpy(recv2 + i * d, recv + (n_send - 1 - i) * d, sizeof(float) * d);
    }
    moe_combine_rows_one_pass(got, h, recv2, slot2, gate, expert, n, n_send, k, d, pos);
    ck_assert_mem_eq(got, want, sizeof want);
}
END_TEST

/* The one-pass unpack gives moe_combine_rows' bits on rows sorted by expert (no placement), and
 * the same on the rows in reversed order (a placement), in place too; a token whose assignments
 * all dropped leaves as h. Random seeded batches, k 1 to 4, d 1 to 40. */
START_TEST(test_combine_one_pass)
{
    g_state = 91;
    int top = moe_simd_set_level(-1);
    for (int it = 0; it < 200; it++) {
        int n = 1 + next_int(20), k = 1 + next_int(4), d = 1 + next_int(40);
        int E = k + (int)((uint32_t)next_u64() % 5);
        int32_t *expert = malloc(sizeof(int32_t) * n * k);
        uint8_t *flag = malloc((size_t)(n * k));
        float *gate = malloc(sizeof(float) * n * k), *h = malloc(sizeof(float) * n * d);
        for (int t = 0; t < n; t++) /* k distinct experts per token */
            for (int c = 0; c < k; c++) {
                int e;
                bool dup;
                do {
                    e = (int)((uint32_t)next_u64() % (uint32_t)E);
                    dup = false;
                    for (int q = 0; q < c; q++)
                        dup |= expert[t * k + q] == e;
                } while (dup);
                expert[t * k + c] = e;
            }
        for (int i = 0; i < n * k; i++) {
            flag[i] = (uint32_t)next_u64() % 4 != 0 || (i / k) % 5 == 3 ? (i / k) % 5 != 3 : 0;
            gate[i] = (float)((uint32_t)next_u64() % 1000) / 997.0f;
        }
        for (int i = 0; i < n * d; i++)
            h[i] = (float)((uint32_t)next_u64() % 2000) / 311.0f - 3.0f;
        int64_t *slot = malloc(sizeof(int64_t) * n * k), *per = malloc(sizeof(int64_t) * E);
        int64_t *cursor = malloc(sizeof(int64_t) * E), *pos = malloc(sizeof(int64_t) * n * k);
        int64_t n_send = moe_dispatch_plan(slot, per, expert, flag, n, k, E, cursor);
        float *recv = malloc(sizeof(float) * (n * k * d + 1));
        for (int64_t i = 0; i < n_send * d; i++)
            recv[i] = (float)((uint32_t)next_u64() % 5000) / 1237.0f - 2.0f;
        float *want = malloc(sizeof(float) * n * d), *got = malloc(sizeof(float) * n * d);
        moe_combine_rows(want, h, recv, slot, gate, n, n_send, k, d);
        float *hh = malloc(sizeof(float) * n * d);
        int64_t *slot2 = malloc(sizeof(int64_t) * (n * k + 1));
        float *recv2 = malloc(sizeof(float) * (n * k * d + 1));
        for (int64_t i = 0; i < n_send; i++) { /* reversed arrival, as a placement might send them */
            slot2[i] = slot[n_send - 1 - i];
            memcpy(recv2 + i * d, recv + (n_send - 1 - i) * d, sizeof(float) * d);
        }
        /* every kernel level the CPU has (simd.h): the same bits as moe_combine_rows */
        for (int level = 0; level <= top; level++) {
            EXPECT(moe_simd_set_level(level) == level);
            moe_combine_rows_one_pass(got, h, recv, slot, gate, expert, n, n_send, k, d, pos);
            EXPECT_MSG(memcmp(got, want, sizeof(float) * n * d) == 0,
                       "iteration %d, level %d: one pass differs", it, level);
            for (int t = 0; t < n; t++)
                if (t % 5 == 3)
                    EXPECT_MSG(memcmp(got + t * d, h + t * d, sizeof(float) * d) == 0,
                               "iteration %d, level %d: token %d dropped everywhere is not h", it,
                               level, t);
            memcpy(hh, h, sizeof(float) * n * d); /* in place */
            moe_combine_rows_one_pass(hh, hh, recv, slot, gate, expert, n, n_send, k, d, pos);
            EXPECT_MSG(memcmp(hh, want, sizeof(float) * n * d) == 0,
                       "iteration %d, level %d: in place", it, level);
            moe_combine_rows_one_pass(got, h, recv2, slot2, gate, expert, n, n_send, k, d, pos);
            EXPECT_MSG(memcmp(got, want, sizeof(float) * n * d) == 0,
                       "iteration %d, level %d: reversed", it, level);
            /* rows [lo, lo + m) left elsewhere (the combine's own rows, in the experts' blocks),
             * in another order, their places in recv overwritten: the same bits */
            int64_t lo = n_send > 0 ? (int64_t)(next_u64() % (uint64_t)n_send) : 0;
            int64_t m = n_send - lo > 0 ? (int64_t)(next_u64() % (uint64_t)(n_send - lo + 1)) : 0;
            float *blocks = malloc(sizeof(float) * (size_t)(m * d + 1));
            float *holed = malloc(sizeof(float) * (n * k * d + 1));
            int64_t *at = malloc(sizeof(int64_t) * (size_t)(m + 1));
            memcpy(holed, recv, sizeof(float) * n_send * d);
            for (int64_t q = 0; q < m; q++) {
                at[q] = m - 1 - q;
                memcpy(blocks + at[q] * d, recv + (lo + q) * d, sizeof(float) * d);
                for (int64_t j = 0; j < d; j++)
                    holed[(lo + q) * d + j] = NAN;
            }
            moe_rows_here here = {.base = blocks, .at = at, .lo = lo, .n = m};
            moe_combine_rows_one_pass_here(got, h, holed, &here, slot, gate, expert, n, n_send, k,
                                           d, pos);
            EXPECT_MSG(memcmp(got, want, sizeof(float) * n * d) == 0,
                       "iteration %d, level %d: rows [%lld, %lld) read where they were", it,
                       level, (long long)lo, (long long)(lo + m));
            free(blocks), free(holed), free(at);
        }
        moe_simd_set_level(-1);
        free(expert), free(flag), free(gate), free(h), free(slot), free(per), free(cursor);
        free(pos), free(recv), free(want), free(got), free(hh), free(slot2), free(recv2);
    }
}
END_TEST

static Suite *dispatch_combine_suite(void)
{
    Suite *s = suite_create("dispatch_combine");
    TCase *tc = tcase_create("dispatch");
    tcase_add_test(tc, test_plan_hand);
    tcase_add_test(tc, test_combine_by_expert_order);
    tcase_add_test(tc, test_plan_property);
    tcase_add_test(tc, test_pack_rows);
    tcase_add_test(tc, test_regroup_hand);
    tcase_add_test(tc, test_regroup_round_trip_property);
    suite_add_tcase(s, tc);
    tc = tcase_create("combine");
    tcase_add_test(tc, test_combine_hand);
    tcase_add_test(tc, test_dispatch_combine_pipeline);
    tcase_add_test(tc, test_combine_one_pass);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(dispatch_combine_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
