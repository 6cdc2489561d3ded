#include "moesim/report.h"

#include "moesim/capacity.h"
#include "moesim/error.h"
#include "moesim/fileout.h"
#include "moesim/memory.h"
#include "moesim/projection.h"
#include "moesim/tokens.h"
#include "moesim/topology.h"
#include "moesim/verdict.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int moe_report_check_writable(const char *path, const char *option, char *msg, size_t msglen)
{
    moe_out_target t;
    return moe_out_classify(&t, path, option, false, false, msg, msglen);
}

void moe_report_bar(char *buf, double fraction, int width)
{
    static const char *const eighths[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
    int over = fraction > 1.0;
    if (fraction > 1.0)
        fraction = 1.0;
    if (!(fraction > 0.0))
        fraction = 0.0;
    int cells8 = (int)(fraction * width * 8 + 0.5);
    buf[0] = '\0';
    for (int i = 0; i < cells8 / 8; i++)
        strcat(buf, "█");
    strcat(buf, eighths[cells8 % 8]);
    if (over)
        strcat(buf, ">");
}

static void human_bytes(char *buf, size_t len, double bytes)
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        u++;
    }
    snprintf(buf, len, u == 0 ? "%.0f %s" : "%.1f %s", bytes, unit[u]);
}

/* The warnings of moe_run_warnings, one line each, through fn(line, arg). */
static void each_warning(const moe_results *res, void (*fn)(const char *line, void *arg), void *arg)
{
    char buf[2048];
    if (moe_run_warnings(buf, sizeof buf, res) == 0)
        return;
    for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save))
        fn(line, arg);
}

static void print_warning(const char *line, void *arg)
{
    fprintf((FILE *)arg, "warning: %s\n", line);
}

/* The shortest decimal (6 to 17 significant digits) that reads back at or above cf, so that a
 * capacity factor copied from the text still drops nothing. */
static void format_cf_up(char *buf, size_t len, double cf)
{
    for (int digits = 6; digits <= 17; digits++) {
        snprintf(buf, len, "%.*g", digits, cf);
        if (strtod(buf, NULL) >= cf)
            return;
    }
}

static double pct(int64_t part, int64_t whole)
{
    return whole > 0 ? 100.0 * (double)part / (double)whole : 0.0;
}

/* "  title 0: n0, 1: n1, ..." up to the last nonzero entry of hist (len + 1 entries). */
static void histogram_line(FILE *out, const char *title, const int64_t *hist, int len)
{
    int last = 0;
    for (int j = 0; j <= len; j++)
        if (hist[j] > 0)
            last = j;
    fprintf(out, "%s", title);
    int col = (int)strlen(title);
    for (int j = 0; j <= last; j++) {
        char item[48];
        int w = snprintf(item, sizeof item, "%s %d: %lld", j ? "," : "", j, (long long)hist[j]);
        if (col + w > 98) {
            fprintf(out, "\n   ");
            col = 3;
        }
        fputs(item, out);
        col += w;
    }
    fputc('\n', out);
}

/* text after first, wrapped at spaces to REPORT_WIDTH columns, later lines after cont. */
#define REPORT_WIDTH 100
static void print_wrapped(FILE *out, const char *first, const char *cont, const char *text)
{
    const char *prefix = first;
    while (*text) {
        size_t room = REPORT_WIDTH - strlen(prefix), n = strlen(text);
        if (n > room) { /* the last space that fits, else the first one after */
            n = room;
            while (n > 0 && text[n] != ' ')
                n--;
            if (n == 0)
                n = strcspn(text, " ");
        }
        fprintf(out, "%s%.*s\n", prefix, (int)n, text);
        text += n;
        while (*text == ' ')
            text++;
        prefix = cont;
    }
}

/* The router's lines of the header, for whatever differs from softmax top-k alone. */
static void routing_lines(FILE *out, const moe_config *cfg, const moe_results *res)
{
    if (cfg->wire != MOE_WIRE_FP32 || cfg->wire_combine != MOE_WIRE_FP32) {
        fprintf(out, "  wire: dispatch %s (%lld B per row), combine %s (%lld B per row)\n",
                moe_wire_name(cfg->wire), (long long)moe_wire_row_bytes(cfg->wire, res->hidden),
                moe_wire_name(cfg->wire_combine),
                (long long)moe_wire_row_bytes(cfg->wire_combine, res->hidden));
        if (res->wire_measured)
            fprintf(out, "  y against an exchange of fp32 rows: max rel %.3g, rms rel %.3g\n",
                    res->y_error_max_rel, res->y_error_rms_rel);
    }
    if (cfg->placement != MOE_PLACE_CONTIGUOUS || cfg->redundant_experts > 0) {
        char extra[32];
        human_bytes(extra, sizeof extra, (double)res->extra_weight_bytes);
        fprintf(out, "  placement %s, %d replica%s (%s of weights): rank overload %.2fx "
                     "contiguous, %.2fx here\n",
                moe_place_kind_name(cfg->placement), cfg->redundant_experts,
                cfg->redundant_experts == 1 ? "" : "s", extra, res->overload_before,
                res->balance.rank_overload);
    }
    if (cfg->dispatch == MOE_DISPATCH_PER_RANK) {
        char meta[32], saved[32];
        human_bytes(meta, sizeof meta, (double)res->metadata_bytes);
        human_bytes(saved, sizeof saved, fabs((double)res->dedup_saving));
        fprintf(out, "  dispatch per-rank: a row per (token, rank), gates and ids beside it (%s); "
                     "%s %s\n",
                meta, res->dedup_saving >= 0 ? "saves" : "costs", saved);
    }
    if (cfg->mode == MOE_MODE_DISPATCH)
        fprintf(out, "  mode dispatch: identity experts (each returns its input), so the step is the "
                     "exchange\n");
    if (cfg->preset != NULL) {
        /* "preset NAME set: a, b, c", wrapped at 100 columns after a comma */
        const char *text = cfg->preset_set[0] ? cfg->preset_set : "nothing (every field was given)";
        int col = fprintf(out, "  preset %s set:", cfg->preset);
        while (*text != '\0') {
            const char *comma = strstr(text, ", ");
            size_t len = comma ? (size_t)(comma - text) + 1 : strlen(text);
            if (col + 1 + (int)len > 100) {
                fprintf(out, "\n   ");
                col = 3;
            }
            col += fprintf(out, " %.*s", (int)len, text);
            text += comma ? len + 1 : len;
        }
        fputc('\n', out);
    }
    if (cfg->routing == MOE_ROUTING_EXPERT_CHOICE)
        fprintf(out, "  routing expert choice (Zhou et al. 2022): each expert takes its top C tokens "
                     "of a group\n");
    if (cfg->group_top_k > 0)
        fprintf(out, "  group-limited: %d groups of %d experts, each token keeps its best %d "
                     "(DeepSeek-V3)\n",
                cfg->expert_groups, cfg->expert_groups > 0 ? res->experts / cfg->expert_groups : 0,
                cfg->group_top_k);
    if (cfg->noisy_top_k || cfg->input_jitter > 0.0) {
        char what[160] = "";
        if (cfg->noisy_top_k)
            snprintf(what, sizeof what, "noisy top-k (Shazeer 2017)");
        if (cfg->input_jitter > 0.0)
            snprintf(what + strlen(what), sizeof what - strlen(what), "%sinput jitter %g (Switch)",
                     cfg->noisy_top_k ? ", " : "", cfg->input_jitter);
        fprintf(out, "  router noise: %s\n", what);
    }
    if (res->shared_experts > 0)
        fprintf(out, "  shared experts %d x ffn %lld on every token's own rank (DeepSeekMoE): "
                     "%.3g GFLOP, no traffic\n",
                res->shared_experts, (long long)res->shared_ffn, res->flops_shared / 1e9);
}

/* Distinct ranks and nodes the tokens' routed experts sit on, with and without the limit. */
static void reach_lines(FILE *out, const moe_results *res)
{
    int R = res->ranks;
    const int64_t *h[4] = {res->reach_ranks, res->reach_nodes, res->reach_ranks_unlimited,
                           res->reach_nodes_unlimited};
    double mean[4];
    int most[4];
    for (int i = 0; i < 4; i++) {
        int64_t tok = 0, sum = 0;
        most[i] = 0;
        for (int j = 0; j <= R; j++) {
            tok += h[i][j];
            sum += (int64_t)j * h[i][j];
            most[i] = h[i][j] > 0 ? j : most[i];
        }
        mean[i] = tok > 0 ? (double)sum / (double)tok : 0.0;
    }
    fprintf(out, "\nReach per token (what the group limit is for): distinct ranks and nodes of its "
                 "experts\n");
    fprintf(out, "  %-18s %10s %6s %10s %6s\n", "", "ranks mean", "max", "nodes mean", "max");
    fprintf(out, "  %-18s %10.3f %6d %10.3f %6d\n", "group-limited", mean[0], most[0], mean[1],
            most[1]);
    fprintf(out, "  %-18s %10.3f %6d %10.3f %6d\n", "without the limit", mean[2], most[2], mean[3],
            most[3]);
    histogram_line(out, "  tokens by nodes reached, limited:", res->reach_nodes, R);
    histogram_line(out, "  tokens by nodes reached, unlimited:", res->reach_nodes_unlimited, R);
}

/* Per-rank rows: what the two-level exchange's leaders' stage carries, once per (token, node). */
static void node_rows_line(FILE *out, const moe_results *res)
{
    if (res->node_rows == NULL || res->n_nodes < 2)
        return;
    int R = res->ranks;
    int64_t rank_off = 0, node_off = moe_node_rows_off_node(res->node_rows, res->n_nodes,
                                                            res->placement, R);
    for (int64_t i = 0; i < res->rows.n; i++) {
        const moe_block *e = &res->rows.v[i];
        rank_off += res->placement[e->src].node != res->placement[e->dst].node ? e->val : 0;
    }
    char nb[32];
    human_bytes(nb, sizeof nb, (double)(node_off * res->node_row_bytes));
    fprintf(out, "  two-level: %lld rows cross nodes once per (token, node), %s, against %lld "
                 "per-rank rows\n", (long long)node_off, nb, (long long)rank_off);
}

/* The dense FFN of equal total parameters beside the MoE layer (lesson 1 of docs/lessons.md): the
 * routed experts' E f inner units (and the shared experts' S fs) as one FFN that every token runs
 * whole. Parameters count the FFN weights (2 d f each expert) and the router's E d; FLOPs are
 * moesim's 2 FLOPs per multiply-add (moe_expert_flops_per_row), the router's GEMM included. */
moe_dense_baseline moe_report_dense_baseline(const moe_results *res)
{
    moe_dense_baseline b;
    double d = (double)res->hidden, f = (double)res->ffn, E = res->experts, k = res->top_k;
    double S = res->shared_experts, fs = (double)res->shared_ffn;
    b.dense_ffn = (int64_t)(E * f + S * fs);
    b.dense_parameters = 2.0 * d * (double)b.dense_ffn;
    b.dense_flops_per_token = 4.0 * d * (double)b.dense_ffn;
    b.moe_parameters = 2.0 * d * (E * f + S * fs) + E * d;
    b.moe_active_parameters = 2.0 * d * (k * f + S * fs) + E * d;
    b.moe_flops_per_token = 4.0 * d * (k * f + S * fs) + 2.0 * E * d;
    return b;
}

static void dense_lines(FILE *out, const moe_results *res, const char *bold, const char *off)
{
    moe_dense_baseline b = moe_report_dense_baseline(res);
    fprintf(out, "\n%sDense baseline%s (equal parameters: one FFN of inner size %lld = E x f%s)\n",
            bold, off, (long long)b.dense_ffn, res->shared_experts > 0 ? " + S x fs" : "");
    fprintf(out, "  %-24s %14s %14s %10s\n", "", "parameters", "GFLOP/token", "");
    fprintf(out, "  %-24s %14.4g %14.4g\n", "dense FFN, every unit", b.dense_parameters,
            b.dense_flops_per_token / 1e9);
    fprintf(out, "  %-24s %14.4g %14.4g  %.3gx less compute per token\n", "MoE, all experts",
            b.moe_parameters, b.moe_flops_per_token / 1e9,
            b.moe_flops_per_token > 0 ? b.dense_flops_per_token / b.moe_flops_per_token : 0.0);
    fprintf(out, "  %-24s %14.4g %14s  (top-%d of %d, router included)\n", "MoE, active per token",
            b.moe_active_parameters, "", res->top_k, res->experts);
}

/* The "x mean" colour threshold and the summary's "hot" mark. */
#define HOT_RATIO 1.25

static void expert_row(FILE *out, const moe_results *res, int e, double scale, double mean_load,
                       const char *hot, const char *off)
{
    char bar[128], cap[24], util[16];
    moe_report_bar(bar, scale > 0 ? (double)res->routed[e] / scale : 0.0, 20);
    if (res->capacity[e] < 0) {
        snprintf(cap, sizeof cap, "-");
        snprintf(util, sizeof util, "-");
    } else {
        snprintf(cap, sizeof cap, "%lld", (long long)res->capacity[e]);
        snprintf(util, sizeof util, "%.1f%%", pct(res->accepted[e], res->capacity[e]));
    }
    double ratio = mean_load > 0 ? res->routed[e] / mean_load : 0.0;
    int is_hot = ratio >= HOT_RATIO;
    int cells = 0; /* pad the bar by display cells, not bytes */
    for (const char *c = bar; *c; c++)
        cells += ((unsigned char)*c & 0xC0) != 0x80;
    fprintf(out, "  %6d %5d %9lld %9lld %9lld %9s %6s  %s%s%*s%s %5.2f%s\n", e, res->owner[e],
            (long long)res->routed[e], (long long)res->accepted[e],
            (long long)(res->routed[e] - (res->accepted[e] - res->rerouted_in[e])), cap, util,
            is_hot ? hot : "", bar, 20 - cells, "", off, ratio, is_hot ? "  hot" : "");
}

/* Experts by routed load, hottest first (ties by id), into order (E). */
static const int64_t *g_sort_routed;
static int by_load_desc(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    int64_t lx = g_sort_routed[x], ly = g_sort_routed[y];
    return lx != ly ? (lx < ly ? 1 : -1) : (x > y) - (x < y);
}

/* Summary form of the experts table: the SHOWN hottest and coldest, then a histogram of the loads
 * over the mean in fixed bins, so that the shape of the imbalance reads at any E. */
#define SUMMARY_SHOWN 5
static void experts_summary(FILE *out, const moe_results *res, double scale, double mean_load,
                            const char *hot, const char *off)
{
    int E = res->experts;
    int *order = malloc((size_t)E * sizeof *order);
    if (order == NULL) {
        fprintf(out, "  (out of memory for the experts' order)\n");
        return;
    }
    for (int e = 0; e < E; e++)
        order[e] = e;
    g_sort_routed = res->routed;
    qsort(order, (size_t)E, sizeof *order, by_load_desc);
    int shown = E > 2 * SUMMARY_SHOWN ? SUMMARY_SHOWN : E;
    for (int i = 0; i < shown; i++)
        expert_row(out, res, order[i], scale, mean_load, hot, off);
    if (E > 2 * SUMMARY_SHOWN) {
        fprintf(out, "  %6s  (%d experts between; --report full lists every one)\n", "...",
                E - 2 * SUMMARY_SHOWN);
        for (int i = E - SUMMARY_SHOWN; i < E; i++)
            expert_row(out, res, order[i], scale, mean_load, hot, off);
    }
    free(order);
    static const double edge[] = {0.0, 0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0};
    enum { BINS = sizeof edge / sizeof edge[0] };
    int64_t count[BINS] = {0}, most = 0;
    for (int e = 0; e < E; e++) {
        double x = mean_load > 0 ? res->routed[e] / mean_load : 0.0;
        int b = BINS - 1;
        while (b > 0 && x < edge[b])
            b--;
        count[b]++;
    }
    for (int b = 0; b < BINS; b++)
        most = count[b] > most ? count[b] : most;
    fprintf(out, "  load histogram, routed / mean: experts per bin\n");
    for (int b = 0; b < BINS; b++) {
        char range[32], bar[128];
        if (b + 1 < BINS)
            snprintf(range, sizeof range, "%.2f - %.2f", edge[b], edge[b + 1]);
        else
            snprintf(range, sizeof range, ">= %.2f", edge[b]);
        moe_report_bar(bar, most > 0 ? (double)count[b] / (double)most : 0.0, 40);
        fprintf(out, "    %-12s %6lld  %s\n", range, (long long)count[b], bar);
    }
}

/* The per-rank table: where imbalance between ranks shows (tokens in, rows computed, bytes out,
 * the expert and exchange phases and the waits for slower ranks). Summary form above 16 ranks: the
 * busiest and the least busy few by rows computed. */
static int64_t rank_bytes_out(const moe_results *res, int r)
{
    int64_t sum = 0; /* the blocks are sorted by source: a binary search would do, R is small */
    for (int64_t i = 0; i < res->dispatch_bytes.n; i++)
        sum += res->dispatch_bytes.v[i].src == r ? res->dispatch_bytes.v[i].val : 0;
    return sum;
}

static void rank_row(FILE *out, const moe_results *res, int r, double mean_rows)
{
    int P = MOE_PHASE_COUNT + 1;
    const double *m = res->rank_median + (int64_t)r * P;
    double waits = 0.0;
    const int wait_phases[] = {MOE_PHASE_COUNT_WAIT, MOE_PHASE_DISPATCH_WAIT,
                               MOE_PHASE_COMBINE_WAIT};
    for (int i = 0; i < 3; i++)
        waits += isnan(m[wait_phases[i]]) ? 0.0 : m[wait_phases[i]];
    double ratio = mean_rows > 0 ? (double)res->rank_rows[r] / mean_rows : 0.0;
    fprintf(out, "  %5d %9lld %9lld %5.2f %10.1f %10.3f %10.3f %10.3f %9.3f %10.3f\n", r,
            (long long)res->rank_tokens[r], (long long)res->rank_rows[r], ratio,
            rank_bytes_out(res, r) / 1024.0, m[MOE_PHASE_EXPERT] * 1e3, m[MOE_PHASE_DISPATCH] * 1e3,
            m[MOE_PHASE_COMBINE] * 1e3, waits * 1e3, m[MOE_PHASE_COUNT] * 1e3);
}

static const int64_t *g_sort_rows;
static int by_rows_desc(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    int64_t lx = g_sort_rows[x], ly = g_sort_rows[y];
    return lx != ly ? (lx < ly ? 1 : -1) : (x > y) - (x < y);
}

static void ranks_table(FILE *out, const moe_config *cfg, const moe_results *res,
                        const char *bold, const char *off)
{
    int R = res->ranks;
    if (res->rank_median == NULL || res->rank_tokens == NULL)
        return;
    double mean_rows = 0.0;
    for (int r = 0; r < R; r++)
        mean_rows += (double)res->rank_rows[r] / R;
    fprintf(out, "\n%sRanks%s (each rank's median ms; waits = time in the barriers before the "
                 "counts and exchanges)\n", bold, off);
    fprintf(out, "  %5s %9s %9s %5s %10s %10s %10s %10s %9s %10s\n", "rank", "tokens", "rows",
            "x mean", "KiB out", "expert", "dispatch", "combine", "waits", "step");
    bool all = moe_config_full_report(cfg) || R <= 16;
    int *order = malloc((size_t)R * sizeof *order);
    if (all || order == NULL) {
        for (int r = 0; r < R; r++)
            rank_row(out, res, r, mean_rows);
    } else {
        for (int r = 0; r < R; r++)
            order[r] = r;
        g_sort_rows = res->rank_rows;
        qsort(order, (size_t)R, sizeof *order, by_rows_desc);
        for (int i = 0; i < 4; i++)
            rank_row(out, res, order[i], mean_rows);
        fprintf(out, "  %5s  (%d ranks between, by rows computed; --report full lists every one)\n",
                "...", R - 8);
        for (int i = R - 4; i < R; i++)
            rank_row(out, res, order[i], mean_rows);
    }
    free(order);
    fprintf(out, "  rows: what the rank's experts computed (padding included); KiB out: its "
                 "dispatch bytes\n");
}

/* The verdict: one line per check, then VALID or INVALID. */
void moe_report_verdict(FILE *out, const moe_results *res, bool color)
{
    moe_check checks[MOE_CHECK_COUNT];
    bool valid = moe_verdict(res, checks);
    const char *bold = color ? "\033[1m" : "", *off = color ? "\033[0m" : "";
    const char *mark = color ? (valid ? "\033[32m" : "\033[31m") : "";
    fprintf(out, "\n%sVerdict%s (the run's checks on itself; docs/validation.md)\n", bold, off);
    for (int i = 0; i < MOE_CHECK_COUNT; i++)
        fprintf(out, "  %-7s %-34s %-6s %s\n", checks[i].name, checks[i].what,
                !checks[i].ran ? "n/a" : checks[i].passed ? "PASS" : "FAIL", checks[i].detail);
    fprintf(out, "%s%s%s\n", mark, valid ? "VALID" : "INVALID", off);
}

/* The summary block: the result first, before any detail. */
static void summary_block(FILE *out, const moe_config *cfg, const moe_results *res,
                          const char *bold, const char *off, int hottest, double max_ratio)
{
    fprintf(out, "\n%sSummary%s\n", bold, off);
    if (cfg->steps > 1)
        fprintf(out, "  (--steps %d: this block and the detail below are step 0's batch; the Steps "
                     "block covers all)\n",
                cfg->steps);
    bool expert_choice = cfg->routing == MOE_ROUTING_EXPERT_CHOICE;
    fprintf(out, "  dropped   %lld of %lld assignments (%.2f%%); %lld tokens (%.2f%%) %s\n",
            (long long)res->dropped_assignments, (long long)res->assignments,
            pct(res->dropped_assignments, res->assignments), (long long)res->dropped_tokens,
            pct(res->dropped_tokens, res->tokens),
            expert_choice ? "unchosen, output = residual" : "keep only the residual");
    if (cfg->policy == MOE_POLICY_REROUTE)
        fprintf(out, "            of them %lld rerouted to a next-best expert, %lld (%.2f%%) served by none\n",
                (long long)res->rerouted, (long long)(res->dropped_assignments - res->rerouted),
                pct(res->dropped_assignments - res->rerouted, res->assignments));
    fprintf(out, "  wasted    %lld of %lld expert slots empty (%.2f%%), %.3g GFLOP %s\n",
            (long long)res->empty_slots, (long long)res->slots, pct(res->empty_slots, res->slots),
            res->flops_wasted / 1e9, res->padded ? "computed on padding" : "a static shape spends");
    int64_t total = moe_blocks_total(&res->dispatch_bytes), off_rank = 0;
    for (int64_t i = 0; i < res->dispatch_bytes.n; i++)
        off_rank += res->dispatch_bytes.v[i].src != res->dispatch_bytes.v[i].dst
                        ? res->dispatch_bytes.v[i].val
                        : 0;
    char tb[32], ob[32];
    human_bytes(tb, sizeof tb, (double)total);
    human_bytes(ob, sizeof ob, (double)off_rank);
    fprintf(out, "  exchange  dispatch %s (%s off-rank) %.3f ms, combine %.3f ms\n", tb, ob,
            res->phase[MOE_PHASE_DISPATCH].max * 1e3, res->phase[MOE_PHASE_COMBINE].max * 1e3);
    fprintf(out, "            algbw %.2f GB/s dispatch, %.2f GB/s combine (slowest rank's time)\n",
            res->dispatch_a2a.algbw / 1e9, res->combine_a2a.algbw / 1e9);
    fprintf(out, "  step      %.3f ms (slowest rank's median), expert phase %.3f ms\n",
            res->step.max * 1e3, res->phase[MOE_PHASE_EXPERT].max * 1e3);
    if (res->balance.rank_overload > 0)
        fprintf(out, "  balance   hottest expert %d at %.2fx the mean; busiest rank %.2fx the mean "
                     "rows\n", hottest, max_ratio, res->balance.rank_overload);
    moe_check checks[MOE_CHECK_COUNT];
    bool valid = moe_verdict(res, checks);
    int ran = 0, passed = 0;
    for (int i = 0; i < MOE_CHECK_COUNT; i++) {
        ran += checks[i].ran;
        passed += checks[i].ran && checks[i].passed;
    }
    fprintf(out, "  verdict   %s: %d of %d self-checks passed", valid ? "VALID" : "INVALID", passed,
            ran);
    for (int i = 0; i < MOE_CHECK_COUNT; i++)
        if (checks[i].ran && !checks[i].passed)
            fprintf(out, "; %s FAILED", checks[i].name);
    fprintf(out, " (Verdict, at the end)\n");
}

void moe_report_text(FILE *out, const moe_config *cfg, const moe_results *res, bool color)
{
    const char *bold = color ? "\033[1m" : "", *hot = color ? "\033[31m" : "",
               *off = color ? "\033[0m" : "";
    int E = res->experts, R = res->ranks;
    double mean_load = (double)res->assignments / E;
    int64_t max_routed = 0;
    int hottest = 0;
    for (int e = 0; e < E; e++)
        if (res->routed[e] > max_routed) {
            max_routed = res->routed[e];
            hottest = e;
        }

    fprintf(out, "%smoesim %s%s: one expert-parallel MoE layer\n", bold, MOE_VERSION, off);
    fprintf(out, "  ranks %d | experts %d (%d to %d per rank) | top-k %d | tokens %lld | hidden %lld | ffn %lld\n",
            R, E, E / R, (E + R - 1) / R, res->top_k, (long long)res->tokens,
            (long long)res->hidden, (long long)res->ffn);
    char floor[64] = "";
    if (cfg->min_capacity > 0)
        snprintf(floor, sizeof floor, " (>= %lld per group)", (long long)cfg->min_capacity);
    if (cfg->capacity_factor == 0.0)
        fprintf(out, "  capacity factor 0 (dropless), scope %s, policy %s\n",
                moe_scope_name(cfg->scope), moe_policy_name(cfg->policy));
    else
        fprintf(out, "  capacity factor %g, scope %s, policy %s: %lld slots per expert%s\n",
                cfg->capacity_factor, moe_scope_name(cfg->scope),
                cfg->routing == MOE_ROUTING_EXPERT_CHOICE ? "none (experts choose)"
                                                          : moe_policy_name(cfg->policy),
                (long long)res->capacity[0], floor);
    char gates[1200];
    if (cfg->score == MOE_SCORE_SIGMOID)
        snprintf(gates, sizeof gates, "sigmoid scores normalized over the top-k (DeepSeek-V3)");
    else
        snprintf(gates, sizeof gates, "%s",
                 cfg->renormalize ? "renormalized over the top-k (Mixtral)"
                                  : "softmax probability (Switch)");
    if (cfg->topk_scale != 1.0)
        snprintf(gates + strlen(gates), sizeof gates - strlen(gates), " x %g", cfg->topk_scale);
    if (cfg->workload != MOE_WL_NONE)
        snprintf(gates, sizeof gates, "and experts from --workload %s (no router; hot set %d of "
                 "%d, share %g)", moe_wl_name(cfg->workload), cfg->wl_hot, res->experts,
                 cfg->wl_share);
    else if (cfg->expert_bias)
        snprintf(gates + strlen(gates), sizeof gates - strlen(gates),
                 ", chosen by score + a loss-free balancing bias (from %s, rate %g a step)",
                 cfg->expert_bias_file ? cfg->expert_bias_file : "0", cfg->bias_update_rate);
    else if (cfg->expert_bias_file != NULL)
        snprintf(gates + strlen(gates), sizeof gates - strlen(gates),
                 ", chosen by score + the selection bias of %s", cfg->expert_bias_file);
    print_wrapped(out, "  gates ", "        ", gates);
    fprintf(out, "  padded to capacity %s | seed %llu | %d timed iteration%s after %d warm-up\n",
            cfg->pad_to_capacity ? "yes" : "no", (unsigned long long)cfg->seed, cfg->iters,
            cfg->iters == 1 ? "" : "s", cfg->warmup);
    routing_lines(out, cfg, res);
    if (cfg->tokens_file || cfg->router_file)
        fprintf(out, "  inputs: tokens %s, router %s\n",
                cfg->tokens_file ? cfg->tokens_file : "generated",
                cfg->router_file ? cfg->router_file : "generated");
    summary_block(out, cfg, res, bold, off, hottest, mean_load > 0 ? max_routed / mean_load : 0.0);

    /* Full width is twice the mean load (or the hottest expert, if hotter), so a balanced layer
     * shows half-full bars and a hot expert stands out. */
    double scale = 2.0 * mean_load > (double)max_routed ? 2.0 * mean_load : (double)max_routed;
    fprintf(out, "\n%sExperts%s (load bar: routed assignments; half width = the mean, full = %s)\n",
            bold, off, scale > 2.0 * mean_load ? "the hottest" : "twice the mean");
    fprintf(out, "  %6s %5s %9s %9s %9s %9s %6s  %-20s %s\n", "expert", "rank", "routed",
            "accepted", "dropped", "capacity", "util", "load", "x mean");
    if (moe_config_full_report(cfg))
        for (int e = 0; e < E; e++)
            expert_row(out, res, e, scale, mean_load, hot, off);
    else
        experts_summary(out, res, scale, mean_load, hot, off);
    fprintf(out, "  mean load N*k/E = %.1f assignments; hottest expert %d at %.2fx the mean\n",
            mean_load, hottest, mean_load > 0 ? max_routed / mean_load : 0.0);

    fprintf(out, "\n%sLoad balance%s (Switch: f_i = routed_i/(N k), P_i = mean p_i)\n", bold, off);
    fprintf(out, "  aux loss E * sum f_i P_i = %.4f  (1 = uniform; in training times alpha, 1e-2 in "
                 "Megatron)\n",
            res->aux_loss);
    const moe_balance *b = &res->balance;
    fprintf(out, "  z-loss %.4f (mean logsumexp(z)^2, ST-MoE) | importance CV^2 %.4f (Shazeer)\n",
            b->z_loss, b->importance_cv2);
    fprintf(out, "  routed per expert: min %.0f, max %.0f, mean %.1f, std %.1f\n", b->tpe_min,
            b->tpe_max, b->tpe_mean, b->tpe_std);
    fprintf(out, "  entropy %.4f nats (ln E = %.4f when uniform) | Gini %.4f (0 when uniform)\n",
            b->entropy, log((double)E), b->gini);
    if (b->rank_overload > 0)
        fprintf(out, "  hottest expert %.2fx the mean | rank overload %.2fx (busiest rank's rows over "
                     "the mean)\n", b->max_over_mean, b->rank_overload);

    fprintf(out, "\n%sDrops and waste%s\n", bold, off);
    fprintf(out, "  assignments           %12lld\n", (long long)res->assignments);
    fprintf(out, "  dropped assignments   %12lld  %6.2f%%\n", (long long)res->dropped_assignments,
            pct(res->dropped_assignments, res->assignments));
    const char *leaves = res->shared_experts > 0 ? "residual + shared experts" : "residual";
    if (cfg->routing == MOE_ROUTING_EXPERT_CHOICE)
        fprintf(out, "  unchosen tokens       %12lld  %6.2f%%  (no expert chose them: output = %s)\n",
                (long long)res->dropped_tokens, pct(res->dropped_tokens, res->tokens), leaves);
    else if (res->shared_experts > 0)
        fprintf(out, "  dropped tokens        %12lld  %6.2f%%  (all k dropped: output = %s)\n",
                (long long)res->dropped_tokens, pct(res->dropped_tokens, res->tokens), leaves);
    else
        fprintf(out, "  dropped tokens        %12lld  %6.2f%%  (all k assignments dropped: output = %s)\n",
                (long long)res->dropped_tokens, pct(res->dropped_tokens, res->tokens), leaves);
    if (cfg->policy == MOE_POLICY_REROUTE && cfg->routing == MOE_ROUTING_TOKEN_CHOICE)
        fprintf(out, "  rerouted assignments  %12lld  %6.2f%%  to a next-best expert with room, %d "
                     "round%s\n  still dropped         %12lld  %6.2f%%  served by no expert\n",
                (long long)res->rerouted, pct(res->rerouted, res->assignments), res->reroute_rounds,
                res->reroute_rounds == 1 ? "" : "s",
                (long long)(res->dropped_assignments - res->rerouted),
                pct(res->dropped_assignments - res->rerouted, res->assignments));
    if (cfg->routing == MOE_ROUTING_EXPERT_CHOICE || cfg->policy == MOE_POLICY_REROUTE)
        histogram_line(out, "  experts per token:", res->experts_per_token,
                       res->slots_per_token);
    fprintf(out, "  expert slots          %12lld\n", (long long)res->slots);
    fprintf(out, "  empty slots           %12lld  %6.2f%%  %.3g GFLOP %s\n", (long long)res->empty_slots,
            pct(res->empty_slots, res->slots), res->flops_wasted / 1e9,
            res->padded ? "computed on padding (--pad-to-capacity)"
                        : "a static shape spends (not computed)");
    fprintf(out, "  useful expert work    %12.3g GFLOP\n", res->flops_useful / 1e9);
    char need[32];
    format_cf_up(need, sizeof need, res->cf_needed);
    if (cfg->routing != MOE_ROUTING_EXPERT_CHOICE) /* nothing overflows there */
        fprintf(out, "  largest expert load   %12lld  (one expert, one group): cf %s drops nothing\n",
                (long long)res->max_expert_load, need);

    dense_lines(out, res, bold, off);

    int64_t total = 0, off_rank = 0;
    for (int64_t i = 0; i < res->dispatch_bytes.n; i++) {
        const moe_block *e = &res->dispatch_bytes.v[i];
        total += e->val;
        off_rank += e->src != e->dst ? e->val : 0;
    }
    char tb[32], ob[32];
    human_bytes(tb, sizeof tb, (double)total);
    human_bytes(ob, sizeof ob, (double)off_rank);
    fprintf(out, "\n%sTraffic%s: dispatch %s (%s leaves its rank); combine the same, transposed\n",
            bold, off, tb, ob);
    if (R <= 16) { /* in blocks of 8 columns, to stay within the report's width */
        fprintf(out, "  dispatch KiB, row = source rank, column = destination\n");
        for (int c0 = 0; c0 < R; c0 += 8) {
            int c1 = c0 + 8 < R ? c0 + 8 : R;
            fprintf(out, "  %6s", "");
            for (int r = c0; r < c1; r++)
                fprintf(out, " %8s%-2d", "r", r);
            fprintf(out, "\n");
            for (int s = 0; s < R; s++) {
                fprintf(out, "  r%-5d", s);
                for (int r = c0; r < c1; r++) {
                    int64_t v = moe_blocks_get(&res->dispatch_bytes, s, r);
                    fprintf(out, " %10.1f", (double)v / 1024.0);
                }
                fprintf(out, "\n");
            }
        }
    } else {
        fprintf(out, res->matrix_full ? "  (%d x %d matrix: see --json traffic.dispatch_bytes)\n"
                                      : "  (%d x %d matrix summarised in --json: per-rank sums; "
                                        "--traffic-matrix full keeps it)\n",
                R, R);
    }
    node_rows_line(out, res);

    fprintf(out, "\n%sPhase times%s, ms: each rank's median over %d iterations, then min/mean/max over ranks\n",
            bold, off, cfg->iters);
    fprintf(out, "  %-17s %9s %9s %9s  %s\n", "phase", "min", "mean", "max", "");
    for (int p = 0; p < MOE_PHASE_COUNT; p++)
        if (moe_phase_is_backward(p) && isnan(res->phase[p].mean))
            continue; /* no backward in this mode */
        else if (isnan(res->phase[p].mean)) /* the raw baselines with --raw-baseline off */
            fprintf(out, "  %-17s %9s %9s %9s  not run (--raw-baseline off)\n",
                    moe_phase_name(p), "-", "-", "-");
        else if (p != MOE_PHASE_SHARED || res->shared_experts > 0)
            fprintf(out, "  %-17s %9.3f %9.3f %9.3f  %s\n", moe_phase_name(p),
                    res->phase[p].min * 1e3, res->phase[p].mean * 1e3, res->phase[p].max * 1e3,
                    moe_phase_what(p));
    fprintf(out, "  %-17s %9.3f %9.3f %9.3f  %s\n", "step", res->step.min * 1e3,
            res->step.mean * 1e3, res->step.max * 1e3, "sum of the phases; the slowest rank sets the pace");
    if (res->env.wall_seconds > 0.0) {
        /* every layer step the run took: warm-up and timed, each cf, each later --steps batch */
        int runs = (cfg->iters + cfg->warmup) *
                   ((cfg->n_cf > 0 ? cfg->n_cf : 1) + (cfg->steps > 1 ? cfg->steps - 1 : 0));
        fprintf(out, "  run: %.2f s on rank 0, %.2f s of it in %d step%s, %.1f%% outside them "
                     "(set-up, reductions, outputs)\n",
                res->env.wall_seconds, res->env.step_seconds, runs, runs == 1 ? "" : "s",
                100.0 * (1.0 - res->env.step_seconds / res->env.wall_seconds));
    }
    fprintf(out, "  all-to-all: dispatch %.2f GB/s, combine %.2f GB/s (matrix bytes / slowest rank's time)\n",
            res->dispatch_bytes_per_second / 1e9, res->combine_bytes_per_second / 1e9);
    /* busiest sender's bytes / slowest rank's time, and that times (R-1)/R (docs/model.md) */
    char offr[32], offn[32], offr_c[32], offn_c[32];
    human_bytes(offr, sizeof offr, (double)res->dispatch_a2a.off_rank_bytes);
    human_bytes(offn, sizeof offn, (double)res->dispatch_a2a.off_node_bytes);
    human_bytes(offr_c, sizeof offr_c, (double)res->combine_a2a.off_rank_bytes);
    human_bytes(offn_c, sizeof offn_c, (double)res->combine_a2a.off_node_bytes);
    fprintf(out, "  nccl-tests style: dispatch algbw %.2f GB/s busbw %.2f GB/s, combine algbw %.2f "
                 "busbw %.2f\n", res->dispatch_a2a.algbw / 1e9, res->dispatch_a2a.busbw / 1e9,
            res->combine_a2a.algbw / 1e9, res->combine_a2a.busbw / 1e9);
    if (res->dispatch_a2a.off_rank_bytes == res->combine_a2a.off_rank_bytes &&
        res->dispatch_a2a.off_node_bytes == res->combine_a2a.off_node_bytes)
        fprintf(out, "  bytes off-rank %s, off-node %s in each exchange (algbw, busbw: "
                     "docs/model.md)\n", offr, offn);
    else /* the combine's rows travel in another format (--wire-combine) */
        fprintf(out, "  bytes off-rank %s / %s, off-node %s / %s (dispatch / combine)\n",
                offr, offr_c, offn, offn_c);
    double rd = res->phase[MOE_PHASE_DISPATCH_RAW].max, rc = res->phase[MOE_PHASE_COMBINE_RAW].max;
    if (!(rd > 0) || !(rc > 0))
        fprintf(out, "  no raw MPI_Alltoallv baseline (--raw-baseline %s)\n",
                moe_raw_baseline_name(cfg->raw_baseline));
    else
        fprintf(out, "  vs raw MPI_Alltoallv, same bytes (%s, slowest ranks): dispatch %.2fx, "
                     "combine %.2fx\n",
                res->hierarchical ? "two-level" : "flat", res->phase[MOE_PHASE_DISPATCH].max / rd,
                res->phase[MOE_PHASE_COMBINE].max / rc);
    if (res->regroup != NULL && strcmp(res->regroup, "alltoallw") == 0)
        fprintf(out, "  rows arrive in the experts' blocks (one MPI_Alltoallw, no regroup copy; "
                     "--regroup)\n    a rank's own rows are copied outside MPI, its own results "
                     "read where the experts wrote them\n");
    else if (res->regroup != NULL && strcmp(res->regroup, "alltoallw-slots") == 0)
        fprintf(out, "  rows arrive in the experts' blocks (one MPI_Alltoallw; a rank's own rows "
                     "copied outside MPI)\n    and leave them (an Alltoallv per expert)\n");
    else if (res->regroup != NULL && strcmp(res->regroup, "slots") == 0)
        fprintf(out, "  rows arrive in the experts' blocks (an MPI_Alltoallv per local expert, no "
                     "regroup copy; --regroup)\n");
    if (res->regroup_probe[0] > 0 && res->regroup_probe[1] > 0)
        fprintf(out, "  the combine --regroup auto chose: alltoallw %.3f ms, alltoallw-slots %.3f ms "
                     "(best of 3)\n",
                res->regroup_probe[0] * 1e3, res->regroup_probe[1] * 1e3);
    each_warning(res, print_warning, out);

    ranks_table(out, cfg, res, bold, off);

    fprintf(out, "\n%sTraffic by locality%s (dispatch + combine; a message = one nonzero rank-to-rank block)\n",
            bold, off);
    int64_t all_flat = 0, all_hier = 0;
    for (int c = 0; c < MOE_LOC_COUNT; c++) {
        all_flat += res->by_class[c].bytes;
        all_hier += res->by_class_hier[c].bytes;
    }
    fprintf(out, "  %-13s %12s %9s %7s | %12s %9s  %s\n", "class", "flat MiB", "messages", "share",
            "2-level MiB", "messages", res->hierarchical ? "(2-level ran)" : "(flat ran)");
    for (int c = 0; c < MOE_LOC_COUNT; c++)
        fprintf(out, "  %-13s %12.2f %9lld %6.1f%% | %12.2f %9lld\n", moe_locality_name(c),
                res->by_class[c].bytes / 1048576.0, (long long)res->by_class[c].messages,
                pct(res->by_class[c].bytes, all_flat), res->by_class_hier[c].bytes / 1048576.0,
                (long long)res->by_class_hier[c].messages);
    if (R <= 16) {
        fprintf(out, "  per source rank, flat, MiB:");
        for (int c = 0; c < MOE_LOC_COUNT; c++)
            fprintf(out, " %s", moe_locality_name(c));
        fprintf(out, "\n");
        for (int r = 0; r < R; r++) {
            fprintf(out, "    r%-3d", r);
            for (int c = 0; c < MOE_LOC_COUNT; c++)
                fprintf(out, " %12.2f",
                        res->by_class_per_rank[(int64_t)r * MOE_LOC_COUNT + c].bytes / 1048576.0);
            fprintf(out, "\n");
        }
    }
    if (res->projected) {
        fprintf(out, "\n%sProjection%s onto %s\n  (alpha-beta per locality class, slowest rank; "
                     "docs/projection.md)\n", bold, off, res->network);
        fprintf(out, "  %-13s %12s %12s\n", "exchange", "dispatch ms", "combine ms");
        fprintf(out, "  %-13s %12.3f %12.3f\n", "flat", res->proj_flat_dispatch * 1e3,
                res->proj_flat_combine * 1e3);
        fprintf(out, "  %-13s %12.3f %12.3f\n", "two-level", res->proj_hier_dispatch * 1e3,
                res->proj_hier_combine * 1e3);
        fprintf(out, "  measured here (%s): %.3f / %.3f ms (slowest rank)\n",
                res->hierarchical ? "two-level" : "flat", res->phase[MOE_PHASE_DISPATCH].max * 1e3,
                res->phase[MOE_PHASE_COMBINE].max * 1e3);
    }
    if (res->group_limited)
        reach_lines(out, res);
    moe_report_memory(out, res, color);
}

/* Where the processes ran: the ranks' placement, or with --ranks the planning processes'. */
static const moe_placement *proc_placement(const moe_results *res)
{
    return res->proc_placement != NULL ? res->proc_placement : res->placement;
}

/* Nodes of the processes in order of first appearance; node_of[r] indexes them. Returns the
 * count. */
static int node_index(const moe_results *res, int *node_of, int *first_rank)
{
    int n = 0;
    const moe_placement *pl = proc_placement(res);
    for (int r = 0; r < res->processes; r++) {
        int found = -1;
        for (int q = 0; q < n && found < 0; q++)
            if (pl[first_rank[q]].node == pl[r].node)
                found = q;
        if (found < 0) {
            first_rank[n] = r;
            found = n++;
        }
        node_of[r] = found;
    }
    return n;
}

/* Node q's estimate and peak RSS, summed over its ranks (saturating); returns its rank count. */
static int node_sums(const moe_results *res, const int *node_of, int q, int64_t *est, int64_t *rss)
{
    int ranks = 0;
    *est = *rss = 0;
    for (int r = 0; r < res->processes; r++)
        if (node_of[r] == q) {
            *est = moe_bytes_add(*est, res->mem_estimate[r]);
            *rss = moe_bytes_add(*rss, res->mem_peak_rss[r] > 0 ? res->mem_peak_rss[r] : 0);
            ranks++;
        }
    return ranks;
}

void moe_report_memory(FILE *out, const moe_results *res, bool color)
{
    const char *bold = color ? "\033[1m" : "", *off = color ? "\033[0m" : "";
    int R = res->processes;
    if (res->mem_estimate == NULL || R <= 0)
        return;
    int64_t est_max = 0, rss_max = 0, base_max = 0;
    double est_sum = 0;
    for (int r = 0; r < R; r++) {
        est_max = res->mem_estimate[r] > est_max ? res->mem_estimate[r] : est_max;
        rss_max = res->mem_peak_rss[r] > rss_max ? res->mem_peak_rss[r] : rss_max;
        base_max = res->mem_baseline_rss[r] > base_max ? res->mem_baseline_rss[r] : base_max;
        est_sum += (double)res->mem_estimate[r];
    }
    char a[32], b[32], c[32], e[32];
    moe_memory_format(a, sizeof a, est_max);
    moe_memory_format(b, sizeof b, (int64_t)(est_sum / R));
    moe_memory_format(c, sizeof c, rss_max);
    moe_memory_format(e, sizeof e, base_max);
    fprintf(out, "\n%sMemory%s (estimate: moesim's buffers, from the configuration and the exchanged "
                 "counts; RSS: getrusage)\n", bold, off);
    fprintf(out, "  per %s: estimate %s max (mean %s); peak RSS %s max (%s at start)\n",
            res->planned ? "process" : "rank", a, b, c, e);
    if (res->mem_full_run > 0) {
        moe_memory_format(a, sizeof a, res->mem_full_run);
        if (res->planned)
            fprintf(out, "  a real run of the %d planned ranks: about %s on the largest (exchange "
                         "at a balanced load)\n", res->ranks, a);
        else
            fprintf(out, "  a real run would need about %s on its largest rank (exchange at a "
                         "balanced load)\n", a);
    }
    int *node_of = malloc((size_t)R * sizeof *node_of), *first = malloc((size_t)R * sizeof *first);
    if (node_of == NULL || first == NULL) {
        free(node_of);
        free(first);
        return;
    }
    int nodes = node_index(res, node_of, first);
    for (int q = 0; q < nodes && q < 8; q++) {
        int64_t est, rss;
        int ranks = node_sums(res, node_of, q, &est, &rss);
        int64_t budget = res->mem_budget[first[q]];
        moe_memory_format(a, sizeof a, est);
        moe_memory_format(b, sizeof b, rss);
        moe_memory_format(c, sizeof c, budget);
        fprintf(out, "  node %-3d %4d rank%s: estimate %s, peak RSS %s, budget %s (%s)\n", q, ranks,
                ranks == 1 ? " " : "s", a, b, budget > 0 ? c : "unknown",
                res->mem_budget_given ? "--max-memory" : "MemAvailable");
    }
    if (nodes > 8)
        fprintf(out, "  ... %d more nodes in the JSON (memory.per_node)\n", nodes - 8);
    free(node_of);
    free(first);
}

/* memory: largest figures over ranks, then every rank and every node. */
static json_t *memory_json(const moe_results *res)
{
    int R = res->processes;
    if (res->mem_estimate == NULL)
        return json_null();
    int64_t est_max = 0, rss_max = 0, base_max = 0;
    json_t *per_rank = json_array(), *per_node = json_array();
    int *node_of = malloc((size_t)(R > 0 ? R : 1) * sizeof *node_of);
    int *first = malloc((size_t)(R > 0 ? R : 1) * sizeof *first);
    if (node_of == NULL || first == NULL || per_rank == NULL || per_node == NULL) {
        free(node_of);
        free(first);
        json_decref(per_rank);
        json_decref(per_node);
        return NULL;
    }
    int nodes = node_index(res, node_of, first);
    for (int r = 0; r < R; r++) {
        est_max = res->mem_estimate[r] > est_max ? res->mem_estimate[r] : est_max;
        rss_max = res->mem_peak_rss[r] > rss_max ? res->mem_peak_rss[r] : rss_max;
        base_max = res->mem_baseline_rss[r] > base_max ? res->mem_baseline_rss[r] : base_max;
        json_array_append_new(per_rank,
                              json_pack("{s:i, s:i, s:I, s:I, s:I}", "rank", r, "node", node_of[r],
                                        "estimate_bytes", (json_int_t)res->mem_estimate[r],
                                        "peak_rss_bytes", (json_int_t)res->mem_peak_rss[r],
                                        "baseline_rss_bytes", (json_int_t)res->mem_baseline_rss[r]));
    }
    for (int q = 0; q < nodes; q++) {
        int64_t est, rss;
        int ranks = node_sums(res, node_of, q, &est, &rss);
        int64_t budget = res->mem_budget[first[q]];
        json_array_append_new(per_node,
                              json_pack("{s:i, s:i, s:I, s:I, s:o}", "node", q, "ranks", ranks,
                                        "estimate_bytes", (json_int_t)est, "peak_rss_bytes",
                                        (json_int_t)rss, "budget_bytes",
                                        budget > 0 ? json_integer(budget) : json_null()));
    }
    free(node_of);
    free(first);
    return json_pack("{s:I, s:I, s:I, s:s, s:o, s:o, s:o}", "estimate_bytes", (json_int_t)est_max,
                     "peak_rss_bytes", (json_int_t)rss_max, "baseline_rss_bytes",
                     (json_int_t)base_max, "budget_source",
                     res->mem_budget_given ? "--max-memory" : "MemAvailable", "per_rank", per_rank,
                     "per_node", per_node, "full_run_estimate_bytes",
                     res->mem_full_run > 0 ? json_integer(res->mem_full_run) : json_null());
}

void moe_report_placement(FILE *out, const moe_results *res)
{
    int R = res->ranks;
    if (res->planned) { /* --ranks: nothing ran there */
        int nodes = R > 0 ? res->placement[R - 1].node + 1 : 0, per = 0;
        for (int r = 0; r < R; r++)
            per += res->placement[r].node == 0;
        fprintf(out, "Placement (planned with --ranks, not launched): %d ranks, %d node%s of %d, "
                     "planned by %d process%s\n\n",
                R, nodes, nodes == 1 ? "" : "s", per, res->processes,
                res->processes == 1 ? "" : "es");
        return;
    }
    fprintf(out, "Placement (hwloc): where each rank runs\n");
    fprintf(out, "  %5s %-20s %5s %8s %5s %6s  %s\n", "rank", "host", "node", "package", "numa", "cores",
            "bound to PUs");
    for (int r = 0; r < R; r++) {
        const moe_placement *p = &res->placement[r];
        char pkg[16], numa[16];
        snprintf(pkg, sizeof pkg, p->package >= 0 ? "%d" : "-", p->package);
        snprintf(numa, sizeof numa, p->numa >= 0 ? "%d" : "-", p->numa);
        fprintf(out, "  %5d %-20.20s %5d %8s %5s %6d  %s\n", r, p->host, p->node, pkg, numa, p->cores,
                p->cpuset);
    }
    char warnings[2048];
    if (moe_topology_warnings(warnings, sizeof warnings, res->placement, R) > 0)
        fprintf(out, "%s", warnings);
    fprintf(out, "\n");
}

static void group_description(char *buf, size_t len, const moe_config *cfg, int R)
{
    int64_t *blocks = cfg->scope == MOE_SCOPE_LOCAL ? moe_config_token_blocks(cfg, R) : NULL;
    if (blocks != NULL) { /* --tokens-per-rank, source-ragged */
        int64_t lo = blocks[0], hi = blocks[0];
        for (int r = 1; r < R; r++) {
            lo = blocks[r] < lo ? blocks[r] : lo;
            hi = blocks[r] > hi ? blocks[r] : hi;
        }
        snprintf(buf, len, "%d groups of %lld to %lld tokens (local scope: one per rank's block)",
                 R, (long long)lo, (long long)hi);
        free(blocks);
    } else if (cfg->scope == MOE_SCOPE_GLOBAL)
        snprintf(buf, len, "1 group of %lld tokens (global scope)", (long long)cfg->tokens);
    else if (cfg->tokens % R == 0)
        snprintf(buf, len, "%d groups of %lld tokens (local scope: one per rank)", R,
                 (long long)(cfg->tokens / R));
    else
        snprintf(buf, len, "%d groups of %lld or %lld tokens (local scope: one per rank)", R,
                 (long long)(cfg->tokens / R), (long long)(cfg->tokens / R + 1));
}

void moe_report_prediction(FILE *out, const moe_config *cfg, const moe_results *res)
{
    char groups[128];
    group_description(groups, sizeof groups, cfg, res->ranks);
    fprintf(out, "Prediction, before any token row moves: %s, %lld assignments\n", groups,
            (long long)(cfg->tokens * cfg->top_k));
    fprintf(out, "  closed form: each expert's load in a group of G tokens ~ Binomial(G, q_i); uniform router\n"
                 "  q_i = k/E, this router q_i = min(1, k P_i) from its mean gate probabilities. exact: from\n"
                 "  the per-expert counts the count exchange carries, max(L - C, 0) and max(C - L, 0).\n");
    fprintf(out, "  %6s %10s | %21s | %21s | %21s\n", "", "", "closed form, uniform", "closed form, router",
            "exact, from counts");
    fprintf(out, "  %6s %10s | %10s %10s | %10s %10s | %10s %10s\n", "cf", "capacity", "dropped",
            "empty", "dropped", "empty", "dropped", "empty");
    for (int i = 0; i < res->n_ablation; i++) {
        const moe_ablation_row *r = &res->ablation[i];
        char cap[24];
        if (r->capacity < 0)
            snprintf(cap, sizeof cap, "dropless");
        else
            snprintf(cap, sizeof cap, "%lld", (long long)r->capacity);
        fprintf(out, "  %6.3g %10s | %10.1f %10.1f | %10.1f %10.1f | %10lld %10lld\n",
                r->capacity_factor, cap, r->expected_dropped_uniform, r->expected_empty_uniform,
                r->expected_dropped, r->expected_empty, (long long)r->exact_dropped,
                (long long)r->exact_empty);
    }
    fprintf(out, "  (capacity: slots per expert, summed over groups; dropped = assignments, empty = slots)\n");
    if (cfg->routing == MOE_ROUTING_EXPERT_CHOICE)
        fprintf(out, "  (expert choice: each expert takes C tokens and none overflows; the closed form is "
                     "what top-k\n   routing on the same scores would drop)\n");
    else if (cfg->policy == MOE_POLICY_REROUTE)
        fprintf(out, "  (reroute: drops before rerouting; the run reports how many found another expert)\n");
    if (moe_config_has_selection_bias(cfg))
        fprintf(out, "  (the selection bias moves experts without entering P: the closed form does "
                     "not see it;\n   the exact figures count the biased routing)\n");
    if (res->n_ablation > 0 && cfg->routing != MOE_ROUTING_EXPERT_CHOICE) {
        char need[32];
        format_cf_up(need, sizeof need, res->ablation[0].cf_needed);
        fprintf(out, "  largest expert load %lld (one expert, one group): cf %s would drop nothing\n",
                (long long)res->ablation[0].max_expert_load, need);
    }
    fprintf(out, "\n");
}

void moe_report_ablation(FILE *out, const moe_config *cfg, const moe_results *res)
{
    (void)cfg;
    fprintf(out, "\nCapacity-factor ablation: routing computed once; measured after the run, beside the prediction\n");
    fprintf(out, "  %5s %8s %8s %7s %8s %8s %8s %8s %8s | %9s %7s\n", "cf", "capacity", "dropped",
            "tokens", "empty", "GFLOP", "dispatch", "dispatch", "combine", "predicted", "closed");
    fprintf(out, "  %5s %8s %8s %7s %8s %8s %8s %8s %8s | %9s %7s\n", "", "", "assignmt",
            "dropped", "slots", "wasted", "MiB", "ms max", "ms max", "exact", "form");
    for (int i = 0; i < res->n_ablation; i++) {
        const moe_ablation_row *r = &res->ablation[i];
        char cap[24];
        if (r->capacity < 0)
            snprintf(cap, sizeof cap, "-");
        else
            snprintf(cap, sizeof cap, "%lld", (long long)r->capacity);
        fprintf(out, "  %5.3g %8s %8lld %7lld %8lld %8.3g %8.2f %8.3f %8.3f | %9lld %7.1f\n",
                r->capacity_factor, cap, (long long)r->dropped_assignments,
                (long long)r->dropped_tokens, (long long)r->empty_slots, r->flops_wasted / 1e9,
                (double)r->dispatch_bytes / 1048576.0, r->dispatch.max * 1e3, r->combine.max * 1e3,
                (long long)r->exact_dropped, r->expected_dropped);
    }
    fprintf(out, "  (predicted exact = from the exchanged counts, equal to the measurement by construction;\n"
                 "   closed form = Binomial model from this router's mean gate probabilities)\n");
    if (cfg->policy == MOE_POLICY_REROUTE && cfg->routing == MOE_ROUTING_TOKEN_CHOICE) {
        fprintf(out, "  (reroute: dropped = not served by the routed expert; of them, rerouted:");
        for (int i = 0; i < res->n_ablation; i++)
            if (res->ablation[i].measured)
                fprintf(out, "%s %lld at cf %g", i ? "," : "", (long long)res->ablation[i].rerouted,
                        res->ablation[i].capacity_factor);
        fprintf(out, ")\n");
    }
}

/* JSON has no NaN or infinity: such a value is written as null rather than failing the object. */
static json_t *num(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

/* cf_needed: null when there is no load to hold (nothing was routed) */
static json_t *cf_needed_json(double cf)
{
    return cf > 0.0 ? num(cf) : json_null();
}

static json_t *summary_json(moe_summary s)
{
    return json_pack("{s:o, s:o, s:o}", "min", num(s.min), "mean", num(s.mean), "max", num(s.max));
}

/* timing.<phase>: the summary over the ranks' medians, and the single iterations' extremes */
static json_t *timing_json(moe_summary s, moe_spread it)
{
    json_t *o = summary_json(s);
    json_object_set_new(o, "iter_min", num(it.iter_min));
    json_object_set_new(o, "iter_max", num(it.iter_max));
    return o;
}

static json_t *a2a_json(const moe_a2a_bandwidth *b)
{
    return json_pack("{s:o, s:o, s:I, s:I}", "algbw", num(b->algbw), "busbw", num(b->busbw),
                     "off_rank_bytes", (json_int_t)b->off_rank_bytes, "off_node_bytes",
                     (json_int_t)b->off_node_bytes);
}

static void append_warning(const char *line, void *arg)
{
    json_array_append_new((json_t *)arg, json_string(line));
}

/* environment: what the run ran on (docs/json.md) */
static json_t *environment_json(const moe_results *res)
{
    const moe_environment *env = &res->env;
    json_t *hosts = json_array();
    const moe_placement *pl = proc_placement(res);
    for (int r = 0; r < res->processes; r++) {
        int seen = 0;
        for (int q = 0; q < r && !seen; q++)
            seen = strcmp(pl[q].host, pl[r].host) == 0;
        if (!seen)
            json_array_append_new(hosts, json_string(pl[r].host));
    }
    json_t *warnings = json_array();
    each_warning(res, append_warning, warnings);
    double outside = env->wall_seconds > 0.0 ? 1.0 - env->step_seconds / env->wall_seconds : NAN;
    return json_pack("{s:o, s:o, s:o, s:o, s:s, s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:o}", "hosts", hosts,
                     "cores", env->cores > 0 ? json_integer(env->cores) : json_null(),
                     "load_average_start", num(env->load_start), "load_average_end",
                     num(env->load_end), "openmpi", env->mpi_library, "openblas", env->openblas,
                     "gelu_kernel", env->gelu_kernel ? env->gelu_kernel : "plain", "moesim", MOE_VERSION, "utc",
                     env->utc[0] ? json_string(env->utc) : json_null(), "warnings", warnings,
                     "wall_seconds", num(env->wall_seconds), "step_seconds",
                     num(env->step_seconds), "outside_steps_fraction", num(outside));
}

static json_t *classes_json(const moe_class_traffic *t)
{
    json_t *o = json_object();
    for (int c = 0; c < MOE_LOC_COUNT; c++)
        json_object_set_new(o, moe_locality_name(c),
                            json_pack("{s:I, s:I}", "bytes", (json_int_t)t[c].bytes, "messages",
                                      (json_int_t)t[c].messages));
    return o;
}

/* The dense R x R matrix of normalized blocks, row by row; null when the run summarised it
 * (--traffic-matrix). */
static json_t *matrix_json(const moe_blocks *b, int R, bool full)
{
    if (!full)
        return json_null();
    json_t *rows = json_array();
    int64_t i = 0;
    for (int s = 0; s < R; s++) {
        json_t *row = json_array();
        for (int r = 0; r < R; r++) {
            bool here = i < b->n && b->v[i].src == s && b->v[i].dst == r;
            json_array_append_new(row, json_integer(here ? b->v[i].val : 0));
            i += here;
        }
        json_array_append_new(rows, row);
    }
    return rows;
}

/* Per rank: what it sends (by_src) or receives, summed over the blocks. */
static json_t *rank_sums_json(const moe_blocks *b, int R, bool by_src)
{
    int64_t *sum = calloc((size_t)(R > 0 ? R : 1), sizeof *sum);
    if (sum == NULL)
        return NULL;
    for (int64_t i = 0; i < b->n; i++)
        sum[by_src ? b->v[i].src : b->v[i].dst] += b->v[i].val;
    json_t *a = json_array();
    for (int r = 0; r < R; r++)
        json_array_append_new(a, json_integer(sum[r]));
    free(sum);
    return a;
}

static json_t *doubles_json(const double *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, num(v[i]));
    return a;
}

static json_t *top_steps_or_null(const moe_results *res)
{
    return res->steps != NULL ? (json_t *)res->steps : json_null();
}

/* load_balance: the balance figures of one batch (docs/json.md) */
static json_t *balance_json(const moe_results *res)
{
    const moe_balance *bal = &res->balance;
    int E = res->experts;
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:{s:o, s:o, s:o, s:o}}", "f",
                     doubles_json(res->f, E), "P", doubles_json(res->P, E), "aux_loss",
                     num(res->aux_loss), "z_loss", num(bal->z_loss), "importance_cv2",
                     num(bal->importance_cv2), "entropy", num(bal->entropy), "gini",
                     num(bal->gini), "max_over_mean", num(bal->max_over_mean), "rank_overload",
                     bal->rank_overload > 0 ? num(bal->rank_overload) : json_null(),
                     "tokens_per_expert", "min", num(bal->tpe_min), "max", num(bal->tpe_max),
                     "mean", num(bal->tpe_mean), "std", num(bal->tpe_std));
}

/* drops: what one batch dropped (docs/json.md) */
static json_t *drops_json(const moe_results *res)
{
    json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:o, s:I, s:i}", "assignments",
                          (json_int_t)res->assignments, "dropped_assignments",
                          (json_int_t)res->dropped_assignments, "dropped_tokens",
                          (json_int_t)res->dropped_tokens, "max_expert_load",
                          (json_int_t)res->max_expert_load, "cf_needed",
                          cf_needed_json(res->cf_needed), "rerouted", (json_int_t)res->rerouted,
                          "reroute_rounds", res->reroute_rounds);
    json_object_set_new(o, "still_dropped", json_integer(res->dropped_assignments - res->rerouted));
    return o;
}


/* {mean, max, histogram} of a reach histogram (R + 1 entries, trailing zeros cut). */
static json_t *reach_json(const int64_t *hist, int R)
{
    int64_t tokens = 0, sum = 0, most = 0;
    int last = 0;
    for (int j = 0; j <= R; j++) {
        tokens += hist[j];
        sum += (int64_t)j * hist[j];
        if (hist[j] > 0) {
            most = j;
            last = j;
        }
    }
    json_t *h = json_array();
    for (int j = 0; j <= last; j++)
        json_array_append_new(h, json_integer(hist[j]));
    return json_pack("{s:o, s:I, s:o}", "mean", num(tokens > 0 ? (double)sum / (double)tokens : 0.0),
                     "max", (json_int_t)most, "histogram", h);
}

static json_t *routing_json(const moe_config *cfg, const moe_results *res)
{
    int R = res->ranks, A = res->slots_per_token > 0 ? res->slots_per_token : res->top_k;
    json_t *per_token = json_array();
    for (int j = 0; j <= A && res->experts_per_token; j++)
        json_array_append_new(per_token, json_integer(res->experts_per_token[j]));
    json_t *reach = json_pack("{s:o, s:o}", "ranks", reach_json(res->reach_ranks, R), "nodes",
                              reach_json(res->reach_nodes, R));
    json_t *unlimited = res->group_limited
                            ? json_pack("{s:o, s:o}", "ranks",
                                        reach_json(res->reach_ranks_unlimited, R), "nodes",
                                        reach_json(res->reach_nodes_unlimited, R))
                            : json_null();
    return json_pack("{s:s, s:o, s:I, s:o, s:o}", "mode", moe_routing_name(cfg->routing),
                     "experts_per_token", per_token, "unchosen_tokens",
                     (json_int_t)(res->experts_per_token ? res->experts_per_token[0] : 0), "reach",
                     reach, "reach_unlimited", unlimited);
}

static json_t *dense_json(const moe_results *res)
{
    moe_dense_baseline b = moe_report_dense_baseline(res);
    return json_pack("{s:I, s:o, s:o, s:o, s:o, s:o}", "dense_ffn", (json_int_t)b.dense_ffn,
                     "dense_parameters", num(b.dense_parameters), "dense_flops_per_token",
                     num(b.dense_flops_per_token), "moe_parameters", num(b.moe_parameters),
                     "moe_active_parameters", num(b.moe_active_parameters),
                     "moe_flops_per_token", num(b.moe_flops_per_token));
}

/* Each rank's tokens, rows, bytes out and median phase times; null when nothing ran. */
static json_t *per_rank_json(const moe_results *res)
{
    if (res->rank_median == NULL || res->rank_tokens == NULL)
        return json_null();
    json_t *list = json_array();
    int P = MOE_PHASE_COUNT + 1;
    for (int r = 0; list && r < res->ranks; r++) {
        const double *m = res->rank_median + (int64_t)r * P;
        json_t *t = json_object();
        for (int p = 0; t && p < MOE_PHASE_COUNT; p++)
            if (!moe_phase_is_backward(p) || !isnan(m[p]))
                json_object_set_new(t, moe_phase_name(p), num(m[p]));
        json_object_set_new(t, "step", num(m[MOE_PHASE_COUNT]));
        json_array_append_new(
            list, json_pack("{s:i, s:I, s:I, s:I, s:o}", "rank", r, "tokens",
                            (json_int_t)res->rank_tokens[r], "rows_computed",
                            (json_int_t)res->rank_rows[r], "dispatch_bytes_sent",
                            (json_int_t)rank_bytes_out(res, r), "seconds", t));
    }
    return list;
}

static json_t *verdict_json(const moe_results *res)
{
    moe_check checks[MOE_CHECK_COUNT];
    bool valid = moe_verdict(res, checks);
    json_t *list = json_array();
    for (int i = 0; list && i < MOE_CHECK_COUNT; i++)
        json_array_append_new(list, json_pack("{s:s, s:s, s:b, s:o, s:s}", "name", checks[i].name,
                                              "what", checks[i].what, "ran", checks[i].ran,
                                              "passed", checks[i].ran ? json_boolean(checks[i].passed)
                                                                      : json_null(),
                                              "detail", checks[i].detail));
    return json_pack("{s:b, s:s, s:o}", "valid", valid, "result", valid ? "VALID" : "INVALID",
                     "checks", list);
}

static json_t *json_document(const moe_config *cfg, const moe_results *res)
{
    int E = res->experts, R = res->ranks;
    json_t *root = json_object();
    json_t *config = json_pack(
        "{s:i, s:i, s:i, s:f, s:I, s:I, s:I, s:s, s:s, s:I, s:b, s:b, s:i, s:i, s:o, s:o}", "ranks",
        R, "experts", E, "top_k", res->top_k, "capacity_factor", cfg->capacity_factor, "tokens",
        (json_int_t)res->tokens, "hidden", (json_int_t)res->hidden, "ffn", (json_int_t)res->ffn,
        "capacity_scope", moe_scope_name(cfg->scope), "drop_policy", moe_policy_name(cfg->policy),
        "seed", (json_int_t)cfg->seed, "renormalize", cfg->renormalize, "pad_to_capacity",
        cfg->pad_to_capacity, "iters", cfg->iters, "warmup", cfg->warmup, "tokens_file",
        cfg->tokens_file ? json_string(cfg->tokens_file) : json_null(), "router_file",
        cfg->router_file ? json_string(cfg->router_file) : json_null());

    json_t *experts = json_array();
    for (int e = 0; e < E; e++) {
        int64_t rerouted_in = res->rerouted_in ? res->rerouted_in[e] : 0;
        json_t *o = json_pack("{s:i, s:i, s:I, s:I, s:I, s:I}", "id", e, "rank", res->owner[e],
                              "routed", (json_int_t)res->routed[e], "accepted",
                              (json_int_t)res->accepted[e], "rerouted_in", (json_int_t)rerouted_in,
                              "dropped",
                              (json_int_t)(res->routed[e] - (res->accepted[e] - rerouted_in)));
        if (res->capacity[e] < 0) {
            json_object_set_new(o, "capacity", json_null());
            json_object_set_new(o, "utilization", json_null());
        } else {
            json_object_set_new(o, "capacity", json_integer(res->capacity[e]));
            json_object_set_new(o, "utilization",
                                json_real(res->capacity[e] > 0
                                              ? (double)res->accepted[e] / (double)res->capacity[e]
                                              : 0.0));
        }
        json_array_append_new(experts, o);
    }

    json_t *timing = json_object();
    for (int p = 0; p < MOE_PHASE_COUNT; p++)
        if (!moe_phase_is_backward(p) || !isnan(res->phase[p].mean))
            json_object_set_new(timing, moe_phase_name(p),
                                timing_json(res->phase[p], res->phase_iter[p]));
    json_object_set_new(timing, "step", timing_json(res->step, res->step_iter));

    json_t *cfs = json_array();
    for (int i = 0; i < cfg->n_cf; i++)
        json_array_append_new(cfs, json_real(cfg->cf_list[i]));
    json_object_set_new(config, "capacity_factors", cfs);
    json_object_set_new(config, "predict_only", json_boolean(cfg->predict_only));
    json_object_set_new(config, "planned_ranks", json_boolean(res->planned));
    json_object_set_new(config, "processes", json_integer(res->processes));
    json_object_set_new(config, "logits_file",
                        cfg->logits_file ? json_string(cfg->logits_file) : json_null());
    json_object_set_new(config, "score", json_string(moe_score_name(cfg->score)));
    json_object_set_new(config, "topk_scale", json_real(cfg->topk_scale));
    json_object_set_new(config, "min_capacity", json_integer(cfg->min_capacity));
    json_object_set_new(config, "expert_bias_file",
                        cfg->expert_bias_file ? json_string(cfg->expert_bias_file)
                                                 : json_null());
    json_object_set_new(config, "routing", json_string(moe_routing_name(cfg->routing)));
    json_object_set_new(config, "mode", json_string(moe_mode_name(cfg->mode)));
    json_object_set_new(config, "regroup", json_string(moe_regroup_name(cfg->regroup)));
    json_object_set_new(config, "steps", json_integer(cfg->steps));
    json_object_set_new(config, "workload", json_string(moe_wl_name(cfg->workload)));
    json_object_set_new(config, "period",
                        cfg->workload != MOE_WL_NONE ? json_integer(cfg->period) : json_null());
    json_object_set_new(config, "workload_hot_experts",
                        cfg->workload != MOE_WL_NONE ? json_integer(cfg->wl_hot) : json_null());
    json_object_set_new(config, "workload_hot_share",
                        cfg->workload != MOE_WL_NONE ? json_real(cfg->wl_share) : json_null());
    json_object_set_new(config, "expert_bias", json_boolean(cfg->expert_bias));
    json_object_set_new(config, "bias_update_rate", json_real(cfg->bias_update_rate));
    bool bwd = MOE_MODE_HAS_BACKWARD(cfg->mode), train = cfg->mode == MOE_MODE_TRAIN;
    json_object_set_new(config, "optimizer",
                        train ? json_string(moe_optimizer_name(cfg->optimizer)) : json_null());
    json_object_set_new(config, "lr", train ? json_real(cfg->lr) : json_null());
    json_object_set_new(config, "aux_loss_coeff", bwd ? json_real(cfg->aux_loss_coeff) : json_null());
    json_object_set_new(config, "z_loss_coeff", bwd ? json_real(cfg->z_loss_coeff) : json_null());
    json_object_set_new(config, "teacher_experts",
                        bwd ? json_integer(cfg->teacher_experts) : json_null());
    json_object_set_new(config, "steps_csv",
                        cfg->steps_csv ? json_string(cfg->steps_csv) : json_null());
    json_object_set_new(config, "traffic_matrix",
                        json_string(cfg->traffic_matrix == MOE_MATRIX_FULL      ? "full"
                                    : cfg->traffic_matrix == MOE_MATRIX_SUMMARY ? "summary"
                                                                                : "auto"));
    json_object_set_new(config, "raw_baseline",
                        json_string(moe_raw_baseline_name(cfg->raw_baseline)));
    json_object_set_new(config, "report", json_string(moe_report_kind_name(cfg->report)));
    json_object_set_new(config, "dispatch", json_string(moe_dispatch_name(cfg->dispatch)));
    json_object_set_new(config, "placement", json_string(moe_place_kind_name(cfg->placement)));
    json_object_set_new(config, "redundant_experts", json_integer(cfg->redundant_experts));
    json_object_set_new(config, "eplb_from",
                        cfg->placement != MOE_PLACE_EPLB ? json_null()
                        : cfg->eplb_previous             ? json_string("previous")
                        : cfg->eplb_from                 ? json_string(cfg->eplb_from)
                                                         : json_string("self"));
    json_object_set_new(config, "expert_groups",
                        cfg->expert_groups > 0 ? json_integer(cfg->expert_groups) : json_null());
    json_object_set_new(config, "group_top_k",
                        cfg->group_top_k > 0 ? json_integer(cfg->group_top_k) : json_null());
    json_object_set_new(config, "shared_experts", json_integer(cfg->shared_experts));
    json_object_set_new(config, "shared_ffn",
                        cfg->shared_experts > 0 ? json_integer(cfg->shared_ffn) : json_null());
    json_object_set_new(config, "noisy_top_k", json_boolean(cfg->noisy_top_k));
    json_object_set_new(config, "input_jitter", json_real(cfg->input_jitter));
    json_object_set_new(config, "preset", cfg->preset ? json_string(cfg->preset) : json_null());
    json_object_set_new(config, "preset_set",
                        cfg->preset ? json_string(cfg->preset_set) : json_null());

    json_t *bias = json_array();
    for (int e = 0; e < E; e++)
        json_array_append_new(bias, json_real(res->router_bias[e]));
    json_t *workload = json_pack("{s:o, s:i, s:o, s:o, s:o, s:I, s:o}", "skew", num(cfg->skew),
                                 "hot_experts", cfg->hot_experts, "hot_share_target",
                                 num(cfg->hot_experts ? cfg->hot_share : 0.0), "hot_share",
                                 num(res->hot_share), "hot_bias", num(res->hot_bias), "clusters",
                                 (json_int_t)cfg->clusters, "router_bias", bias);
    json_object_set_new(workload, "token_mean", num(cfg->token_mean));
    /* the ranks' token blocks when uneven (as the layer computed them from the same inputs) */
    json_t *blocks = json_null();
    int64_t *per = moe_config_token_blocks(cfg, res->ranks);
    if (per != NULL) {
        blocks = json_array();
        for (int r = 0; blocks && r < res->ranks; r++)
            json_array_append_new(blocks, json_integer(per[r]));
    }
    free(per);
    json_object_set_new(workload, "tokens_per_rank", blocks ? blocks : json_null());

    json_t *ablation = json_array();
    for (int i = 0; i < res->n_ablation; i++) {
        const moe_ablation_row *r = &res->ablation[i];
        json_t *predicted = json_pack(
            "{s:o, s:o, s:I, s:I, s:o, s:o, s:I, s:o}", "expected_dropped_assignments",
            num(r->expected_dropped), "expected_empty_slots", num(r->expected_empty),
            "exact_dropped_assignments", (json_int_t)r->exact_dropped, "exact_empty_slots",
            (json_int_t)r->exact_empty, "expected_dropped_assignments_uniform",
            num(r->expected_dropped_uniform), "expected_empty_slots_uniform",
            num(r->expected_empty_uniform), "max_expert_load", (json_int_t)r->max_expert_load,
            "cf_needed", cf_needed_json(r->cf_needed));
        json_t *o = json_pack("{s:o, s:o, s:o}", "capacity_factor", num(r->capacity_factor), "capacity",
                              r->capacity < 0 ? json_null() : json_integer(r->capacity), "predicted",
                              predicted);
        if (r->measured) {
            json_object_set_new(o, "dropped_assignments", json_integer(r->dropped_assignments));
            json_object_set_new(o, "dropped_tokens", json_integer(r->dropped_tokens));
            json_object_set_new(o, "rerouted", json_integer(r->rerouted));
            json_object_set_new(o, "still_dropped",
                                json_integer(r->dropped_assignments - r->rerouted));
            json_object_set_new(o, "empty_slots", json_integer(r->empty_slots));
            json_object_set_new(o, "flops_wasted", num(r->flops_wasted));
            json_object_set_new(o, "dispatch_bytes", json_integer(r->dispatch_bytes));
            json_object_set_new(o, "dispatch_seconds", summary_json(r->dispatch));
            json_object_set_new(o, "combine_seconds", summary_json(r->combine));
            json_object_set_new(o, "expert_seconds", summary_json(r->expert));
            json_object_set_new(o, "step_seconds", summary_json(r->step));
            json_object_set_new(
                o, "closed_form_error",
                json_pack("{s:o, s:o}", "dropped_assignments",
                          num(r->expected_dropped - (double)r->dropped_assignments), "empty_slots",
                          num(r->expected_empty - (double)r->empty_slots)));
        } else {
            const char *keys[] = {"dropped_assignments", "dropped_tokens", "rerouted",
                                  "still_dropped", "empty_slots",
                                  "flops_wasted", "dispatch_bytes", "dispatch_seconds",
                                  "combine_seconds", "expert_seconds", "step_seconds",
                                  "closed_form_error"};
            for (size_t j = 0; j < sizeof keys / sizeof keys[0]; j++)
                json_object_set_new(o, keys[j], json_null());
        }
        json_array_append_new(ablation, o);
    }

    json_object_set_new(root, "moesim_version", json_string(MOE_VERSION));
    json_object_set_new(root, "config", config);
    json_object_set_new(root, "experts", experts);
    json_object_set_new(root, "load_balance", balance_json(res));
    json_object_set_new(root, "drops", drops_json(res));
    json_object_set_new(root, "routing", routing_json(cfg, res));
    json_t *replicas = json_array();
    for (int p = 0; p < res->n_slots; p++)
        json_array_append_new(replicas, json_pack("[i, i]", res->slot_expert[p], res->slot_rank[p]));
    json_object_set_new(
        root, "replication",
        json_pack("{s:s, s:i, s:o, s:o, s:o, s:I}", "placement", moe_place_kind_name(cfg->placement),
                  "redundant", cfg->redundant_experts, "replicas", replicas,
                  "rank_overload_before",
                  res->overload_before > 0 ? num(res->overload_before) : json_null(),
                  "rank_overload_after",
                  res->balance.rank_overload > 0 ? num(res->balance.rank_overload) : json_null(),
                  "extra_weight_bytes", (json_int_t)res->extra_weight_bytes));
    json_object_set_new(root, "waste",
                        json_pack("{s:I, s:I, s:o, s:o, s:b, s:o}", "slots", (json_int_t)res->slots,
                                  "empty_slots", (json_int_t)res->empty_slots, "flops_useful",
                                  num(res->flops_useful), "flops_wasted", num(res->flops_wasted), "padded",
                                  res->padded, "flops_shared", num(res->flops_shared)));
    json_object_set_new(root, "traffic",
                        json_pack("{s:o, s:o, s:o, s:s, s:I, s:o, s:o, s:o, s:o}",
                                  "dispatch_bytes",
                                  matrix_json(&res->dispatch_bytes, R, res->matrix_full),
                                  "combine_bytes",
                                  matrix_json(&res->combine_bytes, R, res->matrix_full), "rows",
                                  matrix_json(&res->rows, R, res->matrix_full), "matrix",
                                  res->matrix_full ? "full" : "summary", "nonzero_blocks",
                                  (json_int_t)res->rows.n, "rows_sent",
                                  rank_sums_json(&res->rows, R, true), "rows_received",
                                  rank_sums_json(&res->rows, R, false), "dispatch_bytes_sent",
                                  rank_sums_json(&res->dispatch_bytes, R, true),
                                  "dispatch_bytes_received",
                                  rank_sums_json(&res->dispatch_bytes, R, false)));
    json_object_set_new(json_object_get(root, "traffic"), "metadata_bytes",
                        json_integer(res->metadata_bytes));
    json_object_set_new(json_object_get(root, "traffic"), "dedup_saving",
                        json_integer(res->dedup_saving));
    json_t *node_rows = json_null();
    if (res->node_rows != NULL) {
        node_rows = json_array();
        for (int s = 0; s < R; s++) {
            json_t *row = json_array();
            for (int b = 0; b < res->n_nodes; b++)
                json_array_append_new(row, json_integer(res->node_rows[(int64_t)s * res->n_nodes + b]));
            json_array_append_new(node_rows, row);
        }
    }
    json_object_set_new(json_object_get(root, "traffic"), "node_rows", node_rows);
    json_object_set_new(json_object_get(root, "traffic"), "node_row_bytes",
                        res->node_rows != NULL ? json_integer(res->node_row_bytes) : json_null());
    json_object_set_new(
        root, "wire",
        json_pack("{s:s, s:s, s:I, s:I, s:o}", "dispatch", moe_wire_name(cfg->wire), "combine",
                  moe_wire_name(cfg->wire_combine), "dispatch_row_bytes",
                  (json_int_t)moe_wire_row_bytes(cfg->wire, res->hidden), "combine_row_bytes",
                  (json_int_t)moe_wire_row_bytes(cfg->wire_combine, res->hidden), "y_error",
                  res->wire_measured ? json_pack("{s:o, s:o}", "max_rel", num(res->y_error_max_rel),
                                                 "rms_rel", num(res->y_error_rms_rel))
                                     : json_null()));
    json_object_set_new(root, "timing", timing);
    json_object_set_new(root, "bandwidth",
                        json_pack("{s:o, s:o, s:o, s:o}", "dispatch_bytes_per_second",
                                  num(res->dispatch_bytes_per_second), "combine_bytes_per_second",
                                  num(res->combine_bytes_per_second), "dispatch",
                                  a2a_json(&res->dispatch_a2a), "combine",
                                  a2a_json(&res->combine_a2a)));
    json_object_set_new(root, "environment", environment_json(res));
    json_object_set_new(root, "output", json_pack("{s:o}", "checksum", num(res->output_checksum)));
    json_object_set_new(root, "workload", workload);
    json_object_set_new(config, "a2a", json_string(cfg->hierarchical ? "hierarchical" : "flat"));
    json_object_set_new(config, "ranks_per_node",
                        cfg->ranks_per_node ? json_integer(cfg->ranks_per_node) : json_null());
    json_object_set_new(config, "topology", cfg->topology ? json_string(cfg->topology) : json_null());
    json_object_set_new(config, "network", cfg->network ? json_string(cfg->network) : json_null());
    json_object_set_new(config, "max_memory_bytes",
                        cfg->max_memory > 0 ? json_integer(cfg->max_memory) : json_null());
    json_object_set_new(config, "max_memory_percent",
                        cfg->max_memory_percent > 0 ? json_real(cfg->max_memory_percent) : json_null());
    json_t *placement = json_array();
    for (int r = 0; r < R; r++) {
        const moe_placement *p = &res->placement[r];
        json_array_append_new(
            placement,
            json_pack("{s:i, s:s, s:i, s:o, s:o, s:i, s:s, s:b}", "rank", r, "host", p->host, "node",
                      p->node, "package", p->package >= 0 ? json_integer(p->package) : json_null(),
                      "numa", p->numa >= 0 ? json_integer(p->numa) : json_null(), "cores", p->cores,
                      "cpuset", p->cpuset, "bound", p->bound));
    }
    json_object_set_new(root, "placement", placement);
    json_t *traffic_obj = json_object_get(root, "traffic");
    if (traffic_obj != NULL) {
        json_object_set_new(traffic_obj, "by_class", classes_json(res->by_class));
        json_object_set_new(traffic_obj, "by_class_hierarchical", classes_json(res->by_class_hier));
        json_t *per_rank = json_array();
        for (int r = 0; r < R; r++)
            json_array_append_new(per_rank,
                                  classes_json(res->by_class_per_rank + (int64_t)r * MOE_LOC_COUNT));
        json_object_set_new(traffic_obj, "by_class_per_rank", per_rank);
    }
    double rd = res->phase[MOE_PHASE_DISPATCH_RAW].max, rcb = res->phase[MOE_PHASE_COMBINE_RAW].max;
    const double *pr = res->regroup_probe;
    json_t *probe = pr[0] > 0 && pr[1] > 0 ? json_pack("{s:o, s:o}", "alltoallw", num(pr[0]),
                                                       "alltoallw-slots", num(pr[1]))
                                           : json_null();
    json_object_set_new(root, "exchange",
                        json_pack("{s:s, s:s, s:o, s:o, s:o}", "a2a",
                                  res->hierarchical ? "hierarchical" : "flat", "regroup",
                                  res->regroup != NULL ? res->regroup : "copy", "regroup_probe",
                                  probe, "dispatch_over_raw",
                                  rd > 0 ? num(res->phase[MOE_PHASE_DISPATCH].max / rd) : json_null(),
                                  "combine_over_raw",
                                  rcb > 0 ? num(res->phase[MOE_PHASE_COMBINE].max / rcb) : json_null()));
    if (res->projected)
        json_object_set_new(
            root, "projection",
            json_pack("{s:s, s:{s:o, s:o}, s:{s:o, s:o}}", "network", res->network, "flat", "dispatch",
                      num(res->proj_flat_dispatch), "combine", num(res->proj_flat_combine),
                      "hierarchical", "dispatch", num(res->proj_hier_dispatch), "combine",
                      num(res->proj_hier_combine)));
    else
        json_object_set_new(root, "projection", json_null());
    json_object_set_new(root, "ablation", ablation);
    json_t *memory = memory_json(res);
    if (memory == NULL)
        config = NULL; /* reported as a failure to build the document */
    else
        json_object_set_new(root, "memory", memory);
    json_object_set(root, "steps", top_steps_or_null(res));
    const moe_training *tr = &res->training;
    json_object_set_new(
        root, "training",
        tr->ran ? json_pack("{s:o, s:o, s:o, s:o, s:{s:o, s:o, s:o}, s:I}", "task_loss",
                            num(tr->task_loss), "aux_loss", num(tr->aux_loss), "z_loss",
                            num(tr->z_loss), "loss",
                            num(tr->task_loss + tr->aux_loss + tr->z_loss), "grad_norm", "router",
                            num(tr->grad_norm_router), "experts", num(tr->grad_norm_experts),
                            "input", num(tr->grad_norm_input), "optimizer_steps",
                            (json_int_t)tr->optimizer_steps)
                : json_null());
    json_object_set_new(root, "dense_baseline", dense_json(res));
    json_object_set_new(root, "per_rank", per_rank_json(res));
    json_object_set_new(root, "verdict", cfg->predict_only ? json_null() : verdict_json(res));
    if (cfg->predict_only) {
        /* nothing moved: the routing-side figures and the traffic the decision makes (and its
         * projection) are meaningful, the measured ones are not */
        const char *keys[] = {"drops", "waste", "timing", "bandwidth", "output", "routing"};
        json_object_set_new(json_object_get(root, "wire"), "y_error", json_null());
        for (size_t j = 0; j < sizeof keys / sizeof keys[0]; j++)
            json_object_set_new(root, keys[j], json_null());
        json_t *ex;
        size_t idx;
        json_array_foreach(experts, idx, ex)
        {
            json_object_set_new(ex, "accepted", json_null());
            json_object_set_new(ex, "dropped", json_null());
            json_object_set_new(ex, "capacity", json_null());
            json_object_set_new(ex, "utilization", json_null());
        }
    }

    if (config == NULL) {
        json_decref(root);
        return NULL;
    }
    return root;
}

int moe_report_json_file(FILE *f, const moe_config *cfg, const moe_results *res, char *msg,
                         size_t msglen)
{
    json_t *root = json_document(cfg, res);
    if (root == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "could not build the JSON report");
    int rc = json_dumpf(root, f, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) == 0 && fputc('\n', f) != EOF
                 ? MOE_OK
                 : moe_fail(MOE_EIO, msg, msglen, "cannot write the JSON report: %s", strerror(errno));
    json_decref(root);
    return rc;
}

/* Open, write with `writer`, commit: the shape of every single-file output. */
static int write_one(const char *path, const char *option, int (*writer)(FILE *, const void *),
                     const void *arg, char *msg, size_t msglen)
{
    moe_outfile o;
    int rc = moe_outfile_open(&o, path, option, false, false, 0.0, msg, msglen);
    if (rc != MOE_OK)
        return rc;
    if (writer(o.f, arg) != MOE_OK) {
        o.failed = true;
        o.err = errno;
    }
    moe_outfile *one = &o;
    return moe_outfiles_commit(&one, 1, msg, msglen);
}

struct json_args {
    const moe_config *cfg;
    const moe_results *res;
};

static int json_writer(FILE *f, const void *arg)
{
    const struct json_args *a = arg;
    char ignored[16];
    return moe_report_json_file(f, a->cfg, a->res, ignored, sizeof ignored);
}

int moe_report_json(const char *path, const moe_config *cfg, const moe_results *res, char *msg,
                    size_t msglen)
{
    struct json_args a = {cfg, res};
    return write_one(path, "--json", json_writer, &a, msg, msglen);
}

int moe_report_routing_csv_file(FILE *f, const moe_route_record *records, int64_t n)
{
    int ok = fprintf(f, "token,choice,expert,gate,accepted,score,rerouted\n") > 0;
    for (int64_t i = 0; ok && i < n; i++)
        ok = fprintf(f, "%lld,%d,%d,%.9g,%d,%.9g,%d\n", (long long)records[i].token,
                     records[i].choice, records[i].expert, records[i].gate, records[i].accepted,
                     records[i].score, records[i].rerouted) > 0;
    return ok ? MOE_OK : MOE_EIO;
}

struct csv_args {
    const moe_route_record *records;
    int64_t n;
};

static int csv_writer(FILE *f, const void *arg)
{
    const struct csv_args *a = arg;
    return moe_report_routing_csv_file(f, a->records, a->n);
}

int moe_report_routing_csv(const char *path, const moe_route_record *records, int64_t n, char *msg,
                           size_t msglen)
{
    struct csv_args a = {records, n};
    return write_one(path, "--dump-routing", csv_writer, &a, msg, msglen);
}

void moe_report_planned_traffic(FILE *out, const moe_results *res)
{
    int64_t total = 0, off_rank = 0, off_node = 0, rows = moe_blocks_total(&res->rows);
    for (int64_t i = 0; i < res->dispatch_bytes.n; i++) {
        const moe_block *e = &res->dispatch_bytes.v[i];
        total += e->val;
        off_rank += e->src != e->dst ? e->val : 0;
        off_node += res->placement[e->src].node != res->placement[e->dst].node ? e->val : 0;
    }
    char tb[32], rb[32], nb[32];
    human_bytes(tb, sizeof tb, (double)total);
    human_bytes(rb, sizeof rb, (double)off_rank);
    human_bytes(nb, sizeof nb, (double)off_node);
    fprintf(out, "Traffic, planned (nothing moved): dispatch %lld rows, %s\n  (%s off-rank, %s "
                 "off-node)\n",
            (long long)rows, tb, rb, nb);
    node_rows_line(out, res);
    if (res->projected) {
        char line[512];
        snprintf(line, sizeof line, "%s: flat dispatch %.3f ms, combine %.3f ms; two-level %.3f / "
                 "%.3f ms", res->network, res->proj_flat_dispatch * 1e3,
                 res->proj_flat_combine * 1e3, res->proj_hier_dispatch * 1e3,
                 res->proj_hier_combine * 1e3);
        print_wrapped(out, "  projected onto ", "    ", line);
    }
    fputc('\n', out);
}

/* ------------------------------------------------------------------ steps (--steps) */

static json_t *steps_of(const moe_results *top)
{
    return (json_t *)top->steps;
}

int moe_report_step_add(moe_results *top, const moe_results *r, int step,
                        const moe_step_prediction *pred, const float *bias)
{
    if (top->steps == NULL && (top->steps = json_array()) == NULL)
        return MOE_ENOMEM;
    int E = r->experts;
    json_t *routed = json_array();
    for (int e = 0; routed && e < E; e++)
        json_array_append_new(routed, json_integer(r->routed[e]));
    json_t *timing = json_object();
    for (int p = 0; timing && p < MOE_PHASE_COUNT; p++)
        if (!moe_phase_is_backward(p) || !isnan(r->phase[p].mean))
            json_object_set_new(timing, moe_phase_name(p), summary_json(r->phase[p]));
    if (timing)
        json_object_set_new(timing, "step", summary_json(r->step));
    json_t *predicted = json_null();
    if (pred != NULL && pred->valid)
        predicted = json_pack("{s:s, s:o, s:o, s:o, s:o}", "from", "previous step",
                              "expected_dropped_assignments", num(pred->dropped),
                              "expected_empty_slots", num(pred->empty), "error_dropped_assignments",
                              num(pred->dropped - (double)r->dropped_assignments),
                              "error_empty_slots", num(pred->empty - (double)r->empty_slots));
    json_t *o = json_pack("{s:i, s:o, s:o, s:o, s:{s:I, s:o}, s:o, s:o}", "step", step, "routed",
                          routed, "drops", drops_json(r), "load_balance", balance_json(r),
                          "waste", "empty_slots", (json_int_t)r->empty_slots, "flops_wasted",
                          num(r->flops_wasted), "timing", timing, "predicted", predicted);
    if (o == NULL)
        return MOE_ENOMEM;
    json_t *b = json_null();
    if (bias != NULL) {
        b = json_array();
        for (int e = 0; b && e < E; e++)
            json_array_append_new(b, json_real(bias[e]));
    }
    json_object_set_new(o, "expert_bias", b);
    bool tr = r->training.ran;
    json_object_set_new(o, "task_loss", tr ? num(r->training.task_loss) : json_null());
    json_object_set_new(o, "aux_loss", tr ? num(r->training.aux_loss) : json_null());
    json_object_set_new(o, "z_loss", tr ? num(r->training.z_loss) : json_null());
    if (json_array_append_new(steps_of(top), o) != 0)
        return MOE_ENOMEM;
    return MOE_OK;
}

void moe_report_steps_free(moe_results *top)
{
    json_decref(steps_of(top));
    top->steps = NULL;
}

/* One CSV field from a JSON number (empty for null or missing). */
static int csv_number(FILE *f, const json_t *v)
{
    if (json_is_integer(v))
        return fprintf(f, ",%lld", (long long)json_integer_value(v)) > 0;
    if (json_is_real(v))
        return fprintf(f, ",%.17g", json_real_value(v)) > 0;
    return fputc(',', f) != EOF;
}

int moe_report_steps_csv_file(FILE *f, const moe_results *top)
{
    static const char *const cols[][2] = {
        {"drops", "dropped_assignments"},  {"drops", "dropped_tokens"},
        {"waste", "empty_slots"},          {"load_balance", "max_over_mean"},
        {"load_balance", "gini"},          {"load_balance", "entropy"},
        {"load_balance", "aux_loss"},      {"load_balance", "z_loss"},
        {"load_balance", "rank_overload"}, {"drops", "max_expert_load"},
        {"drops", "cf_needed"},            {"predicted", "expected_dropped_assignments"},
        {"predicted", "expected_empty_slots"}, {NULL, "task_loss"},
        {NULL, "aux_loss"},                {NULL, "z_loss"}};
    static const char *const names[] = {
        "dropped_assignments", "dropped_tokens", "empty_slots", "max_over_mean", "gini", "entropy",
        "aux_loss", "z_loss", "rank_overload", "max_expert_load", "cf_needed",
        "predicted_dropped_assignments", "predicted_empty_slots", "task_loss",
        "train_aux_loss", "train_z_loss"};
    static const char *const times[] = {"step", "dispatch", "combine", "expert"};
    int ok = fputs("step", f) != EOF;
    for (size_t c = 0; ok && c < sizeof names / sizeof names[0]; c++)
        ok = fprintf(f, ",%s", names[c]) > 0;
    for (size_t c = 0; ok && c < sizeof times / sizeof times[0]; c++)
        ok = fprintf(f, ",%s_seconds", times[c]) > 0;
    for (int e = 0; ok && e < top->experts; e++)
        ok = fprintf(f, ",routed_%d", e) > 0;
    ok = ok && fputc('\n', f) != EOF;
    size_t i;
    json_t *st;
    json_array_foreach(steps_of(top), i, st)
    {
        ok = ok && fprintf(f, "%lld", (long long)json_integer_value(json_object_get(st, "step"))) > 0;
        for (size_t c = 0; ok && c < sizeof cols / sizeof cols[0]; c++)
            ok = csv_number(f, json_object_get(cols[c][0] ? json_object_get(st, cols[c][0]) : st,
                                               cols[c][1]));
        json_t *timing = json_object_get(st, "timing");
        for (size_t c = 0; ok && c < sizeof times / sizeof times[0]; c++)
            ok = csv_number(f, json_object_get(json_object_get(timing, times[c]), "max"));
        size_t e;
        json_t *v;
        json_array_foreach(json_object_get(st, "routed"), e, v) if (ok) ok = csv_number(f, v);
        ok = ok && fputc('\n', f) != EOF;
    }
    return ok ? MOE_OK : MOE_EIO;
}

/* first, last, min and max of steps[].<group>.<key> (scale times), as one row */
static void steps_row(FILE *out, const json_t *steps, const char *label, const char *group,
                      const char *key, const char *sub, double scale, const char *fmt)
{
    size_t i, n = json_array_size(steps);
    json_t *st;
    double first = 0, last = 0, lo = 0, hi = 0;
    bool any = false;
    json_array_foreach(steps, i, st)
    {
        json_t *v = json_object_get(group ? json_object_get(st, group) : st, key);
        if (sub != NULL)
            v = json_object_get(v, sub);
        if (!json_is_number(v))
            continue;
        double x = json_number_value(v) * scale;
        if (!any)
            first = lo = hi = x;
        any = true;
        last = x;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    if (!any || n == 0)
        return;
    char cell[4][32];
    const double vals[4] = {first, last, lo, hi};
    for (int c = 0; c < 4; c++)
        snprintf(cell[c], sizeof cell[c], fmt, vals[c]);
    fprintf(out, "  %-30s %12s %12s %12s %12s\n", label, cell[0], cell[1], cell[2], cell[3]);
}

void moe_report_steps_text(FILE *out, const moe_config *cfg, const moe_results *top)
{
    const json_t *steps = steps_of(top);
    size_t n = json_array_size(steps);
    if (n < 2)
        return;
    fprintf(out, "\nSteps: %zu batches, each drawn from (seed %llu, step)%s; --iters %d each\n", n,
            (unsigned long long)cfg->seed,
            cfg->tokens_file || cfg->logits_file ? " as the next slice of the file" : "",
            cfg->iters);
    fprintf(out, "  %-30s %12s %12s %12s %12s\n", "quantity", "first", "last", "min", "max");
    steps_row(out, steps, "dropped assignments", "drops", "dropped_assignments", NULL, 1, "%.0f");
    steps_row(out, steps, "dropped tokens", "drops", "dropped_tokens", NULL, 1, "%.0f");
    steps_row(out, steps, "empty slots", "waste", "empty_slots", NULL, 1, "%.0f");
    steps_row(out, steps, "max / mean load", "load_balance", "max_over_mean", NULL, 1, "%.3f");
    steps_row(out, steps, "Gini of the loads", "load_balance", "gini", NULL, 1, "%.4f");
    steps_row(out, steps, "aux loss (E sum f P)", "load_balance", "aux_loss", NULL, 1, "%.4f");
    if (top->training.ran) {
        steps_row(out, steps, "task loss (MSE to teacher)", NULL, "task_loss", NULL, 1, "%.5f");
        if (cfg->aux_loss_coeff > 0)
            steps_row(out, steps, "aux loss x alpha", NULL, "aux_loss", NULL, 1, "%.5f");
        if (cfg->z_loss_coeff > 0)
            steps_row(out, steps, "z-loss x beta", NULL, "z_loss", NULL, 1, "%.5f");
        steps_row(out, steps, "rank overload", "load_balance", "rank_overload", NULL, 1, "%.3f");
        steps_row(out, steps, "entropy of the loads", "load_balance", "entropy", NULL, 1, "%.4f");
    }
    steps_row(out, steps, "step ms (slowest rank)", "timing", "step", "max", 1e3, "%.3f");
    /* how well the previous batch predicts the next */
    double err = 0, worst = 0;
    size_t m = 0, i;
    json_t *st;
    json_array_foreach(steps, i, st)
    {
        json_t *e = json_object_get(json_object_get(st, "predicted"), "error_dropped_assignments");
        if (!json_is_number(e))
            continue;
        double a = fabs(json_number_value(e));
        err += a;
        worst = a > worst ? a : worst;
        m++;
    }
    if (m > 0)
        fprintf(out, "  drops predicted from the previous step's loads: mean |error| %.1f, worst %.1f "
                     "over %zu steps\n",
                err / (double)m, worst, m);
    fprintf(out, "  every step: JSON steps[]%s%s\n", cfg->steps_csv ? ", CSV " : "",
            cfg->steps_csv ? cfg->steps_csv : "");
}
