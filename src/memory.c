#include "moesim/memory.h"

#include "moesim/capacity.h"
#include "moesim/error.h"
#include "moesim/router.h"
#include "moesim/topology.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t moe_bytes_mul(int64_t a, int64_t b)
{
    int64_t r;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
        return MOE_BYTES_MAX;
    return r;
}

int64_t moe_bytes_add(int64_t a, int64_t b)
{
    int64_t r;
    if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r))
        return MOE_BYTES_MAX;
    return r;
}

/* a * b * c */
static int64_t mul3(int64_t a, int64_t b, int64_t c)
{
    return moe_bytes_mul(moe_bytes_mul(a, b), c);
}

static void sum_parts(moe_mem_estimate *m)
{
    int64_t parts[] = {m->tokens, m->router, m->assignments, m->experts, m->exchange, m->training, m->results,
                       m->dumps, m->counts, m->staging, m->protocol};
    m->total = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        m->total = moe_bytes_add(m->total, parts[i]);
}

int64_t moe_predict_chunk_rows(int64_t n, int64_t d)
{
    int64_t rows = (INT64_C(64) << 20) / (d > 0 ? d * (int64_t)sizeof(float) : 1);
    rows = rows < 1 ? 1 : rows;
    return rows < n ? rows : (n > 0 ? n : 1);
}

void moe_memory_fixed(moe_mem_estimate *m, const moe_config *cfg, int R, int rank, int64_t n,
                      int64_t n_le)
{
    memset(m, 0, sizeof *m);
    int64_t d = cfg->hidden, f = cfg->ffn > 0 ? cfg->ffn : moe_bytes_mul(2, cfg->hidden);
    int64_t E = cfg->experts, k = cfg->top_k, F = (int64_t)sizeof(float);
    /* slots per token: k, or every expert under expert choice */
    int64_t A = cfg->routing == MOE_ROUTING_EXPERT_CHOICE ? E : k;
    int64_t fs = cfg->shared_ffn > 0 ? cfg->shared_ffn : f, S = cfg->shared_experts;
    /* h and y, or under --predict-only (which never runs a step) a chunk of h (logits_by_chunks) */
    m->tokens = cfg->predict_only ? mul3(moe_predict_chunk_rows(n, d), d, F)
                                  : mul3(2, moe_bytes_mul(n, d), F);
    int64_t nE = moe_bytes_mul(n, E);
    /* W and the logits' block scratch, the workload bias (and the selection bias), the scores
     * (and replayed logits) */
    m->router = moe_bytes_add(moe_bytes_add(mul3(E, d, F), mul3(MOE_ROUTER_BLOCK, d + E, F)),
                              moe_bytes_add(mul3(moe_config_has_selection_bias(cfg) ? 2 : 1, E, F),
                                            mul3(cfg->logits_file || cfg->predict_only ? 2 : 1,
                                                 nE, F)));
    /* the selection scores with a bias; W_noise and the noise logits; the jittered h */
    if (moe_config_has_selection_bias(cfg))
        m->router = moe_bytes_add(m->router, mul3(1, nE, F));
    if (cfg->noisy_top_k)
        m->router = moe_bytes_add(m->router, moe_bytes_add(mul3(E, d, F), mul3(1, nE, F)));
    if (cfg->input_jitter > 0.0 && !cfg->predict_only)
        m->router = moe_bytes_add(m->router, mul3(n, d, F));
    /* expert (int32), gate (float), flag and rerouted (uint8), slot and the unpack's position
     * (int64) per slot; with a
     * keyed policy or expert choice two capacity keys (24 bytes) per slot; with reroute the
     * router's choices and gates and two flags per assignment */
    int64_t nA = moe_bytes_mul(n, A);
    m->assignments = moe_bytes_mul(nA, 4 + 4 + 1 + 1 + 8 + 8);
    bool keyed = cfg->routing == MOE_ROUTING_EXPERT_CHOICE || cfg->policy == MOE_POLICY_PROBS ||
                 cfg->policy == MOE_POLICY_CHOICE || cfg->policy == MOE_POLICY_RANDOM;
    if (keyed)
        m->assignments = moe_bytes_add(m->assignments, moe_bytes_mul(nA, 2 * 24));
    if (cfg->wire != MOE_WIRE_FP32) /* the token of each dispatched row, for encoding */
        m->assignments = moe_bytes_add(m->assignments, moe_bytes_mul(nA, 8));
    if (cfg->policy == MOE_POLICY_REROUTE)
        m->assignments = moe_bytes_add(m->assignments, moe_bytes_mul(moe_bytes_mul(n, k), 4 + 4 + 2));
    /* no weights without a step, nor for the identity experts of --mode dispatch */
    bool weights = !cfg->predict_only && cfg->mode != MOE_MODE_DISPATCH;
    m->experts = weights ? mul3(2, moe_bytes_mul(n_le, f), moe_bytes_mul(d, F)) : 0;
    /* shared experts: weights, and their activation and output for every local token */
    if (S > 0 && weights)
        m->experts = moe_bytes_add(
            m->experts, moe_bytes_add(mul3(2 * S, fs, moe_bytes_mul(d, F)),
                                      mul3(n, moe_bytes_add(fs, d), F)));
    if (MOE_MODE_HAS_BACKWARD(cfg->mode) && !cfg->predict_only) {
        /* teacher: router (T, d) and T experts of 2 f d; the gates' gradients (n, k); targets, dL/dy and dL/dh (n, d) each;
         * saved logits and dL/dz (n, E); dL/dW of the router (E, d) and of the rank's experts;
         * the optimizer's state for the same weights (train) */
        int64_t grads = moe_bytes_add(mul3(E, d, F), mul3(2, moe_bytes_mul(n_le, f), moe_bytes_mul(d, F)));
        int64_t state = cfg->mode == MOE_MODE_TRAIN
                            ? moe_bytes_mul(moe_optimizer_state_per_weight(cfg->optimizer), grads)
                            : 0;
        m->training = moe_bytes_add(
            moe_bytes_add(mul3(cfg->teacher_experts, d, F),
                          mul3(2, moe_bytes_mul(cfg->teacher_experts, f), moe_bytes_mul(d, F))),
            moe_bytes_add(moe_bytes_add(mul3(3, moe_bytes_mul(n, d), F),
                                        moe_bytes_add(mul3(2, nE, F), mul3(n, A, F))),
                          moe_bytes_add(grads, state)));
    }
    /* per expert: routed, accepted, per_expert, scratch; per rank: send/recv rows, group
     * capacities, the owner's counts (R, n_le) twice (the two-level plan's blocks are in staging) */
    m->counts = moe_bytes_mul(8, moe_bytes_add(moe_bytes_mul(4, E),
                                               moe_bytes_add(moe_bytes_mul(3 + 4, R),
                                                             mul3(2, R, n_le))));
    if (rank == 0) {
        /* the traffic as nonzero rank pairs (blocks.h, 16 bytes each): at most
         * B = min(R^2, N A + R) of them (every routed assignment, and each rank's own rows) */
        int64_t RR = moe_bytes_mul(R, R), NA = moe_bytes_add(mul3(cfg->tokens, A, 1), R);
        int64_t B16 = moe_bytes_mul(16, RR < NA ? RR : NA);
        /* two results (the first cf and the others), each three pair lists (rows, dispatch and
         * combine bytes) and eight per-expert arrays; the placement and the per-rank locality
         * classes */
        int64_t one = moe_bytes_add(moe_bytes_mul(3, B16), moe_bytes_mul(64, E));
        one = moe_bytes_add(one, moe_bytes_mul(R, (int64_t)sizeof(moe_placement) +
                                                      8 * MOE_LOC_COUNT * 2));
        m->results = moe_bytes_mul(2, one);
        /* the gathered pairs before they are sorted, and the two-level stages of the locality
         * figures: four more lists */
        m->results = moe_bytes_add(m->results, moe_bytes_mul(4, B16));
        if (cfg->dump_output != NULL && !cfg->predict_only)
            m->dumps = moe_bytes_add(m->dumps, mul3(cfg->tokens, d, F));
        if (cfg->dump_routing != NULL && !cfg->predict_only)
            m->dumps = moe_bytes_add(
                m->dumps, moe_config_dump_is_npy(cfg->dump_routing)
                              ? mul3(cfg->tokens, E, F)
                              : mul3(cfg->tokens, A, (int64_t)sizeof(moe_route_record)));
    }
    sum_parts(m);
}

void moe_memory_exchange(moe_mem_estimate *m, const moe_config *cfg, int64_t n_send,
                         int64_t n_staged, int64_t n_recv, int64_t rows_x)
{
    int64_t d = cfg->hidden, f = cfg->ffn > 0 ? cfg->ffn : moe_bytes_mul(2, cfg->hidden);
    int64_t F = (int64_t)sizeof(float);
    if (cfg->predict_only) {
        m->exchange = m->staging = 0;
    } else {
        /* send, the staged arrivals, the raw baseline's own buffer (the larger direction), and
         * per computed row: expert input (d), activation (f), output (d) */
        int64_t raw = n_send > n_recv ? n_send : n_recv;
        int64_t rows = moe_bytes_add(moe_bytes_add(n_send, n_staged), raw);
        /* identity experts (--mode dispatch) keep only their input x */
        int64_t per_row = cfg->mode == MOE_MODE_DISPATCH ? d : moe_bytes_add(moe_bytes_mul(2, d), f);
        /* the backward: the pre-activation kept, its gradient, the output-gradient block */
        if (MOE_MODE_HAS_BACKWARD(cfg->mode))
            per_row = moe_bytes_add(per_row, moe_bytes_add(moe_bytes_mul(2, f), d));
        m->exchange = moe_bytes_add(mul3(rows, d, F), mul3(rows_x, per_row, F));
        /* encoded rows beside the float ones (--wire, --wire-combine): out and back, both sides */
        int64_t both = moe_bytes_add(n_send, n_recv);
        if (cfg->wire != MOE_WIRE_FP32)
            m->exchange = moe_bytes_add(m->exchange,
                                        moe_bytes_mul(both, moe_wire_row_bytes(cfg->wire, d)));
        if (cfg->wire_combine != MOE_WIRE_FP32)
            m->exchange = moe_bytes_add(
                m->exchange, moe_bytes_mul(both, moe_wire_row_bytes(cfg->wire_combine, d)));
    }
    sum_parts(m);
}

void moe_memory_exchange_balanced(moe_mem_estimate *m, const moe_config *cfg, int R, int64_t n,
                                  int64_t n_le)
{
    int64_t k = cfg->top_k, E = cfg->experts;
    int64_t rows = moe_bytes_mul(n, k);
    bool staged = moe_config_regroup(cfg, R) == MOE_REGROUP_COPY;
    /* the capacity caps what a rank's experts can accept: n_le * C, C summed over groups (in
     * local scope R groups of the mean N / R tokens, rounded down: a balanced load) */
    if (cfg->capacity_factor > 0.0) {
        int64_t cap, M = cfg->min_capacity;
        if (cfg->scope == MOE_SCOPE_GLOBAL)
            cap = moe_group_capacity(cfg->capacity_factor, cfg->tokens, (int)k, (int)E, M);
        else
            cap = moe_bytes_mul(R, moe_group_capacity(cfg->capacity_factor, cfg->tokens / R,
                                                      (int)k, (int)E, M));
        int64_t hold = moe_bytes_mul(n_le, cap);
        if (hold < rows)
            rows = hold;
        if (cfg->pad_to_capacity) { /* every slot is computed, filled or not */
            moe_memory_exchange(m, cfg, rows, staged ? rows : 0, rows, hold);
            return;
        }
    }
    moe_memory_exchange(m, cfg, rows, staged ? rows : 0, rows, rows);
}

int moe_memory_parse_size(const char *text, int64_t *bytes, double *percent, char *msg,
                          size_t msglen)
{
    *bytes = 0;
    *percent = 0.0;
    /* plain decimal only: strtod would also take hex ("0x10"), "inf" and exponents */
    size_t digits = strspn(text, "0123456789.");
    errno = 0;
    char *end = (char *)text;
    double v = digits > 0 ? strtod(text, &end) : 0.0;
    if (digits == 0 || end != text + digits || errno == ERANGE || !isfinite(v) || v <= 0.0)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--max-memory needs a positive size such as 8G, 512MiB, 1073741824 or 50%%, "
                        "got '%s'",
                        text);
    if (strcmp(end, "%") == 0) {
        if (v > 100.0)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "--max-memory %s is more than the node's memory (at most 100%%)", text);
        *percent = v;
        return MOE_OK;
    }
    static const struct {
        const char *suffix;
        int shift;
    } units[] = {{"", 0},    {"B", 0},    {"K", 10},  {"KB", 10},  {"KiB", 10}, {"M", 20},
                 {"MB", 20}, {"MiB", 20}, {"G", 30},  {"GB", 30},  {"GiB", 30}, {"T", 40},
                 {"TB", 40}, {"TiB", 40}, {"k", 10},  {"kB", 10},  {"kiB", 10}, {"m", 20},
                 {"g", 30},  {"t", 40}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].suffix) != 0)
            continue;
        double b = ldexp(v, units[i].shift);
        if (b > 0x1p62)
            return moe_fail(MOE_EUSAGE, msg, msglen, "--max-memory %s is absurdly large", text);
        if (b < 1.0)
            return moe_fail(MOE_EUSAGE, msg, msglen, "--max-memory %s is less than one byte",
                            text);
        *bytes = (int64_t)b;
        return MOE_OK;
    }
    return moe_fail(MOE_EUSAGE, msg, msglen,
                    "--max-memory '%s': unknown unit '%s' (use K, M, G or T, powers of 1024, "
                    "optionally as KiB, MiB, GiB, TiB; or a percentage such as 50%%)",
                    text, end);
}

void moe_memory_format(char *buf, size_t len, int64_t bytes)
{
    if (bytes == MOE_BYTES_MAX) {
        snprintf(buf, len, "more than 8 EiB");
        return;
    }
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 6) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, len, u == 0 ? "%.0f %s" : "%.1f %s", v, unit[u]);
}
