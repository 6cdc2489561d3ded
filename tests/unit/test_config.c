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
    {{"--drop-policy", "random"}, "--drop-policy"},
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
    "network", "max-memory", "score", "expert-bias-file", "topk-scale", "min-capacity", "help",
    "version"};

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
    {{"--expert-bias", "b.npy"}, "--expert-bias-file"},
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
