/* Unit tests of config: option parsing and shape resolution. */
#include "moesim/config.h"
#include "moesim/error.h"

#include <check.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
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

START_TEST(test_bad_lines)
{
    const struct bad_line *b = &bad_lines[_i];
    moe_config cfg;
    char msg[512];
    int rc = parse(&cfg, msg, sizeof msg, b->args[0], b->args[1], b->args[2], b->args[3], NULL);
    ck_assert_msg(rc == MOE_EUSAGE, "'%s %s %s' gave %d (%s), expected MOE_EUSAGE",
                  b->args[0], b->args[1] ? b->args[1] : "", b->args[2] ? b->args[2] : "", rc, msg);
    ck_assert_msg(strstr(msg, b->names) != NULL, "'%s %s': message '%s' does not name '%s'",
                  b->args[0], b->args[1] ? b->args[1] : "", msg, b->names);
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
    /* Regressions of bugs found and fixed (see the comment above each). */
    tc = tcase_create("regressions");
    tcase_add_test(tc, test_unknown_short_option_in_cluster_named);
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
