/* Unit tests of topology: locality classes, traffic accounting by class, placement from hwloc
 * (synthetic descriptions, an XML export, the real binding) and the placement warnings. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_* */
#endif
#include "moesim/error.h"
#include "moesim/topology.h"

#include <check.h>
#include <hwloc.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "expect.h"

enum { N_LOC = MOE_LOC_COUNT };

#include "testrng.h"

/* A placement written by hand: only the fields classification and warnings read. */
static moe_placement place(int rank, int node, int package, int numa)
{
    moe_placement p;
    memset(&p, 0, sizeof p);
    p.rank = rank;
    p.node = node;
    p.package = package;
    p.numa = numa;
    p.core_first = -1;
    p.bound = true;
    snprintf(p.host, sizeof p.host, "host%d", node);
    return p;
}

/* ------------------------------------------------------------------ classes */

START_TEST(test_locality_names)
{
    ck_assert_str_eq(moe_locality_name(MOE_LOC_SAME_RANK), "same_rank");
    ck_assert_str_eq(moe_locality_name(MOE_LOC_SAME_NUMA), "same_numa");
    ck_assert_str_eq(moe_locality_name(MOE_LOC_SAME_PACKAGE), "same_package");
    ck_assert_str_eq(moe_locality_name(MOE_LOC_SAME_NODE), "same_node");
    ck_assert_str_eq(moe_locality_name(MOE_LOC_OTHER_NODE), "other_node");
    ck_assert_int_eq(MOE_LOC_COUNT, 5);
    /* closest first, as the header and docs/topology.md order them */
    ck_assert(MOE_LOC_SAME_RANK < MOE_LOC_SAME_NUMA && MOE_LOC_SAME_NUMA < MOE_LOC_SAME_PACKAGE &&
              MOE_LOC_SAME_PACKAGE < MOE_LOC_SAME_NODE && MOE_LOC_SAME_NODE < MOE_LOC_OTHER_NODE);
    ck_assert_str_eq(moe_locality_name(-1), "?");
    ck_assert_str_eq(moe_locality_name(MOE_LOC_COUNT), "?");
}
END_TEST

/* Eight ranks covering every rule of moe_locality_of, (node, package, numa):
 *   r0 (0, 0, 0)   r1 (0, 0, 0)   r2 (0, 0, 1)   r3 (0, 1, 2)
 *   r4 (0,-1,-1)   r5 (1, 0, 0)   r6 (0, 0,-1)   r7 (0,-1,-1)
 * r5 has the indices of r0 but another node; r4 and r7 both have -1 (unknown), which must not
 * count as equal; r6 knows its package but not its NUMA node. */
static void eight(moe_placement *p)
{
    static const int npn[8][3] = {{0, 0, 0}, {0, 0, 0},  {0, 0, 1}, {0, 1, 2},
                                  {0, -1, -1}, {1, 0, 0}, {0, 0, -1}, {0, -1, -1}};
    for (int r = 0; r < 8; r++)
        p[r] = place(r, npn[r][0], npn[r][1], npn[r][2]);
}

/* The class of every ordered pair, worked out by hand from the rules (R same rank, N same NUMA,
 * P same package, D same node, O other node). Row = source, column = destination. */
static const char *const eight_classes[8] = {
    "RNPDDOPD", /* r0: r1 shares NUMA 0; r2 only package 0; r3 package 1; r6 package 0 */
    "NRPDDOPD", /* r1: as r0 */
    "PPRDDOPD", /* r2: NUMA 1 alone; package 0 with r0, r1, r6 */
    "DDDRDODD", /* r3: package 1 alone */
    "DDDDRODD", /* r4: nothing known: same node only, also with r7 (-1 is not a match) */
    "OOOOOROO", /* r5: the other node, whatever its indices */
    "PPPDDORD", /* r6: NUMA unknown, package 0 */
    "DDDDDODR", /* r7: as r4 */
};

static moe_locality class_of_letter(char c)
{
    switch (c) {
    case 'R': return MOE_LOC_SAME_RANK;
    case 'N': return MOE_LOC_SAME_NUMA;
    case 'P': return MOE_LOC_SAME_PACKAGE;
    case 'D': return MOE_LOC_SAME_NODE;
    default: return MOE_LOC_OTHER_NODE;
    }
}

START_TEST(test_locality_of_precedence)
{
    moe_placement p[8];
    eight(p);
    for (int a = 0; a < 8; a++)
        for (int b = 0; b < 8; b++) {
            moe_locality want = class_of_letter(eight_classes[a][b]), got = moe_locality_of(&p[a], &p[b]);
            EXPECT_MSG(got == want, "rank %d -> %d: %s, expected %s", a, b, moe_locality_name((int)got),
                       moe_locality_name((int)want));
        }
    /* Precedence, one rule at a time on a pair that satisfies several. */
    moe_placement x = place(3, 0, 0, 0), y = x;
    ck_assert_int_eq(moe_locality_of(&x, &y), MOE_LOC_SAME_RANK); /* same rank beats all */
    y.node = 1;
    ck_assert_int_eq(moe_locality_of(&x, &y), MOE_LOC_SAME_RANK); /* even with another node */
    y = x;
    y.rank = 4;
    ck_assert_int_eq(moe_locality_of(&x, &y), MOE_LOC_SAME_NUMA);
    y.node = 7;
    ck_assert_int_eq(moe_locality_of(&x, &y), MOE_LOC_OTHER_NODE); /* node beats NUMA */
    y.node = 0;
    y.numa = 1;
    ck_assert_int_eq(moe_locality_of(&x, &y), MOE_LOC_SAME_PACKAGE);
    y.package = 1;
    ck_assert_int_eq(moe_locality_of(&x, &y), MOE_LOC_SAME_NODE);
    /* equal NUMA indices win even when the packages are unknown on one side */
    y = x;
    y.rank = 4;
    y.package = -1;
    ck_assert_int_eq(moe_locality_of(&x, &y), MOE_LOC_SAME_NUMA);
}
END_TEST

/* ------------------------------------------------------------------ traffic by class */

/* A sparse byte matrix over the eight ranks above, [src][dst]:
 *   (0,0)=100 R   (4,4)=5 R     (5,5)=300 R                      same_rank     405 B, 3 messages
 *   (0,1)=10 N    (1,0)=20 N                                      same_numa      30 B, 2
 *   (0,2)=30 P    (6,1)=40 P    (2,6)=50 P                        same_package  120 B, 3
 *   (0,3)=60 D    (4,7)=70 D    (7,4)=80 D   (3,6)=90 D           same_node     300 B, 4
 *   (0,5)=1000 O  (5,3)=2000 O                                    other_node   3000 B, 2
 * Zeros are not messages. Per source rank:
 *   r0: R 100/1, N 10/1, P 30/1, D 60/1, O 1000/1    r1: N 20/1     r2: P 50/1    r3: D 90/1
 *   r4: R 5/1, D 70/1     r5: R 300/1, O 2000/1      r6: P 40/1     r7: D 80/1 */
static void eight_bytes(int64_t *b)
{
    memset(b, 0, 64 * sizeof *b);
    b[0 * 8 + 0] = 100;
    b[4 * 8 + 4] = 5;
    b[5 * 8 + 5] = 300;
    b[0 * 8 + 1] = 10;
    b[1 * 8 + 0] = 20;
    b[0 * 8 + 2] = 30;
    b[6 * 8 + 1] = 40;
    b[2 * 8 + 6] = 50;
    b[0 * 8 + 3] = 60;
    b[4 * 8 + 7] = 70;
    b[7 * 8 + 4] = 80;
    b[3 * 8 + 6] = 90;
    b[0 * 8 + 5] = 1000;
    b[5 * 8 + 3] = 2000;
}

START_TEST(test_traffic_by_class_hand)
{
    moe_placement p[8];
    eight(p);
    int64_t b[64];
    eight_bytes(b);
    static const int64_t want_bytes[N_LOC] = {405, 30, 120, 300, 3000};
    static const int64_t want_msgs[N_LOC] = {3, 2, 3, 4, 2};
    /* per source rank, bytes then messages, in class order R N P D O */
    static const int64_t want_rank[8][2][N_LOC] = {
        {{100, 10, 30, 60, 1000}, {1, 1, 1, 1, 1}},
        {{0, 20, 0, 0, 0}, {0, 1, 0, 0, 0}},
        {{0, 0, 50, 0, 0}, {0, 0, 1, 0, 0}},
        {{0, 0, 0, 90, 0}, {0, 0, 0, 1, 0}},
        {{5, 0, 0, 70, 0}, {1, 0, 0, 1, 0}},
        {{300, 0, 0, 0, 2000}, {1, 0, 0, 0, 1}},
        {{0, 0, 40, 0, 0}, {0, 0, 1, 0, 0}},
        {{0, 0, 0, 80, 0}, {0, 0, 0, 1, 0}},
    };
    moe_class_traffic out[N_LOC], per_rank[8 * N_LOC];
    memset(out, 0, sizeof out);
    memset(per_rank, 0, sizeof per_rank);
    moe_traffic_by_class(out, per_rank, b, p, 8);
    for (int c = 0; c < N_LOC; c++) {
        EXPECT_MSG(out[c].bytes == want_bytes[c] && out[c].messages == want_msgs[c],
                   "%s: %lld B / %lld msgs, expected %lld / %lld", moe_locality_name(c),
                   (long long)out[c].bytes, (long long)out[c].messages, (long long)want_bytes[c],
                   (long long)want_msgs[c]);
        for (int r = 0; r < 8; r++) {
            const moe_class_traffic *t = &per_rank[r * N_LOC + c];
            EXPECT_MSG(t->bytes == want_rank[r][0][c] && t->messages == want_rank[r][1][c],
                       "rank %d %s: %lld B / %lld msgs, expected %lld / %lld", r,
                       moe_locality_name(c), (long long)t->bytes, (long long)t->messages,
                       (long long)want_rank[r][0][c], (long long)want_rank[r][1][c]);
        }
    }
    /* out is added to, not cleared; per_rank may be NULL */
    moe_traffic_by_class(out, NULL, b, p, 8);
    for (int c = 0; c < N_LOC; c++)
        EXPECT(out[c].bytes == 2 * want_bytes[c] && out[c].messages == 2 * want_msgs[c]);
    /* the transpose (the combine direction) has the same totals: every class here is symmetric */
    int64_t t[64];
    for (int s = 0; s < 8; s++)
        for (int d = 0; d < 8; d++)
            t[d * 8 + s] = b[s * 8 + d];
    memset(out, 0, sizeof out);
    moe_traffic_by_class(out, NULL, t, p, 8);
    for (int c = 0; c < N_LOC; c++)
        EXPECT(out[c].bytes == want_bytes[c] && out[c].messages == want_msgs[c]);
}
END_TEST

START_TEST(test_traffic_by_class_random)
{
    /* Property on seeded random placements and matrices: every nonzero entry lands in exactly the
     * class of its pair (the hand-written letters of eight_classes are not reused: here the class
     * of a pair is recomputed from moe_locality_of, and the totals and per-rank split must agree
     * with it entry by entry). */
    g_state = 42;
    for (int trial = 0; trial < 300; trial++) {
        int R = 1 + next_int(12);
        moe_placement p[12];
        for (int r = 0; r < R; r++)
            p[r] = place(r, next_int(3), next_int(3) - 1, next_int(4) - 1);
        int64_t b[144];
        moe_class_traffic want[N_LOC] = {{0, 0}}, want_rank[12 * N_LOC];
        memset(want_rank, 0, sizeof want_rank);
        int64_t total = 0, nonzero = 0;
        for (int s = 0; s < R; s++)
            for (int d = 0; d < R; d++) {
                int64_t v = next_int(3) == 0 ? 0 : (int64_t)(next_u64() % 100000);
                b[s * R + d] = v;
                total += v;
                nonzero += v > 0;
                if (v > 0) {
                    int c = (int)moe_locality_of(&p[s], &p[d]);
                    EXPECT(c == MOE_LOC_SAME_RANK ? s == d
                                                  : c == MOE_LOC_OTHER_NODE ? p[s].node != p[d].node
                                                                            : p[s].node == p[d].node);
                    want[c].bytes += v;
                    want[c].messages++;
                    want_rank[s * N_LOC + c].bytes += v;
                    want_rank[s * N_LOC + c].messages++;
                }
            }
        moe_class_traffic out[N_LOC], per_rank[12 * N_LOC];
        memset(out, 0, sizeof out);
        memset(per_rank, 0, sizeof per_rank);
        moe_traffic_by_class(out, per_rank, b, p, R);
        int64_t sum_b = 0, sum_m = 0;
        for (int c = 0; c < N_LOC; c++) {
            EXPECT_MSG(out[c].bytes == want[c].bytes && out[c].messages == want[c].messages,
                       "trial %d %s", trial, moe_locality_name(c));
            sum_b += out[c].bytes;
            sum_m += out[c].messages;
            int64_t rb = 0, rm = 0;
            for (int r = 0; r < R; r++) {
                EXPECT(per_rank[r * N_LOC + c].bytes == want_rank[r * N_LOC + c].bytes &&
                       per_rank[r * N_LOC + c].messages == want_rank[r * N_LOC + c].messages);
                rb += per_rank[r * N_LOC + c].bytes;
                rm += per_rank[r * N_LOC + c].messages;
            }
            EXPECT(rb == out[c].bytes && rm == out[c].messages); /* per rank sums to the total */
        }
        EXPECT_EQ(sum_b, total);
        EXPECT_EQ(sum_m, nonzero);
    }
}
END_TEST

/* ------------------------------------------------------------------ describe */

static void describe_ok(moe_placement *p, const char *spec, int local_rank)
{
    char msg[512] = "";
    int rc = moe_topology_describe(p, spec, local_rank, msg, sizeof msg);
    EXPECT_MSG(rc == MOE_OK, "describe('%s', %d) = %d: %s", spec ? spec : "(real)", local_rank, rc, msg);
}

START_TEST(test_describe_two_sockets)
{
    /* 2 packages x 2 NUMA nodes x 4 cores x 1 PU: 16 cores, core c in package c / 8 and NUMA
     * node c / 4 (lstopo --input "package:2 numa:2 core:4 pu:1"). Local rank i is placed on core
     * i mod 16, PU i mod 16, as mpirun --map-by core --bind-to core would. */
    char host[64] = "";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    for (int i = 0; i < 40; i++) {
        moe_placement p;
        describe_ok(&p, "package:2 numa:2 core:4 pu:1", i);
        int c = i % 16;
        char cpuset[16];
        snprintf(cpuset, sizeof cpuset, "%d", c);
        EXPECT_MSG(p.package == c / 8 && p.numa == c / 4, "local rank %d: package %d numa %d", i,
                   p.package, p.numa);
        EXPECT_MSG(p.core_first == c && p.cores == 1 && p.core_mask == UINT64_C(1) << c,
                   "local rank %d: core_first %d cores %d mask %#llx", i, p.core_first, p.cores,
                   (unsigned long long)p.core_mask);
        EXPECT_MSG(p.bound, "local rank %d: not bound", i);
        EXPECT_MSG(strcmp(p.cpuset, cpuset) == 0, "local rank %d: cpuset '%s'", i, p.cpuset);
        EXPECT_MSG(strcmp(p.host, host) == 0, "host '%s', expected '%s'", p.host, host);
    }
}
END_TEST

START_TEST(test_describe_many_matches_one)
{
    /* one load for a node's ranks: each entry equals the one-process description of the same
     * local rank (loaded topology), and a pid entry equals describing that process itself (the
     * real machine: this process's pid twice, and 0 for "this process") */
    int lr[5] = {3, 0, 17, 9, 3};
    moe_placement many[5], one;
    char msg[256] = "";
    EXPECT(moe_topology_describe_many(many, 5, NULL, lr, "package:2 numa:2 core:4 pu:1", msg,
                                      sizeof msg) == MOE_OK);
    for (int i = 0; i < 5; i++) {
        describe_ok(&one, "package:2 numa:2 core:4 pu:1", lr[i]);
        EXPECT_MSG(memcmp(&one, &many[i], sizeof one) == 0, "entry %d (local rank %d) differs", i,
                   lr[i]);
    }
    int pids[3] = {0, (int)getpid(), (int)getpid()};
    EXPECT(moe_topology_describe_many(many, 3, pids, NULL, NULL, msg, sizeof msg) == MOE_OK);
    describe_ok(&one, NULL, 0);
    for (int i = 0; i < 3; i++)
        EXPECT_MSG(memcmp(&one, &many[i], sizeof one) == 0, "pid entry %d differs: cpuset '%s'", i,
                   many[i].cpuset);
    EXPECT(moe_topology_describe_many(many, 2, NULL, NULL, "bogus:3", msg, sizeof msg) ==
           MOE_EUSAGE);
}
END_TEST

START_TEST(test_describe_small_layouts)
{
    /* 1 package, 2 cores of 2 PUs (hyper-threads): core i mod 2 is PUs 2c and 2c+1; hwloc adds
     * the one NUMA node. */
    for (int i = 0; i < 5; i++) {
        moe_placement p;
        describe_ok(&p, "package:1 core:2 pu:2", i);
        int c = i % 2;
        char cpuset[16];
        snprintf(cpuset, sizeof cpuset, "%d-%d", 2 * c, 2 * c + 1);
        EXPECT_MSG(p.package == 0 && p.numa == 0 && p.core_first == c && p.cores == 1 &&
                       p.core_mask == UINT64_C(1) << c && p.bound,
                   "package:1 core:2 pu:2, local rank %d: package %d numa %d core %d x%d", i,
                   p.package, p.numa, p.core_first, p.cores);
        EXPECT_MSG(strcmp(p.cpuset, cpuset) == 0, "local rank %d: cpuset '%s', expected '%s'", i,
                   p.cpuset, cpuset);
    }
    /* NUMA above packages: 2 NUMA nodes of 2 packages of 2 cores; core c: NUMA c / 4, package
     * c / 2. */
    for (int i = 0; i < 8; i++) {
        moe_placement p;
        describe_ok(&p, "numa:2 package:2 core:2 pu:1", i);
        EXPECT_MSG(p.numa == i / 4 && p.package == i / 2 && p.core_first == i,
                   "numa:2 package:2 core:2, local rank %d: numa %d package %d core %d", i, p.numa,
                   p.package, p.core_first);
    }
    /* More than 64 cores: the mask covers the first 64 only, the rest of the fields still hold. */
    moe_placement p;
    describe_ok(&p, "package:2 core:40 pu:1", 70);
    ck_assert_int_eq(p.package, 1);
    ck_assert_int_eq(p.core_first, 70);
    ck_assert_int_eq(p.cores, 1);
    ck_assert_uint_eq(p.core_mask, 0);
    ck_assert_str_eq(p.cpuset, "70");
    describe_ok(&p, "package:2 core:40 pu:1", 63);
    ck_assert_uint_eq(p.core_mask, UINT64_C(1) << 63);
    /* A single core: the whole machine is that core, so the rank counts as bound. */
    describe_ok(&p, "core:1 pu:4", 3);
    ck_assert(p.bound);
    ck_assert_int_eq(p.cores, 1);
    ck_assert_int_eq(p.core_first, 0);
    ck_assert_str_eq(p.cpuset, "0-3");
}
END_TEST

START_TEST(test_describe_classifies_a_known_matrix)
{
    /* Placements from describe ("package:2 numa:2 core:2 pu:1": core c in package c / 4, NUMA
     * c / 2) with nodes assigned by hand:
     *   node 0: ranks 0..4 = local ranks 0..4 -> cores 0..4 -> (pkg, numa) (0,0) (0,0) (0,1) (0,1) (1,2)
     *   node 1: rank 5     = local rank 0     -> core 0    -> (0,0), but another node
     * Matrix: 1000 bytes between every two distinct ranks, 7 on the diagonal. Ordered pairs:
     *   same_numa    {0,1} {2,3}                           4 pairs ->  4000 B
     *   same_package {0,1} x {2,3}                         8 pairs ->  8000 B
     *   same_node    {4} x {0..3}                          8 pairs ->  8000 B
     *   other_node   {5} x {0..4}                         10 pairs -> 10000 B
     *   same_rank    6 diagonal entries                            ->    42 B
     * 4 + 8 + 8 + 10 = 30 = 6 * 5 off-diagonal pairs. */
    moe_placement p[6];
    static const int local[6] = {0, 1, 2, 3, 4, 0}, node[6] = {0, 0, 0, 0, 0, 1};
    for (int r = 0; r < 6; r++) {
        describe_ok(&p[r], "package:2 numa:2 core:2 pu:1", local[r]);
        p[r].rank = r;
        p[r].node = node[r];
    }
    int64_t b[36];
    for (int s = 0; s < 6; s++)
        for (int d = 0; d < 6; d++)
            b[s * 6 + d] = s == d ? 7 : 1000;
    moe_class_traffic out[N_LOC];
    memset(out, 0, sizeof out);
    moe_traffic_by_class(out, NULL, b, p, 6);
    static const int64_t want_bytes[N_LOC] = {42, 4000, 8000, 8000, 10000};
    static const int64_t want_msgs[N_LOC] = {6, 4, 8, 8, 10};
    for (int c = 0; c < N_LOC; c++)
        EXPECT_MSG(out[c].bytes == want_bytes[c] && out[c].messages == want_msgs[c],
                   "%s: %lld B / %lld msgs, expected %lld / %lld", moe_locality_name(c),
                   (long long)out[c].bytes, (long long)out[c].messages, (long long)want_bytes[c],
                   (long long)want_msgs[c]);
    /* and no warning: every rank bound, no two ranks of one node on one core */
    char buf[1024];
    ck_assert_int_eq(moe_topology_warnings(buf, sizeof buf, p, 6), 0);
    ck_assert_str_eq(buf, "");
}
END_TEST

/* A fresh directory for files, removed at the end of each test that makes one. */
static char g_dir[64];
static void make_dir(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/moesim-topo-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
}

START_TEST(test_describe_xml_round_trip)
{
    /* hwloc exports the synthetic machine as XML; describing through that file gives the same
     * placement for every local rank. */
    static const char *const spec = "package:2 numa:2 core:4 pu:1";
    make_dir();
    char path[128];
    snprintf(path, sizeof path, "%s/two-socket.xml", g_dir);
    hwloc_topology_t topo;
    ck_assert_int_eq(hwloc_topology_init(&topo), 0);
    ck_assert_int_eq(hwloc_topology_set_synthetic(topo, spec), 0);
    ck_assert_int_eq(hwloc_topology_load(topo), 0);
    ck_assert_int_eq(hwloc_topology_export_xml(topo, path, 0), 0);
    hwloc_topology_destroy(topo);
    for (int i = 0; i < 20; i++) {
        moe_placement a, b;
        describe_ok(&a, spec, i);
        describe_ok(&b, path, i);
        EXPECT_MSG(a.package == b.package && a.numa == b.numa && a.core_first == b.core_first &&
                       a.cores == b.cores && a.core_mask == b.core_mask && a.bound == b.bound &&
                       strcmp(a.cpuset, b.cpuset) == 0 && strcmp(a.host, b.host) == 0,
                   "local rank %d: synthetic (%d %d %d x%d '%s') vs xml (%d %d %d x%d '%s')", i,
                   a.package, a.numa, a.core_first, a.cores, a.cpuset, b.package, b.numa,
                   b.core_first, b.cores, b.cpuset);
        EXPECT(b.package == (i % 16) / 8 && b.numa == (i % 16) / 4); /* and it is the layout */
    }
    unlink(path);
    rmdir(g_dir);
}
END_TEST

START_TEST(test_describe_refusals)
{
    moe_placement p;
    char msg[512];
    /* hwloc refuses an unknown object type */
    msg[0] = '\0';
    ck_assert_int_eq(moe_topology_describe(&p, "bogus:3", 0, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "bogus:3") != NULL, "message does not name the spec: %s", msg);
    msg[0] = '\0';
    ck_assert_int_eq(moe_topology_describe(&p, "package:2 core:x pu:1", 0, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "package:2 core:x pu:1") != NULL, "message: %s", msg);
    /* a missing XML file */
    msg[0] = '\0';
    ck_assert_int_eq(moe_topology_describe(&p, "/nonexistent-dir/machine.xml", 0, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "/nonexistent-dir/machine.xml") != NULL, "message: %s", msg);
    /* a file named .xml that is not an hwloc export */
    make_dir();
    char path[128];
    snprintf(path, sizeof path, "%s/garbage.xml", g_dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("this is not XML\n", f);
    fclose(f);
    msg[0] = '\0';
    ck_assert_int_eq(moe_topology_describe(&p, path, 0, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "garbage.xml") != NULL, "message: %s", msg);
    unlink(path);
    rmdir(g_dir);
}
END_TEST

START_TEST(test_describe_real_binding)
{
    /* The real machine (spec NULL): unbound when the affinity covers every CPU hwloc sees, and
     * bound to exactly core 0's PUs after sched_setaffinity to the first of them. Check runs each
     * test in its own process (fork mode), and the affinity is restored anyway. */
    cpu_set_t saved;
    ck_assert_int_eq(sched_getaffinity(0, sizeof saved, &saved), 0);
    hwloc_topology_t topo;
    ck_assert_int_eq(hwloc_topology_init(&topo), 0);
    ck_assert_int_eq(hwloc_topology_load(topo), 0);
    int n_cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
    hwloc_obj_t core0 = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, 0);
    ck_assert_ptr_nonnull(core0);
    int pu0 = hwloc_bitmap_first(core0->cpuset);
    int all_pus = hwloc_bitmap_weight(hwloc_topology_get_topology_cpuset(topo));
    hwloc_topology_destroy(topo);

    moe_placement p;
    describe_ok(&p, NULL, 0);
    char host[64] = "";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    ck_assert_str_eq(p.host, host);
    if (CPU_COUNT(&saved) == all_pus && n_cores > 1) {
        ck_assert(!p.bound);
        ck_assert_str_eq(p.cpuset, "all");
        ck_assert_int_eq(p.cores, n_cores);
    }

    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(pu0, &one);
    ck_assert_int_eq(sched_setaffinity(0, sizeof one, &one), 0);
    describe_ok(&p, NULL, 5); /* local_rank is ignored on the real machine */
    sched_setaffinity(0, sizeof saved, &saved);
    char want[16];
    snprintf(want, sizeof want, "%d", pu0);
    ck_assert(p.bound);
    ck_assert_int_eq(p.cores, 1);
    ck_assert_int_eq(p.core_first, 0);
    ck_assert_uint_eq(p.core_mask, 1);
    ck_assert_str_eq(p.cpuset, want);
    ck_assert_int_ge(p.package, 0);
    ck_assert_int_ge(p.numa, 0);
}
END_TEST

/* ------------------------------------------------------------------ warnings */

/* rank r bound to the cores of mask on node */
static moe_placement bound_to(int rank, int node, uint64_t mask)
{
    moe_placement p = place(rank, node, 0, 0);
    p.core_mask = mask;
    p.core_first = __builtin_ctzll(mask);
    p.cores = __builtin_popcountll(mask);
    return p;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

START_TEST(test_warnings)
{
    char buf[2048];
    /* clean: four ranks on distinct cores of node 0, and two on node 1 reusing cores 0 and 1
     * (another machine: no conflict) */
    moe_placement p[6] = {bound_to(0, 0, 1), bound_to(1, 0, 2), bound_to(2, 0, 4),
                          bound_to(3, 0, 8), bound_to(4, 1, 1), bound_to(5, 1, 2)};
    ck_assert_int_eq(moe_topology_warnings(buf, sizeof buf, p, 6), 0);
    ck_assert_str_eq(buf, "");

    /* an unbound rank: one warning naming it (its mask is every core, but an unbound rank is
     * reported as unbound, not as sharing) */
    p[1].bound = false;
    p[1].core_mask = 0xF;
    snprintf(p[1].cpuset, sizeof p[1].cpuset, "all");
    ck_assert_int_eq(moe_topology_warnings(buf, sizeof buf, p, 6), 1);
    ck_assert_int_eq(count_lines(buf), 1);
    ck_assert_msg(strstr(buf, "rank 1 ") && strstr(buf, "not bound") && strstr(buf, "host0"),
                  "warning: %s", buf);

    /* two ranks of one node sharing core 2: one more warning, naming both */
    p[1] = bound_to(1, 0, 2);
    p[3] = bound_to(3, 0, 4 | 8); /* cores 2 and 3: shares core 2 with rank 2 */
    ck_assert_int_eq(moe_topology_warnings(buf, sizeof buf, p, 6), 1);
    ck_assert_msg(strstr(buf, "ranks 2 and 3") && strstr(buf, "share a core"), "warning: %s", buf);
    p[5] = bound_to(5, 1, 1); /* node 1: ranks 4 and 5 both on core 0 */
    ck_assert_int_eq(moe_topology_warnings(buf, sizeof buf, p, 6), 2);
    ck_assert_int_eq(count_lines(buf), 2);
    ck_assert_msg(strstr(buf, "ranks 4 and 5") && strstr(buf, "host1"), "warning: %s", buf);
    p[0].bound = false; /* and an unbound one: three in all */
    ck_assert_int_eq(moe_topology_warnings(buf, sizeof buf, p, 6), 3);
    ck_assert_int_eq(count_lines(buf), 3);

    /* a short buffer: the count is still every warning, the text is cut and terminated */
    char small[40];
    memset(small, 'x', sizeof small);
    ck_assert_int_eq(moe_topology_warnings(small, sizeof small, p, 6), 3);
    ck_assert(memchr(small, '\0', sizeof small) != NULL);
    ck_assert(strncmp(small, "warning: rank 0", 15) == 0);
}
END_TEST

START_TEST(test_planned_placement)
{
    /* --ranks: 5 planned ranks in nodes of 2 are on nodes 0 0 1 1 2, unbound, hosts planned-<node>,
     * NUMA and package unknown, so two ranks of one node are same_node; without nodes, node 0. */
    moe_placement p[5];
    moe_topology_planned(p, 5, 2);
    const int nodes[5] = {0, 0, 1, 1, 2};
    for (int r = 0; r < 5; r++) {
        EXPECT_EQ(p[r].rank, r);
        EXPECT_EQ(p[r].node, nodes[r]);
        EXPECT(!p[r].bound && p[r].numa == -1 && p[r].package == -1);
    }
    ck_assert_str_eq(p[4].host, "planned-2");
    EXPECT_EQ(moe_locality_of(&p[0], &p[1]), MOE_LOC_SAME_NODE);
    EXPECT_EQ(moe_locality_of(&p[1], &p[2]), MOE_LOC_OTHER_NODE);
    EXPECT_EQ(moe_locality_of(&p[3], &p[3]), MOE_LOC_SAME_RANK);
    moe_topology_planned(p, 5, 0);
    EXPECT_EQ(p[4].node, 0);
}
END_TEST

static Suite *topology_suite(void)
{
    Suite *s = suite_create("topology");
    TCase *tc = tcase_create("classes");
    tcase_add_test(tc, test_locality_names);
    tcase_add_test(tc, test_locality_of_precedence);
    tcase_add_test(tc, test_traffic_by_class_hand);
    tcase_add_test(tc, test_traffic_by_class_random);
    suite_add_tcase(s, tc);
    tc = tcase_create("describe");
    tcase_add_test(tc, test_describe_two_sockets);
    tcase_add_test(tc, test_describe_small_layouts);
    tcase_add_test(tc, test_describe_many_matches_one);
    tcase_add_test(tc, test_describe_classifies_a_known_matrix);
    tcase_add_test(tc, test_describe_xml_round_trip);
    tcase_add_test(tc, test_describe_refusals);
    tcase_add_test(tc, test_describe_real_binding);
    suite_add_tcase(s, tc);
    tc = tcase_create("warnings");
    tcase_add_test(tc, test_warnings);
    tcase_add_test(tc, test_planned_placement);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(topology_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
