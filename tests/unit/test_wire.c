/* Unit tests of wire, the byte formats of token rows: bytes per row; bf16 and E4M3 conversions of
 * hand-worked values (ties, saturation, subnormals, signed zeros, NaN, infinities); every one of the
 * 256 E4M3 codes through decode and encode; the fast conversions against their _ref twins on every
 * tie and its neighbours and on random bit patterns; the row encoders and decoders against their
 * twins byte for byte on seeded rows (zeros, huge and tiny values, an all-zero block, d not a
 * multiple of 128); the fp8 byte layout by hand; the gather; and the error bounds of docs/wire.md.
 *
 * Tolerances: none for conversions and layouts (bit patterns are compared). The error bounds are
 * the rounding bounds themselves, derived where they are checked:
 *   bf16: 8 significant bits, so round to nearest moves a normal value by at most half an ulp,
 *     2^(e-8) for |x| in [2^e, 2^(e+1)): |x - x'| <= 2^-8 |x|. (Not 2^-9: 1 + 2^-8 is a tie that
 *     goes to 1, an error of 2^-8 / (1 + 2^-8); the test checks that this worst case is reached.)
 *     In bf16's subnormal range (|x| < 2^-126) the bound is absolute, half the step 2^-133.
 *   fp8: q = fl(x / scale) is rounded to E4M3, 4 significant bits: |c - q| <= h(q), the half ulp,
 *     2^(floor(log2 |q|) - 4) <= 2^-4 |q| for |q| >= 2^-6 and 2^-10 below (subnormal step 2^-9).
 *     Two float roundings come on top, x / scale (2^-24 relative) and c · scale (2^-24 relative):
 *     |x - x'| <= scale h(q) + 2^-23 (|x| + scale h(q)). Coarse forms, as the brief states them:
 *     2^-4 |x| (+ the same slack) when |q| >= 2^-6, and scale 2^-10 below. */
#include "moesim/wire.h"

#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moesim/error.h"

#include "expect.h"
#include "testrng.h"

static uint32_t fbits(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b;
}

static float fval(uint32_t b)
{
    float x;
    memcpy(&x, &b, sizeof x);
    return x;
}

/* Same bits, or both NaN (the sign and payload of a NaN after arithmetic are not specified). */
static int same_float(float a, float b)
{
    return fbits(a) == fbits(b) || (isnan(a) && isnan(b));
}

static const moe_wire all_wires[] = {MOE_WIRE_FP32, MOE_WIRE_BF16, MOE_WIRE_FP8};
enum { N_WIRES = 3 };

/* ---- names and sizes ---- */

START_TEST(test_names_parse)
{
    for (int i = 0; i < N_WIRES; i++) {
        moe_wire w = (moe_wire)-1;
        ck_assert_int_eq(moe_wire_parse(moe_wire_name(all_wires[i]), &w), MOE_OK);
        ck_assert_int_eq(w, all_wires[i]);
    }
    ck_assert_str_eq(moe_wire_name(MOE_WIRE_FP32), "fp32");
    ck_assert_str_eq(moe_wire_name(MOE_WIRE_BF16), "bf16");
    ck_assert_str_eq(moe_wire_name(MOE_WIRE_FP8), "fp8");
    ck_assert_str_eq(moe_wire_name((moe_wire)7), "unknown");
    const char *bad[] = {"FP8", "fp16", "", "fp8 ", "e4m3", "unknown"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        moe_wire w = MOE_WIRE_BF16;
        ck_assert_int_eq(moe_wire_parse(bad[i], &w), MOE_EINVAL);
        ck_assert_int_eq(w, MOE_WIRE_BF16); /* untouched */
    }
    moe_wire w = MOE_WIRE_BF16;
    ck_assert_int_eq(moe_wire_parse(NULL, &w), MOE_EINVAL);
}
END_TEST

START_TEST(test_row_bytes)
{
    /* fp8: d codes + 4 ceil(d / 128) scale bytes */
    static const struct {
        int64_t d, fp32, bf16, fp8;
    } table[] = {
        {0, 0, 0, 0},
        {1, 4, 2, 1 + 4},
        {127, 508, 254, 127 + 4},
        {128, 512, 256, 128 + 4},
        {129, 516, 258, 129 + 8},
        {7168, 28672, 14336, 7168 + 4 * 56},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        ck_assert_int_eq(moe_wire_row_bytes(MOE_WIRE_FP32, table[i].d), table[i].fp32);
        ck_assert_int_eq(moe_wire_row_bytes(MOE_WIRE_BF16, table[i].d), table[i].bf16);
        ck_assert_int_eq(moe_wire_row_bytes(MOE_WIRE_FP8, table[i].d), table[i].fp8);
    }
    ck_assert_int_eq(moe_wire_row_bytes(MOE_WIRE_FP8, 7392), 7392 + 4 * 58);
    ck_assert_int_eq(moe_wire_row_bytes((moe_wire)3, 128), -1);
    ck_assert_int_eq(moe_wire_row_bytes(MOE_WIRE_FP32, -1), -1);
    ck_assert_int_eq(moe_wire_row_bytes(MOE_WIRE_FP32, INT64_MAX / 2), -1);
    ck_assert_int_eq(moe_wire_row_bytes(MOE_WIRE_BF16, INT64_MAX / 2), INT64_MAX / 2 * 2);
}
END_TEST

/* ---- bf16 ---- */

static void expect_bf16(float x, uint16_t want)
{
    uint16_t got = moe_bf16_from_float(x), ref = moe_bf16_from_float_ref(x);
    EXPECT_MSG(got == want && ref == want, "bf16(%a = %#010x): fast %#06x, ref %#06x, expected %#06x", x,
               fbits(x), got, ref, want);
}

START_TEST(test_bf16_hand)
{
    expect_bf16(1.0f, 0x3f80);
    expect_bf16(1.0f + 0x1p-8f, 0x3f80);            /* tie between 1 and 1 + 2^-7: even, down */
    expect_bf16(1.0f + 3 * 0x1p-8f, 0x3f82);        /* tie between 0x3f81 and 0x3f82: even, up */
    expect_bf16(1.0f + 0x1p-8f + 0x1p-20f, 0x3f81); /* just past the tie */
    expect_bf16(1.0f + 0x1p-8f - 0x1p-23f, 0x3f80); /* just before */
    expect_bf16(-1.0f - 3 * 0x1p-8f, 0xbf82);
    expect_bf16(0.0f, 0x0000);
    expect_bf16(-0.0f, 0x8000);
    expect_bf16(65504.0f, 0x4780); /* 0x477fe000: the low half 0xe000 rounds up to 65536 */
    expect_bf16(65280.0f, 0x477f); /* exact */
    expect_bf16(fval(0x7f7f0000), 0x7f7f); /* the largest bf16, (2 - 2^-7) 2^127 */
    expect_bf16(fval(0x7f7f7fff), 0x7f7f);
    expect_bf16(fval(0x7f7f8000), 0x7f80); /* the tie to 2^128: even is 2^128, which overflows */
    expect_bf16(FLT_MAX, 0x7f80);
    expect_bf16(-FLT_MAX, 0xff80);
    expect_bf16(INFINITY, 0x7f80);
    expect_bf16(-INFINITY, 0xff80);
    /* float subnormals: bf16 has the same exponent range, so they round to its 7-bit subnormals */
    expect_bf16(fval(0x00000001), 0x0000); /* 2^-149 */
    expect_bf16(fval(0x00008000), 0x0000); /* tie between 0 and 2^-133 */
    expect_bf16(fval(0x00018000), 0x0002); /* tie between 1 and 2 steps */
    expect_bf16(fval(0x00010000), 0x0001); /* 2^-133 exact */
    expect_bf16(fval(0x007fffff), 0x0080); /* the largest subnormal rounds up to 2^-126 */
    expect_bf16(fval(0x807fffff), 0x8080);

    /* NaN stays NaN, quiet, with its sign */
    const uint32_t nans[] = {0x7fc00000, 0x7f800001, 0x7fbfffff, 0xff812345, 0xffffffff};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t h = moe_bf16_from_float(fval(nans[i]));
        ck_assert_uint_eq(h, moe_bf16_from_float_ref(fval(nans[i])));
        ck_assert(isnan(moe_bf16_to_float(h)));
        ck_assert_uint_eq(h & 0x0040u, 0x0040u);
        ck_assert_uint_eq(h >> 15, nans[i] >> 31);
    }
    ck_assert_uint_eq(moe_bf16_from_float(fval(0x7f800001)), 0x7fc0);

    /* decoding is exact: the 16 bits on top of 16 zero bits */
    ck_assert(moe_bf16_to_float(0x3f81) == 1.0f + 0x1p-7f);
    ck_assert(moe_bf16_to_float(0x0001) == 0x1p-133f);
    ck_assert_uint_eq(fbits(moe_bf16_to_float(0x8000)), 0x80000000u);
    ck_assert(moe_bf16_to_float(0x7f80) == INFINITY);
}
END_TEST

/* Every bf16 value decodes and encodes back to itself (NaNs to a quiet NaN). */
START_TEST(test_bf16_all_codes)
{
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float x = moe_bf16_to_float((uint16_t)h);
        uint16_t back = moe_bf16_from_float(x);
        if (isnan(x))
            EXPECT(back == (h | 0x0040u));
        else
            EXPECT_UEQ(back, h);
    }
}
END_TEST

/* Fast and twin agree on random bit patterns (every exponent, NaNs included) and on every tie of
 * the binades around 1 and at the ends of the range, with a neighbour on each side. */
START_TEST(test_bf16_twin)
{
    g_state = 0xbf16;
    for (int i = 0; i < 1 << 20; i++) {
        float x = fval((uint32_t)next_u64());
        uint16_t a = moe_bf16_from_float(x), b = moe_bf16_from_float_ref(x);
        EXPECT_MSG(a == b, "bf16(%#010x): fast %#06x, ref %#06x", fbits(x), a, b);
    }
    const uint32_t hi[] = {0x0000, 0x0001, 0x007f, 0x0080, 0x3f80, 0x3f81, 0x7f7e, 0x7f7f, 0x8001, 0xff7f};
    for (size_t i = 0; i < sizeof hi / sizeof hi[0]; i++)
        for (uint32_t lo = 0x7ff0; lo <= 0x8010; lo++) {
            float x = fval(hi[i] << 16 | lo);
            EXPECT_UEQ(moe_bf16_from_float(x), moe_bf16_from_float_ref(x));
        }
}
END_TEST

/* ---- E4M3 ---- */

static void expect_e4m3(float x, uint8_t want)
{
    uint8_t got = moe_e4m3_from_float(x), ref = moe_e4m3_from_float_ref(x);
    EXPECT_MSG(got == want && ref == want, "e4m3(%a): fast %#04x, ref %#04x, expected %#04x", x, got,
               ref, want);
}

START_TEST(test_e4m3_hand)
{
    expect_e4m3(0.0f, 0x00);
    expect_e4m3(-0.0f, 0x80);
    expect_e4m3(1.0f, 0x38);    /* 0.0111.000: 2^(7-7) */
    expect_e4m3(1.0625f, 0x38); /* tie between 1 (0x38) and 1.125 (0x39): even */
    expect_e4m3(1.1875f, 0x3a); /* tie between 1.125 (0x39) and 1.25 (0x3a): even */
    expect_e4m3(1.07f, 0x39);
    expect_e4m3(-1.0f, 0xb8);
    expect_e4m3(-3.5f, 0xc6); /* 1.1000.110: -(1 + 6/8) 2 */
    expect_e4m3(240.0f, 0x77);
    expect_e4m3(256.0f, 0x78);
    expect_e4m3(416.0f, 0x7d);
    expect_e4m3(431.0f, 0x7d);
    expect_e4m3(432.0f, 0x7e); /* tie between 416 (0x7d) and 448 (0x7e): even */
    expect_e4m3(448.0f, 0x7e);
    /* past 448 everything saturates: 449, the would-be tie 464 with the missing 480, 480, inf */
    expect_e4m3(449.0f, 0x7e);
    expect_e4m3(463.0f, 0x7e);
    expect_e4m3(464.0f, 0x7e);
    expect_e4m3(465.0f, 0x7e);
    expect_e4m3(480.0f, 0x7e);
    expect_e4m3(1e30f, 0x7e);
    expect_e4m3(FLT_MAX, 0x7e);
    expect_e4m3(INFINITY, 0x7e);
    expect_e4m3(-449.0f, 0xfe);
    expect_e4m3(-INFINITY, 0xfe);
    /* subnormals: steps of 2^-9 below 2^-6 */
    expect_e4m3(0x1p-9f, 0x01);
    expect_e4m3(0x1p-10f, 0x00);               /* tie between 0 and 2^-9: even, 0 */
    expect_e4m3(0x1p-10f * 1.0001f, 0x01);     /* just past it */
    expect_e4m3(3 * 0x1p-10f, 0x02);           /* tie between 1 and 2 steps: even, 2 */
    expect_e4m3(5 * 0x1p-10f, 0x02);           /* tie between 2 and 3: 2 */
    expect_e4m3(7 * 0x1p-9f, 0x07);            /* the largest subnormal */
    expect_e4m3(7.5f * 0x1p-9f, 0x08);         /* tie between 0x07 and 2^-6 (0x08): even */
    expect_e4m3(0x1p-6f, 0x08);                /* the smallest normal */
    expect_e4m3(0x1p-6f * (1 + 0x1p-4f), 0x08); /* tie between 0x08 and 0x09 */
    expect_e4m3(-0x1p-9f, 0x81);
    expect_e4m3(-0x1p-11f, 0x80); /* rounds to zero, keeps the sign */
    expect_e4m3(0x1p-149f, 0x00);
    expect_e4m3(fval(0x80000001), 0x80);
    expect_e4m3(NAN, 0x7f);
    expect_e4m3(-NAN, 0xff);
    expect_e4m3(fval(0x7f800001), 0x7f);

    ck_assert(moe_e4m3_to_float(0x7e) == 448.0f);
    ck_assert(moe_e4m3_to_float(0xfe) == -448.0f);
    ck_assert(moe_e4m3_to_float(0x01) == 0x1p-9f);
    ck_assert(moe_e4m3_to_float(0x07) == 7 * 0x1p-9f);
    ck_assert(moe_e4m3_to_float(0x08) == 0x1p-6f);
    ck_assert(moe_e4m3_to_float(0x38) == 1.0f);
    ck_assert(moe_e4m3_to_float(0x77) == 240.0f);
    ck_assert(isnan(moe_e4m3_to_float(0x7f)));
    ck_assert(isnan(moe_e4m3_to_float(0xff)));
    ck_assert_uint_eq(fbits(moe_e4m3_to_float(0x80)), 0x80000000u);
}
END_TEST

/* All 256 codes: the value from the fields (independently), decode-encode is the identity but for
 * the two NaNs, which stay NaN; magnitudes strictly increase with the code. */
START_TEST(test_e4m3_all_codes)
{
    int nan_codes = 0;
    for (int c = 0; c < 256; c++) {
        float x = moe_e4m3_to_float((uint8_t)c);
        int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
        if (e == 15 && m == 7) {
            nan_codes++;
            EXPECT(isnan(x));
            EXPECT_UEQ(moe_e4m3_from_float(x), c); /* the decoded NaN carries the sign */
            EXPECT_UEQ(moe_e4m3_from_float_ref(x), c);
            continue;
        }
        double v = e == 0 ? m * 0x1p-9 : ldexp(8 + m, e - 10);
        EXPECT_MSG((double)x == (s ? -v : v) && (signbit(x) != 0) == s, "code %#04x: %a", c, x);
        EXPECT_UEQ(moe_e4m3_from_float(x), c);
        EXPECT_UEQ(moe_e4m3_from_float_ref(x), c);
        if ((c & 0x7f) > 0)
            EXPECT(fabsf(x) > fabsf(moe_e4m3_to_float((uint8_t)(c - 1))));
    }
    ck_assert_int_eq(nan_codes, 2);
}
END_TEST

/* Fast and twin agree at every tie between adjacent magnitudes and one float ulp either side, and
 * on random floats below 2^10 (exponents from the float subnormals up), both signs. */
START_TEST(test_e4m3_twin)
{
    for (int c = 0; c < 0x7e; c++) {
        float lo = moe_e4m3_to_float((uint8_t)c), hi = moe_e4m3_to_float((uint8_t)(c + 1));
        float mid = (lo + hi) / 2; /* exact: a dyadic with one more bit */
        float probe[] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY), lo, hi};
        for (int i = 0; i < 5; i++)
            for (int s = 0; s < 2; s++) {
                float x = s ? -probe[i] : probe[i];
                uint8_t a = moe_e4m3_from_float(x), b = moe_e4m3_from_float_ref(x);
                EXPECT_MSG(a == b, "e4m3(%a): fast %#04x, ref %#04x", x, a, b);
            }
        /* at the tie the even one */
        EXPECT_UEQ(moe_e4m3_from_float(mid), (c & 1) ? c + 1 : c);
    }
    g_state = 0xe4e3;
    for (int i = 0; i < 1 << 17; i++) {
        float x = fval((uint32_t)next_u64() % 0x44800000u | (uint32_t)(next_u64() & 1) << 31);
        uint8_t a = moe_e4m3_from_float(x), b = moe_e4m3_from_float_ref(x);
        EXPECT_MSG(a == b, "e4m3(%a): fast %#04x, ref %#04x", x, a, b);
    }
}
END_TEST

/* ---- rows ---- */

/* A standard normal from two uniforms (Box-Muller, cosine branch). */
static float next_normal(void)
{
    double u1 = next_unit(), u2 = next_unit();
    return (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2));
}

/* Rows meant to hit every path: each 128-channel block of each row gets its own magnitude, from
 * float subnormals to near FLT_MAX; one block in five is all zero, single zeros and signed zeros
 * are sprinkled, and some blocks mix scales (a huge value beside tiny ones). Finite only. */
static void fill_rows(float *x, int64_t n, int64_t d)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t b0 = 0; b0 < d; b0 += 128) {
            int kind = next_int(10);
            int ex = next_int(260) - 140; /* 2^-140 .. 2^119 */
            for (int64_t j = b0; j < d && j < b0 + 128; j++) {
                float v = ldexpf(next_normal(), ex);
                if (kind < 2)
                    v = 0.0f;
                else if (kind == 2 && next_int(8) == 0)
                    v = ldexpf(next_normal(), next_int(254) - 126); /* mixed scales */
                else if (next_int(32) == 0)
                    v = next_int(2) ? -0.0f : 0.0f;
                else if (kind == 3 && next_int(16) == 0)
                    v = ldexpf((float)(next_int(3) - 1), 127) * 1.9f; /* near FLT_MAX */
                x[i * d + j] = v;
            }
        }
}

static const int64_t row_dims[] = {1, 127, 128, 129, 300, 7168};
enum { N_DIMS = 6, N_ROWS = 6 };

/* The fast row codecs equal their twins byte for byte and float for float. */
START_TEST(test_rows_twin)
{
    g_state = 0x5eed;
    for (int di = 0; di < N_DIMS; di++) {
        int64_t d = row_dims[di];
        float *x = malloc(sizeof(float) * N_ROWS * d), *y = malloc(sizeof(float) * N_ROWS * d);
        float *y_ref = malloc(sizeof(float) * N_ROWS * d);
        fill_rows(x, N_ROWS, d);
        x[0] = -0.0f;
        for (int wi = 0; wi < N_WIRES; wi++) {
            moe_wire w = all_wires[wi];
            int64_t rb = moe_wire_row_bytes(w, d);
            uint8_t *a = malloc((size_t)(N_ROWS * rb)), *b = malloc((size_t)(N_ROWS * rb));
            memset(a, 0xa5, (size_t)(N_ROWS * rb));
            memset(b, 0x5a, (size_t)(N_ROWS * rb)); /* every byte must be written */
            moe_wire_encode_rows(a, x, NULL, N_ROWS, d, w);
            moe_wire_encode_rows_ref(b, x, NULL, N_ROWS, d, w);
            for (int64_t k = 0; k < N_ROWS * rb; k++)
                EXPECT_MSG(a[k] == b[k], "%s d=%jd: byte %jd: fast %#04x, ref %#04x",
                           moe_wire_name(w), (intmax_t)d, (intmax_t)k, a[k], b[k]);
            moe_wire_decode_rows(y, a, N_ROWS, d, w);
            moe_wire_decode_rows_ref(y_ref, a, N_ROWS, d, w);
            for (int64_t k = 0; k < N_ROWS * d; k++)
                EXPECT_MSG(same_float(y[k], y_ref[k]), "%s d=%jd: value %jd: fast %a, ref %a",
                           moe_wire_name(w), (intmax_t)d, (intmax_t)k, y[k], y_ref[k]);
            if (w == MOE_WIRE_FP32)
                EXPECT_MEM_EQ(y, x, sizeof(float) * N_ROWS * d);
            free(a);
            free(b);
        }
        free(x);
        free(y);
        free(y_ref);
    }
}
END_TEST

/* Non-finite values: fp32 and bf16 keep them; fp8 leaves them out of amax, saturates ±inf to
 * ±448 scale and keeps NaN as S.1111.111, and the twins agree. */
START_TEST(test_rows_nonfinite)
{
    float x[5] = {INFINITY, -INFINITY, NAN, 3.0f, -1.5f};
    uint8_t a[64], b[64];
    float y[5];
    moe_wire_encode_rows(a, x, NULL, 1, 5, MOE_WIRE_FP8);
    moe_wire_encode_rows_ref(b, x, NULL, 1, 5, MOE_WIRE_FP8);
    EXPECT_MEM_EQ(a, b, 9);
    float scale;
    memcpy(&scale, a + 5, 4);
    ck_assert(scale == 3.0f / 448.0f);
    ck_assert_uint_eq(a[0], 0x7e);
    ck_assert_uint_eq(a[1], 0xfe);
    ck_assert_uint_eq(a[2] & 0x7f, 0x7f);
    ck_assert_uint_eq(a[3], 0x7e);
    ck_assert_uint_eq(a[4], moe_e4m3_from_float(-1.5f / scale));
    moe_wire_decode_rows(y, a, 1, 5, MOE_WIRE_FP8);
    ck_assert(y[0] == 448.0f * scale && y[1] == -448.0f * scale && isnan(y[2]));

    moe_wire_encode_rows(a, x, NULL, 1, 5, MOE_WIRE_BF16);
    moe_wire_decode_rows(y, a, 1, 5, MOE_WIRE_BF16);
    ck_assert(y[0] == INFINITY && y[1] == -INFINITY && isnan(y[2]) && y[3] == 3.0f && y[4] == -1.5f);
    moe_wire_encode_rows(a, x, NULL, 1, 5, MOE_WIRE_FP32);
    EXPECT_MEM_EQ(a, x, sizeof x);

    /* a block of nothing but non-finite values gets the floor's scale */
    float z[2] = {INFINITY, NAN};
    moe_wire_encode_rows(a, z, NULL, 1, 2, MOE_WIRE_FP8);
    memcpy(&scale, a + 2, 4);
    ck_assert(scale == MOE_WIRE_FP8_AMAX_FLOOR / 448.0f);
}
END_TEST

/* The fp8 layout by hand, d = 129 + 128 = 257: block 0 has amax 448 (scale 1), block 1 amax 2,
 * block 2 (one channel) is zero. Codes at bytes 0..256, scales at 257, 261, 265 (unaligned). */
START_TEST(test_fp8_layout)
{
    enum { D = 257 };
    float x[D] = {0};
    x[0] = 448.0f;
    x[1] = 1.0f;
    x[2] = -0x1p-9f; /* scale 1: the smallest subnormal code */
    x[3] = 0x1p-10f; /* a tie to the code 0 */
    x[128] = 2.0f;
    x[129] = -1.0f;
    x[256] = -0.0f;
    ck_assert_int_eq(moe_wire_row_bytes(MOE_WIRE_FP8, D), D + 12);
    uint8_t row[D + 12];
    memset(row, 0xee, sizeof row);
    moe_wire_encode_rows(row, x, NULL, 1, D, MOE_WIRE_FP8);
    float s[3];
    memcpy(&s[0], row + D, 4);
    memcpy(&s[1], row + D + 4, 4);
    memcpy(&s[2], row + D + 8, 4);
    ck_assert(s[0] == 1.0f);
    ck_assert(s[1] == 2.0f / 448.0f);
    ck_assert(s[2] == 1e-4f / 448.0f); /* DeepEP's floor: amax = max(1e-4, 0) */
    ck_assert_uint_eq(row[0], 0x7e);
    ck_assert_uint_eq(row[1], 0x38);
    ck_assert_uint_eq(row[2], 0x81);
    ck_assert_uint_eq(row[3], 0x00);
    ck_assert_uint_eq(row[4], 0x00);
    ck_assert_uint_eq(row[128], moe_e4m3_from_float(2.0f / s[1]));
    ck_assert_uint_eq(row[128], 0x7e); /* 2 / fl(2/448) is 448 within a float ulp */
    ck_assert_uint_eq(row[129], moe_e4m3_from_float(-1.0f / s[1]));
    ck_assert_uint_eq(row[130], 0x00);
    ck_assert_uint_eq(row[256], 0x80);
    float y[D];
    moe_wire_decode_rows(y, row, 1, D, MOE_WIRE_FP8);
    ck_assert(y[0] == 448.0f && y[1] == 1.0f && y[2] == -0x1p-9f && y[3] == 0.0f);
    ck_assert(y[128] == 448.0f * s[1]);
    ck_assert(fabsf(y[128] - 2.0f) <= 2.0f * 0x1p-23f);
    ck_assert_uint_eq(fbits(y[256]), 0x80000000u);
    for (int j = 130; j < 256; j++)
        EXPECT(fbits(y[j]) == 0);
    ck_assert(moe_fp8_block_scale(x + 128, 128) == s[1]);

    /* the bf16 layout: two bytes per value in host order */
    uint8_t h[4];
    float two[2] = {1.0f, -2.0f};
    moe_wire_encode_rows(h, two, NULL, 1, 2, MOE_WIRE_BF16);
    uint16_t h0, h1;
    memcpy(&h0, h, 2);
    memcpy(&h1, h + 2, 2);
    ck_assert_uint_eq(h0, 0x3f80);
    ck_assert_uint_eq(h1, 0xc000);
}
END_TEST

/* The code is e4m3(fl(x / scale)), one float division, as specified, not x times a rounded
 * reciprocal (DeepEP's x * (448 / amax)): the two differ by a float ulp of q, which changes the
 * code only at a tie. Rows (amax, x) with fl(x / scale) exactly the tie 1.0625 between 0x38 and 0x39
 * must give the even 0x38; the test also counts cases where the reciprocal form would give 0x39. */
START_TEST(test_fp8_division_at_ties)
{
    int n_ties = 0, n_recip_differs = 0;
    for (int a = 3; a < 2000; a += 2) {
        float amax = (float)a / 64.0f, scale = amax / 448.0f, recip = 1.0f / scale;
        float x0 = 1.0625f * scale;
        for (int k = -2; k <= 2; k++) {
            float x = x0;
            for (int s = 0; s < abs(k); s++)
                x = nextafterf(x, k < 0 ? 0.0f : INFINITY);
            if (x / scale != 1.0625f)
                continue;
            n_ties++;
            float row[2] = {amax, x};
            uint8_t enc[2 + 4];
            moe_wire_encode_rows(enc, row, NULL, 1, 2, MOE_WIRE_FP8);
            EXPECT_MSG(enc[1] == 0x38, "amax %a x %a: code %#04x", amax, x, enc[1]);
            n_recip_differs += moe_e4m3_from_float(x * recip) != 0x38;
        }
    }
    ck_assert_int_gt(n_ties, 100);
    ck_assert_int_gt(n_recip_differs, 0);
}
END_TEST

/* rows != NULL encodes src rows rows[0..n) (repeats and any order): the same bytes as encoding
 * the gathered matrix in order, for every format, fast and twin. */
START_TEST(test_gather)
{
    g_state = 0x6a7;
    enum { N_SRC = 9, N_OUT = 14 };
    for (int di = 0; di < N_DIMS; di++) {
        int64_t d = row_dims[di];
        float *x = malloc(sizeof(float) * N_SRC * d), *g = malloc(sizeof(float) * N_OUT * d);
        fill_rows(x, N_SRC, d);
        int64_t rows[N_OUT];
        for (int i = 0; i < N_OUT; i++) {
            rows[i] = next_int(N_SRC);
            memcpy(g + i * d, x + rows[i] * d, sizeof(float) * (size_t)d);
        }
        for (int wi = 0; wi < N_WIRES; wi++) {
            moe_wire w = all_wires[wi];
            size_t bytes = (size_t)(N_OUT * moe_wire_row_bytes(w, d));
            uint8_t *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
            moe_wire_encode_rows(a, x, rows, N_OUT, d, w);
            moe_wire_encode_rows(b, g, NULL, N_OUT, d, w);
            moe_wire_encode_rows_ref(c, x, rows, N_OUT, d, w);
            EXPECT_MSG(memcmp(a, b, bytes) == 0, "%s d=%jd: gather differs", moe_wire_name(w),
                       (intmax_t)d);
            EXPECT_MSG(memcmp(a, c, bytes) == 0, "%s d=%jd: gather twin differs",
                       moe_wire_name(w), (intmax_t)d);
            free(a);
            free(b);
            free(c);
        }
        free(x);
        free(g);
    }
}
END_TEST

/* ---- error bounds ---- */

/* bf16: |x - x'| <= 2^-8 |x| in the normal range, <= 2^-134 below; the worst case is reached. */
START_TEST(test_bf16_error_bound)
{
    g_state = 0xb0b;
    enum { N = 1 << 18 };
    double worst = 0;
    for (int i = 0; i < N; i++) {
        float x = ldexpf(next_normal(), next_int(280) - 150);
        if (i == 0)
            x = 1.0f + 0x1p-8f;
        float y = moe_bf16_to_float(moe_bf16_from_float(x));
        double err = fabs((double)x - (double)y);
        if (fabsf(x) >= FLT_MIN && fabsf(x) <= fval(0x7f7f7fff)) {
            EXPECT_MSG(err <= 0x1p-8 * fabs((double)x), "bf16(%a) = %a: relative error %g", x, y,
                       err / fabs((double)x));
            worst = fmax(worst, err / fabs((double)x));
        } else if (fabsf(x) < FLT_MIN) {
            EXPECT_MSG(err <= 0x1p-134, "bf16(%a) = %a: error %g", x, y, err);
        }
    }
    ck_assert(worst == 0x1p-8 / (1 + 0x1p-8)); /* from 1 + 2^-8: so 2^-9 would be wrong */
}
END_TEST

/* The e4m3 half ulp at |q|: 2^(floor(log2 |q|) - 4) in the normal range, 2^-10 below 2^-6. */
static double e4m3_half_ulp(double q)
{
    q = fabs(q);
    if (q < 0x1p-6)
        return 0x1p-10;
    int e;
    frexp(q, &e); /* q = f 2^e, f in [0.5, 1): floor(log2 q) = e - 1 */
    return ldexp(1.0, e - 1 - 4);
}

/* fp8 on random rows: the per-element bound with the half ulp at that magnitude, and the coarse
 * ones; the normal-range bound is nearly reached (so it is not vacuous). */
START_TEST(test_fp8_error_bound)
{
    g_state = 0xf8;
    enum { D = 7168 + 40, N = 24 };
    float *x = malloc(sizeof(float) * N * D), *y = malloc(sizeof(float) * N * D);
    uint8_t *buf = malloc((size_t)(N * moe_wire_row_bytes(MOE_WIRE_FP8, D)));
    fill_rows(x, N, D);
    moe_wire_encode_rows(buf, x, NULL, N, D, MOE_WIRE_FP8);
    moe_wire_decode_rows(y, buf, N, D, MOE_WIRE_FP8);
    double worst_rel = 0;
    int64_t n_normal = 0, n_sub = 0;
    for (int64_t i = 0; i < N; i++)
        for (int64_t b0 = 0; b0 < D; b0 += 128) {
            int64_t len = D - b0 < 128 ? D - b0 : 128;
            float scale = moe_fp8_block_scale(x + i * D + b0, len);
            for (int64_t j = b0; j < b0 + len; j++) {
                double xv = x[i * D + j], yv = y[i * D + j];
                double q = (double)(x[i * D + j] / scale), h = e4m3_half_ulp(q);
                double err = fabs(xv - yv), slack = 0x1p-23 * (fabs(xv) + scale * h);
                EXPECT_MSG(err <= scale * h + slack, "x=%a y=%a scale=%a: error %g > %g", xv, yv,
                           (double)scale, err, scale * h + slack);
                if (fabs(q) >= 0x1p-6) {
                    EXPECT(err <= 0x1p-4 * fabs(xv) + slack);
                    worst_rel = fmax(worst_rel, err / fabs(xv));
                    n_normal++;
                } else {
                    EXPECT(err <= scale * 0x1p-10 + slack);
                    n_sub++;
                }
            }
        }
    ck_assert(worst_rel > 0x1p-4 * 0.9);
    ck_assert(worst_rel <= 0x1p-4);
    ck_assert(n_normal > N * D / 4 && n_sub > 100);
    free(x);
    free(y);
    free(buf);
}
END_TEST

static Suite *wire_suite(void)
{
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("formats");
    tcase_add_test(tc, test_names_parse);
    tcase_add_test(tc, test_row_bytes);
    tcase_add_test(tc, test_fp8_layout);
    suite_add_tcase(s, tc);
    tc = tcase_create("bf16");
    tcase_add_test(tc, test_bf16_hand);
    tcase_add_test(tc, test_bf16_all_codes);
    tcase_add_test(tc, test_bf16_twin);
    tcase_add_test(tc, test_bf16_error_bound);
    suite_add_tcase(s, tc);
    tc = tcase_create("e4m3");
    tcase_add_test(tc, test_e4m3_hand);
    tcase_add_test(tc, test_e4m3_all_codes);
    tcase_add_test(tc, test_e4m3_twin);
    tcase_add_test(tc, test_fp8_error_bound);
    suite_add_tcase(s, tc);
    tc = tcase_create("rows");
    tcase_add_test(tc, test_rows_twin);
    tcase_add_test(tc, test_rows_nonfinite);
    tcase_add_test(tc, test_fp8_division_at_ties);
    tcase_add_test(tc, test_gather);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(wire_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
