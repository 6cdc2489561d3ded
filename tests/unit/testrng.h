/* A seeded generator for the unit suites' random cases (SplitMix64 over a per-file state; set
 * g_state to seed). Independent of moesim's own rng module, which some suites test. */
#ifndef MOESIM_TEST_RNG_H
#define MOESIM_TEST_RNG_H

#include <stdint.h>

static uint64_t g_state;

static inline uint64_t next_u64(void)
{
    uint64_t z = (g_state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Uniform in [0, n); the modulo bias is below n / 2^64, far under anything measured here. */
static inline int next_int(int n)
{
    return (int)(next_u64() % (uint64_t)n);
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double next_unit(void)
{
    return (double)(next_u64() >> 11) * 0x1.0p-53;
}

#endif
