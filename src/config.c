#include "moesim/config.h"

#include "moesim/error.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void moe_config_defaults(moe_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->tokens = 8192;
    cfg->hidden = 512;
    cfg->ffn = 0;
    cfg->experts = 8;
    cfg->top_k = 2;
    cfg->capacity_factor = 1.25;
    cfg->scope = MOE_SCOPE_GLOBAL;
    cfg->policy = MOE_POLICY_POSITION;
    cfg->seed = 1;
    cfg->iters = 5;
    cfg->warmup = 1;
}

const char *moe_config_usage(void)
{
    return "Usage: mpirun -n R moesim [options]\n"
           "Simulate one expert-parallel Mixture-of-Experts layer: route, dispatch (MPI_Alltoallv),\n"
           "run the experts, combine; report drops, wasted compute, traffic and phase times.\n"
           "\n"
           "Workload\n"
           "  --tokens N             global batch size in tokens (default 8192)\n"
           "  --hidden D             hidden size d (default 512)\n"
           "  --ffn F                expert inner size f (default 2*d)\n"
           "  --tokens-file PATH     token states h from a .npy (N x d, float32/float64, C order);\n"
           "                         N and d then come from the file\n"
           "  --seed S               seed of every generated tensor (default 1)\n"
           "Router\n"
           "  --experts E            number of experts (default 8); needs E >= ranks\n"
           "  --top-k K              experts per token, 1..E (default 2)\n"
           "  --router-file PATH     router weights W from a .npy (E x d)\n"
           "  --renormalize          rescale the k chosen gates to sum to 1 (Mixtral);\n"
           "                         default gate = softmax probability (Switch)\n"
           "Capacity\n"
           "  --capacity-factor CF   slots per expert C = ceil(CF * G * k / E); 0 = dropless\n"
           "                         (default 1.25)\n"
           "  --capacity-scope S     global: one group, the whole batch (G = N, default);\n"
           "                         local: each source rank is a group (G = its tokens)\n"
           "  --drop-policy P        which assignments overflow: position (earlier tokens first;\n"
           "                         the default and, for now, the only policy)\n"
           "  --pad-to-capacity      compute all C slots of every expert, empty ones included,\n"
           "                         as a static-shape system does\n"
           "Run and output\n"
           "  --iters N              timed iterations (default 5)\n"
           "  --warmup N             untimed iterations before them (default 1)\n"
           "  --json PATH            write every result as JSON (keys: docs/json.md)\n"
           "  --dump-routing PATH    CSV of token,choice,expert,gate,accepted (small runs)\n"
           "  --dump-output PATH     the layer output y as an N x d float32 .npy (small runs)\n"
           "  --quiet                no text report and no progress line\n"
           "  --help                 this text\n"
           "  --version              the version\n"
           "\n"
           "Exit status: 0 success, 2 bad options or inputs (nothing is run), 1 failure while running.\n";
}

enum {
    OPT_TOKENS = 256, OPT_HIDDEN, OPT_FFN, OPT_EXPERTS, OPT_TOPK, OPT_CF, OPT_SCOPE, OPT_POLICY,
    OPT_RENORM, OPT_PAD, OPT_SEED, OPT_ITERS, OPT_WARMUP, OPT_TOKENS_FILE, OPT_ROUTER_FILE,
    OPT_JSON, OPT_DUMP_ROUTING, OPT_DUMP_OUTPUT, OPT_QUIET, OPT_HELP, OPT_VERSION
};

static const struct option long_options[] = {
    {"tokens", required_argument, NULL, OPT_TOKENS},
    {"hidden", required_argument, NULL, OPT_HIDDEN},
    {"ffn", required_argument, NULL, OPT_FFN},
    {"experts", required_argument, NULL, OPT_EXPERTS},
    {"top-k", required_argument, NULL, OPT_TOPK},
    {"capacity-factor", required_argument, NULL, OPT_CF},
    {"capacity-scope", required_argument, NULL, OPT_SCOPE},
    {"drop-policy", required_argument, NULL, OPT_POLICY},
    {"renormalize", no_argument, NULL, OPT_RENORM},
    {"pad-to-capacity", no_argument, NULL, OPT_PAD},
    {"seed", required_argument, NULL, OPT_SEED},
    {"iters", required_argument, NULL, OPT_ITERS},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"tokens-file", required_argument, NULL, OPT_TOKENS_FILE},
    {"router-file", required_argument, NULL, OPT_ROUTER_FILE},
    {"json", required_argument, NULL, OPT_JSON},
    {"dump-routing", required_argument, NULL, OPT_DUMP_ROUTING},
    {"dump-output", required_argument, NULL, OPT_DUMP_OUTPUT},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

/* A whole decimal integer in [lo, hi]. */
static int parse_int(const char *name, const char *text, int64_t lo, int64_t hi, int64_t *out,
                     char *msg, size_t msglen)
{
    errno = 0;
    char *end;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end != '\0' || errno == ERANGE)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--%s needs a whole number, got '%s'", name, text);
    if (v < lo || v > hi)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--%s must be between %lld and %lld, got %lld",
                        name, (long long)lo, (long long)hi, v);
    *out = v;
    return MOE_OK;
}

static int parse_cf(const char *text, double *out, char *msg, size_t msglen)
{
    errno = 0;
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !isfinite(v))
        return moe_fail(MOE_EUSAGE, msg, msglen, "--capacity-factor needs a number, got '%s'", text);
    if (v < 0.0)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--capacity-factor must be >= 0 (0 means dropless), got %s", text);
    if (v > 1e6)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--capacity-factor %s is absurdly large", text);
    *out = v;
    return MOE_OK;
}

int moe_config_parse(moe_config *cfg, int argc, char **argv, char *msg, size_t msglen)
{
    optind = 0; /* glibc: full re-initialisation, so repeated calls (tests) start afresh */
    opterr = 0;
    int64_t v;
    int rc = MOE_OK;
    for (;;) {
        int longindex = -1;
        int c = getopt_long(argc, argv, ":", long_options, &longindex);
        if (c == -1)
            break;
        switch (c) {
        case OPT_TOKENS:
            rc = parse_int("tokens", optarg, 1, INT64_C(1) << 40, &cfg->tokens, msg, msglen);
            cfg->set_tokens = true;
            break;
        case OPT_HIDDEN:
            rc = parse_int("hidden", optarg, 1, MOE_MAX_WIDTH, &cfg->hidden, msg, msglen);
            cfg->set_hidden = true;
            break;
        case OPT_FFN:
            rc = parse_int("ffn", optarg, 1, MOE_MAX_WIDTH, &cfg->ffn, msg, msglen);
            break;
        case OPT_EXPERTS:
            rc = parse_int("experts", optarg, 1, MOE_MAX_EXPERTS, &v, msg, msglen);
            cfg->experts = (int)v;
            cfg->set_experts = true;
            break;
        case OPT_TOPK:
            rc = parse_int("top-k", optarg, 1, MOE_MAX_EXPERTS, &v, msg, msglen);
            cfg->top_k = (int)v;
            break;
        case OPT_CF:
            rc = parse_cf(optarg, &cfg->capacity_factor, msg, msglen);
            break;
        case OPT_SCOPE:
            if (strcmp(optarg, "global") == 0)
                cfg->scope = MOE_SCOPE_GLOBAL;
            else if (strcmp(optarg, "local") == 0)
                cfg->scope = MOE_SCOPE_LOCAL;
            else
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--capacity-scope must be 'global' or 'local', got '%s'", optarg);
            break;
        case OPT_POLICY:
            if (strcmp(optarg, "position") == 0)
                cfg->policy = MOE_POLICY_POSITION;
            else
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--drop-policy must be 'position' (the only policy so far), got '%s'",
                              optarg);
            break;
        case OPT_RENORM:
            cfg->renormalize = true;
            break;
        case OPT_PAD:
            cfg->pad_to_capacity = true;
            break;
        case OPT_SEED:
            rc = parse_int("seed", optarg, 0, INT64_MAX, &v, msg, msglen);
            cfg->seed = (uint64_t)v;
            break;
        case OPT_ITERS:
            rc = parse_int("iters", optarg, 1, 1000000, &v, msg, msglen);
            cfg->iters = (int)v;
            break;
        case OPT_WARMUP:
            rc = parse_int("warmup", optarg, 0, 1000000, &v, msg, msglen);
            cfg->warmup = (int)v;
            break;
        case OPT_TOKENS_FILE:
            cfg->tokens_file = optarg;
            break;
        case OPT_ROUTER_FILE:
            cfg->router_file = optarg;
            break;
        case OPT_JSON:
            cfg->json_path = optarg;
            break;
        case OPT_DUMP_ROUTING:
            cfg->dump_routing = optarg;
            break;
        case OPT_DUMP_OUTPUT:
            cfg->dump_output = optarg;
            break;
        case OPT_QUIET:
            cfg->quiet = true;
            break;
        case OPT_HELP:
            cfg->help = true;
            break;
        case OPT_VERSION:
            cfg->version = true;
            break;
        case ':':
            return moe_fail(MOE_EUSAGE, msg, msglen, "option '%s' needs a value", argv[optind - 1]);
        default:
            /* getopt_long sets optopt to the short option character it did not know, to the value of a
             * long option that was given a value it does not take, and to 0 for an unknown long one. */
            if (optopt >= OPT_TOKENS)
                for (const struct option *o = long_options; o->name != NULL; o++)
                    if (o->val == optopt)
                        return moe_fail(MOE_EUSAGE, msg, msglen, "option '--%s' takes no value",
                                        o->name);
            if (optopt > 0 && optopt < 256)
                return moe_fail(MOE_EUSAGE, msg, msglen,
                                "unknown option '-%c' (options are long: --tokens, not -tokens; see "
                                "--help)",
                                optopt);
            return moe_fail(MOE_EUSAGE, msg, msglen, "unknown option '%s' (see --help)",
                            argv[optind - 1]);
        }
        if (rc != MOE_OK)
            return rc;
    }
    if (optind < argc)
        return moe_fail(MOE_EUSAGE, msg, msglen, "unexpected argument '%s' (see --help)",
                        argv[optind]);
    return MOE_OK;
}

int moe_config_resolve(moe_config *cfg, int nranks, const moe_npy_header *tokens_hdr,
                       const moe_npy_header *router_hdr, char *msg, size_t msglen)
{
    if (tokens_hdr != NULL) {
        if (cfg->set_tokens && cfg->tokens != tokens_hdr->rows)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--tokens %lld disagrees with --tokens-file '%s', which holds %lld tokens",
                            (long long)cfg->tokens, cfg->tokens_file, (long long)tokens_hdr->rows);
        if (cfg->set_hidden && cfg->hidden != tokens_hdr->cols)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--hidden %lld disagrees with --tokens-file '%s', whose rows have %lld values",
                            (long long)cfg->hidden, cfg->tokens_file, (long long)tokens_hdr->cols);
        if (tokens_hdr->cols > MOE_MAX_WIDTH)
            return moe_fail(MOE_EUSAGE, msg, msglen, "--tokens-file '%s': hidden size %lld is over %lld",
                            cfg->tokens_file, (long long)tokens_hdr->cols, (long long)MOE_MAX_WIDTH);
        cfg->tokens = tokens_hdr->rows;
        cfg->hidden = tokens_hdr->cols;
    }
    if (router_hdr != NULL) {
        if (router_hdr->cols != cfg->hidden)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--router-file '%s' has shape (%lld, %lld): its %lld columns disagree "
                            "with the hidden size %lld",
                            cfg->router_file, (long long)router_hdr->rows, (long long)router_hdr->cols,
                            (long long)router_hdr->cols, (long long)cfg->hidden);
        if (cfg->set_experts && router_hdr->rows != cfg->experts)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--experts %d disagrees with --router-file '%s', which has %lld rows",
                            cfg->experts, cfg->router_file, (long long)router_hdr->rows);
        if (router_hdr->rows > MOE_MAX_EXPERTS)
            return moe_fail(MOE_EUSAGE, msg, msglen, "--router-file '%s' has %lld experts; at most %d",
                            cfg->router_file, (long long)router_hdr->rows, MOE_MAX_EXPERTS);
        cfg->experts = (int)router_hdr->rows;
    }
    if (cfg->ffn == 0)
        cfg->ffn = 2 * cfg->hidden;
    if (cfg->top_k > cfg->experts)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--top-k %d is larger than the number of experts (%d)",
                        cfg->top_k, cfg->experts);
    if (nranks > cfg->experts)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%d ranks but only %d experts: expert parallelism needs at least one expert "
                        "per rank (use --experts >= %d or fewer ranks)",
                        nranks, cfg->experts, nranks);
    /* Each rank sends at most (its tokens) * k rows; counts and displacements are MPI ints in rows. */
    int64_t max_local = (cfg->tokens + nranks - 1) / nranks;
    if (max_local * cfg->top_k > INT_MAX)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%lld tokens per rank x top-k %d = %lld rows exceed what one MPI count can "
                        "address (%d): use more ranks or fewer tokens",
                        (long long)max_local, cfg->top_k, (long long)(max_local * cfg->top_k), INT_MAX);
    if (cfg->dump_routing != NULL && cfg->tokens * cfg->top_k > INT_MAX)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--dump-routing is for small runs: %lld assignments are more than one "
                        "gather can hold (%d)",
                        (long long)(cfg->tokens * cfg->top_k), INT_MAX);
    if (cfg->dump_output != NULL && cfg->tokens > INT_MAX)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--dump-output is for small runs: %lld tokens are more than one gather can "
                        "hold (%d)",
                        (long long)cfg->tokens, INT_MAX);
    if (cfg->pad_to_capacity && cfg->capacity_factor == 0.0)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--pad-to-capacity needs a capacity: it has no meaning with "
                        "--capacity-factor 0 (dropless)");
    return MOE_OK;
}
