/* Unit tests of report: bars, the JSON document, the routing CSV, writability checks, and a smoke
 * test of the text report. */
#include "moesim/config.h"
#include "moesim/error.h"
#include "moesim/report.h"
#include "moesim/stats.h"

#include <check.h>
#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "expect.h"
#include "scratch.h"

/* Scratch directory made by main and removed by main after the run (even if a forked test fails);
 * each test works in its own subdirectory. */
static char g_dir[] = "/tmp/moesim-report-XXXXXX";

static void fresh_dir(char *dir, size_t len, const char *tag)
{
    ck_assert_int_lt(snprintf(dir, len, "%s/%s", g_dir, tag), (int)len);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
}

static void join(char *buf, size_t len, const char *dir, const char *name)
{
    ck_assert_int_lt(snprintf(buf, len, "%s/%s", dir, name), (int)len);
}

/* Display cells of a UTF-8 string: bytes that do not continue a character. */
static int cells(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static int count_substr(const char *s, const char *sub)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, sub)) != NULL; p += strlen(sub))
        n++;
    return n;
}

/* ---- bar ---- */

START_TEST(test_bar_widths)
{
    char buf[3 * 40 + 2];
    moe_report_bar(buf, 0.0, 10);
    ck_assert_str_eq(buf, "");
    moe_report_bar(buf, 0.5, 10);
    ck_assert_str_eq(buf, "█████");
    moe_report_bar(buf, 1.0, 10);
    ck_assert_int_eq(count_substr(buf, "█"), 10);
    ck_assert_int_eq(cells(buf), 10);
    ck_assert_ptr_null(strchr(buf, '>'));
    moe_report_bar(buf, 1.7, 10); /* clipped to full, marked */
    ck_assert_int_eq(count_substr(buf, "█"), 10);
    ck_assert_int_eq(cells(buf), 11);
    ck_assert(buf[strlen(buf) - 1] == '>');
    /* eighths: 0.55 * 10 cells = 44 eighths = 5 full + a half block */
    moe_report_bar(buf, 0.55, 10);
    ck_assert_str_eq(buf, "█████▌");
    /* rounded to the nearest eighth: 0.549 * 80 = 43.92 eighths -> 44, 0.544 * 80 = 43.52 -> 44,
     * 0.543 * 80 = 43.44 -> 43 (a three-eighths block) */
    moe_report_bar(buf, 0.549, 10);
    ck_assert_str_eq(buf, "█████▌");
    moe_report_bar(buf, 0.543, 10);
    ck_assert_str_eq(buf, "█████▍");
    moe_report_bar(buf, 1.0 / 80, 10); /* one eighth */
    ck_assert_str_eq(buf, "▏");
    /* width 0, negative and NaN fractions */
    moe_report_bar(buf, 0.5, 0);
    ck_assert_str_eq(buf, "");
    moe_report_bar(buf, 2.0, 0);
    ck_assert_str_eq(buf, ">");
    moe_report_bar(buf, -0.3, 10);
    ck_assert_str_eq(buf, "");
    moe_report_bar(buf, NAN, 10);
    ck_assert_str_eq(buf, "");
}
END_TEST

START_TEST(test_bar_fits_documented_buffer)
{
    /* Every fraction on a fine grid, for several widths: the bar has at most width cells (+1 for
     * '>'), grows with the fraction, and never writes beyond 3 * width + 2 bytes. */
    for (int width = 1; width <= 30; width += 7) {
        int prev = 0;
        for (int i = 0; i <= 1300; i++) {
            double fr = i / 1000.0;
            char buf[3 * 30 + 2 + 16];
            memset(buf, '#', sizeof buf);
            moe_report_bar(buf, fr, width);
            size_t need = (size_t)(3 * width + 2);
            EXPECT_MSG(strlen(buf) + 1 <= need, "width %d fraction %g: %zu bytes", width, fr,
                          strlen(buf) + 1);
            for (size_t b = need; b < sizeof buf; b++)
                EXPECT(buf[b] == '#');
            int c = cells(buf) - (fr > 1.0);
            EXPECT(c <= width);
            EXPECT(c >= prev || fr > 1.0);
            prev = c;
        }
    }
}
END_TEST

/* ---- a small results struct, by hand ---- */

/* E = 4 experts on R = 2 ranks, N = 8 tokens, k = 2; capacity 5 per expert. */
static void small_results(moe_results *r, moe_config *cfg)
{
    moe_config_defaults(cfg);
    cfg->tokens = 8;
    cfg->hidden = 4;
    cfg->ffn = 8;
    cfg->experts = 4;
    cfg->top_k = 2;
    ck_assert_int_eq(moe_results_init(r, 4, 2, 1), MOE_OK);
    r->top_k = 2;
    r->tokens = 8;
    r->hidden = 4;
    r->ffn = 8;
    const int64_t routed[] = {7, 4, 3, 2}, accepted[] = {5, 4, 3, 2};
    for (int e = 0; e < 4; e++) {
        r->owner[e] = e / 2;
        r->routed[e] = routed[e];
        r->accepted[e] = accepted[e];
        r->capacity[e] = 5;
        r->f[e] = (double)routed[e] / 16;
        r->P[e] = 0.25;
    }
    r->aux_loss = 1.0;
    r->dropped_tokens = 1;
    moe_results_totals(r, 4.0 * 4 * 8);
    const int64_t bytes[] = {64, 32, 16, 96};
    ck_assert_int_eq(moe_blocks_from_dense(&r->dispatch_bytes, bytes, 2, 1, false), MOE_OK);
    ck_assert_int_eq(moe_blocks_from_dense(&r->combine_bytes, bytes, 2, 1, false), MOE_OK);
    r->matrix_full = true;
    for (int p = 0; p < MOE_PHASE_COUNT; p++)
        r->phase[p] = (moe_summary){0.001 * p, 0.0015 * p, 0.002 * p};
    r->step = (moe_summary){0.03, 0.04, 0.05};
    r->dispatch_bytes_per_second = 1e9;
    r->combine_bytes_per_second = 2e9;
    r->output_checksum = -12.5;
    /* single iterations: phase p from 0.0005 p to 0.0025 p (a spread of 400%), step 0.02 to 0.06 */
    for (int p = 0; p < MOE_PHASE_COUNT; p++)
        r->phase_iter[p] = (moe_spread){0.0005 * p, 0.0025 * p};
    r->step_iter = (moe_spread){0.02, 0.06};
    r->dispatch_a2a = (moe_a2a_bandwidth){.algbw = 3e9, .busbw = 1.5e9, .send_bytes = 96,
                                          .off_rank_bytes = 48, .off_node_bytes = 32};
    r->combine_a2a = (moe_a2a_bandwidth){.algbw = 4e9, .busbw = 2e9, .send_bytes = 112,
                                         .off_rank_bytes = 48, .off_node_bytes = 32};
    /* two ranks on one host, emulated as two nodes; a quiet machine */
    for (int q = 0; q < 2; q++) {
        r->placement[q].rank = q;
        r->placement[q].node = q;
        snprintf(r->placement[q].host, sizeof r->placement[q].host, "host-a");
    }
    r->env.cores = 8;
    r->env.load_start = 0.5;
    r->env.load_end = 0.75;
    snprintf(r->env.utc, sizeof r->env.utc, "2026-12-01T20:15:03Z");
    snprintf(r->env.mpi_library, sizeof r->env.mpi_library, "Open MPI v4.1.4");
    snprintf(r->env.openblas, sizeof r->env.openblas, "OpenBLAS 0.3.21");
}

/* The value at a dotted path ("config.seed"), or NULL. */
static json_t *at(json_t *root, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *v = root;
    for (char *save = NULL, *key = strtok_r(buf, ".", &save); key && v;
         key = strtok_r(NULL, ".", &save))
        v = json_object_get(v, key);
    return v;
}

/* Every key of docs/json.md with its type: i int, n number, s string, S string or null, b bool,
 * l list, o object, N number or null, I int or null. */
static const struct {
    const char *path;
    char type;
} documented_keys[] = {
    {"moesim_version", 's'}, {"config.ranks", 'i'}, {"config.experts", 'i'}, {"config.top_k", 'i'},
    {"config.capacity_factor", 'n'}, {"config.tokens", 'i'}, {"config.hidden", 'i'},
    {"config.ffn", 'i'}, {"config.capacity_scope", 's'}, {"config.drop_policy", 's'},
    {"config.seed", 'i'}, {"config.renormalize", 'b'}, {"config.pad_to_capacity", 'b'},
    {"config.iters", 'i'}, {"config.warmup", 'i'}, {"config.tokens_file", 'S'},
    {"config.router_file", 'S'}, {"experts", 'l'}, {"load_balance.f", 'l'}, {"load_balance.P", 'l'},
    {"load_balance.aux_loss", 'n'}, {"drops.assignments", 'i'}, {"drops.dropped_assignments", 'i'},
    {"drops.dropped_tokens", 'i'}, {"waste.slots", 'i'}, {"waste.empty_slots", 'i'},
    {"waste.flops_useful", 'n'}, {"waste.flops_wasted", 'n'}, {"waste.padded", 'b'},
    {"traffic.dispatch_bytes", 'l'}, {"traffic.combine_bytes", 'l'}, {"timing.step", 'o'},
    {"bandwidth.dispatch_bytes_per_second", 'n'}, {"bandwidth.combine_bytes_per_second", 'n'},
    {"output.checksum", 'n'}, {"timing.dispatch.iter_min", 'n'}, {"timing.dispatch.iter_max", 'n'},
    {"timing.step.iter_min", 'n'}, {"timing.step.iter_max", 'n'}, {"bandwidth.dispatch", 'o'},
    {"bandwidth.dispatch.algbw", 'n'}, {"bandwidth.dispatch.busbw", 'n'},
    {"bandwidth.dispatch.off_rank_bytes", 'i'}, {"bandwidth.dispatch.off_node_bytes", 'i'},
    {"bandwidth.combine.algbw", 'n'}, {"bandwidth.combine.busbw", 'n'},
    {"bandwidth.combine.off_rank_bytes", 'i'}, {"bandwidth.combine.off_node_bytes", 'i'},
    {"environment.hosts", 'l'}, {"environment.cores", 'I'}, {"environment.load_average_start", 'N'},
    {"environment.load_average_end", 'N'}, {"environment.openmpi", 's'},
    {"environment.openblas", 's'}, {"environment.moesim", 's'}, {"environment.utc", 'S'},
    {"environment.warnings", 'l'},
};

static int has_type(json_t *v, char type)
{
    switch (type) {
    case 'i': return json_is_integer(v);
    case 'n': return json_is_number(v);
    case 's': return json_is_string(v);
    case 'S': return json_is_string(v) || json_is_null(v);
    case 'b': return json_is_boolean(v);
    case 'l': return json_is_array(v);
    case 'o': return json_is_object(v);
    case 'N': return json_is_number(v) || json_is_null(v);
    case 'I': return json_is_integer(v) || json_is_null(v);
    }
    return 0;
}

START_TEST(test_json_document)
{
    moe_results r;
    moe_config cfg;
    small_results(&r, &cfg);
    char dir[400], path[512], msg[512] = "";
    fresh_dir(dir, sizeof dir, "json");
    join(path, sizeof path, dir, "out.json");
    ck_assert_msg(moe_report_json(path, &cfg, &r, msg, sizeof msg) == MOE_OK, "%s", msg);
    ck_assert_int_eq(count_entries(dir), 1); /* no temporary file left beside it */

    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    ck_assert_msg(root != NULL, "jansson cannot load it: %s line %d", err.text, err.line);
    ck_assert(json_is_object(root));
    /* The documented top-level keys and their types. */
    ck_assert(json_is_object(json_object_get(root, "config")));
    ck_assert(json_is_array(json_object_get(root, "experts")));
    ck_assert(json_is_object(json_object_get(root, "load_balance")));
    ck_assert(json_is_object(json_object_get(root, "drops")));
    ck_assert(json_is_object(json_object_get(root, "waste")));
    ck_assert(json_is_object(json_object_get(root, "traffic")));
    ck_assert(json_is_object(json_object_get(root, "timing")));
    ck_assert_str_eq(json_string_value(json_object_get(root, "moesim_version")), MOE_VERSION);
    for (size_t i = 0; i < sizeof documented_keys / sizeof *documented_keys; i++) {
        json_t *v = at(root, documented_keys[i].path);
        ck_assert_msg(v != NULL, "documented key %s is missing", documented_keys[i].path);
        ck_assert_msg(has_type(v, documented_keys[i].type), "key %s has the wrong type",
                      documented_keys[i].path);
    }
    static const char *const expert_keys[] = {"id", "rank", "routed", "accepted", "dropped"};
    for (size_t e = 0; e < json_array_size(json_object_get(root, "experts")); e++) {
        json_t *o = json_array_get(json_object_get(root, "experts"), e);
        for (int i = 0; i < 5; i++)
            ck_assert_msg(json_is_integer(json_object_get(o, expert_keys[i])), "experts[%zu].%s", e,
                          expert_keys[i]);
        ck_assert(json_is_integer(json_object_get(o, "capacity")));
        ck_assert(json_is_number(json_object_get(o, "utilization")));
    }

    json_t *config = json_object_get(root, "config");
    ck_assert_int_eq(json_integer_value(json_object_get(config, "experts")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(config, "ranks")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(config, "top_k")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(config, "tokens")), 8);
    ck_assert(json_real_value(json_object_get(config, "capacity_factor")) == 1.25);
    ck_assert_str_eq(json_string_value(json_object_get(config, "capacity_scope")), "global");
    ck_assert_str_eq(json_string_value(json_object_get(config, "drop_policy")), "position");
    ck_assert(json_is_null(json_object_get(config, "tokens_file")));

    json_t *experts = json_object_get(root, "experts");
    ck_assert_uint_eq(json_array_size(experts), 4);
    json_t *e0 = json_array_get(experts, 0), *e3 = json_array_get(experts, 3);
    ck_assert_int_eq(json_integer_value(json_object_get(e0, "id")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(e0, "routed")), 7);
    ck_assert_int_eq(json_integer_value(json_object_get(e0, "accepted")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(e0, "dropped")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(e0, "capacity")), 5);
    ck_assert(json_real_value(json_object_get(e0, "utilization")) == 1.0);
    ck_assert_int_eq(json_integer_value(json_object_get(e3, "rank")), 1);
    ck_assert(json_real_value(json_object_get(e3, "utilization")) == 0.4);

    json_t *lb = json_object_get(root, "load_balance");
    ck_assert(json_real_value(json_object_get(lb, "aux_loss")) == 1.0);
    ck_assert_uint_eq(json_array_size(json_object_get(lb, "f")), 4);
    ck_assert_uint_eq(json_array_size(json_object_get(lb, "P")), 4);
    ck_assert(json_real_value(json_array_get(json_object_get(lb, "f"), 0)) == 7.0 / 16);

    json_t *drops = json_object_get(root, "drops");
    ck_assert_int_eq(json_integer_value(json_object_get(drops, "assignments")), 16);
    ck_assert_int_eq(json_integer_value(json_object_get(drops, "dropped_assignments")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(drops, "dropped_tokens")), 1);
    json_t *waste = json_object_get(root, "waste");
    ck_assert_int_eq(json_integer_value(json_object_get(waste, "slots")), 20);
    ck_assert_int_eq(json_integer_value(json_object_get(waste, "empty_slots")), 6);
    ck_assert(json_is_false(json_object_get(waste, "padded")));

    json_t *disp = json_object_get(json_object_get(root, "traffic"), "dispatch_bytes");
    ck_assert_uint_eq(json_array_size(disp), 2);
    ck_assert_int_eq(json_integer_value(json_array_get(json_array_get(disp, 1), 0)), 16); /* [1][0] */
    ck_assert_int_eq(json_integer_value(json_array_get(json_array_get(disp, 0), 1)), 32); /* [0][1] */
    ck_assert(json_is_array(json_object_get(json_object_get(root, "traffic"), "combine_bytes")));

    json_t *timing = json_object_get(root, "timing");
    for (int p = 0; p < MOE_PHASE_COUNT; p++) {
        json_t *ph = json_object_get(timing, moe_phase_name(p));
        ck_assert_msg(json_is_object(ph), "timing lacks %s", moe_phase_name(p));
        /* printed with 17 significant digits: 1e-12 relative is far inside that */
        ck_assert_double_eq_tol(json_real_value(json_object_get(ph, "max")), 0.002 * p, 1e-12);
        ck_assert(json_object_get(ph, "min") && json_object_get(ph, "mean"));
    }
    ck_assert(json_real_value(json_object_get(json_object_get(timing, "step"), "mean")) == 0.04);
    for (int p = 0; p < MOE_PHASE_COUNT; p++) {
        json_t *ph = json_object_get(timing, moe_phase_name(p));
        /* 17 significant digits read back: 1e-15 absolute is far inside that for these sizes */
        double lo = json_real_value(json_object_get(ph, "iter_min"));
        double hi = json_real_value(json_object_get(ph, "iter_max"));
        ck_assert_double_eq_tol(lo, 0.0005 * p, 1e-15);
        ck_assert_double_eq_tol(hi, 0.0025 * p, 1e-15);
    }
    ck_assert(json_real_value(at(root, "timing.step.iter_min")) == 0.02);
    ck_assert(json_real_value(at(root, "timing.step.iter_max")) == 0.06);
    /* the existing rates stay beside the nccl-tests figures */
    ck_assert(json_real_value(at(root, "bandwidth.dispatch_bytes_per_second")) == 1e9);
    ck_assert(json_real_value(at(root, "bandwidth.dispatch.algbw")) == 3e9);
    ck_assert(json_real_value(at(root, "bandwidth.dispatch.busbw")) == 1.5e9);
    ck_assert(json_real_value(at(root, "bandwidth.combine.algbw")) == 4e9);
    ck_assert(json_real_value(at(root, "bandwidth.combine.busbw")) == 2e9);
    ck_assert_int_eq(json_integer_value(at(root, "bandwidth.combine.off_rank_bytes")), 48);
    ck_assert_int_eq(json_integer_value(at(root, "bandwidth.dispatch.off_node_bytes")), 32);
    ck_assert_ptr_null(at(root, "bandwidth.dispatch.send_bytes")); /* not a documented key */
    /* environment: one host for two ranks; the probed values as given */
    json_t *hosts = at(root, "environment.hosts");
    ck_assert_uint_eq(json_array_size(hosts), 1);
    ck_assert_str_eq(json_string_value(json_array_get(hosts, 0)), "host-a");
    ck_assert_int_eq(json_integer_value(at(root, "environment.cores")), 8);
    ck_assert(json_real_value(at(root, "environment.load_average_start")) == 0.5);
    ck_assert(json_real_value(at(root, "environment.load_average_end")) == 0.75);
    ck_assert_str_eq(json_string_value(at(root, "environment.utc")), "2026-12-01T20:15:03Z");
    ck_assert_str_eq(json_string_value(at(root, "environment.openmpi")), "Open MPI v4.1.4");
    ck_assert_str_eq(json_string_value(at(root, "environment.openblas")), "OpenBLAS 0.3.21");
    ck_assert_str_eq(json_string_value(at(root, "environment.moesim")), MOE_VERSION);
    /* the dispatch and combine times spread 400%: one warning each, without a prefix */
    json_t *warnings = at(root, "environment.warnings");
    ck_assert_uint_eq(json_array_size(warnings), 2);
    ck_assert_msg(strncmp(json_string_value(json_array_get(warnings, 0)),
                          "dispatch times spread 400%", 26) == 0,
                  "%s", json_string_value(json_array_get(warnings, 0)));
    ck_assert_msg(strncmp(json_string_value(json_array_get(warnings, 1)),
                          "combine times spread 400%", 25) == 0,
                  "%s", json_string_value(json_array_get(warnings, 1)));
    json_decref(root);

    /* a distinct host per rank, a loaded machine, and the probes that failed: null, not absent */
    snprintf(r.placement[1].host, sizeof r.placement[1].host, "host-b");
    r.env.load_start = 9.0;
    r.env.load_end = NAN;
    r.env.cores = -1;
    r.env.utc[0] = '\0';
    ck_assert_int_eq(moe_report_json(path, &cfg, &r, msg, sizeof msg), MOE_OK);
    root = json_load_file(path, 0, &err);
    ck_assert_ptr_nonnull(root);
    hosts = at(root, "environment.hosts");
    ck_assert_uint_eq(json_array_size(hosts), 2);
    ck_assert_str_eq(json_string_value(json_array_get(hosts, 1)), "host-b");
    ck_assert(json_is_null(at(root, "environment.cores")));
    ck_assert(json_is_null(at(root, "environment.load_average_end")));
    ck_assert(json_is_null(at(root, "environment.utc")));
    /* cores unknown: the load is not judged, only the two spreads are warned about */
    ck_assert_uint_eq(json_array_size(at(root, "environment.warnings")), 2);
    json_decref(root);
    r.env.cores = 4; /* 9 > 4 at the start: warned first */
    ck_assert_int_eq(moe_report_json(path, &cfg, &r, msg, sizeof msg), MOE_OK);
    root = json_load_file(path, 0, &err);
    ck_assert_ptr_nonnull(root);
    warnings = at(root, "environment.warnings");
    ck_assert_uint_eq(json_array_size(warnings), 3);
    ck_assert_str_eq(json_string_value(json_array_get(warnings, 0)),
                     "load average 9.00 at the start exceeds the 4 online cores: the machine was "
                     "shared");
    json_decref(root);
    /* --predict-only: bandwidth is null as before; environment is still filled */
    cfg.predict_only = true;
    ck_assert_int_eq(moe_report_json(path, &cfg, &r, msg, sizeof msg), MOE_OK);
    root = json_load_file(path, 0, &err);
    ck_assert_ptr_nonnull(root);
    ck_assert(json_is_null(json_object_get(root, "bandwidth")));
    ck_assert(json_is_null(json_object_get(root, "timing")));
    ck_assert(json_is_object(json_object_get(root, "environment")));
    json_decref(root);
    cfg.predict_only = false;

    /* Dropless experts: capacity and utilization are null. */
    for (int e = 0; e < 4; e++)
        r.capacity[e] = -1;
    cfg.tokens_file = "h.npy";
    ck_assert_int_eq(moe_report_json(path, &cfg, &r, msg, sizeof msg), MOE_OK); /* overwrites */
    root = json_load_file(path, 0, &err);
    ck_assert_ptr_nonnull(root);
    e0 = json_array_get(json_object_get(root, "experts"), 0);
    ck_assert(json_is_null(json_object_get(e0, "capacity")));
    ck_assert(json_is_null(json_object_get(e0, "utilization")));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(root, "config"), "tokens_file")),
                     "h.npy");
    json_decref(root);
    ck_assert_int_eq(count_entries(dir), 1);
    moe_results_free(&r);
}
END_TEST

START_TEST(test_json_unwritable)
{
    moe_results r;
    moe_config cfg;
    small_results(&r, &cfg);
    char dir[400], path[512], msg[512] = "";
    fresh_dir(dir, sizeof dir, "json_fail");
    join(path, sizeof path, dir, "missing/out.json");
    ck_assert_int_eq(moe_report_json(path, &cfg, &r, msg, sizeof msg), MOE_EIO);
    ck_assert_ptr_nonnull(strstr(msg, "out.json"));
    ck_assert_int_eq(count_entries(dir), 0);
    /* rename onto a directory fails: the temporary is removed */
    join(path, sizeof path, dir, "a_dir");
    ck_assert_int_eq(mkdir(path, 0700), 0);
    ck_assert_int_eq(moe_report_json(path, &cfg, &r, msg, sizeof msg), MOE_EIO);
    ck_assert_int_eq(count_entries(dir), 1);
    moe_results_free(&r);
}
END_TEST

/* JSON has no NaN or infinity: json_real refuses them, and in the first version of moe_report_json
 * that made the enclosing json_pack return NULL, so the key ("output", "load_balance", a phase of
 * "timing") vanished while the call returned MOE_OK. The documented keys must all be there, with
 * null where the value is not finite (or the call must fail). */
START_TEST(test_json_non_finite_keeps_keys)
{
    moe_results r;
    moe_config cfg;
    small_results(&r, &cfg);
    char dir[400], path[512], msg[512] = "";
    fresh_dir(dir, sizeof dir, "json_nan");
    join(path, sizeof path, dir, "out.json");
    r.output_checksum = INFINITY;
    r.aux_loss = NAN;
    r.phase[MOE_PHASE_EXPERT].max = NAN;
    r.f[1] = -INFINITY;
    r.dispatch_bytes_per_second = INFINITY;
    r.env.load_start = NAN;
    r.phase_iter[MOE_PHASE_COMBINE].iter_max = INFINITY;
    r.combine_a2a.busbw = NAN;
    int rc = moe_report_json(path, &cfg, &r, msg, sizeof msg);
    if (rc != MOE_OK) { /* refusing is allowed, but then with a message and no file */
        ck_assert(msg[0] != '\0');
        ck_assert_int_eq(count_entries(dir), 0);
    } else {
        json_error_t err;
        json_t *root = json_load_file(path, 0, &err);
        ck_assert_msg(root != NULL, "%s", err.text);
        json_t *lb = json_object_get(root, "load_balance");
        ck_assert_msg(lb != NULL, "'load_balance' dropped (aux_loss NaN)");
        ck_assert(json_is_null(json_object_get(lb, "aux_loss")));
        ck_assert_uint_eq(json_array_size(json_object_get(lb, "f")), 4);
        ck_assert(json_is_null(json_array_get(json_object_get(lb, "f"), 1)));
        ck_assert(json_real_value(json_array_get(json_object_get(lb, "f"), 0)) == 7.0 / 16);
        json_t *out = json_object_get(root, "output");
        ck_assert_msg(out != NULL, "'output' dropped (checksum inf)");
        ck_assert(json_is_null(json_object_get(out, "checksum")));
        json_t *ex = json_object_get(json_object_get(root, "timing"), "expert");
        ck_assert_msg(ex != NULL, "'timing.expert' dropped (max NaN)");
        ck_assert(json_is_null(json_object_get(ex, "max")));
        /* small_results sets phase p to (0.001 p, 0.0015 p, 0.002 p) */
        ck_assert_double_eq_tol(json_real_value(json_object_get(ex, "min")),
                                0.001 * MOE_PHASE_EXPERT, 1e-12);
        json_t *bw = json_object_get(root, "bandwidth");
        ck_assert_msg(bw != NULL, "'bandwidth' dropped");
        ck_assert(json_real_value(json_object_get(bw, "combine_bytes_per_second")) == 2e9);
        ck_assert(json_is_null(at(root, "environment.load_average_start")));
        ck_assert(json_is_null(at(root, "timing.combine.iter_max")));
        ck_assert(json_is_null(at(root, "bandwidth.combine.busbw")));
        json_decref(root);
    }
    moe_results_free(&r);
}
END_TEST

/* ---- routing CSV ---- */

START_TEST(test_routing_csv)
{
    const moe_route_record rec[] = {
        {0, 0, 3, 0.5f, 1, 0.75f, 0},
        {0, 1, 1, 0.25f, 0, 0.5f, 0},
        {1, 0, 2, 0.125f, 1, 0.375f, 1},
        {12345678901LL, 1, 7, 1.0f, 1, -2.5f, 0}};
    char dir[400], path[512], msg[512] = "";
    fresh_dir(dir, sizeof dir, "csv");
    join(path, sizeof path, dir, "routing.csv");
    ck_assert_msg(moe_report_routing_csv(path, rec, 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char text[1024];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    ck_assert_str_eq(text, "token,choice,expert,gate,accepted,score,rerouted\n"
                           "0,0,3,0.5,1,0.75,0\n"
                           "0,1,1,0.25,0,0.5,0\n"
                           "1,0,2,0.125,1,0.375,1\n"
                           "12345678901,1,7,1,1,-2.5,0\n");
    ck_assert_int_eq(count_entries(dir), 1);
    /* A gate that is not a short decimal is printed with 9 significant digits: reads back to the
     * same float. */
    const moe_route_record one[] = {{5, 0, 0, 1.0f / 3.0f, 1, 1.0f / 3.0f, 0}};
    ck_assert_int_eq(moe_report_routing_csv(path, one, 1, msg, sizeof msg), MOE_OK);
    f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    long long tok;
    int choice, expert, acc;
    float gate;
    ck_assert_int_eq(fscanf(f, "token,choice,expert,gate,accepted,score,rerouted\n%lld,%d,%d,%f,%d",
                            &tok, &choice, &expert, &gate, &acc),
                     5);
    fclose(f);
    ck_assert(gate == 1.0f / 3.0f && tok == 5);
    /* No records: the header alone. */
    ck_assert_int_eq(moe_report_routing_csv(path, rec, 0, msg, sizeof msg), MOE_OK);
    f = fopen(path, "r");
    n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    ck_assert_str_eq(text, "token,choice,expert,gate,accepted,score,rerouted\n");
}
END_TEST

START_TEST(test_routing_csv_unwritable)
{
    const moe_route_record rec[] = {{0, 0, 3, 0.5f, 1, 0.5f, 0}};
    char dir[400], path[512], msg[512] = "";
    fresh_dir(dir, sizeof dir, "csv_fail");
    join(path, sizeof path, dir, "missing/routing.csv");
    ck_assert_int_eq(moe_report_routing_csv(path, rec, 1, msg, sizeof msg), MOE_EIO);
    ck_assert_ptr_nonnull(strstr(msg, "--dump-routing"));
    ck_assert_int_eq(count_entries(dir), 0);
    join(path, sizeof path, dir, "a_dir");
    ck_assert_int_eq(mkdir(path, 0700), 0);
    ck_assert_int_eq(moe_report_routing_csv(path, rec, 1, msg, sizeof msg), MOE_EIO);
    ck_assert_int_eq(count_entries(dir), 1);
}
END_TEST

START_TEST(test_check_writable)
{
    char dir[400], path[512], msg[512] = "";
    fresh_dir(dir, sizeof dir, "writable");
    join(path, sizeof path, dir, "result.json");
    ck_assert_int_eq(moe_report_check_writable(path, "--json", msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(count_entries(dir), 0); /* the probe file is gone, nothing created at path */
    join(path, sizeof path, dir, "nope/result.json");
    ck_assert_int_eq(moe_report_check_writable(path, "--json", msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--json") && strstr(msg, "nope/result.json"), "message: %s", msg);
    ck_assert_int_eq(count_entries(dir), 0);
    /* a directory, or a path ending in '/', or an empty path: not a file that can be written */
    ck_assert_int_eq(moe_report_check_writable(dir, "--json", msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--json"));
    char slash[520];
    snprintf(slash, sizeof slash, "%s/new/", dir);
    ck_assert_int_eq(moe_report_check_writable(slash, "--dump-output", msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--dump-output"));
    ck_assert_int_eq(moe_report_check_writable("", "--json", msg, sizeof msg), MOE_EUSAGE);
    ck_assert_int_eq(count_entries(dir), 0);
    /* an existing file is left alone */
    join(path, sizeof path, dir, "keep.csv");
    FILE *f = fopen(path, "w");
    fputs("keep", f);
    fclose(f);
    ck_assert_int_eq(moe_report_check_writable(path, "--dump-routing", msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(count_entries(dir), 1);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_size, 4);
}
END_TEST

/* ---- text ---- */

START_TEST(test_text_report_smoke)
{
    moe_results r;
    moe_config cfg;
    small_results(&r, &cfg);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    moe_report_text(f, &cfg, &r, false);
    fclose(f);
    ck_assert_ptr_null(strchr(buf, '\033')); /* no ANSI codes without color */
    ck_assert_ptr_nonnull(strstr(buf, "aux loss"));
    ck_assert_ptr_nonnull(strstr(buf, "1.0000"));
    ck_assert_ptr_nonnull(strstr(buf, "dropped assignments"));
    /* every phase has its row, but the shared experts' only when there are some */
    for (int p = 0; p < MOE_PHASE_COUNT; p++)
        if (p != MOE_PHASE_SHARED)
            ck_assert_ptr_nonnull(strstr(buf, moe_phase_name(p)));
    ck_assert_ptr_null(strstr(buf, "shared"));
    /* the nccl-tests figures and the warnings after the phase table, each within 100 columns */
    const char *nccl = strstr(buf, "\n  nccl-tests style: dispatch algbw 3.00 GB/s busbw 1.50 GB/s, "
                                   "combine algbw 4.00 busbw 2.00\n");
    ck_assert_msg(nccl != NULL, "%s", buf);
    ck_assert(nccl > strstr(buf, "\n  all-to-all: dispatch 1.00 GB/s"));
    ck_assert_ptr_nonnull(strstr(buf, "\n  bytes off-rank 48 B, off-node 32 B in each exchange"));
    const char *w1 = strstr(buf, "\nwarning: dispatch times spread 400%");
    const char *w2 = strstr(buf, "\nwarning: combine times spread 400%");
    ck_assert(w1 != NULL && w2 != NULL && nccl < w1 && w1 < w2);
    ck_assert(w2 < strstr(buf, "Traffic by locality"));
    ck_assert_int_eq(count_substr(buf, "warning: "), 2);
    const char *added[] = {nccl, strstr(buf, "\n  bytes off-rank"), w1, w2};
    for (int i = 0; i < 4; i++) {
        const char *line = added[i] + 1, *end = strchr(line, '\n');
        ck_assert_int_le(cells(line) - cells(end), 100);
    }
    free(buf);
    /* no warnings, no warning line */
    for (int p = 0; p < MOE_PHASE_COUNT; p++)
        r.phase_iter[p] = (moe_spread){0.001, 0.001};
    buf = NULL;
    f = open_memstream(&buf, &len);
    moe_report_text(f, &cfg, &r, false);
    fclose(f);
    ck_assert_ptr_null(strstr(buf, "warning"));
    ck_assert_ptr_nonnull(strstr(buf, "nccl-tests style"));
    free(buf);
    buf = NULL;
    f = open_memstream(&buf, &len);
    r.shared_experts = 2;
    r.shared_ffn = 16;
    r.flops_shared = 3e9;
    moe_report_text(f, &cfg, &r, false);
    fclose(f);
    ck_assert_ptr_nonnull(strstr(buf, "  shared  "));
    ck_assert_ptr_nonnull(strstr(buf, "shared experts 2 x ffn 16"));
    ck_assert_ptr_nonnull(strstr(buf, "output = residual + shared experts"));
    r.shared_experts = 0;
    free(buf);
    buf = NULL;
    f = open_memstream(&buf, &len);
    moe_report_text(f, &cfg, &r, true);
    fclose(f);
    ck_assert_ptr_nonnull(strstr(buf, "\033[1m"));
    free(buf);
    moe_results_free(&r);
}
END_TEST

static Suite *report_suite(void)
{
    Suite *s = suite_create("report");
    TCase *tc = tcase_create("bar");
    tcase_add_test(tc, test_bar_widths);
    tcase_add_test(tc, test_bar_fits_documented_buffer);
    suite_add_tcase(s, tc);
    tc = tcase_create("files");
    tcase_add_test(tc, test_json_document);
    tcase_add_test(tc, test_json_unwritable);
    tcase_add_test(tc, test_json_non_finite_keeps_keys);
    tcase_add_test(tc, test_routing_csv);
    tcase_add_test(tc, test_routing_csv_unwritable);
    tcase_add_test(tc, test_check_writable);
    tcase_add_test(tc, test_text_report_smoke);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_in_scratch(g_dir, report_suite(), NULL);
}
