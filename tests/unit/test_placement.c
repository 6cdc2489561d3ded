/* Unit tests of placement: contiguous and strided maps, EPLB's replicate and pack on hand-worked
 * cases, the replica choice, the rank overload, and the loads file readers. */
#include "moesim/error.h"
#include "moesim/placement.h"
#include "moesim/tokens.h"

#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "expect.h"
#include "scratch.h"
#include "testrng.h"

static char g_dir[] = "/tmp/moesim-placement-XXXXXX";

#define N_OF(a) ((int)(sizeof(a) / sizeof *(a)))

static void expect_i32(const int32_t *got, const int32_t *want, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        EXPECT_MSG(got[i] == want[i], "%s[%d] = %d, want %d", what, i, got[i], want[i]);
}

/* The invariants every map keeps, whatever the placement. */
static void check_map(const moe_expert_map *m)
{
    EXPECT(m->P >= m->E);
    EXPECT_EQ(m->first_slot[0], 0);
    EXPECT_EQ(m->first_slot[m->R], m->P);
    for (int r = 0; r < m->R; r++) {
        EXPECT(m->first_slot[r] <= m->first_slot[r + 1]);
        for (int s = m->first_slot[r]; s < m->first_slot[r + 1]; s++) {
            EXPECT_EQ(m->rank[s], r);
            if (s > m->first_slot[r]) /* inside a rank: logical id, then replica index */
                EXPECT(m->logical[s - 1] < m->logical[s] ||
                       (m->logical[s - 1] == m->logical[s] && m->replica[s - 1] < m->replica[s]));
        }
    }
    int sum = 0;
    EXPECT_EQ(m->replica_start[0], 0);
    for (int e = 0; e < m->E; e++) {
        EXPECT(m->replicas[e] >= 1);
        sum += m->replicas[e];
        EXPECT_EQ(m->replica_start[e + 1], m->replica_start[e] + m->replicas[e]);
        for (int j = 0; j < m->replicas[e]; j++) {
            int s = m->replica_slot[m->replica_start[e] + j];
            EXPECT(s >= 0 && s < m->P);
            EXPECT_EQ(m->logical[s], e);
            EXPECT_EQ(m->replica[s], j);
        }
    }
    EXPECT_EQ(sum, m->P); /* with the checks above: replica_slot is a permutation of the slots */
}

/* ---- contiguous and strided ---- */

START_TEST(test_contiguous_is_moe_partition)
{
    char msg[256];
    for (int E = 1; E <= 40; E++)
        for (int R = 1; R <= 40; R++) {
            moe_expert_map m;
            int rc = moe_expert_map_build(&m, MOE_PLACE_CONTIGUOUS, E, R, 0, NULL, msg, sizeof msg);
            EXPECT_EQ(rc, MOE_OK);
            check_map(&m);
            EXPECT_EQ(m.P, E);
            for (int r = 0; r < R; r++) {
                int64_t first, count;
                moe_partition(E, R, r, &first, &count);
                EXPECT_EQ(m.first_slot[r], first);
                EXPECT_EQ(m.first_slot[r + 1] - m.first_slot[r], count);
            }
            for (int s = 0; s < E; s++) {
                EXPECT_EQ(m.logical[s], s);
                EXPECT_EQ(m.rank[s], moe_partition_owner(E, R, s));
                EXPECT_EQ(m.replica_slot[s], s);
                EXPECT_EQ(moe_expert_map_slot(&m, 12345, s), s);
            }
            EXPECT_EQ(moe_expert_map_colocated(&m), 0);
            moe_expert_map_free(&m);
        }
}
END_TEST

START_TEST(test_strided_hand)
{
    /* E 7 over R 3, expert e on rank e mod 3: rank 0 {0, 3, 6}, rank 1 {1, 4}, rank 2 {2, 5} */
    char msg[256];
    moe_expert_map m;
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_STRIDED, 7, 3, 0, NULL, msg, sizeof msg),
                     MOE_OK);
    check_map(&m);
    ck_assert_int_eq(m.kind, MOE_PLACE_STRIDED);
    expect_i32(m.logical, (int32_t[]){0, 3, 6, 1, 4, 2, 5}, 7, "logical");
    expect_i32(m.first_slot, (int32_t[]){0, 3, 5, 7}, 4, "first_slot");
    expect_i32(m.replica_slot, (int32_t[]){0, 3, 5, 1, 4, 6, 2}, 7, "replica_slot");
    moe_expert_map_free(&m);
    /* more ranks than experts: ranks 3 and 4 hold nothing */
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_STRIDED, 3, 5, 0, NULL, msg, sizeof msg),
                     MOE_OK);
    check_map(&m);
    expect_i32(m.first_slot, (int32_t[]){0, 1, 2, 3, 3, 3}, 6, "first_slot");
    moe_expert_map_free(&m);
    moe_expert_map_free(&m); /* a zeroed map frees again */
    moe_expert_map_free(NULL);
}
END_TEST

/* ---- EPLB ---- */

START_TEST(test_eplb_hand_4_2_2)
{
    /* E 4, R 2, N 2, loads {90, 10, 40, 20}.
     * (a) replicate, load per replica:  {90, 10, 40, 20} -> e0 (90) gets a 2nd replica
     *                                   {45, 10, 40, 20} -> e0 (45 > 40) gets a 3rd
     *     phy2log {0, 1, 2, 3, 0, 0}, replica index {0, 0, 0, 0, 1, 2}, replicas {3, 1, 1, 1}
     * (b) pack 6 physical onto 2 ranks x 3, weights {30, 10, 40, 20, 30, 30};
     *     descending (ties: lower index) p2 40, p0 30, p4 30, p5 30, p3 20, p1 10:
     *       p2 -> r0 (0 = 0, lower rank)  r0 40
     *       p0 -> r1 (0 < 40)             r1 30
     *       p4 -> r1 (30 < 40)            r1 60
     *       p5 -> r0 (40 < 60)            r0 70
     *       p3 -> r1 (60 < 70)            r1 80, full {p0, p4, p3}
     *       p1 -> r0 (only free rank)     r0 80, full {p2, p5, p1}
     *     pack {1, 0, 0, 1, 1, 0}
     * Rank-major by (logical, replica): r0 = e0#2, e1, e2; r1 = e0#0, e0#1, e3. Ranks 80 and 80:
     * overload 1. Contiguous without copies: r0 = 90 + 10, r1 = 40 + 20: 100 / 80 = 1.25. */
    const double loads[4] = {90, 10, 40, 20};
    int32_t phy2log[6], phy_rep[6], reps[4], pack[6];
    moe_eplb_replicate(phy2log, phy_rep, reps, loads, 4, 2);
    expect_i32(phy2log, (int32_t[]){0, 1, 2, 3, 0, 0}, 6, "phy2log");
    expect_i32(phy_rep, (int32_t[]){0, 0, 0, 0, 1, 2}, 6, "phy_replica");
    expect_i32(reps, (int32_t[]){3, 1, 1, 1}, 4, "replicas");
    char msg[256];
    const double w[6] = {30, 10, 40, 20, 30, 30};
    ck_assert_int_eq(moe_eplb_pack(pack, w, 6, 2, msg, sizeof msg), MOE_OK);
    expect_i32(pack, (int32_t[]){1, 0, 0, 1, 1, 0}, 6, "pack");

    moe_expert_map m;
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 4, 2, 2, loads, msg, sizeof msg),
                     MOE_OK);
    check_map(&m);
    ck_assert_int_eq(m.P, 6);
    expect_i32(m.logical, (int32_t[]){0, 1, 2, 0, 0, 3}, 6, "logical");
    expect_i32(m.replica, (int32_t[]){2, 0, 0, 0, 1, 0}, 6, "replica");
    expect_i32(m.rank, (int32_t[]){0, 0, 0, 1, 1, 1}, 6, "rank");
    expect_i32(m.first_slot, (int32_t[]){0, 3, 6}, 3, "first_slot");
    expect_i32(m.replicas, (int32_t[]){3, 1, 1, 1}, 4, "replicas");
    expect_i32(m.replica_start, (int32_t[]){0, 3, 4, 5, 6}, 5, "replica_start");
    expect_i32(m.replica_slot, (int32_t[]){3, 4, 0, 1, 2, 5}, 6, "replica_slot");
    /* EPLB puts two of e0's three copies on rank 1: unavoidable, 3 copies over 2 ranks */
    ck_assert_int_eq(moe_expert_map_colocated(&m), 1);

    double slot_load[6], rank_load[2];
    moe_expert_map_slot_loads(slot_load, &m, loads);
    const double want_slot[6] = {30, 10, 40, 30, 30, 20};
    for (int s = 0; s < 6; s++) /* 90 / 3 is exact in binary64 */
        ck_assert_double_eq(slot_load[s], want_slot[s]);
    ck_assert_double_eq(moe_rank_overload(rank_load, &m, slot_load), 1.0);
    ck_assert_double_eq(rank_load[0], 80.0);
    ck_assert_double_eq(rank_load[1], 80.0);

    /* replica choice: token t to replica t mod 3 of e0: slots 3, 4, 0, 3, ... */
    ck_assert_int_eq(moe_expert_map_slot(&m, 0, 0), 3);
    ck_assert_int_eq(moe_expert_map_slot(&m, 1, 0), 4);
    ck_assert_int_eq(moe_expert_map_slot(&m, 2, 0), 0);
    ck_assert_int_eq(moe_expert_map_slot(&m, 3, 0), 3);
    ck_assert_int_eq(moe_expert_map_slot(&m, -1, 0), 0); /* -1 mod 3 = 2 */
    ck_assert_int_eq(moe_expert_map_slot(&m, 7, 3), 5);
    moe_expert_map_free(&m);

    moe_expert_map c;
    ck_assert_int_eq(moe_expert_map_build(&c, MOE_PLACE_CONTIGUOUS, 4, 2, 0, NULL, msg, sizeof msg),
                     MOE_OK);
    moe_expert_map_slot_loads(slot_load, &c, loads);
    ck_assert_double_eq(moe_rank_overload(rank_load, &c, slot_load), 1.25);
    moe_expert_map_free(&c);
}
END_TEST

START_TEST(test_eplb_colocates_when_avoidable)
{
    /* E 5, R 2, N 1, loads {20, 15, 3, 2, 1}. (a) e0 gets the copy: weights {10, 15, 3, 2, 1, 10}.
     * (b) p1 15 -> r0; p0 10 -> r1; p5 10 -> r1 (10 < 15) 20; p2 3 -> r0 18; p3 2 -> r0 20, full;
     * p4 1 -> r1 21. Rank 1 holds both copies of e0, as EPLB's balanced_packing allows: keeping
     * them apart would put a copy of e0 beside e1, a rank of at least 10 + 15 + 1 = 26 > 21. */
    const double loads[5] = {20, 15, 3, 2, 1};
    char msg[256];
    moe_expert_map m;
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 5, 2, 1, loads, msg, sizeof msg),
                     MOE_OK);
    check_map(&m);
    expect_i32(m.logical, (int32_t[]){1, 2, 3, 0, 0, 4}, 6, "logical");
    ck_assert_int_eq(moe_expert_map_colocated(&m), 1);
    double slot_load[6], rank_load[2];
    moe_expert_map_slot_loads(slot_load, &m, loads);
    ck_assert_double_eq_tol(moe_rank_overload(rank_load, &m, slot_load), 21.0 / 20.5, 1e-15);
    ck_assert_double_eq(rank_load[0], 20.0);
    ck_assert_double_eq(rank_load[1], 21.0);
    moe_expert_map_free(&m);
}
END_TEST

START_TEST(test_eplb_replicate_ties)
{
    int32_t phy2log[5], rep[5], reps[3];
    /* all zero: every quotient ties at 0, so every copy goes to expert 0 (EPLB: torch max keeps
     * the first) */
    moe_eplb_replicate(phy2log, rep, reps, (double[]){0, 0, 0}, 3, 2);
    expect_i32(reps, (int32_t[]){3, 1, 1}, 3, "replicas");
    expect_i32(rep, (int32_t[]){0, 0, 0, 1, 2}, 5, "phy_replica");
    /* {4, 4}: the first copy to e0 (tie), then e1 (4 > 2) */
    moe_eplb_replicate(phy2log, rep, reps, (double[]){4, 4}, 2, 2);
    expect_i32(phy2log, (int32_t[]){0, 1, 0, 1}, 4, "phy2log");
    expect_i32(reps, (int32_t[]){2, 2}, 2, "replicas");
}
END_TEST

START_TEST(test_eplb_one_slot_per_rank)
{
    /* P == R: balanced_packing's shortcut puts physical i on rank i, unsorted. Sorting would have
     * put the heaviest, e3, on rank 0. */
    char msg[256];
    moe_expert_map m;
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 4, 4, 0, (double[]){1, 2, 3, 4}, msg,
                                          sizeof msg),
                     MOE_OK);
    check_map(&m);
    expect_i32(m.logical, (int32_t[]){0, 1, 2, 3}, 4, "logical");
    moe_expert_map_free(&m);
    /* E 2, R 4, N 2, loads {1, 3}: e1 gets both copies (3 > 1, then 1.5 > 1): physical
     * {e0, e1#0, e1#1, e1#2} on ranks 0..3 in that order */
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 2, 4, 2, (double[]){1, 3}, msg,
                                          sizeof msg),
                     MOE_OK);
    check_map(&m);
    expect_i32(m.logical, (int32_t[]){0, 1, 1, 1}, 4, "logical");
    expect_i32(m.replica, (int32_t[]){0, 0, 1, 2}, 4, "replica");
    double slot_load[4], rank_load[4];
    moe_expert_map_slot_loads(slot_load, &m, (double[]){1, 3});
    ck_assert_double_eq(moe_rank_overload(rank_load, &m, slot_load), 1.0);
    moe_expert_map_free(&m);
}
END_TEST

START_TEST(test_eplb_pack_only_can_lose_to_contiguous)
{
    /* N 0 only packs. Loads {3, 3, 0, 2, 2, 2} on 2 ranks x 3: contiguous is perfect (6, 6);
     * greedy packing: p0 3 -> r0, p1 3 -> r1, p3 2 -> r0 5, p4 2 -> r1 5, p5 2 -> r0 7 (full),
     * p2 0 -> r1 5: 7 / 6. So "EPLB never loses to contiguous" is not a theorem; the property test
     * below checks it only on its seeded skewed cases. */
    const double loads[6] = {3, 3, 0, 2, 2, 2};
    char msg[256];
    moe_expert_map m, c;
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 6, 2, 0, loads, msg, sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(moe_expert_map_build(&c, MOE_PLACE_CONTIGUOUS, 6, 2, 0, NULL, msg, sizeof msg),
                     MOE_OK);
    check_map(&m);
    expect_i32(m.logical, (int32_t[]){0, 3, 5, 1, 2, 4}, 6, "logical");
    double slot_load[6], rank_load[2];
    moe_expert_map_slot_loads(slot_load, &m, loads);
    ck_assert_double_eq_tol(moe_rank_overload(rank_load, &m, slot_load), 7.0 / 6.0, 1e-15);
    moe_expert_map_slot_loads(slot_load, &c, loads);
    ck_assert_double_eq(moe_rank_overload(rank_load, &c, slot_load), 1.0);
    moe_expert_map_free(&m);
    moe_expert_map_free(&c);
}
END_TEST

/* Loads with hot experts: a base in [0.5, 1.5) and 1..3 experts 10..50 times hotter. */
static void skewed_loads(double *loads, int E)
{
    for (int e = 0; e < E; e++)
        loads[e] = 0.5 + next_unit();
    int hot = 1 + next_int(3);
    for (int h = 0; h < hot; h++)
        loads[next_int(E)] *= 10.0 + 40.0 * next_unit();
}

/* On 1000 seeded layers with hot experts: the map invariants, P / R slots per rank, no load lost,
 * and the overload against contiguous without copies. EPLB is a greedy heuristic, so beating
 * contiguous is not a theorem: contiguous can split the hot experts by luck. Over 200,000 cases
 * of this generator EPLB lost in 0.07% (149), by at most 12.2% (ratio 1.122), and only where
 * contiguous was already within 1.15 of even (e.g. seed 281: E 6, R 2, N 4, loads
 * {9.3, 37.4, 0.65, 1.1, 1.3, 38.8}, eplb 1.081 vs contiguous 1.069). So: where contiguous is
 * clearly skewed (>= 1.25) EPLB must not lose; elsewhere a loss must stay rare and small. */
START_TEST(test_eplb_properties_random)
{
    char msg[256];
    int skewed = 0, losses = 0;
    for (uint64_t seed = 1; seed <= 1000; seed++) {
        g_state = seed;
        int R = 1 + next_int(16), E = R * (1 + next_int(8)), N = R * next_int(3);
        double loads[128], slot_load[256], rank_load[16];
        skewed_loads(loads, E);
        moe_expert_map m, c;
        EXPECT_EQ(moe_expert_map_build(&m, MOE_PLACE_EPLB, E, R, N, loads, msg, sizeof msg),
                  MOE_OK);
        check_map(&m);
        EXPECT_EQ(m.P, E + N);
        for (int r = 0; r < R; r++)
            EXPECT_EQ(m.first_slot[r + 1] - m.first_slot[r], (E + N) / R);
        moe_expert_map_slot_loads(slot_load, &m, loads);
        double eplb = moe_rank_overload(rank_load, &m, slot_load), total = 0.0, want = 0.0;
        for (int r = 0; r < R; r++)
            total += rank_load[r];
        for (int e = 0; e < E; e++)
            want += loads[e];
        /* the copies split each load without losing any: equal up to rounding of the sums */
        EXPECT_MSG(fabs(total - want) <= 1e-12 * want, "seed %d: total %g != %g", (int)seed, total,
                   want);
        EXPECT_EQ(moe_expert_map_build(&c, MOE_PLACE_CONTIGUOUS, E, R, 0, NULL, msg, sizeof msg),
                  MOE_OK);
        moe_expert_map_slot_loads(slot_load, &c, loads);
        double contiguous = moe_rank_overload(rank_load, &c, slot_load);
        bool lost = eplb > contiguous * (1 + 1e-12); /* 1e-12: rounding of the rank sums */
        skewed += contiguous >= 1.25;
        losses += lost;
        EXPECT_MSG(!lost || (contiguous < 1.25 && eplb <= 1.15 * contiguous),
                   "seed %d (E %d, R %d, N %d): eplb overload %g, contiguous %g", (int)seed, E, R,
                   N, eplb, contiguous);
        moe_expert_map_free(&m);
        moe_expert_map_free(&c);
    }
    ck_assert_int_ge(skewed, 700); /* the cases are mostly skewed, so the check above bites */
    ck_assert_int_le(losses, 10);
}
END_TEST

/* ---- replica choice ---- */

START_TEST(test_replica_choice_rank_independent_and_even)
{
    /* E 6, N 6 copies: replicate does not depend on R, so every R dividing 12 gives the same
     * replica counts, and (t, e) the same (expert, replica) pair wherever that replica lives. */
    const double loads[6] = {50, 1, 30, 2, 9, 7};
    const int ranks[] = {1, 2, 3, 4, 6, 12};
    char msg[256];
    moe_expert_map m[6];
    for (int i = 0; i < N_OF(ranks); i++) {
        ck_assert_int_eq(moe_expert_map_build(&m[i], MOE_PLACE_EPLB, 6, ranks[i], 6, loads, msg,
                                              sizeof msg),
                         MOE_OK);
        check_map(&m[i]);
        expect_i32(m[i].replicas, m[0].replicas, 6, "replicas");
    }
    ck_assert_int_gt(m[0].replicas[0], 2); /* the hot expert got several copies */
    for (int e = 0; e < 6; e++) {
        int n = m[0].replicas[e];
        for (int64_t t = 0; t < 200; t++)
            for (int i = 0; i < N_OF(ranks); i++) {
                int32_t s = moe_expert_map_slot(&m[i], t, e);
                EXPECT_EQ(m[i].logical[s], e);
                EXPECT_EQ(m[i].replica[s], t % n);
            }
        /* any run of consecutive tokens splits over the replicas within one */
        for (int64_t t0 = 0; t0 < 10; t0++)
            for (int len = 1; len <= 40; len++) {
                int count[12] = {0};
                for (int64_t t = t0; t < t0 + len; t++)
                    count[m[0].replica[moe_expert_map_slot(&m[0], t, e)]]++;
                int lo = len, hi = 0;
                for (int j = 0; j < n; j++) {
                    lo = count[j] < lo ? count[j] : lo;
                    hi = count[j] > hi ? count[j] : hi;
                }
                EXPECT_MSG(hi - lo <= 1, "expert %d, tokens [%d, %d): counts %d..%d", e, (int)t0,
                           (int)(t0 + len), lo, hi);
            }
    }
    for (int i = 0; i < N_OF(ranks); i++)
        moe_expert_map_free(&m[i]);
}
END_TEST

/* ---- argument errors ---- */

START_TEST(test_build_errors)
{
    char msg[256];
    moe_expert_map m;
    const double loads[4] = {1, 2, 3, 4};
    msg[0] = '\0';
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 4, 3, 1, loads, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "multiple of the rank count 3"));
    ck_assert_ptr_null(m.logical);
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_CONTIGUOUS, 4, 2, 2, NULL, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "eplb"));
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 4, 2, 0, NULL, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_STRIDED, 0, 2, 0, NULL, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_STRIDED, 4, 0, 0, NULL, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 4, 2, -2, loads, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_int_eq(moe_expert_map_build(&m, (moe_place_kind)7, 4, 2, 0, loads, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 4, 2, 0, (double[]){1, -1, 2, 3},
                                          msg, sizeof msg),
                     MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "expert 1"));
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 4, 2, 0, (double[]){1, 2, 3, NAN},
                                          msg, sizeof msg),
                     MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "expert 3"));
    int32_t pack[5];
    ck_assert_int_eq(moe_eplb_pack(pack, (double[]){1, 2, 3, 4, 5}, 5, 2, msg, sizeof msg),
                     MOE_EUSAGE);

    moe_place_kind k;
    ck_assert_int_eq(moe_place_kind_parse("strided", &k, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(k, MOE_PLACE_STRIDED);
    ck_assert_int_eq(moe_place_kind_parse("eplb", &k, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(k, MOE_PLACE_EPLB);
    ck_assert_int_eq(moe_place_kind_parse("block", &k, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "'block'"));
    ck_assert_str_eq(moe_place_kind_name(MOE_PLACE_CONTIGUOUS), "contiguous");
    ck_assert_str_eq(moe_place_kind_name((moe_place_kind)9), "unknown");
}
END_TEST

/* ---- loads files ---- */

static void path_in(char *buf, size_t len, const char *name)
{
    ck_assert_int_lt(snprintf(buf, len, "%s/%s", g_dir, name), (int)len);
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

/* A .npy file: prefix, dict padded with spaces to a multiple of 64 bytes and '\n', then data. */
static void write_npy(const char *path, int major, const char *dict, const void *data, size_t len)
{
    unsigned char buf[4096];
    size_t prefix = major == 1 ? 10 : 12, n = strlen(dict);
    size_t total = prefix + n + 1, pad = (64 - total % 64) % 64, hlen = n + pad + 1;
    ck_assert_uint_lt(prefix + hlen + len, sizeof buf);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8 & 0xff);
    if (major != 1)
        buf[10] = (unsigned char)(hlen >> 16 & 0xff), buf[11] = (unsigned char)(hlen >> 24 & 0xff);
    memcpy(buf + prefix, dict, n);
    memset(buf + prefix + n, ' ', pad);
    buf[prefix + hlen - 1] = '\n';
    if (len > 0)
        memcpy(buf + prefix + hlen, data, len);
    write_file(path, buf, prefix + hlen + len);
}

static void expect_loads(const char *path, int E, const double *want)
{
    double got[16];
    char msg[512] = "";
    int rc = moe_loads_read(path, E, got, msg, sizeof msg);
    ck_assert_msg(rc == MOE_OK, "%s: %s", path, msg);
    for (int e = 0; e < E; e++)
        ck_assert_double_eq(got[e], want[e]);
}

START_TEST(test_loads_npy_good)
{
    char path[512];
    const double want[4] = {1.5, 0, 7, 2};
    const float f4[4] = {1.5f, 0.0f, 7.0f, 2.0f};
    path_in(path, sizeof path, "f4.npy");
    write_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", f4, sizeof f4);
    expect_loads(path, 4, want);
    const double f8[4] = {1.5, -0.0, 7, 2}; /* -0 reads as 0 */
    path_in(path, sizeof path, "f8_row.npy");
    write_npy(path, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 4), }", f8,
              sizeof f8);
    expect_loads(path, 4, want);
    const int64_t i8[3] = {10, 0, 3};
    path_in(path, sizeof path, "i8_col.npy");
    /* format 2.0, Fortran order: a column has the same bytes either way */
    write_npy(path, 2, "{\"descr\": \"<i8\", \"fortran_order\": True, \"shape\": (3, 1)}", i8,
              sizeof i8);
    expect_loads(path, 3, (double[]){10, 0, 3});
    const int32_t i4[2] = {5, 6};
    path_in(path, sizeof path, "i4"); /* no .npy name: found by its magic */
    write_npy(path, 3, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", i4, sizeof i4);
    int before = count_entries(g_dir);
    expect_loads(path, 2, (double[]){5, 6});
    ck_assert_int_eq(count_entries(g_dir), before); /* reading leaves nothing behind */
}
END_TEST

START_TEST(test_loads_csv_good)
{
    char path[512];
    const double want[4] = {1.5, 0, 7, 2};
    static const char *const texts[] = {
        "1.5\n0\n7\n2\n",               /* one per line */
        "load\n1.5\n0\n7\n2",           /* header, no final newline */
        "LOAD\r\n1.5\r\n0\r\n\r\n7\r\n2\r\n", /* CRLF, blank line, header case */
        "1.5, 0,7 ,2\n",                /* one line */
        "\n  load \n 1.5,0,7,2e0\n\n",  /* blank lines around, header, exponent */
    };
    for (int i = 0; i < N_OF(texts); i++) {
        char name[32];
        snprintf(name, sizeof name, "good%d.csv", i);
        path_in(path, sizeof path, name);
        write_file(path, texts[i], strlen(texts[i]));
        expect_loads(path, 4, want);
    }
}
END_TEST

typedef struct bad_file {
    const char *name;
    int npy;          /* 0: text below; 1: .npy with the dict below and `bytes` data bytes */
    const char *text; /* file text, or the .npy dict */
    size_t bytes;
    int code;
    const char *needle; /* in the message beside the file name */
} bad_file;

#define F4_4 "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }"
static const bad_file bad_files[] = {
    {"count.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 20, MOE_EUSAGE,
     "holds 5 loads; need 4"},
    {"f2.npy", 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }", 8, MOE_EFORMAT,
     "<f2"},
    {"big_endian.npy", 1, "{'descr': '>f8', 'fortran_order': False, 'shape': (4,), }", 32,
     MOE_EFORMAT, ">f8"},
    {"matrix.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", 16,
     MOE_EFORMAT, "matrix"},
    {"cube.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 4), }", 16,
     MOE_EFORMAT, "more than 2 dimensions"},
    {"scalar.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 4, MOE_EFORMAT,
     "scalar"},
    {"short.npy", 1, F4_4, 12, MOE_EFORMAT, "12 data bytes"},
    {"long.npy", 1, F4_4, 20, MOE_EFORMAT, "20 data bytes"},
    {"negative.npy", 1, F4_4, 16, MOE_EFORMAT, "index 2"},  /* data: {1, 2, -1, 3} */
    {"nan.npy", 1, F4_4, 16, MOE_EFORMAT, "index 3"},       /* data: {1, 2, 3, NaN} */
    {"nomagic.npy", 0, "1\n2\n3\n4\n", 0, MOE_EFORMAT, "bad magic"},
    {"header.csv", 0, "expert,load\n0,1\n", 0, MOE_EFORMAT, "only header allowed is 'load'"},
    {"negative.csv", 0, "load\n1\n2\n-3\n4\n", 0, MOE_EFORMAT, "line 4: load -3"},
    {"empty_value.csv", 0, "1,,2,3\n", 0, MOE_EFORMAT, "line 1, value 2: empty"},
    {"inf.csv", 0, "1\n2\ninf\n4\n", 0, MOE_EFORMAT, "line 3: load inf"},
    {"word.csv", 0, "1\n2\nthree\n4\n", 0, MOE_EFORMAT, "line 3: 'three' is not a number"},
    {"mixed.csv", 0, "1\n2,3\n4\n", 0, MOE_EFORMAT, "line 2: give one load per line"},
    {"two_lines.csv", 0, "1,2\n3,4\n", 0, MOE_EFORMAT, "line 2: give one load per line"},
    {"few.csv", 0, "1\n2\n3\n", 0, MOE_EUSAGE, "holds 3 loads; need 4"},
    {"many.csv", 0, "1,2,3,4,5\n", 0, MOE_EUSAGE, "holds 5 loads; need 4"},
    {"empty.csv", 0, "\n\nload\n", 0, MOE_EFORMAT, "holds 0 loads"},
    {"late_header.csv", 0, "1\nload\n2\n3\n", 0, MOE_EFORMAT, "line 2: 'load' is not a number"},
};

START_TEST(test_loads_bad)
{
    const bad_file *b = &bad_files[_i];
    char path[512], msg[512] = "";
    path_in(path, sizeof path, b->name);
    if (b->npy) {
        float data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        if (strcmp(b->name, "negative.npy") == 0)
            data[2] = -1, data[3] = 3;
        if (strcmp(b->name, "nan.npy") == 0)
            data[3] = NAN;
        write_npy(path, 1, b->text, data, b->bytes);
    } else {
        write_file(path, b->text, strlen(b->text));
    }
    double loads[8];
    int rc = moe_loads_read(path, 4, loads, msg, sizeof msg);
    ck_assert_msg(rc == b->code, "%s: code %d, want %d (%s)", b->name, rc, b->code, msg);
    ck_assert_msg(strstr(msg, path) != NULL, "%s: message does not name the file: %s", b->name,
                  msg);
    ck_assert_msg(strstr(msg, b->needle) != NULL, "%s: '%s' not in: %s", b->name, b->needle, msg);
}
END_TEST

START_TEST(test_loads_unreadable)
{
    char path[512], msg[512] = "";
    double loads[4];
    path_in(path, sizeof path, "missing.csv");
    ck_assert_int_eq(moe_loads_read(path, 4, loads, msg, sizeof msg), MOE_EIO);
    ck_assert_ptr_nonnull(strstr(msg, path));
    path_in(path, sizeof path, "a_dir");
    ck_assert_int_eq(mkdir(path, 0700), 0);
    ck_assert_int_eq(moe_loads_read(path, 4, loads, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "directory"));
    path_in(path, sizeof path, "nul.csv");
    write_file(path, "1\n2\0\n3\n4\n", 9);
    ck_assert_int_eq(moe_loads_read(path, 4, loads, msg, sizeof msg), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(msg, "NUL byte at offset 3"));
}
END_TEST

START_TEST(test_nodex_meta_slots)
{
    /* E 8 contiguous on R 4 (2 slots a rank): nodes {0, 1} {2, 3} hold 4 slots each, so a node row
     * has min(k, 4) entries; one node of 4 ranks 8; nodes {0} {1, 2, 3} the larger, 6. With EPLB
     * and 4 replicas (12 slots, 3 a rank) nodes of 2 hold 6. */
    moe_expert_map m;
    char msg[256];
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_CONTIGUOUS, 8, 4, 0, NULL, msg, sizeof msg),
                     MOE_OK);
    const int pairs[4] = {0, 0, 1, 1}, one[4] = {0, 0, 0, 0}, lop[4] = {0, 1, 1, 1};
    EXPECT_EQ(moe_nodex_meta_slots(3, &m, pairs, 4), 3);
    EXPECT_EQ(moe_nodex_meta_slots(8, &m, pairs, 4), 4);
    EXPECT_EQ(moe_nodex_meta_slots(8, &m, one, 4), 8);
    EXPECT_EQ(moe_nodex_meta_slots(8, &m, lop, 4), 6);
    moe_expert_map_free(&m);
    const double loads[8] = {8, 1, 1, 1, 1, 1, 1, 1};
    ck_assert_int_eq(moe_expert_map_build(&m, MOE_PLACE_EPLB, 8, 4, 4, loads, msg, sizeof msg),
                     MOE_OK);
    EXPECT_EQ(moe_nodex_meta_slots(8, &m, pairs, 4), 6);
    moe_expert_map_free(&m);
}
END_TEST

static Suite *placement_suite(void)
{
    Suite *s = suite_create("placement");
    TCase *tc = tcase_create("maps");
    tcase_add_test(tc, test_contiguous_is_moe_partition);
    tcase_add_test(tc, test_strided_hand);
    tcase_add_test(tc, test_build_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("eplb");
    tcase_add_test(tc, test_eplb_hand_4_2_2);
    tcase_add_test(tc, test_eplb_colocates_when_avoidable);
    tcase_add_test(tc, test_eplb_replicate_ties);
    tcase_add_test(tc, test_eplb_one_slot_per_rank);
    tcase_add_test(tc, test_eplb_pack_only_can_lose_to_contiguous);
    tcase_add_test(tc, test_eplb_properties_random);
    tcase_add_test(tc, test_replica_choice_rank_independent_and_even);
    suite_add_tcase(s, tc);
    tc = tcase_create("loads");
    tcase_add_test(tc, test_loads_npy_good);
    tcase_add_test(tc, test_loads_csv_good);
    tcase_add_loop_test(tc, test_loads_bad, 0, N_OF(bad_files));
    tcase_add_test(tc, test_loads_unreadable);
    tcase_add_test(tc, test_nodex_meta_slots);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_in_scratch(g_dir, placement_suite(), NULL);
}
