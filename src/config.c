#include "moesim/config.h"

#include "moesim/error.h"
#include "moesim/memory.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool moe_config_dump_is_npy(const char *path)
{
    size_t n = strlen(path);
    return n >= 4 && strcmp(path + n - 4, ".npy") == 0;
}

void moe_config_defaults(moe_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->tokens = 8192;
    cfg->hidden = 512;
    cfg->ffn = 0;
    cfg->experts = 8;
    cfg->top_k = 2;
    cfg->capacity_factor = 1.25;
    cfg->cf_list[0] = 1.25;
    cfg->n_cf = 1;
    cfg->hot_share = 0.5;
    cfg->scope = MOE_SCOPE_GLOBAL;
    cfg->policy = MOE_POLICY_POSITION;
    cfg->score = MOE_SCORE_SOFTMAX;
    cfg->topk_scale = 1.0;
    cfg->min_capacity = 0;
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
           "  --skew S               Zipf-like expert popularity, p_e ~ (e+1)^-S, through a router\n"
           "                         bias that is reported (default 0: the uniform router)\n"
           "  --hot-experts N        make experts 0..N-1 hot: a router bias chosen so that\n"
           "                         --hot-share of the tokens route to at least one of them\n"
           "  --hot-share X          share of tokens the hot experts attract, 0 < X < 1 (default 0.5)\n"
           "  --clusters C           draw tokens around C centres so routing is correlated\n"
           "                         (default 0: independent tokens)\n"
           "Router\n"
           "  --experts E            number of experts (default 8); needs E >= ranks\n"
           "  --top-k K              experts per token, 1..E (default 2)\n"
           "  --router-file PATH     router weights W from a .npy (E x d)\n"
           "  --logits-file PATH     replay router logits from a .npy (N x E) instead of computing\n"
           "                         them (e.g. recorded from a real model, or --dump-routing X.npy)\n"
           "  --renormalize          rescale the k chosen gates to sum to 1 (Mixtral);\n"
           "                         default gate = softmax probability (Switch)\n"
           "  --score F              softmax (default) or sigmoid: s = sigmoid(z) per expert, the\n"
           "                         k chosen s normalized to sum 1 (DeepSeek-V3)\n"
           "  --expert-bias-file PATH\n"
           "                         a per-expert bias b (.npy of E values, shape (1, E) or (E, 1)):\n"
           "                         experts are chosen by score + b, the gate stays the score\n"
           "                         (DeepSeek-V3's balancing bias); with either score\n"
           "  --topk-scale S         multiply every gate by S > 0 after normalizing (DeepSeek-V3:\n"
           "                         2.5; Megatron --moe-router-topk-scaling-factor); default 1\n"
           "Capacity\n"
           "  --capacity-factor CF   slots per expert C = ceil(CF * G * k / E); 0 = dropless\n"
           "                         (default 1.25). A list (1.0,1.25,1.5,2.0) routes once and runs\n"
           "                         the layer for each value: the capacity-factor ablation\n"
           "  --predict-only         print the predicted drops and empty slots for every CF, then\n"
           "                         stop before any token row moves\n"
           "  --capacity-scope S     global: one group, the whole batch (G = N, default);\n"
           "                         local: each source rank is a group (G = its tokens)\n"
           "  --min-capacity M       at least M slots per expert and group: C = max(ceil(CF G k / E),\n"
           "                         M) (DeepSpeed's min_capacity; default 0); not when dropless\n"
           "  --drop-policy P        which assignments overflow: position (earlier tokens first;\n"
           "                         the default and, for now, the only policy)\n"
           "  --pad-to-capacity      compute all C slots of every expert, empty ones included,\n"
           "                         as a static-shape system does\n"
           "Topology and exchange\n"
           "  --a2a MODE             flat: one MPI_Alltoallv (default); hierarchical: gather to a\n"
           "                         leader per node, leaders exchange, scatter (Tutel, DeepSpeed)\n"
           "  --ranks-per-node N     treat each N consecutive ranks as one node (emulate a cluster\n"
           "                         on one machine); default: ranks sharing memory are a node\n"
           "  --topology SPEC        study another machine: an hwloc XML file (lstopo --of xml) or a\n"
           "                         synthetic description such as \"package:2 numa:2 core:4 pu:1\";\n"
           "                         ranks are then placed one per core, in order\n"
           "  --network FILE         project dispatch and combine onto a cluster: latency and\n"
           "                         bandwidth per locality class (examples in launch/*.network)\n"
           "Run and output\n"
           "  --iters N              timed iterations (default 5)\n"
           "  --warmup N             untimed iterations before them (default 1)\n"
           "  --json PATH            write every result as JSON (keys: docs/json.md); '-' is\n"
           "                         standard output (the text report then goes to stderr)\n"
           "  --dump-routing PATH    PATH.csv: token,choice,expert,gate,accepted; PATH.npy: the\n"
           "                         router logits (N x E float32), replayable with --logits-file\n"
           "  --dump-output PATH     the layer output y as an N x d float32 .npy (small runs)\n"
           "  --max-memory SIZE      memory budget of each node, instead of its MemAvailable:\n"
           "                         bytes with K, M, G, T (powers of 1024; KiB, MiB, GiB, TiB\n"
           "                         too), or a share of the node's memory such as 50%\n"
           "  --quiet                no text report and no progress line\n"
           "  --help                 this text\n"
           "  --version              the version\n"
           "\n"
           "Outputs: '-' is standard output; a device, FIFO or socket is written in place; a\n"
           "symbolic link's target is written; a regular file is replaced atomically. An output\n"
           "that is an input or another output is refused.\n"
           "Exit status: 0 success, 2 bad options or inputs (nothing is run), 1 failure while\n"
           "running, 128+N when signal N (SIGINT 130, SIGTERM 143) stopped the run before any\n"
           "output was written.\n";
}

enum {
    OPT_TOKENS = 256, OPT_HIDDEN, OPT_FFN, OPT_EXPERTS, OPT_TOPK, OPT_CF, OPT_SCOPE, OPT_POLICY,
    OPT_RENORM, OPT_PAD, OPT_SEED, OPT_ITERS, OPT_WARMUP, OPT_TOKENS_FILE, OPT_ROUTER_FILE,
    OPT_JSON, OPT_DUMP_ROUTING, OPT_DUMP_OUTPUT, OPT_QUIET, OPT_HELP, OPT_VERSION, OPT_SKEW,
    OPT_HOT, OPT_HOT_SHARE, OPT_CLUSTERS, OPT_LOGITS_FILE, OPT_PREDICT_ONLY, OPT_TOPOLOGY,
    OPT_RANKS_PER_NODE, OPT_A2A, OPT_NETWORK, OPT_MAX_MEMORY, OPT_SCORE, OPT_SELECTION_BIAS,
    OPT_TOPK_SCALE, OPT_MIN_CAPACITY
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
    {"skew", required_argument, NULL, OPT_SKEW},
    {"hot-experts", required_argument, NULL, OPT_HOT},
    {"hot-share", required_argument, NULL, OPT_HOT_SHARE},
    {"clusters", required_argument, NULL, OPT_CLUSTERS},
    {"logits-file", required_argument, NULL, OPT_LOGITS_FILE},
    {"predict-only", no_argument, NULL, OPT_PREDICT_ONLY},
    {"topology", required_argument, NULL, OPT_TOPOLOGY},
    {"ranks-per-node", required_argument, NULL, OPT_RANKS_PER_NODE},
    {"a2a", required_argument, NULL, OPT_A2A},
    {"network", required_argument, NULL, OPT_NETWORK},
    {"max-memory", required_argument, NULL, OPT_MAX_MEMORY},
    {"score", required_argument, NULL, OPT_SCORE},
    {"expert-bias-file", required_argument, NULL, OPT_SELECTION_BIAS},
    {"topk-scale", required_argument, NULL, OPT_TOPK_SCALE},
    {"min-capacity", required_argument, NULL, OPT_MIN_CAPACITY},
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

/* A finite number in [lo, hi]. */
static int parse_real(const char *name, const char *text, double lo, double hi, double *out,
                      char *msg, size_t msglen)
{
    errno = 0;
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !isfinite(v))
        return moe_fail(MOE_EUSAGE, msg, msglen, "--%s needs a number, got '%s'", name, text);
    if (v < lo || v > hi)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--%s must be between %g and %g, got %s", name, lo,
                        hi, text);
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

/* "1.0,1.25,1.5": up to MOE_MAX_CF values, each as parse_cf. */
static int parse_cf_list(moe_config *cfg, const char *text, char *msg, size_t msglen)
{
    char item[64];
    int n = 0;
    const char *start = text;
    for (;;) {
        const char *comma = strchr(start, ',');
        size_t len = comma ? (size_t)(comma - start) : strlen(start);
        if (len == 0 || len >= sizeof item)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--capacity-factor needs a number or a comma-separated list of numbers, "
                            "got '%s'",
                            text);
        if (n == MOE_MAX_CF)
            return moe_fail(MOE_EUSAGE, msg, msglen, "--capacity-factor takes at most %d values",
                            MOE_MAX_CF);
        memcpy(item, start, len);
        item[len] = '\0';
        int rc = parse_cf(item, &cfg->cf_list[n], msg, msglen);
        if (rc != MOE_OK)
            return rc;
        n++;
        if (comma == NULL)
            break;
        start = comma + 1;
    }
    cfg->n_cf = n;
    cfg->capacity_factor = cfg->cf_list[0];
    return MOE_OK;
}

/* Edit distance between two option names (without the dashes), for suggestions. */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 99;
    int row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* getopt_long takes any unambiguous prefix of a long option (--expert for --experts), which turns a
 * typo into a silent change of meaning. Look at every "--name[=value]" before getopt_long does and
 * refuse a name that is not exactly one of ours, suggesting the options it abbreviates or the
 * nearest by edit distance. Values of options that take one are skipped, so "--json --x" is fine. */
static int check_exact_names(int argc, char **argv, char *msg, size_t msglen)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0)
            break;
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            continue;
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct option *exact = NULL;
        for (const struct option *o = long_options; o->name != NULL; o++)
            if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
                exact = o;
        if (exact != NULL) {
            if (exact->has_arg == required_argument && eq == NULL)
                i++; /* its value, whatever it looks like */
            continue;
        }
        char given[80];
        snprintf(given, sizeof given, "%.*s", (int)(len < 70 ? len : 70), name);
        char prefixed[512] = "";
        int n_prefixed = 0;
        for (const struct option *o = long_options; o->name != NULL; o++)
            if (len > 0 && strncmp(o->name, name, len) == 0) {
                size_t used = strlen(prefixed);
                snprintf(prefixed + used, sizeof prefixed - used, "%s--%s", n_prefixed ? ", " : "",
                         o->name);
                n_prefixed++;
            }
        if (n_prefixed == 1)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "unknown option '--%s': option names must be given whole; did you mean "
                            "%s?",
                            given, prefixed);
        if (n_prefixed > 1) {
            /* the one it most resembles first ("--expert": --experts before --expert-bias-file) */
            const char *closest = NULL;
            int best_d = 1 << 30;
            for (const struct option *o = long_options; o->name != NULL; o++) {
                int dist = edit_distance(given, o->name);
                if (strncmp(o->name, name, len) == 0 && dist < best_d) {
                    best_d = dist;
                    closest = o->name;
                }
            }
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "unknown option '--%s': it abbreviates several options (%s); give one "
                            "whole, did you mean --%s?",
                            given, prefixed, closest);
        }
        /* a valid name with something added ("--a2a-mode" for "--a2a") */
        const struct option *stem = NULL;
        for (const struct option *o = long_options; o->name != NULL; o++)
            if (strlen(o->name) < len && strncmp(o->name, name, strlen(o->name)) == 0 &&
                (stem == NULL || strlen(o->name) > strlen(stem->name)))
                stem = o;
        if (stem != NULL)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "unknown option '--%s': did you mean --%s? (see --help)", given,
                            stem->name);
        const char *nearest = NULL;
        int best = 99;
        for (const struct option *o = long_options; o->name != NULL; o++) {
            int dist = edit_distance(given, o->name);
            if (dist < best) {
                best = dist;
                nearest = o->name;
            }
        }
        int limit = len < 6 ? 2 : (int)len / 3;
        if (nearest != NULL && best <= limit)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "unknown option '--%s': did you mean --%s? (see --help)", given, nearest);
        return moe_fail(MOE_EUSAGE, msg, msglen, "unknown option '--%s' (see --help)", given);
    }
    return MOE_OK;
}

int moe_config_parse(moe_config *cfg, int argc, char **argv, char *msg, size_t msglen)
{
    optind = 0; /* glibc: full re-initialisation, so repeated calls (tests) start afresh */
    opterr = 0;
    int64_t v;
    int rc = check_exact_names(argc, argv, msg, msglen);
    if (rc != MOE_OK)
        return rc;
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
            rc = parse_cf_list(cfg, optarg, msg, msglen);
            break;
        case OPT_SKEW:
            rc = parse_real("skew", optarg, 0.0, 100.0, &cfg->skew, msg, msglen);
            break;
        case OPT_HOT:
            rc = parse_int("hot-experts", optarg, 0, MOE_MAX_EXPERTS, &v, msg, msglen);
            cfg->hot_experts = (int)v;
            break;
        case OPT_HOT_SHARE:
            rc = parse_real("hot-share", optarg, 0.0, 1.0, &cfg->hot_share, msg, msglen);
            if (rc == MOE_OK && (cfg->hot_share <= 0.0 || cfg->hot_share >= 1.0))
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--hot-share must be strictly between 0 and 1, got %s", optarg);
            cfg->set_hot_share = true;
            break;
        case OPT_CLUSTERS:
            rc = parse_int("clusters", optarg, 0, INT64_C(1) << 40, &cfg->clusters, msg, msglen);
            break;
        case OPT_LOGITS_FILE:
            cfg->logits_file = optarg;
            break;
        case OPT_PREDICT_ONLY:
            cfg->predict_only = true;
            break;
        case OPT_TOPOLOGY:
            if (optarg[0] == '\0')
                rc = moe_fail(MOE_EUSAGE, msg, msglen, "--topology needs a file or a description");
            cfg->topology = optarg;
            break;
        case OPT_RANKS_PER_NODE:
            rc = parse_int("ranks-per-node", optarg, 1, 1 << 20, &v, msg, msglen);
            cfg->ranks_per_node = (int)v;
            break;
        case OPT_A2A:
            if (strcmp(optarg, "flat") == 0)
                cfg->hierarchical = false;
            else if (strcmp(optarg, "hierarchical") == 0)
                cfg->hierarchical = true;
            else
                rc = moe_fail(MOE_EUSAGE, msg, msglen, "--a2a must be 'flat' or 'hierarchical', got '%s'",
                              optarg);
            break;
        case OPT_NETWORK:
            cfg->network = optarg;
            break;
        case OPT_MAX_MEMORY:
            rc = moe_memory_parse_size(optarg, &cfg->max_memory, &cfg->max_memory_percent, msg,
                                       msglen);
            break;
        case OPT_SCORE:
            if (strcmp(optarg, "softmax") == 0)
                cfg->score = MOE_SCORE_SOFTMAX;
            else if (strcmp(optarg, "sigmoid") == 0)
                cfg->score = MOE_SCORE_SIGMOID;
            else
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--score must be 'softmax' or 'sigmoid', got '%s'", optarg);
            break;
        case OPT_SELECTION_BIAS:
            if (optarg[0] == '\0')
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--expert-bias-file needs a .npy file of E float32 values");
            cfg->expert_bias_file = optarg;
            break;
        case OPT_TOPK_SCALE:
            rc = parse_real("topk-scale", optarg, 0.0, MOE_MAX_TOPK_SCALE, &cfg->topk_scale, msg,
                            msglen);
            if (rc == MOE_OK && !(cfg->topk_scale > 0.0))
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--topk-scale must be greater than 0 (it multiplies every gate), got %s",
                              optarg);
            break;
        case OPT_MIN_CAPACITY:
            rc = parse_int("min-capacity", optarg, 0, MOE_MAX_MIN_CAPACITY, &cfg->min_capacity, msg,
                           msglen);
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
                       const moe_npy_header *router_hdr, const moe_npy_header *logits_hdr, char *msg,
                       size_t msglen)
{
    if (logits_hdr != NULL && router_hdr != NULL)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--logits-file replaces the router: it cannot be combined with --router-file");
    if (logits_hdr != NULL) {
        int64_t n_tok = tokens_hdr ? tokens_hdr->rows : cfg->tokens;
        if ((tokens_hdr != NULL || cfg->set_tokens) && logits_hdr->rows != n_tok)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--logits-file '%s' has %lld rows but the batch has %lld tokens",
                            cfg->logits_file, (long long)logits_hdr->rows, (long long)n_tok);
        if (cfg->set_experts && logits_hdr->cols != cfg->experts)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--experts %d disagrees with --logits-file '%s', which has %lld columns",
                            cfg->experts, cfg->logits_file, (long long)logits_hdr->cols);
        if (logits_hdr->cols > MOE_MAX_EXPERTS)
            return moe_fail(MOE_EUSAGE, msg, msglen, "--logits-file '%s' has %lld experts; at most %d",
                            cfg->logits_file, (long long)logits_hdr->cols, MOE_MAX_EXPERTS);
        cfg->tokens = logits_hdr->rows;
        cfg->experts = (int)logits_hdr->cols;
    }
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
    if (cfg->dump_routing != NULL && !moe_config_dump_is_npy(cfg->dump_routing) &&
        cfg->tokens * cfg->top_k > INT_MAX)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--dump-routing is for small runs: %lld assignments are more than one "
                        "gather can hold (%d)",
                        (long long)(cfg->tokens * cfg->top_k), INT_MAX);
    if (cfg->dump_output != NULL && cfg->tokens > INT_MAX)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--dump-output is for small runs: %lld tokens are more than one gather can "
                        "hold (%d)",
                        (long long)cfg->tokens, INT_MAX);
    for (int i = 0; i < cfg->n_cf; i++)
        if (cfg->pad_to_capacity && cfg->cf_list[i] == 0.0)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--pad-to-capacity needs a capacity: it has no meaning with "
                            "--capacity-factor 0 (dropless)");
    bool any_cap = false;
    for (int i = 0; i < cfg->n_cf; i++)
        any_cap |= cfg->cf_list[i] > 0.0;
    if (cfg->min_capacity > 0 && !any_cap)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--min-capacity %lld needs a capacity: it has no effect with "
                        "--capacity-factor 0 (dropless)",
                        (long long)cfg->min_capacity);
    if (cfg->hot_experts >= cfg->experts)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--hot-experts %d must be smaller than the number of experts (%d)",
                        cfg->hot_experts, cfg->experts);
    if (cfg->set_hot_share && cfg->hot_experts == 0)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--hot-share needs --hot-experts N (N >= 1)");
    if (cfg->clusters > 0 && cfg->tokens_file != NULL)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--clusters shapes generated tokens: it cannot be combined with --tokens-file");
    if (cfg->dump_routing != NULL && moe_config_dump_is_npy(cfg->dump_routing) &&
        cfg->tokens > INT_MAX)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--dump-routing .npy is for small runs: %lld tokens are more than one gather "
                        "can hold",
                        (long long)cfg->tokens);
    return MOE_OK;
}
