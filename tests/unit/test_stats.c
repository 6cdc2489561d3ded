/* Unit tests of stats: median, summaries, the Switch load-balancing loss, result totals, phases,
 * the nccl-tests bandwidth figures, the spread of iterations and the run's warnings; and error
 * (moe_strerror, moe_fail), which has no suite of its own. */
#include "moesim/error.h"
#include "moesim/stats.h"

#include <check.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "testrng.h"

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

START_TEST(test_median)
{
    double one[] = {4.5};
    ck_assert(moe_median(one, 1) == 4.5);
    double odd[] = {5, 1, 4, 2, 3};
    ck_assert(moe_median(odd, 5) == 3.0);
    double even[] = {10, 1, 4, 2};
    ck_assert(moe_median(even, 4) == 3.0); /* (2 + 4) / 2 */
    double two[] = {7, -1};
    ck_assert(moe_median(two, 2) == 3.0);
    double dup[] = {2, 2, 9, 2, 9, 9};
    ck_assert(moe_median(dup, 6) == 5.5);
    double neg[] = {-3, -1, -2};
    ck_assert(moe_median(neg, 3) == -2.0);
    /* It sorts in place (documented). */
    const double sorted[] = {1, 2, 3, 4, 5};
    ck_assert_mem_eq(odd, sorted, sizeof sorted);
}
END_TEST

START_TEST(test_summarize)
{
    const double v[] = {3, -1, 8, 2};
    moe_summary s = moe_summarize(v, 4);
    ck_assert(s.min == -1 && s.max == 8 && s.mean == 3.0);
    const double one[] = {0.25};
    s = moe_summarize(one, 1);
    ck_assert(s.min == 0.25 && s.mean == 0.25 && s.max == 0.25);
    /* The straggler shows in max, not hidden by the mean. */
    const double ranks[] = {1, 1, 1, 1, 1, 1, 1, 9};
    s = moe_summarize(ranks, 8);
    ck_assert(s.max == 9 && s.mean == 2.0 && s.min == 1);
}
END_TEST

START_TEST(test_load_balance_hand)
{
    /* E = 2, N = 4, k = 1: routed = [3, 1] -> f = [0.75, 0.25]; psum = [2.5, 1.5] -> P = [0.625,
     * 0.375]; aux = 2 (0.75 * 0.625 + 0.25 * 0.375) = 2 * 0.5625 = 1.125, exact in binary. */
    const int64_t routed[] = {3, 1};
    const double psum[] = {2.5, 1.5};
    double f[2], P[2];
    ck_assert(moe_load_balance(f, P, routed, psum, 2, 4, 1) == 1.125);
    ck_assert(f[0] == 0.75 && f[1] == 0.25 && P[0] == 0.625 && P[1] == 0.375);
    /* top-k counting (Megatron): f_i = routed_i / (N k). E = 4, N = 2, k = 2: routed [2, 1, 1, 0]
     * -> f = [0.5, 0.25, 0.25, 0]; psum [1, 0.5, 0.25, 0.25] -> P = [0.5, 0.25, 0.125, 0.125];
     * aux = 4 (0.25 + 0.0625 + 0.03125) = 1.375. */
    const int64_t r2[] = {2, 1, 1, 0};
    const double p2[] = {1, 0.5, 0.25, 0.25};
    double f2[4], P2[4];
    ck_assert(moe_load_balance(f2, P2, r2, p2, 4, 2, 2) == 1.375);
    ck_assert(f2[0] == 0.5 && f2[3] == 0.0 && P2[2] == 0.125);
    /* Everything on one expert with all its probability: aux = E. */
    const int64_t r3[] = {0, 10, 0};
    const double p3[] = {0, 10, 0};
    double f3[3], P3[3];
    ck_assert(moe_load_balance(f3, P3, r3, p3, 3, 10, 1) == 3.0);
    /* Uniform: exactly 1. */
    const int64_t r4[] = {4, 4, 4, 4};
    const double p4[] = {2, 2, 2, 2};
    double f4[4], P4[4];
    ck_assert(moe_load_balance(f4, P4, r4, p4, 4, 8, 2) == 1.0);
}
END_TEST

START_TEST(test_results_init_free_totals)
{
    moe_results r;
    memset(&r, 0x5a, sizeof r);
    ck_assert_int_eq(moe_results_init(&r, 3, 2, 1), MOE_OK);
    ck_assert_int_eq(r.experts, 3);
    ck_assert_int_eq(r.ranks, 2);
    ck_assert(r.owner && r.routed && r.accepted && r.capacity && r.f && r.P);
    /* the traffic is a list of nonzero blocks, empty until filled */
    ck_assert(r.rows.n == 0 && r.dispatch_bytes.n == 0 && r.combine_bytes.n == 0);
    /* zeroed: arrays and scalars */
    for (int e = 0; e < 3; e++)
        ck_assert(r.owner[e] == 0 && r.routed[e] == 0 && r.accepted[e] == 0 && r.capacity[e] == 0 &&
                  r.f[e] == 0.0 && r.P[e] == 0.0);
    ck_assert(r.aux_loss == 0.0 && r.dropped_tokens == 0 && !r.padded && r.phase[0].max == 0.0);
    /* rows (2, 2) {{3, 0}, {1, 2}} in rows of 10 bytes out, 4 back: dispatch the same times 10,
     * combine the transpose times 4; metadata 6 bytes a row (payload 4) */
    ck_assert_int_eq(moe_blocks_push(&r.rows, 1, 1, 2), MOE_OK);
    ck_assert_int_eq(moe_blocks_push(&r.rows, 0, 0, 3), MOE_OK);
    ck_assert_int_eq(moe_blocks_push(&r.rows, 1, 0, 1), MOE_OK);
    moe_blocks_normalize(&r.rows);
    r.row_bytes = 10;
    r.row_bytes_combine = 4;
    ck_assert_int_eq(moe_results_traffic(&r, 6, 4), MOE_OK);
    int64_t dense[4];
    moe_blocks_to_dense(dense, &r.dispatch_bytes, 2);
    ck_assert(dense[0] == 30 && dense[1] == 0 && dense[2] == 10 && dense[3] == 20);
    moe_blocks_to_dense(dense, &r.combine_bytes, 2);
    ck_assert(dense[0] == 12 && dense[1] == 4 && dense[2] == 0 && dense[3] == 8);
    ck_assert_int_eq(r.metadata_bytes, 6 * 6);
    /* served 6 x (4 + 4) - 6 rows x (10 + 4) */
    ck_assert_int_eq(r.dedup_saving, 48 - 84);

    /* With a capacity: routed [10, 5, 7], accepted [8, 5, 6], capacity 8 each.
     * assignments 22, dropped 3, slots 24, empty 24 - 19 = 5; FLOPs 19 and 5 rows of 60. */
    const int64_t routed[] = {10, 5, 7}, accepted[] = {8, 5, 6};
    for (int e = 0; e < 3; e++) {
        r.routed[e] = routed[e];
        r.accepted[e] = accepted[e];
        r.capacity[e] = 8;
    }
    moe_results_totals(&r, 60.0);
    ck_assert_int_eq(r.assignments, 22);
    ck_assert_int_eq(r.dropped_assignments, 3);
    ck_assert_int_eq(r.slots, 24);
    ck_assert_int_eq(r.empty_slots, 5);
    ck_assert(r.flops_useful == 19 * 60.0 && r.flops_wasted == 5 * 60.0);

    /* Dropless (capacity -1): slots = accepted, nothing empty, nothing wasted. */
    for (int e = 0; e < 3; e++) {
        r.accepted[e] = routed[e];
        r.capacity[e] = -1;
    }
    moe_results_totals(&r, 60.0);
    ck_assert_int_eq(r.assignments, 22);
    ck_assert_int_eq(r.dropped_assignments, 0);
    ck_assert_int_eq(r.slots, 22);
    ck_assert_int_eq(r.empty_slots, 0);
    ck_assert(r.flops_wasted == 0.0 && r.flops_useful == 22 * 60.0);

    /* Totals are recomputed, not accumulated: a second call gives the same. */
    moe_results_totals(&r, 60.0);
    ck_assert_int_eq(r.assignments, 22);
    ck_assert_int_eq(r.slots, 22);

    moe_results_free(&r);
    ck_assert(r.owner == NULL && r.routed == NULL && r.dispatch_bytes.v == NULL && r.rows.n == 0);
    moe_results_free(&r); /* twice is harmless: the pointers were cleared */
    moe_results_free(NULL);
    moe_results r0;
    memset(&r0, 0, sizeof r0);
    moe_results_free(&r0); /* zeroed struct */
}
END_TEST

START_TEST(test_phase_names)
{
    static const char *const want[] = {"router", "count_wait", "count_exchange", "pack",
                                       "dispatch_wait", "dispatch", "dispatch_raw", "regroup",
                                       "expert", "combine_wait", "combine", "combine_raw",
                                       "unpack", "shared", "combine_bwd_wait", "combine_bwd",
                                       "expert_bwd", "dispatch_bwd_wait", "dispatch_bwd",
                                       "router_bwd", "allreduce"};
    /* the raw baselines are timed but are not part of the step; the waits are; the backward's
     * seven are (2) where they run */
    static const int in_step[] = {1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2};
    ck_assert_int_eq(MOE_PHASE_COUNT, 21);
    for (int p = 0; p < MOE_PHASE_COUNT; p++) {
        ck_assert_int_eq(moe_phase_in_step(p), in_step[p]);
        ck_assert(moe_phase_is_backward(p) == (in_step[p] == 2));
    }
    ck_assert_int_eq(moe_phase_in_step(-1), 0);
    for (int p = 0; p < MOE_PHASE_COUNT; p++) {
        ck_assert_str_eq(moe_phase_name(p), want[p]);
        ck_assert(strlen(moe_phase_what(p)) > 0);
        ck_assert_str_ne(moe_phase_what(p), "?");
    }
    ck_assert_int_eq(MOE_PHASE_ROUTER, 0);
    ck_assert_int_eq(MOE_PHASE_UNPACK, 12);
    ck_assert_str_eq(moe_phase_name(-1), "?");
    ck_assert_str_eq(moe_phase_name(MOE_PHASE_COUNT), "?");
    ck_assert_str_eq(moe_phase_what(MOE_PHASE_COUNT), "?");
}
END_TEST

/* R = 4 on 2 nodes (ranks 0, 1 on node 0; 2, 3 on node 1), bytes [src][dst]:
 *        d0   d1   d2   d3 | row  off-rank  off-node
 *   s0   10   20   30   40 | 100     90        70
 *   s1    1    2    3    4 |  10      8         7
 *   s2  100    0    5    0 | 105    100       100
 *   s3    0    0    0    8 |   8      0         0
 * busiest sender 105 B; in 0.5 s algbw = 210 B/s, busbw = 210 * 3/4 = 157.5 B/s (all exact). The
 * transpose (combine) has the column sums 111, 22, 38, 52 as rows: algbw 222, busbw 166.5, and
 * the same off-rank and off-node totals. */
static const int64_t hand_bytes[16] = {10, 20, 30, 40, 1, 2, 3, 4, 100, 0, 5, 0, 0, 0, 0, 8};

static void two_nodes(moe_placement *pl, int R, int per_node)
{
    memset(pl, 0, (size_t)R * sizeof *pl);
    for (int r = 0; r < R; r++) {
        pl[r].rank = r;
        pl[r].node = r / per_node;
    }
}

START_TEST(test_a2a_bandwidth_hand)
{
    moe_placement pl[4];
    two_nodes(pl, 4, 2);
    moe_a2a_bandwidth b = moe_a2a_bandwidth_of(hand_bytes, pl, 4, 0.5);
    ck_assert_int_eq(b.send_bytes, 105);
    ck_assert_int_eq(b.off_rank_bytes, 198);
    ck_assert_int_eq(b.off_node_bytes, 177);
    ck_assert(b.algbw == 210.0 && b.busbw == 157.5);

    int64_t t[16];
    for (int s = 0; s < 4; s++)
        for (int d = 0; d < 4; d++)
            t[d * 4 + s] = hand_bytes[s * 4 + d];
    b = moe_a2a_bandwidth_of(t, pl, 4, 0.5);
    ck_assert_int_eq(b.send_bytes, 111);
    ck_assert_int_eq(b.off_rank_bytes, 198);
    ck_assert_int_eq(b.off_node_bytes, 177);
    ck_assert(b.algbw == 222.0 && b.busbw == 166.5);

    /* one node: nothing leaves it; a time of 0 (or below): no rate rather than infinity */
    two_nodes(pl, 4, 4);
    b = moe_a2a_bandwidth_of(hand_bytes, pl, 4, 0.0);
    ck_assert_int_eq(b.off_node_bytes, 0);
    ck_assert_int_eq(b.off_rank_bytes, 198);
    ck_assert(b.algbw == 0.0 && b.busbw == 0.0);
    ck_assert(moe_a2a_bandwidth_of(hand_bytes, pl, 4, -1.0).algbw == 0.0);

    /* R = 1: the rank sends to itself; algbw counts it, busbw is 0 (nothing crosses a link) */
    const int64_t self[1] = {4096};
    two_nodes(pl, 1, 1);
    b = moe_a2a_bandwidth_of(self, pl, 1, 2.0);
    ck_assert(b.algbw == 2048.0 && b.busbw == 0.0);
    ck_assert(b.off_rank_bytes == 0 && b.off_node_bytes == 0 && b.send_bytes == 4096);
}
END_TEST

/* Seeded random matrices and node layouts: off_node <= off_rank <= total, off_rank = total - the
 * diagonal, every rank on its own node gives off_node = off_rank, the transpose keeps both
 * totals, and busbw = algbw (R - 1) / R exactly as written (the same two roundings). */
START_TEST(test_a2a_bandwidth_random)
{
    g_state = 20261201;
    for (int trial = 0; trial < 200; trial++) {
        int R = 1 + next_int(9), per_node = 1 + next_int(R);
        int64_t m[81], t[81], total = 0, diag = 0, max_row = 0;
        moe_placement pl[9], own[9];
        two_nodes(pl, R, per_node);
        two_nodes(own, R, 1);
        for (int s = 0; s < R; s++) {
            int64_t row = 0;
            for (int d = 0; d < R; d++) {
                int64_t v = next_int(4) == 0 ? 0 : (int64_t)(next_u64() % ((uint64_t)1 << 40));
                m[s * R + d] = t[d * R + s] = v;
                total += v;
                diag += s == d ? v : 0;
                row += v;
            }
            max_row = row > max_row ? row : max_row;
        }
        double sec = 1e-6 + next_unit();
        moe_a2a_bandwidth b = moe_a2a_bandwidth_of(m, pl, R, sec);
        moe_a2a_bandwidth bt = moe_a2a_bandwidth_of(t, pl, R, sec);
        moe_a2a_bandwidth bo = moe_a2a_bandwidth_of(m, own, R, sec);
        ck_assert_int_eq(b.send_bytes, max_row);
        ck_assert(b.algbw == (double)max_row / sec);
        ck_assert(b.busbw == b.algbw * (double)(R - 1) / (double)R);
        ck_assert_int_eq(b.off_rank_bytes, total - diag);
        ck_assert(b.off_node_bytes >= 0 && b.off_node_bytes <= b.off_rank_bytes);
        ck_assert_int_eq(bo.off_node_bytes, bo.off_rank_bytes);
        ck_assert_int_eq(bt.off_rank_bytes, b.off_rank_bytes);
        ck_assert_int_eq(bt.off_node_bytes, b.off_node_bytes);
        if (per_node >= R)
            ck_assert_int_eq(b.off_node_bytes, 0);
    }
}
END_TEST

START_TEST(test_spread_ratio)
{
    ck_assert(moe_spread_ratio((moe_spread){1.0, 1.5}) == 0.5);
    ck_assert(moe_spread_ratio((moe_spread){2.0, 2.0}) == 0.0);
    ck_assert(moe_spread_ratio((moe_spread){0.25, 1.0}) == 3.0);
    /* below the timer's resolution, or nothing timed: undefined, not infinite */
    ck_assert(isnan(moe_spread_ratio((moe_spread){0.0, 1.0})));
    ck_assert(isnan(moe_spread_ratio((moe_spread){0.0, 0.0})));
    ck_assert(isnan(moe_spread_ratio((moe_spread){NAN, 1.0})));
    ck_assert(isnan(moe_spread_ratio((moe_spread){1.0, INFINITY})));
}
END_TEST

/* moe_appendf: appends, cuts what does not fit, stays NUL-terminated. */
START_TEST(test_appendf)
{
    char buf[8];
    size_t used = 0;
    moe_appendf(buf, sizeof buf, &used, "ab%d", 3);
    ck_assert_str_eq(buf, "ab3");
    ck_assert_uint_eq(used, 3);
    moe_appendf(buf, sizeof buf, &used, "%s", "defghij");
    ck_assert_str_eq(buf, "ab3defg");
    ck_assert_uint_eq(used, 7);
    moe_appendf(buf, sizeof buf, &used, "more");
    ck_assert_str_eq(buf, "ab3defg");
    moe_appendf(NULL, 0, &used, "x"); /* no buffer: nothing */
}
END_TEST

START_TEST(test_run_warnings)
{
    moe_results r;
    memset(&r, 0, sizeof r);
    char buf[1024];
    /* nothing known, nothing timed: no warning */
    r.env.cores = -1;
    r.env.load_start = r.env.load_end = NAN;
    ck_assert_int_eq(moe_run_warnings(buf, sizeof buf, &r), 0);
    ck_assert_str_eq(buf, "");

    /* load exactly the cores is not above them; 25% spread exactly (4 to 5) is not above 25% */
    r.env.cores = 2;
    r.env.load_start = 2.0;
    r.env.load_end = 1.0;
    r.phase_iter[MOE_PHASE_DISPATCH] = (moe_spread){4e-3, 5e-3};
    r.phase_iter[MOE_PHASE_COMBINE] = (moe_spread){1e-3, 1e-3};
    r.phase_iter[MOE_PHASE_EXPERT] = (moe_spread){1e-3, 9e-3}; /* not an exchange: ignored */
    ck_assert_int_eq(moe_run_warnings(buf, sizeof buf, &r), 0);

    /* the start's load above the cores, the combine spread 50%: two lines, in that order */
    r.env.load_start = 2.5;
    r.phase_iter[MOE_PHASE_COMBINE] = (moe_spread){2e-3, 3e-3};
    ck_assert_int_eq(moe_run_warnings(buf, sizeof buf, &r), 2);
    char *nl = strchr(buf, '\n');
    ck_assert_ptr_nonnull(nl);
    const char *load = "load average 2.50 at the start exceeds the 2 online cores";
    ck_assert_msg(strncmp(buf, load, strlen(load)) == 0, "%s", buf);
    const char *combine = "combine times spread 50% over ranks and iterations (2 to 3 ms)\n";
    ck_assert_msg(strncmp(nl + 1, combine, strlen(combine)) == 0, "%s", nl + 1);
    ck_assert(buf[strlen(buf) - 1] == '\n');
    ck_assert_int_eq(count_lines(buf), 2);
    /* both loads, both exchanges */
    r.env.load_end = 3.0;
    r.phase_iter[MOE_PHASE_DISPATCH] = (moe_spread){1e-3, 2e-3};
    ck_assert_int_eq(moe_run_warnings(buf, sizeof buf, &r), 4);
    ck_assert_ptr_nonnull(strstr(buf, "at the end exceeds"));
    ck_assert_ptr_nonnull(strstr(buf, "dispatch times spread 100%"));
    /* no line is longer than the report's 100 columns with its "warning: " prefix */
    for (char *p = buf, *q; (q = strchr(p, '\n')) != NULL; p = q + 1)
        ck_assert_int_le((int)(q - p) + 9, 100);
    /* a short buffer: the count is still right, the text cut and terminated */
    char small[16];
    ck_assert_int_eq(moe_run_warnings(small, sizeof small, &r), 4);
    ck_assert_uint_eq(strlen(small), sizeof small - 1);
}
END_TEST

START_TEST(test_error_module)
{
    ck_assert_str_eq(moe_strerror(MOE_OK), "success");
    ck_assert_str_eq(moe_strerror(MOE_EUSAGE), "usage error");
    ck_assert_str_eq(moe_strerror(MOE_EMPI), "MPI error");
    ck_assert_str_eq(moe_strerror(12345), "unknown error");
    ck_assert_str_eq(moe_strerror(-99), "unknown error");
    /* every listed code has its own text */
    const int codes[] = {MOE_OK, MOE_EUSAGE, MOE_EINVAL, MOE_EIO, MOE_EFORMAT, MOE_ENOMEM, MOE_ERANGE,
                         MOE_EMPI};
    for (int i = 0; i < 8; i++) {
        ck_assert(codes[i] <= 0);
        for (int j = 0; j < i; j++)
            ck_assert_str_ne(moe_strerror(codes[i]), moe_strerror(codes[j]));
    }
    char msg[8];
    ck_assert_int_eq(moe_fail(MOE_EIO, msg, sizeof msg, "x=%d", 42), MOE_EIO);
    ck_assert_str_eq(msg, "x=42");
    /* Truncated to the buffer, always terminated. */
    ck_assert_int_eq(moe_fail(MOE_EINVAL, msg, sizeof msg, "%s", "a long message"), MOE_EINVAL);
    ck_assert_str_eq(msg, "a long ");
    /* No buffer, or an empty one: just the code, nothing written. */
    ck_assert_int_eq(moe_fail(MOE_ERANGE, NULL, 100, "ignored"), MOE_ERANGE);
    msg[0] = 'Z';
    ck_assert_int_eq(moe_fail(MOE_ERANGE, msg, 0, "ignored"), MOE_ERANGE);
    ck_assert(msg[0] == 'Z');
}
END_TEST

static Suite *stats_suite(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("stats");
    tcase_add_test(tc, test_median);
    tcase_add_test(tc, test_summarize);
    tcase_add_test(tc, test_load_balance_hand);
    tcase_add_test(tc, test_results_init_free_totals);
    tcase_add_test(tc, test_phase_names);
    tcase_add_test(tc, test_a2a_bandwidth_hand);
    tcase_add_test(tc, test_a2a_bandwidth_random);
    tcase_add_test(tc, test_spread_ratio);
    tcase_add_test(tc, test_run_warnings);
    tcase_add_test(tc, test_appendf);
    suite_add_tcase(s, tc);
    tc = tcase_create("error");
    tcase_add_test(tc, test_error_module);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(stats_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
