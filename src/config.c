#include "moesim/config.h"

#include "moesim/error.h"
#include "moesim/memory.h"
#include "moesim/tokens.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
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
    cfg->routing = MOE_ROUTING_TOKEN_CHOICE;
    cfg->expert_groups = 0;
    cfg->group_top_k = 0;
    cfg->shared_experts = 0;
    cfg->shared_ffn = 0;
    cfg->noisy_top_k = false;
    cfg->input_jitter = 0.0;
    cfg->preset = NULL;
    cfg->seed = 1;
    cfg->iters = 5;
    cfg->steps = 1;
    cfg->bias_update_rate = 1e-3;
    cfg->optimizer = MOE_TRAIN_DEFAULT_OPTIMIZER;
    cfg->lr = MOE_TRAIN_DEFAULT_LR;
    cfg->teacher_experts = 1;
    cfg->warmup = 1;
    cfg->spelled.experts = "experts";
    cfg->spelled.top_k = "top-k";
    cfg->spelled.capacity_factor = "capacity-factor";
    cfg->spelled.policy = "drop-policy";
    cfg->spelled.score = "score";
    cfg->spelled.topk_scale = "topk-scale";
    cfg->spelled.expert_groups = "expert-groups";
    cfg->spelled.group_top_k = "group-top-k";
    cfg->spelled.shared_experts = "shared-experts";
    cfg->spelled.shared_ffn = "shared-ffn";
    cfg->spelled.pad_to_capacity = "pad-to-capacity";
    cfg->spelled.input_jitter = "input-jitter";
}

/* Names of the enums as the options spell them, indexed by value (capacity.h, router.h). */
static const char *const policy_names[] = {"position", "probs", "choice", "random", "reroute"};
static const char *const routing_names[] = {"token-choice", "expert-choice"};
static const char *const mode_names[] = {"forward", "dispatch", "fwd-bwd", "train"};
static const char *const wire_names[] = {"fp32", "bf16", "fp8"}; /* moe_wire order */
static const char *const dispatch_names[] = {"per-expert", "per-rank"};
static const char *const raw_names[] = {"first", "on", "off"}; /* moe_raw_baseline order */
static const char *const regroup_names[] = {"auto", "alltoallw", "slots", "copy",
                                            "alltoallw-slots"}; /* moe_regroup_kind order */
static const char *const matrix_names[] = {"auto", "full", "summary"};
static const char *const report_names[] = {"auto", "full", "summary"}; /* moe_report_kind */

bool moe_config_full_report(const moe_config *cfg)
{
    return cfg->report == MOE_REPORT_FULL ||
           (cfg->report == MOE_REPORT_AUTO && cfg->experts <= MOE_FULL_REPORT_EXPERTS);
}

const char *moe_report_kind_name(moe_report_kind k)
{
    return k >= MOE_REPORT_AUTO && k <= MOE_REPORT_SUMMARY ? report_names[k] : "?";
}

bool moe_config_full_matrix(const moe_config *cfg, int R)
{
    return cfg->traffic_matrix == MOE_MATRIX_FULL ||
           (cfg->traffic_matrix == MOE_MATRIX_AUTO && R <= MOE_FULL_MATRIX_RANKS);
}

const char *moe_regroup_name(moe_regroup_kind r)
{
    return r >= MOE_REGROUP_AUTO && r <= MOE_REGROUP_W_SLOTS ? regroup_names[r] : "unknown";
}

int64_t *moe_config_token_blocks(const moe_config *cfg, int R)
{
    if ((cfg->tokens_per_rank == NULL && cfg->workload != MOE_WL_RAGGED) || R < 1)
        return NULL;
    int64_t *b = malloc((size_t)R * sizeof *b);
    char scratch[256];
    if (b != NULL && cfg->tokens_per_rank != NULL &&
        moe_tokens_per_rank_parse(cfg->tokens_per_rank, R, cfg->tokens, b, scratch,
                                  sizeof scratch) != MOE_OK) {
        free(b);
        return NULL;
    }
    if (b != NULL && cfg->tokens_per_rank == NULL)
        moe_tokens_ragged(b, cfg->tokens, R);
    return b;
}

int64_t moe_config_max_block(const moe_config *cfg, int R)
{
    int64_t *b = moe_config_token_blocks(cfg, R), most = (cfg->tokens + R - 1) / R;
    if (b != NULL) {
        most = 0;
        for (int r = 0; r < R; r++)
            most = b[r] > most ? b[r] : most;
    }
    free(b);
    return most;
}

moe_regroup_kind moe_config_regroup(const moe_config *cfg, int R)
{
    /* the backward stages its gradient rows as the copy does (docs/training.md) */
    if (cfg->hierarchical || cfg->dispatch == MOE_DISPATCH_PER_RANK ||
        MOE_MODE_HAS_BACKWARD(cfg->mode))
        return MOE_REGROUP_COPY;
    if (cfg->regroup != MOE_REGROUP_AUTO)
        return cfg->regroup;
    /* Measured here (docs/model.md): one MPI_Alltoallw into the blocks is as fast as the plain
     * MPI_Alltoallv of the same bytes, while one Alltoallv per slot pays a collective's latency
     * per slot. Slots when there is one slot a rank (that one Alltoallv is the plain one), or when
     * a rank's rows out could pass Alltoallw's int byte displacements. */
    int slots = (int)(((int64_t)cfg->experts + cfg->redundant_experts + R - 1) / R);
    int64_t n = moe_config_max_block(cfg, R); /* the largest rank's rows out decide */
    int64_t A = cfg->routing == MOE_ROUTING_EXPERT_CHOICE ? cfg->experts : cfg->top_k;
    double bytes = (double)n * (double)A * (double)cfg->hidden * (double)sizeof(float);
    return slots <= 1 || bytes > (double)INT_MAX ? MOE_REGROUP_SLOTS : MOE_REGROUP_W;
}

bool moe_config_regroup_probes(const moe_config *cfg, int R)
{
    return cfg->regroup == MOE_REGROUP_AUTO && !cfg->predict_only &&
           cfg->wire_combine == MOE_WIRE_FP32 && moe_config_regroup(cfg, R) == MOE_REGROUP_W;
}

const char *moe_raw_baseline_name(moe_raw_baseline r)
{
    return r >= MOE_RAW_FIRST && r <= MOE_RAW_OFF ? raw_names[r] : "unknown";
}

const char *moe_dispatch_name(moe_dispatch_kind k)
{
    return dispatch_names[k == MOE_DISPATCH_PER_RANK];
}

const char *moe_mode_name(moe_mode m)
{
    return m >= MOE_MODE_FORWARD && m <= MOE_MODE_TRAIN ? mode_names[m] : "forward";
}

/* The MoE layer of a model family, as --preset sets it. */
typedef struct moe_preset {
    const char *name;
    int64_t hidden, ffn;
    int experts, top_k;
    moe_score score;
    bool renormalize;   /* meaningful with softmax only: sigmoid gates are always normalized */
    double topk_scale;
    int expert_groups, group_top_k, shared_experts;
    int64_t shared_ffn;
    moe_policy policy;
    double capacity_factor; /* < 0: moesim's default is left */
} moe_preset;

static const moe_preset presets[] = {
    /* Switch-Base (Fedus et al. 2021): top-1, gate = p of the chosen expert */
    {"switch", 768, 3072, 128, 1, MOE_SCORE_SOFTMAX, false, 1.0, 0, 0, 0, 0, MOE_POLICY_POSITION,
     -1.0},
    /* GShard MoE(128E) (Lepikhin et al. 2020, Alg. 1): top-2, the two gates over their sum,
     * first choices served before second ones */
    {"gshard", 1024, 8192, 128, 2, MOE_SCORE_SOFTMAX, true, 1.0, 0, 0, 0, 0, MOE_POLICY_CHOICE,
     -1.0},
    /* Mixtral 8x7B (Jiang et al. 2024): top-2 renormalized, dropless as released */
    {"mixtral", 4096, 14336, 8, 2, MOE_SCORE_SOFTMAX, true, 1.0, 0, 0, 0, 0, MOE_POLICY_PROBS, 0.0},
    /* DeepSeekMoE 16B (Dai et al. 2024): 64 fine-grained experts, top-6, 2 shared */
    {"deepseek-moe", 2048, 1408, 64, 6, MOE_SCORE_SOFTMAX, false, 1.0, 0, 0, 2, 1408,
     MOE_POLICY_PROBS, -1.0},
    /* DeepSeek-V3 (technical report 2024): sigmoid scores, route scale 2.5, 8 groups of which a
     * token keeps 4, 1 shared expert, no token dropping */
    {"deepseek-v3", 7168, 2048, 256, 8, MOE_SCORE_SIGMOID, false, 2.5, 8, 4, 1, 2048,
     MOE_POLICY_PROBS, 0.0},
    /* Qwen3-235B-A22B (its config.json: norm_topk_prob true, no shared expert) */
    {"qwen3-moe", 4096, 1536, 128, 8, MOE_SCORE_SOFTMAX, true, 1.0, 0, 0, 0, 0, MOE_POLICY_PROBS,
     0.0},
};
#define N_PRESETS (sizeof presets / sizeof *presets)

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
           "  --token-mean MU        add MU m to every generated token, m one shared normal\n"
           "                         direction (default 0; --mode train: 0.5)\n"
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
           "  --routing R            token-choice: each token takes its top-k experts (default);\n"
           "                         expert-choice: each expert takes its top C tokens (Zhou et al.\n"
           "                         2022), so no expert overflows; needs every CF > 0\n"
           "  --expert-groups G      G contiguous groups of E/G experts (G divides E); needs\n"
           "                         --group-top-k\n"
           "  --group-top-k M        each token keeps its M best groups and takes its k experts in\n"
           "                         them (DeepSeek-V3); M <= G, M <= k <= M*E/G; alone: one group\n"
           "                         per node. Token choice only\n"
           "  --shared-experts S     S always-on experts every token also runs, on its own rank\n"
           "                         (DeepSeekMoE), 0..1024 (default 0)\n"
           "  --shared-ffn F         their inner size (default: --ffn); needs --shared-experts\n"
           "  --noisy-top-k          add noise eps * softplus(h W_noise^T), eps ~ N(0, 1), to the\n"
           "                         logits before the top-k (Shazeer et al. 2017, eq. 3-5)\n"
           "  --input-jitter EPS     multiply h by U(1-EPS, 1+EPS) for routing only, 0 <= EPS < 1\n"
           "                         (Switch); not with --logits-file (default 0)\n"
           "Capacity\n"
           "  --capacity-factor CF   slots per expert C = ceil(CF * G * k / E); 0 = dropless\n"
           "                         (default 1.25). A list (1.0,1.25,1.5,2.0) routes once and runs\n"
           "                         the layer for each value: the capacity-factor ablation\n"
           "  --predict-only         print the predicted drops and empty slots for every CF, then\n"
           "                         stop before any token row moves\n"
           "  --ranks R              with --predict-only: plan R ranks (1 <= R <= experts) whatever\n"
           "                         the number of processes launched (at most R): what EP R sends,\n"
           "                         drops and costs, from a laptop; nodes from --ranks-per-node\n"
           "  --capacity-scope S     global: one group, the whole batch (G = N, default);\n"
           "                         local: each source rank is a group (G = its tokens)\n"
           "  --min-capacity M       at least M slots per expert and group: C = max(ceil(CF G k / E),\n"
           "                         M) (DeepSpeed's min_capacity; default 0); not when dropless\n"
           "  --drop-policy P        which assignments overflow: position (earlier tokens first,\n"
           "                         default), probs (lower gates first), choice (second choices\n"
           "                         before any first), random, reroute (position, then to the\n"
           "                         token's next-best expert with room); not with expert choice\n"
           "  --pad-to-capacity      compute all C slots of every expert, empty ones included,\n"
           "                         as a static-shape system does\n"
           "Presets\n"
           "  --preset NAME          the MoE layer of a model family: it sets the fields below;\n"
           "                         any option given explicitly wins, before or after --preset;\n"
           "                         --hidden H scales its ffn and shared-ffn by H / its hidden\n"
           "    switch               Switch-Base: experts 128, top-k 1, hidden 768, ffn 3072,\n"
           "                         score softmax, no renormalize, drop-policy position\n"
           "    gshard               GShard MoE(128E): experts 128, top-k 2, hidden 1024, ffn 8192,\n"
           "                         score softmax, renormalize, drop-policy choice\n"
           "    mixtral              Mixtral 8x7B: experts 8, top-k 2, hidden 4096, ffn 14336,\n"
           "                         score softmax, renormalize, drop-policy probs, capacity-factor 0\n"
           "    deepseek-moe         DeepSeekMoE 16B: experts 64, top-k 6, hidden 2048, ffn 1408,\n"
           "                         score softmax, no renormalize, shared-experts 2 x 1408,\n"
           "                         drop-policy probs\n"
           "    deepseek-v3          DeepSeek-V3: experts 256, top-k 8, hidden 7168, ffn 2048,\n"
           "                         score sigmoid, topk-scale 2.5, expert-groups 8, group-top-k 4,\n"
           "                         shared-experts 1 x 2048, drop-policy probs, capacity-factor 0\n"
           "    qwen3-moe            Qwen3-235B-A22B: experts 128, top-k 8, hidden 4096, ffn 1536,\n"
           "                         score softmax, renormalize, drop-policy probs, capacity-factor 0\n"
           "Megatron-Core names (the same option; defaults as moesim's, docs/options.md)\n"
           "  --num-experts                      --experts\n"
           "  --moe-router-topk                  --top-k\n"
           "  --moe-expert-capacity-factor       --capacity-factor\n"
           "  --moe-token-drop-policy            --drop-policy\n"
           "  --moe-router-score-function        --score\n"
           "  --moe-router-num-groups            --expert-groups\n"
           "  --moe-router-group-topk            --group-top-k\n"
           "  --moe-router-topk-scaling-factor   --topk-scale\n"
           "  --moe-pad-expert-input-to-capacity --pad-to-capacity\n"
           "  --moe-input-jitter-eps             --input-jitter\n"
           "  --moe-aux-loss-coeff               --aux-loss-coeff\n"
           "  --moe-z-loss-coeff                 --z-loss-coeff\n"
           "  --moe-shared-expert-intermediate-size N\n"
           "                         the shared experts' total inner size: one shared expert of\n"
           "                         N, or with --shared-experts S each of N/S (N a multiple of S)\n"
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
           "  --mode M               forward (default): the layer's step; dispatch: the same with\n"
           "                         identity experts (each returns its input), so the step is\n"
           "                         the exchange (Megatron's dispatch_only benchmark); fwd-bwd:\n"
           "                         forward and the expert-parallel backward (gradient rows to\n"
           "                         the experts and back, router all-reduce); train: fwd-bwd and\n"
           "                         an optimizer step per --steps batch on the teacher task\n"
           "                         (docs/training.md; --iters 1 --warmup 0 unless given)\n"
           "  --optimizer O          train: sgd (default; momentum 0.9) or adam\n"
           "  --lr X                 train: learning rate (default 1 for sgd: the task's MSE\n"
           "                         gradients are 2/(N d) small; try 0.01 with adam)\n"
           "  --teacher-experts T    fwd-bwd, train: the teacher's experts, top-1 (default 1: a\n"
           "                         dense FFN every student expert could learn alone)\n"
           "  --aux-loss-coeff A     fwd-bwd, train: alpha of the Switch load-balancing loss\n"
           "                         alpha E sum f_i P_i (default 0; Megatron's 1e-2)\n"
           "  --z-loss-coeff B       fwd-bwd, train: beta of the router z-loss (default 0; ST-MoE's\n"
           "                         1e-3)\n"
           "  --raw-baseline B       when a plain MPI_Alltoallv of the same bytes is timed beside\n"
           "                         each exchange: first (the first timed iteration, after an\n"
           "                         untimed one in the last warm-up step; default),\n"
           "                         on (every step), off (never)\n"
           "  --regroup G            how arriving rows reach each expert's block: alltoallw (one\n"
           "                         MPI_Alltoallw scatters them there), slots (one Alltoallv per\n"
           "                         local expert), alltoallw-slots (alltoallw's dispatch, slots'\n"
           "                         combine), copy (staging buffer and two copies), auto\n"
           "                         (default: chosen per shape, docs/model.md)\n"
           "  --traffic-matrix M     full: the JSON holds the R x R traffic matrices; summary:\n"
           "                         per-rank sums and per-class totals only; auto (default):\n"
           "                         full up to 1024 ranks\n"
           "  --placement P          where experts live: contiguous blocks (default), strided (e on\n"
           "                         rank e mod R), eplb (packed by load, DeepSeek's EPLB)\n"
           "  --redundant-experts N  N extra replicas of the most loaded experts, placed by EPLB\n"
           "                         so ranks compute evenly; an assignment goes to replica t mod m\n"
           "  --eplb-from SRC        the loads EPLB plans from: self (this batch's routing,\n"
           "                         default), previous (with --steps, re-planned before every\n"
           "                         step from the step before's loads) or a file of E loads\n"
           "                         (.npy or .csv)\n"
           "  --dispatch D           per-expert (default): one row per served (token, expert);\n"
           "                         per-rank: one row per (token, destination rank) with its\n"
           "                         gates and expert ids, fanned out there (DeepEP)\n"
           "  --wire F               format of the dispatched rows: fp32 (default), bf16 (round to\n"
           "                         nearest even), fp8 (e4m3, one fp32 scale per 128 channels,\n"
           "                         DeepEP's layout); the bytes are counted as they travel\n"
           "  --wire-combine F       format of the combined rows: fp32 or bf16 (default fp32; bf16\n"
           "                         after an fp8 dispatch, as DeepEP does)\n"
           "  --iters N              timed iterations (default 5)\n"
           "  --warmup N             untimed iterations before them (default 1)\n"
           "  --steps N              N consecutive layer steps, each on a new batch drawn from\n"
           "                         (seed, step) or the next slice of --tokens-file/--logits-file;\n"
           "                         --iters/--warmup apply to each (default 1)\n"
           "  --steps-csv PATH       one CSV row per step (columns: docs/json.md, steps[])\n"
           "  --workload W           routing defined by a workload, not a router (docs/workloads.md):\n"
           "                         none (default), balanced, hot-experts, hot-rank, spread-hot,\n"
           "                         zero-expert-rank, rotating-hotspot, burst, source-ragged\n"
           "                         (balanced, rank r holding a share r + 1 of the tokens); the\n"
           "                         heat is --hot-experts N (default E/8, at least 1) taking\n"
           "                         --hot-share X of the assignments (default 0.5)\n"
           "  --tokens-per-rank LIST the tokens of each rank, a comma list of R counts summing to\n"
           "                         --tokens (default: even blocks)\n"
           "  --period P             rotating-hotspot: steps between moves (default 1); burst: every\n"
           "                         P-th step is hot (default 4)\n"
           "  --expert-bias          DeepSeek-V3's auxiliary-loss-free balancing: a selection-only\n"
           "                         bias b (from --expert-bias-file, else 0), after every step\n"
           "                         b_i += rate * sign(mean load - load_i) on the global loads\n"
           "  --bias-update-rate X   that rate, gamma (default 0.001, Megatron's\n"
           "                         --moe-router-bias-update-rate)\n"
           "  --json PATH            write every result as JSON (keys: docs/json.md); '-' is\n"
           "                         standard output (the text report then goes to stderr)\n"
           "  --dump-routing PATH    PATH.csv: token,choice,expert,gate,accepted; PATH.npy: the\n"
           "                         router logits (N x E float32), replayable with --logits-file\n"
           "  --dump-output PATH     the layer output y as an N x d float32 .npy (small runs)\n"
           "  --max-memory SIZE      memory budget of each node, instead of its MemAvailable:\n"
           "                         bytes with K, M, G, T (powers of 1024; KiB, MiB, GiB, TiB\n"
           "                         too), or a share of the node's memory such as 50%\n"
           "  --report R             the text report's detail: full (every expert and rank),\n"
           "                         summary (the hottest and coldest experts, a load histogram,\n"
           "                         the busiest ranks); auto (default): full up to 64 experts\n"
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
    OPT_TOPK_SCALE, OPT_MIN_CAPACITY, OPT_ROUTING, OPT_EXPERT_GROUPS, OPT_GROUP_TOPK,
    OPT_SHARED_EXPERTS, OPT_SHARED_FFN, OPT_NOISY_TOPK, OPT_INPUT_JITTER, OPT_PRESET,
    OPT_SHARED_TOTAL, OPT_MODE, OPT_WIRE, OPT_WIRE_COMBINE, OPT_DISPATCH, OPT_PLACEMENT,
    OPT_REDUNDANT, OPT_EPLB_FROM, OPT_RANKS, OPT_RAW_BASELINE, OPT_REGROUP, OPT_TRAFFIC_MATRIX,
    OPT_REPORT,
    OPT_STEPS, OPT_STEPS_CSV, OPT_EXPERT_BIAS, OPT_BIAS_RATE, OPT_WORKLOAD, OPT_PERIOD,
    OPT_OPTIMIZER, OPT_LR, OPT_AUX_COEFF, OPT_Z_COEFF, OPT_TOKEN_MEAN, OPT_TEACHER,
    OPT_TOKENS_PER_RANK
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
    {"steps", required_argument, NULL, OPT_STEPS},
    {"steps-csv", required_argument, NULL, OPT_STEPS_CSV},
    {"expert-bias", no_argument, NULL, OPT_EXPERT_BIAS},
    {"workload", required_argument, NULL, OPT_WORKLOAD},
    {"period", required_argument, NULL, OPT_PERIOD},
    {"bias-update-rate", required_argument, NULL, OPT_BIAS_RATE},
    {"mode", required_argument, NULL, OPT_MODE},
    {"optimizer", required_argument, NULL, OPT_OPTIMIZER},
    {"token-mean", required_argument, NULL, OPT_TOKEN_MEAN},
    {"tokens-per-rank", required_argument, NULL, OPT_TOKENS_PER_RANK},
    {"teacher-experts", required_argument, NULL, OPT_TEACHER},
    {"lr", required_argument, NULL, OPT_LR},
    {"aux-loss-coeff", required_argument, NULL, OPT_AUX_COEFF},
    {"z-loss-coeff", required_argument, NULL, OPT_Z_COEFF},
    {"wire", required_argument, NULL, OPT_WIRE},
    {"dispatch", required_argument, NULL, OPT_DISPATCH},
    {"placement", required_argument, NULL, OPT_PLACEMENT},
    {"redundant-experts", required_argument, NULL, OPT_REDUNDANT},
    {"eplb-from", required_argument, NULL, OPT_EPLB_FROM},
    {"wire-combine", required_argument, NULL, OPT_WIRE_COMBINE},
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
    {"ranks", required_argument, NULL, OPT_RANKS},
    {"raw-baseline", required_argument, NULL, OPT_RAW_BASELINE},
    {"regroup", required_argument, NULL, OPT_REGROUP},
    {"traffic-matrix", required_argument, NULL, OPT_TRAFFIC_MATRIX},
    {"report", required_argument, NULL, OPT_REPORT},
    {"topology", required_argument, NULL, OPT_TOPOLOGY},
    {"ranks-per-node", required_argument, NULL, OPT_RANKS_PER_NODE},
    {"a2a", required_argument, NULL, OPT_A2A},
    {"network", required_argument, NULL, OPT_NETWORK},
    {"max-memory", required_argument, NULL, OPT_MAX_MEMORY},
    {"score", required_argument, NULL, OPT_SCORE},
    {"expert-bias-file", required_argument, NULL, OPT_SELECTION_BIAS},
    {"topk-scale", required_argument, NULL, OPT_TOPK_SCALE},
    {"min-capacity", required_argument, NULL, OPT_MIN_CAPACITY},
    {"routing", required_argument, NULL, OPT_ROUTING},
    {"expert-groups", required_argument, NULL, OPT_EXPERT_GROUPS},
    {"group-top-k", required_argument, NULL, OPT_GROUP_TOPK},
    {"shared-experts", required_argument, NULL, OPT_SHARED_EXPERTS},
    {"shared-ffn", required_argument, NULL, OPT_SHARED_FFN},
    {"noisy-top-k", no_argument, NULL, OPT_NOISY_TOPK},
    {"input-jitter", required_argument, NULL, OPT_INPUT_JITTER},
    {"preset", required_argument, NULL, OPT_PRESET},
    /* Megatron-Core's names of the same options (megatron/training/arguments.py); messages name
     * the one typed. Only the shared-expert size differs: a total over the shared experts. */
    {"num-experts", required_argument, NULL, OPT_EXPERTS},
    {"moe-router-topk", required_argument, NULL, OPT_TOPK},
    {"moe-expert-capacity-factor", required_argument, NULL, OPT_CF},
    {"moe-token-drop-policy", required_argument, NULL, OPT_POLICY},
    {"moe-router-score-function", required_argument, NULL, OPT_SCORE},
    {"moe-router-num-groups", required_argument, NULL, OPT_EXPERT_GROUPS},
    {"moe-router-group-topk", required_argument, NULL, OPT_GROUP_TOPK},
    {"moe-router-topk-scaling-factor", required_argument, NULL, OPT_TOPK_SCALE},
    {"moe-shared-expert-intermediate-size", required_argument, NULL, OPT_SHARED_TOTAL},
    {"moe-pad-expert-input-to-capacity", no_argument, NULL, OPT_PAD},
    {"moe-input-jitter-eps", required_argument, NULL, OPT_INPUT_JITTER},
    {"moe-aux-loss-coeff", required_argument, NULL, OPT_AUX_COEFF},
    {"moe-z-loss-coeff", required_argument, NULL, OPT_Z_COEFF},
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

/* One capacity factor of --`name` (--capacity-factor or its alias). */
static int parse_cf(const char *name, const char *text, double *out, char *msg, size_t msglen)
{
    errno = 0;
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !isfinite(v))
        return moe_fail(MOE_EUSAGE, msg, msglen, "--%s needs a number, got '%s'", name, text);
    if (v < 0.0)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--%s must be >= 0 (0 means dropless), got %s",
                        name, text);
    if (v > 1e6)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--%s %s is absurdly large", name, text);
    *out = v;
    return MOE_OK;
}

/* "1.0,1.25,1.5": up to MOE_MAX_CF values, each as parse_cf. */
static int parse_cf_list(moe_config *cfg, const char *name, const char *text, char *msg,
                         size_t msglen)
{
    char item[64];
    int n = 0;
    const char *start = text;
    for (;;) {
        const char *comma = strchr(start, ',');
        size_t len = comma ? (size_t)(comma - start) : strlen(start);
        if (len == 0 || len >= sizeof item)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s needs a number or a comma-separated list of numbers, got '%s'",
                            name, text);
        if (n == MOE_MAX_CF)
            return moe_fail(MOE_EUSAGE, msg, msglen, "--%s takes at most %d values", name,
                            MOE_MAX_CF);
        memcpy(item, start, len);
        item[len] = '\0';
        int rc = parse_cf(name, item, &cfg->cf_list[n], msg, msglen);
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

/* The option named exactly name[0..len), or NULL. */
static const struct option *exact_option(const char *name, size_t len)
{
    for (const struct option *o = long_options; o->name != NULL; o++)
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    return NULL;
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
        const struct option *exact = exact_option(name, len);
        if (exact != NULL) {
            /* named here rather than by getopt_long, which knows only the option's value, shared
             * by its aliases */
            if (exact->has_arg == no_argument && eq != NULL)
                return moe_fail(MOE_EUSAGE, msg, msglen, "option '--%s' takes no value",
                                exact->name);
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
        const char *nearest = NULL;
        int best = 99;
        for (const struct option *o = long_options; o->name != NULL; o++) {
            int dist = edit_distance(given, o->name);
            if (dist < best) {
                best = dist;
                nearest = o->name;
            }
        }
        /* a valid name with something added ("--a2a-mode" for "--a2a"), unless another name is
         * a typo away (at most 2 edits: "--experts-groups" is one letter from --expert-groups,
         * not --experts; "--a2a-mode" is 4 from --mode, so --a2a) */
        const struct option *stem = NULL;
        for (const struct option *o = long_options; o->name != NULL; o++)
            if (strlen(o->name) < len && strncmp(o->name, name, strlen(o->name)) == 0 &&
                (stem == NULL || strlen(o->name) > strlen(stem->name)))
                stem = o;
        if (stem != NULL)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "unknown option '--%s': did you mean --%s? (see --help)", given,
                            best <= 2 && best < edit_distance(given, stem->name) ? nearest
                                                                                 : stem->name);
        int limit = len < 6 ? 2 : (int)len / 3;
        if (nearest != NULL && best <= limit)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "unknown option '--%s': did you mean --%s? (see --help)", given, nearest);
        return moe_fail(MOE_EUSAGE, msg, msglen, "unknown option '--%s' (see --help)", given);
    }
    return MOE_OK;
}

/* The value of the last --preset in argv, or NULL. argv is walked as getopt_long will walk it
 * (after check_exact_names has passed it): the value of an option that takes one is skipped,
 * whatever it looks like, and "--" ends the options. */
static const char *find_preset(int argc, char **argv)
{
    const char *value = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0)
            break;
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            continue;
        const char *name = arg + 2, *eq = strchr(name, '=');
        const struct option *o = exact_option(name, eq ? (size_t)(eq - name) : strlen(name));
        if (o == NULL || o->has_arg != required_argument)
            continue;
        const char *v = eq ? eq + 1 : i + 1 < argc ? argv[i + 1] : NULL;
        if (eq == NULL)
            i++;
        if (o->val == OPT_PRESET && v != NULL)
            value = v;
    }
    return value;
}

/* Set every field of preset p, as if from defaults (the options given explicitly come after). */
static void apply_preset(moe_config *cfg, const moe_preset *p)
{
    cfg->preset = p->name;
    cfg->hidden = p->hidden;
    cfg->ffn = p->ffn;
    cfg->experts = p->experts;
    cfg->top_k = p->top_k;
    cfg->score = p->score;
    cfg->renormalize = p->renormalize;
    cfg->topk_scale = p->topk_scale;
    cfg->expert_groups = p->expert_groups;
    cfg->group_top_k = p->group_top_k;
    cfg->shared_experts = p->shared_experts;
    cfg->shared_ffn = p->shared_ffn;
    cfg->policy = p->policy;
    if (p->capacity_factor >= 0.0) {
        cfg->capacity_factor = cfg->cf_list[0] = p->capacity_factor;
        cfg->n_cf = 1;
    }
}

/* A preset's width w (ffn or shared_ffn) for an explicit hidden size: w * hidden / p->hidden,
 * rounded to nearest (halves up), at least 1. Both are at most MOE_MAX_WIDTH = 2^24, so the
 * product fits. */
static int64_t scale_width(int64_t w, int64_t hidden, const moe_preset *p)
{
    int64_t scaled = (2 * w * hidden + p->hidden) / (2 * p->hidden);
    return scaled > 1 ? scaled : 1;
}

/* Append ", text" (or text, first) to the preset summary; snprintf truncates safely. */
static void summary_add(moe_config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void summary_add(moe_config *cfg, const char *fmt, ...)
{
    size_t used = strlen(cfg->preset_set);
    if (used + 1 >= sizeof cfg->preset_set)
        return;
    if (used > 0) {
        snprintf(cfg->preset_set + used, sizeof cfg->preset_set - used, ", ");
        used = strlen(cfg->preset_set);
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cfg->preset_set + used, sizeof cfg->preset_set - used, fmt, ap);
    va_end(ap);
}

/* What preset p set in the end, the explicit options left out: "experts 256, top-k 8, ...", in the
 * words of --help's preset block. A scaled width says so ("ffn 293 (2048 scaled to hidden 1024)"):
 * the preset_set of moe_config. */
static void describe_preset(moe_config *cfg, const moe_preset *p)
{
    cfg->preset_set[0] = '\0';
    char scaled[64] = "";
    if (!cfg->set_experts)
        summary_add(cfg, "experts %d", cfg->experts);
    if (!cfg->set_top_k)
        summary_add(cfg, "top-k %d", cfg->top_k);
    if (!cfg->set_hidden)
        summary_add(cfg, "hidden %lld", (long long)cfg->hidden);
    if (!cfg->set_ffn) {
        if (cfg->set_hidden)
            snprintf(scaled, sizeof scaled, " (%lld scaled to hidden %lld)", (long long)p->ffn,
                     (long long)cfg->hidden);
        summary_add(cfg, "ffn %lld%s", (long long)cfg->ffn, scaled);
    }
    if (!cfg->set_score)
        summary_add(cfg, "score %s", moe_score_name(cfg->score));
    if (p->score == MOE_SCORE_SOFTMAX && !cfg->set_renormalize)
        summary_add(cfg, "%s", p->renormalize ? "renormalize" : "no renormalize");
    if (p->topk_scale != 1.0 && !cfg->set_topk_scale)
        summary_add(cfg, "topk-scale %g", cfg->topk_scale);
    if (p->expert_groups > 0 && !cfg->set_expert_groups && cfg->expert_groups > 0 &&
        cfg->group_top_k > 0)
        summary_add(cfg, "expert-groups %d", cfg->expert_groups);
    if (p->group_top_k > 0 && !cfg->set_group_top_k && cfg->group_top_k > 0)
        summary_add(cfg, "group-top-k %d", cfg->group_top_k);
    if (p->shared_experts > 0) {
        scaled[0] = '\0';
        if (cfg->set_hidden)
            snprintf(scaled, sizeof scaled, " (%lld scaled to hidden %lld)",
                     (long long)p->shared_ffn, (long long)cfg->hidden);
        if (!cfg->set_shared_experts && !cfg->set_shared_ffn)
            summary_add(cfg, "shared-experts %d x %lld%s", cfg->shared_experts,
                        (long long)cfg->shared_ffn, scaled);
        else if (!cfg->set_shared_experts)
            summary_add(cfg, "shared-experts %d", cfg->shared_experts);
        else if (!cfg->set_shared_ffn && cfg->shared_experts > 0)
            summary_add(cfg, "shared-ffn %lld%s", (long long)cfg->shared_ffn, scaled);
    }
    if (!cfg->set_policy && cfg->routing == MOE_ROUTING_TOKEN_CHOICE)
        summary_add(cfg, "drop-policy %s", policy_names[cfg->policy]);
    if (p->capacity_factor >= 0.0 && !cfg->set_cf)
        summary_add(cfg, "capacity-factor %g", cfg->capacity_factor);
}

/* The index of text among the n names of table (indexed by enum value) for --`name`, or a
 * message listing them. */
static int parse_choice(const char *name, const char *text, const char *const *table, int n,
                        int *out, char *msg, size_t msglen)
{
    for (int i = 0; i < n; i++)
        if (strcmp(text, table[i]) == 0) {
            *out = i;
            return MOE_OK;
        }
    char list[256] = "";
    for (int i = 0; i < n; i++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s'%s'", i == 0 ? "" : i + 1 < n ? ", " : " or ",
                 table[i]);
    }
    return moe_fail(MOE_EUSAGE, msg, msglen, "--%s must be %s, got '%s'", name, list, text);
}

/* The preset named text, or a message naming --preset and listing them. */
static int find_preset_named(const moe_preset **out, const char *text, char *msg, size_t msglen)
{
    char list[256] = "";
    for (size_t i = 0; i < N_PRESETS; i++) {
        if (strcmp(text, presets[i].name) == 0) {
            *out = &presets[i];
            return MOE_OK;
        }
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", presets[i].name);
    }
    return moe_fail(MOE_EUSAGE, msg, msglen, "--preset must be one of %s, got '%s'", list, text);
}

int moe_config_parse(moe_config *cfg, int argc, char **argv, char *msg, size_t msglen)
{
    optind = 0; /* glibc: full re-initialisation, so repeated calls (tests) start afresh */
    opterr = 0;
    int64_t v;
    int rc = check_exact_names(argc, argv, msg, msglen);
    if (rc != MOE_OK)
        return rc;
    /* The preset first, so that every option given explicitly overrides it wherever it stands. */
    const moe_preset *preset = NULL;
    const char *preset_text = find_preset(argc, argv);
    if (preset_text != NULL) {
        if ((rc = find_preset_named(&preset, preset_text, msg, msglen)) != MOE_OK)
            return rc;
        apply_preset(cfg, preset);
    }
    int64_t shared_total = 0; /* --moe-shared-expert-intermediate-size, 0 = not given */
    const char *shared_total_name = NULL;
    for (;;) {
        int longindex = -1;
        int c = getopt_long(argc, argv, ":", long_options, &longindex);
        if (c == -1)
            break;
        /* the name as typed: an alias names itself in every message */
        const char *name = longindex >= 0 ? long_options[longindex].name : "";
        int choice = 0;
        switch (c) {
        case OPT_TOKENS:
            rc = parse_int(name, optarg, 1, INT64_C(1) << 40, &cfg->tokens, msg, msglen);
            cfg->set_tokens = true;
            break;
        case OPT_HIDDEN:
            rc = parse_int(name, optarg, 1, MOE_MAX_WIDTH, &cfg->hidden, msg, msglen);
            cfg->set_hidden = true;
            break;
        case OPT_FFN:
            rc = parse_int(name, optarg, 1, MOE_MAX_WIDTH, &cfg->ffn, msg, msglen);
            cfg->set_ffn = true;
            break;
        case OPT_EXPERTS:
            rc = parse_int(name, optarg, 1, MOE_MAX_EXPERTS, &v, msg, msglen);
            cfg->experts = (int)v;
            cfg->set_experts = true;
            cfg->spelled.experts = name;
            break;
        case OPT_TOPK:
            rc = parse_int(name, optarg, 1, MOE_MAX_EXPERTS, &v, msg, msglen);
            cfg->top_k = (int)v;
            cfg->set_top_k = true;
            cfg->spelled.top_k = name;
            break;
        case OPT_CF:
            rc = parse_cf_list(cfg, name, optarg, msg, msglen);
            cfg->set_cf = true;
            cfg->spelled.capacity_factor = name;
            break;
        case OPT_SKEW:
            rc = parse_real(name, optarg, 0.0, 100.0, &cfg->skew, msg, msglen);
            break;
        case OPT_HOT:
            rc = parse_int(name, optarg, 0, MOE_MAX_EXPERTS, &v, msg, msglen);
            cfg->hot_experts = (int)v;
            break;
        case OPT_HOT_SHARE:
            rc = parse_real(name, optarg, 0.0, 1.0, &cfg->hot_share, msg, msglen);
            if (rc == MOE_OK && (cfg->hot_share <= 0.0 || cfg->hot_share >= 1.0))
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--hot-share must be strictly between 0 and 1, got %s", optarg);
            cfg->set_hot_share = true;
            break;
        case OPT_CLUSTERS:
            rc = parse_int(name, optarg, 0, INT64_C(1) << 40, &cfg->clusters, msg, msglen);
            cfg->set_clusters = true;
            break;
        case OPT_LOGITS_FILE:
            cfg->logits_file = optarg;
            break;
        case OPT_PREDICT_ONLY:
            cfg->predict_only = true;
            break;
        case OPT_RANKS:
            rc = parse_int(name, optarg, 1, MOE_MAX_PLAN_RANKS, &v, msg, msglen);
            cfg->plan_ranks = (int)v;
            break;
        case OPT_TOPOLOGY:
            if (optarg[0] == '\0')
                rc = moe_fail(MOE_EUSAGE, msg, msglen, "--topology needs a file or a description");
            cfg->topology = optarg;
            break;
        case OPT_RANKS_PER_NODE:
            rc = parse_int(name, optarg, 1, 1 << 20, &v, msg, msglen);
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
                              "--%s must be 'softmax' or 'sigmoid', got '%s'", name, optarg);
            cfg->set_score = true;
            cfg->spelled.score = name;
            break;
        case OPT_SELECTION_BIAS:
            if (optarg[0] == '\0')
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--expert-bias-file needs a .npy file of E float32 values");
            cfg->expert_bias_file = optarg;
            break;
        case OPT_TOPK_SCALE:
            rc = parse_real(name, optarg, 0.0, MOE_MAX_TOPK_SCALE, &cfg->topk_scale, msg, msglen);
            if (rc == MOE_OK && !(cfg->topk_scale > 0.0))
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--%s must be greater than 0 (it multiplies every gate), got %s",
                              name, optarg);
            cfg->set_topk_scale = true;
            cfg->spelled.topk_scale = name;
            break;
        case OPT_MIN_CAPACITY:
            rc = parse_int(name, optarg, 0, MOE_MAX_MIN_CAPACITY, &cfg->min_capacity, msg, msglen);
            break;
        case OPT_ROUTING:
            rc = parse_choice(name, optarg, routing_names, 2, &choice, msg, msglen);
            cfg->routing = (moe_routing)choice;
            cfg->set_routing = true;
            break;
        case OPT_EXPERT_GROUPS:
            rc = parse_int(name, optarg, 1, MOE_MAX_EXPERTS, &v, msg, msglen);
            cfg->expert_groups = (int)v;
            cfg->set_expert_groups = true;
            cfg->spelled.expert_groups = name;
            break;
        case OPT_GROUP_TOPK:
            /* 0: no group limit (a preset's switched off) */
            rc = parse_int(name, optarg, 0, MOE_MAX_EXPERTS, &v, msg, msglen);
            cfg->group_top_k = (int)v;
            cfg->set_group_top_k = true;
            cfg->spelled.group_top_k = name;
            break;
        case OPT_SHARED_EXPERTS:
            rc = parse_int(name, optarg, 0, 1024, &v, msg, msglen);
            cfg->shared_experts = (int)v;
            cfg->set_shared_experts = true;
            cfg->spelled.shared_experts = name;
            break;
        case OPT_SHARED_FFN:
            rc = parse_int(name, optarg, 1, MOE_MAX_WIDTH, &cfg->shared_ffn, msg, msglen);
            cfg->set_shared_ffn = true;
            cfg->spelled.shared_ffn = name;
            break;
        case OPT_SHARED_TOTAL:
            /* a total over the shared experts, up to 1024 of the widest */
            rc = parse_int(name, optarg, 1, 1024 * MOE_MAX_WIDTH, &shared_total, msg, msglen);
            shared_total_name = name;
            break;
        case OPT_NOISY_TOPK:
            cfg->noisy_top_k = true;
            break;
        case OPT_INPUT_JITTER:
            rc = parse_real(name, optarg, 0.0, 1.0, &cfg->input_jitter, msg, msglen);
            if (rc == MOE_OK && cfg->input_jitter >= 1.0)
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--%s must be below 1 (h is multiplied by U(1-eps, 1+eps)), got %s",
                              name, optarg);
            cfg->spelled.input_jitter = name;
            break;
        case OPT_PRESET:
            break; /* applied before the loop */
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
            rc = parse_choice(name, optarg, policy_names, 5, &choice, msg, msglen);
            cfg->policy = (moe_policy)choice;
            cfg->set_policy = true;
            cfg->spelled.policy = name;
            break;
        case OPT_RENORM:
            cfg->renormalize = true;
            cfg->set_renormalize = true;
            break;
        case OPT_PAD:
            cfg->pad_to_capacity = true;
            cfg->spelled.pad_to_capacity = name;
            break;
        case OPT_SEED:
            rc = parse_int(name, optarg, 0, INT64_MAX, &v, msg, msglen);
            cfg->seed = (uint64_t)v;
            break;
        case OPT_PLACEMENT:
            rc = moe_place_kind_parse(optarg, &cfg->placement, msg, msglen);
            if (rc != MOE_OK)
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--%s must be 'contiguous', 'strided' or 'eplb', got '%s'", name,
                              optarg);
            cfg->set_placement = true;
            break;
        case OPT_REDUNDANT:
            rc = parse_int(name, optarg, 0, MOE_MAX_EXPERTS, &v, msg, msglen);
            cfg->redundant_experts = (int)v;
            break;
        case OPT_EPLB_FROM:
            if (optarg[0] == '\0')
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "--%s needs 'self', 'previous' or a file of per-expert loads (.npy "
                              "or .csv)",
                              name);
            cfg->eplb_previous = strcmp(optarg, "previous") == 0;
            cfg->eplb_from = strcmp(optarg, "self") == 0 || cfg->eplb_previous ? NULL : optarg;
            cfg->set_eplb_from = true;
            break;
        case OPT_DISPATCH:
            rc = parse_choice(name, optarg, dispatch_names, 2, &choice, msg, msglen);
            cfg->dispatch = (moe_dispatch_kind)choice;
            break;
        case OPT_WIRE:
            rc = parse_choice(name, optarg, wire_names, 3, &choice, msg, msglen);
            cfg->wire = (moe_wire)choice;
            break;
        case OPT_WIRE_COMBINE:
            /* DeepEP combines in bf16 at most: no fp8 on the way back */
            rc = parse_choice(name, optarg, wire_names, 2, &choice, msg, msglen);
            cfg->wire_combine = (moe_wire)choice;
            cfg->set_wire_combine = true;
            break;
        case OPT_MODE:
            rc = parse_choice(name, optarg, mode_names, 4, &choice, msg, msglen);
            cfg->mode = (moe_mode)choice;
            break;
        case OPT_OPTIMIZER: {
            const char *names[] = {moe_optimizer_name(MOE_OPT_SGD), moe_optimizer_name(MOE_OPT_ADAM)};
            rc = parse_choice(name, optarg, names, 2, &choice, msg, msglen);
            cfg->optimizer = (moe_optimizer)choice;
            cfg->set_optimizer = true;
            break;
        }
        case OPT_TOKENS_PER_RANK:
            cfg->tokens_per_rank = optarg;
            break;
        case OPT_TOKEN_MEAN:
            rc = parse_real(name, optarg, -1e3, 1e3, &cfg->token_mean, msg, msglen);
            cfg->set_token_mean = true;
            break;
        case OPT_TEACHER:
            rc = parse_int(name, optarg, 1, MOE_MAX_EXPERTS, &v, msg, msglen);
            cfg->teacher_experts = (int)v;
            cfg->set_teacher = true;
            break;
        case OPT_LR:
            rc = parse_real(name, optarg, 1e-12, 1e3, &cfg->lr, msg, msglen);
            cfg->set_lr = true;
            break;
        case OPT_AUX_COEFF:
            rc = parse_real(name, optarg, 0.0, 1e6, &cfg->aux_loss_coeff, msg, msglen);
            cfg->set_aux_coeff = true;
            break;
        case OPT_Z_COEFF:
            rc = parse_real(name, optarg, 0.0, 1e6, &cfg->z_loss_coeff, msg, msglen);
            cfg->set_z_coeff = true;
            break;
        case OPT_RAW_BASELINE:
            rc = parse_choice(name, optarg, raw_names, 3, &choice, msg, msglen);
            cfg->raw_baseline = (moe_raw_baseline)choice;
            break;
        case OPT_REGROUP:
            rc = parse_choice(name, optarg, regroup_names, 5, &choice, msg, msglen);
            cfg->regroup = (moe_regroup_kind)choice;
            break;
        case OPT_TRAFFIC_MATRIX:
            rc = parse_choice(name, optarg, matrix_names, 3, &choice, msg, msglen);
            cfg->traffic_matrix = (moe_matrix_kind)choice;
            break;
        case OPT_REPORT:
            rc = parse_choice(name, optarg, report_names, 3, &choice, msg, msglen);
            cfg->report = (moe_report_kind)choice;
            break;
        case OPT_ITERS:
            rc = parse_int(name, optarg, 1, 1000000, &v, msg, msglen);
            cfg->iters = (int)v;
            cfg->set_iters = true;
            break;
        case OPT_WARMUP:
            rc = parse_int(name, optarg, 0, 1000000, &v, msg, msglen);
            cfg->warmup = (int)v;
            cfg->set_warmup = true;
            break;
        case OPT_STEPS:
            rc = parse_int(name, optarg, 1, MOE_MAX_STEPS, &v, msg, msglen);
            cfg->steps = (int)v;
            break;
        case OPT_STEPS_CSV:
            cfg->steps_csv = optarg;
            break;
        case OPT_EXPERT_BIAS:
            cfg->expert_bias = true;
            break;
        case OPT_WORKLOAD: {
            const char *names[MOE_WL_COUNT];
            for (int w = 0; w < MOE_WL_COUNT; w++)
                names[w] = moe_wl_name((moe_wl_kind)w);
            rc = parse_choice(name, optarg, names, MOE_WL_COUNT, &choice, msg, msglen);
            cfg->workload = (moe_wl_kind)choice;
            break;
        }
        case OPT_PERIOD:
            rc = parse_int(name, optarg, 1, MOE_MAX_STEPS, &v, msg, msglen);
            cfg->period = (int)v;
            break;
        case OPT_BIAS_RATE:
            rc = parse_real(name, optarg, 0.0, 1e6, &cfg->bias_update_rate, msg, msglen);
            cfg->set_bias_rate = true;
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
    if (optind < argc) {
        size_t n = strlen(argv[optind]);
        if (cfg->expert_bias && n > 4 && strcmp(argv[optind] + n - 4, ".npy") == 0)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "unexpected argument '%s': --expert-bias takes no value (a bias from "
                            "a file is --expert-bias-file PATH)",
                            argv[optind]);
        return moe_fail(MOE_EUSAGE, msg, msglen, "unexpected argument '%s' (see --help)",
                        argv[optind]);
    }
    if (!cfg->set_wire_combine) /* DeepEP: fp8 dispatch, bf16 combine */
        cfg->wire_combine = cfg->wire == MOE_WIRE_FP8 ? MOE_WIRE_BF16 : MOE_WIRE_FP32;
    if (shared_total_name != NULL) {
        /* Megatron-Core sizes the shared expert(s) as one MLP of this total inner size */
        if (cfg->set_shared_ffn)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s and --%s both set the shared experts' inner size: give one",
                            shared_total_name, cfg->spelled.shared_ffn);
        if (!cfg->set_shared_experts) {
            cfg->shared_experts = 1;
            cfg->set_shared_experts = true;
            cfg->spelled.shared_experts = shared_total_name;
        } else if (cfg->shared_experts == 0) {
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s %lld sizes shared experts, but --%s is 0", shared_total_name,
                            (long long)shared_total, cfg->spelled.shared_experts);
        } else if (shared_total % cfg->shared_experts != 0) {
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s %lld is the total over the %d shared experts, so it must be a "
                            "multiple of %d",
                            shared_total_name, (long long)shared_total, cfg->shared_experts,
                            cfg->shared_experts);
        }
        cfg->shared_ffn = shared_total / cfg->shared_experts;
        if (cfg->shared_ffn > MOE_MAX_WIDTH)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s %lld gives each of the %d shared experts %lld, over %lld",
                            shared_total_name, (long long)shared_total, cfg->shared_experts,
                            (long long)cfg->shared_ffn, (long long)MOE_MAX_WIDTH);
        cfg->set_shared_ffn = true;
        cfg->spelled.shared_ffn = shared_total_name;
    }
    if (preset != NULL && cfg->set_hidden) {
        /* the preset's widths keep their ratio to the hidden size */
        if (!cfg->set_ffn)
            cfg->ffn = scale_width(preset->ffn, cfg->hidden, preset);
        if (!cfg->set_shared_ffn && preset->shared_ffn > 0)
            cfg->shared_ffn = scale_width(preset->shared_ffn, cfg->hidden, preset);
        if (cfg->ffn > MOE_MAX_WIDTH || cfg->shared_ffn > MOE_MAX_WIDTH)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--preset %s with --hidden %lld: its ffn scaled to %lld (shared %lld) "
                            "is over %lld; give --ffn (and --shared-ffn)",
                            preset->name, (long long)cfg->hidden, (long long)cfg->ffn,
                            (long long)cfg->shared_ffn, (long long)MOE_MAX_WIDTH);
    }
    if (cfg->routing == MOE_ROUTING_EXPERT_CHOICE) {
        /* a preset's token-choice fields do not apply when experts choose: no expert overflows,
         * and there is no per-token group limit (explicit ones are refused by resolve) */
        if (!cfg->set_policy)
            cfg->policy = MOE_POLICY_POSITION;
        if (!cfg->set_expert_groups && !cfg->set_group_top_k)
            cfg->expert_groups = cfg->group_top_k = 0;
    }
    /* --group-top-k 0 switches a group limit off, a preset's groups with it */
    if (cfg->set_group_top_k && cfg->group_top_k == 0 && !cfg->set_expert_groups)
        cfg->expert_groups = 0;
    if (preset != NULL)
        describe_preset(cfg, preset);
    return MOE_OK;
}

/* " (from --preset NAME)" for a value the preset set rather than an explicit option, else "". */
static const char *from_preset(const moe_config *cfg, bool explicit_option, char *buf, size_t len)
{
    if (explicit_option || cfg->preset == NULL)
        return "";
    snprintf(buf, len, " (from --preset %s)", cfg->preset);
    return buf;
}

/* The rules of the routing options, once E and k are settled (moe_config_resolve). */
static int resolve_routing(moe_config *cfg, char *msg, size_t msglen)
{
    char from_g[48], from_m[48], from_cf[48];
    const char *fg = from_preset(cfg, cfg->set_expert_groups, from_g, sizeof from_g);
    const char *fm = from_preset(cfg, cfg->set_group_top_k, from_m, sizeof from_m);
    const char *fcf = from_preset(cfg, cfg->set_cf, from_cf, sizeof from_cf);
    int E = cfg->experts, k = cfg->top_k, G = cfg->expert_groups, M = cfg->group_top_k;
    bool expert_choice = cfg->routing == MOE_ROUTING_EXPERT_CHOICE;
    if (G > 0 && M == 0)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--%s %d needs --group-top-k M: how many of the groups each token keeps",
                        cfg->spelled.expert_groups, G);
    if (M > 0 && expert_choice)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--%s limits the experts a token chooses: it has no meaning with "
                        "--routing expert-choice, where experts choose",
                        cfg->spelled.group_top_k);
    /* Group-limited top-k (DeepSeek-V3; Megatron-Core group_limited_topk): a group's score sums
     * its k/M best experts, and the k experts must fit in the M kept groups. With --group-top-k
     * alone the groups are the nodes, known only to the layer, which checks the rest. */
    if (M > k)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--%s %d%s must be at most --%s %d: each group is scored by its k/M best "
                        "experts",
                        cfg->spelled.group_top_k, M, fm, cfg->spelled.top_k, k);
    if (G > 0) {
        if (E % G != 0)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s %d%s must divide the %d experts into equal groups",
                            cfg->spelled.expert_groups, G, fg, E);
        if (M > G)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s %d%s is more than the %d expert groups (--%s)",
                            cfg->spelled.group_top_k, M, fm, G, cfg->spelled.expert_groups);
        if ((int64_t)k * G > (int64_t)M * E)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s %d: the %d kept groups of %d experts hold only %d, fewer than "
                            "the %d experts each token takes",
                            cfg->spelled.top_k, k, M, E / G, M * (E / G), k);
    }
    if (cfg->shared_experts == 0) {
        if (cfg->set_shared_ffn)
            return moe_fail(MOE_EUSAGE, msg, msglen, "--%s needs --shared-experts S (S >= 1)",
                            cfg->spelled.shared_ffn);
        cfg->shared_ffn = 0; /* a preset's, when its shared experts were turned off */
    } else if (cfg->shared_ffn == 0) {
        cfg->shared_ffn = cfg->ffn;
    }
    if (cfg->input_jitter > 0.0 && cfg->logits_file != NULL)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--%s perturbs h for routing, but --logits-file replays logits that are "
                        "not computed from h: the two cannot be combined",
                        cfg->spelled.input_jitter);
    if (expert_choice) {
        for (int i = 0; i < cfg->n_cf; i++)
            if (cfg->cf_list[i] == 0.0)
                return moe_fail(MOE_EUSAGE, msg, msglen,
                                "--routing expert-choice needs a capacity: each expert takes as "
                                "many tokens as its capacity allows, so --%s 0%s (dropless) has no "
                                "meaning; give values > 0",
                                cfg->spelled.capacity_factor, fcf);
        if (cfg->set_policy && cfg->policy != MOE_POLICY_POSITION)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s %s has no meaning with --routing expert-choice: experts take at "
                            "most their capacity, so none overflows",
                            cfg->spelled.policy, policy_names[cfg->policy]);
    }
    return MOE_OK;
}

/* --mode fwd-bwd and train: the paths whose backward is built (docs/training.md, "What the
 * backward covers"), the options that only training reads, and train's defaults (one timed
 * iteration a step, clustered tokens for the teacher task). */
static int resolve_training(moe_config *cfg, char *msg, size_t msglen)
{
    bool bwd = MOE_MODE_HAS_BACKWARD(cfg->mode), train = cfg->mode == MOE_MODE_TRAIN;
    const char *need_train = cfg->set_optimizer ? "--optimizer" : cfg->set_lr ? "--lr" : NULL;
    if (need_train != NULL && !train)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%s sets the optimizer of --mode train (this run is --mode %s)",
                        need_train, moe_mode_name(cfg->mode));
    if (cfg->set_token_mean && cfg->tokens_file != NULL)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--token-mean shifts generated tokens: --tokens-file gives its own");
    const char *need_bwd = cfg->set_aux_coeff ? "--aux-loss-coeff"
                           : cfg->set_z_coeff ? "--z-loss-coeff"
                           : cfg->set_teacher ? "--teacher-experts"
                                              : NULL;
    if (need_bwd != NULL && !bwd)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%s weighs a loss of the backward: give --mode fwd-bwd or --mode train "
                        "(the forward reports both losses at weight 1 in load_balance)",
                        need_bwd);
    if (!bwd)
        return MOE_OK;
    const char *clash = cfg->routing == MOE_ROUTING_EXPERT_CHOICE ? "--routing expert-choice"
                        : cfg->logits_file ? "--logits-file (replayed logits have no router to train)"
                        : cfg->noisy_top_k ? "--noisy-top-k"
                        : cfg->input_jitter > 0.0 ? "--input-jitter"
                        : cfg->dispatch == MOE_DISPATCH_PER_RANK ? "--dispatch per-rank"
                        : cfg->wire != MOE_WIRE_FP32 ? "--wire bf16/fp8"
                        : cfg->wire_combine != MOE_WIRE_FP32 ? "--wire-combine bf16"
                        : cfg->shared_experts > 0 ? "--shared-experts"
                        : cfg->redundant_experts > 0 ? "--redundant-experts"
                        : cfg->placement != MOE_PLACE_CONTIGUOUS ? "--placement strided/eplb"
                        : cfg->policy == MOE_POLICY_REROUTE ? "--drop-policy reroute"
                        : cfg->predict_only ? "--predict-only"
                        : cfg->n_cf > 1 ? "a --capacity-factor list"
                        : cfg->regroup != MOE_REGROUP_AUTO && cfg->regroup != MOE_REGROUP_COPY
                            ? "--regroup alltoallw/slots/alltoallw-slots (the backward stages its "
                              "rows: copy)"
                        : cfg->workload != MOE_WL_NONE ? "--workload (its gates come from no router)"
                                                  : NULL;
    if (clash != NULL)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--mode %s does not run with %s: its backward covers token choice, "
                        "per-expert fp32 rows, contiguous experts without replicas and no shared "
                        "experts (docs/training.md)",
                        moe_mode_name(cfg->mode), clash);
    if (train) {
        if (!cfg->set_iters)
            cfg->iters = 1;
        if (!cfg->set_warmup)
            cfg->warmup = 0;
        if (!cfg->set_token_mean && cfg->tokens_file == NULL)
            cfg->token_mean = MOE_TRAIN_DEFAULT_TOKEN_MEAN;
    }
    return MOE_OK;
}

/* --workload: the heat it takes from --hot-experts and --hot-share (which then bias no router),
 * its period, and what it cannot be combined with (it replaces the router). */
static int resolve_workload(moe_config *cfg, int nranks, char *msg, size_t msglen)
{
    const char *name = moe_wl_name(cfg->workload);
    if (cfg->workload == MOE_WL_NONE) {
        if (cfg->period > 0)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--period is the period of --workload rotating-hotspot or burst");
        return MOE_OK;
    }
    int E = cfg->experts, R = cfg->plan_ranks > 0 ? cfg->plan_ranks : nranks;
    const char *clash = cfg->logits_file           ? "--logits-file"
                        : cfg->router_file         ? "--router-file"
                        : cfg->expert_bias         ? "--expert-bias"
                        : cfg->expert_bias_file    ? "--expert-bias-file"
                        : cfg->noisy_top_k         ? "--noisy-top-k"
                        : cfg->group_top_k > 0     ? "--group-top-k"
                        : cfg->skew != 0.0         ? "--skew"
                        : cfg->clusters > 0        ? "--clusters"
                        : cfg->input_jitter > 0.0  ? "--input-jitter"
                        : cfg->routing == MOE_ROUTING_EXPERT_CHOICE ? "--routing expert-choice"
                                                   : NULL;
    if (clash != NULL)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--workload %s defines the routing itself: it replaces the router, so not "
                        "with %s",
                        name, clash);
    if (cfg->top_k > MOE_WL_MAX_K)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--workload routes at most top-%d, got top-%d",
                        MOE_WL_MAX_K, cfg->top_k);
    if (cfg->period > 0 && cfg->workload != MOE_WL_ROTATE && cfg->workload != MOE_WL_BURST)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--period is the period of --workload rotating-hotspot or burst, not %s",
                        name);
    if (cfg->period == 0)
        cfg->period = cfg->workload == MOE_WL_BURST ? 4 : 1;
    if (cfg->wl_hot == 0) { /* resolved once: the heat moves out of hot_experts below */
        cfg->wl_hot = cfg->hot_experts > 0 ? cfg->hot_experts : (E / 8 > 1 ? E / 8 : 1);
        cfg->wl_share = cfg->hot_share;
    }
    bool heated = cfg->workload != MOE_WL_BALANCED && cfg->workload != MOE_WL_ZERO &&
                  cfg->workload != MOE_WL_RAGGED;
    if (!heated && (cfg->hot_experts > 0 || cfg->set_hot_share))
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--workload %s has no hot set: --hot-experts and --hot-share do not apply",
                        name);
    if (heated && cfg->wl_hot >= E)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--hot-experts %d must be smaller than the number of experts (%d)",
                        cfg->wl_hot, E);
    if (cfg->workload == MOE_WL_HOT_RANK && cfg->wl_hot > E / R)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--workload hot-rank puts the hot set on rank 0, which holds %d experts: "
                        "--hot-experts %d is more",
                        E / R, cfg->wl_hot);
    if (cfg->workload == MOE_WL_ZERO) {
        int64_t first = 0, count = 0;
        moe_partition(E, R, R - 1, &first, &count);
        if (R < 2 || E - count < cfg->top_k)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--workload zero-expert-rank leaves the last rank's %lld experts "
                            "empty: it needs 2 ranks or more and top-k at most the %lld others",
                            (long long)count, (long long)(E - count));
    }
    /* the heat is the workload's: no router bias */
    cfg->hot_experts = 0;
    cfg->set_hot_share = false;
    return MOE_OK;
}

/* The batch a file of `rows` rows gives: all of it, or with --steps S one slice of S: --tokens N
 * when given (the file must hold S N rows), else rows / S (a whole number of batches). */
static int file_batch(const moe_config *cfg, const char *option, const char *path, int64_t rows,
                      int64_t *batch, char *msg, size_t msglen)
{
    *batch = rows;
    if (cfg->steps <= 1)
        return MOE_OK;
    if (cfg->set_tokens) {
        if (rows / cfg->steps < cfg->tokens)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "%s '%s' holds %lld rows: %d steps of %lld tokens need %lld", option,
                            path, (long long)rows, cfg->steps, (long long)cfg->tokens,
                            (long long)cfg->tokens * cfg->steps);
        *batch = cfg->tokens;
        return MOE_OK;
    }
    if (rows % cfg->steps != 0 || rows < cfg->steps)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%s '%s' holds %lld rows, not a whole number of batches for %d steps: give "
                        "the batch with --tokens",
                        option, path, (long long)rows, cfg->steps);
    *batch = rows / cfg->steps;
    return MOE_OK;
}

int moe_config_resolve(moe_config *cfg, int nranks, const moe_npy_header *tokens_hdr,
                       const moe_npy_header *router_hdr, const moe_npy_header *logits_hdr, char *msg,
                       size_t msglen)
{
    if (logits_hdr != NULL && router_hdr != NULL)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--logits-file replaces the router: it cannot be combined with --router-file");
    int rc = MOE_OK;
    if (cfg->steps > 1 && cfg->n_cf > 1)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--steps %d runs one capacity factor: give one --capacity-factor (an "
                        "ablation over cf runs one batch)",
                        cfg->steps);
    if (cfg->expert_bias && cfg->routing == MOE_ROUTING_EXPERT_CHOICE)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--expert-bias balances token choice; expert choice balances itself");
    if ((rc = resolve_training(cfg, msg, msglen)) != MOE_OK)
        return rc;
    if (cfg->set_bias_rate && !cfg->expert_bias)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--bias-update-rate sets the rate of --expert-bias: give --expert-bias too");
    if (cfg->steps > 1 && cfg->predict_only)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--steps %d with --predict-only: the steps are runs; predict one batch, or "
                        "run the steps",
                        cfg->steps);
    int64_t tok_rows = 0, logit_rows = 0; /* the batch each file gives: --steps slices it */
    if (tokens_hdr != NULL &&
        (rc = file_batch(cfg, "--tokens-file", cfg->tokens_file, tokens_hdr->rows, &tok_rows, msg,
                         msglen)) != MOE_OK)
        return rc;
    if (logits_hdr != NULL &&
        (rc = file_batch(cfg, "--logits-file", cfg->logits_file, logits_hdr->rows, &logit_rows,
                         msg, msglen)) != MOE_OK)
        return rc;
    if (logits_hdr != NULL) {
        int64_t n_tok = tokens_hdr ? tok_rows : cfg->tokens;
        if ((tokens_hdr != NULL || cfg->set_tokens) && logit_rows != n_tok)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--logits-file '%s' has %lld rows but the batch has %lld tokens",
                            cfg->logits_file, (long long)logit_rows, (long long)n_tok);
        if (cfg->set_experts && logits_hdr->cols != cfg->experts)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s %d disagrees with --logits-file '%s', which has %lld columns",
                            cfg->spelled.experts, cfg->experts, cfg->logits_file,
                            (long long)logits_hdr->cols);
        if (logits_hdr->cols > MOE_MAX_EXPERTS)
            return moe_fail(MOE_EUSAGE, msg, msglen, "--logits-file '%s' has %lld experts; at most %d",
                            cfg->logits_file, (long long)logits_hdr->cols, MOE_MAX_EXPERTS);
        cfg->tokens = logit_rows;
        cfg->experts = (int)logits_hdr->cols;
    }
    if (tokens_hdr != NULL) {
        if (cfg->set_tokens && cfg->tokens != tok_rows)
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
        cfg->tokens = tok_rows;
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
                            "--%s %d disagrees with --router-file '%s', which has %lld rows",
                            cfg->spelled.experts, cfg->experts, cfg->router_file,
                            (long long)router_hdr->rows);
        if (router_hdr->rows > MOE_MAX_EXPERTS)
            return moe_fail(MOE_EUSAGE, msg, msglen, "--router-file '%s' has %lld experts; at most %d",
                            cfg->router_file, (long long)router_hdr->rows, MOE_MAX_EXPERTS);
        cfg->experts = (int)router_hdr->rows;
    }
    if (cfg->ffn == 0)
        cfg->ffn = 2 * cfg->hidden;
    if (cfg->top_k > cfg->experts)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--%s %d is larger than the number of experts (%d)", cfg->spelled.top_k, cfg->top_k, cfg->experts);
    if (cfg->plan_ranks > 0 && !cfg->predict_only)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--ranks %d plans ranks that were not launched: it needs --predict-only "
                        "(for a measured run launch the ranks: mpirun -n %d)",
                        cfg->plan_ranks, cfg->plan_ranks);
    if (cfg->plan_ranks > 0 && nranks > cfg->plan_ranks)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--ranks %d plans fewer ranks than the %d processes launched: launch at "
                        "most %d",
                        cfg->plan_ranks, nranks, cfg->plan_ranks);
    if (cfg->plan_ranks > 0) /* every check below is about the ranks the numbers describe */
        nranks = cfg->plan_ranks;
    if (nranks > cfg->experts)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%d ranks but only %d experts: expert parallelism needs at least one expert "
                        "per rank (use --%s >= %d or fewer ranks)",
                        nranks, cfg->experts, cfg->spelled.experts, nranks);
    /* group-limited routing's default, one group per node, on the nodes planned */
    if (cfg->plan_ranks > 0 && cfg->group_top_k > 0 && cfg->expert_groups == 0)
        cfg->expert_groups = cfg->ranks_per_node > 0
                                 ? (nranks + cfg->ranks_per_node - 1) / cfg->ranks_per_node
                                 : 1;
    rc = resolve_routing(cfg, msg, msglen);
    if (rc != MOE_OK)
        return rc;
    /* Each rank sends at most (its tokens) * (slots per token) rows, where a token has k slots
     * under token choice and up to E under expert choice (every expert may take it); counts and
     * displacements are MPI ints in rows. */
    bool expert_choice = cfg->routing == MOE_ROUTING_EXPERT_CHOICE;
    int64_t slots = expert_choice ? cfg->experts : cfg->top_k;
    const char *slots_are = expert_choice ? "experts (expert choice: each may take every token)"
                                          : "top-k";
    int64_t max_local = cfg->plan_ranks > 0 ? (cfg->tokens + cfg->plan_ranks - 1) / cfg->plan_ranks
                                            : moe_config_max_block(cfg, nranks);
    if (max_local * slots > INT_MAX)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%lld tokens per rank x %s %lld = %lld rows exceed what one MPI count can "
                        "address (%d): use more ranks or fewer tokens",
                        (long long)max_local, slots_are, (long long)slots,
                        (long long)(max_local * slots), INT_MAX);
    if (cfg->dump_routing != NULL && !moe_config_dump_is_npy(cfg->dump_routing) &&
        cfg->tokens * slots > INT_MAX)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--dump-routing is for small runs: %lld tokens x %s %lld = %lld "
                        "assignments are more than one gather can hold (%d)",
                        (long long)cfg->tokens, slots_are, (long long)slots,
                        (long long)(cfg->tokens * slots), INT_MAX);
    if (cfg->dump_output != NULL && cfg->tokens > INT_MAX)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--dump-output is for small runs: %lld tokens are more than one gather can "
                        "hold (%d)",
                        (long long)cfg->tokens, INT_MAX);
    for (int i = 0; i < cfg->n_cf; i++)
        if (cfg->pad_to_capacity && cfg->cf_list[i] == 0.0)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--%s needs a capacity: it has no meaning with --%s 0 (dropless)",
                            cfg->spelled.pad_to_capacity, cfg->spelled.capacity_factor);
    bool any_cap = false;
    for (int i = 0; i < cfg->n_cf; i++)
        any_cap |= cfg->cf_list[i] > 0.0;
    if (cfg->min_capacity > 0 && !any_cap)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--min-capacity %lld needs a capacity: it has no effect with "
                        "--%s 0 (dropless)",
                        (long long)cfg->min_capacity, cfg->spelled.capacity_factor);
    if (cfg->redundant_experts > 0 && cfg->set_placement && cfg->placement != MOE_PLACE_EPLB)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--redundant-experts %d places replicas by load (EPLB): it cannot be "
                        "combined with --placement %s",
                        cfg->redundant_experts, moe_place_kind_name(cfg->placement));
    if (cfg->redundant_experts > 0)
        cfg->placement = MOE_PLACE_EPLB;
    if ((cfg->tokens_per_rank != NULL || cfg->workload == MOE_WL_RAGGED) && cfg->plan_ranks > 0)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%s gives the launched ranks' blocks: --ranks plans even blocks",
                        cfg->tokens_per_rank ? "--tokens-per-rank" : "--workload source-ragged");
    if (cfg->tokens_per_rank != NULL &&
        (rc = moe_tokens_per_rank_parse(cfg->tokens_per_rank, nranks, cfg->tokens, NULL, msg,
                                        msglen)) != MOE_OK)
        return rc;
    if (cfg->set_eplb_from && cfg->placement != MOE_PLACE_EPLB)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--eplb-from gives the loads EPLB plans from: it needs --placement eplb or "
                        "--redundant-experts N");
    if ((cfg->experts + cfg->redundant_experts) % nranks != 0 && cfg->placement == MOE_PLACE_EPLB)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "EPLB packs the %d experts and %d replicas into equal shares of %d ranks: "
                        "E + N must be a multiple of the rank count (use --redundant-experts %d)",
                        cfg->experts, cfg->redundant_experts, nranks,
                        cfg->redundant_experts + (nranks - (cfg->experts + cfg->redundant_experts) %
                                                              nranks));
    if (cfg->regroup != MOE_REGROUP_AUTO && cfg->regroup != MOE_REGROUP_COPY &&
        (cfg->hierarchical || cfg->dispatch == MOE_DISPATCH_PER_RANK))
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--regroup %s delivers one flat exchange of per-expert rows into the "
                        "experts' blocks: not with %s (use --regroup auto or copy)",
                        moe_regroup_name(cfg->regroup),
                        cfg->hierarchical ? "--a2a hierarchical" : "--dispatch per-rank");
    if ((rc = resolve_workload(cfg, nranks, msg, msglen)) != MOE_OK)
        return rc;
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
