/* Report: the text a person reads, the JSON a program reads (jansson; keys in docs/json.md), and
 * the routing CSV. Only rank 0 calls these. Files are written through fileout.h. */
#ifndef MOESIM_REPORT_H
#define MOESIM_REPORT_H

#include "moesim/config.h"
#include "moesim/router.h"
#include "moesim/stats.h"

#include <stdbool.h>
#include <stdio.h>

/* Human-readable report to out. color: use ANSI emphasis (for a terminal). */
void moe_report_text(FILE *out, const moe_config *cfg, const moe_results *res, bool color);

/* The run's self-checks and its VALID / INVALID line (verdict.h): the report's last block. */
void moe_report_verdict(FILE *out, const moe_results *res, bool color);

/* A dense FFN of equal total parameters beside the MoE layer: parameters (FFN weights, and the
 * router's E d on the MoE side) and FLOPs per token (2 per multiply-add). */
typedef struct moe_dense_baseline {
    int64_t dense_ffn;             /* E f (+ S fs): the dense FFN's inner size */
    double dense_parameters, dense_flops_per_token;
    double moe_parameters, moe_active_parameters, moe_flops_per_token;
} moe_dense_baseline;
moe_dense_baseline moe_report_dense_baseline(const moe_results *res);

/* The memory block: estimate and peak RSS per rank (largest, mean) and per node, with the budget. */
void moe_report_memory(FILE *out, const moe_results *res, bool color);

/* Where every rank runs (res->placement), with warnings for unbound ranks and shared cores. */
void moe_report_placement(FILE *out, const moe_results *res);

/* The prediction table, printed before any token row moves: for every capacity factor, the
 * closed-form expectation of dropped assignments and empty slots for a uniform router and for this
 * router, and the exact figures from the exchanged counts. */
void moe_report_prediction(FILE *out, const moe_config *cfg, const moe_results *res);

/* The ablation table after the run: per capacity factor what was measured, beside the prediction,
 * with the closed form's error. */
void moe_report_ablation(FILE *out, const moe_config *cfg, const moe_results *res);

/* The JSON document to an open stream (moe_report_json_file) or to a path through moe_outfile
 * (fileout.h). Returns 0, MOE_EIO or MOE_ENOMEM. */
int moe_report_json_file(FILE *f, const moe_config *cfg, const moe_results *res, char *msg,
                         size_t msglen);
int moe_report_json(const char *path, const moe_config *cfg, const moe_results *res, char *msg,
                    size_t msglen);

/* CSV with header token,choice,expert,gate,accepted; n records, to a stream or a path. */
int moe_report_routing_csv_file(FILE *f, const moe_route_record *records, int64_t n);
int moe_report_routing_csv(const char *path, const moe_route_record *records, int64_t n, char *msg,
                           size_t msglen);

/* Check, before anything runs, that path can be written (moe_out_classify). */
int moe_report_check_writable(const char *path, const char *option, char *msg, size_t msglen);

/* Bar of `width` cells for fraction in [0, 1] (values above 1 are clipped and marked '>'), written
 * into buf (at least 3*width+2 bytes: UTF-8 block characters). */
void moe_report_bar(char *buf, double fraction, int width);

/* --predict-only: the traffic the decision makes (bytes as they travel, off-rank, off-node) and,
 * with --network, the projected exchange times. */
void moe_report_planned_traffic(FILE *out, const moe_results *res);

/* --steps: the series, one JSON object per step kept in top->steps (docs/json.md, steps[]). */
typedef struct moe_step_prediction {
    bool valid;            /* from the second step on                                       */
    double dropped, empty; /* closed form from the previous step's loads, q_i = routed_i / N */
} moe_step_prediction;

/* Append step `step` described by r (its routed counts, drops, balance, waste, timing), pred
 * (NULL or !valid: none) and the selection bias it routed with (E floats, NULL: none). MOE_OK or
 * MOE_ENOMEM. */
int moe_report_step_add(moe_results *top, const moe_results *r, int step,
                        const moe_step_prediction *pred, const float *bias);
void moe_report_steps_free(moe_results *top);
/* --steps-csv: a header, then one row per step (columns: docs/json.md). MOE_OK or MOE_EIO. */
int moe_report_steps_csv_file(FILE *f, const moe_results *top);
/* The series summarized: first, last, min, max of the key figures (nothing for one step). */
void moe_report_steps_text(FILE *out, const moe_config *cfg, const moe_results *top);

#endif
