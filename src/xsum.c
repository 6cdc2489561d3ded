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
    /* sign and magnitude: negate a negative sum limb by limb and propagate the carries again */
    int64_t t[MOE_XSUM_LIMBS];
    int neg = s->limb[MOE_XSUM_LIMBS - 1] < 0;
    for (int i = 0; i < MOE_XSUM_LIMBS; i++)
        t[i] = neg ? -s->limb[i] : s->limb[i];
    for (int i = 0; i < MOE_XSUM_LIMBS - 1; i++) {
        int64_t carry = t[i] >> 32;
        t[i] -= carry * ((int64_t)1 << 32);
        t[i + 1] += carry;
    }
    int h = MOE_XSUM_LIMBS - 1;
    while (h >= 0 && t[h] == 0)
        h--;
    if (h < 0)
        return 0.0;
    /* Round once: the 64 bits below the leading one, with every lower bit folded into the last
     * (a sticky bit), convert to double (round to nearest even), scale by a power of two (exact). */
    unsigned __int128 top = (unsigned __int128)(uint64_t)t[h] << 64;
    if (h >= 1)
        top |= (unsigned __int128)(uint64_t)t[h - 1] << 32;
    if (h >= 2)
        top |= (uint64_t)t[h - 2];
    int bits = 128 - __builtin_clzll((uint64_t)(top >> 64)); /* top >= 2^64: 65 .. 96 */
    int drop = bits - 64;                                     /* 1 .. 32 */
    uint64_t w = (uint64_t)(top >> drop);
    int sticky = (top & (((unsigned __int128)1 << drop) - 1)) != 0;
    for (int i = 0; i < h - 2 && !sticky; i++)
        sticky = t[i] != 0;
    w |= (uint64_t)sticky;
    double v = ldexp((double)w, 32 * h - 64 + drop - 149);
    return neg ? -v : v;
}
