/* The layer's backward and its optimizer (--mode fwd-bwd, --mode train; docs/training.md): the
 * teacher task, the backward phases after the forward step, and the update. The arithmetic is
 * train.h's (pure, unit-tested against finite differences); this file moves the rows with the
 * step's own exchanges and agrees on the sums. Collective where layer.h says so. */
#include "layer_internal.h"

#include "moesim/dispatch.h"
#include "moesim/combine.h"
#include "moesim/error.h"
#include "moesim/expert.h"
#include "moesim/rng.h"
#include "moesim/train.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The teacher: a top-1 MoE of T experts (--teacher-experts, 1 by default: one dense FFN) of the
 * layer's shape with a router of its own, y* = h + T_e*(h), e* = argmax of the teacher's logits. Its weights are the generator's, as a routed
 * expert's and the router's, from streams of their own (rng.h, MOE_STREAM_TEACHER). */
int moe_train_create(moe_layer *L, char *msg, size_t msglen)
{
    const moe_config *c = &L->cfg;
    int rc = MOE_OK;
    size_t Ed = (size_t)L->E * (size_t)L->d, fd = (size_t)L->f * (size_t)L->d;
    size_t T = (size_t)c->teacher_experts;
    size_t nd = (size_t)(L->n * L->d), nE = (size_t)L->n * (size_t)L->E;
    size_t wle = (size_t)L->n_le * fd; /* contiguous experts, no replicas: n_ls = n_le */
    L->t_router = moe_layer_alloc(L, T * (size_t)L->d, sizeof(float), &rc);
    L->t_w1 = moe_layer_alloc(L, T * fd, sizeof(float), &rc);
    L->t_w2 = moe_layer_alloc(L, T * fd, sizeof(float), &rc);
    L->target = moe_layer_alloc(L, nd, sizeof(float), &rc);
    L->gy = moe_layer_alloc(L, nd, sizeof(float), &rc);
    L->dh = moe_layer_alloc(L, nd, sizeof(float), &rc);
    L->z_save = moe_layer_alloc(L, nE, sizeof(float), &rc);
    L->dz = moe_layer_alloc(L, nE, sizeof(float), &rc);
    L->dgate = moe_layer_alloc(L, (size_t)(L->n * L->A), sizeof(float), &rc);
    L->g_router = moe_layer_alloc(L, Ed, sizeof(float), &rc);
    L->g_w1 = moe_layer_alloc(L, wle, sizeof(float), &rc);
    L->g_w2 = moe_layer_alloc(L, wle, sizeof(float), &rc);
    if (c->mode == MOE_MODE_TRAIN) {
        size_t s = (size_t)moe_optimizer_state_per_weight(c->optimizer);
        L->opt_router = moe_layer_alloc(L, s * Ed, sizeof(float), &rc);
        L->opt_w1 = moe_layer_alloc(L, s * wle, sizeof(float), &rc);
        L->opt_w2 = moe_layer_alloc(L, s * wle, sizeof(float), &rc);
    }
    if (rc != MOE_OK)
        moe_fail(rc, msg, msglen, "out of memory for the training state (teacher, gradients, "
                                  "optimizer)");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    moe_rng_fill_normal(L->t_router, T * (size_t)L->d, c->seed, MOE_STREAM_TEACHER, 0,
                        1.0 / sqrt((double)L->d));
    for (int e = 0; e < (int)T; e++)
        moe_expert_init(L->t_w1 + (size_t)e * fd, L->t_w2 + (size_t)e * fd, c->seed,
                        MOE_TEACHER_ID + e, L->d, L->f);
    moe_train_target(L);
    return MOE_OK;
}

void moe_train_target(moe_layer *L)
{
    int64_t n = L->n, d = L->d, f = L->f;
    int E = L->cfg.teacher_experts;
    float *x = malloc((size_t)(d + f + d) * sizeof *x);
    if (x == NULL) { /* a few rows of scratch: without it the target stays y* = h */
        memcpy(L->target, L->h, (size_t)(n * d) * sizeof *L->target);
        return;
    }
    float *act = x + d, *out = act + f;
    for (int64_t t = 0; t < n; t++) {
        const float *ht = L->h + t * d;
        /* e* = argmax_e <w_e, h_t>, in double, ties to the lower id */
        int best = 0;
        double bz = -INFINITY;
        for (int e = 0; e < E; e++) {
            double acc = 0.0;
            const float *w = L->t_router + (int64_t)e * d;
            for (int64_t j = 0; j < d; j++)
                acc += (double)w[j] * (double)ht[j];
            if (acc > bz) {
                bz = acc;
                best = e;
            }
        }
        memcpy(x, ht, (size_t)d * sizeof *x);
        moe_expert_forward(out, act, x, L->t_w1 + (int64_t)best * f * d,
                           L->t_w2 + (int64_t)best * d * f, 1, d, f);
        for (int64_t j = 0; j < d; j++)
            L->target[t * d + j] = ht[j] + out[j];
    }
    free(x);
}

int moe_train_size(moe_layer *L, char *msg, size_t msglen)
{
    (void)msg;
    (void)msglen;
    int rc = MOE_OK;
    size_t rf = (size_t)(L->rows_x * L->f), rd = (size_t)(L->rows_x * L->d);
    L->pre = moe_layer_alloc(L, rf, sizeof(float), &rc);
    L->dpre = moe_layer_alloc(L, rf, sizeof(float), &rc);
    L->gout = moe_layer_alloc(L, rd, sizeof(float), &rc); /* zero: the padding rows stay so */
    return rc;
}

void moe_train_free(moe_layer *L)
{
    void *owned[] = {L->t_router, L->t_w1, L->t_w2, L->target, L->gy, L->dh, L->z_save, L->dz,
                     L->dgate, L->g_router, L->g_w1, L->g_w2, L->opt_router, L->opt_w1,
                     L->opt_w2, L->pre, L->dpre, L->gout};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        free(owned[i]);
}

static double sum_sq(const float *x, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += (double)x[i] * (double)x[i];
    return s;
}

/* After the forward of moe_layer_step: y, the expert outputs in sendbuf (send order), x and the
 * saved activations at the owners. */
int moe_train_backward(moe_layer *L, double *seconds, char *msg, size_t msglen)
{
    const moe_config *c = &L->cfg;
    int64_t n = L->n, d = L->d, f = L->f, A = L->A, N = c->tokens;
    int E = L->E, rc;
    double t[8], wait_c[3], wait_d[3];
    bool raw = L->raw_this_step;
    L->raw_this_step = false; /* the raw baselines time the forward's exchanges only */

    /* combine_bwd: dL/dy of the task, each served assignment's gate gradient gy . o (o the
     * expert's output row, back in sendbuf), and its row gate * gy towards the expert */
    t[0] = MPI_Wtime();
    double sq_task = moe_mse_grad(L->gy, L->y, L->target, n, d, N);
    memset(L->dgate, 0, (size_t)(n * A) * sizeof *L->dgate);
    for (int64_t i = 0; i < L->n_send; i++) {
        int64_t s = L->slot[i], tok = s / A;
        const float *o = L->sendbuf + i * d, *g = L->gy + tok * d;
        float *row = L->sendbuf + i * d, gate = L->gate[s];
        double dot = 0.0;
        for (int64_t j = 0; j < d; j++)
            dot += (double)g[j] * (double)o[j];
        L->dgate[s] = (float)dot;
        for (int64_t j = 0; j < d; j++)
            row[j] = gate * g[j];
    }
    if ((rc = moe_layer_exchange_timed(L, L->sendbuf, L->recvbuf, false, wait_c, msg, msglen)) !=
        MOE_OK) {
        L->raw_this_step = raw;
        return rc;
    }
    t[1] = MPI_Wtime();

    /* expert_bwd: the rows into the experts' blocks, the four GEMMs, the input gradients back in
     * arrival order (the same staging as the forward's copy regroup) */
    moe_regroup_to_experts(L->gout, L->recvbuf, L->acc_slot, L->R, (int)L->n_ls, L->x_start, d,
                           L->placed);
    memset(L->g_w1, 0, (size_t)(L->n_ls * f * d) * sizeof *L->g_w1);
    memset(L->g_w2, 0, (size_t)(L->n_ls * f * d) * sizeof *L->g_w2);
    for (int64_t ls = 0; ls < L->n_ls; ls++) {
        int64_t at = L->x_start[ls];
        moe_expert_backward(L->yexp + at * d, L->g_w1 + ls * f * d, L->g_w2 + ls * d * f,
                            L->dpre + at * f, L->gout + at * d, L->x + at * d, L->pre + at * f,
                            L->act + at * f, L->w1 + ls * f * d, L->w2 + ls * d * f,
                            L->x_rows[ls], d, f);
    }
    moe_regroup_from_experts(L->recvbuf, L->yexp, L->acc_slot, L->R, (int)L->n_ls, L->x_start, d,
                             L->placed);
    t[2] = MPI_Wtime();

    /* dispatch_bwd: the input gradients to their tokens; dh = gy (the residual) + their sum */
    if ((rc = moe_layer_exchange_timed(L, L->recvbuf, L->sendbuf, true, wait_d, msg, msglen)) !=
        MOE_OK) {
        L->raw_this_step = raw;
        return rc;
    }
    memcpy(L->dh, L->gy, (size_t)(n * d) * sizeof *L->dh);
    for (int64_t i = 0; i < L->n_send; i++) {
        float *dst = L->dh + (L->slot[i] / A) * d;
        const float *src = L->sendbuf + i * d;
        for (int64_t j = 0; j < d; j++)
            dst[j] += src[j];
    }
    t[3] = MPI_Wtime();

    /* the loss sums every rank needs before the router's gradient: routed counts and summed
     * probabilities (the aux loss's f and P), the z-loss's lse^2 and the task's squares */
    double *st = calloc((size_t)(2 * E + 2), sizeof *st), *all = calloc((size_t)(2 * E + 2), sizeof *all);
    float *prob = malloc((size_t)E * sizeof *prob), *ds = malloc((size_t)E * sizeof *ds);
    double *coef = malloc((size_t)E * sizeof *coef);
    rc = st && all && prob && ds && coef ? MOE_OK : moe_fail(MOE_ENOMEM, msg, msglen, "out of memory");
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        goto done;
    for (int64_t i = 0; i < n * A; i++)
        st[L->expert[i]] += 1.0;
    double lse_sq = 0.0;
    for (int64_t tk = 0; tk < n; tk++) {
        moe_router_probs_row(prob, L->probs + tk * E, E, c->score);
        for (int e = 0; e < E; e++)
            st[E + e] += (double)prob[e];
        double lse;
        moe_logsumexp_rows(&lse, L->z_save + tk * E, 1, E);
        lse_sq += lse * lse;
    }
    st[2 * E] = lse_sq;
    st[2 * E + 1] = sq_task;
    double t_ar0 = MPI_Wtime();
    int mrc = MPI_Allreduce(st, all, 2 * E + 2, MPI_DOUBLE, MPI_SUM, L->comm);
    double t_ar1 = MPI_Wtime();
    if (mrc != MPI_SUCCESS) {
        rc = moe_mpi_fail(mrc, "MPI_Allreduce", __FILE__, __LINE__, msg, msglen);
        goto done;
    }

    /* router_bwd: dz per token through gates, aux loss and z-loss; dW = dz^T h; dh += dz W */
    double alpha = c->aux_loss_coeff, beta = c->z_loss_coeff, aux = 0.0;
    for (int e = 0; e < E; e++) {
        double fe = all[e] / ((double)N * (double)L->k);
        coef[e] = alpha * E * fe / (double)N;
        aux += fe * all[E + e] / (double)N;
    }
    L->loss_aux = alpha * E * aux;
    L->loss_z = beta * all[2 * E] / (double)N;
    L->loss_task = all[2 * E + 1] / ((double)N * (double)d);
    bool normalize = c->renormalize || c->score == MOE_SCORE_SIGMOID;
    for (int64_t tk = 0; tk < n; tk++) {
        const float *score = L->probs + tk * E;
        moe_gate_backward_row(ds, score, L->expert + tk * A, L->dgate + tk * A, E, (int)A,
                              normalize, c->topk_scale);
        if (alpha != 0.0)
            moe_aux_backward_row(ds, score, coef, E, c->score);
        moe_score_backward_row(L->dz + tk * E, ds, score, L->z_save + tk * E, E, c->score,
                               beta / (double)N);
    }
    if (n > 0) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, E, (int)d, (int)n, 1.0f, L->dz, E,
                    L->h, (int)d, 0.0f, L->g_router, (int)d);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)d, E, 1.0f, L->dz, E,
                    L->w_router, (int)d, 1.0f, L->dh, (int)d);
    } else {
        memset(L->g_router, 0, (size_t)E * (size_t)d * sizeof *L->g_router);
    }
    t[4] = MPI_Wtime();

    /* allreduce: the replicated router's gradient summed over ranks, in place (in pieces of at
     * most 2^30 floats: E d may pass an int count) */
    for (int64_t off = 0, total = (int64_t)E * d; mrc == MPI_SUCCESS && off < total;
         off += (int64_t)1 << 30) {
        int count = (int)(total - off < ((int64_t)1 << 30) ? total - off : (int64_t)1 << 30);
        mrc = MPI_Allreduce(MPI_IN_PLACE, L->g_router + off, count, MPI_FLOAT, MPI_SUM, L->comm);
    }
    t[5] = MPI_Wtime();
    if (mrc != MPI_SUCCESS) {
        rc = moe_mpi_fail(mrc, "MPI_Allreduce", __FILE__, __LINE__, msg, msglen);
        goto done;
    }

    /* the gradients' sizes, for the report and the tests (untimed) */
    double mine[2] = {sum_sq(L->g_w1, L->n_ls * f * d) + sum_sq(L->g_w2, L->n_ls * f * d),
                      sum_sq(L->dh, n * d)},
           tot[2];
    if ((mrc = MPI_Allreduce(mine, tot, 2, MPI_DOUBLE, MPI_SUM, L->comm)) != MPI_SUCCESS) {
        rc = moe_mpi_fail(mrc, "MPI_Allreduce", __FILE__, __LINE__, msg, msglen);
        goto done;
    }
    L->grad_sq[0] = sum_sq(L->g_router, (int64_t)E * d);
    L->grad_sq[1] = tot[0];
    L->grad_sq[2] = tot[1];

    if (seconds != NULL) {
        seconds[MOE_PHASE_COMBINE_BWD_WAIT] = wait_c[0];
        seconds[MOE_PHASE_COMBINE_BWD] = (t[1] - t[0]) - wait_c[0];
        seconds[MOE_PHASE_EXPERT_BWD] = t[2] - t[1];
        seconds[MOE_PHASE_DISPATCH_BWD_WAIT] = wait_d[0];
        seconds[MOE_PHASE_DISPATCH_BWD] = (t[3] - t[2]) - wait_d[0];
        seconds[MOE_PHASE_ROUTER_BWD] = (t[4] - t[3]) - (t_ar1 - t_ar0);
        seconds[MOE_PHASE_ALLREDUCE] = (t_ar1 - t_ar0) + (t[5] - t[4]);
    }
done:
    L->raw_this_step = raw;
    free(st);
    free(all);
    free(prob);
    free(ds);
    free(coef);
    return rc;
}

int moe_layer_train_update(moe_layer *L, char *msg, size_t msglen)
{
    (void)msg;
    (void)msglen;
    const moe_config *c = &L->cfg;
    if (c->mode != MOE_MODE_TRAIN)
        return MOE_OK;
    int64_t Ed = (int64_t)L->E * L->d, wle = L->n_ls * L->f * L->d;
    L->opt_steps++;
    if (c->optimizer == MOE_OPT_ADAM) {
        moe_adam_step(L->w_router, L->opt_router, L->opt_router + Ed, L->g_router, Ed, c->lr,
                      L->opt_steps);
        moe_adam_step(L->w1, L->opt_w1, L->opt_w1 + wle, L->g_w1, wle, c->lr, L->opt_steps);
        moe_adam_step(L->w2, L->opt_w2, L->opt_w2 + wle, L->g_w2, wle, c->lr, L->opt_steps);
    } else {
        moe_sgd_step(L->w_router, L->opt_router, L->g_router, Ed, c->lr, MOE_SGD_MOMENTUM);
        moe_sgd_step(L->w1, L->opt_w1, L->g_w1, wle, c->lr, MOE_SGD_MOMENTUM);
        moe_sgd_step(L->w2, L->opt_w2, L->g_w2, wle, c->lr, MOE_SGD_MOMENTUM);
    }
    return MOE_OK;
}

void moe_layer_training(const moe_layer *L, moe_training *out)
{
    out->ran = L->backward;
    out->task_loss = L->loss_task;
    out->aux_loss = L->loss_aux;
    out->z_loss = L->loss_z;
    out->grad_norm_router = sqrt(L->grad_sq[0]);
    out->grad_norm_experts = sqrt(L->grad_sq[1]);
    out->grad_norm_input = sqrt(L->grad_sq[2]);
    out->optimizer_steps = L->opt_steps;
}
