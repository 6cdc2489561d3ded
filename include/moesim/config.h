/* Configuration: command-line options, their defaults, and validation. Pure: no MPI, no printing.
 * Every option is listed in moe_config_usage() and in docs/options.md. */
#ifndef MOESIM_CONFIG_H
#define MOESIM_CONFIG_H

#include "moesim/capacity.h"
#include "moesim/npy.h"
#include "moesim/placement.h"
#include "moesim/router.h"
#include "moesim/train.h"
#include "moesim/wire.h"
#include "moesim/workload.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOE_VERSION "0.1.0"

/* Largest hidden or FFN size: a row of floats must fit an int count of bytes. */
#define MOE_MAX_WIDTH (INT64_C(1) << 24)
#define MOE_MAX_EXPERTS 65536
#define MOE_MAX_STEPS 1000000 /* --steps */
/* --ranks: the traffic is held as nonzero blocks (blocks.h), so rank 0 needs O(R E) at most */
#define MOE_MAX_PLAN_RANKS 65536
/* --traffic-matrix auto: the JSON holds the dense R x R traffic matrices up to this many ranks,
 * per-rank sums beyond (2 R^2 integers are 476 MiB of JSON at R = 4096) */
#define MOE_FULL_MATRIX_RANKS 1024
/* Most capacity factors one run can sweep (--capacity-factor 1.0,1.25,...). */
#define MOE_MAX_CF 16
/* Largest --topk-scale and --min-capacity: beyond them a value is surely a typo. */
#define MOE_MAX_TOPK_SCALE 1e6
#define MOE_MAX_MIN_CAPACITY (INT64_C(1) << 40)

/* What a step runs (--mode). */
typedef enum moe_mode {
    MOE_MODE_FORWARD = 0, /* route, dispatch, experts, combine                              */
    MOE_MODE_DISPATCH = 1, /* the same with identity experts: the step is the exchange
                            * (Megatron's token-imbalance benchmark, "dispatch_only")       */
    MOE_MODE_FWD_BWD = 2,  /* forward, then the expert-parallel backward (docs/training.md)  */
    MOE_MODE_TRAIN = 3     /* fwd-bwd and an optimizer step after every --steps batch       */
} moe_mode;

/* The step runs the backward (fwd-bwd or train). */
#define MOE_MODE_HAS_BACKWARD(m) ((m) == MOE_MODE_FWD_BWD || (m) == MOE_MODE_TRAIN)

const char *moe_mode_name(moe_mode m);

/* When the raw MPI_Alltoallv baselines run (--raw-baseline). */
typedef enum moe_raw_baseline {
    MOE_RAW_FIRST = 0, /* after the exchanges of the first timed iteration (and, untimed, of
                        * the last warm-up step, to warm its buffers) */
    MOE_RAW_ON = 1,    /* after every exchange, warm-up included                */
    MOE_RAW_OFF = 2    /* never: the run's communication is the step's          */
} moe_raw_baseline;

const char *moe_raw_baseline_name(moe_raw_baseline r);

/* How arriving rows reach the experts' blocks (--regroup): the owner computes each local expert
 * on one contiguous block of rows, while each source's rows arrive together. */
typedef enum moe_regroup_kind {
    MOE_REGROUP_AUTO = 0,   /* chosen per shape (moe_regroup_choose, dispatch.h)          */
    MOE_REGROUP_W = 1,      /* one MPI_Alltoallw whose receive datatypes scatter each
                             * source's rows into the blocks; the combine sends from them */
    MOE_REGROUP_SLOTS = 2,  /* one MPI_Alltoallv per local-expert slot, straight into its
                             * block; the combine the same way back                        */
    MOE_REGROUP_COPY = 3,   /* one MPI_Alltoallv into a staging buffer, copied to the blocks
                             * and back (the layout of the two-level exchange)             */
    MOE_REGROUP_W_SLOTS = 4 /* the dispatch of MOE_REGROUP_W, the combine of SLOTS: each
                             * expert block's rows for one rank leave contiguous           */
} moe_regroup_kind;

const char *moe_regroup_name(moe_regroup_kind r);

/* What the JSON holds of the rank-to-rank traffic (--traffic-matrix). */
typedef enum moe_matrix_kind {
    MOE_MATRIX_AUTO = 0,    /* full up to MOE_FULL_MATRIX_RANKS ranks, else summary */
    MOE_MATRIX_FULL = 1,    /* the dense R x R matrices                            */
    MOE_MATRIX_SUMMARY = 2  /* per-rank sums and per-class totals only             */
} moe_matrix_kind;

/* How much of the per-expert and per-rank detail the text report prints (--report). */
typedef enum moe_report_kind {
    MOE_REPORT_AUTO = 0,    /* full up to MOE_FULL_REPORT_EXPERTS experts, else summary     */
    MOE_REPORT_FULL = 1,    /* every expert and every rank                                 */
    MOE_REPORT_SUMMARY = 2  /* the hottest and coldest few and a load histogram           */
} moe_report_kind;

/* --report auto: every expert's row up to this many experts. */
#define MOE_FULL_REPORT_EXPERTS 64

/* What travels in dispatch (--dispatch). */
typedef enum moe_dispatch_kind {
    MOE_DISPATCH_PER_EXPERT = 0, /* one row per served (token, expert) (Megatron's alltoall)   */
    MOE_DISPATCH_PER_RANK = 1    /* one row per (token, destination rank), gates and expert ids
                                  * beside it (DeepEP's normal kernels)                        */
} moe_dispatch_kind;

const char *moe_dispatch_name(moe_dispatch_kind k);

typedef struct moe_config {
    int64_t tokens;         /* N, global batch                          --tokens     8192 */
    int64_t hidden;         /* d                                        --hidden     512  */
    int64_t ffn;            /* f (0: 2d)                                --ffn        2d   */
    int experts;            /* E                                        --experts    8    */
    int top_k;              /* k                                        --top-k      2    */
    double capacity_factor; /* cf, 0 = dropless (the first of cf_list)  --capacity-factor 1.25 */
    double cf_list[MOE_MAX_CF]; /* every cf to run, in the order given                     */
    int n_cf;
    moe_scope scope;        /*                                          --capacity-scope global */
    moe_policy policy;      /*                                          --drop-policy position */
    bool renormalize;       /* Mixtral-style gates                      --renormalize */
    moe_score score;        /* softmax or sigmoid scores                --score softmax */
    double topk_scale;      /* every gate times this, after normalizing --topk-scale 1 */
    int64_t min_capacity;   /* floor of C per expert and group (cf > 0)  --min-capacity 0 */
    const char *expert_bias_file; /* (E) bias added to the scores for selection only, .npy
                                      * of shape (1, E) or (E, 1)  --expert-bias-file */
    bool pad_to_capacity;   /* compute the empty slots too              --pad-to-capacity */
    moe_mode mode;          /* forward or dispatch-only                 --mode forward */
    moe_raw_baseline raw_baseline; /* the raw Alltoallv baselines        --raw-baseline first */
    moe_regroup_kind regroup;   /* arriving rows to expert blocks          --regroup auto */
    moe_matrix_kind traffic_matrix; /* R x R traffic in the JSON           --traffic-matrix auto */
    moe_report_kind report;         /* text report detail                  --report auto         */
    moe_dispatch_kind dispatch; /* rows per expert or per rank           --dispatch per-expert */
    moe_place_kind placement;   /* where experts live                     --placement contiguous */
    int redundant_experts;      /* extra replicas of the most loaded      --redundant-experts 0 */
    const char *eplb_from;      /* loads for EPLB: NULL = this batch      --eplb-from self */
    bool eplb_previous;         /* --eplb-from previous: re-planned every step from the last */
    bool set_placement, set_eplb_from;
    moe_wire wire;          /* format of dispatched rows                 --wire fp32 */
    moe_wire wire_combine;  /* format of combined rows (fp8 dispatch: bf16) --wire-combine fp32 */
    bool set_wire_combine;
    moe_routing routing;    /* who chooses: tokens (top-k) or experts   --routing token-choice */
    int expert_groups;      /* G contiguous expert groups, 0 = none      --expert-groups 0
                             * (with only --group-top-k: one group per node, set by the layer) */
    int group_top_k;        /* M groups each token keeps, 0 = no limit   --group-top-k 0 */
    int shared_experts;     /* S always-on experts on every token's rank --shared-experts 0 */
    int64_t shared_ffn;     /* their inner size (0: --ffn)               --shared-ffn */
    bool noisy_top_k;       /* Shazeer's noisy top-k                     --noisy-top-k */
    double input_jitter;    /* h times U(1-eps, 1+eps) for routing only  --input-jitter 0 */
    const char *preset;     /* the family whose layer was preset, NULL   --preset */
    char preset_set[320];   /* what the preset set, as "experts 64, top-k 6, ..." (explicit
                             * options removed), for --help-free reporting; "" without a preset */
    uint64_t seed;          /*                                          --seed       1    */
    int iters, warmup;      /*                                          --iters 5, --warmup 1 */
    int steps;              /* consecutive steps, each a new batch      --steps 1 */
    moe_wl_kind workload;   /* routing defined by a workload, not a router --workload none */
    int period;             /* its period P (0: the kind's default)     --period */
    int wl_hot;             /* resolved: its hot set's size (--hot-experts, else max(1, E/8)) */
    double wl_share;        /* resolved: the hot set's share of assignments (--hot-share)    */
    bool expert_bias;       /* DeepSeek-V3's loss-free balancing bias   --expert-bias */
    bool set_bias_rate;     /* --bias-update-rate was given */
    double bias_update_rate; /* its gamma: b_i += gamma sign(mean - load_i) --bias-update-rate 1e-3 */
    const char *steps_csv;  /* one row per step, NULL = none            --steps-csv */
    /* training (--mode fwd-bwd, train; docs/training.md) */
    moe_optimizer optimizer; /* SGD with momentum or Adam                --optimizer adam */
    double lr;              /* learning rate                              --lr */
    double aux_loss_coeff;  /* alpha of the Switch aux loss               --aux-loss-coeff 0 */
    double z_loss_coeff;    /* beta of the router z-loss                  --z-loss-coeff 0 */
    bool set_optimizer, set_lr, set_aux_coeff, set_z_coeff, set_iters, set_warmup, set_clusters,
        set_token_mean, set_teacher;
    bool quiet;             /* no progress line, no text report         --quiet */
    bool predict_only;      /* stop after the prediction                --predict-only */
    int plan_ranks;         /* plan this many ranks, 0 = the launched     --ranks (predict-only) */
    double skew;            /* Zipf-like popularity exponent            --skew 0 */
    int hot_experts;        /* experts 0..n-1 made hot                  --hot-experts 0 */
    double hot_share;       /* share of tokens routed to a hot expert   --hot-share 0.5 */
    int64_t clusters;       /* tokens around c centres, 0 = off         --clusters 0 */
    double token_mean;      /* every token + mu m (one shared direction) --token-mean 0 */
    int teacher_experts;    /* the teacher's experts (fwd-bwd, train)   --teacher-experts 1 */
    const char *tokens_file, *router_file, *logits_file; /* .npy inputs (point into argv) */
    const char *tokens_per_rank; /* a comma list of R token counts, NULL: even blocks
                                  * (--workload source-ragged: r + 1 shares)  --tokens-per-rank */
    const char *topology;   /* hwloc XML file or synthetic description   --topology (real) */
    int ranks_per_node;     /* emulate nodes of n ranks, 0 = real nodes   --ranks-per-node 0 */
    bool hierarchical;      /* two-level all-to-all                       --a2a flat */
    const char *network;    /* key = value network file for projection    --network */
    const char *json_path, *dump_routing, *dump_output;
    int64_t max_memory;     /* node budget in bytes, 0 = MemAvailable     --max-memory */
    double max_memory_percent; /* or a percentage of the node's memory (> 0) */
    bool help, version;
    /* which shape options were given explicitly, so a file can disagree with them */
    bool set_tokens, set_hidden, set_experts, set_hot_share;
    /* which options a preset sets were given explicitly (they win over the preset wherever they
     * stand); --moe-shared-expert-intermediate-size sets set_shared_ffn (and set_shared_experts
     * when it alone decides their number) */
    bool set_ffn, set_top_k, set_cf, set_policy, set_score, set_renormalize, set_topk_scale,
        set_routing, set_expert_groups, set_group_top_k, set_shared_experts, set_shared_ffn;
    /* the name each of these options was given by, without the dashes, for messages: "top-k", or
     * the Megatron-Core alias the user typed ("moe-router-topk"); moesim's names by default */
    struct {
        const char *experts, *top_k, *capacity_factor, *policy, *score, *topk_scale,
            *expert_groups, *group_top_k, *shared_experts, *shared_ffn, *pad_to_capacity,
            *input_jitter;
    } spelled;
} moe_config;

/* Defaults as in the table above. */
void moe_config_defaults(moe_config *cfg);

/* Parse argv (getopt_long; resets its state, so it may be called more than once). Option names
 * must be given whole: getopt_long's abbreviations are refused, and an unknown or abbreviated name
 * gets the nearest valid one suggested. --preset NAME is applied first (the last one given), then
 * every other option over it, so an explicit option wins wherever it stands; --hidden then scales
 * the preset's ffn and shared_ffn unless they are explicit too, and preset_set describes what the
 * preset set in the end. The Megatron-Core aliases (docs/options.md) parse as their moesim
 * option, and messages name the alias the user typed. Fails with MOE_EUSAGE and a message naming
 * the option on an unknown option, a missing or malformed value, a value out of range, or
 * --moe-shared-expert-intermediate-size that does not split among --shared-experts. Shape
 * relations that need the rank count or the input files are checked later by
 * moe_config_resolve. */
int moe_config_parse(moe_config *cfg, int argc, char **argv, char *msg, size_t msglen);

/* Settle the shapes and check everything that depends on them: N and d from a tokens file, E and d
 * from a router file, N and E from a logits file (a flag or file that disagrees is an error), ffn
 * default 2d, shared_ffn default ffn, 1 <= k <= E, R <= E, hot experts < E, --min-capacity only
 * with some cf > 0, the expert groups (--expert-groups needs --group-top-k; G divides E, M <= G,
 * M <= k, k <= M E / G; with --group-top-k alone only M <= k, G is left 0 for the layer to set to
 * the node count, which must then check the rest), --shared-ffn only with shared experts,
 * --input-jitter not with --logits-file, expert choice only with every cf > 0, no group limit and
 * no explicit drop policy but position, and the sizes that must fit MPI's int counts, in slots
 * per token (k, or E under expert choice). (The selection-bias file's E is checked when it is
 * read, moe_layer_create.)
 * tokens_hdr, router_hdr and logits_hdr may be NULL. MOE_EUSAGE. */
int moe_config_resolve(moe_config *cfg, int nranks, const moe_npy_header *tokens_hdr,
                       const moe_npy_header *router_hdr, const moe_npy_header *logits_hdr, char *msg,
                       size_t msglen);

/* Whether --dump-routing PATH asks for the .npy form (the logits) rather than CSV. */
bool moe_config_dump_is_npy(const char *path);

/* The --help text. */
const char *moe_config_usage(void);

/* What --regroup does at R ranks: copy wherever rows do not arrive from one flat exchange of
 * per-expert rows (--a2a hierarchical, --dispatch per-rank), the option when given, else the
 * choice of docs/model.md for the shape. Pure. */
moe_regroup_kind moe_config_regroup(const moe_config *cfg, int R);
/* Whether --regroup auto, at R ranks, leaves the combine to a probe of alltoallw against
 * alltoallw-slots on the run's own buffers (moe_config_regroup is alltoallw, the combine's rows
 * are fp32 and something moves). Pure. */
bool moe_config_regroup_probes(const moe_config *cfg, int R);

/* The R ranks' token counts when the blocks are uneven (--tokens-per-rank, --workload
 * source-ragged), malloc'd (caller frees); NULL for moe_partition's even blocks, and also when
 * the list does not parse for R or memory is short. Pure. */
int64_t *moe_config_token_blocks(const moe_config *cfg, int R);
/* The largest rank's token count at R ranks (ceil(N / R) with even blocks). Pure. */
int64_t moe_config_max_block(const moe_config *cfg, int R);

/* Whether the text report lists every expert and rank (--report; auto: up to
 * MOE_FULL_REPORT_EXPERTS experts). Pure. */
bool moe_config_full_report(const moe_config *cfg);
const char *moe_report_kind_name(moe_report_kind k);

/* Whether a run of R ranks writes the full traffic matrices (--traffic-matrix). Pure. */
bool moe_config_full_matrix(const moe_config *cfg, int R);

/* A selection-only bias is in play: read from --expert-bias-file, or learnt (--expert-bias). */
static inline bool moe_config_has_selection_bias(const moe_config *cfg)
{
    return cfg->expert_bias_file != NULL || cfg->expert_bias;
}

#endif
