/* Counter-based random numbers: value i of stream s under seed k is a pure function of (k, s, i),
 * so any rank can produce any slice of any tensor without coordinating with the others, and the
 * global batch is the same whatever the rank count.
 *
 * Spec (docs/generator.md reproduces it so other tools can regenerate the data):
 *   mix(x)        = SplitMix64 finalizer (Steele, Lea, Flood 2014)
 *   key(k, s)     = mix(k ^ mix(s + 0x9E3779B97F4A7C15))
 *   u64(k, s, i)  = mix(key(k, s) + (i + 1) * 0x9E3779B97F4A7C15)
 *   uniform(x)    = ((x >> 11) + 0.5) * 2^-53, in (0, 1)
 *   normal(k,s,i) = sqrt(-2 ln u1) * cos(2 pi u2), u1 = uniform(u64(k,s,2i)), u2 = uniform(u64(k,s,2i+1))
 *                   computed in double, rounded once to float.
 *   symmetric(k,s,i) = b * (2 uniform(u64(k,s,i)) - 1), in double, rounded once to float: U(-b, b). */
#ifndef MOESIM_RNG_H
#define MOESIM_RNG_H

#include <stddef.h>
#include <stdint.h>

/* Streams: one per tensor family so that tensors never share random numbers. */
enum {
    MOE_STREAM_TOKENS = 1,     /* h: element (g, j) is counter g*d + j          */
    MOE_STREAM_ROUTER = 2,     /* W: element (e, j) is counter e*d + j          */
    MOE_STREAM_CENTRES = 3,    /* reserved for clustered workloads              */
    MOE_STREAM_ROUTER_NOISE = 4, /* W_noise of --noisy-top-k: as W               */
    MOE_STREAM_GATE_NOISE = 5, /* eps of --noisy-top-k: counter t*E + e         */
    MOE_STREAM_JITTER = 6,     /* --input-jitter: counter t*d + j               */
    MOE_STREAM_DROP = 7,       /* --drop-policy random: counter t*k + c         */
    MOE_STREAM_WORKLOAD = 8,   /* --workload: 3 ((step N + t) k + c) + j; the hot set 2^62 + e */
    MOE_STREAM_TEACHER = 9,    /* --mode fwd-bwd, train: the teacher's router, as W; its expert
                                * e has the weights moe_expert_init gives id MOE_TEACHER_ID + e */
    MOE_STREAM_EXPERT = 0x100  /* expert e: W1 is stream 0x100+2e, W2 0x101+2e  */
};

uint64_t moe_rng_mix(uint64_t x);
uint64_t moe_rng_u64(uint64_t seed, uint64_t stream, uint64_t counter);
double moe_rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter);
double moe_rng_normal(uint64_t seed, uint64_t stream, uint64_t counter);

/* out[i] = scale * normal(seed, stream, first + i) rounded to float, for i in [0, n). */
void moe_rng_fill_normal(float *out, size_t n, uint64_t seed, uint64_t stream, uint64_t first,
                         double scale);

/* out[i] = bound * (2 uniform(seed, stream, first + i) - 1) rounded to float, for i in [0, n):
 * uniform on (-bound, bound), variance bound^2 / 3. */
void moe_rng_fill_uniform(float *out, size_t n, uint64_t seed, uint64_t stream, uint64_t first,
                          double bound);

#endif
