/* The layer's private state, shared by the files that make the layer: layer.c (create, buffers,
 * the step) and collect.c (reductions and gathers to rank 0). Not a public header. */
#ifndef MOESIM_LAYER_INTERNAL_H
#define MOESIM_LAYER_INTERNAL_H

#include "moesim/decide.h"
#include "moesim/exchange.h"
#include "moesim/hier.h"
#include "moesim/layer.h"
#include "moesim/placement.h"

struct moe_layer {
    moe_config cfg;
    MPI_Comm comm, node;
    int rank, R;
    moe_exchange ex;
    int E, k, A;           /* A: slots per token, k (token choice) or E (expert choice) */
    int64_t d, f;
    int64_t n, first;      /* this rank's tokens: global ids [first, first + n) of the batch */
    int64_t *blocks;       /* (R) every rank's token count (--tokens-per-rank, source-ragged),
                            * NULL: the even blocks of moe_partition */
    int64_t tok_off;       /* --steps: the step's batch starts at token tok_off of the data */
    int64_t h_rows;        /* rows of h held: n, or a chunk under --predict-only */
    int64_t n_le, first_e; /* this rank's experts */
    int64_t bytes;         /* everything allocated below */
    moe_placement *placement; /* (R) where every rank runs, the same on every rank */
    int *node_of_rank;        /* (R) */
    moe_hier *hier;           /* the two-level exchange, with --a2a hierarchical */
    int *raw_counts;          /* (8, R) raw baselines: scounts, sdispls, rcounts, rdispls of the
                               * dispatch, then the same for the combine (its rows may differ) */
    MPI_Datatype raw_type, raw_type_back; /* MPI_BYTE, or the row types when bytes overflow an int */
    /* --wire, --wire-combine: rows travel encoded (wire.h); fp32 travels as the floats */
    moe_wire wire_out, wire_back;
    moe_hier *hier_back;      /* the combine's two-level exchange when its rows differ, else NULL */
    int64_t *send_tok;        /* (n*A) the token of each dispatched row (encoded dispatch only) */
    uint8_t *send_enc, *back_enc;  /* source: (n_send) rows out, encoded; (n_send) rows back */
    uint8_t *recv_enc, *rback_enc; /* owner: (n_recv) rows arriving, encoded; (n_recv) going back */
    int64_t enc_bytes;        /* what the encoded buffers take (part of exch_bytes) */
    /* where experts live (--placement, --redundant-experts): P physical slots, rank-major; with
     * the identity map (contiguous, no replicas) slot = expert and nothing below is extra */
    moe_expert_map map;
    bool mapped;              /* not the identity */
    int64_t n_ls, first_ls;   /* my physical slots */
    int32_t *phys;            /* (n*A) the slot serving each served assignment (mapped), else expert */
    int64_t *send_pos;        /* (n*A) scratch of the one-pass unpack (combine.c)          */
    int64_t *per_slot;        /* (P) my served assignments per slot (mapped), else per_expert */
    int64_t *acc_slot;        /* (R, n_ls) rows each source sends my slots (mapped), else acc_owner */
    int *slot_sc, *slot_sd, *slot_rc, *slot_rd; /* (R) the per-slot count exchange */
    double overload_before;   /* rank overload of contiguous experts without replicas */
    int *owner_of, *local_of; /* (P) each slot's rank and its index there */
    /* --dispatch per-rank (dedup.c): one row per (token, destination rank) */
    bool per_rank;
    int meta_slots;           /* metadata entries per row */
    int64_t dd_n_send, dd_n_recv;          /* rows out / in */
    int64_t *dd_send_rows, *dd_recv_rows;  /* (R) */
    int64_t *dd_tok;          /* (n * min(A, R)) the token of each row out, in send order */
    int64_t *dd_cursor, *dd_last;          /* (R) scratch of the plan */
    int *dd_seen;             /* (R) scratch of the plan */
    float *dd_sum;            /* (d) one row's weighted sum */
    void *dd_send, *dd_recv, *dd_back_send, *dd_back_recv; /* travelling rows, grown */
    int64_t *dd_fan;          /* (dd_n_recv, meta_slots) x row of each entry, -1 unused */
    int64_t dd_cap_send, dd_cap_recv, dd_cap_back_send, dd_cap_back_recv, dd_cap_fan;
    /* --dispatch per-rank --a2a hierarchical (nodex.c): a token once per destination node across
     * the leaders' stage, fanned out to the node's ranks by its leader */
    bool nodex;
    int n_nodes;
    int *nx_leader;           /* (n_nodes) each node's lowest rank */
    MPI_Comm nx_node;         /* my node's ranks, rank order */
    int nx_size, *nx_member;  /* their number; their ranks */
    int *nx_cnt, *nx_dsp;     /* (nx_size) leader: per-rank rows each member receives, offsets */
    moe_hier *nx_hier, *nx_hier_back; /* node rows; their results (the combine rows' type) */
    MPI_Datatype nx_row;
    int nx_meta;              /* entries per node row */
    int64_t nx_row_bytes;
    int64_t *nx_send_rows;    /* (R) node rows to each rank: nonzero at leaders only */
    int64_t *nx_recv_rows;    /* (R) node rows from each rank: nonzero at leaders only */
    int64_t *nx_node_rows;    /* (n_nodes) node rows to each node */
    int64_t *nx_cur;          /* (2R) pack cursors; the leader's placed rows per member */
    int64_t *nx_seen;         /* (n_nodes) plan scratch */
    float *nx_one;            /* (d) one decoded result */
    int64_t nx_n_send, nx_n_recv, nx_n_expand;
    void *nx_send, *nx_recv, *nx_expand, *nx_back_send, *nx_back_recv, *nx_gather;
    int64_t *nx_tok;          /* (nx_n_send) the token of each node row out */
    int64_t *nx_fan;          /* (nx_n_recv, nx_meta) leader: the expanded row of each rank of a
                               * node row, -1 after the last */
    int64_t nx_cap_send, nx_cap_recv, nx_cap_expand, nx_cap_back_send, nx_cap_back_recv,
        nx_cap_gather, nx_cap_tok, nx_cap_fan;
    moe_regroup_kind regroup; /* what --regroup resolved to here (moe_config_regroup), and,
                               * under auto, what the combine's probe chose (probe_combine) */
    bool probe_pending;       /* auto, fp32 combine: time both combines once the buffers exist */
    double probe[2];          /* the probe's slowest-rank best: alltoallw, alltoallw-slots (s);
                               * NaN when none ran                                          */
    bool raw_this_step;    /* time the raw Alltoallv baselines in the next step (--raw-baseline) */
    int64_t exch_bytes;    /* the part sized by the capacity factor */
    moe_mem_estimate mem;  /* what this rank allocates, estimated before allocating it */
    int64_t budget;        /* the node's memory budget in bytes (-1: unknown) */

    /* source side */
    float *h;          /* (n, d) token states                                     */
    float *w_router;   /* (E, d)                                                  */
    float *router_scratch; /* (MOE_ROUTER_BLOCK, d + E): partial blocks of the logits    */
    float *z_file;     /* (n, E) replayed logits (--logits-file), else NULL       */
    float *bias;       /* (E) router bias of the workload (skew, hot experts)     */
    float *sel_bias;   /* (E) selection bias (--expert-bias-file), else NULL   */
    int has_bias;
    double hot_bias, hot_share; /* the hot experts' extra bias, and the share it achieved */
    float *probs;      /* (n, E) logits, then the scores in place (softmax or sigmoid) */
    float *sel;        /* (n, E) selection scores p + b (== probs without a bias)  */
    float *w_noise;    /* (E, d) W_noise of --noisy-top-k, else NULL              */
    float *z_noise;    /* (n, E) h W_noise^T, else NULL                           */
    float *h_route;    /* (n, d) h jittered for routing (--input-jitter), else NULL */
    uint8_t *mask;     /* (E) scratch of the grouped top-k                        */
    double *gscore;    /* (G) scratch of the grouped top-k                        */
    int32_t *expert;   /* (n, A) chosen experts, best first (expert choice: e)    */
    uint8_t *wl_hot;   /* (E) --workload: the step's hot set                       */
    float *gate;       /* (n, A)                                                  */
    uint8_t *flag;     /* (n, A) 1 = accepted                                     */
    uint8_t *rerouted; /* (n, A) 1 = served after a reroute                       */
    int32_t *orig;     /* (n, k) --drop-policy reroute: the router's choices      */
    float *orig_gate;  /* (n, k) and their gates                                  */
    int64_t *slot;     /* (n*A) send order: t*A + c                               */
    moe_decider *decider; /* the capacity protocol (decide.c)                     */
    int rounds;        /* reroute rounds of the last decision                     */
    /* shared experts (DeepSeekMoE): S experts of inner size fs on every token, here */
    int S;
    int64_t fs;
    float *ws1, *ws2;  /* (S, fs, d), (S, d, fs) */
    float *s_act, *s_out; /* (n, fs), (n, d) */
    int64_t *routed;   /* (E) my assignments per expert, before capacity          */
    int64_t *accepted; /* (E) how many of them each owner accepted                */
    int64_t *per_expert, *scratch; /* (E)                                         */
    int64_t *send_rows, *recv_rows; /* (R)                                        */
    int64_t n_send, n_recv;
    float *sendbuf; /* (n_send, d): packed rows, then the combined results         */
    float *y;       /* (n, d) layer output                                         */

    /* owner side */
    int64_t *group_cap;     /* (R) capacity of each source's group; [0] only when global */
    int64_t *cnt_owner;     /* (R, n_le) assignments each source routed to my experts */
    int64_t *acc_owner;     /* (R, n_le) how many of them I accept                    */
    int64_t *x_start, *x_rows, *placed; /* (n_le) expert blocks of x: start, rows computed */
    int64_t rows_x;
    float *recvbuf; /* (n_recv, d): received rows, then expert outputs in the same order */
    float *rawbuf;  /* (max(n_send, n_recv), d): where the raw baselines deliver, so that they can
                     * never stand in for the real exchange's result */
    float *x, *act, *yexp; /* (rows_x, d), (rows_x, f), (rows_x, d) */
    float *w1, *w2;        /* (n_le, f, d), (n_le, d, f) */

    /* training (--mode fwd-bwd, train; train_layer.c, docs/training.md) */
    bool backward;          /* the step runs the backward */
    float *t_router, *t_w1, *t_w2; /* the teacher: (E, d), (E, f, d), (E, d, f) */
    float *target;          /* (n, d) the teacher's output y* on this batch */
    float *gy, *dh;         /* (n, d) dL/dy and dL/dh */
    float *z_save, *dz;     /* (n, E) the step's logits and dL/dz */
    float *dgate;           /* (n, A) dL/dgate of each assignment (0: dropped) */
    float *g_router, *g_w1, *g_w2;       /* dL/dW: (E, d), (n_le, f, d), (n_le, d, f) */
    float *opt_router, *opt_w1, *opt_w2; /* optimizer state, 1 or 2 floats a weight (train) */
    float *pre, *dpre, *gout; /* (rows_x, f), (rows_x, f), (rows_x, d), sized with the exchange */
    int64_t opt_steps;      /* optimizer steps taken */
    double loss_task, loss_aux, loss_z; /* the last backward's losses, the same on every rank */
    double grad_sq[3];      /* the last backward's sum of squares: router, experts (summed over
                             * ranks), input gradient dh (summed over ranks) */
};

/* z (n, E) = the router's logits: computed (h W^T, h jittered) or replayed, plus the workload's
 * bias, plus the noise of --noisy-top-k. Not collective. */
void moe_layer_logits(moe_layer *L, float *z);
/* The same for local tokens [t0, t0 + count) into z (count, E): the same floats as those rows of
 * the whole. Not under --predict-only without its replayed or computed logits (h is a chunk). */
void moe_layer_logits_rows(moe_layer *L, float *z, int64_t t0, int64_t count);

/* Per-node dispatch (nodex.c): create after the experts are placed; plan after the per-rank
 * plan (collective); pack after moe_dedup_pack; the two exchanges; y. */
int moe_nodex_create(moe_layer *L, char *msg, size_t msglen);
void moe_nodex_destroy(moe_layer *L);
int moe_nodex_plan(moe_layer *L, char *msg, size_t msglen);
int64_t moe_nodex_buffer_bytes(const moe_layer *L);
void moe_nodex_pack(moe_layer *L);
int moe_nodex_dispatch(moe_layer *L, char *msg, size_t msglen);
int moe_nodex_combine(moe_layer *L, char *msg, size_t msglen);
void moe_nodex_combine_y(moe_layer *L, float *y);

/* Deduplicated dispatch (dedup.c; its row sizes in wire.h). The plan after every decision
 * (collective: the arriving row counts); then the step's pieces. */
int moe_dedup_plan(moe_layer *L, char *msg, size_t msglen);
void moe_dedup_pack(moe_layer *L);
void moe_dedup_fan_out(moe_layer *L);
void moe_dedup_fan_in(moe_layer *L, const float *out);
void moe_dedup_combine(moe_layer *L, float *y);
/* y = h + the decoded combine rows (count of them, in --wire-combine), row p added at token tok[p]
 * in order */
void moe_dedup_add_back(moe_layer *L, float *y, const void *rows, const int64_t *tok,
                        int64_t count);

/* Training (train_layer.c). Create: the teacher, the weights' gradients and the optimizer's
 * state (collective: agrees). Size: the per-row buffers of the backward after every decision.
 * Target: the teacher's y* for the batch in h (not collective). Backward: the phases after the
 * forward, seconds (MOE_PHASE_COUNT) as moe_layer_step's (collective). Free: not collective. */
int moe_train_create(moe_layer *L, char *msg, size_t msglen);
int moe_train_size(moe_layer *L, char *msg, size_t msglen);
void moe_train_target(moe_layer *L);
int moe_train_backward(moe_layer *L, double *seconds, char *msg, size_t msglen);
void moe_train_free(moe_layer *L);
/* The exchanges of the step (layer.c), for the backward's two. */
int moe_layer_exchange_timed(moe_layer *L, const void *send, void *recv, bool reverse,
                             double *seconds, char *msg, size_t msglen);
void *moe_layer_alloc(moe_layer *L, size_t count, size_t size, int *rc);

/* Capacity of every local expert summed over groups, or MOE_CAPACITY_UNLIMITED. */
int64_t moe_layer_expert_capacity(const moe_layer *L);

#endif
