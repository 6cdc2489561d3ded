/* Unit tests of tokens: the block partition and the synthetic token states. */
#include "moesim/error.h"
#include "moesim/rng.h"
#include "moesim/tokens.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"

/* Check one (n, parts): parts in order tile [0, n) without gap or overlap, the first n mod parts
 * parts hold one more, and owner() agrees for every item. */
static void check_partition(int64_t n, int parts, int check_every_item)
{
    int64_t next = 0, base = n / parts, extra = n % parts;
    for (int i = 0; i < parts; i++) {
        int64_t first = -1, count = -1;
        moe_partition(n, parts, i, &first, &count);
        EXPECT_MSG(first == next, "n=%lld parts=%d part %d starts at %lld, expected %lld",
                      (long long)n, parts, i, (long long)first, (long long)next);
        EXPECT_EQ(count, base + (i < extra ? 1 : 0));
        if (check_every_item) {
            for (int64_t item = first; item < first + count; item++)
                EXPECT_MSG(moe_partition_owner(n, parts, item) == i,
                              "n=%lld parts=%d: owner(%lld) = %d, partition says %d", (long long)n,
                              parts, (long long)item, moe_partition_owner(n, parts, item), i);
        } else if (count > 0) {
            EXPECT_EQ(moe_partition_owner(n, parts, first), i);
            EXPECT_EQ(moe_partition_owner(n, parts, first + count - 1), i);
        }
        next = first + count;
    }
    EXPECT_EQ(next, n);
}

START_TEST(test_partition_hand)
{
    /* 10 items over 4 parts: 3, 3, 2, 2. */
    int64_t first, count;
    const int64_t want_first[] = {0, 3, 6, 8}, want_count[] = {3, 3, 2, 2};
    for (int i = 0; i < 4; i++) {
        moe_partition(10, 4, i, &first, &count);
        ck_assert_int_eq(first, want_first[i]);
        ck_assert_int_eq(count, want_count[i]);
    }
    /* 2 items over 5 parts: 1, 1, 0, 0, 0, the empty ones starting at 2. */
    for (int i = 0; i < 5; i++) {
        moe_partition(2, 5, i, &first, &count);
        ck_assert_int_eq(count, i < 2 ? 1 : 0);
        ck_assert_int_eq(first, i < 2 ? i : 2);
    }
    ck_assert_int_eq(moe_partition_owner(10, 4, 0), 0);
    ck_assert_int_eq(moe_partition_owner(10, 4, 5), 1);
    ck_assert_int_eq(moe_partition_owner(10, 4, 6), 2);
    ck_assert_int_eq(moe_partition_owner(10, 4, 9), 3);
    ck_assert_int_eq(moe_partition_owner(2, 5, 1), 1);
}
END_TEST

START_TEST(test_partition_exhaustive_small)
{
    /* Every n in [0, 200) over every parts in [1, 40]: includes n < parts, n = parts and every
     * remainder. */
    for (int64_t n = 0; n < 200; n++)
        for (int parts = 1; parts <= 40; parts++)
            check_partition(n, parts, 1);
}
END_TEST

START_TEST(test_partition_large)
{
    /* Sizes beyond 32 bits: only the part boundaries are checked item by item. */
    const int64_t ns[] = {INT64_C(1) << 40, (INT64_C(1) << 40) + 3, INT64_C(999999999989),
                          INT64_C(3000000000)};
    const int partss[] = {1, 2, 3, 7, 64, 1000, 65536};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (size_t b = 0; b < sizeof partss / sizeof *partss; b++)
            check_partition(ns[a], partss[b], 0);
}
END_TEST

START_TEST(test_generate_formula)
{
    /* h[r][j] = normal(seed, MOE_STREAM_TOKENS, (first + r) * d + j) rounded to float: bitwise. */
    enum { COUNT = 6, D = 7 };
    const int64_t first = 11;
    float h[COUNT * D];
    moe_tokens_generate(h, 99, first, COUNT, D);
    for (int r = 0; r < COUNT; r++)
        for (int j = 0; j < D; j++)
            EXPECT(h[r * D + j] ==
                      (float)moe_rng_normal(99, MOE_STREAM_TOKENS, (uint64_t)((first + r) * D + j)));
}
END_TEST

START_TEST(test_generate_rank_count_invariance)
{
    /* The rows a rank generates for its slice are bitwise the same rows of the whole batch, for
     * rank counts that do and do not divide N, and more ranks than tokens. */
    enum { N = 37, D = 5 };
    float whole[N * D], part[N * D];
    moe_tokens_generate(whole, 4242, 0, N, D);
    const int ranks[] = {1, 2, 3, 4, 5, 8, 36, 37, 40};
    for (size_t a = 0; a < sizeof ranks / sizeof *ranks; a++) {
        int R = ranks[a];
        for (int r = 0; r < R; r++) {
            int64_t first, count;
            moe_partition(N, R, r, &first, &count);
            memset(part, 0xff, sizeof part);
            moe_tokens_generate(part, 4242, first, count, D);
            EXPECT_MSG(memcmp(part, whole + first * D, (size_t)(count * D) * sizeof(float)) == 0,
                          "R=%d rank %d: slice differs from the whole batch", R, r);
        }
    }
    /* A different seed gives different data. */
    moe_tokens_generate(part, 4243, 0, N, D);
    EXPECT(memcmp(part, whole, sizeof whole) != 0);
}
END_TEST

/* --tokens-per-rank and source-ragged's shares, worked by hand */
START_TEST(test_ragged_blocks)
{
    int64_t out[4], first, count;
    char msg[256];
    ck_assert_int_eq(moe_tokens_per_rank_parse("100,0,350", 3, 450, out, msg, sizeof msg), MOE_OK);
    ck_assert(out[0] == 100 && out[1] == 0 && out[2] == 350);
    ck_assert_int_eq(moe_tokens_per_rank_parse("7", 1, 7, NULL, msg, sizeof msg), MOE_OK);
    static const struct {
        const char *list, *pattern;
    } bad[] = {{"100,200", "2 counts for 3"}, {"100,200,x", "entry 3"}, {"1,,2", "entry 2"},
               {"100,-5,355", "entry 2"}, {"100,200,100", "sums to 400"},
               {"100,200,200", "more than the batch's 450"}, {"100,200,150,0", "more than one count"},
               {"", "entry 1"}, {"1,2,3,", "entry 4"},
               {"1,9223372036854775807,0", "more than the batch"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(moe_tokens_per_rank_parse(bad[i].list, 3, 450, NULL, msg, sizeof msg),
                         MOE_EUSAGE);
        ck_assert_msg(strstr(msg, bad[i].pattern) != NULL, "'%s': %s", bad[i].list, msg);
    }
    /* c(m) = floor(n m (m + 1) / (R (R + 1))): n 600, R 3 -> 100 200 300; n 10 -> 1, 5, 10 */
    moe_tokens_ragged(out, 600, 3);
    ck_assert(out[0] == 100 && out[1] == 200 && out[2] == 300);
    moe_tokens_ragged(out, 10, 3);
    ck_assert(out[0] == 1 && out[1] == 4 && out[2] == 5);
    moe_tokens_ragged(out, (int64_t)10 << 36, 4); /* no overflow: 128-bit products */
    ck_assert(out[0] + out[1] + out[2] + out[3] == (int64_t)10 << 36 && out[3] == 4 * out[0]);
    /* blocks in order */
    const int64_t per[3] = {5, 0, 7};
    moe_token_block(per, 12, 3, 2, &first, &count);
    ck_assert(first == 5 && count == 7);
    moe_token_block(per, 12, 3, 1, &first, &count);
    ck_assert(first == 5 && count == 0);
    moe_token_block(NULL, 12, 5, 4, &first, &count); /* even: moe_partition */
    ck_assert(first == 10 && count == 2);
}
END_TEST

static Suite *tokens_suite(void)
{
    Suite *s = suite_create("tokens");
    TCase *tc = tcase_create("partition");
    tcase_add_test(tc, test_partition_hand);
    tcase_add_test(tc, test_partition_exhaustive_small);
    tcase_add_test(tc, test_partition_large);
    tcase_add_test(tc, test_ragged_blocks);
    suite_add_tcase(s, tc);
    tc = tcase_create("generate");
    tcase_add_test(tc, test_generate_formula);
    tcase_add_test(tc, test_generate_rank_count_invariance);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(tokens_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
