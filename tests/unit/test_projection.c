/* Unit tests of projection: network files, the alpha-beta time of one exchange stage, and the
 * three stages of the two-level exchange (moe_hier_schedule). */
#include "moesim/error.h"
#include "moesim/projection.h"
#include "moesim/topology.h"

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "expect.h"

enum { N_LOC = MOE_LOC_COUNT };

#include "testrng.h"

/* |got - want| <= rel * |want| */
static int close_rel(double got, double want, double rel)
{
    return fabs(got - want) <= rel * fabs(want);
}

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
    return p;
}

/* ------------------------------------------------------------------ network files */

/* Files of one test, in a fresh directory; removed by remove_files. */
static char g_dir[64];
static char g_files[8][160];
static int g_n_files;

/* Write text to a new file name in the test's directory and return its path. */
static const char *write_file(const char *name, const char *text)
{
    if (g_dir[0] == '\0') {
        snprintf(g_dir, sizeof g_dir, "/tmp/moesim-net-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(g_dir));
    }
    ck_assert_int_lt(g_n_files, 8);
    char *path = g_files[g_n_files++];
    snprintf(path, sizeof g_files[0], "%s/%s", g_dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void remove_files(void)
{
    for (int i = 0; i < g_n_files; i++)
        unlink(g_files[i]);
    g_n_files = 0;
    if (g_dir[0] != '\0')
        rmdir(g_dir);
    g_dir[0] = '\0';
}

/* Every class, in file order; latency in microseconds, bandwidth in GB/s. */
#define GOOD_BODY                                                                                  \
    "same_rank.latency_us = 0.5\n"                                                                 \
    "same_rank.bandwidth_GBps = 10\n"                                                              \
    "same_numa.latency_us = 1\n"                                                                   \
    "same_numa.bandwidth_GBps = 8\n"                                                               \
    "same_package.latency_us = 2\n"                                                                \
    "same_package.bandwidth_GBps = 4\n"                                                            \
    "same_node.latency_us = 4\n"                                                                   \
    "same_node.bandwidth_GBps = 2\n"                                                               \
    "other_node.latency_us = 10\n"                                                                 \
    "other_node.bandwidth_GBps = 0.125\n"

static const double good_lat_us[N_LOC] = {0.5, 1, 2, 4, 10};
static const double good_bw_gbps[N_LOC] = {10, 8, 4, 2, 0.125};

static void expect_good(const moe_network *net)
{
    /* v * 1e-6 and v * 1e9 are one rounded multiplication each: within 2 ulp of the decimal */
    for (int c = 0; c < N_LOC; c++) {
        EXPECT_MSG(close_rel(net->latency[c], good_lat_us[c] * 1e-6, 4e-16),
                   "%s latency %.17g", moe_locality_name(c), net->latency[c]);
        EXPECT_MSG(close_rel(net->bandwidth[c], good_bw_gbps[c] * 1e9, 4e-16),
                   "%s bandwidth %.17g", moe_locality_name(c), net->bandwidth[c]);
    }
}

START_TEST(test_network_good)
{
    moe_network net;
    char msg[512] = "";
    const char *path = write_file("good.network", "name = test net\n" GOOD_BODY);
    int rc = moe_network_load(path, &net, msg, sizeof msg);
    ck_assert_msg(rc == MOE_OK, "rc %d: %s", rc, msg);
    ck_assert_str_eq(net.name, "test net");
    expect_good(&net);

    /* comments (whole lines and trailing), blank lines, spaces, tabs, CRLF, any order, no name:
     * the name is then the path */
    path = write_file("messy.network",
                      "# a network file\n"
                      "\n"
                      "   \t\n"
                      "other_node.bandwidth_GBps=0.125   # 1 Gb/s\n"
                      "  other_node.latency_us   =   10\r\n"
                      "same_node.bandwidth_GBps = 2\n"
                      "\tsame_node.latency_us = 4\n"
                      "# same_rank.latency_us = 99  (commented out)\n"
                      "same_package.latency_us = 2\n"
                      "same_package.bandwidth_GBps = 4e0\n"
                      "same_numa.latency_us = 1.0\n"
                      "same_numa.bandwidth_GBps = 8\n"
                      "same_rank.latency_us = 0.5\n"
                      "same_rank.bandwidth_GBps = 10 # memcpy\n"
                      "# trailing comment without newline");
    msg[0] = '\0';
    rc = moe_network_load(path, &net, msg, sizeof msg);
    ck_assert_msg(rc == MOE_OK, "rc %d: %s", rc, msg);
    ck_assert_str_eq(net.name, path);
    expect_good(&net);

    /* a zero latency is allowed (>= 0) */
    path = write_file("zero_latency.network", "name = z\n" GOOD_BODY "same_rank.latency_us = 0\n");
    ck_assert_int_eq(moe_network_load(path, &net, msg, sizeof msg), MOE_OK);
    ck_assert(net.latency[MOE_LOC_SAME_RANK] == 0.0);
    remove_files();
}
END_TEST

START_TEST(test_network_long_comment)
{
    /* A comment is a comment whatever its length (docs/projection.md: '#' comments). Line 1 is a
     * comment of 700 characters, then a complete network. */
    char text[2048];
    size_t n = 0;
    text[n++] = '#';
    for (int i = 0; i < 699; i++)
        text[n++] = "abcdefghij klmnopqrst"[i % 21];
    text[n++] = '\n';
    text[n] = '\0';
    strcat(text, "name = long comment\n" GOOD_BODY);
    moe_network net;
    char msg[512] = "";
    const char *path = write_file("long_comment.network", text);
    int rc = moe_network_load(path, &net, msg, sizeof msg);
    remove_files();
    ck_assert_msg(rc == MOE_OK, "a 700-character comment line: rc %d: %s", rc, msg);
    ck_assert_str_eq(net.name, "long comment");
    expect_good(&net);
}
END_TEST

/* Network files that must be refused with MOE_EUSAGE; the message must contain every `names`
 * entry (the line number where one exists). The good body is 10 lines, so an extra line after
 * "name = x" and it is line 2, at the end line 12. */
static const struct bad_network {
    const char *text;
    const char *names[3];
} bad_networks[] = {
    /* a class missing altogether, or half of one */
    {"name = x\nsame_rank.latency_us = 1\nsame_rank.bandwidth_GBps = 1\n", {"same_numa"}},
    {"same_rank.latency_us = 0.5\nsame_rank.bandwidth_GBps = 10\nsame_numa.latency_us = 1\n"
     "same_numa.bandwidth_GBps = 8\nsame_package.latency_us = 2\nsame_package.bandwidth_GBps = 4\n"
     "same_node.latency_us = 4\nsame_node.bandwidth_GBps = 2\nother_node.latency_us = 10\n",
     {"other_node"}},
    {"same_rank.latency_us = 0.5\nsame_rank.bandwidth_GBps = 10\nsame_numa.latency_us = 1\n"
     "same_numa.bandwidth_GBps = 8\nsame_package.latency_us = 2\nsame_package.bandwidth_GBps = 4\n"
     "same_node.bandwidth_GBps = 2\nother_node.latency_us = 10\nother_node.bandwidth_GBps = 1\n",
     {"same_node"}},
    {"", {"same_rank"}}, /* empty file */
    /* unknown keys */
    {"name = x\nsame_rank.latency = 1\n" GOOD_BODY, {"line 2", "same_rank.latency"}},
    {"name = x\n" GOOD_BODY "same_rack.latency_us = 1\n", {"line 12", "same_rack"}},
    {"name = x\n" GOOD_BODY "latency_us = 1\n", {"line 12", "latency_us"}},
    {"name = x\n" GOOD_BODY "same_rank.latency_us.x = 1\n", {"line 12", "same_rank.latency_us.x"}},
    {"name = x\nSAME_RANK.latency_us = 1\n" GOOD_BODY, {"line 2", "SAME_RANK"}},
    {"name = x\n = 1\n" GOOD_BODY, {"line 2"}},
    /* bad numbers */
    {"name = x\n" GOOD_BODY "same_numa.bandwidth_GBps = fast\n", {"line 12", "fast"}},
    {"name = x\nsame_numa.bandwidth_GBps = 4.0GB\n" GOOD_BODY, {"line 2", "4.0GB"}},
    {"name = x\nsame_numa.latency_us =\n" GOOD_BODY, {"line 2", "same_numa"}},
    {"name = x\nsame_numa.latency_us = -1\n" GOOD_BODY, {"line 2", "-1"}},
    {"name = x\nsame_numa.latency_us = nan\n" GOOD_BODY, {"line 2", "nan"}},
    {"name = x\nsame_numa.bandwidth_GBps = inf\n" GOOD_BODY, {"line 2", "inf"}},
    {"name = x\nsame_numa.bandwidth_GBps = 1e999\n" GOOD_BODY, {"line 2", "1e999"}},
    {"name = x\nsame_numa.bandwidth_GBps = 1 2\n" GOOD_BODY, {"line 2", "1 2"}},
    /* zero bandwidth */
    {"name = x\n" GOOD_BODY "other_node.bandwidth_GBps = 0\n", {"line 12", "other_node"}},
    {"# header\n\nname = x\nsame_rank.bandwidth_GBps = 0.0\n" GOOD_BODY, {"line 4", "same_rank"}},
    /* no '=' */
    {"name = x\nsame_rank.latency_us 0.5\n" GOOD_BODY, {"line 2", "key = value"}},
    {"name = x\n" GOOD_BODY "\n\n# comment\ngarbage\n", {"line 15"}},
};

START_TEST(test_network_bad)
{
    const struct bad_network *b = &bad_networks[_i];
    moe_network net;
    char msg[512] = "";
    char name[32];
    snprintf(name, sizeof name, "bad%d.network", _i);
    const char *path = write_file(name, b->text);
    int rc = moe_network_load(path, &net, msg, sizeof msg);
    char text[256];
    snprintf(text, sizeof text, "%s", b->text);
    remove_files();
    ck_assert_msg(rc == MOE_EUSAGE, "case %d gave %d (%s), expected MOE_EUSAGE:\n%s", _i, rc, msg,
                  text);
    for (int j = 0; j < 3 && b->names[j] != NULL; j++)
        ck_assert_msg(strstr(msg, b->names[j]) != NULL, "case %d: message '%s' does not name '%s'",
                      _i, msg, b->names[j]);
    ck_assert_msg(strstr(msg, "bad") != NULL && strstr(msg, ".network") != NULL,
                  "case %d: message does not name the file: %s", _i, msg);
}
END_TEST

START_TEST(test_network_missing_file)
{
    moe_network net;
    char msg[512] = "";
    ck_assert_int_eq(moe_network_load("/nonexistent-dir/x.network", &net, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "/nonexistent-dir/x.network") != NULL, "message: %s", msg);
    ck_assert_msg(strstr(msg, "No such file") != NULL, "message: %s", msg);
}
END_TEST

START_TEST(test_network_shipped)
{
    /* The shipped files load, with the figures docs/projection.md gives for nvlink-ib400 (150 GB/s
     * and 2 us inside a node, 50 GB/s and 3 us between nodes). MOESIM_SOURCE_DIR is set by
     * tests/unit/meson.build. */
    const char *root = getenv("MOESIM_SOURCE_DIR");
    if (root == NULL)
        return;
    char path[512], msg[512] = "";
    moe_network net;
    snprintf(path, sizeof path, "%s/launch/nvlink-ib400.network", root);
    ck_assert_msg(moe_network_load(path, &net, msg, sizeof msg) == MOE_OK, "%s: %s", path, msg);
    /* one rounded multiplication by 1e-6 or 1e9 each */
    ck_assert(close_rel(net.bandwidth[MOE_LOC_OTHER_NODE], 50e9, 4e-16));
    ck_assert(close_rel(net.latency[MOE_LOC_OTHER_NODE], 3e-6, 4e-16));
    for (int c = MOE_LOC_SAME_NUMA; c <= MOE_LOC_SAME_NODE; c++) {
        ck_assert(close_rel(net.bandwidth[c], 150e9, 4e-16));
        ck_assert(close_rel(net.latency[c], 2e-6, 4e-16));
    }
    snprintf(path, sizeof path, "%s/launch/laptop.network", root);
    ck_assert_msg(moe_network_load(path, &net, msg, sizeof msg) == MOE_OK, "%s: %s", path, msg);
    for (int c = 0; c < N_LOC; c++)
        ck_assert(net.bandwidth[c] > 0 && net.latency[c] >= 0);
}
END_TEST

/* ------------------------------------------------------------------ one stage */

/* latency in microseconds and bandwidth in GB/s per class R N P D O */
static moe_network make_net(const double *lat_us, const double *bw_gbps)
{
    moe_network net;
    memset(&net, 0, sizeof net);
    snprintf(net.name, sizeof net.name, "hand");
    for (int c = 0; c < N_LOC; c++) {
        net.latency[c] = lat_us[c] * 1e-6;
        net.bandwidth[c] = bw_gbps[c] * 1e9;
    }
    return net;
}

START_TEST(test_project_stage_hand)
{
    /* Network (alpha us, beta GB/s): same_rank 1, 10; same_numa 2, 5; same_package 3, 4;
     * same_node 4, 2; other_node 10, 1.
     * Ranks (node, package, numa): r0 (0,0,0) r1 (0,0,0) r2 (1,0,0) r3 (1,0,1).
     * Bytes [src][dst]:
     *          d0     d1     d2     d3
     *   s0    1e6    2e6     0     1e6
     *   s1     0      0     3e6     0
     *   s2    5e5     0     4e6    2e6
     *   s3     0     1e6     0      0
     * Message costs alpha + b / beta, in microseconds:
     *   (0,0) same_rank     1 + 1e6 B / 10 GB/s =  1 +  100 =  101
     *   (0,1) same_numa     2 + 2e6 B /  5 GB/s =  2 +  400 =  402
     *   (0,3) other_node   10 + 1e6 B /  1 GB/s = 10 + 1000 = 1010
     *   (1,2) other_node   10 + 3e6 B /  1 GB/s = 10 + 3000 = 3010
     *   (2,0) other_node   10 + 5e5 B /  1 GB/s = 10 +  500 =  510
     *   (2,2) same_rank     1 + 4e6 B / 10 GB/s =  1 +  400 =  401
     *   (2,3) same_package  3 + 2e6 B /  4 GB/s =  3 +  500 =  503
     *   (3,1) other_node   10 + 1e6 B /  1 GB/s = 10 + 1000 = 1010
     * Sends:    r0 101+402+1010 = 1513   r1 3010   r2 510+401+503 = 1414   r3 1010
     * Receives: r0 101+510 = 611   r1 402+1010 = 1412   r2 3010+401 = 3411   r3 1010+503 = 1513
     * T = max over ranks of max(send, receive) = 3411 us (rank 2's receives). */
    static const double lat[N_LOC] = {1, 2, 3, 4, 10}, bw[N_LOC] = {10, 5, 4, 2, 1};
    moe_network net = make_net(lat, bw);
    moe_placement p[4] = {place(0, 0, 0, 0), place(1, 0, 0, 0), place(2, 1, 0, 0),
                          place(3, 1, 0, 1)};
    int64_t b[16] = {1000000, 2000000, 0, 1000000, 0, 0, 3000000, 0,
                     500000,  0,       4000000, 2000000, 0, 1000000, 0, 0};
    /* a few additions and divisions of doubles: relative error below 1e-15; 1e-12 is loose */
    double t = moe_project_stage(b, p, 4, &net);
    ck_assert_msg(close_rel(t, 3411e-6, 1e-12), "T = %.12g s, expected 3.411e-3", t);
    /* The transpose: the classes are symmetric, so rank 2 now sends 3411 us and the send side
     * decides. */
    int64_t bt[16];
    for (int s = 0; s < 4; s++)
        for (int d = 0; d < 4; d++)
            bt[d * 4 + s] = b[s * 4 + d];
    t = moe_project_stage(bt, p, 4, &net);
    ck_assert_msg(close_rel(t, 3411e-6, 1e-12), "T(transpose) = %.12g s", t);
    /* Move rank 3 to node 0, (0, 0, 1): the messages touching it change class.
     *   (0,3) same_package  3 + 1e6/4e9 = 3 +  250 =  253
     *   (2,3) other_node   10 + 2e6/1e9 = 10 + 2000 = 2010
     *   (3,1) same_package  3 + 1e6/4e9 = 3 +  250 =  253
     * Sends: r0 101+402+253 = 756, r1 3010, r2 510+401+2010 = 2921, r3 253.
     * Receives: r0 611, r1 402+253 = 655, r2 3411, r3 253+2010 = 2263. T = 3411 still (r2). */
    p[3].node = 0;
    t = moe_project_stage(b, p, 4, &net);
    ck_assert_msg(close_rel(t, 3411e-6, 1e-12), "T(r3 on node 0) = %.12g s", t);
    /* Make (1,2) small: then r2's sends 2921 decide.  (1,2) = 1e5 B: 10 + 100 = 110.
     * Receives r2: 110 + 401 = 511. Sends r2 2921; r3 receives 2263; r1 sends 110. T = 2921. */
    b[1 * 4 + 2] = 100000;
    t = moe_project_stage(b, p, 4, &net);
    ck_assert_msg(close_rel(t, 2921e-6, 1e-12), "T(small 1->2) = %.12g s, expected 2.921e-3", t);
    /* nothing moves: 0; one rank: its copy to itself */
    int64_t zero[16] = {0};
    ck_assert(moe_project_stage(zero, p, 4, &net) == 0.0);
    int64_t self = 2500000; /* 1 + 2.5e6/1e10 s = 1 + 250 us */
    t = moe_project_stage(&self, p, 1, &net);
    ck_assert_msg(close_rel(t, 251e-6, 1e-12), "T(one rank) = %.12g s", t);
}
END_TEST

START_TEST(test_project_stage_bandwidth_bound)
{
    /* Property: with no latency and one bandwidth beta for every class, a stage takes
     * max(largest row sum, largest column sum) / beta, whatever the placement. */
    static const double lat[N_LOC] = {0, 0, 0, 0, 0}, bw[N_LOC] = {2, 2, 2, 2, 2};
    moe_network net = make_net(lat, bw);
    g_state = 7;
    for (int trial = 0; trial < 500; trial++) {
        int R = 1 + next_int(9);
        moe_placement p[9];
        int64_t b[81];
        for (int r = 0; r < R; r++)
            p[r] = place(r, next_int(3), next_int(2), next_int(3) - 1);
        int64_t worst = 0;
        for (int s = 0; s < R; s++)
            for (int d = 0; d < R; d++)
                b[s * R + d] = next_int(4) == 0 ? 0 : (int64_t)(next_u64() % 1000000000);
        for (int r = 0; r < R; r++) {
            int64_t row = 0, col = 0;
            for (int o = 0; o < R; o++) {
                row += b[r * R + o];
                col += b[o * R + r];
            }
            worst = row > worst ? row : worst;
            worst = col > worst ? col : worst;
        }
        double t = moe_project_stage(b, p, R, &net);
        /* up to 9 quotients added: relative error below 1e-14 */
        EXPECT_MSG(close_rel(t, (double)worst / 2e9, 1e-13), "trial %d: %.17g vs %.17g", trial, t,
                   (double)worst / 2e9);
    }
}
END_TEST

/* ------------------------------------------------------------------ two-level schedule */

static void expect_matrix(const int64_t *got, const int64_t *want, int R, const char *what)
{
    for (int s = 0; s < R; s++)
        for (int d = 0; d < R; d++)
            EXPECT_MSG(got[s * R + d] == want[s * R + d], "%s[%d][%d] = %lld, expected %lld", what,
                       s, d, (long long)got[s * R + d], (long long)want[s * R + d]);
}

/* B[s][d] = 4 s + d + 1: row sums 10 26 42 58, column sums 28 32 36 40, total 136 */
static const int64_t hand_b[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

START_TEST(test_hier_schedule_two_nodes)
{
    /* Nodes {0,1} and {2,3}; leaders 0 and 2.
     * stage 0, every rank's row sum to its leader:     [0][0]=10 [1][0]=26 [2][2]=42 [3][2]=58
     * stage 1, node a's rows for node b, leader to leader:
     *   [0][0] = 1+2+5+6 = 14    [0][2] = 3+4+7+8 = 22    [2][0] = 9+10+13+14 = 46
     *   [2][2] = 11+12+15+16 = 54
     * stage 2, each destination's column sum from its leader: [0][0]=28 [0][1]=32 [2][2]=36
     *   [2][3]=40 */
    moe_placement p[4] = {place(0, 0, 0, 0), place(1, 0, 0, 0), place(2, 1, 0, 0),
                          place(3, 1, 0, 0)};
    int64_t s0[16], s1[16], s2[16];
    for (int i = 0; i < 16; i++)
        s0[i] = s1[i] = s2[i] = -99; /* every entry is written */
    moe_hier_schedule(s0, s1, s2, hand_b, p, 4);
    static const int64_t w0[16] = {10, 0, 0, 0, 26, 0, 0, 0, 0, 0, 42, 0, 0, 0, 58, 0};
    static const int64_t w1[16] = {14, 0, 22, 0, 0, 0, 0, 0, 46, 0, 54, 0, 0, 0, 0, 0};
    static const int64_t w2[16] = {28, 32, 0, 0, 0, 0, 0, 0, 0, 0, 36, 40, 0, 0, 0, 0};
    expect_matrix(s0, w0, 4, "stage0");
    expect_matrix(s1, w1, 4, "stage1");
    expect_matrix(s2, w2, 4, "stage2");
}
END_TEST

START_TEST(test_hier_schedule_interleaved_nodes)
{
    /* node = rank % 2: nodes {0,2} and {1,3}; leaders 0 and 1.
     * stage 0: [0][0]=10 [1][1]=26 [2][0]=42 [3][1]=58
     * stage 1: [0][0] = B00+B02+B20+B22 = 1+3+9+11 = 24   [0][1] = 2+4+10+12 = 28
     *          [1][0] = 5+7+13+15 = 40                    [1][1] = 6+8+14+16 = 44
     * stage 2: [0][0]=28 [1][1]=32 [0][2]=36 [1][3]=40 */
    moe_placement p[4] = {place(0, 0, 0, 0), place(1, 1, 0, 0), place(2, 0, 0, 0),
                          place(3, 1, 0, 0)};
    int64_t s0[16], s1[16], s2[16];
    moe_hier_schedule(s0, s1, s2, hand_b, p, 4);
    static const int64_t w0[16] = {10, 0, 0, 0, 0, 26, 0, 0, 42, 0, 0, 0, 0, 58, 0, 0};
    static const int64_t w1[16] = {24, 28, 0, 0, 40, 44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    static const int64_t w2[16] = {28, 0, 36, 0, 0, 32, 0, 40, 0, 0, 0, 0, 0, 0, 0, 0};
    expect_matrix(s0, w0, 4, "stage0");
    expect_matrix(s1, w1, 4, "stage1");
    expect_matrix(s2, w2, 4, "stage2");
}
END_TEST

START_TEST(test_hier_schedule_degenerate)
{
    int64_t s0[16], s1[16], s2[16];
    /* one node: everything is gathered to rank 0, stays there, and is scattered from it */
    moe_placement one[4] = {place(0, 0, 0, 0), place(1, 0, 0, 0), place(2, 0, 0, 0),
                            place(3, 0, 0, 0)};
    moe_hier_schedule(s0, s1, s2, hand_b, one, 4);
    static const int64_t o0[16] = {10, 0, 0, 0, 26, 0, 0, 0, 42, 0, 0, 0, 58, 0, 0, 0};
    static const int64_t o1[16] = {136, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    static const int64_t o2[16] = {28, 32, 36, 40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    expect_matrix(s0, o0, 4, "one node stage0");
    expect_matrix(s1, o1, 4, "one node stage1");
    expect_matrix(s2, o2, 4, "one node stage2");
    /* a node per rank: stage 1 is the matrix itself, stages 0 and 2 the diagonal copies */
    moe_placement own[4] = {place(0, 0, 0, 0), place(1, 1, 0, 0), place(2, 2, 0, 0),
                            place(3, 3, 0, 0)};
    moe_hier_schedule(s0, s1, s2, hand_b, own, 4);
    static const int64_t d0[16] = {10, 0, 0, 0, 0, 26, 0, 0, 0, 0, 42, 0, 0, 0, 0, 58};
    static const int64_t d2[16] = {28, 0, 0, 0, 0, 32, 0, 0, 0, 0, 36, 0, 0, 0, 0, 40};
    expect_matrix(s0, d0, 4, "own node stage0");
    expect_matrix(s1, hand_b, 4, "own node stage1");
    expect_matrix(s2, d2, 4, "own node stage2");
    /* uneven: {0,1,2} and {3}; leaders 0 and 3.
     * stage 1: [0][0] = rows 0-2 x cols 0-2 = 1+2+3+5+6+7+9+10+11 = 54, [0][3] = 4+8+12 = 24,
     *          [3][0] = 13+14+15 = 42, [3][3] = 16 */
    moe_placement uneven[4] = {place(0, 0, 0, 0), place(1, 0, 0, 0), place(2, 0, 0, 0),
                               place(3, 1, 0, 0)};
    moe_hier_schedule(s0, s1, s2, hand_b, uneven, 4);
    static const int64_t u0[16] = {10, 0, 0, 0, 26, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 58};
    static const int64_t u1[16] = {54, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 42, 0, 0, 16};
    static const int64_t u2[16] = {28, 32, 36, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40};
    expect_matrix(s0, u0, 4, "uneven stage0");
    expect_matrix(s1, u1, 4, "uneven stage1");
    expect_matrix(s2, u2, 4, "uneven stage2");
}
END_TEST

START_TEST(test_hier_schedule_random)
{
    /* Properties on seeded random matrices and node layouts (nodes arbitrary ids, not necessarily
     * contiguous or in order): every stage carries every byte once (sums equal the total); stage
     * 0 keeps each rank's row sum and sends it only to its node's leader (its lowest rank); stage
     * 2 delivers each rank's column sum from its leader only; stage 1 moves only between leaders
     * and carries exactly what node a's ranks send to node b's. */
    g_state = 2024;
    for (int trial = 0; trial < 400; trial++) {
        int R = 1 + next_int(10);
        int n_nodes = 1 + next_int(R);
        moe_placement p[10];
        int leader[10];
        for (int r = 0; r < R; r++)
            p[r] = place(r, 10 + next_int(n_nodes), 0, 0); /* ids 10.., in any order */
        for (int r = 0; r < R; r++) {
            leader[r] = r;
            for (int q = r - 1; q >= 0; q--)
                if (p[q].node == p[r].node)
                    leader[r] = q;
        }
        int64_t b[100], s0[100], s1[100], s2[100], total = 0;
        for (int i = 0; i < R * R; i++) {
            b[i] = next_int(3) == 0 ? 0 : (int64_t)(next_u64() % 1000000);
            total += b[i];
        }
        moe_hier_schedule(s0, s1, s2, b, p, R);
        int64_t sum0 = 0, sum1 = 0, sum2 = 0;
        for (int s = 0; s < R; s++) {
            int64_t row = 0, col = 0;
            for (int d = 0; d < R; d++) {
                row += b[s * R + d];
                col += b[d * R + s];
                sum0 += s0[s * R + d];
                sum1 += s1[s * R + d];
                sum2 += s2[s * R + d];
                EXPECT_MSG(d == leader[s] || s0[s * R + d] == 0, "trial %d: stage0[%d][%d]", trial,
                           s, d);
                EXPECT_MSG(s == leader[d] || s2[s * R + d] == 0, "trial %d: stage2[%d][%d]", trial,
                           s, d);
                int64_t want1 = 0;
                if (leader[s] == s && leader[d] == d)
                    for (int a = 0; a < R; a++)
                        for (int c = 0; c < R; c++)
                            if (leader[a] == s && leader[c] == d)
                                want1 += b[a * R + c];
                EXPECT_MSG(s1[s * R + d] == want1, "trial %d: stage1[%d][%d] = %lld, expected %lld",
                           trial, s, d, (long long)s1[s * R + d], (long long)want1);
            }
            EXPECT_EQ(s0[s * R + leader[s]], row);
            EXPECT_EQ(s2[leader[s] * R + s], col);
        }
        EXPECT_MSG(sum0 == total && sum1 == total && sum2 == total,
                   "trial %d: stage sums %lld %lld %lld, total %lld", trial, (long long)sum0,
                   (long long)sum1, (long long)sum2, (long long)total);
    }
}
END_TEST

START_TEST(test_hier_schedule_nodes_hand)
{
    /* R = 3, nodes {0, 1} and {2}: leaders 0 and 2. node_rows (3, 2) = [[2, 1], [3, 4], [0, 5]]
     * (rows per (token, node)); per-rank rows (3, 3) = [[1, 2, 1], [2, 3, 4], [0, 0, 5]]; node rows
     * of 10 bytes, per-rank rows of 7.
     * dispatch: stage 0 [s][leader(s)] = s's node rows x 10: [0][0] 30, [1][0] 70, [2][2] 50;
     *   stage 1 [leader(s)][leader(b)]: [0][0] (2 + 3) 10 = 50, [0][2] (1 + 4) 10 = 50,
     *   [2][2] 5 x 10 = 50; stage 2 [leader(node(d))][d] = column sums x 7: [0][0] 3 x 7 = 21,
     *   [0][1] 5 x 7 = 35, [2][2] 10 x 7 = 70.
     * combine (node and rank rows of 4 bytes): stage 0 [d][leader(d)] = 12, 20, 40; stage 1
     *   [leader(b)][leader(s)]: [0][0] 20, [2][0] 20, [2][2] 20; stage 2 [leader(s)][s] 12, 28, 20.
     * off node: node rows of a source bound elsewhere: 1 + 4 + 0 = 5. */
    moe_placement p[3] = {place(0, 0, 0, 0), place(1, 0, 0, 0), place(2, 1, 0, 0)};
    static const int64_t nrows[6] = {2, 1, 3, 4, 0, 5};
    static const int64_t rows[9] = {1, 2, 1, 2, 3, 4, 0, 0, 5};
    int64_t s0[9], s1[9], s2[9];
    for (int i = 0; i < 9; i++)
        s0[i] = s1[i] = s2[i] = -99; /* every entry is written */
    moe_hier_schedule_nodes(s0, s1, s2, nrows, 2, rows, 10, 7, p, 3, false);
    static const int64_t w0[9] = {30, 0, 0, 70, 0, 0, 0, 0, 50};
    static const int64_t w1[9] = {50, 0, 50, 0, 0, 0, 0, 0, 50};
    static const int64_t w2[9] = {21, 35, 0, 0, 0, 0, 0, 0, 70};
    expect_matrix(s0, w0, 3, "dispatch stage0");
    expect_matrix(s1, w1, 3, "dispatch stage1");
    expect_matrix(s2, w2, 3, "dispatch stage2");
    moe_hier_schedule_nodes(s0, s1, s2, nrows, 2, rows, 4, 4, p, 3, true);
    static const int64_t c0[9] = {12, 0, 0, 20, 0, 0, 0, 0, 40};
    static const int64_t c1[9] = {20, 0, 0, 0, 0, 0, 20, 0, 20};
    static const int64_t c2[9] = {12, 28, 0, 0, 0, 0, 0, 0, 20};
    expect_matrix(s0, c0, 3, "combine stage0");
    expect_matrix(s1, c1, 3, "combine stage1");
    expect_matrix(s2, c2, 3, "combine stage2");
    EXPECT_EQ(moe_node_rows_off_node(nrows, 2, p, 3), 5);
}
END_TEST

START_TEST(test_hier_projection_hand)
{
    /* The two-level projection of a hand case is the sum of its three stages' times.
     * Two nodes {0,1} {2,3}, all ranks (package 0, NUMA 0) of their node; alpha 0 everywhere,
     * beta 1 GB/s inside a node (same_rank and same_numa) and 0.5 GB/s between nodes, so a stage
     * costs (bytes it moves per rank, worst side) / beta.
     * Bytes: B[s][d] = 1e6 (4 s + d + 1), the hand matrix scaled: row sums 1e6 x (10 26 42 58),
     * column sums 1e6 x (28 32 36 40).
     * stage 0: leader 0 receives 10 + 26 = 36 (x 1e6 B, intranode) -> 36 ms; leader 2 receives
     *   42 + 58 = 100 -> 100 ms; senders at most 58 -> T0 = 100 ms
     * stage 1: [0][0] 14, [0][2] 22 (other node), [2][0] 46 (other node), [2][2] 54.
     *   leader 0 sends 14/1 + 22/0.5 = 58 ms, receives 14 + 46/0.5 = 106 ms;
     *   leader 2 sends 46/0.5 + 54 = 146 ms, receives 22/0.5 + 54 = 98 ms -> T1 = 146 ms
     * stage 2: leader 0 sends 28 + 32 = 60, leader 2 sends 36 + 40 = 76 -> T2 = 76 ms
     * Two-level total 322 ms. Flat: rank 3 sends 13+14 (other, 54 ms) + 15+16 (31 ms) = 85 ms;
     * rank 3 receives 4+8 (other, 24 ms) + 12+16 (28 ms) = 52; rank 2 sends 9+10 at 0.5 (38)
     * + 11+12 (23) = 61; rank 0 receives 1+5 (6) + (9+13)/0.5 (44) = 50; rank 1 receives 2+6 +
     * (10+14)/0.5 = 56; rank 1 sends 5+6 + (7+8)/0.5 = 41; rank 0 sends 1+2+(3+4)/0.5 = 17;
     * rank 2 receives 3+7 at 0.5 (20) + 11+15 (26) = 46 -> flat 85 ms. */
    static const double lat[N_LOC] = {0, 0, 0, 0, 0}, bw[N_LOC] = {1, 1, 1, 1, 0.5};
    moe_network net = make_net(lat, bw);
    moe_placement p[4] = {place(0, 0, 0, 0), place(1, 0, 0, 0), place(2, 1, 0, 0),
                          place(3, 1, 0, 0)};
    int64_t b[16], s0[16], s1[16], s2[16];
    for (int i = 0; i < 16; i++)
        b[i] = hand_b[i] * 1000000;
    moe_hier_schedule(s0, s1, s2, b, p, 4);
    double t0 = moe_project_stage(s0, p, 4, &net), t1 = moe_project_stage(s1, p, 4, &net),
           t2 = moe_project_stage(s2, p, 4, &net), flat = moe_project_stage(b, p, 4, &net);
    /* sums of a few exact quotients of integers by 1e9 or 5e8: relative error ~1e-16 */
    ck_assert_msg(close_rel(t0, 0.100, 1e-12), "T0 = %.12g", t0);
    ck_assert_msg(close_rel(t1, 0.146, 1e-12), "T1 = %.12g", t1);
    ck_assert_msg(close_rel(t2, 0.076, 1e-12), "T2 = %.12g", t2);
    ck_assert_msg(close_rel(t0 + t1 + t2, 0.322, 1e-12), "two-level = %.12g", t0 + t1 + t2);
    ck_assert_msg(close_rel(flat, 0.085, 1e-12), "flat = %.12g", flat);
}
END_TEST

static Suite *projection_suite(void)
{
    Suite *s = suite_create("projection");
    TCase *tc = tcase_create("network");
    tcase_add_test(tc, test_network_good);
    tcase_add_loop_test(tc, test_network_bad, 0, (int)(sizeof bad_networks / sizeof *bad_networks));
    tcase_add_test(tc, test_network_missing_file);
    tcase_add_test(tc, test_network_shipped);
    tcase_add_test(tc, test_network_long_comment);
    suite_add_tcase(s, tc);
    tc = tcase_create("stage");
    tcase_add_test(tc, test_project_stage_hand);
    tcase_add_test(tc, test_project_stage_bandwidth_bound);
    suite_add_tcase(s, tc);
    tc = tcase_create("hier_schedule");
    tcase_add_test(tc, test_hier_schedule_two_nodes);
    tcase_add_test(tc, test_hier_schedule_interleaved_nodes);
    tcase_add_test(tc, test_hier_schedule_degenerate);
    tcase_add_test(tc, test_hier_schedule_random);
    tcase_add_test(tc, test_hier_projection_hand);
    tcase_add_test(tc, test_hier_schedule_nodes_hand);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(projection_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
