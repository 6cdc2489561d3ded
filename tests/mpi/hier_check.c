/* hier_check: the hierarchical all-to-all (moe_hier_exchange) against the flat MPI_Alltoallv of the
 * same rows with the same row datatype, bit for bit (memcmp), in both directions, for several node
 * layouts, row sizes and seeded count matrices, planned from the whole matrix (moe_hier_plan) and
 * from each rank's own row and column (moe_hier_plan_rows); and the refusals of moe_hier_create,
 * moe_hier_plan and moe_hier_plan_rows.
 *
 *   mpirun -n R hier_check            correctness; one line per case on rank 0; exit 0 or 1
 *   mpirun -n R hier_check --time [MiB]
 *                                     also time flat vs hierarchical, each rank sending MiB (8)
 *
 * Every verdict is agreed over ranks (MPI_Allreduce) before anyone prints or exits, so a rank that
 * fails never leaves the others waiting in a collective. */
#include "moesim/error.h"
#include "moesim/exchange.h"
#include "moesim/hier.h"
#include "moesim/rng.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_LAYOUTS = 6, N_CASES = 5, GUARD_BYTES = 256 };
static const char *layout_names[N_LAYOUTS] = {"one-node", "own-node", "pairs",
                                              "rank%2",   "R-1+1",    "1+R-1"};
static const int row_sizes[] = {1, 7, 64};

static int rank, R;

/* node of each rank under layout kind; all are numbered in order of each node's lowest rank */
static void make_layout(int kind, int *node)
{
    for (int r = 0; r < R; r++) {
        switch (kind) {
        case 0: node[r] = 0; break;
        case 1: node[r] = r; break;
        case 2: node[r] = r / 2; break;
        case 3: node[r] = r % 2; break;
        case 4: node[r] = R > 1 && r == R - 1 ? 1 : 0; break; /* uneven: 3+1 at R = 4 */
        default: node[r] = r == 0 ? 0 : 1; break;           /* a leader alone, then the rest */
        }
    }
}

/* Count matrix (R, R) [src][dst] of case ci under seed; identical on every rank. */
static void make_counts(int ci, uint64_t seed, int64_t *C)
{
    for (int s = 0; s < R; s++)
        for (int t = 0; t < R; t++) {
            uint64_t u = moe_rng_u64(seed, 1000 + ci, (uint64_t)s * R + t);
            int64_t c = 0;
            switch (ci) {
            case 0: c = 0; break;                                  /* nothing moves        */
            case 1: c = u % 3 == 0 ? 0 : (int64_t)(u >> 8) % 6; break; /* small, a third zero */
            case 2: c = (int64_t)(u % 21); break;                  /* dense, zero row/col  */
            case 3: c = u % 10 < 7 ? 0 : (int64_t)(u >> 8) % 40; break; /* sparse            */
            default: c = (int64_t)(u % 4); break;                  /* rank 0 silent        */
            }
            C[(int64_t)s * R + t] = c;
        }
    if (ci == 2) {
        int zr = R - 1, zc = R / 2; /* a whole zero row and column, and one large entry */
        for (int i = 0; i < R; i++)
            C[(int64_t)zr * R + i] = C[(int64_t)i * R + zc] = 0;
        C[0 * R + (R > 1 ? 1 : 0)] = 3001;
    }
    if (ci == 3)
        for (int r = 0; r < R; r++)
            C[(int64_t)r * R + r] += 500; /* large self traffic */
    if (ci == 4)
        for (int i = 0; i < R; i++) /* the leader of every layout sends and receives nothing */
            C[0 * R + i] = C[(int64_t)i * R + 0] = 0;
}

/* Value of column j of row i from src to dst: a finite float (bit 30 clear) from a hash. */
static float encode(int src, int dst, int64_t i, int j, int dir)
{
    uint64_t key = ((uint64_t)src << 44) ^ ((uint64_t)dst << 24) ^ ((uint64_t)i << 8) ^ (uint64_t)j;
    uint32_t bits = (uint32_t)moe_rng_mix(key * 2 + (uint64_t)dir) & 0xBFFFFFFFu;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static int agree_ok(int ok)
{
    int all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

typedef struct buffers {
    float *send, *ref, *got, *want;
    int *sc, *sd, *rc, *rd;
    int64_t send_rows, recv_rows;
} buffers;

/* Rows of direction dir: M = C (forward) or its transpose (reverse); counts/displs for MPI. */
static int setup(buffers *b, const int64_t *C, int dir, int d)
{
    memset(b, 0, sizeof *b);
    b->sc = malloc(4 * (size_t)R * sizeof(int));
    if (b->sc == NULL)
        return 0;
    b->sd = b->sc + R, b->rc = b->sc + 2 * R, b->rd = b->sc + 3 * R;
    for (int r = 0; r < R; r++) {
        int64_t out = dir == 0 ? C[(int64_t)rank * R + r] : C[(int64_t)r * R + rank];
        int64_t in = dir == 0 ? C[(int64_t)r * R + rank] : C[(int64_t)rank * R + r];
        b->sc[r] = (int)out, b->sd[r] = (int)b->send_rows, b->send_rows += out;
        b->rc[r] = (int)in, b->rd[r] = (int)b->recv_rows, b->recv_rows += in;
    }
    size_t sbytes = (size_t)b->send_rows * d * sizeof(float) + 4;
    size_t rbytes = (size_t)b->recv_rows * d * sizeof(float) + GUARD_BYTES;
    b->send = malloc(sbytes), b->ref = malloc(rbytes), b->got = malloc(rbytes);
    b->want = malloc(rbytes);
    if (b->send == NULL || b->ref == NULL || b->got == NULL || b->want == NULL)
        return 0;
    for (int t = 0, pos = 0; t < R; t++)
        for (int64_t i = 0; i < b->sc[t]; i++, pos++)
            for (int j = 0; j < d; j++)
                b->send[(int64_t)pos * d + j] = encode(rank, t, i, j, dir);
    for (int s = 0, pos = 0; s < R; s++)
        for (int64_t i = 0; i < b->rc[s]; i++, pos++)
            for (int j = 0; j < d; j++)
                b->want[(int64_t)pos * d + j] = encode(s, rank, i, j, dir);
    memset(b->ref, 0xA5, rbytes);
    memset(b->got, 0xA5, rbytes); /* the guard beyond the rows must stay 0xA5 */
    return 1;
}

static void release(buffers *b)
{
    free(b->send), free(b->ref), free(b->got), free(b->want), free(b->sc);
}

static int guard_intact(const buffers *b, int d)
{
    const unsigned char *g = (const unsigned char *)(b->got + b->recv_rows * d);
    for (int i = 0; i < GUARD_BYTES; i++)
        if (g[i] != 0xA5)
            return 0;
    return 1;
}

/* One direction of one case: flat reference, hierarchical, compare. Returns 1 if all is well. */
static int run_dir(moe_hier *h, MPI_Datatype row, const int64_t *C, int dir, int d, char *msg,
                   size_t msglen)
{
    buffers b;
    int ok = setup(&b, C, dir, d);
    if (!agree_ok(ok)) {
        snprintf(msg, msglen, "out of memory for the test buffers");
        release(&b);
        return 0;
    }
    int mrc = MPI_Alltoallv(b.send, b.sc, b.sd, row, b.ref, b.rc, b.rd, row, MPI_COMM_WORLD);
    int rc = moe_hier_exchange(h, b.send, b.got, dir == 1, msg, msglen);
    rc = moe_agree(MPI_COMM_WORLD, rc, msg, msglen);
    size_t bytes = (size_t)b.recv_rows * d * sizeof(float);
    ok = mrc == MPI_SUCCESS && rc == MOE_OK;
    if (mrc != MPI_SUCCESS)
        snprintf(msg, msglen, "the flat MPI_Alltoallv failed");
    if (ok && memcmp(b.ref, b.want, bytes) != 0)
        ok = 0, snprintf(msg, msglen, "flat reference differs from the expected rows");
    else if (ok && memcmp(b.got, b.ref, bytes) != 0)
        ok = 0, snprintf(msg, msglen, "hierarchical differs from flat");
    else if (ok && !guard_intact(&b, d))
        ok = 0, snprintf(msg, msglen, "hierarchical wrote past its receive rows");
    release(&b);
    /* the lowest failing rank's message reaches rank 0 */
    return moe_agree(MPI_COMM_WORLD, ok ? MOE_OK : MOE_EINVAL, msg, msglen) == MOE_OK;
}

/* moe_hier_plan_rows from this rank's row and column of C (collective; agreed inside). */
static int plan_own(moe_hier *h, const int64_t *C, char *msg, size_t msglen)
{
    int64_t *col = malloc((size_t)R * sizeof *col);
    int ok = col != NULL;
    if (!agree_ok(ok)) {
        free(col);
        return MOE_ENOMEM;
    }
    for (int s = 0; s < R; s++)
        col[s] = C[(int64_t)s * R + rank];
    int rc = moe_hier_plan_rows(h, C + (int64_t)rank * R, col, msg, msglen);
    free(col);
    return rc;
}

/* Both planners refuse C with the same code, on every rank. */
static int both_refuse(moe_hier *h, const int64_t *C, int code, char *msg, size_t msglen)
{
    int full = moe_hier_plan(h, C, msg, msglen);
    int own = plan_own(h, C, msg, msglen);
    return full == code && own == code;
}

/* Plans the hierarchical path must refuse, the same way on every rank. Returns 1 if all did. */
static int check_refusals(moe_hier *h, const int *node, char *line, size_t linelen)
{
    int64_t *bad = calloc((size_t)R * R, sizeof *bad);
    char msg[512] = "";
    int ok = bad != NULL, n = 0;
    if (ok) {
        bad[R - 1] = (int64_t)INT_MAX + 1; /* one pair beyond int */
        ok = both_refuse(h, bad, MOE_ERANGE, msg, sizeof msg), n++;
        bad[R - 1] = -1;
        ok = both_refuse(h, bad, MOE_EINVAL, msg, sizeof msg) && ok, n++;
        bad[R - 1] = 0;
        /* a node of >= 3 ranks, leader l and non-leaders p, q: p sends 2^30 rows to l and 1 to
         * q, q sends 2^30 - 1 to l. Every rank sends and receives at most INT_MAX rows (the flat
         * limits), but the leader would gather 2^31 rows (forward), or scatter them (the
         * transpose, where the forward gather is small), so both are refused. */
        for (int k = 0; k < R; k++) {
            int mem[3], m = 0;
            for (int r = 0; r < R && m < 3; r++)
                if (node[r] == k)
                    mem[m++] = r;
            if (m == 3) {
                for (int transpose = 0; transpose < 2; transpose++) {
                    int l = mem[0], p = mem[1], q = mem[2];
#define AT(s, t) bad[transpose ? (int64_t)(t) * R + (s) : (int64_t)(s) * R + (t)]
                    AT(p, l) = 1 << 30, AT(p, q) = 1, AT(q, l) = (1 << 30) - 1;
#undef AT
                    ok = both_refuse(h, bad, MOE_ERANGE, msg, sizeof msg) && ok, n++;
                    memset(bad, 0, (size_t)R * R * sizeof *bad);
                }
                break;
            }
        }
        /* two nodes of >= 2 ranks: two sources in one send 2^30 rows each to the other node */
        int a = node[0], bnode = -1, a2 = -1, b1 = -1, b2 = -1;
        for (int r = 1; r < R; r++)
            if (node[r] == a && a2 < 0)
                a2 = r;
        for (int r = 0; r < R && bnode < 0; r++)
            if (node[r] != a) {
                for (int q = r + 1; q < R; q++)
                    if (node[q] == node[r]) {
                        bnode = node[r], b1 = r, b2 = q;
                        break;
                    }
            }
        if (a2 > 0 && bnode >= 0) {
            bad[0 * R + b1] = bad[(int64_t)a2 * R + b2] = 1 << 30;
            ok = both_refuse(h, bad, MOE_ERANGE, msg, sizeof msg) && ok, n++;
        }
    }
    free(bad);
    snprintf(line, linelen, "%d refused plans", n);
    return agree_ok(ok);
}

/* moe_hier_create must refuse a misnumbered layout, and layouts that differ between ranks. */
static int check_create_refusals(void)
{
    int *node = malloc((size_t)R * sizeof(int)), ok = node != NULL;
    char msg[512] = "";
    MPI_Datatype row;
    MPI_Type_contiguous(3, MPI_FLOAT, &row);
    MPI_Type_commit(&row);
    if (agree_ok(ok)) {
        moe_hier *h = NULL;
        for (int r = 0; r < R; r++)
            node[r] = R - 1 - r; /* rank 0 on the highest node */
        if (R > 1)
            ok = moe_hier_create(&h, MPI_COMM_WORLD, node, row, 12, msg, sizeof msg) ==
                     MOE_EINVAL && h == NULL;
        if (R > 1) { /* rank 0 sees one node, the others one node each */
            for (int r = 0; r < R; r++)
                node[r] = rank == 0 ? 0 : r;
            ok = moe_hier_create(&h, MPI_COMM_WORLD, node, row, 12, msg, sizeof msg) ==
                     MOE_EINVAL && h == NULL && ok;
        }
        for (int r = 0; r < R; r++)
            node[r] = 0;
        ok = moe_hier_create(&h, MPI_COMM_WORLD, node, row, 0, msg, sizeof msg) == MOE_EINVAL &&
             h == NULL && ok;
        ok = agree_ok(ok);
    } else {
        ok = 0;
    }
    MPI_Type_free(&row);
    free(node);
    return ok;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* --time: uniform counts, each rank sending `mib` MiB in rows of 1 KiB; per-rank median over the
 * iterations, then min / mean / max of the medians over ranks. */
static int run_timing(double mib)
{
    enum { D = 256, WARMUP = 5, ITERS = 30 };
    int64_t per_dst = (int64_t)(mib * 1024.0 * 1024.0 / (D * sizeof(float)) / R);
    if (per_dst < 1)
        per_dst = 1;
    int64_t *C = malloc((size_t)R * R * sizeof *C);
    int *node = malloc((size_t)R * sizeof *node);
    double *t = malloc(ITERS * sizeof *t);
    if (!agree_ok(C != NULL && node != NULL && t != NULL))
        return 0;
    for (int64_t i = 0; i < (int64_t)R * R; i++)
        C[i] = per_dst;
    MPI_Datatype row;
    MPI_Type_contiguous(D, MPI_FLOAT, &row);
    MPI_Type_commit(&row);
    buffers b;
    int ok = agree_ok(setup(&b, C, 0, D));
    char msg[512] = "";
    if (rank == 0) {
        printf("# timing: %d ranks, each sending %lld rows of %d bytes to every rank (%.2f MiB per "
               "rank), %d iterations after %d warm-up, seconds\n",
               R, (long long)per_dst, (int)(D * sizeof(float)),
               (double)per_dst * R * D * sizeof(float) / (1024.0 * 1024.0), ITERS, WARMUP);
        printf("# %-12s %-8s %12s %12s %12s %10s\n", "layout", "path", "min_s", "mean_s", "max_s",
               "vs_flat");
    }
    const int layouts[] = {2, 1, 0}; /* pairs (2 nodes at R = 4), own-node, one-node */
    double flat_max = 0;
    for (int li = -1; ok && li < 3; li++) {
        moe_hier *h = NULL;
        if (li >= 0) {
            make_layout(layouts[li], node);
            int rc = moe_hier_create(&h, MPI_COMM_WORLD, node, row, D * sizeof(float), msg,
                                     sizeof msg);
            if (rc == MOE_OK)
                rc = moe_agree(MPI_COMM_WORLD, moe_hier_plan(h, C, msg, sizeof msg), msg,
                               sizeof msg);
            if (rc != MOE_OK) {
                if (rank == 0)
                    printf("FAIL timing setup: %s\n", msg);
                moe_hier_destroy(h);
                ok = 0;
                break;
            }
        }
        for (int it = 0; it < WARMUP + ITERS; it++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            if (h == NULL)
                MPI_Alltoallv(b.send, b.sc, b.sd, row, b.ref, b.rc, b.rd, row, MPI_COMM_WORLD);
            else
                moe_hier_exchange(h, b.send, b.got, false, msg, sizeof msg);
            double dt = MPI_Wtime() - t0;
            if (it >= WARMUP)
                t[it - WARMUP] = dt;
        }
        if (h != NULL)
            ok = agree_ok(memcmp(b.got, b.ref, (size_t)b.recv_rows * D * sizeof(float)) == 0);
        qsort(t, ITERS, sizeof *t, cmp_double);
        double med = t[ITERS / 2], lo, hi, sum;
        MPI_Allreduce(&med, &lo, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(&med, &hi, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(&med, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (h == NULL)
            flat_max = hi;
        if (rank == 0)
            printf("  %-12s %-8s %12.6f %12.6f %12.6f %9.2fx%s\n",
                   li < 0 ? "-" : layout_names[layouts[li]], li < 0 ? "flat" : "hier", lo,
                   sum / R, hi, hi / flat_max, ok ? "" : "  MISMATCH");
        moe_hier_destroy(h);
    }
    release(&b);
    MPI_Type_free(&row);
    free(C), free(node), free(t);
    return ok;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &R);
    double time_mib = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--time") == 0) {
            time_mib = 8;
            if (i + 1 < argc && atof(argv[i + 1]) > 0)
                time_mib = atof(argv[++i]);
        } else {
            if (rank == 0)
                fprintf(stderr, "usage: hier_check [--time [MiB]]\n");
            MPI_Finalize();
            return 2;
        }
    }

    int failures = 0, cases = 0;
    if (rank == 0)
        printf("# hier_check: %d ranks; flat MPI_Alltoallv vs moe_hier_exchange, memcmp\n", R);
    int ok = check_create_refusals();
    failures += !ok, cases++;
    if (rank == 0)
        printf("%s create refuses a misnumbered layout, differing layouts, a zero row size\n",
               ok ? "ok  " : "FAIL");

    int *node = malloc((size_t)R * sizeof *node);
    int64_t *C = malloc((size_t)R * R * sizeof *C);
    if (!agree_ok(node != NULL && C != NULL)) {
        if (rank == 0)
            printf("FAIL out of memory\n");
        MPI_Finalize();
        return 1;
    }
    for (int layout = 0; layout < N_LAYOUTS; layout++) {
        make_layout(layout, node);
        for (size_t di = 0; di < sizeof row_sizes / sizeof row_sizes[0]; di++) {
            int d = row_sizes[di];
            MPI_Datatype row;
            MPI_Type_contiguous(d, MPI_FLOAT, &row);
            MPI_Type_commit(&row);
            char msg[1024] = "", what[128] = "";
            moe_hier *h = NULL;
            int rc = moe_hier_create(&h, MPI_COMM_WORLD, node, row, d * (int64_t)sizeof(float),
                                     msg, sizeof msg);
            if (rc != MOE_OK) {
                if (rank == 0)
                    printf("FAIL R=%d %-8s d=%-2d create: %s\n", R, layout_names[layout], d, msg);
                failures++, cases++;
                MPI_Type_free(&row);
                continue;
            }
            for (int ci = 0; ci < N_CASES; ci++) {
                uint64_t seed = 0x5EED0000u + (uint64_t)layout * 131 + (uint64_t)d * 7 + ci;
                make_counts(ci, seed, C);
                rc = moe_agree(MPI_COMM_WORLD, moe_hier_plan(h, C, msg, sizeof msg), msg,
                               sizeof msg);
                ok = rc == MOE_OK;
                what[0] = '\0';
                /* refused plans after a good one: the good plan must stay in effect */
                if (ok && ci == 2 && !check_refusals(h, node, what, sizeof what)) {
                    ok = 0;
                    snprintf(msg, sizeof msg, "a plan was not refused as it should be");
                }
                ok = ok && run_dir(h, row, C, 0, d, msg, sizeof msg);
                ok = ok && run_dir(h, row, C, 1, d, msg, sizeof msg);
                /* the same plan from each rank's own row and column (what the layer passes) */
                moe_hier_stats st, st_full;
                moe_hier_stats_get(h, &st_full);
                if (ok) {
                    rc = plan_own(h, C, msg, sizeof msg);
                    ok = rc == MOE_OK;
                }
                ok = ok && run_dir(h, row, C, 0, d, msg, sizeof msg);
                ok = ok && run_dir(h, row, C, 1, d, msg, sizeof msg);
                /* statistics summed over ranks, and what the layout implies about them */
                moe_hier_stats_get(h, &st);
                if (ok && !agree_ok(memcmp(&st, &st_full, sizeof st) == 0)) {
                    ok = 0;
                    snprintf(msg, sizeof msg, "moe_hier_plan_rows and moe_hier_plan disagree on "
                                              "the statistics");
                }
                int64_t mine[4] = {st.messages[0], st.messages[1], st.messages[2], st.copy_bytes},
                        sum[4];
                MPI_Allreduce(mine, sum, 4, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
                if (ok && ((layout == 0 && sum[1] != 0) || (layout == 1 && (sum[0] || sum[2])) ||
                           (ci == 0 && (sum[0] || sum[1] || sum[2] || sum[3])))) {
                    ok = 0;
                    snprintf(msg, sizeof msg, "message statistics contradict the layout");
                }
                int64_t total = 0;
                for (int64_t i = 0; i < (int64_t)R * R; i++)
                    total += C[i];
                failures += !ok, cases++;
                if (rank == 0)
                    printf("%s R=%d %-8s d=%-2d case=%d rows=%-6lld msgs gather/leaders/scatter "
                           "%lld/%lld/%lld fwd+rev %s%s%s\n",
                           ok ? "ok  " : "FAIL", R, layout_names[layout], d, ci, (long long)total,
                           (long long)sum[0], (long long)sum[1], (long long)sum[2], what,
                           ok ? "" : ": ", ok ? "" : msg);
            }
            moe_hier_destroy(h);
            MPI_Type_free(&row);
        }
    }
    free(node), free(C);

    if (time_mib > 0 && !run_timing(time_mib))
        failures++;
    if (rank == 0)
        printf("# %d cases, %d failed: %s\n", cases, failures, failures ? "INVALID" : "VALID");
    MPI_Finalize();
    return failures ? 1 : 0;
}
