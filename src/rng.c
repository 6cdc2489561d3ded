#include "moesim/rng.h"

#include <math.h>

#define MOE_GOLDEN 0x9E3779B97F4A7C15ULL

/* forced inline: GCC does not inline a default-target function into a target clone */
static inline __attribute__((always_inline)) uint64_t mix(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

uint64_t moe_rng_mix(uint64_t x)
{
    return mix(x);
}

uint64_t moe_rng_u64(uint64_t seed, uint64_t stream, uint64_t counter)
{
    uint64_t key = moe_rng_mix(seed ^ moe_rng_mix(stream + MOE_GOLDEN));
    return moe_rng_mix(key + (counter + 1) * MOE_GOLDEN);
}

double moe_rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter)
{
    return ((double)(moe_rng_u64(seed, stream, counter) >> 11) + 0.5) * 0x1.0p-53;
}

double moe_rng_normal(uint64_t seed, uint64_t stream, uint64_t counter)
{
    /* Box-Muller, cosine branch only: one normal per counter keeps the mapping trivial. */
    double u1 = moe_rng_uniform(seed, stream, 2 * counter);
    double u2 = moe_rng_uniform(seed, stream, 2 * counter + 1);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* The expert weights, most of a run's set-up. Cloned for x86-64-v4 where the CPU has it: AVX-512
 * multiplies 64-bit lanes (vpmullq) and converts them to double, so the loop vectorizes, 8 lanes
 * at a time. Every operation is an integer one or a single IEEE rounding (no contraction in C11
 * mode), so each clone writes the same floats. (Not under clang: clang 14 emits the
 * clones and their resolver but no symbol of the plain name, so a call from another file did not
 * link; expert.c chooses its kernels by hand instead.) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "default")))
#endif
void moe_rng_fill_uniform(float *out, size_t n, uint64_t seed, uint64_t stream, uint64_t first,
                          double bound)
{
    /* the key once, then one mix per element: about 1 ns an element against a normal's 41 */
    uint64_t key = moe_rng_mix(seed ^ moe_rng_mix(stream + MOE_GOLDEN));
    uint64_t c = (first + 1) * MOE_GOLDEN;
    for (size_t i = 0; i < n; i++, c += MOE_GOLDEN) {
        /* below 2^53, so the signed conversion is exact and the same value */
        double u = ((double)(int64_t)(mix(key + c) >> 11) + 0.5) * 0x1.0p-53;
        out[i] = (float)(bound * (2.0 * u - 1.0));
    }
}

void moe_rng_fill_normal(float *out, size_t n, uint64_t seed, uint64_t stream, uint64_t first,
                         double scale)
{
    /* moe_rng_normal's arithmetic exactly, with the stream's key mixed once instead of twice per
     * element: the uniforms of counters 2c and 2c + 1 are mix(key + (2c + 1) G) and
     * mix(key + (2c + 2) G) */
    uint64_t key = moe_rng_mix(seed ^ moe_rng_mix(stream + MOE_GOLDEN));
    uint64_t c = (2 * first + 1) * MOE_GOLDEN;
    for (size_t i = 0; i < n; i++, c += 2 * MOE_GOLDEN) {
        double u1 = ((double)(mix(key + c) >> 11) + 0.5) * 0x1.0p-53;
        double u2 = ((double)(mix(key + c + MOE_GOLDEN) >> 11) + 0.5) * 0x1.0p-53;
        out[i] = (float)(scale * (sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2)));
    }
}
