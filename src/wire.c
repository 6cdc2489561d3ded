/* Wire formats of token rows (include/moesim/wire.h, docs/wire.md). The fast conversions work on
 * the IEEE 754 bit patterns; the _ref twins below them compute the same roundings the slow and
 * obvious way, and tests/unit/test_wire.c holds them equal bit for bit. */
#include "moesim/wire.h"

#include <math.h>
#include <string.h>

#include "moesim/error.h"

static uint32_t bits_of(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b;
}

static float float_of(uint32_t b)
{
    float x;
    memcpy(&x, &b, sizeof x);
    return x;
}

const char *moe_wire_name(moe_wire w)
{
    switch (w) {
    case MOE_WIRE_FP32:
        return "fp32";
    case MOE_WIRE_BF16:
        return "bf16";
    case MOE_WIRE_FP8:
        return "fp8";
    default:
        return "unknown";
    }
}

int moe_wire_parse(const char *name, moe_wire *out)
{
    static const moe_wire all[] = {MOE_WIRE_FP32, MOE_WIRE_BF16, MOE_WIRE_FP8};
    if (name == NULL)
        return MOE_EINVAL;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(name, moe_wire_name(all[i])) == 0) {
            *out = all[i];
            return MOE_OK;
        }
    return MOE_EINVAL;
}

static int64_t fp8_blocks(int64_t d)
{
    return d / MOE_WIRE_FP8_BLOCK + (d % MOE_WIRE_FP8_BLOCK != 0);
}

int64_t moe_wire_row_bytes(moe_wire w, int64_t d)
{
    if (d < 0)
        return -1;
    switch (w) {
    case MOE_WIRE_FP32:
        return d <= INT64_MAX / 4 ? 4 * d : -1;
    case MOE_WIRE_BF16:
        return d <= INT64_MAX / 2 ? 2 * d : -1;
    case MOE_WIRE_FP8:
        /* d + 4 ceil(d/128) <= d + d/32 + 4 */
        return d <= INT64_MAX / 2 ? d + 4 * fp8_blocks(d) : -1;
    default:
        return -1;
    }
}

/* ---- one value, fast ---- */

uint16_t moe_bf16_from_float(float x)
{
    uint32_t b = bits_of(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign and top payload, force quiet */
        return (uint16_t)((b >> 16) | 0x0040u);
    /* Round to nearest even on bit 16: add just under half an ulp, plus one if the kept part is
     * odd. A carry out of the mantissa bumps the exponent, which is the correct rounding, up to
     * +inf for values past the largest bf16 plus half an ulp (IEEE 754 §4.3.1 overflow). */
    b += 0x7fffu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}

float moe_bf16_to_float(uint16_t h)
{
    return float_of((uint32_t)h << 16);
}

/* m >> s rounded to nearest, ties to even; m < 2^24, s >= 1. */
static uint32_t shift_rne(uint32_t m, int s)
{
    if (s >= 26) /* m < 2^24 <= half of 2^s */
        return 0;
    uint32_t q = m >> s, rem = m & ((1u << s) - 1u), half = 1u << (s - 1);
    return q + (rem > half || (rem == half && (q & 1u)));
}

uint8_t moe_e4m3_from_float(float x)
{
    uint32_t b = bits_of(x), a = b & 0x7fffffffu;
    uint8_t sign = (uint8_t)((b >> 24) & 0x80u);
    if (a > 0x7f800000u) /* NaN */
        return sign | 0x7fu;
    if (a >= 0x43e00000u) /* |x| >= 448 or inf: saturate (the OCP OFP8 saturating
                             conversion; CUDA's __NV_SATFINITE, which DeepEP uses) */
        return sign | 0x7eu;
    if (a >= 0x3c800000u) { /* |x| >= 2^-6: E4M3 normal range. Rebias the exponent from 127 to 7
                               and keep 3 of 23 mantissa bits; the carry of the round may move
                               the value into the next binade, which is its right code. */
        uint32_t r = a - (120u << 23);
        r += 0x7ffffu + ((r >> 20) & 1u);
        return sign | (uint8_t)(r >> 20);
    }
    /* |x| < 2^-6: a multiple of the subnormal step 2^-9, code = round(|x| 2^9) in 0..8 (8 is 2^-6,
     * the smallest normal, which is code 0x08 too). |x| = m 2^(e-23), m the 24-bit significand. */
    int e = (int)(a >> 23);
    uint32_t m = a & 0x7fffffu;
    if (e == 0)
        e = 1; /* float subnormal: no hidden bit, exponent -126 */
    else
        m |= 0x800000u;
    /* |x| 2^9 = m 2^(e - 127 - 23 + 9) = m >> (141 - e), 141 - e >= 21 here (e <= 120) */
    return sign | (uint8_t)shift_rne(m, 141 - e);
}

float moe_e4m3_to_float(uint8_t c)
{
    uint32_t sign = (uint32_t)(c & 0x80u) << 24;
    uint32_t e = (c >> 3) & 0xfu, m = c & 7u;
    if (e == 15 && m == 7)
        return float_of(sign | 0x7fc00000u);
    if (e == 0) /* m 2^-9, exact in float */
        return float_of(sign | bits_of((float)m * 0x1p-9f));
    return float_of(sign | (e + 120u) << 23 | m << 20);
}

/* ---- one value, the twins ---- */

uint16_t moe_bf16_from_float_ref(float x)
{
    if (isnan(x))
        return (uint16_t)((bits_of(x) >> 16) | 0x0040u);
    if (isinf(x))
        return (uint16_t)(bits_of(x) >> 16);
    /* The two bf16 values around x: lo truncates toward zero, hi is the next one away from zero;
     * past the largest bf16 the next one is 2^128, which IEEE rounding treats as overflow to inf. */
    uint16_t lo = (uint16_t)(bits_of(x) >> 16), hi = (uint16_t)(lo + 1);
    double vx = fabs((double)x), vlo = fabs((double)moe_bf16_to_float(lo));
    double vhi = (hi & 0x7fffu) == 0x7f80u ? ldexp(1.0, 128) : fabs((double)moe_bf16_to_float(hi));
    double dlo = vx - vlo, dhi = vhi - vx; /* exact: all three have at most 24 bits within a binade */
    if (dlo < dhi || (dlo == dhi && (lo & 1u) == 0))
        return lo;
    return hi;
}

uint8_t moe_e4m3_from_float_ref(float x)
{
    uint8_t sign = signbit(x) ? 0x80u : 0u;
    if (isnan(x))
        return sign | 0x7fu;
    if (isinf(x))
        return sign | 0x7eu;
    /* Nearest of the 127 finite magnitudes 0x00..0x7e (so anything above 448 gets 448: the
     * saturation), ties to the even code; codes go up with the value, so the first of two equally
     * near is the lower. */
    double v = fabs((double)x), best = INFINITY;
    uint8_t code = 0;
    for (int c = 0; c <= 0x7e; c++) {
        double dist = fabs(v - (double)moe_e4m3_to_float((uint8_t)c));
        if (dist < best || (dist == best && (c & 1) == 0)) {
            best = dist;
            code = (uint8_t)c;
        }
    }
    return sign | code;
}

/* ---- rows ---- */

float moe_fp8_block_scale(const float *x, int64_t len)
{
    float amax = MOE_WIRE_FP8_AMAX_FLOOR;
    for (int64_t j = 0; j < len; j++) {
        float a = fabsf(x[j]);
        if (isfinite(a) && a > amax)
            amax = a;
    }
    return amax / MOE_E4M3_MAX;
}

/* The double-arithmetic twin: a float quotient computed in double and rounded to float equals the
 * float quotient (double rounding of +-×/ through a format with 2p+2 bits is innocuous: Figueroa,
 * "When is double rounding innocuous?", SIGNUM 1995), so this checks the float code independently. */
static float fp8_block_scale_ref(const float *x, int64_t len)
{
    double amax = MOE_WIRE_FP8_AMAX_FLOOR;
    for (int64_t j = 0; j < len; j++)
        if (isfinite(x[j]) && fabs((double)x[j]) > amax)
            amax = fabs((double)x[j]);
    return (float)(amax / 448.0);
}

/* One fp8 row: codes (d) then scales (ceil(d/128) floats, unaligned). */
static void fp8_encode_row(uint8_t *out, const float *x, int64_t d)
{
    uint8_t *scales = out + d;
    for (int64_t b0 = 0, blk = 0; b0 < d; b0 += MOE_WIRE_FP8_BLOCK, blk++) {
        int64_t len = d - b0 < MOE_WIRE_FP8_BLOCK ? d - b0 : MOE_WIRE_FP8_BLOCK;
        float scale = moe_fp8_block_scale(x + b0, len);
        for (int64_t j = 0; j < len; j++)
            out[b0 + j] = moe_e4m3_from_float(x[b0 + j] / scale);
        memcpy(scales + 4 * blk, &scale, sizeof scale);
    }
}

static void fp8_decode_row(float *y, const uint8_t *in, int64_t d)
{
    const uint8_t *scales = in + d;
    for (int64_t b0 = 0, blk = 0; b0 < d; b0 += MOE_WIRE_FP8_BLOCK, blk++) {
        int64_t len = d - b0 < MOE_WIRE_FP8_BLOCK ? d - b0 : MOE_WIRE_FP8_BLOCK;
        float scale;
        memcpy(&scale, scales + 4 * blk, sizeof scale);
        for (int64_t j = 0; j < len; j++)
            y[b0 + j] = moe_e4m3_to_float(in[b0 + j]) * scale;
    }
}

void moe_wire_encode_rows(void *dst, const float *src, const int64_t *rows, int64_t n, int64_t d,
                          moe_wire w)
{
    int64_t rb = moe_wire_row_bytes(w, d);
    uint8_t *out = dst;
    for (int64_t i = 0; i < n; i++, out += rb) {
        const float *x = src + (rows ? rows[i] : i) * d;
        switch (w) {
        case MOE_WIRE_FP32:
            memcpy(out, x, (size_t)rb);
            break;
        case MOE_WIRE_BF16:
            for (int64_t j = 0; j < d; j++) {
                uint16_t h = moe_bf16_from_float(x[j]);
                memcpy(out + 2 * j, &h, sizeof h);
            }
            break;
        case MOE_WIRE_FP8:
            fp8_encode_row(out, x, d);
            break;
        default:
            return;
        }
    }
}

void moe_wire_decode_rows(float *dst, const void *src, int64_t n, int64_t d, moe_wire w)
{
    int64_t rb = moe_wire_row_bytes(w, d);
    const uint8_t *in = src;
    for (int64_t i = 0; i < n; i++, in += rb) {
        float *y = dst + i * d;
        switch (w) {
        case MOE_WIRE_FP32:
            memcpy(y, in, (size_t)rb);
            break;
        case MOE_WIRE_BF16:
            for (int64_t j = 0; j < d; j++) {
                uint16_t h;
                memcpy(&h, in + 2 * j, sizeof h);
                y[j] = moe_bf16_to_float(h);
            }
            break;
        case MOE_WIRE_FP8:
            fp8_decode_row(y, in, d);
            break;
        default:
            return;
        }
    }
}

/* ---- rows, the twins: one element at a time, byte offsets computed from the layout ---- */

void moe_wire_encode_rows_ref(void *dst, const float *src, const int64_t *rows, int64_t n,
                              int64_t d, moe_wire w)
{
    uint8_t *out = dst;
    int64_t rb = moe_wire_row_bytes(w, d);
    for (int64_t i = 0; i < n; i++) {
        int64_t r = rows ? rows[i] : i;
        for (int64_t j = 0; j < d; j++) {
            float x = src[r * d + j];
            if (w == MOE_WIRE_FP32) {
                memcpy(out + i * rb + 4 * j, &x, 4);
            } else if (w == MOE_WIRE_BF16) {
                uint16_t h = moe_bf16_from_float_ref(x);
                memcpy(out + i * rb + 2 * j, &h, 2);
            } else if (w == MOE_WIRE_FP8) {
                int64_t blk = j / MOE_WIRE_FP8_BLOCK, b0 = blk * MOE_WIRE_FP8_BLOCK;
                int64_t len = d - b0 < MOE_WIRE_FP8_BLOCK ? d - b0 : MOE_WIRE_FP8_BLOCK;
                float scale = fp8_block_scale_ref(src + r * d + b0, len);
                out[i * rb + j] = moe_e4m3_from_float_ref((float)((double)x / (double)scale));
                memcpy(out + i * rb + d + 4 * blk, &scale, 4);
            }
        }
    }
}

void moe_wire_decode_rows_ref(float *dst, const void *src, int64_t n, int64_t d, moe_wire w)
{
    const uint8_t *in = src;
    int64_t rb = moe_wire_row_bytes(w, d);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++) {
            const uint8_t *p = in + i * rb;
            float y = 0.0f;
            if (w == MOE_WIRE_FP32) {
                memcpy(&y, p + 4 * j, 4);
            } else if (w == MOE_WIRE_BF16) {
                uint16_t h;
                memcpy(&h, p + 2 * j, 2);
                y = float_of((uint32_t)h << 16);
            } else if (w == MOE_WIRE_FP8) {
                /* value from the fields: (-1)^s 2^(e-7) (1 + m/8), or 2^-6 m/8 when e = 0 */
                uint8_t c = p[j];
                int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
                double v = e == 0 ? ldexp(m / 8.0, -6) : ldexp(1.0 + m / 8.0, e - 7);
                if (e == 15 && m == 7)
                    v = NAN;
                float scale;
                memcpy(&scale, p + d + 4 * (j / MOE_WIRE_FP8_BLOCK), 4);
                y = (float)((s ? -v : v) * (double)scale); /* the product of two floats, once */
            }
            dst[i * d + j] = y;
        }
}

int moe_dedup_meta_slots(int slots_per_token, int P, int R)
{
    int most = (P + R - 1) / R;
    return slots_per_token < most ? slots_per_token : most;
}

int64_t moe_dedup_row_bytes(int64_t payload_bytes, int meta_slots)
{
    return payload_bytes + (int64_t)meta_slots * MOE_DEDUP_ENTRY_BYTES;
}
