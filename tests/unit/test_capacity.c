/* Unit tests of capacity: slots per expert (with DeepSpeed's floor), the capacity groups, the
 * capacity factor that drops nothing, and the position overflow policy. */
#include "moesim/capacity.h"
#include "moesim/predict.h"
#include "moesim/tokens.h"

#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"

#include "testrng.h"

START_TEST(test_capacity_hand)
{
    ck_assert_int_eq(moe_capacity(1.25, 8192, 2, 8), 2560);  /* 1.25 * 8192 * 2 / 8 = 2560 exactly */
    ck_assert_int_eq(moe_capacity(1.0, 10, 1, 4), 3);        /* ceil(2.5) */
    ck_assert_int_eq(moe_capacity(1.1, 100, 1, 1), 110);     /* 1.1 * 100 = 110.00000000000001 */
    ck_assert_int_eq(moe_capacity(1.1, 400, 2, 8), 110);     /* the same through G k / E = 100 */
    ck_assert_int_eq(moe_capacity(1.1, 101, 1, 1), 112);     /* ceil(111.1) */
    ck_assert_int_eq(moe_capacity(0.0, 8192, 2, 8), MOE_CAPACITY_UNLIMITED);
    ck_assert_int_eq(moe_capacity(0.0, 0, 1, 1), MOE_CAPACITY_UNLIMITED);
    ck_assert_int_eq(moe_capacity(1.25, 0, 2, 8), 0);
    ck_assert_int_eq(moe_capacity(1.0, 1, 1, 64), 1);        /* ceil(1/64) */
    ck_assert_int_eq(moe_capacity(2.0, 7, 3, 7), 6);         /* exactly 6 */
    ck_assert_int_eq(moe_capacity(1e-9, 1, 1, 1), 1);        /* a tiny cf still gives a slot */
    ck_assert_int_eq(moe_capacity(1.0, 8192, 8, 256), 256);  /* DeepSeek-V3 shape: 256 exactly */
}
END_TEST

START_TEST(test_capacity_exact_decimals)
{
    /* cf with one or two decimals times a group where cf * G k / E is a whole number: never one slot
     * too many from binary rounding (the contract counts a value within 16 ulps of an integer as
     * that integer). */
    for (int hundredths = 1; hundredths <= 400; hundredths++) {
        double cf = hundredths / 100.0;
        for (int64_t G = 100; G <= 1000; G += 100) { /* G k / E = G: cf * G is a whole number */
            int64_t want = (int64_t)hundredths * G / 100;
            EXPECT_MSG(moe_capacity(cf, G, 1, 1) == want, "cf %.2f G %lld: %lld, expected %lld", cf,
                          (long long)G, (long long)moe_capacity(cf, G, 1, 1), (long long)want);
            EXPECT_EQ(moe_capacity(cf, G * 8, 2, 16), want);
        }
    }
}
END_TEST

/* Large groups. A guard of 1e-9 relative (the first version of moe_capacity) subtracted more than a
 * whole slot once cf * G * k / E passed 1e9, so an exact integer lost slots (2000000000 gave
 * 1999999998), reachable through --tokens up to 2^40 with enough ranks. Expected values are exact
 * integer arithmetic. */
START_TEST(test_capacity_large_groups)
{
    ck_assert_int_eq(moe_capacity(1.0, INT64_C(2000000000), 1, 1), INT64_C(2000000000));
    ck_assert_int_eq(moe_capacity(1.0, INT64_C(8000000000), 2, 8), INT64_C(2000000000));
    ck_assert_int_eq(moe_capacity(1.0, INT64_C(1) << 40, 2, 8), INT64_C(1) << 38);
    /* 1000000000.5 slots: ceil is 1000000001 */
    ck_assert_int_eq(moe_capacity(1.0, INT64_C(2000000001), 1, 2), INT64_C(1000000001));
}
END_TEST

START_TEST(test_capacity_vs_exact_arithmetic)
{
    /* cf = h / 100 or h / 8, random G up to 2^40, k and E: compare with ceil(h G k / (q E)) in
     * 128-bit integers. The double computation is within ~4 ulps of the exact value; cases whose
     * exact value lies within 32 ulps of an integer without being one are skipped, since the
     * contract deliberately rounds those to the integer. */
    g_state = 23;
    int checked = 0;
    for (int trial = 0; trial < 20000; trial++) {
        int64_t q = next_int(2) ? 100 : 8, h = 1 + next_int(400);
        int k = 1 + next_int(8), E = k + next_int(next_int(2) ? 16 : 65536 - 8);
        int64_t G = next_int(4) == 0 ? (int64_t)(next_u64() >> 24) : next_int(100000);
        __int128 num = (__int128)h * G * k, den = (__int128)q * E;
        int64_t want = (int64_t)((num + den - 1) / den);
        if (num % den != 0) {
            double v = (double)num / (double)den, frac = v - floor(v);
            double gap = frac < 1 - frac ? frac : 1 - frac;
            if (gap <= 32 * 2.220446049250313e-16 * v)
                continue;
        }
        int64_t got = moe_capacity((double)h / (double)q, G, k, E);
        EXPECT_MSG(got == want, "cf %lld/%lld G %lld k %d E %d: %lld, exact ceil %lld", (long long)h,
                   (long long)q, (long long)G, k, E, (long long)got, (long long)want);
        checked++;
    }
    ck_assert_int_gt(checked, 19000);
}
END_TEST

START_TEST(test_overflow_position_hand)
{
    /* 3 sources x 3 experts, capacity 4.
     * expert 0 wants 2, 3, 4: served 2, then 2 of 3 (split inside source 1), then 0.
     * expert 1 wants 0, 1, 2: all 3 fit.
     * expert 2 wants 5, 0, 1: 4 of 5 from source 0, nothing left for source 2. */
    const int64_t counts[] = {2, 0, 5, 3, 1, 0, 4, 2, 1};
    const int64_t want[] = {2, 0, 4, 2, 1, 0, 0, 2, 0};
    int64_t acc[9];
    memset(acc, 0xff, sizeof acc);
    moe_overflow_position(acc, counts, 3, 3, 4);
    ck_assert_mem_eq(acc, want, sizeof want);
    /* Unlimited: everything. */
    moe_overflow_position(acc, counts, 3, 3, MOE_CAPACITY_UNLIMITED);
    ck_assert_mem_eq(acc, counts, sizeof counts);
    /* Capacity 0: nothing. */
    moe_overflow_position(acc, counts, 3, 3, 0);
    for (int i = 0; i < 9; i++)
        ck_assert_int_eq(acc[i], 0);
    /* Capacity larger than any total: everything. */
    moe_overflow_position(acc, counts, 3, 3, 1000);
    ck_assert_mem_eq(acc, counts, sizeof counts);
    /* One source: a plain min(count, capacity). */
    const int64_t one[] = {7, 0, 3, 12};
    const int64_t one_want[] = {5, 0, 3, 5};
    moe_overflow_position(acc, one, 1, 4, 5);
    ck_assert_mem_eq(acc, one_want, sizeof one_want);
}
END_TEST

START_TEST(test_mark_accepted_hand)
{
    /* 5 tokens, k = 2, E = 3; the source may keep 2, 1, 3 assignments of experts 0, 1, 2.
     * expert: [0 1 | 1 2 | 0 1 | 2 0 | 1 0]
     * flag:   [1 1 | 0 1 | 1 0 | 1 0 | 0 0] */
    const int32_t ex[] = {0, 1, 1, 2, 0, 1, 2, 0, 1, 0};
    const int64_t keep[] = {2, 1, 3};
    const uint8_t want[] = {1, 1, 0, 1, 1, 0, 1, 0, 0, 0};
    uint8_t flag[10];
    int64_t seen[3] = {99, 99, 99}; /* scratch: must be reset by the callee */
    memset(flag, 7, sizeof flag);
    moe_mark_accepted(flag, ex, 5, 2, 3, keep, seen);
    ck_assert_mem_eq(flag, want, sizeof want);
    /* Keep nothing, keep everything. */
    const int64_t none[] = {0, 0, 0}, all[] = {10, 10, 10};
    moe_mark_accepted(flag, ex, 5, 2, 3, none, seen);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(flag[i], 0);
    moe_mark_accepted(flag, ex, 5, 2, 3, all, seen);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(flag[i], 1);
    /* The reference with capacity 2 on the same routing: expert 0 gets tokens 0, 2; expert 1
     * tokens 0, 1; expert 2 tokens 1, 3. */
    const uint8_t ref_want[] = {1, 1, 1, 1, 1, 0, 1, 0, 0, 0};
    int64_t load[3];
    moe_overflow_position_ref(flag, ex, 5, 2, 3, 2, load);
    ck_assert_mem_eq(flag, ref_want, sizeof ref_want);
    moe_overflow_position_ref(flag, ex, 5, 2, 3, MOE_CAPACITY_UNLIMITED, load);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(flag[i], 1);
}
END_TEST

/* Random routing of n tokens, k distinct experts each, skewed towards low ids so that some experts
 * overflow and others do not. */
static void random_routing(int32_t *ex, int64_t n, int k, int E)
{
    for (int64_t t = 0; t < n; t++)
        for (int c = 0; c < k; c++) {
            int e, dup;
            do {
                /* min of two uniforms: expert e with probability ~ 2(E - e) / E^2 */
                int a = next_int(E), b = next_int(E);
                e = a < b ? a : b;
                dup = 0;
                for (int c2 = 0; c2 < c; c2++)
                    dup |= ex[t * k + c2] == e;
            } while (dup);
            ex[t * k + c] = e;
        }
}

START_TEST(test_global_scope_rank_count_invariance)
{
    /* What the distributed global scope does: each of R ranks counts its contiguous block of
     * tokens, the counts (R, E) go through moe_overflow_position, each rank marks its block with
     * its row of accepted. The flags must be those of the serial reference over the whole batch,
     * for every R, including R that does not divide n and R > n. */
    static const int64_t ns[] = {1, 7, 100, 1000, 997};
    static const int Rs[] = {1, 2, 3, 4, 7, 8, 16, 64};
    g_state = 21;
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (int E = 1; E <= 16; E += 5)
            for (int k = 1; k <= E && k <= 4; k++) {
                int64_t n = ns[a];
                int32_t *ex = malloc((size_t)(n * k) * sizeof *ex);
                uint8_t *ref = malloc((size_t)(n * k)), *flag = malloc((size_t)(n * k));
                int64_t *counts = calloc((size_t)64 * E, sizeof *counts);
                int64_t *acc = calloc((size_t)64 * E, sizeof *acc);
                int64_t *scratch = malloc((size_t)E * sizeof *scratch);
                random_routing(ex, n, k, E);
                const double cfs[] = {0.0, 0.5, 1.0, 1.25, 2.0};
                for (size_t ci = 0; ci < sizeof cfs / sizeof *cfs; ci++) {
                    int64_t cap = moe_capacity(cfs[ci], n, k, E);
                    moe_overflow_position_ref(ref, ex, n, k, E, cap, scratch);
                    for (size_t ri = 0; ri < sizeof Rs / sizeof *Rs; ri++) {
                        int R = Rs[ri];
                        memset(counts, 0, (size_t)R * E * sizeof *counts);
                        for (int r = 0; r < R; r++) {
                            int64_t first, count;
                            moe_partition(n, R, r, &first, &count);
                            for (int64_t i = first * k; i < (first + count) * k; i++)
                                counts[(int64_t)r * E + ex[i]]++;
                        }
                        moe_overflow_position(acc, counts, R, E, cap);
                        memset(flag, 0xee, (size_t)(n * k));
                        for (int r = 0; r < R; r++) {
                            int64_t first, count;
                            moe_partition(n, R, r, &first, &count);
                            moe_mark_accepted(flag + first * k, ex + first * k, count, k, E,
                                              acc + (int64_t)r * E, scratch);
                        }
                        EXPECT_MSG(memcmp(flag, ref, (size_t)(n * k)) == 0,
                                      "n=%lld E=%d k=%d cf=%g R=%d: flags differ from the serial "
                                      "reference", (long long)n, E, k, cfs[ci], R);
                    }
                    /* The reference itself: per expert, accepted = min(load, capacity), and the
                     * accepted ones are the earliest. */
                    for (int e = 0; e < E; e++) {
                        int64_t load = 0, kept = 0;
                        for (int64_t i = 0; i < n * k; i++)
                            if (ex[i] == e) {
                                EXPECT_EQ(ref[i], cap < 0 || load < cap);
                                load++;
                                kept += ref[i];
                            }
                        EXPECT_EQ(kept, cap < 0 || load < cap ? load : cap);
                    }
                }
                free(ex), free(ref), free(flag), free(counts), free(acc), free(scratch);
            }
}
END_TEST

START_TEST(test_local_scope_is_per_block_reference)
{
    /* Local scope: each rank is its own group with capacity from its own token count. One source
     * through moe_overflow_position + moe_mark_accepted equals the reference on that block. */
    enum { N = 503, E = 8, K = 2 };
    int32_t ex[N * K];
    uint8_t ref[N * K], flag[N * K];
    int64_t counts[E], acc[E], scratch[E];
    g_state = 22;
    random_routing(ex, N, K, E);
    for (int R = 1; R <= 9; R++)
        for (int r = 0; r < R; r++) {
            int64_t first, count;
            moe_partition(N, R, r, &first, &count);
            int64_t cap = moe_capacity(1.0, count, K, E);
            memset(counts, 0, sizeof counts);
            for (int64_t i = first * K; i < (first + count) * K; i++)
                counts[ex[i]]++;
            moe_overflow_position(acc, counts, 1, E, cap);
            moe_mark_accepted(flag, ex + first * K, count, K, E, acc, scratch);
            moe_overflow_position_ref(ref, ex + first * K, count, K, E, cap, scratch);
            EXPECT_MSG(memcmp(flag, ref, (size_t)(count * K)) == 0, "R=%d rank %d", R, r);
        }
}
END_TEST

START_TEST(test_names)
{
    ck_assert_str_eq(moe_scope_name(MOE_SCOPE_GLOBAL), "global");
    ck_assert_str_eq(moe_scope_name(MOE_SCOPE_LOCAL), "local");
    ck_assert_str_eq(moe_policy_name(MOE_POLICY_POSITION), "position");
}
END_TEST

/* ---- issue 9: min capacity, groups, the capacity a dropless run would have needed ---- */

START_TEST(test_min_capacity_hand)
{
    /* C = max(ceil(cf G k / E), M) */
    ck_assert_int_eq(moe_group_capacity(1.0, 10, 1, 4, 0), 3);     /* ceil(2.5) */
    ck_assert_int_eq(moe_group_capacity(1.0, 10, 1, 4, 2), 3);     /* the formula is above M */
    ck_assert_int_eq(moe_group_capacity(1.0, 10, 1, 4, 3), 3);     /* equal */
    ck_assert_int_eq(moe_group_capacity(1.0, 10, 1, 4, 4), 4);     /* the floor */
    /* DeepSpeed's default floor of 4 on a small group: 8 tokens, 64 experts, ceil(1/8) = 1 */
    ck_assert_int_eq(moe_group_capacity(1.0, 8, 1, 64, 4), 4);
    ck_assert_int_eq(moe_group_capacity(1.25, 8192, 2, 8, 4), 2560);
    /* an empty group still gets the floor (capacity = max(capacity, min_capacity)) */
    ck_assert_int_eq(moe_group_capacity(1.25, 0, 2, 8, 0), 0);
    ck_assert_int_eq(moe_group_capacity(1.25, 0, 2, 8, 5), 5);
    /* dropless ignores the floor */
    ck_assert_int_eq(moe_group_capacity(0.0, 8192, 2, 8, 4), MOE_CAPACITY_UNLIMITED);
    ck_assert_int_eq(moe_group_capacity(0.0, 0, 1, 1, 1000), MOE_CAPACITY_UNLIMITED);
    /* the 16-ulp guard is kept: 1.1 * 100 is 110 slots, and a floor of 110 leaves it there */
    ck_assert_int_eq(moe_group_capacity(1.1, 100, 1, 1, 110), 110);
    ck_assert_int_eq(moe_group_capacity(1.1, 100, 1, 1, 111), 111);
    /* moe_capacity is the formula without a floor */
    ck_assert_int_eq(moe_capacity(1.0, 8, 1, 64), 1);
}
END_TEST

START_TEST(test_min_capacity_property)
{
    /* Random cf, G, k, E, M: C >= M, C >= the formula, and C is the formula when that is >= M,
     * else M. */
    g_state = 41;
    for (int trial = 0; trial < 50000; trial++) {
        double cf = next_int(8) == 0 ? 0.0 : (1 + next_int(400)) / 100.0;
        int k = 1 + next_int(8), E = k + next_int(300);
        int64_t G = next_int(4) == 0 ? (int64_t)(next_u64() >> 30) : next_int(5000);
        int64_t M = next_int(3) == 0 ? 0 : next_int(next_int(2) ? 10 : 100000);
        int64_t C = moe_group_capacity(cf, G, k, E, M), F = moe_capacity(cf, G, k, E);
        if (cf == 0.0) {
            EXPECT_EQ(C, MOE_CAPACITY_UNLIMITED);
            continue;
        }
        EXPECT_MSG(C >= M && C >= F && C == (F >= M ? F : M),
                   "cf %g G %lld k %d E %d M %lld: C %lld, formula %lld", cf, (long long)G, k, E,
                   (long long)M, (long long)C, (long long)F);
    }
}
END_TEST

/* Expert choice: an expert takes at most its group's tokens; unlimited stays unlimited. */
START_TEST(test_capacity_at_most_group)
{
    int64_t groups[] = {100, 33, 0, 7};
    int64_t cap[] = {254, 33, 4, MOE_CAPACITY_UNLIMITED};
    moe_group_capacities_at_most_group(cap, groups, 4);
    ck_assert_int_eq(cap[0], 100);
    ck_assert_int_eq(cap[1], 33);
    ck_assert_int_eq(cap[2], 0);
    ck_assert_int_eq(cap[3], MOE_CAPACITY_UNLIMITED);
    int64_t small[] = {5};
    int64_t c1[] = {3};
    moe_group_capacities_at_most_group(c1, small, 1);
    ck_assert_int_eq(c1[0], 3);
}
END_TEST

START_TEST(test_capacity_groups_and_sum)
{
    int64_t g[8], cap[8];
    /* global: one group of the batch */
    ck_assert_int_eq(moe_capacity_groups(g, MOE_SCOPE_GLOBAL, 1001, 4), 1);
    ck_assert_int_eq(g[0], 1001);
    /* local: the block partition, the first N mod R ranks one more */
    ck_assert_int_eq(moe_capacity_groups(g, MOE_SCOPE_LOCAL, 1001, 4), 4);
    ck_assert(g[0] == 251 && g[1] == 250 && g[2] == 250 && g[3] == 250);
    ck_assert_int_eq(moe_capacity_groups(g, MOE_SCOPE_LOCAL, 2, 3), 3); /* a rank with none */
    ck_assert(g[0] == 1 && g[1] == 1 && g[2] == 0);
    /* capacities per group, in place over the group sizes, and their sum:
     * cf 1.0, k 2, E 8: ceil(251/4) = 63, ceil(250/4) = 63 (62.5) -> 252; with M 64: 256 */
    moe_capacity_groups(g, MOE_SCOPE_LOCAL, 1001, 4);
    moe_group_capacities(cap, 1.0, g, 4, 2, 8, 0);
    ck_assert(cap[0] == 63 && cap[1] == 63 && cap[2] == 63 && cap[3] == 63);
    ck_assert_int_eq(moe_capacity_sum(cap, 4), 252);
    moe_group_capacities(g, 1.0, g, 4, 2, 8, 64); /* aliasing */
    ck_assert_int_eq(moe_capacity_sum(g, 4), 256);
    moe_capacity_groups(g, MOE_SCOPE_LOCAL, 2, 3);
    moe_group_capacities(cap, 1.0, g, 3, 1, 4, 2); /* the empty group gets the floor too */
    ck_assert(cap[0] == 2 && cap[1] == 2 && cap[2] == 2);
    moe_group_capacities(cap, 0.0, g, 3, 1, 4, 2);
    ck_assert_int_eq(moe_capacity_sum(cap, 3), MOE_CAPACITY_UNLIMITED);
}
END_TEST

START_TEST(test_capacity_needed_hand)
{
    int64_t max_load;
    double cf;
    /* global, G 5, k 2, E 4, loads 3 5 2 0: 5 * 4 / (5 * 2) = 2.0 */
    const int64_t g1[] = {3, 5, 2, 0}, G1[] = {5};
    moe_capacity_needed(&max_load, &cf, g1, G1, 1, 4, 2, 4);
    ck_assert_int_eq(max_load, 5);
    ck_assert(cf == 2.0);
    ck_assert_int_eq(moe_group_capacity(cf, 5, 2, 4, 0), 5);
    ck_assert_int_eq(moe_capacity(1.6, 5, 2, 4), 4); /* (L - 1) E / (G k) = 1.6: one slot short */
    /* local, groups of 4 and 3 tokens, k 2, E 4:
     *   group 0: loads 3 2 2 1 -> 3 * 4 / 8 = 1.5
     *   group 1: loads 2 2 1 1 -> 2 * 4 / 6 = 1.333...
     * cf 1.5; the largest load is 3 (group 0). At 1.5, C = 3 in group 0 and ceil(2.25) = 3 in
     * group 1: nothing drops. */
    const int64_t g2[] = {3, 2, 2, 1, 2, 2, 1, 1}, G2[] = {4, 3};
    moe_capacity_needed(&max_load, &cf, g2, G2, 2, 4, 2, 4);
    ck_assert_int_eq(max_load, 3);
    ck_assert(cf == 1.5);
    /* the tightest group need not hold the largest load: group 1 of 2 tokens has load 2 of a
     * possible 2: 2 * 4 / (2 * 2) = 2.0 beats group 0's 3 * 4 / (10 * 2) = 0.6 */
    const int64_t g3[] = {3, 3, 2, 2, 2, 1, 1, 0}, G3[] = {10, 2};
    moe_capacity_needed(&max_load, &cf, g3, G3, 2, 4, 2, 4);
    ck_assert_int_eq(max_load, 3);
    ck_assert(cf == 2.0);
    /* an empty group and a group without load are skipped; no load at all gives 0, 0 */
    const int64_t g4[] = {0, 0, 0, 0, 1, 0, 0, 0}, G4[] = {0, 1};
    moe_capacity_needed(&max_load, &cf, g4, G4, 2, 4, 1, 4);
    ck_assert_int_eq(max_load, 1);
    ck_assert(cf == 4.0); /* 1 * 4 / (1 * 1) */
    const int64_t g5[] = {0, 0}, G5[] = {3};
    moe_capacity_needed(&max_load, &cf, g5, G5, 1, 2, 1, 2);
    ck_assert_int_eq(max_load, 0);
    ck_assert(cf == 0.0);
    /* a subset of experts (a rank's own): E enters the formula, n_exp only the walk */
    const int64_t g6[] = {6, 1}, G6[] = {8};
    moe_capacity_needed(&max_load, &cf, g6, G6, 1, 2, 2, 4); /* 6 * 4 / 16 */
    ck_assert_int_eq(max_load, 6);
    ck_assert(cf == 1.5);
}
END_TEST

/* Drops from the counts: sum over groups and experts of max(L - C_g, 0). */
static int64_t drops_at(double cf, const int64_t *loads, const int64_t *groups, int n_groups, int E,
                        int k, int64_t M, int64_t *cap)
{
    moe_group_capacities(cap, cf, groups, n_groups, k, E, M);
    int64_t dropped, empty;
    moe_predict_exact_caps(&dropped, &empty, loads, E, cap, n_groups);
    return dropped;
}

START_TEST(test_capacity_needed_property)
{
    /* Random routings (k distinct experts per token, skewed) of random batches in both scopes:
     *  - at cf_needed no assignment drops (with or without a floor M), and in the tightest group
     *    C equals the largest load exactly;
     *  - at cf_low = max_g (L_g - 1) E / (G_g k), where the tightest ceiling steps down, some
     *    assignment drops (when cf_low > 0);
     *  - anywhere strictly between (the midpoint, when the two are more than 1e-9 apart
     *    relatively) nothing drops: the ceiling covers the load there too, so cf_needed is the
     *    exact slot count, and the drop-free range begins just above cf_low;
     *  - the drop count agrees with the position policy over the same counts.
     * Also large groups (G up to 2^40) with loads set directly, where the capacity's 16-ulp guard
     * must give exactly L slots at L E / (G k). */
    g_state = 42;
    int checked_low = 0;
    for (int trial = 0; trial < 600; trial++) {
        int E = 1 + next_int(12), k = 1 + next_int(E < 4 ? E : 4), R = 1 + next_int(E < 6 ? E : 6);
        int64_t N = 1 + next_int(next_int(2) ? 40 : 2000);
        moe_scope scope = next_int(2) ? MOE_SCOPE_LOCAL : MOE_SCOPE_GLOBAL;
        int32_t *ex = malloc((size_t)(N * k) * sizeof *ex);
        random_routing(ex, N, k, E);
        int64_t groups[6], cap[6], *loads = calloc((size_t)6 * E, sizeof *loads);
        int n_groups = moe_capacity_groups(groups, scope, N, R);
        for (int g = 0, first = 0; g < n_groups; first += (int)groups[g], g++)
            for (int64_t i = (int64_t)first * k; i < (first + groups[g]) * k; i++)
                loads[(int64_t)g * E + ex[i]]++;
        int64_t max_load;
        double need;
        moe_capacity_needed(&max_load, &need, loads, groups, n_groups, E, k, E);
        ck_assert(need > 0.0 && max_load >= 1);
        int64_t M = next_int(3) ? 0 : next_int(5);
        EXPECT_MSG(drops_at(need, loads, groups, n_groups, E, k, 0, cap) == 0,
                   "trial %d: drops at cf_needed %.17g", trial, need);
        EXPECT_EQ(drops_at(need, loads, groups, n_groups, E, k, M, cap), 0);
        double low = 0.0;
        int64_t tight_equal = 0;
        drops_at(need, loads, groups, n_groups, E, k, 0, cap);
        for (int g = 0; g < n_groups; g++) {
            int64_t top = 0;
            for (int e = 0; e < E; e++)
                top = loads[(int64_t)g * E + e] > top ? loads[(int64_t)g * E + e] : top;
            if (groups[g] == 0 || top == 0)
                continue;
            double l = (double)(top - 1) * E / ((double)groups[g] * k);
            low = l > low ? l : low;
            tight_equal |= cap[g] == top;
        }
        EXPECT_MSG(tight_equal, "trial %d: no group has C equal to its largest load at cf_needed",
                   trial);
        if (low > 0.0) {
            EXPECT_MSG(drops_at(low, loads, groups, n_groups, E, k, 0, cap) > 0,
                       "trial %d: nothing drops at cf_low %.17g (cf_needed %.17g)", trial, low, need);
            checked_low++;
        }
        if (need - low > 1e-9 * need) {
            double mid = 0.5 * (low + need);
            EXPECT_MSG(drops_at(mid, loads, groups, n_groups, E, k, 0, cap) == 0,
                       "trial %d: drops at %.17g, between cf_low %.17g and cf_needed %.17g", trial,
                       mid, low, need);
        }
        /* the same verdict through the position policy on the counts, group by group */
        int64_t *acc = calloc((size_t)E, sizeof *acc), served = 0;
        moe_group_capacities(cap, need, groups, n_groups, k, E, 0);
        for (int g = 0; g < n_groups; g++) {
            moe_overflow_position(acc, loads + (int64_t)g * E, 1, E, cap[g]);
            for (int e = 0; e < E; e++)
                served += acc[e];
        }
        EXPECT_EQ(served, N * k);
        free(acc);
        free(ex);
        free(loads);
    }
    ck_assert_int_gt(checked_low, 300);
    /* large groups, loads set directly */
    for (int trial = 0; trial < 20000; trial++) {
        int k = 1 + next_int(8), E = k + next_int(next_int(2) ? 16 : 65536 - 8);
        int64_t G = 1 + (int64_t)(next_u64() >> (24 + next_int(30)));
        int64_t L = 1 + (int64_t)(next_u64() % (uint64_t)G);
        int64_t max_load;
        double need;
        moe_capacity_needed(&max_load, &need, &L, &G, 1, 1, k, E);
        EXPECT_MSG(moe_capacity(need, G, k, E) == L, "G %lld L %lld k %d E %d: C %lld at %.17g",
                   (long long)G, (long long)L, k, E, (long long)moe_capacity(need, G, k, E), need);
    }
}
END_TEST

START_TEST(test_predict_caps_match)
{
    /* The prediction over given capacities equals the cf form without a floor, and counts the
     * floor with one: loads 5 1 / 0 2 in two groups of 3 tokens, k 1, E 2, cf 1.0: C = 2 each;
     * M 4: C = 4 each. */
    const int64_t loads[] = {5, 1, 0, 2}, groups[] = {3, 3};
    int64_t cap[2], d1, m1, d2, m2;
    moe_group_capacities(cap, 1.0, groups, 2, 1, 2, 0);
    moe_predict_exact_caps(&d1, &m1, loads, 2, cap, 2);
    moe_predict_exact(&d2, &m2, loads, 2, 1, 1.0, groups, 2);
    ck_assert(d1 == d2 && m1 == m2 && d1 == 3 && m1 == 1 + 2 + 0);
    moe_group_capacities(cap, 1.0, groups, 2, 1, 2, 4);
    moe_predict_exact_caps(&d1, &m1, loads, 2, cap, 2);
    ck_assert(d1 == 1 && m1 == 3 + 4 + 2);
    const double q[] = {0.75, 0.25};
    double cd1, cm1, cd2, cm2;
    moe_group_capacities(cap, 1.0, groups, 2, 1, 2, 0);
    moe_predict_closed_form_caps(&cd1, &cm1, q, 2, groups, cap, 2);
    moe_predict_closed_form(&cd2, &cm2, q, 2, 1, 1.0, groups, 2);
    ck_assert(cd1 == cd2 && cm1 == cm2);
    moe_group_capacities(cap, 0.0, groups, 2, 1, 2, 4);
    moe_predict_closed_form_caps(&cd1, &cm1, q, 2, groups, cap, 2);
    moe_predict_exact_caps(&d1, &m1, loads, 2, cap, 2);
    ck_assert(cd1 == 0.0 && cm1 == 0.0 && d1 == 0 && m1 == 0);
}
END_TEST

static Suite *capacity_suite(void)
{
    Suite *s = suite_create("capacity");
    TCase *tc = tcase_create("capacity");
    tcase_add_test(tc, test_capacity_hand);
    tcase_add_test(tc, test_capacity_at_most_group);
    tcase_add_test(tc, test_capacity_exact_decimals);
    tcase_add_test(tc, test_capacity_large_groups);
    tcase_add_test(tc, test_capacity_vs_exact_arithmetic);
    tcase_add_test(tc, test_names);
    suite_add_tcase(s, tc);
    tc = tcase_create("overflow");
    tcase_add_test(tc, test_overflow_position_hand);
    tcase_add_test(tc, test_mark_accepted_hand);
    tcase_add_test(tc, test_global_scope_rank_count_invariance);
    tcase_add_test(tc, test_local_scope_is_per_block_reference);
    suite_add_tcase(s, tc);
    tc = tcase_create("min_capacity_and_needed");
    tcase_add_test(tc, test_min_capacity_hand);
    tcase_add_test(tc, test_min_capacity_property);
    tcase_add_test(tc, test_capacity_groups_and_sum);
    tcase_add_test(tc, test_capacity_needed_hand);
    tcase_add_test(tc, test_capacity_needed_property);
    tcase_add_test(tc, test_predict_caps_match);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(capacity_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
