/* Unit tests of the rank planner (plan.h): hand-worked batches for each routing, policy, scope and
 * placement, per-rank dedup, properties on seeded random batches, and the usage errors. */
#include "moesim/capacity.h"
#include "moesim/error.h"
#include "moesim/plan.h"
#include "moesim/tokens.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"
#include "testrng.h"

/* A plan's rows as the dense (R, R) matrix, R <= 16 here: into one of two buffers, so that two
 * plans can be compared in one expression. */
static const int64_t *dense_rows(const moe_plan *p)
{
    static int64_t buf[2][256];
    static int next;
    int64_t *m = buf[next++ & 1];
    ck_assert(p->R <= 16);
    moe_blocks_to_dense(m, &p->rows, p->R);
    return m;
}

static void expect_i64(const int64_t *got, const int64_t *want, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        EXPECT_MSG(got[i] == want[i], "%s[%d] = %lld, want %lld", what, i, (long long)got[i],
                   (long long)want[i]);
}

static void expect_f64(const double *got, const double *want, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        EXPECT_MSG(fabs(got[i] - want[i]) <= 1e-6, "%s[%d] = %g, want %g", what, i, got[i],
                   want[i]);
}

/* Token choice, global scope, position, cf 1, contiguous, per expert, unpadded. */
static moe_plan_spec spec_of(int R, int64_t N, int E, int k)
{
    return (moe_plan_spec){.R = R, .N = N, .E = E, .k = k, .cf = 1.0, .seed = 7};
}

static void build(moe_plan *p, const moe_plan_spec *sp, const int32_t *expert, const float *gate,
                  const float *sel)
{
    char msg[256] = "";
    int rc = moe_plan_build(p, sp, expert, gate, sel, msg, sizeof msg);
    ck_assert_msg(rc == MOE_OK, "moe_plan_build: %d %s", rc, msg);
}

/* Build, check accepted (E), rows (R x R) and rank_rows (R), each unless NULL, free. */
static void expect_case(const moe_plan_spec *sp, const int32_t *ex, const float *gate,
                        const float *sel, const int64_t *accepted, const int64_t *rows,
                        const double *rank_rows)
{
    moe_plan p;
    build(&p, sp, ex, gate, sel);
    if (accepted != NULL)
        expect_i64(p.accepted, accepted, sp->E, "accepted");
    if (rows != NULL)
        expect_i64(dense_rows(&p), rows, sp->R * sp->R, "rows");
    if (rank_rows != NULL)
        expect_f64(p.rank_rows, rank_rows, sp->R, "rank_rows");
    moe_plan_free(&p);
}

static double overload(const double *x, int n)
{
    double mx = 0, sum = 0;
    for (int i = 0; i < n; i++) {
        sum += x[i];
        mx = x[i] > mx ? x[i] : mx;
    }
    return sum > 0 ? mx / (sum / n) : 0;
}

/* ---- hand cases ---- */

/* N 6, E 4, k 1, R 2, experts {0,0,0,1,2,3}. Tokens 0-2 on rank 0, 3-5 on rank 1; experts 0,1 on
 * rank 0, 2,3 on rank 1. */
static const int32_t k_ex6[] = {0, 0, 0, 1, 2, 3};

START_TEST(test_position_hand)
{
    /* C = ceil(1.0 * 6 * 1 / 4) = ceil(1.5) = 2: expert 0 serves tokens 0 and 1, token 2 drops.
     * rows: src 0: tokens 0,1 -> e0 -> rank 0 (2).  src 1: token 3 -> e1 -> rank 0 (1),
     * tokens 4,5 -> e2,e3 -> rank 1 (2).  rank_rows: rank 0 = e0 2 + e1 1 = 3, rank 1 = 1 + 1 = 2.
     * overload_before: routed per rank {3 + 1, 1 + 1} = {4, 2}, mean 3 -> 4/3. */
    moe_plan_spec sp = spec_of(2, 6, 4, 1);
    moe_plan p;
    build(&p, &sp, k_ex6, NULL, NULL);
    EXPECT_EQ(p.n_groups, 1);
    EXPECT_EQ(p.group_cap[0], 2);
    expect_i64(p.accepted, (int64_t[]){2, 1, 1, 1}, 4, "accepted");
    expect_i64(p.routed, (int64_t[]){3, 1, 1, 1}, 4, "routed");
    expect_i64(p.loads, (int64_t[]){3, 1, 1, 1}, 4, "loads"); /* global: the one group's */
    expect_i64(p.rerouted_in, (int64_t[]){0, 0, 0, 0}, 4, "rerouted_in");
    expect_i64(dense_rows(&p), (int64_t[]){2, 0, 1, 2}, 4, "rows");
    expect_f64(p.rank_rows, (double[]){3, 2}, 2, "rank_rows");
    EXPECT_EQ(p.served, 5);
    EXPECT_EQ(p.reroute_rounds, 0);
    ck_assert_ptr_null(p.importance);
    ck_assert_double_eq_tol(p.overload_before, 4.0 / 3.0, 1e-12);
    moe_plan_free(&p);
    moe_plan_free(&p); /* a zeroed plan frees again */
    /* padded: every slot computes max(C, served) = 2 rows: rank_rows {2 + 2, 2 + 2} */
    sp.pad = true;
    expect_case(&sp, k_ex6, NULL, NULL, NULL, (int64_t[]){2, 0, 1, 2}, (double[]){4, 4});

    /* local scope: groups {0,1,2} and {3,4,5}, C = ceil(1.0 * 3 * 1 / 4) = 1 each. Group 0: e0
     * serves token 0 only (1, 2 drop). Group 1: e1, e2, e3 one each, all served. rows:
     * src 0 -> rank 0: 1; src 1: token 3 -> rank 0 (1), tokens 4, 5 -> rank 1 (2). */
    sp.pad = false;
    sp.scope = MOE_SCOPE_LOCAL;
    build(&p, &sp, k_ex6, NULL, NULL);
    EXPECT_EQ(p.n_groups, 2);
    expect_i64(p.group_cap, (int64_t[]){1, 1}, 2, "group_cap");
    expect_i64(p.accepted, (int64_t[]){1, 1, 1, 1}, 4, "accepted");
    expect_i64(dense_rows(&p), (int64_t[]){1, 0, 1, 2}, 4, "rows");
    expect_f64(p.rank_rows, (double[]){2, 2}, 2, "rank_rows");
    EXPECT_EQ(p.served, 4);
    moe_plan_free(&p);
    /* experts {0,0,0,0,0,3}: globally (C 2) e0 serves tokens 0, 1; locally (C 1 per group) it
     * serves token 0 and, group 1 starting over, token 3. rows local: src 0 -> rank 0: 1;
     * src 1: token 3 -> rank 0 (1), token 5 -> e3 -> rank 1 (1). Global: src 1 only token 5. */
    const int32_t ex[] = {0, 0, 0, 0, 0, 3};
    expect_case(&sp, ex, NULL, NULL, (int64_t[]){2, 0, 0, 1}, (int64_t[]){1, 0, 1, 1}, NULL);
    sp.scope = MOE_SCOPE_GLOBAL;
    expect_case(&sp, ex, NULL, NULL, (int64_t[]){2, 0, 0, 1}, (int64_t[]){2, 0, 0, 1}, NULL);
}
END_TEST

START_TEST(test_per_rank_hand)
{
    /* N 4, E 4, k 2, R 2: tokens 0,1 on rank 0, 2,3 on rank 1; experts 0,1 rank 0, 2,3 rank 1.
     * t0 {0,1}: both rank 0.  t1 {0,2}: ranks 0, 1.  t2 {3,2}: both rank 1.  t3 {1,3}: ranks 0, 1.
     * Dropless per expert: src 0 -> r0: t0 2 + t1 1 = 3, src 0 -> r1: t1 1; src 1 -> r0: t3 1,
     * src 1 -> r1: t2 2 + t3 1 = 3 (sum 8 = served).  Per rank: one row per (token, rank):
     * {t0 + t1, t1, t3, t2 + t3} = {2, 1, 1, 2} (6 distinct pairs). Each expert computes 2. */
    const int32_t ex[] = {0, 1, 0, 2, 3, 2, 1, 3};
    moe_plan_spec sp = spec_of(2, 4, 4, 2);
    sp.cf = 0.0;
    const int64_t two[] = {2, 2, 2, 2};
    expect_case(&sp, ex, NULL, NULL, two, (int64_t[]){3, 1, 1, 3}, (double[]){4, 4});
    sp.per_rank = true;
    expect_case(&sp, ex, NULL, NULL, two, (int64_t[]){2, 1, 1, 2}, (double[]){4, 4});
    /* cf 0.5: C = ceil(0.5 * 4 * 2 / 4) = 1, position in slot order (t0c0, t0c1, t1c0, ...):
     * e0 t0 (t1 drops), e1 t0 (t3 drops), e2 t1 (t2 drops), e3 t2 (t3 drops).
     * Served: t0 {0,1} -> rank 0 once; t1 {2} -> rank 1; t2 {3} -> rank 1; t3 nothing.
     * Per rank {1, 1, 0, 1}; per expert {2, 1, 0, 1}. */
    sp.cf = 0.5;
    const int64_t acc[] = {1, 1, 1, 1};
    expect_case(&sp, ex, NULL, NULL, acc, (int64_t[]){1, 1, 0, 1}, (double[]){2, 2});
    sp.per_rank = false;
    expect_case(&sp, ex, NULL, NULL, acc, (int64_t[]){2, 1, 0, 1}, (double[]){2, 2});
}
END_TEST

START_TEST(test_expert_choice_hand)
{
    /* N 4, E 2, k 1, R 2, cf 1: C = min(ceil(1 * 4 * 1 / 2), 4) = 2 tokens per expert.
     * e0 scores {.9,.5,.5,.2}: t0, then t1 (ties t2, lower token).  e1 {.1,.7,.7,.7}: t1, t2.
     * loads (pairs taken by source): rank 0 (t0, t1): e0 2, e1 1; rank 1 (t2, t3): e0 0, e1 1.
     * rows: src 0 -> rank 0 (e0): 2, src 0 -> rank 1 (t1 e1): 1; src 1 -> rank 1 (t2 e1): 1.
     * importance: e0 .9 + .5 = 1.4, e1 .7 + .7 = 1.4 (gates = scores). */
    const float sel[] = {0.9f, 0.1f, 0.5f, 0.7f, 0.5f, 0.7f, 0.2f, 0.7f};
    moe_plan_spec sp = spec_of(2, 4, 2, 1);
    sp.routing = MOE_ROUTING_EXPERT_CHOICE;
    moe_plan p;
    build(&p, &sp, NULL, sel, sel);
    EXPECT_EQ(p.group_cap[0], 2);
    expect_i64(p.accepted, (int64_t[]){2, 2}, 2, "accepted");
    expect_i64(p.loads, (int64_t[]){2, 2}, 2, "loads"); /* global: rank 0's {2, 1} + rank 1's {0, 1} */
    expect_i64(p.routed, (int64_t[]){2, 2}, 2, "routed");
    expect_i64(dense_rows(&p), (int64_t[]){2, 1, 0, 1}, 4, "rows");
    expect_f64(p.rank_rows, (double[]){2, 2}, 2, "rank_rows");
    ck_assert_ptr_nonnull(p.importance);
    expect_f64(p.importance, (double[]){(double)0.9f + 0.5f, (double)0.7f + 0.7f}, 2, "importance");
    ck_assert_double_eq_tol(p.overload_before, 1.0, 1e-12); /* N per expert, one each rank */
    EXPECT_EQ(p.served, 4);
    moe_plan_free(&p);
    /* no gate: no importance */
    build(&p, &sp, NULL, NULL, sel);
    ck_assert_ptr_null(p.importance);
    moe_plan_free(&p);
    /* R 1, per rank: t1 (taken by both experts, both on rank 0) makes one row: 3 instead of 4 */
    sp.R = 1;
    sp.per_rank = true;
    expect_case(&sp, NULL, sel, sel, (int64_t[]){2, 2}, (int64_t[]){3}, (double[]){4});
    /* local: groups {t0,t1}, {t2,t3}, C = min(ceil(1 * 2 / 2), 2) = 1. Group 0: e0 t0 (.9),
     * e1 t1 (.7). Group 1: e0 t2 (.5 > .2), e1 t2 (.7 tie t3, lower token).
     * rows: src 0: t0 -> r0, t1 -> r1; src 1: t2 -> r0, t2 -> r1. */
    sp.R = 2;
    sp.per_rank = false;
    sp.scope = MOE_SCOPE_LOCAL;
    build(&p, &sp, NULL, sel, sel);
    expect_i64(p.group_cap, (int64_t[]){1, 1}, 2, "local group_cap");
    expect_i64(p.loads, (int64_t[]){1, 1, 1, 1}, 4, "local loads");
    expect_i64(dense_rows(&p), (int64_t[]){1, 1, 1, 1}, 4, "local rows");
    moe_plan_free(&p);
}
END_TEST

START_TEST(test_probs_and_reroute_hand)
{
    /* probs: N 4, E 2, k 1, R 2, C = ceil(4 / 2) = 2, experts {0,0,0,1}, gates {.2,.9,.5,.3}.
     * e0 serves the higher gates t1 (.9) and t2 (.5); t0 drops (position would drop t2).
     * rows: src 0: t1 -> r0 (1); src 1: t2 -> r0 (1), t3 -> e1 -> r1 (1). */
    const int32_t ex[] = {0, 0, 0, 1};
    const float gate[] = {0.2f, 0.9f, 0.5f, 0.3f};
    moe_plan_spec sp = spec_of(2, 4, 2, 1);
    sp.policy = MOE_POLICY_PROBS;
    expect_case(&sp, ex, gate, NULL, (int64_t[]){2, 1}, (int64_t[]){1, 0, 1, 1}, NULL);
    sp.policy = MOE_POLICY_POSITION;
    expect_case(&sp, ex, gate, NULL, (int64_t[]){2, 1}, (int64_t[]){2, 0, 0, 1}, NULL);
    sp.policy = MOE_POLICY_CHOICE; /* k 1: every assignment is a first choice, position order */
    expect_case(&sp, ex, gate, NULL, (int64_t[]){2, 1}, (int64_t[]){2, 0, 0, 1}, NULL);

    /* reroute: N 4, E 3, k 1, R 3 (tokens {t0,t1}, {t2}, {t3}; expert r on rank r), cf 0.75:
     * C = ceil(0.75 * 4 / 3) = 1. All choose e0. Round 0: e0 serves t0; room e1 1, e2 1.
     * Round 1: t1 {.6,.3,.1} -> e1, t2 {.5,.35,.15} -> e1, t3 {.1,.8,.1} -> e1: e1 serves t1.
     * Round 2: room e2 only: t2, t3 -> e2, serves t2. Round 3: t3 finds no room, no proposal.
     * accepted {1,1,1}, rerouted_in {0,1,1}, 2 rounds. loads count the router's choice (e0).
     * rows: src 0: t0 -> r0, t1 -> r1; src 1: t2 -> r2; src 2: nothing. */
    const int32_t ex0[] = {0, 0, 0, 0};
    const float sel[] = {0.9f, 0.05f, 0.05f, 0.6f, 0.3f, 0.1f,
                         0.5f, 0.35f, 0.15f, 0.1f, 0.8f, 0.1f};
    sp = spec_of(3, 4, 3, 1);
    sp.cf = 0.75;
    sp.policy = MOE_POLICY_REROUTE;
    moe_plan p;
    build(&p, &sp, ex0, NULL, sel);
    EXPECT_EQ(p.group_cap[0], 1);
    expect_i64(p.accepted, (int64_t[]){1, 1, 1}, 3, "reroute accepted");
    expect_i64(p.rerouted_in, (int64_t[]){0, 1, 1}, 3, "rerouted_in");
    expect_i64(p.routed, (int64_t[]){4, 0, 0}, 3, "routed");
    expect_i64(p.loads, (int64_t[]){4, 0, 0}, 3, "loads"); /* global: one group */
    expect_i64(dense_rows(&p), (int64_t[]){1, 1, 0, 0, 0, 1, 0, 0, 0}, 9, "reroute rows");
    expect_f64(p.rank_rows, (double[]){1, 1, 1}, 3, "rank_rows");
    EXPECT_EQ(p.served, 3);
    EXPECT_EQ(p.reroute_rounds, 2);
    moe_plan_free(&p);
}
END_TEST

START_TEST(test_placement_hand)
{
    /* N 6, E 4, k 1, R 2, C 2, experts {1,1,1,0,2,3}: e1 serves t0, t1; t2 drops.
     * contiguous (r0 {0,1}, r1 {2,3}): src 0 -> r0 2; src 1: t3 -> r0, t4, t5 -> r1.
     * strided (r0 {0,2}, r1 {1,3}): src 0: t0, t1 -> r1 (2); src 1: t3 e0 -> r0, t4 e2 -> r0,
     * t5 e3 -> r1.  rank_rows contiguous {1 + 2, 1 + 1}, strided {1 + 1, 2 + 1}. */
    const int32_t ex[] = {1, 1, 1, 0, 2, 3};
    moe_plan_spec sp = spec_of(2, 6, 4, 1);
    const int64_t acc[] = {1, 2, 1, 1};
    expect_case(&sp, ex, NULL, NULL, acc, (int64_t[]){2, 0, 1, 2}, (double[]){3, 2});
    sp.placement = MOE_PLACE_STRIDED;
    expect_case(&sp, ex, NULL, NULL, acc, (int64_t[]){0, 2, 2, 1}, (double[]){2, 3});

    /* EPLB, hot expert: N 8, E 4, R 2, redundant 2, dropless, experts {0,0,0,0,0,1,2,3}: loads
     * {5,1,1,1}. Replicate: e0 -> 2.5 -> 5/3 (3 replicas). Pack physical {e0, e1, e2, e3, e0',
     * e0''} weights {5/3,1,1,1,5/3,5/3}, order 0, 4, 5, 1, 2, 3: 0 -> r0, 4 -> r1, 5 -> r0 (tie),
     * 1 -> r1, 2 -> r1 (2.67 < 3.33; now full), 3 -> r0. e0 replicas j0 r0, j1 r1, j2 r0.
     * t -> replica t mod 3: t0 r0, t1 r1, t2 r0, t3 r0, t4 r1; t5 e1 r1, t6 e2 r1, t7 e3 r0.
     * rows: src 0 (t0-3) {3, 1}, src 1 (t4-7) {1, 3}.  rank_rows: r0 = e0j0 (t0, t3) 2 + e0j2 1
     * + e3 1 = 4; r1 = e0j1 (t1, t4) 2 + e1 1 + e2 1 = 4: overload 1. Contiguous {6, 2}: 1.5. */
    const int32_t hot[] = {0, 0, 0, 0, 0, 1, 2, 3};
    sp = spec_of(2, 8, 4, 1);
    sp.cf = 0.0;
    moe_plan p;
    build(&p, &sp, hot, NULL, NULL);
    expect_f64(p.rank_rows, (double[]){6, 2}, 2, "contiguous hot rank_rows");
    double over_contig = overload(p.rank_rows, 2);
    ck_assert_double_eq_tol(over_contig, 1.5, 1e-12);
    moe_plan_free(&p);
    sp.placement = MOE_PLACE_EPLB;
    sp.redundant = 2;
    build(&p, &sp, hot, NULL, NULL);
    EXPECT_EQ(p.map.P, 6);
    EXPECT_EQ(p.map.replicas[0], 3);
    for (int j = 0; j < 3; j++)
        EXPECT_EQ(p.map.rank[p.map.replica_slot[p.map.replica_start[0] + j]], j == 1 ? 1 : 0);
    expect_i64(p.accepted, (int64_t[]){5, 1, 1, 1}, 4, "eplb accepted");
    expect_i64(dense_rows(&p), (int64_t[]){3, 1, 1, 3}, 4, "eplb rows");
    expect_f64(p.rank_rows, (double[]){4, 4}, 2, "eplb rank_rows");
    ck_assert(overload(p.rank_rows, 2) <= over_contig);
    ck_assert_double_eq_tol(p.overload_before, 1.5, 1e-12);
    moe_plan_free(&p);
    /* the same map (planned from the routing, before capacity) with cf 1: C = ceil(8 / 4) = 2,
     * e0 serves t0 (j0, r0) and t1 (j1, r1); t2-t4 drop. rows: src 0 {1, 1}, src 1 t5, t6 -> r1,
     * t7 -> r0: {1, 2}. Padded, a replica computes max(ceil(C / replicas), served): e0's three
     * ceil(2 / 3) = 1 each, e1-e3 2 each: r0 = e0j0 1 + e0j2 1 + e3 2 = 4, r1 = 1 + 2 + 2 = 5. */
    sp.cf = 1.0;
    sp.pad = true;
    expect_case(&sp, hot, NULL, NULL, (int64_t[]){2, 1, 1, 1}, (int64_t[]){1, 1, 1, 2},
                (double[]){4, 5});
    /* probs with gates {.9,.1,.1,.8,...}: e0 serves t0 and t3, both replica 0 (r0), more than
     * ceil(2 / 3): padded r0 = e0j0 2 + e0j2 1 + e3 2 = 5, r1 = e0j1 1 + 2 + 2 = 5. */
    const float g[] = {0.9f, 0.1f, 0.1f, 0.8f, 0.1f, 0.5f, 0.5f, 0.5f};
    sp.policy = MOE_POLICY_PROBS;
    expect_case(&sp, hot, g, NULL, (int64_t[]){2, 1, 1, 1}, (int64_t[]){2, 0, 1, 2},
                (double[]){5, 5});
}
END_TEST

/* ---- properties on random batches ---- */

enum { NMAX = 64, EMAX = 8 };
static int32_t g_ex[NMAX * 3];
static float g_gate[NMAX * EMAX], g_sel[NMAX * EMAX];

/* Rows per (src, dst) of the served assignments given by flag (N * k), per expert or per rank. */
static void brute_rows(int64_t *rows, const moe_plan *p, const uint8_t *flag, int64_t N, int k,
                       bool per_rank)
{
    int R = p->R;
    memset(rows, 0, (size_t)R * R * sizeof *rows);
    for (int64_t t = 0; t < N; t++) {
        int src = moe_partition_owner(N, R, t);
        uint8_t hit[8] = {0};
        for (int c = 0; c < k; c++) {
            if (!flag[t * k + c])
                continue;
            int dst = p->map.rank[moe_expert_map_slot(&p->map, t, g_ex[t * k + c])];
            if (!per_rank || !hit[dst])
                rows[src * R + dst]++;
            hit[dst] = 1;
        }
    }
}

/* Plan sp per expert (p) and per rank (q), check what must hold, and put the decision (accepted,
 * rerouted_in, served) in got. */
static void check_plan(moe_plan_spec sp, int64_t *got)
{
    bool ec = sp.routing == MOE_ROUTING_EXPERT_CHOICE;
    int R = sp.R, E = sp.E, k = sp.k, A = ec ? E : k;
    int64_t N = sp.N, acc = 0, sum_p = 0, sum_q = 0;
    double sum_rr = 0;
    moe_plan p, q;
    build(&p, &sp, ec ? NULL : g_ex, g_gate, g_sel);
    sp.per_rank = true;
    build(&q, &sp, ec ? NULL : g_ex, g_gate, g_sel);
    int64_t cap = moe_capacity_sum(p.group_cap, p.n_groups);
    int64_t p_rows[256], q_rows[256];
    memcpy(p_rows, dense_rows(&p), sizeof p_rows);
    memcpy(q_rows, dense_rows(&q), sizeof q_rows);
    EXPECT_EQ(p.n_groups, sp.scope == MOE_SCOPE_GLOBAL ? 1 : R);
    for (int g = 0; g < p.n_groups; g++) {
        int64_t f = 0, n = N;
        if (p.n_groups > 1)
            moe_partition(N, R, g, &f, &n);
        int64_t c = moe_group_capacity(sp.cf, n, k, E, sp.min_capacity);
        EXPECT_EQ(p.group_cap[g], ec && c != MOE_CAPACITY_UNLIMITED && c > n ? n : c);
    }
    for (int e = 0; e < E; e++) {
        int64_t routed = 0;
        acc += p.accepted[e];
        EXPECT_EQ(q.accepted[e], p.accepted[e]);
        EXPECT(p.rerouted_in[e] <= p.accepted[e]);
        EXPECT(sp.policy == MOE_POLICY_REROUTE || p.rerouted_in[e] == 0);
        EXPECT(cap == MOE_CAPACITY_UNLIMITED || p.accepted[e] <= cap);
        if (ec) /* every group holds at least its capacity: an expert takes all of it */
            EXPECT_EQ(p.accepted[e], cap == MOE_CAPACITY_UNLIMITED ? N : cap);
        for (int g = 0; g < p.n_groups; g++) /* one row of loads per capacity group */
            routed += p.loads[g * E + e];
        EXPECT_EQ(p.routed[e], routed);
    }
    EXPECT_EQ(acc, p.served);
    for (int r = 0; r < R; r++) {
        int64_t first, count, row = 0, load = 0;
        moe_partition(N, R, r, &first, &count);
        for (int d = 0; d < R; d++) {
            EXPECT(q_rows[r * R + d] <= p_rows[r * R + d]);
            EXPECT(q_rows[r * R + d] <= count);
            row += p_rows[r * R + d];
            sum_q += q_rows[r * R + d];
        }
        for (int e = 0; p.n_groups == R && e < E; e++) { /* local scope: a group a source */
            load += p.loads[r * E + e];
            int64_t lwant = 0; /* token choice: source r's tokens' choices, before capacity */
            for (int64_t i = first * k; !ec && i < (first + count) * k; i++)
                lwant += g_ex[i] == e;
            EXPECT(ec || p.loads[r * E + e] == lwant);
        }
        /* expert choice: the pairs taken */
        EXPECT(p.n_groups != R || (ec ? row == load : load == count * k));
        EXPECT(row <= count * A);
        EXPECT(ec || sp.cf != 0.0 || row == count * k);
        sum_p += row;
        sum_rr += p.rank_rows[r];
    }
    EXPECT_EQ(sum_p, p.served);
    EXPECT(sum_q <= p.served);
    EXPECT(sp.pad ? sum_rr >= (double)p.served : sum_rr == (double)p.served);
    if (sp.pad && sp.placement != MOE_PLACE_EPLB && cap != MOE_CAPACITY_UNLIMITED)
        EXPECT(sum_rr == (double)E * (double)cap); /* one slot per expert, each computes C */
    /* brute force: dropless token choice (everything served), or position, decided here by the
     * serial reference group by group */
    if (!ec && (sp.cf == 0.0 || sp.policy == MOE_POLICY_POSITION)) {
        uint8_t flag[NMAX * 3];
        int64_t load[EMAX], want[25];
        for (int g = 0; g < p.n_groups; g++) {
            int64_t f = 0, n = N;
            if (p.n_groups > 1)
                moe_partition(N, R, g, &f, &n);
            moe_overflow_position_ref(flag + f * k, g_ex + f * k, n, k, E, p.group_cap[g], load);
        }
        brute_rows(want, &p, flag, N, k, false);
        expect_i64(dense_rows(&p), want, R * R, "rows");
        brute_rows(want, &q, flag, N, k, true);
        expect_i64(dense_rows(&q), want, R * R, "per-rank rows");
    }
    if (!ec && k == 1)
        expect_i64(dense_rows(&q), dense_rows(&p), R * R, "k 1 per-rank rows");
    memcpy(got, p.accepted, (size_t)E * sizeof *got);
    memcpy(got + E, p.rerouted_in, (size_t)E * sizeof *got);
    got[2 * E] = p.served;
    moe_plan_free(&p);
    moe_plan_free(&q);
}

START_TEST(test_properties_random)
{
    static const double cfs[] = {0.0, 0.5, 1.0, 1.5};
    for (uint64_t seed = 1; seed <= 60; seed++) {
        g_state = seed;
        int E = 1 + next_int(EMAX), k = 1 + next_int(E < 3 ? E : 3), Rmax = E < 5 ? E : 5;
        int64_t N = next_int(NMAX + 1);
        for (int64_t t = 0; t < N; t++) { /* k distinct experts; expert 0 hot */
            int perm[EMAX];
            for (int e = 0; e < E; e++)
                perm[e] = e;
            for (int c = 0; c < k; c++) {
                int j = c == 0 && next_int(2) ? 0 : c + next_int(E - c), tmp = perm[c];
                perm[c] = perm[j];
                perm[j] = tmp;
                g_ex[t * k + c] = perm[c];
            }
        }
        for (int64_t i = 0; i < N * E; i++) {
            g_gate[i] = (float)next_unit();
            g_sel[i] = (float)next_unit();
        }
        for (int variant = 0; variant < 6; variant++) /* the five policies, then expert choice */
            for (int ci = 0; ci < 4; ci++)
                for (int scope = 0; scope < 2; scope++) {
                    int64_t min_cap = next_int(2), ref1[2 * EMAX + 1], refR[2 * EMAX + 1];
                    int64_t got[2 * EMAX + 1];
                    for (int R = 1; R <= Rmax; R++)
                        for (int place = 0; place < 3; place++) {
                            moe_plan_spec sp = {
                                .R = R, .N = N, .E = E, .k = k, .seed = seed, .cf = cfs[ci],
                                .routing = (moe_routing)(variant == 5),
                                .policy = variant == 5 ? 0 : (moe_policy)variant,
                                .scope = (moe_scope)scope, .min_capacity = min_cap,
                                .pad = next_int(2), .placement = (moe_place_kind)place};
                            if (place == MOE_PLACE_EPLB) /* E + redundant a multiple of R */
                                sp.redundant = (R - E % R) % R + (next_int(2) ? R : 0);
                            check_plan(sp, got);
                            /* the decision depends on neither the placement nor, in global
                             * scope, R: against R 1 (global) or contiguous at this R (local) */
                            if (R == 1 && place == 0)
                                memcpy(ref1, got, sizeof got);
                            if (place == 0)
                                memcpy(refR, got, sizeof got);
                            expect_i64(got, scope == MOE_SCOPE_GLOBAL ? ref1 : refR, 2 * E + 1,
                                       "decision vs reference");
                        }
                }
    }
}
END_TEST

/* ---- errors ---- */

START_TEST(test_errors)
{
    const int32_t ex[] = {0, 1, 2, 3};
    moe_plan p, zero;
    memset(&zero, 0, sizeof zero);
    char msg[256];
    struct { int R; int64_t N; moe_place_kind place; int redundant; } bad[] = {
        {5, 4, MOE_PLACE_CONTIGUOUS, 0}, /* R > E */
        {0, 4, MOE_PLACE_CONTIGUOUS, 0}, /* R < 1 */
        {2, -1, MOE_PLACE_CONTIGUOUS, 0}, /* N < 0 */
        {3, 4, MOE_PLACE_EPLB, 0},        /* (E + redundant) % R != 0 */
        {2, 4, MOE_PLACE_STRIDED, 2},     /* replicas need eplb */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        moe_plan_spec sp = spec_of(bad[i].R, bad[i].N, 4, 1);
        sp.placement = bad[i].place;
        sp.redundant = bad[i].redundant;
        memset(&p, 0xab, sizeof p);
        msg[0] = '\0';
        EXPECT_MSG(moe_plan_build(&p, &sp, ex, NULL, NULL, msg, sizeof msg) == MOE_EUSAGE,
                   "case %zu", i);
        EXPECT_MSG(memcmp(&p, &zero, sizeof p) == 0, "case %zu: plan not zeroed", i);
        EXPECT_MSG(msg[0] != '\0', "case %zu: no message", i);
        moe_plan_free(&p);
    }
    /* fewer tokens than ranks is allowed (plan.h: ranks may hold no token): N 1 over R 2 puts
     * t0 on rank 0 and nothing on rank 1; C = ceil(1 * 1 / 4) = 1; N 0 serves nothing. */
    moe_plan_spec sp = spec_of(2, 1, 4, 1);
    build(&p, &sp, (const int32_t[]){3}, NULL, NULL);
    expect_i64(dense_rows(&p), (int64_t[]){0, 1, 0, 0}, 4, "rows N 1");
    expect_i64(p.loads, (int64_t[]){0, 0, 0, 1}, 4, "loads N 1"); /* global: one group */
    moe_plan_free(&p);
    sp.N = 0;
    sp.scope = MOE_SCOPE_LOCAL;
    expect_case(&sp, ex, NULL, NULL, (int64_t[]){0, 0, 0, 0}, (int64_t[]){0, 0, 0, 0},
                (double[]){0, 0}); /* a real array: plan.c memcpys from expert even when empty */
}
END_TEST

static Suite *plan_suite(void)
{
    Suite *s = suite_create("plan");
    TCase *tc = tcase_create("hand");
    tcase_add_test(tc, test_position_hand);
    tcase_add_test(tc, test_per_rank_hand);
    tcase_add_test(tc, test_expert_choice_hand);
    tcase_add_test(tc, test_probs_and_reroute_hand);
    tcase_add_test(tc, test_placement_hand);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("properties");
    tcase_add_test(tc, test_properties_random);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(plan_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
