/* Unit tests of blocks.h, the rank-to-rank traffic as its nonzero blocks: hand cases of the
 * normal form (sorted by source then destination, one entry a pair, no zeros), and on random
 * seeded matrices the round trip through the dense form, scaling and transposing, and the
 * consumers (classes, projection, the two-level stages, bandwidth) against their dense twins. */
#include "moesim/blocks.h"
#include "moesim/error.h"
#include "moesim/projection.h"
#include "moesim/stats.h"
#include "moesim/topology.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"
#include "testrng.h"

START_TEST(test_normal_form_hand)
{
    moe_blocks b = {0};
    /* out of order, a duplicate, a pair that cancels to zero, an explicit zero */
    const int in[][3] = {{2, 1, 5}, {0, 3, 1}, {2, 1, 2}, {1, 1, 4}, {1, 1, -4}, {0, 0, 0},
                         {0, 2, 7}};
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++)
        ck_assert_int_eq(moe_blocks_push(&b, in[i][0], in[i][1], in[i][2]), MOE_OK);
    moe_blocks_normalize(&b);
    ck_assert_int_eq(b.n, 3);
    ck_assert(b.v[0].src == 0 && b.v[0].dst == 2 && b.v[0].val == 7);
    ck_assert(b.v[1].src == 0 && b.v[1].dst == 3 && b.v[1].val == 1);
    ck_assert(b.v[2].src == 2 && b.v[2].dst == 1 && b.v[2].val == 7);
    ck_assert_int_eq(moe_blocks_total(&b), 15);
    /* times 3, transposed: (1, 2) 21, (2, 0) 21, (3, 0) 3 */
    moe_blocks t = {0};
    ck_assert_int_eq(moe_blocks_scaled(&t, &b, 3, true), MOE_OK);
    ck_assert_int_eq(t.n, 3);
    ck_assert(t.v[0].src == 1 && t.v[0].dst == 2 && t.v[0].val == 21);
    ck_assert(t.v[1].src == 2 && t.v[1].dst == 0 && t.v[1].val == 21);
    ck_assert(t.v[2].src == 3 && t.v[2].dst == 0 && t.v[2].val == 3);
    int64_t m[16];
    moe_blocks_to_dense(m, &t, 4);
    const int64_t want[16] = {0, 0, 0, 0, 0, 0, 21, 0, 21, 0, 0, 0, 3, 0, 0, 0};
    for (int i = 0; i < 16; i++)
        ck_assert_int_eq(m[i], want[i]);
    moe_blocks_clear(&b);
    ck_assert_int_eq(b.n, 0);
    moe_blocks_normalize(&b); /* empty: nothing to do */
    ck_assert_int_eq(b.n, 0);
    moe_blocks_free(&b);
    moe_blocks_free(&t);
    ck_assert(b.v == NULL && b.cap == 0);
}
END_TEST

/* Random sparse (R, R) matrices over a few nodes: every blocks consumer equals its dense twin. */
START_TEST(test_random_against_dense)
{
    g_state = 0x5eed;
    for (int trial = 0; trial < 60; trial++) {
        int R = 1 + next_int(24), per_node = 1 + next_int(4);
        int64_t *m = calloc((size_t)R * R, sizeof *m), *back = calloc((size_t)R * R, sizeof *back);
        moe_placement *p = calloc((size_t)R, sizeof *p);
        for (int r = 0; r < R; r++) {
            p[r].node = r / per_node;
            p[r].package = p[r].numa = -1;
        }
        for (int i = 0; i < R * R; i++)
            m[i] = next_int(3) == 0 ? 1 + next_int(1000) : 0;
        moe_blocks b = {0};
        ck_assert_int_eq(moe_blocks_from_dense(&b, m, R, 1, false), MOE_OK);
        moe_blocks_to_dense(back, &b, R);
        for (int i = 0; i < R * R; i++)
            ck_assert_int_eq(back[i], m[i]);
        for (int s = 0; s < R; s++) /* lookup, zeros included */
            for (int d = 0; d < R; d++)
                ck_assert_int_eq(moe_blocks_get(&b, s, d), m[s * R + d]);
        ck_assert_int_eq(moe_blocks_get(&b, R, 0), 0);
        for (int64_t i = 1; i < b.n; i++) /* the normal form */
            ck_assert(b.v[i - 1].src < b.v[i].src ||
                      (b.v[i - 1].src == b.v[i].src && b.v[i - 1].dst < b.v[i].dst));
        /* classes, with and without the per-rank split */
        moe_class_traffic cd[MOE_LOC_COUNT] = {{0}}, cb[MOE_LOC_COUNT] = {{0}};
        moe_class_traffic *pd = calloc((size_t)R * MOE_LOC_COUNT, sizeof *pd),
                          *pb = calloc((size_t)R * MOE_LOC_COUNT, sizeof *pb);
        moe_traffic_by_class(cd, pd, m, p, R);
        moe_traffic_by_class_blocks(cb, pb, &b, p);
        ck_assert(memcmp(cd, cb, sizeof cd) == 0);
        ck_assert(memcmp(pd, pb, (size_t)R * MOE_LOC_COUNT * sizeof *pd) == 0);
        /* bandwidth */
        moe_a2a_bandwidth bd = moe_a2a_bandwidth_of(m, p, R, 0.25),
                          bb = moe_a2a_bandwidth_blocks(&b, p, R, 0.25);
        ck_assert(bd.send_bytes == bb.send_bytes && bd.off_rank_bytes == bb.off_rank_bytes &&
                  bd.off_node_bytes == bb.off_node_bytes && bd.algbw == bb.algbw);
        /* projection onto a made-up network */
        moe_network net;
        memset(&net, 0, sizeof net);
        for (int c = 0; c < MOE_LOC_COUNT; c++) {
            net.latency[c] = 1e-6 * (c + 1);
            net.bandwidth[c] = 1e9 / (c + 1);
        }
        ck_assert(moe_project_stage(m, p, R, &net) == moe_project_stage_blocks(&b, p, R, &net));
        /* the two-level stages */
        moe_blocks st[3] = {{0}};
        ck_assert_int_eq(moe_hier_schedule_blocks(st, &b, p, R), MOE_OK);
        int64_t *s0 = calloc((size_t)R * R * 3, sizeof *s0);
        moe_hier_schedule(s0, s0 + R * R, s0 + 2 * R * R, m, p, R);
        for (int k = 0; k < 3; k++) {
            moe_blocks_to_dense(back, &st[k], R);
            for (int i = 0; i < R * R; i++)
                ck_assert_int_eq(back[i], s0[k * R * R + i]);
            moe_blocks_free(&st[k]);
        }
        /* scaled and transposed */
        moe_blocks t = {0};
        ck_assert_int_eq(moe_blocks_scaled(&t, &b, 7, true), MOE_OK);
        moe_blocks_to_dense(back, &t, R);
        for (int s = 0; s < R; s++)
            for (int d = 0; d < R; d++)
                ck_assert_int_eq(back[d * R + s], 7 * m[s * R + d]);
        moe_blocks_free(&t);
        moe_blocks_free(&b);
        free(s0);
        free(pd);
        free(pb);
        free(m);
        free(back);
        free(p);
    }
}
END_TEST

static Suite *blocks_suite(void)
{
    Suite *s = suite_create("blocks");
    TCase *tc = tcase_create("hand");
    tcase_add_test(tc, test_normal_form_hand);
    suite_add_tcase(s, tc);
    tc = tcase_create("property");
    tcase_add_test(tc, test_random_against_dense);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(blocks_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
