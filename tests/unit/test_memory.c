/* Unit tests of memory: saturating size arithmetic, the per-rank estimate (fixed part, exchange,
 * balanced exchange) on hand-worked configurations and on seeded random ones, the --max-memory
 * parser and the size formatter. Every size here is an exact integer: comparisons are exact. */
#include "moesim/config.h"
#include "moesim/error.h"
#include "moesim/memory.h"
#include "moesim/router.h"
#include "moesim/topology.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"
#include "testrng.h"

/* ---- saturating arithmetic ---- */

START_TEST(test_bytes_mul_hand)
{
    ck_assert_int_eq(moe_bytes_mul(0, 0), 0);
    ck_assert_int_eq(moe_bytes_mul(0, INT64_MAX), 0);
    ck_assert_int_eq(moe_bytes_mul(INT64_MAX, 0), 0);
    ck_assert_int_eq(moe_bytes_mul(6, 7), 42);
    ck_assert_int_eq(moe_bytes_mul(1, INT64_MAX), INT64_MAX);
    ck_assert_int_eq(moe_bytes_mul(INT64_MAX, 1), INT64_MAX);
    /* 2^31 * 2^31 = 2^62 fits; 2^32 * 2^31 = 2^63 does not */
    ck_assert_int_eq(moe_bytes_mul(INT64_C(1) << 31, INT64_C(1) << 31), INT64_C(1) << 62);
    ck_assert_int_eq(moe_bytes_mul(INT64_C(1) << 32, INT64_C(1) << 31), MOE_BYTES_MAX);
    /* a product exactly at the limit: 2^63 - 1 = 7^2 * 73 * 127 * 337 * 92737 * 649657 */
    ck_assert_int_eq(moe_bytes_mul(7 * 7 * 73 * 127, INT64_C(337) * 92737 * 649657), INT64_MAX);
    /* 3 * 3074457345618258602 = 9223372036854775806 fits; 3 * 3074457345618258603 = 2^63 + 1 */
    ck_assert_int_eq(moe_bytes_mul(3, INT64_C(3074457345618258602)), INT64_MAX - 1);
    ck_assert_int_eq(moe_bytes_mul(3, INT64_C(3074457345618258603)), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_mul(INT64_MAX, INT64_MAX), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_mul(INT64_MAX, 2), MOE_BYTES_MAX);
    /* negative inputs are never sizes: saturate, never a negative or wrapped product */
    ck_assert_int_eq(moe_bytes_mul(-1, 5), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_mul(5, -1), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_mul(-1, -1), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_mul(INT64_MIN, -1), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_mul(INT64_MIN, 0), MOE_BYTES_MAX);
}
END_TEST

START_TEST(test_bytes_add_hand)
{
    ck_assert_int_eq(moe_bytes_add(0, 0), 0);
    ck_assert_int_eq(moe_bytes_add(2, 3), 5);
    ck_assert_int_eq(moe_bytes_add(INT64_MAX - 1, 1), INT64_MAX);
    ck_assert_int_eq(moe_bytes_add(INT64_MAX, 0), INT64_MAX);
    ck_assert_int_eq(moe_bytes_add(INT64_MAX, 1), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_add(INT64_C(1) << 62, INT64_C(1) << 62), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_add((INT64_C(1) << 62) - 1, INT64_C(1) << 62), INT64_MAX);
    ck_assert_int_eq(moe_bytes_add(INT64_MAX, INT64_MAX), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_add(-1, 0), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_add(0, -1), MOE_BYTES_MAX);
    ck_assert_int_eq(moe_bytes_add(10, -3), MOE_BYTES_MAX); /* not 7: a negative is no size */
    ck_assert_int_eq(moe_bytes_add(INT64_MIN, INT64_MAX), MOE_BYTES_MAX);
}
END_TEST

/* Reference: the exact product and sum in unsigned __int128, clamped. */
static int64_t mul_ref(int64_t a, int64_t b)
{
    if (a < 0 || b < 0)
        return MOE_BYTES_MAX;
    unsigned __int128 p = (unsigned __int128)a * (unsigned __int128)b;
    return p > (unsigned __int128)INT64_MAX ? MOE_BYTES_MAX : (int64_t)p;
}

static int64_t add_ref(int64_t a, int64_t b)
{
    if (a < 0 || b < 0)
        return MOE_BYTES_MAX;
    unsigned __int128 s = (unsigned __int128)a + (unsigned __int128)b;
    return s > (unsigned __int128)INT64_MAX ? MOE_BYTES_MAX : (int64_t)s;
}

/* A random int64 of random bit length, sometimes negative or at the boundary. */
static int64_t random_size(void)
{
    switch (next_int(8)) {
    case 0:
        return INT64_MAX - next_int(3);
    case 1:
        return -(int64_t)(next_u64() >> (1 + next_int(63)));
    default: {
        int bits = next_int(64); /* 0 .. 63 bits; a shift by 64 would be undefined */
        return bits == 0 ? 0 : (int64_t)(next_u64() >> (64 - bits) >> 1);
    }
    }
}

START_TEST(test_bytes_against_int128)
{
    g_state = 20240601;
    for (int i = 0; i < 200000; i++) {
        int64_t a = random_size(), b = random_size();
        int64_t m = moe_bytes_mul(a, b), s = moe_bytes_add(a, b);
        EXPECT_MSG(m == mul_ref(a, b), "mul(%lld, %lld) = %lld", (long long)a, (long long)b,
                   (long long)m);
        EXPECT_MSG(s == add_ref(a, b), "add(%lld, %lld) = %lld", (long long)a, (long long)b,
                   (long long)s);
        EXPECT(m >= 0 && s >= 0);
    }
}
END_TEST

/* ---- the fixed part, by hand ---- */

/* N = 8 tokens, d = 4, f = 8, E = 4 experts, k = 2, R = 2 ranks: each rank holds n = 4 tokens and
 * n_le = 2 experts. F = 4 bytes per float. */
static void small_config(moe_config *cfg)
{
    moe_config_defaults(cfg);
    cfg->tokens = 8;
    cfg->hidden = 4;
    cfg->ffn = 8;
    cfg->experts = 4;
    cfg->top_k = 2;
}

/* The rank-0 results part, from src/memory.c's comments: B = min(R^2, N k + R) nonzero pairs of
 * 16 bytes; two results, each three pair lists (48 B), eight per-expert int64 arrays (64 E), R
 * placements and R times two per-class int64 arrays (8 MOE_LOC_COUNT 2 each); plus four more
 * lists (64 B). */
static int64_t results_bytes(int64_t R, int64_t E, int64_t Nk)
{
    int64_t B = R * R < Nk + R ? R * R : Nk + R;
    int64_t one = 48 * B + 64 * E + R * ((int64_t)sizeof(moe_placement) + 8 * MOE_LOC_COUNT * 2);
    return 2 * one + 64 * B;
}

/* The router's block scratch for the small layer (d 4, E 4): MOE_ROUTER_BLOCK (d + E) F */
#define BLK (MOE_ROUTER_BLOCK * (4 + 4) * 4)

START_TEST(test_fixed_hand)
{
    moe_config cfg;
    small_config(&cfg);
    moe_mem_estimate m;
    moe_memory_fixed(&m, &cfg, 2, 0, 4, 2);
    ck_assert_int_eq(m.tokens, 128);      /* h and y: 2 n d F = 2 * 4 * 4 * 4 */
    ck_assert_int_eq(m.router, 144 + BLK); /* W: E d F = 64; bias: E F = 16; p: n E F = 64 */
    ck_assert_int_eq(m.assignments, 208); /* n k 26 = 8 * 26 */
    ck_assert_int_eq(m.experts, 512);     /* 2 n_le f d F = 2 * 2 * 8 * 4 * 4 */
    /* 8 (4E + (3 + 4) R + 2 R n_le) = 8 (16 + 14 + 8): no R x R matrix on any rank */
    ck_assert_int_eq(m.counts, 304);
    /* B = min(R^2, N k + R) = min(4, 18) = 4 pairs; x86_64: sizeof(moe_placement) = 168, so
     * one = 48 * 4 + 256 + 2 (168 + 80) = 944 and results = 2 * 944 + 64 * 4 = 2144; the formula
     * keeps the test right on other ABIs */
    ck_assert_int_eq(m.results, results_bytes(2, 4, 16));
    if (sizeof(moe_placement) == 168)
        ck_assert_int_eq(m.results, 2144);
    ck_assert_int_eq(m.dumps, 0);
    ck_assert_int_eq(m.exchange, 0);
    ck_assert_int_eq(m.staging, 0);
    ck_assert_int_eq(m.total, 128 + 144 + BLK + 208 + 512 + 304 + m.results);

    /* rank 1: no results, no dumps; everything else the same */
    moe_mem_estimate m1;
    moe_memory_fixed(&m1, &cfg, 2, 1, 4, 2);
    ck_assert_int_eq(m1.results, 0);
    ck_assert_int_eq(m1.dumps, 0);
    ck_assert_int_eq(m1.total, 128 + 144 + BLK + 208 + 512 + 304);
}
END_TEST

START_TEST(test_fixed_options_hand)
{
    moe_config cfg;
    small_config(&cfg);
    moe_mem_estimate m;

    /* replayed logits: a second (n, E) float array in the router part, 144 + 64 */
    cfg.logits_file = "z.npy";
    moe_memory_fixed(&m, &cfg, 2, 0, 4, 2);
    ck_assert_int_eq(m.router, 208 + BLK);
    cfg.logits_file = NULL;

    /* ffn = 0 means f = 2d = 8: the same experts part as f = 8 */
    cfg.ffn = 0;
    moe_memory_fixed(&m, &cfg, 2, 0, 4, 2);
    ck_assert_int_eq(m.experts, 512);
    cfg.ffn = 16; /* 2 * 2 * 16 * 4 * 4 */
    moe_memory_fixed(&m, &cfg, 2, 0, 4, 2);
    ck_assert_int_eq(m.experts, 1024);
    cfg.ffn = 8;

    /* dumps on rank 0 only: y is N d F = 8 * 4 * 4 = 128; the routing CSV N k records of
     * sizeof(moe_route_record) = 32 bytes = 512; the routing .npy N E F = 128 */
    ck_assert_int_eq((int)sizeof(moe_route_record), 32);
    cfg.dump_output = "y.npy";
    moe_memory_fixed(&m, &cfg, 2, 0, 4, 2);
    ck_assert_int_eq(m.dumps, 128);
    cfg.dump_routing = "r.csv";
    moe_memory_fixed(&m, &cfg, 2, 0, 4, 2);
    ck_assert_int_eq(m.dumps, 128 + 512);
    cfg.dump_routing = "r.npy";
    moe_memory_fixed(&m, &cfg, 2, 0, 4, 2);
    ck_assert_int_eq(m.dumps, 128 + 128);
    ck_assert_int_eq(m.total, 128 + 144 + BLK + 208 + 512 + 304 + results_bytes(2, 4, 16) + 256);
    moe_memory_fixed(&m, &cfg, 2, 1, 4, 2);
    ck_assert_int_eq(m.dumps, 0);
    ck_assert_int_eq(m.results, 0);

    /* --predict-only: no experts, no dumps and no y are allocated; h is held a chunk at a time
     * (all 4 rows here: n d F = 64) and the logits once more, n E F = 64, in the router part */
    cfg.predict_only = true;
    moe_memory_fixed(&m, &cfg, 2, 0, 4, 2);
    ck_assert_int_eq(m.experts, 0);
    ck_assert_int_eq(m.dumps, 0);
    ck_assert_int_eq(m.tokens, 64);
    ck_assert_int_eq(m.router, 144 + 64 + BLK);
    ck_assert_int_eq(m.total, 64 + 208 + BLK + 208 + 304 + results_bytes(2, 4, 16));
    /* a wide layer: the chunk, 64 MiB of rows, not n d F */
    cfg.hidden = 1 << 20;
    moe_memory_fixed(&m, &cfg, 2, 0, 1000, 2);
    ck_assert_int_eq(moe_predict_chunk_rows(1000, 1 << 20), 16);
    ck_assert_int_eq(m.tokens, 16 * (INT64_C(4) << 20));
    ck_assert_int_eq(moe_predict_chunk_rows(3, 8), 3);
    ck_assert_int_eq(moe_predict_chunk_rows(0, 8), 1);
}
END_TEST

START_TEST(test_fixed_one_rank_hand)
{
    /* R = 1, n = 8, n_le = 4, k = 1, E = 4, d = 2, f = 3:
     * tokens 2 * 8 * 2 * 4 = 128; router 4*2*4 + 16 + 8*4*4 = 32 + 16 + 128 = 176;
     * assignments 8 * 1 * 26 = 208; experts 2 * 4 * 3 * 2 * 4 = 192;
     * counts 8 (16 + 7 + 2 * 4 + 1) = 256 */
    moe_config cfg;
    moe_config_defaults(&cfg);
    cfg.tokens = 8;
    cfg.hidden = 2;
    cfg.ffn = 3;
    cfg.experts = 4;
    cfg.top_k = 1;
    moe_mem_estimate m;
    moe_memory_fixed(&m, &cfg, 1, 0, 8, 4);
    ck_assert_int_eq(m.tokens, 128);
    ck_assert_int_eq(m.router, 176 + 32 * (2 + 4) * 4);
    ck_assert_int_eq(m.assignments, 208);
    ck_assert_int_eq(m.experts, 192);
    ck_assert_int_eq(m.counts, 248); /* 8 (4 E + 7 R + 2 R n_le) = 8 (16 + 7 + 8) */
    ck_assert_int_eq(m.results, results_bytes(1, 4, 8));
    ck_assert_int_eq(m.total, 128 + 176 + 32 * (2 + 4) * 4 + 208 + 192 + 248 + results_bytes(1, 4, 8));
}
END_TEST

/* The issue's case: 100 tokens, 65536 experts, d = f = 2^24 on R = 2. Rank 0 holds 50 tokens and
 * 32768 experts: 2 * 2^15 * 2^24 * 2^24 * 4 = 2^66 bytes of experts, which wrapped to a small or
 * negative number before the arithmetic saturated. */
START_TEST(test_fixed_overflow_issue)
{
    moe_config cfg;
    moe_config_defaults(&cfg);
    cfg.tokens = 100;
    cfg.experts = 65536;
    cfg.hidden = 16777216;
    cfg.ffn = 16777216;
    for (int rank = 0; rank < 2; rank++) {
        moe_mem_estimate m;
        moe_memory_fixed(&m, &cfg, 2, rank, 50, 32768);
        ck_assert_int_eq(m.experts, MOE_BYTES_MAX);
        ck_assert_int_eq(m.total, MOE_BYTES_MAX);
        /* the parts that do fit are exact: h and y 2 * 50 * 2^24 * 4 = 6710886400;
         * W alone is 2^16 * 2^24 * 4 = 2^42 */
        ck_assert_int_eq(m.tokens, INT64_C(6710886400));
        ck_assert_int_eq(m.router, (INT64_C(1) << 42) + 65536 * 4 + 50 * 65536 * 4 +
                                     32 * (INT64_C(16777216) + 65536) * 4);
        const int64_t parts[] = {m.tokens,  m.router, m.assignments, m.experts, m.exchange,
                                 m.results, m.dumps,  m.counts,      m.staging, m.total};
        for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
            ck_assert_int_ge(parts[i], 0);
        moe_memory_exchange_balanced(&m, &cfg, 2, 50, 32768);
        ck_assert_int_ge(m.exchange, 0);
        ck_assert_int_eq(m.total, MOE_BYTES_MAX);
    }
    /* --predict-only drops the experts: then the total is finite (and exact) */
    cfg.predict_only = true;
    moe_mem_estimate m;
    moe_memory_fixed(&m, &cfg, 2, 1, 50, 32768);
    ck_assert_int_eq(m.experts, 0);
    ck_assert_int_lt(m.total, MOE_BYTES_MAX);
    ck_assert_int_eq(m.total, m.tokens + m.router + m.assignments + m.counts);
}
END_TEST

/* ---- the exchange, by hand ---- */

START_TEST(test_exchange_hand)
{
    moe_config cfg;
    small_config(&cfg); /* d = 4, f = 8 */
    moe_mem_estimate m;
    moe_memory_fixed(&m, &cfg, 2, 1, 4, 2);
    int64_t fixed = m.total;
    /* 10 rows out, 6 in, raw baseline max(10, 6) = 10: 26 rows of d F = 16 bytes = 416;
     * 6 computed rows of (2d + f) F = 64 bytes = 384 */
    moe_memory_exchange(&m, &cfg, 10, 6, 6, 6);
    ck_assert_int_eq(m.exchange, 800);
    ck_assert_int_eq(m.total, fixed + 800);
    /* rows straight into the blocks (--regroup alltoallw, slots): no staged arrivals, so
     * 10 + 0 + 10 = 20 rows of 16 bytes = 320, plus the same 384 */
    moe_memory_exchange(&m, &cfg, 10, 0, 6, 6);
    ck_assert_int_eq(m.exchange, 704);
    /* a second call replaces the exchange, it does not add to it */
    moe_memory_exchange(&m, &cfg, 2, 5, 5, 0); /* rows 2 + 5 + 5 = 12: 192 */
    ck_assert_int_eq(m.exchange, 192);
    ck_assert_int_eq(m.total, fixed + 192);
    /* staging set by the caller counts in the total */
    m.staging = 1000;
    moe_memory_exchange(&m, &cfg, 0, 0, 0, 0);
    ck_assert_int_eq(m.exchange, 0);
    ck_assert_int_eq(m.total, fixed + 1000);
    /* ffn = 0: f = 2d = 8, the same as above */
    cfg.ffn = 0;
    moe_memory_exchange(&m, &cfg, 10, 6, 6, 6);
    ck_assert_int_eq(m.exchange, 800);
    /* --predict-only: nothing, and the staging is cleared too */
    cfg.predict_only = true;
    moe_memory_exchange(&m, &cfg, 10, 6, 6, 6);
    ck_assert_int_eq(m.exchange, 0);
    ck_assert_int_eq(m.staging, 0);
    ck_assert_int_eq(m.total, fixed);
    /* saturation: 2^62 rows */
    cfg.predict_only = false;
    moe_memory_exchange(&m, &cfg, INT64_C(1) << 62, 0, 0, 0);
    ck_assert_int_eq(m.exchange, MOE_BYTES_MAX);
    ck_assert_int_eq(m.total, MOE_BYTES_MAX);
}
END_TEST

START_TEST(test_exchange_balanced_hand)
{
    moe_config cfg;
    small_config(&cfg); /* N = 8, d = 4, f = 8, E = 4, k = 2; rank: n = 4, n_le = 2 */
    moe_mem_estimate m;
    moe_memory_fixed(&m, &cfg, 2, 0, 4, 2);
    int64_t fixed = m.total;

    /* rows straight into the experts' blocks (the default here, --regroup auto is alltoallw):
     * dropless, n k = 8 rows out and the raw baseline's 8, no staged arrivals, 8 computed:
     * 16 * 16 + 8 * 64 = 768 */
    cfg.capacity_factor = 0.0;
    ck_assert_int_eq(moe_config_regroup(&cfg, 2), MOE_REGROUP_W);
    moe_memory_exchange_balanced(&m, &cfg, 2, 4, 2);
    ck_assert_int_eq(m.exchange, 768);
    /* the staged exchange (--regroup copy) keeps 8 more rows for the arrivals, as below */
    cfg.regroup = MOE_REGROUP_COPY;

    /* dropless: n k = 8 rows each way, 8 computed: 24 * 16 + 8 * 64 = 896 */
    moe_memory_exchange_balanced(&m, &cfg, 2, 4, 2);
    ck_assert_int_eq(m.exchange, 896);
    ck_assert_int_eq(m.total, fixed + 896);

    /* cf 1.25 global: C = ceil(1.25 * 8 * 2 / 4) = 5, the rank's experts hold 2 * 5 = 10 >= 8 */
    cfg.capacity_factor = 1.25;
    moe_memory_exchange_balanced(&m, &cfg, 2, 4, 2);
    ck_assert_int_eq(m.exchange, 896);

    /* cf 0.5 global: C = ceil(0.5 * 8 * 2 / 4) = 2, hold 4 < 8: 4 rows each way, 4 computed:
     * 12 * 16 + 4 * 64 = 448 */
    cfg.capacity_factor = 0.5;
    moe_memory_exchange_balanced(&m, &cfg, 2, 4, 2);
    ck_assert_int_eq(m.exchange, 448);

    /* cf 0.5 local: each of the R = 2 groups of N / R = 4 tokens has C = ceil(0.5 * 4 * 2 / 4) = 1,
     * so an expert holds 2 * 1 = 2 and the rank 2 * 2 = 4: again 448 */
    cfg.scope = MOE_SCOPE_LOCAL;
    moe_memory_exchange_balanced(&m, &cfg, 2, 4, 2);
    ck_assert_int_eq(m.exchange, 448);
    /* cf 0.75 local: C = ceil(0.75 * 4 * 2 / 4) = 2 per group, hold 2 * 2 * 2 = 8 = n k: 896 */
    cfg.capacity_factor = 0.75;
    moe_memory_exchange_balanced(&m, &cfg, 2, 4, 2);
    ck_assert_int_eq(m.exchange, 896);
    cfg.scope = MOE_SCOPE_GLOBAL;

    /* padding, cf 1.25: 8 rows each way, every slot computed, 10: 24 * 16 + 10 * 64 = 1024 */
    cfg.pad_to_capacity = true;
    cfg.capacity_factor = 1.25;
    moe_memory_exchange_balanced(&m, &cfg, 2, 4, 2);
    ck_assert_int_eq(m.exchange, 1024);
    /* padding, cf 0.5: 4 slots computed; at least the 4 accepted rows move each way, so at least
     * 12 * 16 + 4 * 64 = 448. (src/memory.c counts the uncapped n k = 8 rows here: 640. See the
     * report: the header promises "fewer if the capacity cannot hold them".) */
    cfg.capacity_factor = 0.5;
    moe_memory_exchange_balanced(&m, &cfg, 2, 4, 2);
    ck_assert_int_ge(m.exchange, 448);
    ck_assert_int_le(m.exchange, 640);

    /* --predict-only: nothing */
    cfg.pad_to_capacity = false;
    cfg.predict_only = true;
    moe_memory_fixed(&m, &cfg, 2, 0, 4, 2);
    moe_memory_exchange_balanced(&m, &cfg, 2, 4, 2);
    ck_assert_int_eq(m.exchange, 0);
}
END_TEST

/* ---- property on random configurations ---- */

static int64_t sum_parts_ref(const moe_mem_estimate *m)
{
    const int64_t parts[] = {m->tokens,  m->router, m->assignments, m->experts, m->exchange,
                             m->results, m->dumps,  m->counts,      m->staging, m->protocol};
    int64_t t = 0;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        t = add_ref(t, parts[i]);
    return t;
}

/* log-uniform in [1, 2^bits] */
static int64_t log_uniform(int bits)
{
    int b = next_int(bits + 1);
    return (INT64_C(1) << b) + (int64_t)(next_u64() % (uint64_t)(INT64_C(1) << b));
}

static void random_config(moe_config *cfg, int *R, int *rank, int64_t *n, int64_t *n_le)
{
    moe_config_defaults(cfg);
    cfg->tokens = log_uniform(40);
    if (cfg->tokens > INT64_C(1) << 40)
        cfg->tokens = INT64_C(1) << 40;
    cfg->hidden = log_uniform(24);
    if (cfg->hidden > MOE_MAX_WIDTH)
        cfg->hidden = MOE_MAX_WIDTH;
    cfg->ffn = next_int(3) == 0 ? 0 : log_uniform(23);
    cfg->experts = (int)log_uniform(15);
    cfg->top_k = 1 + next_int(cfg->experts < 8 ? cfg->experts : 8);
    cfg->capacity_factor = next_int(3) == 0 ? 0.0 : 0.25 + 2.0 * next_unit();
    cfg->scope = next_int(2) ? MOE_SCOPE_GLOBAL : MOE_SCOPE_LOCAL;
    cfg->pad_to_capacity = cfg->capacity_factor > 0.0 && next_int(4) == 0;
    cfg->predict_only = next_int(5) == 0;
    cfg->logits_file = next_int(3) == 0 ? "z.npy" : NULL;
    cfg->dump_output = next_int(3) == 0 ? "y.npy" : NULL;
    cfg->dump_routing = next_int(3) == 0 ? (next_int(2) ? "r.npy" : "r.csv") : NULL;
    *R = 1 + next_int(cfg->experts < 64 ? cfg->experts : 64);
    *rank = next_int(*R);
    *n = (cfg->tokens + *R - 1) / *R;
    *n_le = (cfg->experts + *R - 1) / *R;
}

START_TEST(test_estimate_property)
{
    g_state = 77;
    int saturated = 0;
    for (int it = 0; it < 5000; it++) {
        moe_config cfg;
        int R, rank;
        int64_t n, n_le;
        random_config(&cfg, &R, &rank, &n, &n_le);
        moe_mem_estimate m;
        moe_memory_fixed(&m, &cfg, R, rank, n, n_le);
        moe_memory_exchange_balanced(&m, &cfg, R, n, n_le);
        const int64_t parts[] = {m.tokens,  m.router, m.assignments, m.experts, m.exchange,
                                 m.results, m.dumps,  m.counts,      m.staging, m.total};
        for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
            EXPECT_MSG(parts[i] >= 0, "iteration %d: part %zu is %lld", it, i, (long long)parts[i]);
        EXPECT_MSG(m.total == sum_parts_ref(&m), "iteration %d: total %lld, parts sum to %lld", it,
                   (long long)m.total, (long long)sum_parts_ref(&m));
        saturated += m.total == MOE_BYTES_MAX;
        /* the exact tokens part: (2 or, under --predict-only, 1) n d 4 in 128 bits, clamped */
        EXPECT(m.tokens == (cfg.predict_only
                                ? mul_ref(mul_ref(moe_predict_chunk_rows(n, cfg.hidden), cfg.hidden), 4)
                                : mul_ref(mul_ref(2, mul_ref(n, cfg.hidden)), 4)));

        /* monotone in the rank's tokens (and the batch), and in the hidden size */
        moe_config more = cfg;
        int64_t dn = 1 + next_int(1000);
        more.tokens = cfg.tokens + dn;
        moe_mem_estimate m2;
        moe_memory_fixed(&m2, &more, R, rank, n + dn, n_le);
        moe_memory_exchange_balanced(&m2, &more, R, n + dn, n_le);
        /* the balanced exchange depends on the capacity, which grows with the batch; compare the
         * fixed parts, and the total with the exchange at the same row counts */
        EXPECT_MSG(m2.tokens >= m.tokens && m2.router >= m.router &&
                       m2.assignments >= m.assignments && m2.dumps >= m.dumps,
                   "iteration %d: a part shrank with more tokens", it);
        moe_mem_estimate f1, f2;
        moe_memory_fixed(&f1, &cfg, R, rank, n, n_le);
        moe_memory_fixed(&f2, &more, R, rank, n + dn, n_le);
        EXPECT_MSG(f2.total >= f1.total,
                   "iteration %d: fixed total %lld -> %lld with %lld more tokens", it,
                   (long long)f1.total, (long long)f2.total, (long long)dn);
        EXPECT_MSG(m2.total >= m.total || cfg.capacity_factor > 0.0,
                   "iteration %d: dropless total shrank with more tokens", it);

        more = cfg;
        more.hidden = cfg.hidden + 1 + next_int(64);
        moe_memory_fixed(&m2, &more, R, rank, n, n_le);
        moe_memory_exchange_balanced(&m2, &more, R, n, n_le);
        /* --predict-only holds a ~64 MiB chunk of h whatever d is (fewer, wider rows), so its
         * tokens part may shrink by up to a row as d grows; the rest is monotone there too */
        EXPECT_MSG(m2.total >= m.total || cfg.predict_only,
                   "iteration %d: total %lld -> %lld with a larger hidden size", it,
                   (long long)m.total, (long long)m2.total);
        EXPECT((m2.tokens >= m.tokens || cfg.predict_only) && m2.router >= m.router &&
               m2.experts >= m.experts && m2.exchange >= m.exchange);
        EXPECT(!cfg.predict_only || m2.tokens <= (INT64_C(64) << 20) + 4 * more.hidden);
    }
    /* the generator reaches both regimes, so both are checked */
    ck_assert_int_gt(saturated, 50);
    ck_assert_int_lt(saturated, 4950);
}
END_TEST

/* ---- --max-memory ---- */

START_TEST(test_parse_size_good)
{
    static const struct {
        const char *text;
        int64_t bytes;
    } good[] = {
        {"123", 123},
        {"1", 1},
        {"64K", 65536},
        {"64KiB", 65536},
        {"64KB", 65536},
        {"64k", 65536},
        {"64kB", 65536},
        {"1.5G", 1610612736},
        {"2GiB", INT64_C(2147483648)},
        {"2GB", INT64_C(2147483648)},
        {"1T", INT64_C(1099511627776)},
        {"1TiB", INT64_C(1099511627776)},
        {"512MiB", INT64_C(536870912)},
        {"3M", 3 << 20},
        {"7B", 7},
        {"0.5K", 512},
        {"4194304T", INT64_C(1) << 62}, /* exactly the documented limit, 2^62 */
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        int64_t bytes = -1;
        double pct = -1.0;
        char msg[256] = "";
        int rc = moe_memory_parse_size(good[i].text, &bytes, &pct, msg, sizeof msg);
        ck_assert_msg(rc == MOE_OK, "'%s': rc %d (%s)", good[i].text, rc, msg);
        ck_assert_msg(bytes == good[i].bytes, "'%s': %lld bytes, expected %lld", good[i].text,
                      (long long)bytes, (long long)good[i].bytes);
        ck_assert_msg(pct == 0.0, "'%s': percent %g", good[i].text, pct);
    }
    int64_t bytes = -1;
    double pct = -1.0;
    char msg[256];
    ck_assert_int_eq(moe_memory_parse_size("50%", &bytes, &pct, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(bytes, 0);
    ck_assert(pct == 50.0);
    ck_assert_int_eq(moe_memory_parse_size("100%", &bytes, &pct, msg, sizeof msg), MOE_OK);
    ck_assert(pct == 100.0);
    ck_assert_int_eq(moe_memory_parse_size("12.5%", &bytes, &pct, msg, sizeof msg), MOE_OK);
    ck_assert(pct == 12.5); /* 12.5 is exact in binary */
    ck_assert_int_eq(bytes, 0);
}
END_TEST

START_TEST(test_parse_size_bad)
{
    static const char *const bad[] = {
        "0",    "-1",  "abc",   "5X",  "",         " 5",  "1e30", "101%",
        "0%",   "-5%", "0K",    "-1G", "nan",      "inf", "5 G",  "5G ",
        "50 %", "5%%", "1e400", "0.4", "4194305T", "G",   "%",    "5GiBs",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int64_t bytes = 99;
        double pct = 99.0;
        char msg[256] = "";
        int rc = moe_memory_parse_size(bad[i], &bytes, &pct, msg, sizeof msg);
        ck_assert_msg(rc == MOE_EUSAGE, "'%s' accepted (%lld bytes, %g%%)", bad[i],
                      (long long)bytes, pct);
        ck_assert_msg(strstr(msg, "--max-memory") != NULL, "'%s': message '%s'", bad[i], msg);
        /* nothing is left set on failure, so a refused value cannot be used by mistake */
        ck_assert_msg(bytes == 0 && pct == 0.0, "'%s': left %lld bytes, %g%%", bad[i],
                      (long long)bytes, pct);
    }
}
END_TEST

/* ---- format ---- */

START_TEST(test_format_hand)
{
    static const struct {
        int64_t bytes;
        const char *text;
    } cases[] = {
        {0, "0 B"},
        {1023, "1023 B"},
        {1024, "1.0 KiB"},
        {1536, "1.5 KiB"},
        {INT64_C(1610612736), "1.5 GiB"},
        {INT64_C(1) << 40, "1.0 TiB"},
        {INT64_C(1) << 62, "4.0 EiB"},
        {MOE_BYTES_MAX, "more than 8 EiB"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char buf[32];
        moe_memory_format(buf, sizeof buf, cases[i].bytes);
        ck_assert_str_eq(buf, cases[i].text);
    }
}
END_TEST

static Suite *memory_suite(void)
{
    Suite *s = suite_create("memory");
    TCase *tc = tcase_create("bytes");
    tcase_add_test(tc, test_bytes_mul_hand);
    tcase_add_test(tc, test_bytes_add_hand);
    tcase_add_test(tc, test_bytes_against_int128);
    suite_add_tcase(s, tc);
    tc = tcase_create("estimate");
    tcase_add_test(tc, test_fixed_hand);
    tcase_add_test(tc, test_fixed_options_hand);
    tcase_add_test(tc, test_fixed_one_rank_hand);
    tcase_add_test(tc, test_fixed_overflow_issue);
    tcase_add_test(tc, test_exchange_hand);
    tcase_add_test(tc, test_exchange_balanced_hand);
    tcase_add_test(tc, test_estimate_property);
    suite_add_tcase(s, tc);
    tc = tcase_create("size");
    tcase_add_test(tc, test_parse_size_good);
    tcase_add_test(tc, test_parse_size_bad);
    tcase_add_test(tc, test_format_hand);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(memory_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
