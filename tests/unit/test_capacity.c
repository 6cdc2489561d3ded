/* Unit tests of capacity: slots per expert and the position overflow policy. */
#include "moesim/capacity.h"
#include "moesim/tokens.h"

#include <check.h>
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

static Suite *capacity_suite(void)
{
    Suite *s = suite_create("capacity");
    TCase *tc = tcase_create("capacity");
    tcase_add_test(tc, test_capacity_hand);
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
