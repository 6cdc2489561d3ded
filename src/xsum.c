#include "moesim/xsum.h"

#include <math.h>
#include <string.h>

void moe_xsum_init(moe_xsum *s)
{
    memset(s, 0, sizeof *s);
}

void moe_xsum_normalize(moe_xsum *s)
{
    for (int i = 0; i < MOE_XSUM_LIMBS - 1; i++) {
        int64_t carry = s->limb[i] >> 32; /* arithmetic shift: floor division by 2^32 */
        s->limb[i] -= carry * ((int64_t)1 << 32);
        s->limb[i + 1] += carry;
    }
    s->pending = 0;
}

void moe_xsum_add(moe_xsum *s, float x)
{
    if (!isfinite(x) || x == 0.0f)
        return;
    int e;
    float m = frexpf(x, &e); /* x = m 2^e, 0.5 <= |m| < 1 */
    /* integer mantissa: x = mi 2^(e - 24), |mi| < 2^24, exact */
    int64_t mi = (int64_t)ldexpf(m, 24);
    int p = e - 24 + 149; /* bit position of mi's unit above 2^-149: 0 .. 253 */
    if (p < 0) {          /* subnormals: mi has trailing zeros to shift out, exactly */
        mi >>= -p;        /* arithmetic on negatives: exact since those bits are zero */
        p = 0;
    }
    int limb = p / 32, shift = p % 32;
    /* mi << shift is below 2^55: split over two limbs */
    int64_t v = mi * ((int64_t)1 << shift);
    int64_t lo = v & 0xffffffffLL, hi = (v - lo) / ((int64_t)1 << 32);
    s->limb[limb] += lo;
    s->limb[limb + 1] += hi;
    /* each limb grows by under 2^32 per addition: propagate long before int64 could overflow */
    if (++s->pending >= ((int64_t)1 << 28))
        moe_xsum_normalize(s);
}

void moe_xsum_add_array(moe_xsum *s, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        moe_xsum_add(s, x[i]);
}

double moe_xsum_value(moe_xsum *s)
{
    moe_xsum_normalize(s);
    /* the top limb carries the sign; add from the most significant down. Each term is exact in
     * double (a 32-bit digit times a power of two) and the additions are in a fixed order, so the
     * result depends only on the exact sum. */
    long double v = 0.0L;
    for (int i = MOE_XSUM_LIMBS - 1; i >= 0; i--)
        v += ldexpl((long double)s->limb[i], 32 * i - 149);
    return (double)v;
}
