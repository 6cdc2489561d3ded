/* moe_bench: moesim's layer step against its floors, in one run.
 *
 * For one configuration (any moesim option), build the layer with moe_layer_create, then repeat,
 * interleaved and each timed call behind an MPI_Barrier:
 *   the real step (moe_layer_step's phase seconds),
 *   a raw MPI_Alltoallv of the same byte matrix (MPI_BYTE; combine is the reverse direction),
 *   moe_exchange_rows alone on the same counts (moesim's exchange without the rest of the step),
 *   memcpy of the bytes that pack, regroup and unpack move, between buffers of the same sizes,
 *   cblas_sgemm of exactly the experts' shapes (m x d x f, then m x f x d; no GELU, no regroup).
 * Each rank takes its median over the repetitions; rank 0 reports min/mean/max over ranks and the
 * ratio of the slowest ranks' times, moesim over floor. What is counted: bench/README.md.
 *
 * main reads as its phases: options, inputs, layer, floors, repetitions, reduction, report. */
#include "moesim/config.h"
#include "moesim/driver.h"
#include "moesim/error.h"
#include "moesim/exchange.h"
#include "moesim/expert.h"
#include "moesim/layer.h"
#include "moesim/npy.h"
#include "moesim/report.h"
#include "moesim/stats.h"

#include <cblas.h>
#include <jansson.h>
#include <limits.h>
#include <mpi.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MSG_LEN 1024

/* Exit statuses as moesim's: 2 refused before anything runs, 1 failure while running. A FAIL
 * verdict is a measurement, not an error: it exits 0. */
enum { EXIT_REFUSED = 2, EXIT_FAILED = 1 };

/* Bench defaults where moesim's are too few for a median (moesim: --iters 5, --warmup 1). */
enum { BENCH_ITERS = 20, BENCH_WARMUP = 3 };

/* One timed series per repetition: (iters, S_COUNT) seconds on each rank. */
enum series {
    S_DISPATCH_STEP,     /* moe_layer_step's dispatch phase (after its barrier: no wait)     */
    S_DISPATCH_EXCHANGE, /* moe_exchange_rows(forward) alone, behind a barrier               */
    S_DISPATCH_RAW,      /* MPI_Alltoallv of the same bytes as MPI_BYTE, behind a barrier    */
    S_COMBINE_STEP,
    S_COMBINE_EXCHANGE,
    S_COMBINE_RAW,
    S_COMBINE_RAW_COLD, /* the same raw combine right after the expert floor's sgemm, sending
                         * the rows the sgemm wrote: the caches as the step's combine finds them */
    S_PACK,            /* moe_pack_rows, from the step                                       */
    S_PACK_MEMCPY,     /* one memcpy of n_send rows                                          */
    S_REGROUP,         /* both regroups, from the step                                       */
    S_REGROUP_MEMCPY,  /* two memcpy of n_recv rows                                          */
    S_UNPACK,          /* moe_combine_rows, from the step                                    */
    S_UNPACK_MEMCPY,   /* memcpy of n rows (the residual) plus memcpy of n_send rows, right
                        * after S_COMBINE_RAW_COLD, from the rows it delivered: the caches as
                        * the step's unpack finds them                                       */
    S_EXPERT,          /* the experts, from the step                                         */
    S_EXPERT_SGEMM,    /* the same two sgemm per local expert, nothing else                  */
    S_STEP,            /* the whole step, for the metadata                                   */
    S_DISPATCH_FLOOR,  /* the dispatch's floor: S_DISPATCH_RAW, plus S_PACK_MEMCPY when the
                        * dispatch gathers its rows itself (no pack phase)                  */
    S_COUNT
};

typedef enum { UNIT_MS, UNIT_GBS, UNIT_GFLOPS } unit;
typedef enum { WORK_NONE, WORK_PACK, WORK_REGROUP, WORK_UNPACK, WORK_FLOPS, WORK_COUNT } work;

/* The rows of the report, in order. The verdict reads, for each exchange, the step's phase as
 * timed (moesim starts each exchange after a barrier timed as its own wait phase, so this is the
 * exchange alone) and moe_exchange_rows alone outside the step. */
enum row_id {
    ROW_DISPATCH_STEP, ROW_DISPATCH_EXCHANGE,
    ROW_COMBINE_STEP, ROW_COMBINE_EXCHANGE,
    ROW_PACK, ROW_REGROUP, ROW_UNPACK, ROW_EXPERT,
    N_ROWS
};

/* key is the JSON key (bench/README.md). */
typedef struct row_def {
    const char *key, *label;
    unit unit;
    work work;
    int moesim, floor;
    const char *floor_label;
    double goal; /* PASS when ratio <= goal; 0: the phase must not exist (its time is nil) */
} row_def;

/* The goals of issue 11 (bench/README.md): the exchanges at 0.95x the raw Alltoallv's speed or
 * better, pack and unpack at 0.9x memcpy's, the experts within 1.05x of bare sgemm, and no
 * regroup copy at all. */
#define GOAL_EXCHANGE (1.0 / 0.95)
#define GOAL_COPY (1.0 / 0.9)
#define GOAL_SGEMM 1.05
#define NIL_SECONDS 1e-5 /* a phase that does nothing: a few branches between two MPI_Wtime */

#define RAW_LABEL "MPI_Alltoallv, MPI_BYTE"
static const row_def ROWS[N_ROWS] = {
    [ROW_DISPATCH_STEP] = {"dispatch_step", "dispatch, step phase", UNIT_MS, WORK_NONE,
                           S_DISPATCH_STEP, S_DISPATCH_FLOOR, RAW_LABEL, GOAL_EXCHANGE},
    [ROW_DISPATCH_EXCHANGE] = {"dispatch_exchange", "dispatch, exchange only", UNIT_MS, WORK_NONE,
                               S_DISPATCH_EXCHANGE, S_DISPATCH_FLOOR, RAW_LABEL, GOAL_EXCHANGE},
    [ROW_COMBINE_STEP] = {"combine_step", "combine, step phase", UNIT_MS, WORK_NONE,
                          S_COMBINE_STEP, S_COMBINE_RAW_COLD, RAW_LABEL ", after the sgemm",
                          GOAL_EXCHANGE},
    [ROW_COMBINE_EXCHANGE] = {"combine_exchange", "combine, exchange only", UNIT_MS, WORK_NONE,
                              S_COMBINE_EXCHANGE, S_COMBINE_RAW, RAW_LABEL, GOAL_EXCHANGE},
    [ROW_PACK] = {"pack", "pack", UNIT_GBS, WORK_PACK, S_PACK, S_PACK_MEMCPY, "memcpy",
                  GOAL_COPY},
    [ROW_REGROUP] = {"regroup", "regroup, both ways", UNIT_GBS, WORK_REGROUP, S_REGROUP,
                     S_REGROUP_MEMCPY, "memcpy x2", 0.0},
    [ROW_UNPACK] = {"unpack", "unpack", UNIT_GBS, WORK_UNPACK, S_UNPACK, S_UNPACK_MEMCPY,
                    "memcpy x2, after the combine", GOAL_COPY},
    [ROW_EXPERT] = {"expert", "expert", UNIT_GFLOPS, WORK_FLOPS, S_EXPERT, S_EXPERT_SGEMM,
                    "cblas_sgemm", GOAL_SGEMM},
};

/* Per rank, gathered to rank 0: for each row (moesim s, floor s, moesim rate, floor rate), then
 * the step's median and the rows this rank sends, receives and computes. */
enum { PER_ROW = 4, EXTRA = 4, PER_RANK = N_ROWS * PER_ROW + EXTRA };

typedef struct bench {
    MPI_Comm comm;
    int rank, R;
    moe_layer *layer;
    moe_layer_shape shape;
    int64_t n, d, f, n_send, n_recv, rows_x, n_le;
    double work[WORK_COUNT]; /* bytes or FLOPs this rank moves or computes per repetition */

    /* raw floor: the dispatch byte matrix of this rank, MPI_BYTE counts (combine swaps them) */
    int *scounts, *sdispls, *rcounts, *rdispls;
    /* moesim's exchange module on the same rows, for the "exchange only" rows */
    moe_exchange ex;
    /* the dispatch gathers its rows from h itself (--regroup alltoallw, fp32 rows): no pack, so
     * the dispatch's floor is the raw exchange plus the pack's memcpy */
    int gathers;

    /* floor buffers, one allocation carved into tensors of the step's sizes (floats) */
    float *arena;
    float *h;        /* (max(n, n_send), d): pack source, unpack residual source */
    float *y;        /* (n, d): unpack residual destination                       */
    float *sendbuf;  /* (n_send, d)                                               */
    float *recvbuf;  /* (n_recv, d)                                               */
    float *x, *yexp; /* (rows_x, d)                                               */
    float *act;      /* (rows_x, f)                                               */
    float *w1, *w2;  /* (n_le, f, d), (n_le, d, f)                                */
} bench;

/* Keep the compiler from dropping a copy whose destination is not read again. */
static inline void escape(void *p)
{
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

static int finish(int rank, int rc, const char *msg, int status)
{
    if (rank == 0 && rc != MOE_OK)
        fprintf(stderr, "moe_bench: error: %s\n", msg);
    MPI_Finalize();
    return rc == MOE_OK ? 0 : status;
}

static const char *bench_usage(void)
{
    return "Usage: mpirun -n R moe_bench [moesim options]\n"
           "Time moesim's layer step against its floors in one run: dispatch and combine\n"
           "against a raw MPI_Alltoallv of the same byte matrix, pack, regroup and unpack\n"
           "against memcpy of the same bytes, the experts against bare cblas_sgemm of the same\n"
           "shapes. Each rank's median over the repetitions, then min/mean/max over ranks;\n"
           "ratio = slowest rank's moesim time / slowest rank's floor time. Each row has a goal\n"
           "(exchanges 1/0.95 of raw, pack and unpack 1/0.9 of memcpy, expert 1.05 of sgemm, no\n"
           "regroup phase) and PASS or FAIL; the summary is PASS when all are. bench/README.md.\n"
           "\n"
           "Every moesim option below is accepted and builds the same layer, except that here\n"
           "  --iters N       timed repetitions of everything (default 20)\n"
           "  --warmup N      untimed repetitions before them (default 3)\n"
           "  --json PATH     the bench's figures as JSON (keys: bench/README.md)\n"
           "  --quiet         print only the summary line\n"
           "  --dump-routing, --dump-output are accepted and ignored.\n"
           "Exit status: 0 measured (PASS or FAIL), 2 bad options or inputs, 1 failure while\n"
           "running.\n"
           "\n"
           "moesim's options:\n";
}

/* 1-minute load average of this node, or -1 if unknown: other work on the cores is the first
 * thing to suspect when ratios look odd. */
static double load_average(void)
{
    double v = -1.0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f != NULL) {
        if (fscanf(f, "%lf", &v) != 1)
            v = -1.0;
        fclose(f);
    }
    return v;
}

/* Byte counts of the raw floor from the planned rows; refuses a matrix whose bytes do not fit the
 * int counts and displacements of MPI_Alltoallv. Not collective. */
static int byte_counts(int *counts, int *displs, const int64_t *rows, int R, int64_t row_bytes,
                       const char *what, char *msg)
{
    int64_t total = 0;
    for (int r = 0; r < R; r++) {
        int64_t bytes = rows[r] * row_bytes;
        if (bytes > INT_MAX || total > INT_MAX - bytes)
            return moe_fail(MOE_ERANGE, msg, MSG_LEN,
                            "the raw floor would %s more than %d bytes on one rank, beyond "
                            "MPI_Alltoallv's int counts of MPI_BYTE: use fewer tokens or more "
                            "ranks",
                            what, INT_MAX);
        counts[r] = (int)bytes;
        displs[r] = (int)total;
        total += bytes;
    }
    return MOE_OK;
}

static void fill(float *p, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        p[i] = v;
}

/* Counts, the exchange and the floor buffers, sized once from the layer's planned shape.
 * Collective (node memory check and agreements). */
static int setup_floors(bench *b, const moe_config *cfg, MPI_Comm node, char *msg)
{
    moe_layer_shape *s = &b->shape;
    moe_layer_get_shape(b->layer, s);
    b->n = s->tokens;
    b->d = s->hidden;
    b->f = s->ffn;
    b->n_send = s->n_send;
    b->n_recv = s->n_recv;
    b->n_le = s->n_local_experts;
    b->rows_x = 0;
    for (int64_t le = 0; le < b->n_le; le++)
        b->rows_x += s->expert_rows[le];
    double fb = 4.0; /* bytes per float */
    b->work[WORK_NONE] = 0.0;
    b->work[WORK_PACK] = fb * (double)b->n_send * (double)b->d;
    b->work[WORK_REGROUP] = 2.0 * fb * (double)b->n_recv * (double)b->d;
    b->work[WORK_UNPACK] = fb * (double)(b->n + b->n_send) * (double)b->d;
    b->work[WORK_FLOPS] = 4.0 * (double)b->d * (double)b->f * (double)b->rows_x;

    int R = b->R, rc = MOE_OK;
    b->scounts = calloc((size_t)R * 4, sizeof(int));
    if (b->scounts == NULL)
        rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory for counts");
    if (rc == MOE_OK) {
        b->sdispls = b->scounts + R;
        b->rcounts = b->scounts + 2 * R;
        b->rdispls = b->scounts + 3 * R;
        int64_t row_bytes = b->d * (int64_t)sizeof(float);
        rc = byte_counts(b->scounts, b->sdispls, s->send_rows, R, row_bytes, "send", msg);
        if (rc == MOE_OK)
            rc = byte_counts(b->rcounts, b->rdispls, s->recv_rows, R, row_bytes, "receive", msg);
    }
    if ((rc = moe_agree(b->comm, rc, msg, MSG_LEN)) != MOE_OK)
        return rc;
    rc = moe_exchange_init(&b->ex, b->comm, b->d, cfg->experts, msg, MSG_LEN);
    if (rc == MOE_OK)
        rc = moe_exchange_set_rows(&b->ex, s->send_rows, s->recv_rows, msg, MSG_LEN);
    if ((rc = moe_agree(b->comm, rc, msg, MSG_LEN)) != MOE_OK)
        return rc;

    /* One arena; every tensor starts on a 64-byte boundary (16 floats). */
    int64_t d = b->d, f = b->f, hrows = b->n > b->n_send ? b->n : b->n_send;
    int64_t sizes[] = {hrows * d, b->n * d, b->n_send * d, b->n_recv * d, b->rows_x * d,
                       b->rows_x * d, b->rows_x * f, b->n_le * f * d, b->n_le * d * f};
    float **dst[] = {&b->h, &b->y, &b->sendbuf, &b->recvbuf, &b->x, &b->yexp, &b->act, &b->w1,
                     &b->w2};
    enum { N_T = sizeof sizes / sizeof sizes[0] };
    int64_t total = 0;
    for (int i = 0; i < N_T; i++)
        total += (sizes[i] + 15) / 16 * 16;
    int64_t need = total * (int64_t)sizeof(float), node_need = 0;
    MOE_MPI_CHECK(MPI_Allreduce(&need, &node_need, 1, MPI_INT64_T, MPI_SUM, node), msg, MSG_LEN);
    int64_t avail = moe_driver_mem_available();
    if (avail > 0 && node_need > avail)
        rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN,
                      "the floors' buffers would need %.2f GiB on this node beside the layer, but "
                      "only %.2f GiB is available: reduce --tokens, --hidden, --ffn or --experts",
                      node_need / 1073741824.0, avail / 1073741824.0);
    if ((rc = moe_agree(b->comm, rc, msg, MSG_LEN)) != MOE_OK)
        return rc;
    b->arena = aligned_alloc(64, (size_t)(total > 0 ? total : 16) * sizeof(float));
    if (b->arena == NULL)
        rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN,
                      "out of memory allocating %.2f GiB of floor buffers", need / 1073741824.0);
    if ((rc = moe_agree(b->comm, rc, msg, MSG_LEN)) != MOE_OK)
        return rc;
    float *p = b->arena;
    for (int i = 0; i < N_T; i++) {
        *dst[i] = p;
        p += (sizes[i] + 15) / 16 * 16;
    }
    /* Touch every page now, with values of order one (no denormals in the GEMMs). */
    fill(b->arena, (size_t)total, 0.5f);
    fill(b->w1, (size_t)(b->n_le * f * d), 0.01f);
    fill(b->w2, (size_t)(b->n_le * d * f), 0.01f);
    return MOE_OK;
}

static void bench_free(bench *b)
{
    moe_exchange_free(&b->ex);
    free(b->scounts);
    free(b->arena);
    moe_layer_destroy(b->layer);
}

#define BARRIER(b) MOE_MPI_CHECK(MPI_Barrier((b)->comm), msg, MSG_LEN)

/* Raw floor: dispatch then combine as MPI_Alltoallv of MPI_BYTE, each behind a barrier. */
static int time_raw(bench *b, double *s, char *msg)
{
    double t;
    BARRIER(b);
    t = MPI_Wtime();
    MOE_MPI_CHECK(MPI_Alltoallv(b->sendbuf, b->scounts, b->sdispls, MPI_BYTE, b->recvbuf,
                                b->rcounts, b->rdispls, MPI_BYTE, b->comm),
                  msg, MSG_LEN);
    s[S_DISPATCH_RAW] = MPI_Wtime() - t;
    BARRIER(b);
    t = MPI_Wtime();
    MOE_MPI_CHECK(MPI_Alltoallv(b->recvbuf, b->rcounts, b->rdispls, MPI_BYTE, b->sendbuf,
                                b->scounts, b->sdispls, MPI_BYTE, b->comm),
                  msg, MSG_LEN);
    s[S_COMBINE_RAW] = MPI_Wtime() - t;
    return MOE_OK;
}

/* moesim's exchange module alone on the step's row counts, timed like the raw floor. */
static int time_exchange(bench *b, double *s, char *msg)
{
    double t;
    int rc;
    BARRIER(b);
    t = MPI_Wtime();
    if ((rc = moe_layer_exchange(b->layer, false, msg, MSG_LEN)) != MOE_OK)
        return rc;
    s[S_DISPATCH_EXCHANGE] = MPI_Wtime() - t;
    BARRIER(b);
    t = MPI_Wtime();
    if ((rc = moe_layer_exchange(b->layer, true, msg, MSG_LEN)) != MOE_OK)
        return rc;
    s[S_COMBINE_EXCHANGE] = MPI_Wtime() - t;
    return MOE_OK;
}

/* One repetition of everything, each timed call behind a barrier. s receives S_COUNT seconds.
 * Nothing is allocated. */
static int one_repetition(bench *b, int parity, double *s, char *msg)
{
    double ph[MOE_PHASE_COUNT], t;
    int rc;

    BARRIER(b);
    if ((rc = moe_layer_step(b->layer, ph, msg, MSG_LEN)) != MOE_OK)
        return rc;
    s[S_DISPATCH_STEP] = ph[MOE_PHASE_DISPATCH];
    s[S_COMBINE_STEP] = ph[MOE_PHASE_COMBINE];
    s[S_PACK] = ph[MOE_PHASE_PACK];
    s[S_REGROUP] = ph[MOE_PHASE_REGROUP];
    s[S_UNPACK] = ph[MOE_PHASE_UNPACK];
    s[S_EXPERT] = ph[MOE_PHASE_EXPERT];
    s[S_STEP] = 0.0;
    for (int p = 0; p < MOE_PHASE_COUNT; p++)
        s[S_STEP] += moe_phase_in_step(p) && !isnan(ph[p]) ? ph[p] : 0.0; /* no backward: NaN */

    /* The raw floor and moesim's exchange alone, in alternating order so that neither always
     * follows the step (whose expert phase leaves other data in the caches). */
    for (int pass = 0; pass < 2; pass++) {
        if ((pass == 0) == (parity == 0)) {
            if ((rc = time_raw(b, s, msg)) != MOE_OK)
                return rc;
        } else if ((rc = time_exchange(b, s, msg)) != MOE_OK) {
            return rc;
        }
    }

    size_t row = (size_t)b->d * sizeof(float);

    /* pack: n_send rows from the token states into the send buffer */
    BARRIER(b);
    t = MPI_Wtime();
    memcpy(b->sendbuf, b->h, (size_t)b->n_send * row);
    escape(b->sendbuf);
    s[S_PACK_MEMCPY] = MPI_Wtime() - t;
    s[S_DISPATCH_FLOOR] = s[S_DISPATCH_RAW] + (b->gathers ? s[S_PACK_MEMCPY] : 0.0);

    /* regroup: n_recv rows from the receive buffer to x, and n_recv rows of expert output back */
    BARRIER(b);
    t = MPI_Wtime();
    memcpy(b->x, b->recvbuf, (size_t)b->n_recv * row);
    memcpy(b->recvbuf, b->yexp, (size_t)b->n_recv * row);
    escape(b->x);
    escape(b->recvbuf);
    s[S_REGROUP_MEMCPY] = MPI_Wtime() - t;

    /* experts: exactly moe_expert_forward's two calls per local expert, without the GELU */
    BARRIER(b);
    t = MPI_Wtime();
    int d = (int)b->d, f = (int)b->f;
    int64_t start = 0;
    for (int64_t le = 0; le < b->n_le; le++) {
        int m = (int)b->shape.expert_rows[le];
        if (m > 0) {
            const float *w1 = b->w1 + le * b->f * b->d, *w2 = b->w2 + le * b->d * b->f;
            /* act (m, f) = x (m, d) W1^T;  y (m, d) = act (m, f) W2^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, f, d, 1.0f,
                        b->x + start * b->d, d, w1, d, 0.0f, b->act + start * b->f, f);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, d, f, 1.0f,
                        b->act + start * b->f, f, w2, f, 0.0f, b->yexp + start * b->d, d);
        }
        start += m;
    }
    s[S_EXPERT_SGEMM] = MPI_Wtime() - t;

    /* The step's combine starts right after the experts, whose weights and activations have
     * pushed its rows' destinations and the shared-memory fragments out of the caches; its floor
     * is a raw combine in the same place: the rows the sgemm just wrote (the combine's bytes,
     * n_recv rows of them) back to the send buffer. */
    const float *rows = b->rows_x >= b->n_recv ? b->yexp : b->recvbuf; /* (never fewer) */
    BARRIER(b);
    t = MPI_Wtime();
    MOE_MPI_CHECK(MPI_Alltoallv(rows, b->rcounts, b->rdispls, MPI_BYTE, b->sendbuf, b->scounts,
                                b->sdispls, MPI_BYTE, b->comm),
                  msg, MSG_LEN);
    s[S_COMBINE_RAW_COLD] = MPI_Wtime() - t;

    /* unpack: the residual (n rows) and the n_send received rows, each read once. The step's
     * unpack follows its combine, so its floor does too, copying the rows the raw combine has just
     * delivered, and those the step's combine leaves in the experts' blocks from the sgemm's
     * outputs: at 64 tokens a rank the same copies run twice as fast with the caches warm
     * (bench/README.md), a floor no unpack after the experts can reach */
    int64_t left = b->shape.combine_left, came = b->n_send - left;
    BARRIER(b);
    t = MPI_Wtime();
    memcpy(b->y, b->h, (size_t)b->n * row);
    memcpy(b->h, b->sendbuf, (size_t)came * row);
    memcpy(b->h + came * b->d, b->yexp, (size_t)left * row); /* where the combine left them */
    escape(b->y);
    escape(b->h);
    s[S_UNPACK_MEMCPY] = MPI_Wtime() - t;
    return MOE_OK;
}

/* Warm-up and timed repetitions. samples (iters, S_COUNT). A failure here is an MPI or internal
 * error that other ranks may not see: abort rather than risk a hang. */
static void run_repetitions(bench *b, const moe_config *cfg, double *samples, char *msg)
{
    int total = cfg->warmup + cfg->iters;
    int progress = b->rank == 0 && !cfg->quiet && moe_driver_stdout_is_terminal();
    double scratch[S_COUNT];
    for (int i = 0; i < total; i++) {
        int timed = i >= cfg->warmup;
        double *s = timed ? samples + (int64_t)(i - cfg->warmup) * S_COUNT : scratch;
        if (one_repetition(b, i % 2, s, msg) != MOE_OK) {
            fprintf(stderr, "moe_bench: error on rank %d: %s\n", b->rank, msg);
            MPI_Abort(b->comm, EXIT_FAILED);
        }
        if (progress) {
            fprintf(stderr, "\r  %s %d/%d", timed ? "repetition" : "warm-up",
                    timed ? i + 1 - cfg->warmup : i + 1, timed ? cfg->iters : cfg->warmup);
            fflush(stderr);
        }
    }
    if (progress)
        fprintf(stderr, "\r%40s\r", "");
}

static double rate(double work, double seconds)
{
    return seconds > 0.0 ? work / seconds : 0.0;
}

/* This rank's medians and rates (PER_RANK values), gathered to rank 0 into all (R, PER_RANK). */
static int reduce_medians(bench *b, int iters, const double *samples, double *col, double *mine,
                          double *all, char *msg)
{
    double med[S_COUNT];
    for (int q = 0; q < S_COUNT; q++) {
        for (int i = 0; i < iters; i++)
            col[i] = samples[(int64_t)i * S_COUNT + q];
        med[q] = moe_median(col, iters);
    }
    for (int r = 0; r < N_ROWS; r++) {
        const row_def *w = &ROWS[r];
        double work = b->work[w->work];
        mine[r * PER_ROW + 0] = med[w->moesim];
        mine[r * PER_ROW + 1] = med[w->floor];
        mine[r * PER_ROW + 2] = rate(work, med[w->moesim]);
        mine[r * PER_ROW + 3] = rate(work, med[w->floor]);
    }
    double *extra = mine + N_ROWS * PER_ROW;
    extra[0] = med[S_STEP];
    extra[1] = (double)b->n_send;
    extra[2] = (double)b->n_recv;
    extra[3] = (double)b->rows_x;
    MOE_MPI_CHECK(MPI_Gather(mine, PER_RANK, MPI_DOUBLE, all, PER_RANK, MPI_DOUBLE, 0, b->comm),
                  msg, MSG_LEN);
    return MOE_OK;
}

/* ---- report (rank 0) ---- */

typedef struct figure {
    moe_summary moesim, floor; /* in the row's unit */
    moe_summary moesim_s, floor_s; /* seconds */
    double ratio;                  /* slowest moesim time / slowest floor time; < 0 if undefined */
    int pass;                      /* within the row's goal */
} figure;

typedef struct report {
    int ranks, nodes, iters, warmup;
    int gathers; /* the dispatch gathers its rows (no pack): its floor adds the pack's memcpy */
    char host[256], date[32];
    int cores;          /* online on rank 0's node */
    double load_before; /* 1-minute load average there before the repetitions; < 0 unknown */
    int blas_threads;
    int blas_env; /* OPENBLAS_NUM_THREADS was set */
    moe_summary step_s, n_send, n_recv, rows_x;
    figure fig[N_ROWS];
    double goal;
    double dispatch_ratio, combine_ratio; /* the larger of "step phase" and "exchange only" */
    int pass;
} report;

static double unit_scale(unit u)
{
    return u == UNIT_MS ? 1e3 : 1e-9; /* seconds to ms; bytes/s to GB/s; FLOP/s to GFLOP/s */
}

static const char *unit_name(unit u)
{
    return u == UNIT_MS ? "ms" : u == UNIT_GBS ? "GB/s" : "GFLOP/s";
}

static moe_summary scaled(moe_summary s, double k)
{
    return (moe_summary){s.min * k, s.mean * k, s.max * k};
}

static moe_summary column(const double *all, int R, int index)
{
    double v[R > 0 ? R : 1];
    for (int r = 0; r < R; r++)
        v[r] = all[(int64_t)r * PER_RANK + index];
    return moe_summarize(v, R);
}

/* The larger ratio; undefined (< 0) if either is. */
static double worse(double a, double b)
{
    return a < 0.0 || b < 0.0 ? -1.0 : a > b ? a : b;
}

static void build_report(report *rep, const double *all, int R)
{
    for (int r = 0; r < N_ROWS; r++) {
        figure *g = &rep->fig[r];
        unit u = ROWS[r].unit;
        g->moesim_s = column(all, R, r * PER_ROW + 0);
        g->floor_s = column(all, R, r * PER_ROW + 1);
        if (u == UNIT_MS) {
            g->moesim = scaled(g->moesim_s, unit_scale(u));
            g->floor = scaled(g->floor_s, unit_scale(u));
        } else {
            g->moesim = scaled(column(all, R, r * PER_ROW + 2), unit_scale(u));
            g->floor = scaled(column(all, R, r * PER_ROW + 3), unit_scale(u));
        }
        g->ratio = g->floor_s.max > 0.0 ? g->moesim_s.max / g->floor_s.max : -1.0;
        g->pass = ROWS[r].goal > 0.0 ? g->ratio >= 0.0 && g->ratio <= ROWS[r].goal
                                     : g->moesim_s.max <= NIL_SECONDS;
    }
    int base = N_ROWS * PER_ROW;
    rep->step_s = column(all, R, base + 0);
    rep->n_send = column(all, R, base + 1);
    rep->n_recv = column(all, R, base + 2);
    rep->rows_x = column(all, R, base + 3);
    rep->goal = GOAL_EXCHANGE;
    /* both measures of the exchange's own cost: the step's phase (moesim times the wait for the
     * slowest rank before it separately, so this is the exchange alone, in the step's cache state)
     * and the same exchange alone, started like the floor */
    rep->dispatch_ratio = worse(rep->fig[ROW_DISPATCH_STEP].ratio,
                                rep->fig[ROW_DISPATCH_EXCHANGE].ratio);
    rep->combine_ratio = worse(rep->fig[ROW_COMBINE_STEP].ratio,
                               rep->fig[ROW_COMBINE_EXCHANGE].ratio);
    rep->pass = 1;
    for (int r = 0; r < N_ROWS; r++)
        rep->pass &= rep->fig[r].pass;
}

static void print_value(FILE *out, double v, unit u)
{
    fprintf(out, u == UNIT_MS ? " %9.3f" : u == UNIT_GBS ? " %9.2f" : " %9.1f", v);
}

static void print_summary_line(FILE *out, const report *rep)
{
    const figure *g = rep->fig;
    int failed = 0;
    for (int r = 0; r < N_ROWS; r++)
        failed += !g[r].pass;
    fprintf(out,
            "# summary: %s (%d of %d goals met; dispatch %.2fx in the step, %.2fx alone; combine "
            "%.2fx in the step, %.2fx alone; expert %.2fx sgemm)\n",
            rep->pass ? "PASS" : "FAIL", N_ROWS - failed, N_ROWS, g[ROW_DISPATCH_STEP].ratio,
            g[ROW_DISPATCH_EXCHANGE].ratio, g[ROW_COMBINE_STEP].ratio,
            g[ROW_COMBINE_EXCHANGE].ratio, g[ROW_EXPERT].ratio);
}

static void print_report(FILE *out, const report *rep, const moe_config *cfg)
{
    fprintf(out, "# moe_bench (moesim %s): the layer step against its floors\n", MOE_VERSION);
    fprintf(out,
            "# ranks %d on %d node(s), host %s (%d cores, load average %.2f before the run), %s\n",
            rep->ranks, rep->nodes, rep->host, rep->cores, rep->load_before, rep->date);
    fprintf(out,
            "# config: tokens %lld, hidden %lld, ffn %lld, experts %d, top-k %d, capacity-factor "
            "%g, scope %s, policy %s%s%s, seed %llu%s%s%s%s\n",
            (long long)cfg->tokens, (long long)cfg->hidden, (long long)cfg->ffn, cfg->experts,
            cfg->top_k, cfg->capacity_factor, moe_scope_name(cfg->scope),
            moe_policy_name(cfg->policy), cfg->renormalize ? ", renormalize" : "",
            cfg->pad_to_capacity ? ", pad-to-capacity" : "", (unsigned long long)cfg->seed,
            cfg->tokens_file ? ", tokens-file " : "", cfg->tokens_file ? cfg->tokens_file : "",
            cfg->router_file ? ", router-file " : "", cfg->router_file ? cfg->router_file : "");
    fprintf(out, "# OpenBLAS threads per rank: %d (%s); %s\n", rep->blas_threads,
            rep->blas_env ? "OPENBLAS_NUM_THREADS" : "set by moe_bench", openblas_get_config());
    fprintf(out,
            "# rows per rank: sent %.0f..%.0f, received %.0f..%.0f, computed %.0f..%.0f; row %lld "
            "B; step %.3f ms (slowest rank's median)\n",
            rep->n_send.min, rep->n_send.max, rep->n_recv.min, rep->n_recv.max, rep->rows_x.min,
            rep->rows_x.max, (long long)(cfg->hidden * 4), rep->step_s.max * 1e3);
    fprintf(out,
            "# %d repetitions after %d warm-up, interleaved (raw and exchange-only in alternating "
            "order), MPI_Barrier before every timed call; "
            "each rank's median, then min/mean/max over ranks\n",
            rep->iters, rep->warmup);
    fprintf(out, "# ratio = slowest rank's moesim time / slowest rank's floor time (1.00 = at the "
                 "floor; higher = slower)\n");
    if (rep->load_before > rep->cores + 0.5)
        fprintf(out,
                "# warning: load average %.2f exceeds the %d cores: other work shares them, so "
                "the ratios below carry its noise\n",
                rep->load_before, rep->cores);
    if (rep->gathers)
        fprintf(out, "# no pack: the dispatch's datatypes gather the rows from h (--regroup "
                     "alltoallw), so its floor is the raw exchange plus the pack's memcpy\n");
    if (cfg->dump_routing || cfg->dump_output)
        fprintf(out, "# --dump-routing and --dump-output are ignored by moe_bench\n");
    fprintf(out, "#\n");
    fprintf(out, "# %-24s %-8s %30s   %29s  %6s %6s %5s  %s\n", "quantity", "unit",
            "----------- moesim ----------", "----------- floor -----------", "ratio", "goal", "",
            "floor is");
    fprintf(out, "# %-24s %-8s %9s %9s %9s   %9s %9s %9s  %6s %6s\n", "", "(units)", "min", "mean",
            "max", "min", "mean", "max", "(x)", "(x)");
    for (int r = 0; r < N_ROWS; r++) {
        const row_def *w = &ROWS[r];
        const figure *g = &rep->fig[r];
        fprintf(out, "  %-24s %-8s", w->label, unit_name(w->unit));
        print_value(out, g->moesim.min, w->unit);
        print_value(out, g->moesim.mean, w->unit);
        print_value(out, g->moesim.max, w->unit);
        fprintf(out, "  ");
        print_value(out, g->floor.min, w->unit);
        print_value(out, g->floor.mean, w->unit);
        print_value(out, g->floor.max, w->unit);
        char goal[16];
        if (w->goal > 0.0)
            snprintf(goal, sizeof goal, "<=%.2f", w->goal);
        else
            snprintf(goal, sizeof goal, "none");
        const char *label = rep->gathers && w->floor == S_DISPATCH_FLOOR
                                ? "MPI_Alltoallv + the pack's memcpy"
                                : w->floor_label;
        if (g->ratio >= 0.0)
            fprintf(out, "  %6.2f %6s %5s  %s\n", g->ratio, goal, g->pass ? "PASS" : "FAIL",
                    label);
        else
            fprintf(out, "  %6s %6s %5s  %s\n", "-", goal, g->pass ? "PASS" : "FAIL", label);
    }
    fprintf(out, "#\n");
}

static json_t *summary_json(moe_summary s)
{
    return json_pack("{s:f, s:f, s:f}", "min", s.min, "mean", s.mean, "max", s.max);
}

static json_t *ratio_json(double r)
{
    return r >= 0.0 ? json_real(r) : json_null();
}

static int write_json(const char *path, const report *rep, const moe_config *cfg, char *msg)
{
    json_t *root = json_object();
    json_t *config = json_pack(
        "{s:I, s:I, s:I, s:i, s:i, s:f, s:s, s:s, s:b, s:b, s:I, s:o, s:o}", "tokens",
        (json_int_t)cfg->tokens, "hidden", (json_int_t)cfg->hidden, "ffn", (json_int_t)cfg->ffn,
        "experts", cfg->experts, "top_k", cfg->top_k, "capacity_factor", cfg->capacity_factor,
        "capacity_scope", moe_scope_name(cfg->scope), "drop_policy", moe_policy_name(cfg->policy),
        "renormalize", cfg->renormalize, "pad_to_capacity", cfg->pad_to_capacity, "seed",
        (json_int_t)cfg->seed, "tokens_file",
        cfg->tokens_file ? json_string(cfg->tokens_file) : json_null(), "router_file",
        cfg->router_file ? json_string(cfg->router_file) : json_null());
    json_t *run = json_pack("{s:i, s:i, s:s, s:i, s:o, s:s, s:i, s:i, s:i, s:s, s:s}", "ranks",
                            rep->ranks, "nodes", rep->nodes, "host", rep->host, "cores",
                            rep->cores, "load_average",
                            rep->load_before >= 0.0 ? json_real(rep->load_before) : json_null(),
                            "date", rep->date, "iters", rep->iters, "warmup", rep->warmup,
                            "openblas_threads", rep->blas_threads, "openblas_config",
                            openblas_get_config(), "gelu_kernel",
                            moe_expert_kernel_name(moe_expert_kernel_level()));
    json_t *shape = json_pack("{s:o, s:o, s:o, s:I, s:o, s:b}", "rows_sent", summary_json(rep->n_send),
                              "rows_received", summary_json(rep->n_recv), "rows_computed",
                              summary_json(rep->rows_x), "row_bytes",
                              (json_int_t)(cfg->hidden * 4), "step_seconds",
                              summary_json(rep->step_s), "dispatch_gathers", rep->gathers);
    json_t *results = json_object();
    for (int r = 0; r < N_ROWS; r++) {
        const row_def *w = &ROWS[r];
        const figure *g = &rep->fig[r];
        json_t *o = json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:s, s:o, s:s}", "unit",
                              unit_name(w->unit), "moesim", summary_json(g->moesim), "floor",
                              summary_json(g->floor), "moesim_seconds", summary_json(g->moesim_s),
                              "floor_seconds", summary_json(g->floor_s), "ratio",
                              ratio_json(g->ratio), "floor_is", w->floor_label, "goal",
                              w->goal > 0.0 ? json_real(w->goal) : json_null(), "verdict",
                              g->pass ? "PASS" : "FAIL");
        json_object_set_new(results, w->key, o);
    }
    json_t *verdict = json_pack("{s:f, s:o, s:o, s:s}", "goal", rep->goal, "dispatch_ratio",
                                ratio_json(rep->dispatch_ratio), "combine_ratio",
                                ratio_json(rep->combine_ratio), "verdict",
                                rep->pass ? "PASS" : "FAIL");
    int rc = MOE_OK;
    if (root == NULL || config == NULL || run == NULL || shape == NULL || results == NULL ||
        verdict == NULL) {
        rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN, "could not build the JSON report");
        json_decref(config);
        json_decref(run);
        json_decref(shape);
        json_decref(results);
        json_decref(verdict);
    } else {
        json_object_set_new(root, "benchmark", json_string("moe_bench"));
        json_object_set_new(root, "moesim_version", json_string(MOE_VERSION));
        json_object_set_new(root, "run", run);
        json_object_set_new(root, "config", config);
        json_object_set_new(root, "shape", shape);
        json_object_set_new(root, "results", results);
        json_object_set_new(root, "goal", verdict);
        char tmp[4096];
        if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= sizeof tmp) {
            rc = moe_fail(MOE_EUSAGE, msg, MSG_LEN, "--json: path too long");
        } else if (json_dump_file(root, tmp, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) != 0 ||
                   rename(tmp, path) != 0) {
            remove(tmp);
            rc = moe_fail(MOE_EIO, msg, MSG_LEN, "cannot write --json '%s'", path);
        }
    }
    json_decref(root);
    return rc;
}

/* Collective (counts the nodes). */
static int describe_run(report *rep, bench *b, const moe_config *cfg, MPI_Comm node, char *msg)
{
    int node_rank = 0, leader, nodes = 1;
    MOE_MPI_CHECK(MPI_Comm_rank(node, &node_rank), msg, MSG_LEN);
    leader = node_rank == 0;
    MOE_MPI_CHECK(MPI_Allreduce(&leader, &nodes, 1, MPI_INT, MPI_SUM, b->comm), msg, MSG_LEN);
    rep->ranks = b->R;
    rep->nodes = nodes;
    rep->iters = cfg->iters;
    rep->warmup = cfg->warmup;
    if (gethostname(rep->host, sizeof rep->host) != 0)
        snprintf(rep->host, sizeof rep->host, "unknown");
    rep->host[sizeof rep->host - 1] = '\0';
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(rep->date, sizeof rep->date, "%Y-%m-%dT%H:%M:%SZ", &tm);
    rep->cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    rep->blas_threads = openblas_get_num_threads();
    rep->blas_env = getenv("OPENBLAS_NUM_THREADS") != NULL;
    return MOE_OK;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    char msg[MSG_LEN] = "";

    /* One BLAS thread per rank unless the user asked otherwise: ranks already fill the cores. */
    if (getenv("OPENBLAS_NUM_THREADS") == NULL)
        openblas_set_num_threads(1);

    /* Phase 1: options, moesim's, with the bench's repetition defaults. */
    moe_config cfg;
    moe_config_defaults(&cfg);
    cfg.iters = BENCH_ITERS;
    cfg.warmup = BENCH_WARMUP;
    int rc = moe_config_parse(&cfg, argc, argv, msg, MSG_LEN);
    if (rc != MOE_OK)
        return finish(rank, rc, msg, EXIT_REFUSED);
    if (cfg.help || cfg.version) {
        if (rank == 0 && cfg.help)
            printf("%s%s", bench_usage(), moe_config_usage());
        else if (rank == 0)
            printf("moe_bench (moesim %s; %s)\n", MOE_VERSION, openblas_get_config());
        return finish(rank, MOE_OK, msg, 0);
    }

    /* Phase 2: inputs and the JSON path, checked before any work. */
    if ((rc = moe_driver_resolve(&cfg, nranks, comm, msg, MSG_LEN)) != MOE_OK)
        return finish(rank, rc, msg, EXIT_REFUSED);
    rc = MOE_OK;
    if (rank == 0 && cfg.json_path != NULL)
        rc = moe_report_check_writable(cfg.json_path, "--json", msg, MSG_LEN);
    if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) != MOE_OK)
        return finish(rank, rc, msg, EXIT_REFUSED);

    /* Phase 3: the layer, exactly as moesim builds it. */
    bench b = {.comm = comm, .rank = rank, .R = nranks};
    b.ex.row = MPI_DATATYPE_NULL;
    rc = moe_layer_create(&b.layer, &cfg, comm, msg, MSG_LEN);
    moe_regroup_kind kind = moe_config_regroup(&cfg, nranks);
    b.gathers = (kind == MOE_REGROUP_W || kind == MOE_REGROUP_W_SLOTS) && cfg.wire == MOE_WIRE_FP32;
    if (rc != MOE_OK) {
        bench_free(&b);
        return finish(rank, rc, msg, rc == MOE_EMPI ? EXIT_FAILED : EXIT_REFUSED);
    }

    /* Phase 4: the floors' counts and buffers, sized from the layer's planned shape. */
    MPI_Comm node = MPI_COMM_NULL;
    int mrc = MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    rc = mrc == MPI_SUCCESS ? MOE_OK
                            : moe_mpi_fail(mrc, "MPI_Comm_split_type", __FILE__, __LINE__, msg,
                                           MSG_LEN);
    if ((rc = moe_agree(comm, rc, msg, MSG_LEN)) == MOE_OK)
        rc = setup_floors(&b, &cfg, node, msg);
    int iters = cfg.iters;
    double *samples = calloc((size_t)iters * S_COUNT, sizeof *samples);
    double *col = calloc((size_t)iters, sizeof *col);
    double mine[PER_RANK];
    double *all = rank == 0 ? calloc((size_t)nranks * PER_RANK, sizeof *all) : NULL;
    if (rc == MOE_OK && (!samples || !col || (rank == 0 && !all)))
        rc = moe_fail(MOE_ENOMEM, msg, MSG_LEN, "out of memory for the timings");
    rc = moe_agree(comm, rc, msg, MSG_LEN);
    /* Up to here a failure is a refusal (sizes, memory), as in moesim; from here on, a failure. */
    int status = rc == MOE_OK || rc == MOE_EMPI ? EXIT_FAILED : EXIT_REFUSED;

    /* Phase 5: warm-up, then the timed repetitions; phase 6: medians to rank 0. */
    report rep = {.load_before = load_average()};
    if (rc == MOE_OK) {
        run_repetitions(&b, &cfg, samples, msg);
        rc = reduce_medians(&b, iters, samples, col, mine, all, msg);
        rc = moe_agree(comm, rc, msg, MSG_LEN);
    }

    /* Phase 7: the report on rank 0. */
    if (rc == MOE_OK)
        rc = moe_agree(comm, describe_run(&rep, &b, &cfg, node, msg), msg, MSG_LEN);
    if (rc == MOE_OK) {
        if (rank == 0) {
            rep.gathers = b.gathers;
            build_report(&rep, all, nranks);
            if (!cfg.quiet)
                print_report(stdout, &rep, &cfg);
            print_summary_line(stdout, &rep);
            fflush(stdout);
            if (cfg.json_path != NULL)
                rc = write_json(cfg.json_path, &rep, &cfg, msg);
        }
        rc = moe_agree(comm, rc, msg, MSG_LEN);
    }

    free(samples);
    free(col);
    free(all);
    if (node != MPI_COMM_NULL)
        MPI_Comm_free(&node);
    bench_free(&b);
    return finish(rank, rc, msg, status);
}
