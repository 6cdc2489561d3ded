/* Unit tests of config: option parsing and shape resolution. */
#include "moesim/config.h"
#include "moesim/error.h"

#include <check.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* getopt permutes argv and the config keeps pointers into it, so argv is a writable copy that
 * outlives the call: static storage, rebuilt by each parse. */
enum { MAX_ARGS = 64 };
static char g_store[MAX_ARGS][256];
static char *g_argv[MAX_ARGS + 1];

/* Parse "moesim" followed by the given arguments (NULL-terminated) into cfg, after defaults. */
static int parse(moe_config *cfg, char *msg, size_t msglen, ...)
{
    va_list ap;
    va_start(ap, msglen);
    int argc = 0;
    strcpy(g_store[argc], "moesim");
    g_argv[argc] = g_store[argc];
    argc++;
    for (const char *a; (a = va_arg(ap, const char *)) != NULL; argc++) {
        ck_assert(argc < MAX_ARGS && strlen(a) < sizeof g_store[0]);
        strcpy(g_store[argc], a);
        g_argv[argc] = g_store[argc];
    }
    va_end(ap);
    g_argv[argc] = NULL;
    moe_config_defaults(cfg);
    msg[0] = '\0';
    return moe_config_parse(cfg, argc, g_argv, msg, msglen);
}

START_TEST(test_defaults)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert_int_eq(cfg.tokens, 8192);
    ck_assert_int_eq(cfg.hidden, 512);
    ck_assert_int_eq(cfg.ffn, 0);
    ck_assert_int_eq(cfg.experts, 8);
    ck_assert_int_eq(cfg.top_k, 2);
    ck_assert(cfg.capacity_factor == 1.25);
    ck_assert_int_eq(cfg.scope, MOE_SCOPE_GLOBAL);
    ck_assert_int_eq(cfg.policy, MOE_POLICY_POSITION);
    ck_assert(!cfg.renormalize && !cfg.pad_to_capacity && !cfg.quiet && !cfg.help && !cfg.version);
    ck_assert_uint_eq(cfg.seed, 1);
    ck_assert_int_eq(cfg.iters, 5);
    ck_assert_int_eq(cfg.warmup, 1);
    ck_assert(cfg.tokens_file == NULL && cfg.router_file == NULL && cfg.json_path == NULL &&
              cfg.dump_routing == NULL && cfg.dump_output == NULL);
    ck_assert(!cfg.set_tokens && !cfg.set_hidden && !cfg.set_experts);
    /* resolve with defaults: ffn = 2d */
    ck_assert_int_eq(moe_config_resolve(&cfg, 4, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(cfg.ffn, 1024);
}
END_TEST

START_TEST(test_every_option)
{
    moe_config cfg;
    char msg[512];
    int rc = parse(&cfg, msg, sizeof msg, "--tokens", "1000", "--hidden", "64", "--ffn", "96",
                   "--experts", "16", "--top-k", "4", "--capacity-factor", "0.75",
                   "--capacity-scope", "local", "--drop-policy", "position", "--renormalize",
                   "--pad-to-capacity", "--seed", "18446744073709551", "--iters", "7", "--warmup",
                   "0", "--tokens-file", "t.npy", "--router-file", "w.npy", "--json", "out.json",
                   "--dump-routing", "r.csv", "--dump-output", "y.npy", "--quiet", "--help",
                   "--version", NULL);
    ck_assert_msg(rc == MOE_OK, "rc %d: %s", rc, msg);
    ck_assert_int_eq(cfg.tokens, 1000);
    ck_assert_int_eq(cfg.hidden, 64);
    ck_assert_int_eq(cfg.ffn, 96);
    ck_assert_int_eq(cfg.experts, 16);
    ck_assert_int_eq(cfg.top_k, 4);
    ck_assert(cfg.capacity_factor == 0.75);
    ck_assert_int_eq(cfg.scope, MOE_SCOPE_LOCAL);
    ck_assert_int_eq(cfg.policy, MOE_POLICY_POSITION);
    ck_assert(cfg.renormalize && cfg.pad_to_capacity && cfg.quiet && cfg.help && cfg.version);
    ck_assert_uint_eq(cfg.seed, UINT64_C(18446744073709551));
    ck_assert_int_eq(cfg.iters, 7);
    ck_assert_int_eq(cfg.warmup, 0);
    ck_assert_str_eq(cfg.tokens_file, "t.npy");
    ck_assert_str_eq(cfg.router_file, "w.npy");
    ck_assert_str_eq(cfg.json_path, "out.json");
    ck_assert_str_eq(cfg.dump_routing, "r.csv");
    ck_assert_str_eq(cfg.dump_output, "y.npy");
    ck_assert(cfg.set_tokens && cfg.set_hidden && cfg.set_experts);
}
END_TEST

START_TEST(test_forms_and_repeats)
{
    moe_config cfg;
    char msg[512];
    /* --opt=value form, global scope spelled out, cf 0 (dropless), seed 0, limits inclusive. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens=77", "--capacity-factor=0",
                           "--capacity-scope=global", "--seed=0", "--experts", "65536", "--hidden",
                           "16777216", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.tokens, 77);
    ck_assert(cfg.capacity_factor == 0.0);
    ck_assert_int_eq(cfg.scope, MOE_SCOPE_GLOBAL);
    ck_assert_uint_eq(cfg.seed, 0);
    ck_assert_int_eq(cfg.experts, MOE_MAX_EXPERTS);
    ck_assert_int_eq(cfg.hidden, MOE_MAX_WIDTH);
    /* The last of a repeated option wins. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--top-k", "1", "--top-k", "3", NULL), MOE_OK);
    ck_assert_int_eq(cfg.top_k, 3);
    /* getopt state is reset between calls: a failure, then the same good line again. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--iters", "2", "--bogus", NULL), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--iters", "2", "--quiet", NULL), MOE_OK);
    ck_assert_int_eq(cfg.iters, 2);
    ck_assert(cfg.quiet);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--iters", "3", NULL), MOE_OK);
    ck_assert_int_eq(cfg.iters, 3);
    ck_assert(!cfg.quiet); /* fresh defaults from the helper, and no leftover state */
    /* An unknown short option inside a cluster stops getopt in the middle of an argument; with a
     * plain optind = 1 reset the next call would resume there. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "-qx", NULL), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "9", NULL), MOE_OK);
    ck_assert_int_eq(cfg.tokens, 9);
    /* Large counts and factors within range. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "1099511627776", "--capacity-factor",
                           "1e6", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.tokens, INT64_C(1) << 40);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--seed", "9223372036854775807", NULL), MOE_OK);
    ck_assert_uint_eq(cfg.seed, UINT64_C(9223372036854775807));
}
END_TEST

/* Command lines that must fail with MOE_EUSAGE and a message containing `names`. */
static const struct bad_line {
    const char *args[4];
    const char *names;
} bad_lines[] = {
    {{"--bogus"}, "--bogus"},
    {{"--bogus=3"}, "--bogus"},
    {{"-x"}, "-x"},
    {{"--tokens"}, "--tokens"},
    {{"--json"}, "--json"},
    {{"--tokens-file"}, "--tokens-file"},
    {{"--tokens", "abc"}, "--tokens"},
    {{"--tokens", "12x"}, "--tokens"},
    {{"--tokens", ""}, "--tokens"},
    {{"--tokens", "1.5"}, "--tokens"},
    {{"--tokens", "-5"}, "--tokens"},
    {{"--tokens", "0"}, "--tokens"},
    {{"--tokens", "1099511627777"}, "--tokens"},
    {{"--tokens", "99999999999999999999"}, "--tokens"},
    {{"--hidden", "-1"}, "--hidden"},
    {{"--hidden", "16777217"}, "--hidden"},
    {{"--ffn", "0"}, "--ffn"},
    {{"--experts", "0"}, "--experts"},
    {{"--experts", "65537"}, "--experts"},
    {{"--top-k", "0"}, "--top-k"},
    {{"--top-k", "two"}, "--top-k"},
    {{"--iters", "0"}, "--iters"},
    {{"--warmup", "-1"}, "--warmup"},
    {{"--seed", "-1"}, "--seed"},
    {{"--seed", "0x10"}, "--seed"},
    {{"--seed", "9223372036854775808"}, "--seed"}, /* documented range 0 ... 2^63 - 1 */
    {{"--capacity-factor", "-1"}, "--capacity-factor"},
    {{"--capacity-factor", "nan"}, "--capacity-factor"},
    {{"--capacity-factor", "inf"}, "--capacity-factor"},
    {{"--capacity-factor", "-inf"}, "--capacity-factor"},
    {{"--capacity-factor", "1e400"}, "--capacity-factor"},
    {{"--capacity-factor", "1e7"}, "--capacity-factor"},
    {{"--capacity-factor", "abc"}, "--capacity-factor"},
    {{"--capacity-factor", "1.5x"}, "--capacity-factor"},
    {{"--capacity-factor", ""}, "--capacity-factor"},
    {{"--capacity-scope", "regional"}, "--capacity-scope"},
    {{"--capacity-scope", "GLOBAL"}, "--capacity-scope"},
    {{"--drop-policy", "bogus"}, "--drop-policy"},
    {{"--quiet=1"}, "--quiet"},
    {{"stray"}, "stray"},
    {{"--tokens", "5", "stray"}, "stray"},
    {{"stray", "--tokens", "5"}, "stray"},
};

/* One refused command line: MOE_EUSAGE, and the message names b->names. */
static void expect_refused(const struct bad_line *b)
{
    moe_config cfg;
    char msg[512];
    int rc = parse(&cfg, msg, sizeof msg, b->args[0], b->args[1], b->args[2], b->args[3], NULL);
    ck_assert_msg(rc == MOE_EUSAGE, "'%s %s %s' gave %d (%s), expected MOE_EUSAGE",
                  b->args[0], b->args[1] ? b->args[1] : "", b->args[2] ? b->args[2] : "", rc, msg);
    ck_assert_msg(strstr(msg, b->names) != NULL, "'%s %s': message '%s' does not name '%s'",
                  b->args[0], b->args[1] ? b->args[1] : "", msg, b->names);
}

START_TEST(test_bad_lines)
{
    expect_refused(&bad_lines[_i]);
}
END_TEST

START_TEST(test_usage_lists_every_option)
{
    static const char *const opts[] = {"--tokens", "--hidden", "--ffn", "--experts", "--top-k",
                                       "--capacity-factor", "--capacity-scope", "--drop-policy",
                                       "--renormalize", "--pad-to-capacity", "--seed", "--iters",
                                       "--warmup", "--tokens-file", "--router-file", "--json",
                                       "--dump-routing", "--dump-output", "--quiet", "--help",
                                       "--version"};
    const char *u = moe_config_usage();
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++)
        ck_assert_msg(strstr(u, opts[i]) != NULL, "usage lacks %s", opts[i]);
}
END_TEST

/* ---- resolve ---- */

static moe_npy_header hdr(int64_t rows, int64_t cols)
{
    moe_npy_header h = {rows, cols, 4, 128};
    return h;
}

START_TEST(test_resolve_shapes)
{
    moe_config cfg;
    char msg[512];
    /* k > E */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "4", "--top-k", "5", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--top-k"));
    /* k = E is fine */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "4", "--top-k", "4", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 4, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* R > E */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "8", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 9, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--experts"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "8", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 8, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* ffn: default 2d, explicit kept */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hidden", "100", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(cfg.ffn, 200);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hidden", "100", "--ffn", "37", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(cfg.ffn, 37);
    /* --pad-to-capacity with cf 0 */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--pad-to-capacity", "--capacity-factor", "0", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--pad-to-capacity"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--pad-to-capacity", "--capacity-factor", "1", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* Rows per rank x k must fit an MPI int count. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "1099511627776", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 8, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert(msg[0] != '\0');
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "2147483648", "--top-k", "1", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "2147483648", "--top-k", "1", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
}
END_TEST

START_TEST(test_resolve_tokens_file)
{
    moe_config cfg;
    char msg[512];
    moe_npy_header th = hdr(100, 24);
    /* The file sets N and d (and so the ffn default). */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens-file", "h.npy", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &th, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(cfg.tokens, 100);
    ck_assert_int_eq(cfg.hidden, 24);
    ck_assert_int_eq(cfg.ffn, 48);
    /* Flags that agree are fine. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens-file", "h.npy", "--tokens", "100",
                           "--hidden", "24", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &th, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* Flags that disagree are errors naming the flag and the file. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens-file", "h.npy", "--tokens", "50", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &th, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--tokens ") && strstr(msg, "h.npy"), "message: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens-file", "h.npy", "--hidden", "32", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &th, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--hidden") && strstr(msg, "h.npy"), "message: %s", msg);
    /* The default --tokens 8192 and --hidden 512 were not given: no disagreement. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens-file", "h.npy", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, &th, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* A file whose rows are wider than MOE_MAX_WIDTH. */
    moe_npy_header wide = hdr(2, MOE_MAX_WIDTH + 1);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens-file", "h.npy", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, &wide, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
}
END_TEST

START_TEST(test_resolve_router_file)
{
    moe_config cfg;
    char msg[512];
    moe_npy_header wh = hdr(6, 512);
    /* E from the file. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 3, NULL, &wh, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(cfg.experts, 6);
    /* --experts that disagrees */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", "--experts", "4", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, &wh, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--experts") && strstr(msg, "w.npy"), "message: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", "--experts", "6", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, &wh, NULL, msg, sizeof msg), MOE_OK);
    /* columns that disagree with the hidden size, given or default */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", "--hidden", "64", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, &wh, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--router-file") && strstr(msg, "w.npy"), "message: %s", msg);
    /* with a tokens file: the router must match the file's d */
    moe_npy_header th = hdr(10, 24), wh24 = hdr(4, 24);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", "--tokens-file", "h.npy",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &th, &wh, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", "--tokens-file", "h.npy",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &th, &wh24, NULL, msg, sizeof msg), MOE_OK);
    ck_assert(cfg.experts == 4 && cfg.hidden == 24 && cfg.tokens == 10);
    /* The router file's E is then checked against k and R like a flag. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", "--tokens-file", "h.npy",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 5, &th, &wh24, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", "--tokens-file", "h.npy",
                           "--top-k", "5", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, &th, &wh24, NULL, msg, sizeof msg), MOE_EUSAGE);
    /* more experts than MOE_MAX_EXPERTS in the file */
    moe_npy_header many = hdr(MOE_MAX_EXPERTS + 1, 512);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, &many, NULL, msg, sizeof msg), MOE_EUSAGE);
}
END_TEST

/* Regression: the unknown-option message once quoted argv[optind - 1], which inside a cluster of
 * short options is the previous argument ("moesim -tokens 5", a single-dash typo that getopt_long
 * reads as -t -o -k ..., named the program). It must name the option. */
START_TEST(test_unknown_short_option_in_cluster_named)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "-tokens", "5", NULL), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "'-t") != NULL, "message does not name the option: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--quiet", "-qx", NULL), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "'-q") != NULL, "message does not name the option: %s", msg);
}
END_TEST

/* ---- the options of issue 4: capacity-factor lists, workloads, logits replay, prediction ---- */

START_TEST(test_new_option_defaults)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert_int_eq(cfg.n_cf, 1);
    ck_assert(cfg.cf_list[0] == 1.25 && cfg.capacity_factor == 1.25);
    ck_assert(cfg.skew == 0.0);
    ck_assert_int_eq(cfg.hot_experts, 0);
    ck_assert(cfg.hot_share == 0.5);
    ck_assert_int_eq(cfg.clusters, 0);
    ck_assert_ptr_null(cfg.logits_file);
    ck_assert(!cfg.predict_only && !cfg.set_hot_share);
    /* the defaults resolve */
    ck_assert_int_eq(moe_config_resolve(&cfg, 4, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
}
END_TEST

START_TEST(test_cf_list)
{
    moe_config cfg;
    char msg[512];
    /* Every value here is exact in binary, so the comparisons are exact. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--capacity-factor", "1.0,1.25,1.5,2.0", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.n_cf, 4);
    ck_assert(cfg.cf_list[0] == 1.0 && cfg.cf_list[1] == 1.25 && cfg.cf_list[2] == 1.5 &&
              cfg.cf_list[3] == 2.0);
    ck_assert(cfg.capacity_factor == 1.0); /* the first value */
    /* One value is a list of one. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--capacity-factor", "1.5", NULL), MOE_OK);
    ck_assert_int_eq(cfg.n_cf, 1);
    ck_assert(cfg.cf_list[0] == 1.5 && cfg.capacity_factor == 1.5);
    /* Order is kept (not sorted), repeats and 0 (dropless) are allowed, the = form works. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--capacity-factor=2,0,2,0.5", NULL), MOE_OK);
    ck_assert_int_eq(cfg.n_cf, 4);
    ck_assert(cfg.cf_list[0] == 2.0 && cfg.cf_list[1] == 0.0 && cfg.cf_list[2] == 2.0 &&
              cfg.cf_list[3] == 0.5);
    ck_assert(cfg.capacity_factor == 2.0);
    /* A repeated option replaces the whole list. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--capacity-factor", "1,2,3", "--capacity-factor",
                           "0.75", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.n_cf, 1);
    ck_assert(cfg.cf_list[0] == 0.75 && cfg.capacity_factor == 0.75);
    /* Exactly MOE_MAX_CF values are accepted; one more is refused, naming the option. */
    char list[256] = "";
    for (int i = 0; i < MOE_MAX_CF; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? "," : "", i + 1);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--capacity-factor", list, NULL), MOE_OK);
    ck_assert_int_eq(cfg.n_cf, MOE_MAX_CF);
    for (int i = 0; i < MOE_MAX_CF; i++)
        ck_assert(cfg.cf_list[i] == i + 1.0);
    strcat(list, ",17");
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--capacity-factor", list, NULL), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--capacity-factor") != NULL, "message: %s", msg);
}
END_TEST

/* New-option command lines that must fail with MOE_EUSAGE and a message naming the option. */
static const struct bad_line bad_new_lines[] = {
    {{"--capacity-factor", "1.0,"}, "--capacity-factor"},
    {{"--capacity-factor", ",1"}, "--capacity-factor"},
    {{"--capacity-factor", ","}, "--capacity-factor"},
    {{"--capacity-factor", "1.0,,2"}, "--capacity-factor"},
    {{"--capacity-factor", "1.0,abc"}, "--capacity-factor"},
    {{"--capacity-factor", "1,-1"}, "--capacity-factor"},
    {{"--capacity-factor", "1,nan"}, "--capacity-factor"},
    {{"--capacity-factor", "1,inf"}, "--capacity-factor"},
    {{"--capacity-factor", "1;2"}, "--capacity-factor"},
    {{"--capacity-factor", "1,2,1e7"}, "--capacity-factor"},
    {{"--skew", "-1"}, "--skew"},
    {{"--skew", "nan"}, "--skew"},
    {{"--skew", "inf"}, "--skew"},
    {{"--skew", "abc"}, "--skew"},
    {{"--skew", ""}, "--skew"},
    {{"--skew", "100.5"}, "--skew"}, /* docs/options.md: 0 ... 100 */
    {{"--skew"}, "--skew"},
    {{"--hot-experts", "-1"}, "--hot-experts"},
    {{"--hot-experts", "1.5"}, "--hot-experts"},
    {{"--hot-experts", "two"}, "--hot-experts"},
    {{"--hot-share", "0"}, "--hot-share"},
    {{"--hot-share", "1"}, "--hot-share"},
    {{"--hot-share", "1.5"}, "--hot-share"},
    {{"--hot-share", "-0.1"}, "--hot-share"},
    {{"--hot-share", "nan"}, "--hot-share"},
    {{"--hot-share", "half"}, "--hot-share"},
    {{"--clusters", "-1"}, "--clusters"},
    {{"--clusters", "x"}, "--clusters"},
    {{"--logits-file"}, "--logits-file"},
    {{"--predict-only=1"}, "--predict-only"},
};

START_TEST(test_bad_new_lines)
{
    expect_refused(&bad_new_lines[_i]);
}
END_TEST

START_TEST(test_new_options_accepted)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--skew", "0", NULL), MOE_OK);
    ck_assert(cfg.skew == 0.0);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--skew", "1.2", NULL), MOE_OK);
    ck_assert(cfg.skew == 1.2);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--skew=100", NULL), MOE_OK);
    ck_assert(cfg.skew == 100.0);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hot-experts", "0", NULL), MOE_OK);
    ck_assert_int_eq(cfg.hot_experts, 0);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hot-experts", "2", "--hot-share", "0.3", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.hot_experts, 2);
    ck_assert(cfg.hot_share == 0.3 && cfg.set_hot_share);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hot-experts", "2", NULL), MOE_OK);
    ck_assert(cfg.hot_share == 0.5 && !cfg.set_hot_share); /* the default share, not given */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--clusters", "0", NULL), MOE_OK);
    ck_assert_int_eq(cfg.clusters, 0);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--clusters", "16", NULL), MOE_OK);
    ck_assert_int_eq(cfg.clusters, 16);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", "--predict-only", NULL),
                     MOE_OK);
    ck_assert_str_eq(cfg.logits_file, "z.npy");
    ck_assert(cfg.predict_only);
}
END_TEST

START_TEST(test_dump_is_npy)
{
    ck_assert(moe_config_dump_is_npy("r.npy"));
    ck_assert(moe_config_dump_is_npy("/tmp/run.1/routing.npy"));
    ck_assert(!moe_config_dump_is_npy("r.csv"));
    ck_assert(!moe_config_dump_is_npy("r"));
    ck_assert(!moe_config_dump_is_npy("npy"));
    ck_assert(!moe_config_dump_is_npy(""));
    ck_assert(!moe_config_dump_is_npy("r.npy.csv"));
    ck_assert(!moe_config_dump_is_npy("dir.npy/r.csv"));
    ck_assert(!moe_config_dump_is_npy("rnpy"));
}
END_TEST

START_TEST(test_usage_lists_new_options)
{
    static const char *const opts[] = {"--skew", "--hot-experts", "--hot-share", "--clusters",
                                       "--logits-file", "--predict-only"};
    const char *u = moe_config_usage();
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++)
        ck_assert_msg(strstr(u, opts[i]) != NULL, "usage lacks %s", opts[i]);
    /* The list form of --capacity-factor is explained, not only the option named. */
    ck_assert_msg(strstr(u, "1.0,1.25") != NULL, "usage does not show a capacity-factor list");
}
END_TEST

START_TEST(test_resolve_logits_file)
{
    moe_config cfg;
    char msg[512];
    moe_npy_header lh = hdr(100, 6);
    /* The file sets N and E (the defaults 8192 and 8 were not given). */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 3, NULL, NULL, &lh, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(cfg.tokens, 100);
    ck_assert_int_eq(cfg.experts, 6);
    /* Flags that agree are fine. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", "--tokens", "100",
                           "--experts", "6", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 3, NULL, NULL, &lh, msg, sizeof msg), MOE_OK);
    /* --tokens or --experts that disagree: errors naming the file. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", "--tokens", "50", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 3, NULL, NULL, &lh, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "z.npy") != NULL, "message: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", "--experts", "8", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 3, NULL, NULL, &lh, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--experts") && strstr(msg, "z.npy"), "message: %s", msg);
    /* With a tokens file: its N must match the logits' rows. */
    moe_npy_header th100 = hdr(100, 24), th90 = hdr(90, 24);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", "--tokens-file", "h.npy",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &th100, NULL, &lh, msg, sizeof msg), MOE_OK);
    ck_assert(cfg.tokens == 100 && cfg.hidden == 24 && cfg.experts == 6);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", "--tokens-file", "h.npy",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &th90, NULL, &lh, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "z.npy") != NULL, "message: %s", msg);
    /* Not with a router file. */
    moe_npy_header wh = hdr(6, 512);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", "--router-file", "w.npy",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, &wh, &lh, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--router-file") && strstr(msg, "--logits-file"), "message: %s", msg);
    /* The file's E is then checked against k, R and the hot experts like a flag. */
    moe_npy_header narrow = hdr(100, 2);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, &narrow, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 3, NULL, NULL, &narrow, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", "--top-k", "3", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, &narrow, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", "--hot-experts", "2",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, &narrow, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--hot-experts") != NULL, "message: %s", msg);
    /* More experts than MOE_MAX_EXPERTS in the file. */
    moe_npy_header many = hdr(100, MOE_MAX_EXPERTS + 1);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--logits-file", "z.npy", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, &many, msg, sizeof msg), MOE_EUSAGE);
}
END_TEST

START_TEST(test_resolve_workload_options)
{
    moe_config cfg;
    char msg[512];
    /* --hot-experts must leave a cold expert: N < E. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "8", "--hot-experts", "7", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "8", "--hot-experts", "8", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--hot-experts") != NULL, "message: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hot-experts", "9", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    /* The router file's E counts too. */
    moe_npy_header wh = hdr(4, 512);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", "--hot-experts", "4",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, &wh, NULL, msg, sizeof msg), MOE_EUSAGE);
    /* --hot-share needs --hot-experts. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hot-share", "0.3", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--hot-share") && strstr(msg, "--hot-experts"), "message: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hot-share", "0.3", "--hot-experts", "0", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hot-share", "0.3", "--hot-experts", "1", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* --clusters shapes generated tokens: not with a tokens file (0, off, is fine). */
    moe_npy_header th = hdr(100, 24);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--clusters", "4", "--tokens-file", "h.npy", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, &th, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--clusters") && strstr(msg, "--tokens-file"), "message: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--clusters", "0", "--tokens-file", "h.npy", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, &th, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--clusters", "4", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* --skew with anything resolves. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--skew", "1.2", "--hot-experts", "1", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
}
END_TEST

START_TEST(test_resolve_cf_list)
{
    moe_config cfg;
    char msg[512];
    /* --pad-to-capacity needs every listed cf to have a capacity. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--pad-to-capacity", "--capacity-factor",
                           "1.0,1.25,0", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--pad-to-capacity") != NULL, "message: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--pad-to-capacity", "--capacity-factor",
                           "1.0,1.25,2", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* Without padding, a 0 in the list (a dropless row of the ablation) is fine. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--capacity-factor", "0,1", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 1, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
}
END_TEST

START_TEST(test_resolve_dump_routing_form)
{
    moe_config cfg;
    char msg[512];
    /* CSV gathers N k records, the .npy form N rows of logits: each has its own limit. 2^30 tokens
     * with k = 2 is 2^31 assignments, too many for CSV, fine for .npy. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "1073741824", "--dump-routing", "r.csv",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--dump-routing") != NULL, "message: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "1073741824", "--dump-routing", "r.npy",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* 2^31 tokens are too many for either. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "2147483648", "--top-k", "1",
                           "--dump-routing", "r.npy", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--dump-routing") != NULL, "message: %s", msg);
}
END_TEST

/* ---- the options of issue 5: exchange mode, node grouping, topology, network ---- */

START_TEST(test_topology_option_defaults)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert(!cfg.hierarchical);          /* --a2a flat */
    ck_assert_int_eq(cfg.ranks_per_node, 0); /* real nodes */
    ck_assert_ptr_null(cfg.topology);      /* this machine */
    ck_assert_ptr_null(cfg.network);       /* no projection */
}
END_TEST

START_TEST(test_topology_options_parsed)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--a2a", "hierarchical", NULL), MOE_OK);
    ck_assert(cfg.hierarchical);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--a2a", "flat", NULL), MOE_OK);
    ck_assert(!cfg.hierarchical);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--a2a=hierarchical", NULL), MOE_OK);
    ck_assert(cfg.hierarchical);
    /* the last one wins, both ways */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--a2a", "hierarchical", "--a2a", "flat", NULL),
                     MOE_OK);
    ck_assert(!cfg.hierarchical);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--a2a", "flat", "--a2a", "hierarchical", NULL),
                     MOE_OK);
    ck_assert(cfg.hierarchical);

    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--ranks-per-node", "2", NULL), MOE_OK);
    ck_assert_int_eq(cfg.ranks_per_node, 2);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--ranks-per-node=1", NULL), MOE_OK);
    ck_assert_int_eq(cfg.ranks_per_node, 1);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--ranks-per-node", "1048576", NULL), MOE_OK);
    ck_assert_int_eq(cfg.ranks_per_node, 1 << 20);

    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--topology", "package:2 numa:2 core:4 pu:1",
                           NULL),
                     MOE_OK);
    ck_assert_str_eq(cfg.topology, "package:2 numa:2 core:4 pu:1");
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--topology=/data/m.xml", NULL), MOE_OK);
    ck_assert_str_eq(cfg.topology, "/data/m.xml");

    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--network", "launch/laptop.network", NULL),
                     MOE_OK);
    ck_assert_str_eq(cfg.network, "launch/laptop.network");

    /* all four together, and they leave the other options alone */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--a2a", "hierarchical", "--ranks-per-node", "8",
                           "--topology", "m.xml", "--network", "n.network", "--tokens", "64", NULL),
                     MOE_OK);
    ck_assert(cfg.hierarchical);
    ck_assert_int_eq(cfg.ranks_per_node, 8);
    ck_assert_str_eq(cfg.topology, "m.xml");
    ck_assert_str_eq(cfg.network, "n.network");
    ck_assert_int_eq(cfg.tokens, 64);
    ck_assert_int_eq(cfg.experts, 8);
    /* they resolve (--ranks-per-node larger than R is one node, not an error) */
    ck_assert_int_eq(moe_config_resolve(&cfg, 4, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
}
END_TEST

/* Lines with the new options that must fail with MOE_EUSAGE and a message containing `names`. */
static const struct bad_line bad_topology_lines[] = {
    {{"--a2a", "bogus"}, "--a2a"},
    {{"--a2a", "bogus"}, "bogus"},
    {{"--a2a", ""}, "--a2a"},
    {{"--a2a", "Flat"}, "--a2a"},
    {{"--a2a", "HIERARCHICAL"}, "--a2a"},
    {{"--a2a", "hier"}, "--a2a"},
    {{"--a2a"}, "--a2a"},
    {{"--ranks-per-node", "0"}, "--ranks-per-node"},
    {{"--ranks-per-node", "abc"}, "--ranks-per-node"},
    {{"--ranks-per-node", "abc"}, "abc"},
    {{"--ranks-per-node", "-1"}, "--ranks-per-node"},
    {{"--ranks-per-node", "1.5"}, "--ranks-per-node"},
    {{"--ranks-per-node", ""}, "--ranks-per-node"},
    {{"--ranks-per-node", "2x"}, "--ranks-per-node"},
    {{"--ranks-per-node", "99999999999999999999"}, "--ranks-per-node"},
    {{"--ranks-per-node"}, "--ranks-per-node"},
    {{"--topology", ""}, "--topology"},
    {{"--topology"}, "--topology"},
    {{"--network"}, "--network"},
};

START_TEST(test_bad_topology_lines)
{
    expect_refused(&bad_topology_lines[_i]);
}
END_TEST

START_TEST(test_usage_lists_topology_options)
{
    static const char *const opts[] = {"--a2a", "--ranks-per-node", "--topology", "--network",
                                       "flat", "hierarchical", "package:2 numa:2 core:4 pu:1"};
    const char *u = moe_config_usage();
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++)
        ck_assert_msg(strstr(u, opts[i]) != NULL, "usage lacks %s", opts[i]);
}
END_TEST

/* ---- whole option names (getopt_long's abbreviations refused), --max-memory ---- */

/* A line refused with MOE_EUSAGE whose message holds every `want` and none of `unwanted`. */
static const struct name_line {
    const char *args[4];
    const char *want[5];
    const char *unwanted[2];
} bad_name_lines[] = {
    /* an abbreviation of one option: named, with the whole name suggested */
    {{"--hid=16"}, {"'--hid'", "--hidden", "whole"}, {"=16"}},
    /* --expert and --exp abbreviate --experts and --expert-bias-file: both listed, the nearest
     * suggested */
    {{"--expert", "16"}, {"'--expert'", "--expert-bias-file", "whole", "did you mean --experts?"},
     {NULL}},
    {{"--exp", "4"}, {"'--exp'", "several", "did you mean --experts?"}, {NULL}},
    {{"--tokens-fil", "t.npy"}, {"--tokens-file", "did you mean"}, {NULL}},
    {{"--ver"}, {"--version", "did you mean"}, {NULL}},
    {{"--max-mem", "8G"}, {"--max-memory", "did you mean"}, {NULL}},
    /* an abbreviation of several: every one listed */
    {{"--capacity=1"},
     {"'--capacity'", "--capacity-factor", "--capacity-scope", "several"},
     {NULL}},
    {{"--to", "4"}, {"--tokens", "--top-k", "--tokens-file", "--topology"}, {NULL}},
    {{"--hot", "1"}, {"--hot-experts", "--hot-share", "several"}, {NULL}},
    {{"--d", "x"}, {"--drop-policy", "--dump-routing", "--dump-output"}, {NULL}},
    {{"--r", "x"}, {"--renormalize", "--router-file", "--ranks-per-node"}, {NULL}},
    /* not a prefix: the nearest name by edit distance, when it is near */
    {{"--experst", "4"}, {"'--experst'", "did you mean --experts"}, {NULL}},
    {{"--tokens-files", "x"}, {"did you mean --tokens-file"}, {NULL}},
    {{"--renormalise"}, {"did you mean --renormalize"}, {NULL}},
    {{"--Tokens", "5"}, {"did you mean --tokens"}, {NULL}},
    {{"--zzzzzz"}, {"'--zzzzzz'"}, {"did you mean", "several"}},
    {{"--frobnicate-widgets", "3"}, {"'--frobnicate-widgets'"}, {"did you mean", "several"}},
    /* found wherever it sits: after a flag, after an option=value, after a value */
    {{"--quiet", "--expert", "2"}, {"'--expert'", "--experts"}, {NULL}},
    {{"--json=x", "--expert", "2"}, {"'--expert'", "--experts"}, {NULL}},
    {{"--tokens", "5", "--hid", "3"}, {"'--hid'", "--hidden"}, {NULL}},
    /* prefix relations of the issue 9 names: groups, shared experts, presets, routing, aliases */
    {{"--expert", "16"}, {"--expert-groups", "did you mean --experts?"}, {NULL}},
    {{"--expert-g", "8"}, {"'--expert-g'", "did you mean --expert-groups?"}, {NULL}},
    {{"--shared", "1"}, {"'--shared'", "--shared-experts", "--shared-ffn", "several"}, {NULL}},
    {{"--shared-", "1"}, {"--shared-experts", "--shared-ffn"}, {NULL}},
    {{"--pre", "x"}, {"--preset", "--predict-only", "several"}, {NULL}},
    {{"--rout", "x"}, {"--router-file", "--routing", "did you mean --routing?"}, {NULL}},
    {{"--route", "x"}, {"did you mean --router-file?"}, {"several"}},
    {{"--group", "2"}, {"did you mean --group-top-k?"}, {NULL}},
    {{"--noisy"}, {"did you mean --noisy-top-k?"}, {NULL}},
    {{"--num", "8"}, {"did you mean --num-experts?"}, {NULL}},
    {{"--moe-router-top", "2"},
     {"--moe-router-topk,", "--moe-router-topk-scaling-factor", "did you mean --moe-router-topk?"},
     {NULL}},
    {{"--moe-router", "2"}, {"--moe-router-num-groups", "--moe-router-score-function"}, {NULL}},
    {{"--moe-shared", "64"}, {"did you mean --moe-shared-expert-intermediate-size?"}, {NULL}},
    /* a name plus a suffix suggests the name, unless another is nearer */
    {{"--experts-groups", "8"}, {"did you mean --expert-groups?"}, {NULL}},
    {{"--routing-mode", "x"}, {"did you mean --routing?"}, {NULL}},
    {{"--a2a-mode", "flat"}, {"did you mean --a2a?"}, {NULL}},
    {{"--num-experts-total", "8"}, {"did you mean --num-experts?"}, {NULL}},
    /* "--" ends the options: what follows is an argument, refused as such */
    {{"--", "--expert", "2"}, {"unexpected argument '--expert'"}, {NULL}},
};

START_TEST(test_whole_names_refused)
{
    const struct name_line *b = &bad_name_lines[_i];
    moe_config cfg;
    char msg[512];
    int rc = parse(&cfg, msg, sizeof msg, b->args[0], b->args[1], b->args[2], b->args[3], NULL);
    ck_assert_msg(rc == MOE_EUSAGE, "'%s %s' gave %d (%s), expected MOE_EUSAGE", b->args[0],
                  b->args[1] ? b->args[1] : "", rc, msg);
    for (int w = 0; w < 5 && b->want[w] != NULL; w++)
        ck_assert_msg(strstr(msg, b->want[w]) != NULL, "'%s %s': message '%s' lacks '%s'",
                      b->args[0], b->args[1] ? b->args[1] : "", msg, b->want[w]);
    for (int w = 0; w < 2 && b->unwanted[w] != NULL; w++)
        ck_assert_msg(strstr(msg, b->unwanted[w]) == NULL, "'%s %s': message '%s' has '%s'",
                      b->args[0], b->args[1] ? b->args[1] : "", msg, b->unwanted[w]);
}
END_TEST

START_TEST(test_whole_names_accepted)
{
    moe_config cfg;
    char msg[512];
    /* the value of an option that takes one is not an option, whatever it looks like */
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--json", "--x", NULL) == MOE_OK, "%s", msg);
    ck_assert_str_eq(cfg.json_path, "--x");
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--tokens-file", "--expert", "--network", "--zzz",
                        NULL) == MOE_OK,
                  "%s", msg);
    ck_assert_str_eq(cfg.tokens_file, "--expert");
    ck_assert_str_eq(cfg.network, "--zzz");
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--json", "--json", "--dump-output", "--json",
                        NULL) == MOE_OK,
                  "%s", msg);
    ck_assert_str_eq(cfg.json_path, "--json");
    ck_assert_str_eq(cfg.dump_output, "--json");
    /* whole names with '=' */
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--hidden=16", "--experts=16", "--top-k=3",
                        "--capacity-factor=1.0,2.0", NULL) == MOE_OK,
                  "%s", msg);
    ck_assert_int_eq(cfg.hidden, 16);
    ck_assert_int_eq(cfg.experts, 16);
    ck_assert_int_eq(cfg.top_k, 3);
    ck_assert_int_eq(cfg.n_cf, 2);
    /* a whole name that is also the prefix of another (--tokens, --tokens-file) is that option */
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--tokens", "9", "--tokens-file", "t.npy", NULL) ==
                      MOE_OK,
                  "%s", msg);
    ck_assert_int_eq(cfg.tokens, 9);
    ck_assert_str_eq(cfg.tokens_file, "t.npy");
    /* an abbreviation refused, then the whole name accepted: no state carried over */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--expert", "16", NULL), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "16", NULL), MOE_OK);
    ck_assert_int_eq(cfg.experts, 16);
}
END_TEST

START_TEST(test_max_memory_option)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert_int_eq(cfg.max_memory, 0); /* default: the node's MemAvailable */
    ck_assert(cfg.max_memory_percent == 0.0);
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--max-memory", "8G", NULL) == MOE_OK, "%s", msg);
    ck_assert_int_eq(cfg.max_memory, INT64_C(8) << 30);
    ck_assert(cfg.max_memory_percent == 0.0);
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--max-memory=512MiB", NULL) == MOE_OK, "%s", msg);
    ck_assert_int_eq(cfg.max_memory, INT64_C(512) << 20);
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--max-memory", "50%", NULL) == MOE_OK, "%s", msg);
    ck_assert(cfg.max_memory_percent == 50.0);
    ck_assert_int_eq(cfg.max_memory, 0);
    /* the last one given wins, and replaces the other form */
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--max-memory", "50%", "--max-memory", "1T", NULL) ==
                      MOE_OK,
                  "%s", msg);
    ck_assert_int_eq(cfg.max_memory, INT64_C(1) << 40);
    ck_assert(cfg.max_memory_percent == 0.0);
    static const char *const bad[] = {"0", "-1", "abc", "5X", "", " 5", "1e30", "101%", "0%"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        msg[0] = '\0';
        int rc = parse(&cfg, msg, sizeof msg, "--max-memory", bad[i], NULL);
        ck_assert_msg(rc == MOE_EUSAGE, "--max-memory '%s' gave %d", bad[i], rc);
        ck_assert_msg(strstr(msg, "--max-memory") != NULL, "'%s': message %s", bad[i], msg);
    }
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--max-memory", NULL), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--max-memory"));
}
END_TEST

/* The long options as of this writing (src/config.c's long_options, which is static: this list is
 * copied from it). The test below does not rely on it alone: it reads the table back through the
 * parser, and checks this list against what it read, so that a broken reading cannot pass. */
static const char *const known_options[] = {
    "tokens", "hidden", "ffn", "experts", "top-k", "capacity-factor", "capacity-scope",
    "drop-policy", "renormalize", "pad-to-capacity", "seed", "iters", "warmup", "tokens-file",
    "router-file", "json", "dump-routing", "dump-output", "quiet", "skew", "hot-experts",
    "hot-share", "clusters", "logits-file", "predict-only", "topology", "ranks-per-node", "a2a",
    "network", "max-memory", "score", "expert-bias-file", "topk-scale", "min-capacity", "routing",
    "expert-groups", "group-top-k", "shared-experts", "shared-ffn", "noisy-top-k", "input-jitter",
    "preset", "num-experts", "moe-router-topk", "moe-expert-capacity-factor",
    "moe-token-drop-policy", "moe-router-score-function", "moe-router-num-groups",
    "moe-router-group-topk", "moe-router-topk-scaling-factor",
    "moe-shared-expert-intermediate-size", "moe-pad-expert-input-to-capacity",
    "moe-input-jitter-eps", "help", "version"};

static int is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* Whether text mentions "--name" as a whole word (not as the start of a longer option). */
static int mentions(const char *text, const char *name)
{
    char opt[80];
    if (snprintf(opt, sizeof opt, "--%s", name) >= (int)sizeof opt)
        return 0;
    for (const char *p = text; (p = strstr(p, opt)) != NULL; p += strlen(opt))
        if (!is_name_char(p[strlen(opt)]))
            return 1;
    return 0;
}

START_TEST(test_usage_lists_every_table_option)
{
    /* Read the option table back: "--c" for each first character c abbreviates every option that
     * begins with c, and the refusal lists them all ("did you mean --a2a?" for one, "it
     * abbreviates several options (--tokens, --top-k, ...)" for more). */
    enum { MAX_FOUND = 128 };
    static char found[MAX_FOUND][64];
    int n_found = 0;
    const char *firsts = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (const char *c = firsts; *c; c++) {
        char arg[4] = {'-', '-', *c, '\0'};
        moe_config cfg;
        char msg[1024];
        if (parse(&cfg, msg, sizeof msg, arg, "1", NULL) == MOE_OK) { /* a one-letter option */
            ck_assert_int_lt(n_found, MAX_FOUND);
            snprintf(found[n_found++], sizeof found[0], "%c", *c);
            continue;
        }
        for (const char *p = msg; (p = strstr(p, "--")) != NULL;) {
            p += 2;
            size_t len = 0;
            while (is_name_char(p[len]))
                len++;
            if (len > 1 && p[0] == *c && len < sizeof found[0]) {
                int seen = 0;
                for (int i = 0; i < n_found; i++)
                    seen |= strlen(found[i]) == len && strncmp(found[i], p, len) == 0;
                if (!seen) {
                    ck_assert_int_lt(n_found, MAX_FOUND);
                    snprintf(found[n_found++], sizeof found[0], "%.*s", (int)len, p);
                }
            }
            p += len;
        }
    }
    /* the reading found at least the options known today (and each one is a real option) */
    for (size_t i = 0; i < sizeof known_options / sizeof *known_options; i++) {
        int seen = 0;
        for (int j = 0; j < n_found; j++)
            seen |= strcmp(found[j], known_options[i]) == 0;
        ck_assert_msg(seen, "--%s not found by reading the option table back", known_options[i]);
    }
    const char *u = moe_config_usage();
    for (int i = 0; i < n_found; i++) {
        ck_assert_msg(mentions(u, found[i]), "--help does not mention --%s", found[i]);
        /* every name read back is accepted whole (with a value when it needs one) */
        moe_config cfg;
        char msg[1024], opt[80];
        ck_assert_int_lt(snprintf(opt, sizeof opt, "--%s", found[i]), (int)sizeof opt);
        int rc = parse(&cfg, msg, sizeof msg, opt, NULL);
        ck_assert_msg(strstr(msg, "unknown option") == NULL, "%s: %s (rc %d)", opt, msg, rc);
    }
    ck_assert_int_ge(n_found, (int)(sizeof known_options / sizeof *known_options));
}
END_TEST

/* ---- issue 9: --score, --expert-bias-file, --topk-scale, --min-capacity ---- */

START_TEST(test_router_option_defaults)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert_int_eq(cfg.score, MOE_SCORE_SOFTMAX);
    ck_assert(cfg.topk_scale == 1.0);
    ck_assert_int_eq(cfg.min_capacity, 0);
    ck_assert_ptr_null(cfg.expert_bias_file);
    ck_assert_str_eq(moe_score_name(MOE_SCORE_SOFTMAX), "softmax");
    ck_assert_str_eq(moe_score_name(MOE_SCORE_SIGMOID), "sigmoid");
}
END_TEST

START_TEST(test_router_options_parsed)
{
    moe_config cfg;
    char msg[512];
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--score", "sigmoid", "--expert-bias-file",
                        "b.npy", "--topk-scale", "2.5", "--min-capacity", "4", NULL) == MOE_OK,
                  "%s", msg);
    ck_assert_int_eq(cfg.score, MOE_SCORE_SIGMOID);
    ck_assert_str_eq(cfg.expert_bias_file, "b.npy");
    ck_assert(cfg.topk_scale == 2.5);
    ck_assert_int_eq(cfg.min_capacity, 4);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* the = form, the other score, the limits inclusive, the last one given wins */
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--score=sigmoid", "--score=softmax",
                        "--topk-scale=1e6", "--min-capacity=1099511627776", NULL) == MOE_OK,
                  "%s", msg);
    ck_assert_int_eq(cfg.score, MOE_SCORE_SOFTMAX);
    ck_assert(cfg.topk_scale == 1e6);
    ck_assert_int_eq(cfg.min_capacity, INT64_C(1) << 40);
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--topk-scale", "1e-30", "--min-capacity", "0",
                        NULL) == MOE_OK,
                  "%s", msg);
    ck_assert(cfg.topk_scale == 1e-30);
    ck_assert_int_eq(cfg.min_capacity, 0);
    /* the bias file is a file name, whatever it looks like */
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--expert-bias-file", "--topk-scale", NULL) ==
                      MOE_OK,
                  "%s", msg);
    ck_assert_str_eq(cfg.expert_bias_file, "--topk-scale");
    ck_assert(cfg.topk_scale == 1.0);
}
END_TEST

/* Each new option's bad values: MOE_EUSAGE and a message naming the option. */
static const struct bad_line bad_router_lines[] = {
    {{"--score"}, "--score"},
    {{"--score", "tanh"}, "--score"},
    {{"--score", "Sigmoid"}, "--score"},
    {{"--score", ""}, "--score"},
    {{"--topk-scale"}, "--topk-scale"},
    {{"--topk-scale", "0"}, "--topk-scale"},
    {{"--topk-scale", "-0"}, "--topk-scale"},
    {{"--topk-scale", "-2.5"}, "--topk-scale"},
    {{"--topk-scale", "nan"}, "--topk-scale"},
    {{"--topk-scale", "inf"}, "--topk-scale"},
    {{"--topk-scale", "1e400"}, "--topk-scale"},
    {{"--topk-scale", "1e7"}, "--topk-scale"},
    {{"--topk-scale", "2.5x"}, "--topk-scale"},
    {{"--topk-scale", ""}, "--topk-scale"},
    {{"--min-capacity"}, "--min-capacity"},
    {{"--min-capacity", "-1"}, "--min-capacity"},
    {{"--min-capacity", "1.5"}, "--min-capacity"},
    {{"--min-capacity", "four"}, "--min-capacity"},
    {{"--min-capacity", "1099511627777"}, "--min-capacity"},
    {{"--min-capacity", ""}, "--min-capacity"},
    {{"--expert-bias-file"}, "--expert-bias-file"},
    {{"--expert-bias-file", ""}, "--expert-bias-file"},
    /* whole names only: the nearest name is suggested */
    {{"--sco", "sigmoid"}, "--score"},
    {{"--topk", "2"}, "--topk-scale"},
    {{"--min-cap", "4"}, "--min-capacity"},
    /* --expert-bias is a flag of its own: a file after it is pointed to --expert-bias-file */
    {{"--expert-bias", "b.npy"}, "--expert-bias-file PATH"},
};

START_TEST(test_bad_router_lines)
{
    expect_refused(&bad_router_lines[_i]);
}
END_TEST

START_TEST(test_resolve_min_capacity)
{
    moe_config cfg;
    char msg[512];
    /* a floor needs a capacity: refused when every cf is 0, named with the reason */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--min-capacity", "4", "--capacity-factor", "0",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--min-capacity") && strstr(msg, "dropless"), "message: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--min-capacity", "4", "--capacity-factor",
                           "0,0", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    /* a list with one capacity is fine (the floor applies to that value), and 0 is no floor */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--min-capacity", "4", "--capacity-factor",
                           "0,1.0", NULL),
                     MOE_OK);
    ck_assert_msg(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg) == MOE_OK, "%s",
                  msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--min-capacity", "0", "--capacity-factor", "0",
                           NULL),
                     MOE_OK);
    ck_assert_msg(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg) == MOE_OK, "%s",
                  msg);
    /* with the default cf 1.25 */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--min-capacity", "1000000", NULL), MOE_OK);
    ck_assert_msg(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg) == MOE_OK, "%s",
                  msg);
}
END_TEST

START_TEST(test_usage_lists_router_options)
{
    static const char *const opts[] = {"--score", "softmax", "sigmoid", "--expert-bias-file",
                                       "--topk-scale", "--min-capacity", "min_capacity", "2.5"};
    const char *u = moe_config_usage();
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++)
        ck_assert_msg(strstr(u, opts[i]) != NULL, "usage lacks %s", opts[i]);
}
END_TEST

/* ---- issue 9: drop policies, routing, expert groups, shared experts, noise, presets, Megatron-Core
 * names ---- */

/* resolve at R ranks without files; the message is left in msg */
static int resolve_at(moe_config *cfg, int R, char *msg, size_t msglen)
{
    return moe_config_resolve(cfg, R, NULL, NULL, NULL, msg, msglen);
}

START_TEST(test_layer_option_defaults)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert_int_eq(cfg.routing, MOE_ROUTING_TOKEN_CHOICE);
    ck_assert_int_eq(cfg.expert_groups, 0);
    ck_assert_int_eq(cfg.group_top_k, 0);
    ck_assert_int_eq(cfg.shared_experts, 0);
    ck_assert_int_eq(cfg.shared_ffn, 0);
    ck_assert(!cfg.noisy_top_k);
    ck_assert(cfg.input_jitter == 0.0);
    ck_assert_ptr_null(cfg.preset);
    ck_assert_str_eq(cfg.preset_set, "");
    ck_assert(!cfg.set_ffn && !cfg.set_top_k && !cfg.set_cf && !cfg.set_policy && !cfg.set_score &&
              !cfg.set_renormalize && !cfg.set_topk_scale && !cfg.set_routing &&
              !cfg.set_expert_groups && !cfg.set_group_top_k && !cfg.set_shared_experts &&
              !cfg.set_shared_ffn);
    ck_assert_str_eq(cfg.spelled.experts, "experts");
    ck_assert_str_eq(cfg.spelled.top_k, "top-k");
    ck_assert_str_eq(cfg.spelled.capacity_factor, "capacity-factor");
    ck_assert_str_eq(cfg.spelled.policy, "drop-policy");
    ck_assert_str_eq(cfg.spelled.score, "score");
    ck_assert_str_eq(cfg.spelled.topk_scale, "topk-scale");
    ck_assert_str_eq(cfg.spelled.expert_groups, "expert-groups");
    ck_assert_str_eq(cfg.spelled.group_top_k, "group-top-k");
    ck_assert_str_eq(cfg.spelled.shared_experts, "shared-experts");
    ck_assert_str_eq(cfg.spelled.shared_ffn, "shared-ffn");
    ck_assert_str_eq(cfg.spelled.pad_to_capacity, "pad-to-capacity");
    ck_assert_str_eq(cfg.spelled.input_jitter, "input-jitter");
    /* the defaults resolve, and leave the new fields off */
    ck_assert_int_eq(resolve_at(&cfg, 4, msg, sizeof msg), MOE_OK);
    ck_assert(cfg.expert_groups == 0 && cfg.group_top_k == 0 && cfg.shared_experts == 0 &&
              cfg.shared_ffn == 0 && cfg.policy == MOE_POLICY_POSITION);
}
END_TEST

START_TEST(test_layer_options_parsed)
{
    moe_config cfg;
    char msg[512];
    static const char *const policies[] = {"position", "probs", "choice", "random", "reroute"};
    static const moe_policy values[] = {MOE_POLICY_POSITION, MOE_POLICY_PROBS, MOE_POLICY_CHOICE,
                                        MOE_POLICY_RANDOM, MOE_POLICY_REROUTE};
    for (int i = 0; i < 5; i++) {
        ck_assert_msg(parse(&cfg, msg, sizeof msg, "--drop-policy", policies[i], NULL) == MOE_OK,
                      "%s: %s", policies[i], msg);
        ck_assert_int_eq(cfg.policy, values[i]);
        ck_assert(cfg.set_policy);
        ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s: %s", policies[i], msg);
    }
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--routing", "expert-choice", NULL), MOE_OK);
    ck_assert_int_eq(cfg.routing, MOE_ROUTING_EXPERT_CHOICE);
    ck_assert(cfg.set_routing);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--routing=expert-choice", "--routing",
                           "token-choice", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.routing, MOE_ROUTING_TOKEN_CHOICE); /* the last one wins */
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--expert-groups", "4", "--group-top-k=2",
                        "--shared-experts", "2", "--shared-ffn", "64", "--noisy-top-k",
                        "--input-jitter", "0.01", NULL) == MOE_OK,
                  "%s", msg);
    ck_assert_int_eq(cfg.expert_groups, 4);
    ck_assert_int_eq(cfg.group_top_k, 2);
    ck_assert_int_eq(cfg.shared_experts, 2);
    ck_assert_int_eq(cfg.shared_ffn, 64);
    ck_assert(cfg.noisy_top_k);
    ck_assert(cfg.input_jitter == 0.01);
    ck_assert(cfg.set_expert_groups && cfg.set_group_top_k && cfg.set_shared_experts &&
              cfg.set_shared_ffn);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert_int_eq(cfg.shared_ffn, 64);
    /* the limits, inclusive */
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--shared-experts", "1024", "--shared-ffn",
                        "16777216", "--input-jitter", "0.999", "--expert-groups", "65536",
                        "--group-top-k", "65536", NULL) == MOE_OK,
                  "%s", msg);
    ck_assert(cfg.shared_experts == 1024 && cfg.shared_ffn == MOE_MAX_WIDTH &&
              cfg.input_jitter == 0.999 && cfg.expert_groups == MOE_MAX_EXPERTS &&
              cfg.group_top_k == MOE_MAX_EXPERTS);
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--shared-experts", "0", "--input-jitter", "0",
                        "--expert-groups", "1", "--group-top-k", "1", NULL) == MOE_OK,
                  "%s", msg);
    ck_assert(cfg.shared_experts == 0 && cfg.set_shared_experts && cfg.input_jitter == 0.0);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    /* the explicit-option flags of the preset's fields */
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--ffn", "8", "--top-k", "1", "--capacity-factor",
                        "1", "--score", "softmax", "--renormalize", "--topk-scale", "1", NULL) ==
                      MOE_OK,
                  "%s", msg);
    ck_assert(cfg.set_ffn && cfg.set_top_k && cfg.set_cf && cfg.set_score && cfg.set_renormalize &&
              cfg.set_topk_scale && !cfg.set_policy && !cfg.set_experts);
}
END_TEST

/* The new options' bad values (and their Megatron-Core names'): MOE_EUSAGE naming the option. */
static const struct bad_line bad_layer_lines[] = {
    {{"--drop-policy", "bogus"}, "--drop-policy"},
    {{"--drop-policy", "Probs"}, "'reroute'"}, /* the choices are listed */
    {{"--drop-policy", ""}, "--drop-policy"},
    {{"--drop-policy"}, "--drop-policy"},
    {{"--routing", "expert"}, "--routing"},
    {{"--routing", "token_choice"}, "'token-choice' or 'expert-choice'"},
    {{"--routing"}, "--routing"},
    {{"--expert-groups", "0"}, "--expert-groups"},
    {{"--expert-groups", "-2"}, "--expert-groups"},
    {{"--expert-groups", "4x"}, "--expert-groups"},
    {{"--expert-groups", "65537"}, "--expert-groups"},
    {{"--group-top-k", "-1"}, "--group-top-k"},
    {{"--group-top-k", "two"}, "--group-top-k"},
    {{"--group-top-k"}, "--group-top-k"},
    {{"--shared-experts", "-1"}, "--shared-experts"},
    {{"--shared-experts", "1025"}, "--shared-experts"},
    {{"--shared-experts", "1.5"}, "--shared-experts"},
    {{"--shared-ffn", "0"}, "--shared-ffn"},
    {{"--shared-ffn", "16777217"}, "--shared-ffn"},
    {{"--shared-ffn", ""}, "--shared-ffn"},
    {{"--noisy-top-k=1"}, "--noisy-top-k"},
    {{"--input-jitter", "1"}, "--input-jitter"},
    {{"--input-jitter", "1.5"}, "--input-jitter"},
    {{"--input-jitter", "-0.01"}, "--input-jitter"},
    {{"--input-jitter", "nan"}, "--input-jitter"},
    {{"--input-jitter", "eps"}, "--input-jitter"},
    {{"--input-jitter"}, "--input-jitter"},
    {{"--preset", "bogus"}, "--preset"},
    {{"--preset", "Mixtral"}, "deepseek-v3"}, /* the presets are listed */
    {{"--preset", ""}, "--preset"},
    {{"--preset"}, "--preset"},
    {{"--tokens", "5", "--preset"}, "--preset"},
    /* Megatron-Core names: the message names the alias typed */
    {{"--num-experts", "0"}, "--num-experts"},
    {{"--num-experts"}, "--num-experts"},
    {{"--moe-router-topk", "two"}, "--moe-router-topk"},
    {{"--moe-expert-capacity-factor", "-1"}, "--moe-expert-capacity-factor"},
    {{"--moe-expert-capacity-factor", "1,,2"}, "--moe-expert-capacity-factor"},
    {{"--moe-token-drop-policy", "bogus"}, "--moe-token-drop-policy"},
    {{"--moe-router-score-function", "tanh"}, "--moe-router-score-function"},
    {{"--moe-router-num-groups", "0"}, "--moe-router-num-groups"},
    {{"--moe-router-group-topk", "-1"}, "--moe-router-group-topk"},
    {{"--moe-router-topk-scaling-factor", "0"}, "--moe-router-topk-scaling-factor"},
    {{"--moe-router-topk-scaling-factor", "x"}, "--moe-router-topk-scaling-factor"},
    {{"--moe-pad-expert-input-to-capacity=1"}, "--moe-pad-expert-input-to-capacity"},
    {{"--moe-input-jitter-eps", "1"}, "--moe-input-jitter-eps"},
    {{"--moe-shared-expert-intermediate-size", "0"}, "--moe-shared-expert-intermediate-size"},
    {{"--moe-shared-expert-intermediate-size", "x"}, "--moe-shared-expert-intermediate-size"},
    /* the total must split among the shared experts, and is one size: not with --shared-ffn */
    {{"--moe-shared-expert-intermediate-size", "100", "--shared-experts", "3"},
     "--moe-shared-expert-intermediate-size 100"},
    {{"--shared-experts", "0", "--moe-shared-expert-intermediate-size", "100"},
     "--moe-shared-expert-intermediate-size 100"},
    {{"--moe-shared-expert-intermediate-size", "100", "--shared-ffn", "50"},
     "--moe-shared-expert-intermediate-size and --shared-ffn"},
    {{"--moe-shared-expert-intermediate-size", "16777217"},
     "--moe-shared-expert-intermediate-size"},
    /* a preset's widths scaled past the limit */
    {{"--preset", "mixtral", "--hidden", "16777216"}, "--preset mixtral"},
};

START_TEST(test_bad_layer_lines)
{
    expect_refused(&bad_layer_lines[_i]);
}
END_TEST

/* An alias's message names the alias, never the moesim name it stands for. */
START_TEST(test_alias_messages_name_the_alias)
{
    static const struct {
        const char *alias, *value, *moesim;
    } cases[] = {
        {"--num-experts", "0", "--experts"},
        {"--moe-router-topk", "0", "--top-k"},
        {"--moe-expert-capacity-factor", "-1", "--capacity-factor"},
        {"--moe-token-drop-policy", "x", "--drop-policy"},
        {"--moe-router-score-function", "x", "--score"},
        {"--moe-router-num-groups", "0", "--expert-groups"},
        {"--moe-router-group-topk", "-1", "--group-top-k"},
        {"--moe-router-topk-scaling-factor", "-1", "--topk-scale"},
        {"--moe-input-jitter-eps", "2", "--input-jitter"},
    };
    moe_config cfg;
    char msg[512];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ck_assert_int_eq(parse(&cfg, msg, sizeof msg, cases[i].alias, cases[i].value, NULL),
                         MOE_EUSAGE);
        ck_assert_msg(strstr(msg, cases[i].alias) && !mentions(msg, cases[i].moesim + 2),
                      "%s %s: %s", cases[i].alias, cases[i].value, msg);
    }
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--moe-pad-expert-input-to-capacity=yes", NULL),
                     MOE_EUSAGE);
    ck_assert_msg(!mentions(msg, "pad-to-capacity"), "%s", msg);
    /* and so do the rules of resolve */
    static const struct {
        const char *args[6];
        int R;
        const char *want, *unwanted;
    } later[] = {
        {{"--moe-router-topk", "9"}, 1, "--moe-router-topk 9", "--top-k"},
        {{"--num-experts", "4"}, 8, "--num-experts >= 8", "--experts"},
        {{"--moe-router-num-groups", "4"}, 1, "--moe-router-num-groups 4", "--expert-groups"},
        {{"--moe-router-group-topk", "3"}, 1, "--moe-router-group-topk 3", "--group-top-k"},
        {{"--moe-router-group-topk", "1", "--moe-router-topk", "3", "--moe-router-num-groups", "4"},
         1, "--moe-router-topk 3", "--top-k"},
        {{"--moe-token-drop-policy", "probs", "--routing", "expert-choice"},
         1, "--moe-token-drop-policy probs", "--drop-policy"},
        {{"--moe-expert-capacity-factor", "0", "--routing", "expert-choice"},
         1, "--moe-expert-capacity-factor 0", "--capacity-factor"},
        {{"--moe-pad-expert-input-to-capacity", "--moe-expert-capacity-factor", "0"},
         1, "--moe-pad-expert-input-to-capacity needs", "--pad-to-capacity"},
        {{"--moe-input-jitter-eps", "0.1", "--logits-file", "z.npy"},
         1, "--moe-input-jitter-eps", "--input-jitter"},
        {{"--moe-shared-expert-intermediate-size", "0"}, 1, "--moe-shared-expert", "--shared-ffn"},
    };
    for (size_t i = 0; i < sizeof later / sizeof *later; i++) {
        const char *const *a = later[i].args;
        int rc = parse(&cfg, msg, sizeof msg, a[0], a[1], a[2], a[3], a[4], a[5], NULL);
        if (rc == MOE_OK)
            rc = resolve_at(&cfg, later[i].R, msg, sizeof msg);
        ck_assert_msg(rc == MOE_EUSAGE, "%s %s: rc %d", a[0], a[1], rc);
        ck_assert_msg(strstr(msg, later[i].want) && !mentions(msg, later[i].unwanted + 2),
                      "%s %s: '%s' (wanted '%s', not '%s')", a[0], a[1], msg, later[i].want,
                      later[i].unwanted);
    }
}
END_TEST

/* cfg with the spellings (and nothing else) of ref, so that memcmp compares the values. */
static void same_spelling(moe_config *cfg, const moe_config *ref)
{
    cfg->spelled = ref->spelled;
}

START_TEST(test_aliases_equal_their_options)
{
    static const struct {
        const char *alias[4], *moesim[4];
    } pairs[] = {
        {{"--num-experts", "16"}, {"--experts", "16"}},
        {{"--num-experts=16"}, {"--experts=16"}},
        {{"--moe-router-topk", "3"}, {"--top-k", "3"}},
        {{"--moe-expert-capacity-factor", "1.5"}, {"--capacity-factor", "1.5"}},
        {{"--moe-expert-capacity-factor", "0,1,2"}, {"--capacity-factor", "0,1,2"}},
        {{"--moe-token-drop-policy", "probs"}, {"--drop-policy", "probs"}},
        {{"--moe-token-drop-policy", "position"}, {"--drop-policy", "position"}},
        {{"--moe-router-score-function", "sigmoid"}, {"--score", "sigmoid"}},
        {{"--moe-router-num-groups", "4"}, {"--expert-groups", "4"}},
        {{"--moe-router-group-topk", "2"}, {"--group-top-k", "2"}},
        {{"--moe-router-topk-scaling-factor", "2.5"}, {"--topk-scale", "2.5"}},
        {{"--moe-pad-expert-input-to-capacity"}, {"--pad-to-capacity"}},
        {{"--moe-input-jitter-eps", "0.01"}, {"--input-jitter", "0.01"}},
        {{"--moe-aux-loss-coeff", "0.01", "--mode", "fwd-bwd"},
         {"--aux-loss-coeff", "0.01", "--mode", "fwd-bwd"}},
        {{"--moe-z-loss-coeff", "0.001", "--mode", "train"},
         {"--z-loss-coeff", "0.001", "--mode", "train"}},
        /* Megatron's total inner size of the shared expert(s) */
        {{"--moe-shared-expert-intermediate-size", "128"},
         {"--shared-experts", "1", "--shared-ffn", "128"}},
        {{"--moe-shared-expert-intermediate-size", "2816", "--shared-experts", "2"},
         {"--shared-experts", "2", "--shared-ffn", "1408"}},
        {{"--shared-experts", "4", "--moe-shared-expert-intermediate-size", "256"},
         {"--shared-experts", "4", "--shared-ffn", "64"}},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) {
        moe_config a, b;
        char msg[512];
        const char *const *x = pairs[i].alias, *const *y = pairs[i].moesim;
        ck_assert_msg(parse(&a, msg, sizeof msg, x[0], x[1], x[2], x[3], NULL) == MOE_OK, "%s: %s",
                      x[0], msg);
        ck_assert_msg(parse(&b, msg, sizeof msg, y[0], y[1], y[2], y[3], NULL) == MOE_OK, "%s: %s",
                      y[0], msg);
        same_spelling(&a, &b);
        ck_assert_msg(memcmp(&a, &b, sizeof a) == 0, "%s differs from %s", x[0], y[0]);
    }
    /* the spelling is kept for messages */
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--num-experts", "16", "--moe-router-topk", "3",
                           "--moe-router-num-groups", "4", NULL),
                     MOE_OK);
    ck_assert_str_eq(cfg.spelled.experts, "num-experts");
    ck_assert_str_eq(cfg.spelled.top_k, "moe-router-topk");
    ck_assert_str_eq(cfg.spelled.expert_groups, "moe-router-num-groups");
    ck_assert(cfg.set_experts && cfg.set_top_k && cfg.set_expert_groups);
    /* an alias and its option mix: the last one given wins */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "16", "--num-experts", "32", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.experts, 32);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--num-experts", "32", "--experts", "16", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.experts, 16);
    ck_assert_str_eq(cfg.spelled.experts, "experts");
}
END_TEST

START_TEST(test_resolve_expert_groups)
{
    moe_config cfg;
    char msg[512];
    /* --expert-groups needs --group-top-k */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "16", "--expert-groups", "4", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--expert-groups 4") && strstr(msg, "--group-top-k"), "%s", msg);
    /* E 16 in 4 groups of 4, each token keeps 2: k up to 8 */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "16", "--top-k", "4",
                           "--expert-groups", "4", "--group-top-k", "2", NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert(cfg.expert_groups == 4 && cfg.group_top_k == 2);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "16", "--top-k", "8",
                           "--expert-groups", "4", "--group-top-k", "2", NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "k = M E / G: %s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "16", "--top-k", "9",
                           "--expert-groups", "4", "--group-top-k", "2", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--top-k 9") && strstr(msg, "hold only 8"), "%s", msg);
    /* G must divide E */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "12", "--expert-groups", "8",
                           "--group-top-k", "2", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--expert-groups 8") && strstr(msg, "divide the 12"), "%s", msg);
    /* M <= G */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "16", "--top-k", "4",
                           "--expert-groups", "2", "--group-top-k", "3", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--group-top-k 3") && strstr(msg, "2 expert groups"), "%s", msg);
    /* M <= k */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--experts", "16", "--expert-groups", "4",
                           "--group-top-k", "3", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--group-top-k 3") && strstr(msg, "--top-k 2"), "%s", msg);
    /* G = E groups of one, M = k: plain top-k, allowed */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--expert-groups", "8", "--group-top-k", "2",
                           NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    /* --group-top-k alone: the groups are the nodes, left 0 for the layer; M <= k still holds */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--group-top-k", "2", NULL), MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert(cfg.expert_groups == 0 && cfg.group_top_k == 2);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--group-top-k", "3", NULL), MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 4, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--group-top-k 3"), "%s", msg);
    /* E from a router file counts */
    moe_npy_header wh = hdr(10, 512);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--router-file", "w.npy", "--expert-groups", "4",
                           "--group-top-k", "1", "--top-k", "1", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, &wh, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "divide the 10"), "%s", msg);
}
END_TEST

START_TEST(test_resolve_expert_choice)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--routing", "expert-choice", NULL), MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    /* a capacity for every cf */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--routing", "expert-choice", "--capacity-factor",
                           "0", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "expert-choice") && strstr(msg, "--capacity-factor 0"), "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--routing", "expert-choice", "--capacity-factor",
                           "1,2,0", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--routing", "expert-choice", "--capacity-factor",
                           "1,2", "--pad-to-capacity", NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    /* no drop policy but position, explicit or not */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--routing", "expert-choice", "--drop-policy",
                           "probs", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--drop-policy probs") && strstr(msg, "expert-choice"), "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--drop-policy", "position", "--routing",
                           "expert-choice", NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    /* no group limit */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--routing", "expert-choice", "--group-top-k",
                           "1", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--group-top-k") && strstr(msg, "expert-choice"), "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--routing", "expert-choice", "--expert-groups",
                           "2", "--group-top-k", "1", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    /* MPI counts in slots per token: E under expert choice. 2^28 tokens on one rank with k = 1
     * are 2^28 rows; with 16 experts choosing, up to 2^32. */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "268435456", "--experts", "16",
                           "--top-k", "1", NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 1, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "268435456", "--experts", "16",
                           "--top-k", "1", "--routing", "expert-choice", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 1, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "expert choice") && strstr(msg, "4294967296"), "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "268435456", "--experts", "16",
                           "--top-k", "1", "--routing", "expert-choice", NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 16, msg, sizeof msg) == MOE_OK, "%s", msg);
    /* and so does the CSV dump: 2^27 tokens x 16 experts = 2^31 records, x k = 2 only 2^28 */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "134217728", "--experts", "16",
                           "--dump-routing", "r.csv", NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 16, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "134217728", "--experts", "16",
                           "--dump-routing", "r.csv", "--routing", "expert-choice", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 16, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--dump-routing") && strstr(msg, "2147483648"), "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--tokens", "134217728", "--experts", "16",
                           "--dump-routing", "r.npy", "--routing", "expert-choice", NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 16, msg, sizeof msg) == MOE_OK, "the .npy form: %s", msg);
}
END_TEST

START_TEST(test_resolve_shared_and_jitter)
{
    moe_config cfg;
    char msg[512];
    /* shared_ffn defaults to the resolved ffn */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hidden", "100", "--shared-experts", "2", NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert_int_eq(cfg.ffn, 200);
    ck_assert_int_eq(cfg.shared_ffn, 200);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--ffn", "48", "--shared-experts", "1", NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert_int_eq(cfg.shared_ffn, 48);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--shared-ffn", "64", "--shared-experts", "1",
                           NULL),
                     MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert_int_eq(cfg.shared_ffn, 64);
    /* --shared-ffn needs shared experts */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--shared-ffn", "64", NULL), MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--shared-ffn") && strstr(msg, "--shared-experts"), "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--shared-ffn", "64", "--shared-experts", "0",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE);
    /* --input-jitter perturbs h: not with replayed logits (0 is no jitter, fine) */
    moe_npy_header lh = hdr(100, 8);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--input-jitter", "0.01", "--logits-file", "z.npy",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, &lh, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--input-jitter") && strstr(msg, "--logits-file"), "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--input-jitter", "0", "--logits-file", "z.npy",
                           NULL),
                     MOE_OK);
    ck_assert_msg(moe_config_resolve(&cfg, 2, NULL, NULL, &lh, msg, sizeof msg) == MOE_OK, "%s",
                  msg);
    moe_npy_header th = hdr(100, 24);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--input-jitter", "0.01", "--tokens-file", "h.npy",
                           "--noisy-top-k", NULL),
                     MOE_OK);
    ck_assert_msg(moe_config_resolve(&cfg, 2, &th, NULL, NULL, msg, sizeof msg) == MOE_OK, "%s",
                  msg);
}
END_TEST

/* What each preset sets (docs/options.md, Presets), and what preset_set says it set. */
static const struct preset_case {
    const char *name;
    int64_t hidden, ffn;
    int experts, top_k;
    moe_score score;
    bool renormalize;
    double topk_scale;
    int groups, group_top_k, shared;
    int64_t shared_ffn;
    moe_policy policy;
    double cf;
    const char *summary;
} preset_cases[] = {
    {"switch", 768, 3072, 128, 1, MOE_SCORE_SOFTMAX, false, 1.0, 0, 0, 0, 0, MOE_POLICY_POSITION,
     1.25,
     "experts 128, top-k 1, hidden 768, ffn 3072, score softmax, no renormalize, "
     "drop-policy position"},
    {"gshard", 1024, 8192, 128, 2, MOE_SCORE_SOFTMAX, true, 1.0, 0, 0, 0, 0, MOE_POLICY_CHOICE,
     1.25,
     "experts 128, top-k 2, hidden 1024, ffn 8192, score softmax, renormalize, drop-policy choice"},
    {"mixtral", 4096, 14336, 8, 2, MOE_SCORE_SOFTMAX, true, 1.0, 0, 0, 0, 0, MOE_POLICY_PROBS, 0.0,
     "experts 8, top-k 2, hidden 4096, ffn 14336, score softmax, renormalize, drop-policy probs, "
     "capacity-factor 0"},
    {"deepseek-moe", 2048, 1408, 64, 6, MOE_SCORE_SOFTMAX, false, 1.0, 0, 0, 2, 1408,
     MOE_POLICY_PROBS, 1.25,
     "experts 64, top-k 6, hidden 2048, ffn 1408, score softmax, no renormalize, "
     "shared-experts 2 x 1408, drop-policy probs"},
    {"deepseek-v3", 7168, 2048, 256, 8, MOE_SCORE_SIGMOID, false, 2.5, 8, 4, 1, 2048,
     MOE_POLICY_PROBS, 0.0,
     "experts 256, top-k 8, hidden 7168, ffn 2048, score sigmoid, topk-scale 2.5, "
     "expert-groups 8, group-top-k 4, shared-experts 1 x 2048, drop-policy probs, "
     "capacity-factor 0"},
    {"qwen3-moe", 4096, 1536, 128, 8, MOE_SCORE_SOFTMAX, true, 1.0, 0, 0, 0, 0, MOE_POLICY_PROBS,
     0.0,
     "experts 128, top-k 8, hidden 4096, ffn 1536, score softmax, renormalize, drop-policy probs, "
     "capacity-factor 0"},
};

START_TEST(test_preset_fields)
{
    const struct preset_case *p = &preset_cases[_i];
    moe_config cfg;
    char msg[512];
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--preset", p->name, NULL) == MOE_OK, "%s", msg);
    ck_assert_str_eq(cfg.preset, p->name);
    ck_assert_int_eq(cfg.hidden, p->hidden);
    ck_assert_int_eq(cfg.ffn, p->ffn);
    ck_assert_int_eq(cfg.experts, p->experts);
    ck_assert_int_eq(cfg.top_k, p->top_k);
    ck_assert_int_eq(cfg.score, p->score);
    ck_assert_int_eq(cfg.renormalize, p->renormalize);
    ck_assert(cfg.topk_scale == p->topk_scale);
    ck_assert_int_eq(cfg.expert_groups, p->groups);
    ck_assert_int_eq(cfg.group_top_k, p->group_top_k);
    ck_assert_int_eq(cfg.shared_experts, p->shared);
    ck_assert_int_eq(cfg.shared_ffn, p->shared_ffn);
    ck_assert_int_eq(cfg.policy, p->policy);
    ck_assert(cfg.n_cf == 1 && cfg.cf_list[0] == p->cf && cfg.capacity_factor == p->cf);
    ck_assert_str_eq(cfg.preset_set, p->summary);
    /* a preset is not an explicit option: a file may still set the shapes */
    ck_assert(!cfg.set_hidden && !cfg.set_experts && !cfg.set_ffn && !cfg.set_top_k &&
              !cfg.set_policy && !cfg.set_cf);
    /* the other fields keep moesim's defaults */
    ck_assert(cfg.tokens == 8192 && cfg.routing == MOE_ROUTING_TOKEN_CHOICE && !cfg.noisy_top_k &&
              cfg.input_jitter == 0.0 && cfg.scope == MOE_SCOPE_GLOBAL && cfg.min_capacity == 0);
    ck_assert_msg(resolve_at(&cfg, 8, msg, sizeof msg) == MOE_OK, "%s: %s", p->name, msg);
    ck_assert_int_eq(cfg.ffn, p->ffn);
    ck_assert_int_eq(cfg.shared_ffn, p->shared_ffn);
    /* --help shows the same words under the preset's name */
    const char *u = moe_config_usage();
    char key[64], block[1024];
    snprintf(key, sizeof key, "\n    %s ", p->name);
    const char *at = strstr(u, key);
    ck_assert_msg(at != NULL, "--help has no line for preset %s", p->name);
    /* the preset's lines, whitespace runs collapsed, up to the next preset or section */
    size_t n = 0;
    for (const char *c = at + 1; *c && n + 1 < sizeof block; c++) {
        if (*c == '\n' && strncmp(c + 1, "                         ", 25) != 0)
            break;
        if (*c == '\n' || *c == ' ') {
            if (n > 0 && block[n - 1] != ' ')
                block[n++] = ' ';
        } else {
            block[n++] = *c;
        }
    }
    block[n] = '\0';
    ck_assert_msg(strstr(block, p->summary) != NULL, "--help says '%s', preset_set '%s'", block,
                  p->summary);
}
END_TEST

START_TEST(test_preset_overridden)
{
    moe_config cfg;
    char msg[512];
    /* an explicit option wins before and after --preset, and leaves the summary */
    static const char *const orders[2][4] = {{"--experts", "64", "--preset", "deepseek-v3"},
                                             {"--preset", "deepseek-v3", "--experts", "64"}};
    for (int o = 0; o < 2; o++) {
        const char *const *a = orders[o];
        ck_assert_msg(parse(&cfg, msg, sizeof msg, a[0], a[1], a[2], a[3], NULL) == MOE_OK, "%s",
                      msg);
        ck_assert_int_eq(cfg.experts, 64);
        ck_assert(cfg.set_experts);
        ck_assert_int_eq(cfg.top_k, 8);
        ck_assert_int_eq(cfg.expert_groups, 8);
        ck_assert_str_eq(cfg.preset_set,
                         "top-k 8, hidden 7168, ffn 2048, score sigmoid, topk-scale 2.5, "
                         "expert-groups 8, group-top-k 4, shared-experts 1 x 2048, "
                         "drop-policy probs, capacity-factor 0");
        ck_assert_msg(resolve_at(&cfg, 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    }
    /* many at once, on both sides */
    ck_assert_msg(parse(&cfg, msg, sizeof msg, "--capacity-factor", "1.0,2.0", "--score", "softmax",
                        "--top-k", "4", "--preset", "deepseek-v3", "--ffn", "512",
                        "--drop-policy", "position", "--group-top-k", "2", "--shared-experts", "0",
                        "--topk-scale", "1", NULL) == MOE_OK,
                  "%s", msg);
    ck_assert(cfg.n_cf == 2 && cfg.cf_list[0] == 1.0 && cfg.cf_list[1] == 2.0);
    ck_assert(cfg.score == MOE_SCORE_SOFTMAX && cfg.top_k == 4 && cfg.ffn == 512 &&
              cfg.policy == MOE_POLICY_POSITION && cfg.group_top_k == 2 &&
              cfg.shared_experts == 0 && cfg.topk_scale == 1.0);
    ck_assert(cfg.experts == 256 && cfg.hidden == 7168 && cfg.expert_groups == 8);
    ck_assert_str_eq(cfg.preset_set, "experts 256, hidden 7168, expert-groups 8");
    ck_assert_msg(resolve_at(&cfg, 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert_int_eq(cfg.shared_ffn, 0); /* the preset's width went with its shared expert */
    /* an override the preset's other fields no longer fit is refused, naming the preset */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "deepseek-v3", "--experts", "12",
                           NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 4, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--expert-groups 8 (from --preset deepseek-v3)"), "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--routing", "expert-choice", "--preset",
                           "mixtral", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 4, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--capacity-factor 0 (from --preset mixtral)"), "%s", msg);
    /* flags: --renormalize overrides "no renormalize" */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--renormalize", "--preset", "deepseek-moe", NULL),
                     MOE_OK);
    ck_assert(cfg.renormalize);
    ck_assert_ptr_null(strstr(cfg.preset_set, "renormalize"));
    /* the shared experts in part */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "deepseek-moe", "--shared-experts",
                           "4", NULL),
                     MOE_OK);
    ck_assert(cfg.shared_experts == 4 && cfg.shared_ffn == 1408);
    ck_assert_ptr_nonnull(strstr(cfg.preset_set, "no renormalize, shared-ffn 1408, drop-policy"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--shared-ffn", "700", "--preset",
                           "deepseek-moe", NULL),
                     MOE_OK);
    ck_assert(cfg.shared_experts == 2 && cfg.shared_ffn == 700);
    ck_assert_ptr_nonnull(strstr(cfg.preset_set, "no renormalize, shared-experts 2, drop-policy"));
    /* Megatron's total size: one shared expert of it, over the preset's two */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "deepseek-moe",
                           "--moe-shared-expert-intermediate-size", "2816", NULL),
                     MOE_OK);
    ck_assert(cfg.shared_experts == 1 && cfg.shared_ffn == 2816);
    ck_assert_ptr_null(strstr(cfg.preset_set, "shared"));
    /* under expert choice the preset's drop policy and group limit do not apply */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "deepseek-v3", "--routing",
                           "expert-choice", "--capacity-factor", "1.0", NULL),
                     MOE_OK);
    ck_assert(cfg.policy == MOE_POLICY_POSITION && cfg.expert_groups == 0 &&
              cfg.group_top_k == 0);
    ck_assert_str_eq(cfg.preset_set, "experts 256, top-k 8, hidden 7168, ffn 2048, "
                                     "score sigmoid, topk-scale 2.5, shared-experts 1 x 2048");
    ck_assert_msg(resolve_at(&cfg, 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    /* the last preset wins whole: nothing of the first is left */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "deepseek-v3", "--preset", "mixtral",
                           NULL),
                     MOE_OK);
    ck_assert_str_eq(cfg.preset, "mixtral");
    ck_assert(cfg.experts == 8 && cfg.expert_groups == 0 && cfg.shared_experts == 0 &&
              cfg.score == MOE_SCORE_SOFTMAX && cfg.topk_scale == 1.0);
    /* --preset's value is found as getopt_long reads it: a value that looks like --preset is a
     * value, and the = form works */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--json", "--preset", "--experts", "4", NULL),
                     MOE_OK);
    ck_assert_ptr_null(cfg.preset);
    ck_assert_str_eq(cfg.json_path, "--preset");
    ck_assert_str_eq(cfg.preset_set, "");
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--dump-routing", "--preset", "--preset=switch",
                           NULL),
                     MOE_OK);
    ck_assert_str_eq(cfg.preset, "switch");
    ck_assert_int_eq(cfg.experts, 128);
}
END_TEST

START_TEST(test_preset_hidden_scaling)
{
    moe_config cfg;
    char msg[512];
    /* 2048 x 1024 / 7168 = 292.57: 293, for the routed and the shared experts */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "deepseek-v3", "--hidden", "1024",
                           NULL),
                     MOE_OK);
    ck_assert(cfg.hidden == 1024 && cfg.ffn == 293 && cfg.shared_ffn == 293);
    ck_assert_str_eq(cfg.preset_set,
                     "experts 256, top-k 8, ffn 293 (2048 scaled to hidden 1024), score sigmoid, "
                     "topk-scale 2.5, expert-groups 8, group-top-k 4, shared-experts 1 x 293 "
                     "(2048 scaled to hidden 1024), drop-policy probs, capacity-factor 0");
    ck_assert_msg(resolve_at(&cfg, 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert(cfg.ffn == 293 && cfg.shared_ffn == 293);
    /* --hidden before the preset scales it too */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hidden", "512", "--preset", "mixtral", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.ffn, 1792); /* 14336 / 8 exactly */
    /* halves round up: 1408 x 8 / 2048 = 5.5, 1536 x 4 / 4096 = 1.5 */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "deepseek-moe", "--hidden", "8", NULL),
                     MOE_OK);
    ck_assert(cfg.ffn == 6 && cfg.shared_ffn == 6);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "qwen3-moe", "--hidden", "4", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.ffn, 2);
    /* never below 1: 1408 / 2048 = 0.69 rounds to 1, and 1536 / 4096 = 0.375 to 0, raised to 1 */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "deepseek-moe", "--hidden", "1", NULL),
                     MOE_OK);
    ck_assert(cfg.ffn == 1 && cfg.shared_ffn == 1);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "qwen3-moe", "--hidden", "1", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.ffn, 1);
    /* an explicit --ffn or --shared-ffn is kept */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--ffn", "100", "--preset", "deepseek-v3",
                           "--hidden", "1024", NULL),
                     MOE_OK);
    ck_assert(cfg.ffn == 100 && cfg.shared_ffn == 293);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "deepseek-v3", "--hidden", "1024",
                           "--shared-ffn", "50", NULL),
                     MOE_OK);
    ck_assert(cfg.ffn == 293 && cfg.shared_ffn == 50);
    ck_assert_ptr_nonnull(strstr(cfg.preset_set, "group-top-k 4, shared-experts 1, drop-policy"));
    /* the preset's own hidden: nothing changes */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "switch", "--hidden", "768", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.ffn, 3072);
    /* past the width limit: refused, unless --ffn says otherwise */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "mixtral", "--hidden", "16777216",
                           NULL),
                     MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--preset mixtral") && strstr(msg, "--ffn"), "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "mixtral", "--hidden", "16777216",
                           "--ffn", "64", NULL),
                     MOE_OK);
    /* without a preset --hidden scales nothing: ffn stays the 2d default */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--hidden", "1024", NULL), MOE_OK);
    ck_assert_int_eq(cfg.ffn, 0);
    /* a tokens file's d is not --hidden: the preset's ffn stays */
    moe_npy_header th = hdr(100, 64);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "mixtral", "--tokens-file", "h.npy",
                           NULL),
                     MOE_OK);
    ck_assert_msg(moe_config_resolve(&cfg, 2, &th, NULL, NULL, msg, sizeof msg) == MOE_OK, "%s",
                  msg);
    ck_assert(cfg.hidden == 64 && cfg.ffn == 14336);
}
END_TEST

/* --mode (issue 10): forward by default, dispatch; anything else refused naming the option */
START_TEST(test_mode_option)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert_int_eq(cfg.mode, MOE_MODE_FORWARD);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--mode", "dispatch", NULL), MOE_OK);
    ck_assert_int_eq(cfg.mode, MOE_MODE_DISPATCH);
    ck_assert_str_eq(moe_mode_name(cfg.mode), "dispatch");
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--mode=dispatch", "--mode", "forward", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.mode, MOE_MODE_FORWARD);
    ck_assert_str_eq(moe_mode_name(cfg.mode), "forward");
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--mode", "dispatch_only", NULL), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--mode must be 'forward', 'dispatch', 'fwd-bwd' or 'train'"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--mode", NULL), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(moe_config_usage(), "  --mode M "));
}
END_TEST

/* --regroup: parsed, and what it does at R ranks (moe_config_regroup), by hand. */
START_TEST(test_regroup_option)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert_int_eq(cfg.regroup, MOE_REGROUP_AUTO);
    /* defaults: 8192 tokens, d 512, 8 experts, top-2: 4 slots a rank at R = 2, rows out at most
     * 4096 x 2 x 2 KiB = 16 MiB: one Alltoallw */
    ck_assert_int_eq(moe_config_regroup(&cfg, 2), MOE_REGROUP_W);
    /* ... whose combine the layer probes: fp32 rows back, something moves */
    ck_assert(moe_config_regroup_probes(&cfg, 2));
    cfg.wire_combine = MOE_WIRE_BF16; /* the encoded rows leave contiguous: nothing to probe */
    ck_assert(!moe_config_regroup_probes(&cfg, 2));
    cfg.wire_combine = MOE_WIRE_FP32;
    cfg.predict_only = true;
    ck_assert(!moe_config_regroup_probes(&cfg, 2));
    cfg.predict_only = false;
    /* one expert a rank: the one Alltoallv of slots is the plain exchange */
    ck_assert_int_eq(moe_config_regroup(&cfg, 8), MOE_REGROUP_SLOTS);
    ck_assert(!moe_config_regroup_probes(&cfg, 8));
    /* ... unless replicas give a rank two slots: (8 + 8) / 8 = 2 */
    cfg.redundant_experts = 8;
    ck_assert_int_eq(moe_config_regroup(&cfg, 8), MOE_REGROUP_W);
    cfg.redundant_experts = 0;
    /* rows out that could pass Alltoallw's int byte displacements: 2^20 tokens a rank x 2 x
     * 2 KiB = 4 GiB */
    cfg.tokens = INT64_C(1) << 21;
    ck_assert_int_eq(moe_config_regroup(&cfg, 2), MOE_REGROUP_SLOTS);
    for (int g = 1; g <= 4; g++) {
        static const char *const names[] = {"auto", "alltoallw", "slots", "copy",
                                            "alltoallw-slots"};
        ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--regroup", names[g], NULL), MOE_OK);
        ck_assert_int_eq(cfg.regroup, g);
        ck_assert_str_eq(moe_regroup_name(cfg.regroup), names[g]);
        ck_assert_int_eq(moe_config_regroup(&cfg, 2), g); /* as given */
        ck_assert(!moe_config_regroup_probes(&cfg, 2));     /* and not probed */
    }
    /* rows that do not arrive from one flat exchange of per-expert rows: staged */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--a2a", "hierarchical", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_regroup(&cfg, 2), MOE_REGROUP_COPY);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--dispatch", "per-rank", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_regroup(&cfg, 2), MOE_REGROUP_COPY);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--regroup", "scatter", NULL), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--regroup must be"));
    ck_assert_ptr_nonnull(strstr(moe_config_usage(), "  --regroup G "));
}
END_TEST

/* --steps and --steps-csv (issue 12): default, range, refusals, and the batch a file gives. */
/* --mode fwd-bwd, train and their options: defaults, train's own defaults, and the refusals */
START_TEST(test_training_options)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert_int_eq(cfg.optimizer, MOE_OPT_SGD);
    ck_assert(cfg.lr == MOE_TRAIN_DEFAULT_LR && cfg.aux_loss_coeff == 0.0 && cfg.z_loss_coeff == 0.0);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--mode", "train", "--optimizer", "adam", "--lr",
                           "0.25", "--aux-loss-coeff", "0.01", "--z-loss-coeff", "1e-3", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.mode, MOE_MODE_TRAIN);
    ck_assert_str_eq(moe_mode_name(cfg.mode), "train");
    ck_assert(cfg.optimizer == MOE_OPT_ADAM && cfg.lr == 0.25 && cfg.aux_loss_coeff == 0.01 &&
              cfg.z_loss_coeff == 1e-3);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    /* train: one timed iteration a step and tokens with a shared direction unless given */
    ck_assert(cfg.iters == 1 && cfg.warmup == 0 && cfg.token_mean == MOE_TRAIN_DEFAULT_TOKEN_MEAN);
    ck_assert_int_eq(moe_config_regroup(&cfg, 2), MOE_REGROUP_COPY);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--mode", "train", "--iters", "3", "--warmup",
                           "2", "--token-mean", "0", "--teacher-experts", "4", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert(cfg.iters == 3 && cfg.warmup == 2 && cfg.token_mean == 0.0 &&
              cfg.teacher_experts == 4);
    /* fwd-bwd keeps the forward's defaults */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--mode", "fwd-bwd", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert(cfg.iters == 5 && cfg.warmup == 1 && cfg.token_mean == 0.0 &&
              cfg.teacher_experts == 1 && cfg.optimizer == MOE_OPT_SGD);
    ck_assert_str_eq(moe_mode_name(cfg.mode), "fwd-bwd");
    static const struct {
        const char *argv[6], *pattern;
    } bad[] = {
        {{"--optimizer", "adam"}, "--mode train"},
        {{"--lr", "0.1", "--mode", "fwd-bwd"}, "--mode train"},
        {{"--aux-loss-coeff", "0.01"}, "--mode fwd-bwd"},
        {{"--z-loss-coeff", "0.01", "--mode", "dispatch"}, "--mode fwd-bwd"},
        {{"--mode", "fwd-bwd", "--routing", "expert-choice"}, "expert-choice"},
        {{"--mode", "train", "--logits-file", "z.npy"}, "--logits-file"},
        {{"--mode", "train", "--noisy-top-k"}, "--noisy-top-k"},
        {{"--mode", "train", "--input-jitter", "0.1"}, "--input-jitter"},
        {{"--mode", "train", "--dispatch", "per-rank"}, "per-rank"},
        {{"--mode", "fwd-bwd", "--wire", "fp8"}, "--wire"},
        {{"--mode", "fwd-bwd", "--wire-combine", "bf16"}, "--wire-combine"},
        {{"--mode", "fwd-bwd", "--shared-experts", "1"}, "--shared-experts"},
        {{"--mode", "train", "--redundant-experts", "2"}, "--redundant-experts"},
        {{"--mode", "train", "--placement", "strided"}, "--placement"},
        {{"--mode", "fwd-bwd", "--drop-policy", "reroute"}, "reroute"},
        {{"--mode", "fwd-bwd", "--workload", "burst"}, "--workload"},
        {{"--mode", "fwd-bwd", "--predict-only"}, "--predict-only"},
        {{"--mode", "fwd-bwd", "--capacity-factor", "1,2"}, "capacity-factor"},
        {{"--mode", "fwd-bwd", "--regroup", "slots"}, "--regroup"},
        {{"--teacher-experts", "2"}, "--mode fwd-bwd"},
        {{"--token-mean", "0.5", "--tokens-file", "t.npy"}, "--tokens-file"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int argc = 1;
        char *argv[8] = {"moesim"};
        for (int j = 0; j < 6 && bad[i].argv[j] != NULL; j++)
            argv[argc++] = (char *)bad[i].argv[j];
        moe_config_defaults(&cfg);
        int rc = moe_config_parse(&cfg, argc, argv, msg, sizeof msg);
        if (rc == MOE_OK) {
            moe_npy_header z = {.rows = cfg.tokens, .cols = cfg.experts};
            rc = moe_config_resolve(&cfg, 2, NULL, NULL, cfg.logits_file ? &z : NULL, msg,
                                    sizeof msg);
        }
        ck_assert_msg(rc == MOE_EUSAGE, "case %zu (%s) not refused", i, bad[i].argv[0]);
        ck_assert_msg(strstr(msg, bad[i].pattern) != NULL, "case %zu: '%s' lacks '%s'", i, msg,
                      bad[i].pattern);
    }
    /* bad values */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--mode", "train", "--lr", "0", NULL), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--optimizer", "lion", NULL), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--aux-loss-coeff", "-1", NULL), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--mode", "backward", NULL), MOE_EUSAGE);
}
END_TEST

START_TEST(test_steps_option)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert_int_eq(cfg.steps, 1);
    ck_assert_ptr_null(cfg.steps_csv);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--steps", "12", "--steps-csv", "s.csv", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.steps, 12);
    ck_assert_str_eq(cfg.steps_csv, "s.csv");
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--steps", "0", NULL), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--steps"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--steps", "1000001", NULL), MOE_EUSAGE);
    /* one capacity factor, and a run */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--steps", "3", "--capacity-factor", "1,2", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "one capacity factor"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--steps", "3", "--predict-only", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--predict-only"));
    /* a tokens file of 300 rows: 3 steps of 100, or --tokens 90 (270 rows used); not 7 steps */
    moe_npy_header hdr = {.rows = 300, .cols = 8};
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--steps", "3", "--tokens-file", "t.npy", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &hdr, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(cfg.tokens, 100);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--steps", "3", "--tokens", "90",
                           "--tokens-file", "t.npy", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &hdr, NULL, NULL, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(cfg.tokens, 90);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--steps", "4", "--tokens", "90",
                           "--tokens-file", "t.npy", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &hdr, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "need 360"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--steps", "7", "--tokens-file", "t.npy", NULL),
                     MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, &hdr, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "whole number"));
    ck_assert_ptr_nonnull(strstr(moe_config_usage(), "  --steps N "));
    ck_assert_ptr_nonnull(strstr(moe_config_usage(), "  --steps-csv PATH "));
}
END_TEST

/* Issue 10's exchange and placement options: parsed, defaults, refusals naming the option. */
START_TEST(test_exchange_options)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, NULL), MOE_OK);
    ck_assert_int_eq(cfg.dispatch, MOE_DISPATCH_PER_EXPERT);
    ck_assert_int_eq(cfg.wire, MOE_WIRE_FP32);
    ck_assert_int_eq(cfg.wire_combine, MOE_WIRE_FP32);
    ck_assert_int_eq(cfg.placement, MOE_PLACE_CONTIGUOUS);
    ck_assert_int_eq(cfg.redundant_experts, 0);
    ck_assert_ptr_null(cfg.eplb_from);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--dispatch", "per-rank", "--wire", "bf16", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.dispatch, MOE_DISPATCH_PER_RANK);
    ck_assert_str_eq(moe_dispatch_name(cfg.dispatch), "per-rank");
    ck_assert_int_eq(cfg.wire, MOE_WIRE_BF16);
    ck_assert_int_eq(cfg.wire_combine, MOE_WIRE_FP32); /* bf16 dispatch: fp32 combine */
    /* fp8 dispatch combines in bf16 unless told otherwise, wherever --wire-combine stands */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--wire", "fp8", NULL), MOE_OK);
    ck_assert_int_eq(cfg.wire_combine, MOE_WIRE_BF16);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--wire-combine", "fp32", "--wire", "fp8", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.wire_combine, MOE_WIRE_FP32);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--wire-combine", "fp8", NULL), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--wire-combine must be 'fp32' or 'bf16'"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--wire", "fp16", NULL), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--wire must be"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--dispatch", "per-node", NULL), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--dispatch must be"));
    /* placement */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--placement", "strided", NULL), MOE_OK);
    ck_assert_int_eq(cfg.placement, MOE_PLACE_STRIDED);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--placement", "zigzag", NULL), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--placement must be"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--redundant-experts", "-1", NULL), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--redundant-experts", "8", NULL), MOE_OK);
    ck_assert_msg(resolve_at(&cfg, 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert_int_eq(cfg.placement, MOE_PLACE_EPLB); /* replicas imply EPLB */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--redundant-experts", "3", NULL), MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 4, msg, sizeof msg), MOE_EUSAGE); /* 8 + 3 over 4 ranks */
    ck_assert_ptr_nonnull(strstr(msg, "multiple of the rank count"));
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--redundant-experts", "4", "--placement",
                           "strided", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 4, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--eplb-from", "loads.csv", NULL), MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE); /* no EPLB */
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--eplb-from", "loads.csv", "--placement", "eplb",
                           NULL),
                     MOE_OK);
    ck_assert_str_eq(cfg.eplb_from, "loads.csv");
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--eplb-from", "self", "--placement", "eplb", NULL),
                     MOE_OK);
    ck_assert_ptr_null(cfg.eplb_from);
    ck_assert(!cfg.eplb_previous);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--eplb-from", "previous", "--placement", "eplb",
                           NULL),
                     MOE_OK);
    ck_assert(cfg.eplb_previous);
    ck_assert_ptr_null(cfg.eplb_from);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--eplb-from", "previous", NULL), MOE_OK);
    ck_assert_int_eq(moe_config_resolve(&cfg, 2, NULL, NULL, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--placement eplb"));
    const char *usage = moe_config_usage();
    const char *lines[] = {"  --dispatch D ", "  --wire F ", "  --wire-combine F ", "  --placement P ",
                           "  --redundant-experts N ", "  --eplb-from SRC "};
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++)
        ck_assert_msg(strstr(usage, lines[i]) != NULL, "usage lacks '%s'", lines[i]);
}
END_TEST

/* --group-top-k 0 switches a preset's group limit off, groups included; alone it is no limit. */
START_TEST(test_group_limit_off)
{
    moe_config cfg;
    char msg[512];
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--preset", "deepseek-v3", "--group-top-k", "0",
                           "--hidden", "64", NULL),
                     MOE_OK);
    ck_assert_int_eq(cfg.group_top_k, 0);
    ck_assert_int_eq(cfg.expert_groups, 0);
    ck_assert_ptr_null(strstr(cfg.preset_set, "expert-groups"));
    ck_assert_ptr_null(strstr(cfg.preset_set, "group-top-k"));
    ck_assert_msg(resolve_at(&cfg, 2, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--group-top-k", "0", NULL), MOE_OK);
    ck_assert_int_eq(cfg.group_top_k, 0);
    ck_assert_int_eq(parse(&cfg, msg, sizeof msg, "--expert-groups", "4", "--group-top-k", "0", NULL),
                     MOE_OK);
    ck_assert_int_eq(resolve_at(&cfg, 2, msg, sizeof msg), MOE_EUSAGE); /* groups, no limit */
}
END_TEST

START_TEST(test_usage_lists_layer_options)
{
    static const char *const opts[] = {
        "--routing", "token-choice", "expert-choice", "--expert-groups", "--group-top-k",
        "--shared-experts", "--shared-ffn", "--noisy-top-k", "--input-jitter", "--preset",
        "probs", "choice", "random", "reroute", "Megatron-Core",
        "--moe-shared-expert-intermediate-size"};
    const char *u = moe_config_usage();
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++)
        ck_assert_msg(strstr(u, opts[i]) != NULL, "usage lacks %s", opts[i]);
    /* each alias is shown beside the option it stands for */
    static const char *const pairs[][2] = {
        {"num-experts", "experts"}, {"moe-router-topk", "top-k"},
        {"moe-expert-capacity-factor", "capacity-factor"}, {"moe-token-drop-policy", "drop-policy"},
        {"moe-router-score-function", "score"}, {"moe-router-num-groups", "expert-groups"},
        {"moe-router-group-topk", "group-top-k"}, {"moe-router-topk-scaling-factor", "topk-scale"},
        {"moe-pad-expert-input-to-capacity", "pad-to-capacity"},
        {"moe-input-jitter-eps", "input-jitter"}, {"moe-aux-loss-coeff", "aux-loss-coeff"},
        {"moe-z-loss-coeff", "z-loss-coeff"}};
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) {
        char line[128];
        snprintf(line, sizeof line, "\n  --%s ", pairs[i][0]);
        const char *at = strstr(u, line);
        ck_assert_msg(at != NULL, "usage has no line for --%s", pairs[i][0]);
        const char *end = strchr(at + 1, '\n');
        char opt[64];
        snprintf(opt, sizeof opt, "--%s", pairs[i][1]);
        const char *hit = strstr(at + strlen(line), opt);
        ck_assert_msg(hit != NULL && hit < end && !is_name_char(hit[strlen(opt)]),
                      "--%s's line does not name --%s", pairs[i][0], pairs[i][1]);
    }
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_every_option);
    tcase_add_test(tc, test_forms_and_repeats);
    tcase_add_loop_test(tc, test_bad_lines, 0, (int)(sizeof bad_lines / sizeof *bad_lines));
    tcase_add_test(tc, test_usage_lists_every_option);
    suite_add_tcase(s, tc);
    tc = tcase_create("resolve");
    tcase_add_test(tc, test_resolve_shapes);
    tcase_add_test(tc, test_resolve_tokens_file);
    tcase_add_test(tc, test_resolve_router_file);
    suite_add_tcase(s, tc);
    tc = tcase_create("issue4_options");
    tcase_add_test(tc, test_new_option_defaults);
    tcase_add_test(tc, test_cf_list);
    tcase_add_loop_test(tc, test_bad_new_lines, 0,
                        (int)(sizeof bad_new_lines / sizeof *bad_new_lines));
    tcase_add_test(tc, test_new_options_accepted);
    tcase_add_test(tc, test_dump_is_npy);
    tcase_add_test(tc, test_usage_lists_new_options);
    tcase_add_test(tc, test_resolve_logits_file);
    tcase_add_test(tc, test_resolve_workload_options);
    tcase_add_test(tc, test_resolve_cf_list);
    tcase_add_test(tc, test_resolve_dump_routing_form);
    suite_add_tcase(s, tc);
    tc = tcase_create("issue5_options");
    tcase_add_test(tc, test_topology_option_defaults);
    tcase_add_test(tc, test_topology_options_parsed);
    tcase_add_loop_test(tc, test_bad_topology_lines, 0,
                        (int)(sizeof bad_topology_lines / sizeof *bad_topology_lines));
    tcase_add_test(tc, test_usage_lists_topology_options);
    suite_add_tcase(s, tc);
    /* Regressions of bugs found and fixed (see the comment above each). */
    tc = tcase_create("regressions");
    tcase_add_test(tc, test_unknown_short_option_in_cluster_named);
    suite_add_tcase(s, tc);
    tc = tcase_create("whole_names");
    tcase_add_loop_test(tc, test_whole_names_refused, 0,
                        (int)(sizeof bad_name_lines / sizeof *bad_name_lines));
    tcase_add_test(tc, test_whole_names_accepted);
    tcase_add_test(tc, test_max_memory_option);
    tcase_add_test(tc, test_usage_lists_every_table_option);
    suite_add_tcase(s, tc);
    tc = tcase_create("issue9_router_options");
    tcase_add_test(tc, test_router_option_defaults);
    tcase_add_test(tc, test_router_options_parsed);
    tcase_add_loop_test(tc, test_bad_router_lines, 0,
                        (int)(sizeof bad_router_lines / sizeof *bad_router_lines));
    tcase_add_test(tc, test_resolve_min_capacity);
    tcase_add_test(tc, test_usage_lists_router_options);
    suite_add_tcase(s, tc);
    tc = tcase_create("issue9_layer_options");
    tcase_add_test(tc, test_layer_option_defaults);
    tcase_add_test(tc, test_layer_options_parsed);
    tcase_add_loop_test(tc, test_bad_layer_lines, 0,
                        (int)(sizeof bad_layer_lines / sizeof *bad_layer_lines));
    tcase_add_test(tc, test_alias_messages_name_the_alias);
    tcase_add_test(tc, test_aliases_equal_their_options);
    tcase_add_test(tc, test_resolve_expert_groups);
    tcase_add_test(tc, test_resolve_expert_choice);
    tcase_add_test(tc, test_resolve_shared_and_jitter);
    tcase_add_loop_test(tc, test_preset_fields, 0,
                        (int)(sizeof preset_cases / sizeof *preset_cases));
    tcase_add_test(tc, test_preset_overridden);
    tcase_add_test(tc, test_preset_hidden_scaling);
    tcase_add_test(tc, test_usage_lists_layer_options);
    tcase_add_test(tc, test_mode_option);
    tcase_add_test(tc, test_exchange_options);
    tcase_add_test(tc, test_regroup_option);
    tcase_add_test(tc, test_steps_option);
    tcase_add_test(tc, test_training_options);
    tcase_add_test(tc, test_group_limit_off);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
