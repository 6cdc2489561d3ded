/* Unit tests of xsum, the exact sum of floats: hand cases where a naive float or double sum is
 * wrong, the order- and split-independence that motivates it (bitwise), and agreement with two
 * independent references: a long double sum on inputs chosen so that it is exact, and a big-integer
 * accumulation with its own round-to-nearest-even, written here from the IEEE bit layout.
 *
 * Tolerance: none. The header promises the exact sum rounded to double once, that is the double
 * nearest the exact sum (ties to even), so every comparison below is exact equality of doubles. */
#include "moesim/xsum.h"

#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"
#include "testrng.h"

static double xsum_of(const float *x, size_t n)
{
    moe_xsum s;
    moe_xsum_init(&s);
    moe_xsum_add_array(&s, x, n);
    return moe_xsum_value(&s);
}

/* The bits of a double, to compare results bitwise (and to see -0 from +0 in messages). */
static uint64_t bits_of(double v)
{
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

/* ---- the reference: a 384-bit two's-complement integer in units of 2^-149 ---- */

enum { REF_WORDS = 12 };
typedef struct ref_sum {
    uint32_t w[REF_WORDS]; /* value = (signed) sum w[i] 2^(32 i) * 2^-149 */
} ref_sum;

/* Add (or subtract) mag * 2^pos to the integer, with full carry propagation. */
static void ref_add_shifted(ref_sum *r, uint64_t mag, int pos, int negative)
{
    uint32_t add[REF_WORDS] = {0};
    /* mag < 2^24, pos <= 253: mag << (pos % 32) < 2^55 over at most two words */
    int word = pos / 32, shift = pos % 32;
    uint64_t v = mag << shift;
    add[word] = (uint32_t)v;
    add[word + 1] = (uint32_t)(v >> 32);
    if (negative) { /* two's complement of add */
        uint64_t carry = 1;
        for (int i = 0; i < REF_WORDS; i++) {
            uint64_t t = (uint64_t)(uint32_t)~add[i] + carry;
            add[i] = (uint32_t)t;
            carry = t >> 32;
        }
    }
    uint64_t carry = 0;
    for (int i = 0; i < REF_WORDS; i++) {
        uint64_t t = (uint64_t)r->w[i] + add[i] + carry;
        r->w[i] = (uint32_t)t;
        carry = t >> 32;
    }
}

/* Decode x from its bits: a normal float is (2^23 + frac) 2^(ef - 150) = (2^23 + frac) 2^(ef - 1)
 * units of 2^-149; a subnormal is frac units. */
static void ref_add(ref_sum *r, float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    uint32_t ef = (b >> 23) & 0xff, frac = b & 0x7fffff;
    if (ef == 0xff)
        return; /* inf, nan: ignored, as documented */
    if (ef == 0)
        ref_add_shifted(r, frac, 0, (int)(b >> 31));
    else
        ref_add_shifted(r, frac | 0x800000u, (int)ef - 1, (int)(b >> 31));
}

/* The exact value rounded to the nearest double, ties to even. */
static double ref_value(const ref_sum *r0)
{
    ref_sum r = *r0;
    int negative = (int)(r.w[REF_WORDS - 1] >> 31);
    if (negative) {
        uint64_t carry = 1;
        for (int i = 0; i < REF_WORDS; i++) {
            uint64_t t = (uint64_t)(uint32_t)~r.w[i] + carry;
            r.w[i] = (uint32_t)t;
            carry = t >> 32;
        }
    }
    int top = -1;
    for (int i = 32 * REF_WORDS - 1; i >= 0 && top < 0; i--)
        if ((r.w[i / 32] >> (i % 32)) & 1)
            top = i;
    if (top < 0)
        return 0.0;
#define BIT(i) ((int)((r.w[(i) / 32] >> ((i) % 32)) & 1))
    uint64_t q = 0;
    int low = top - 52 > 0 ? top - 52 : 0; /* the 53 (or fewer) bits kept */
    for (int i = top; i >= low; i--)
        q = (q << 1) | (uint64_t)BIT(i);
    if (low > 0) {
        int guard = BIT(low - 1), sticky = 0;
        for (int i = low - 2; i >= 0 && !sticky; i--)
            sticky = BIT(i);
        if (guard && (sticky || (q & 1)))
            q++; /* may reach 2^53: still exact in double */
    }
#undef BIT
    /* q 2^(low - 149): q < 2^54 and low - 149 >= -149, far inside double's normal range */
    double v = ldexp((double)q, low - 149);
    return negative ? -v : v;
}

static double ref_of(const float *x, size_t n)
{
    ref_sum r;
    memset(&r, 0, sizeof r);
    for (size_t i = 0; i < n; i++)
        ref_add(&r, x[i]);
    return ref_value(&r);
}

/* ---- hand cases ---- */

START_TEST(test_reference_hand)
{
    /* the reference itself, on sums whose value is obvious */
    const float a[] = {1.0f, 2.0f, -0.5f};
    ck_assert(ref_of(a, 3) == 2.5);
    const float b[] = {0x1p-149f};
    ck_assert(ref_of(b, 1) == 0x1p-149);
    const float c[] = {-FLT_MAX, -FLT_MAX};
    ck_assert(ref_of(c, 2) == -2.0 * (double)FLT_MAX);
    const float d[] = {1.0f, 0x1p-53f}; /* a tie: to even, 1 */
    ck_assert(ref_of(d, 2) == 1.0);
    const float e[] = {1.0f, 0x1p-53f, 0x1p-100f}; /* just above the tie: up */
    ck_assert(ref_of(e, 3) == 1.0 + 0x1p-52);
    const float f[] = {1.0f, 0x1p-52f, 0x1p-53f}; /* 1 + 3 2^-53: a tie between odd and even */
    ck_assert(ref_of(f, 3) == 1.0 + 0x1p-51);
    const float g[] = {3.0f, -3.0f};
    ck_assert(ref_of(g, 2) == 0.0);
}
END_TEST

START_TEST(test_large_cancels_small)
{
    /* 1e30 + 1 - 1e30: float and double both lose the 1 (ulp(1e30) is 2^47 in double) */
    const float x[] = {1e30f, 1.0f, -1e30f};
    volatile float nf = x[0];
    nf += x[1];
    nf += x[2];
    volatile double nd = x[0];
    nd += x[1];
    nd += x[2];
    ck_assert(nf == 0.0f && nd == 0.0); /* the naive sums are wrong, so the case means something */
    ck_assert(xsum_of(x, 3) == 1.0);
    /* in any order */
    const float y[] = {1.0f, -1e30f, 1e30f};
    ck_assert(xsum_of(y, 3) == 1.0);
}
END_TEST

START_TEST(test_many_ones_and_tiny)
{
    /* 2^24 + 1 ones: a float accumulator sticks at 2^24 (2^24 + 1 rounds to even). Then 2^20
     * copies of 2^-30: a double accumulator at 2^24 + 1 (ulp 2^-28) drops each of them. The exact
     * sum 2^24 + 1 + 2^-10 needs 35 bits: representable in double. */
    const size_t ones = ((size_t)1 << 24) + 1, tiny = (size_t)1 << 20;
    moe_xsum s;
    moe_xsum_init(&s);
    volatile float nf = 0.0f;
    volatile double nd = 0.0;
    for (size_t i = 0; i < ones; i++) {
        moe_xsum_add(&s, 1.0f);
        nf += 1.0f;
        nd += 1.0f;
    }
    for (size_t i = 0; i < tiny; i++) {
        moe_xsum_add(&s, 0x1p-30f);
        nf += 0x1p-30f;
        nd += 0x1p-30f;
    }
    ck_assert(nf == 0x1p24f);
    ck_assert(nd == 0x1p24 + 1.0);
    ck_assert(moe_xsum_value(&s) == 0x1p24 + 1.0 + 0x1p-10);
}
END_TEST

START_TEST(test_flt_max)
{
    /* FLT_MAX + FLT_MAX overflows float to inf, and inf - FLT_MAX stays inf */
    const float x[] = {FLT_MAX, FLT_MAX, -FLT_MAX};
    volatile float nf = x[0];
    nf += x[1];
    nf += x[2];
    ck_assert(isinf(nf));
    ck_assert(xsum_of(x, 3) == (double)FLT_MAX);
    /* 2 FLT_MAX = (2^24 - 1) 2^105 is exact in double */
    ck_assert(xsum_of(x, 2) == 2.0 * (double)FLT_MAX);
    const float y[] = {-FLT_MAX, -FLT_MAX, -FLT_MAX, -FLT_MAX};
    ck_assert(xsum_of(y, 4) == -4.0 * (double)FLT_MAX);
    /* the extremes together: FLT_MAX + the smallest subnormal, minus FLT_MAX */
    const float z[] = {FLT_MAX, 0x1p-149f, -FLT_MAX};
    ck_assert(xsum_of(z, 3) == 0x1p-149);
}
END_TEST

START_TEST(test_subnormals)
{
    /* the smallest subnormal 2^-149 added 2^20 times is 2^-129 exactly */
    moe_xsum s;
    moe_xsum_init(&s);
    for (int i = 0; i < 1 << 20; i++)
        moe_xsum_add(&s, 0x1p-149f);
    ck_assert(moe_xsum_value(&s) == 0x1p-129);
    /* negative subnormals: -3 2^-149, and the largest subnormal (2^23 - 1) 2^-149 */
    const float x[] = {-0x1p-149f, -0x1p-148f};
    ck_assert(xsum_of(x, 2) == -0x3p-149);
    const float big_sub = 0x1.fffffcp-127f;
    ck_assert(fpclassify(big_sub) == FP_SUBNORMAL);
    const float y[] = {big_sub, 0x1p-149f};
    ck_assert(xsum_of(y, 2) == 0x1p-126); /* carries into the smallest normal */
    const float z[] = {big_sub, -big_sub, 0x1p-149f};
    ck_assert(xsum_of(z, 3) == 0x1p-149);
}
END_TEST

START_TEST(test_cancellation_to_zero)
{
    /* 500 seeded floats of every magnitude and their negations, shuffled: exactly 0 */
    g_state = 4242;
    enum { N = 500 };
    float x[2 * N];
    for (int i = 0; i < N; i++) {
        float v = (float)((next_int(2) ? 1.0 : -1.0) * (1.0 + next_unit()) *
                          pow(10.0, -30.0 + 60.0 * next_unit()));
        x[2 * i] = v;
        x[2 * i + 1] = -v;
    }
    for (int i = 2 * N - 1; i > 0; i--) {
        int j = next_int(i + 1);
        float t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
    volatile double nd = 0.0;
    for (int i = 0; i < 2 * N; i++)
        nd += x[i];
    ck_assert(nd != 0.0); /* double does not cancel these */
    double v = xsum_of(x, 2 * N);
    ck_assert_msg(v == 0.0, "sum is %a", v);
    /* positives first, then negatives */
    const float y[] = {0.1f, 0.2f, 0.3f, -0.1f, -0.2f, -0.3f};
    ck_assert(xsum_of(y, 6) == 0.0);
    /* the empty sum */
    ck_assert(xsum_of(y, 0) == 0.0);
}
END_TEST

START_TEST(test_ignored_values)
{
    /* non-finite values are ignored (callers check finiteness), and so are zeros of either sign */
    const float x[] = {1.5f, INFINITY, -INFINITY, NAN, -0.0f, 0.0f, 2.25f};
    ck_assert(xsum_of(x, 7) == 3.75);
    const float z[] = {-0.0f};
    ck_assert(xsum_of(z, 1) == 0.0);
}
END_TEST

/* Rounded once, to nearest, ties to even: inputs whose exact sum sits just off a midpoint of two
 * doubles. A sum first rounded to a 64-bit long double lands exactly on the midpoint and then ties
 * to even: the wrong neighbour (double rounding). */
START_TEST(test_rounded_once_near_a_tie)
{
    /* exact: 1 + 2^-53 + 2^-100, above the midpoint of 1 and 1 + 2^-52: nearest is 1 + 2^-52 */
    const float x[] = {1.0f, 0x1p-53f, 0x1p-100f};
    ck_assert(ref_of(x, 3) == 1.0 + 0x1p-52);
    double v = xsum_of(x, 3);
    ck_assert_msg(v == 1.0 + 0x1p-52, "1 + 2^-53 + 2^-100 rounded to %a, nearest is %a", v,
                  1.0 + 0x1p-52);
    /* the same below the midpoint: 1 + 2^-53 - 2^-100 rounds down to 1 */
    const float y[] = {1.0f, 0x1p-53f, -0x1p-100f};
    ck_assert(xsum_of(y, 3) == 1.0);
    /* and negated */
    const float w[] = {-1.0f, -0x1p-53f, -0x1p-100f};
    v = xsum_of(w, 3);
    ck_assert_msg(v == -1.0 - 0x1p-52, "-(1 + 2^-53 + 2^-100) rounded to %a, nearest is %a", v,
                  -1.0 - 0x1p-52);
}
END_TEST

START_TEST(test_exact_ties_to_even)
{
    const float x[] = {1.0f, 0x1p-53f}; /* the midpoint of 1 and 1 + 2^-52: to 1 (even) */
    ck_assert(xsum_of(x, 2) == 1.0);
    const float y[] = {1.0f, 0x1p-52f, 0x1p-53f}; /* midpoint of 1 + 2^-52 and 1 + 2^-51 */
    ck_assert(xsum_of(y, 3) == 1.0 + 0x1p-51);
}
END_TEST

/* ---- normalisation and merging ---- */

/* Normalised form: every limb but the last in [0, 2^32). */
static int is_normal(const moe_xsum *s)
{
    for (int i = 0; i < MOE_XSUM_LIMBS - 1; i++)
        if (s->limb[i] < 0 || s->limb[i] >= (INT64_C(1) << 32))
            return 0;
    return 1;
}

/* A float of magnitude 1e-30 .. 1e30, either sign; now and then a subnormal, a huge value near
 * FLT_MAX, or the negation of an earlier value (for cancellation). */
static float random_float(const float *earlier, size_t n_earlier)
{
    int kind = next_int(20);
    if (kind == 0 && n_earlier > 0)
        return -earlier[next_int((int)n_earlier)];
    if (kind == 1) {
        uint32_t b = (uint32_t)(next_u64() & 0x807fffffu); /* exponent field 0: subnormal or 0 */
        float f;
        memcpy(&f, &b, sizeof f);
        return f;
    }
    if (kind == 2)
        return (next_int(2) ? 1.0f : -1.0f) * FLT_MAX * (float)(0.5 + 0.5 * next_unit());
    return (float)((next_int(2) ? 1.0 : -1.0) * (1.0 + next_unit()) *
                   pow(10.0, -30.0 + 60.0 * next_unit()));
}

START_TEST(test_order_and_split_independent)
{
    g_state = 8675309;
    enum { MAX_N = 3000, MAX_CHUNKS = 9 };
    static float x[MAX_N];
    int mismatched_ref = 0;
    for (int trial = 0; trial < 300; trial++) {
        size_t n = 1 + (size_t)next_int(MAX_N);
        for (size_t i = 0; i < n; i++)
            x[i] = random_float(x, i);
        moe_xsum whole;
        moe_xsum_init(&whole);
        moe_xsum_add_array(&whole, x, n);
        moe_xsum_normalize(&whole);
        EXPECT(is_normal(&whole));
        moe_xsum again = whole;
        moe_xsum_normalize(&again); /* idempotent */
        EXPECT_MEM_EQ(again.limb, whole.limb, sizeof whole.limb);
        double v = moe_xsum_value(&whole);
        EXPECT(isfinite(v));

        /* the independent reference: the exact sum rounded once */
        double r = ref_of(x, n);
        if (bits_of(v) != bits_of(r) && !(v == 0.0 && r == 0.0))
            mismatched_ref++;

        /* a permutation: bitwise the same */
        for (size_t i = n - 1; i > 0; i--) {
            size_t j = (size_t)next_int((int)i + 1);
            float t = x[i];
            x[i] = x[j];
            x[j] = t;
        }
        moe_xsum perm;
        moe_xsum_init(&perm);
        moe_xsum_add_array(&perm, x, n);
        double vp = moe_xsum_value(&perm);
        EXPECT_MSG(bits_of(vp) == bits_of(v), "trial %d: permuted sum %a, in order %a", trial, vp,
                   v);
        EXPECT_MEM_EQ(perm.limb, whole.limb, sizeof whole.limb);

        /* split into chunks at random cuts, each summed and normalised on its own "rank", merged
         * limb by limb as MPI_SUM on int64 would, normalised again */
        int chunks = 1 + next_int(MAX_CHUNKS);
        size_t cut[MAX_CHUNKS + 1];
        cut[0] = 0;
        cut[chunks] = n;
        for (int c = 1; c < chunks; c++)
            cut[c] = (size_t)next_int((int)n + 1);
        for (int c = 1; c < chunks; c++) /* sort the inner cuts (a few: insertion) */
            for (int d = c; d > 1 && cut[d - 1] > cut[d]; d--) {
                size_t t = cut[d];
                cut[d] = cut[d - 1];
                cut[d - 1] = t;
            }
        moe_xsum merged;
        moe_xsum_init(&merged);
        for (int c = 0; c < chunks; c++) {
            moe_xsum part;
            moe_xsum_init(&part);
            moe_xsum_add_array(&part, x + cut[c], cut[c + 1] - cut[c]);
            moe_xsum_normalize(&part);
            for (int l = 0; l < MOE_XSUM_LIMBS; l++)
                merged.limb[l] += part.limb[l];
        }
        moe_xsum_normalize(&merged);
        EXPECT_MEM_EQ(merged.limb, whole.limb, sizeof whole.limb);
        double vm = moe_xsum_value(&merged);
        EXPECT_MSG(bits_of(vm) == bits_of(v), "trial %d, %d chunks: merged %a, whole %a", trial,
                   chunks, vm, v);
    }
    /* Exact equality with the correctly rounded reference is the header's promise; random sums
     * land near a tie only rarely, so this counts them rather than stopping at the first. */
    ck_assert_msg(mismatched_ref == 0,
                  "%d of 300 random sums differ from the exact sum rounded once to nearest",
                  mismatched_ref);
}
END_TEST

/* Inputs i 2^e with |i| < 2^24 and -20 <= e <= 10 are multiples of 2^-20 below 2^34; 1000 of them
 * sum below 2^44, which needs 64 bits: a long double (x86 extended, 64-bit significand) sums them
 * exactly in any order, and one conversion to double rounds once. */
START_TEST(test_long_double_reference)
{
    if (LDBL_MANT_DIG < 64) {
        printf("test_long_double_reference skipped: long double has %d bits, needs 64\n",
               LDBL_MANT_DIG);
        return;
    }
    g_state = 31337;
    float x[1000];
    for (int trial = 0; trial < 500; trial++) {
        int n = 1 + next_int(1000);
        long double ld = 0.0L;
        for (int i = 0; i < n; i++) {
            int64_t m = (int64_t)(next_u64() % (UINT64_C(1) << 24)) * (next_int(2) ? 1 : -1);
            x[i] = ldexpf((float)m, -20 + next_int(31));
            ld += (long double)x[i];
        }
        double v = xsum_of(x, (size_t)n), r = (double)ld;
        EXPECT_MSG(bits_of(v) == bits_of(r) || (v == 0.0 && r == 0.0),
                   "trial %d: xsum %a, exact long double sum %a", trial, v, r);
        EXPECT(bits_of(ref_of(x, (size_t)n)) == bits_of(r) || r == 0.0);
    }
}
END_TEST

/* Many ranks: 2^20 copies of FLT_MAX summed on one rank, then that accumulator merged 2^20 times
 * (an MPI_SUM over 2^20 ranks): 2^40 FLT_MAX = (2^24 - 1) 2^144, exact in double. The header
 * allows up to 2^40 terms. */
START_TEST(test_merge_many_ranks)
{
    moe_xsum one;
    moe_xsum_init(&one);
    for (int i = 0; i < 1 << 20; i++)
        moe_xsum_add(&one, FLT_MAX);
    moe_xsum_normalize(&one);
    ck_assert(moe_xsum_value(&one) == ldexp((double)FLT_MAX, 20));
    moe_xsum all;
    moe_xsum_init(&all);
    for (int r = 0; r < 1 << 20; r++)
        for (int l = 0; l < MOE_XSUM_LIMBS; l++)
            all.limb[l] += one.limb[l];
    ck_assert(moe_xsum_value(&all) == ldexp((double)FLT_MAX, 40));
    /* and its negation, merged with the positive: 0 */
    moe_xsum neg;
    moe_xsum_init(&neg);
    for (int i = 0; i < 1 << 20; i++)
        moe_xsum_add(&neg, -FLT_MAX);
    moe_xsum_normalize(&neg);
    ck_assert(moe_xsum_value(&neg) == -ldexp((double)FLT_MAX, 20));
    for (int l = 0; l < MOE_XSUM_LIMBS; l++)
        neg.limb[l] += one.limb[l];
    ck_assert(moe_xsum_value(&neg) == 0.0);
}
END_TEST

static Suite *xsum_suite(void)
{
    Suite *s = suite_create("xsum");
    TCase *tc = tcase_create("hand");
    tcase_add_test(tc, test_reference_hand);
    tcase_add_test(tc, test_large_cancels_small);
    tcase_add_test(tc, test_many_ones_and_tiny);
    tcase_add_test(tc, test_flt_max);
    tcase_add_test(tc, test_subnormals);
    tcase_add_test(tc, test_cancellation_to_zero);
    tcase_add_test(tc, test_ignored_values);
    tcase_add_test(tc, test_exact_ties_to_even);
    tcase_add_test(tc, test_rounded_once_near_a_tie);
    suite_add_tcase(s, tc);
    tc = tcase_create("property");
    tcase_add_test(tc, test_order_and_split_independent);
    tcase_add_test(tc, test_long_double_reference);
    tcase_add_test(tc, test_merge_many_ranks);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(xsum_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
