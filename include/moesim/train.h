/* Expert-parallel training, the pure pieces (--mode fwd-bwd, --mode train): the expert FFN's
 * backward, the router's backward through the gates, the auxiliary and z-loss gradients, the
 * task's loss and the optimizers. Pure: no MPI; the layer (src/train_layer.c) moves the rows.
 * Every gradient here is checked against finite differences in tests/unit/test_train.c.
 * Sources, one line each, in docs/training.md. Shapes row-major as in expert.h and router.h. */
#ifndef MOESIM_TRAIN_H
#define MOESIM_TRAIN_H

#include "moesim/expert.h"
#include "moesim/router.h"

#include <stdbool.h>
#include <stdint.h>

/* GELU's derivative, d/dx x Phi(x) = Phi(x) + x phi(x), with moe_erf. */
float moe_gelu_grad(float x);

/* The backward of moe_expert_forward_save (expert.h) from dy = dL/dy (m, d): dw2 (d, f) +=
 * dy^T act; dpre (m, f) = (dy W2) * GELU'(pre) (scratch, overwritten); dw1 (f, d) += dpre^T x;
 * dx (m, d) = dpre W1 (dx NULL: not computed). dw1 and dw2 accumulate: the caller zeroes them. m may be 0. */
void moe_expert_backward(float *dx, float *dw1, float *dw2, float *dpre, const float *dy,
                         const float *x, const float *pre, const float *act, const float *w1,
                         const float *w2, int64_t m, int64_t d, int64_t f);

/* The gates of one token as moe_topk_select makes them, gate_c = scale * s[e_c] / T with T =
 * the sum of the k chosen scores when normalize (else T = 1; T = 0 leaves every gate 0):
 * ds (E) = dL/ds from dgate (k), the gradients of its k gates (0 for a dropped assignment:
 * dropped assignments get no gradient). ds is overwritten; unchosen experts get 0. */
void moe_gate_backward_row(float *ds, const float *score, const int32_t *expert,
                           const float *dgate, int E, int k, bool normalize, double scale);

/* The Switch auxiliary loss alpha E sum_i f_i P_i through P_i = (1/N) sum_t prob_t,i, f_i held
 * constant (Fedus et al. 2021; Megatron-Core switch_load_balancing_loss_func): coef_i = alpha E
 * f_i / N is dL/dprob_t,i. ds += its gradient through prob = the score (softmax) or s / sum_e s
 * (sigmoid, as moe_router_probs_row). */
void moe_aux_backward_row(float *ds, const float *score, const double *coef, int E,
                          moe_score kind);

/* dz (E) = dL/dz of one token from ds through its score function (softmax p or sigmoid s of
 * the logits z), plus the z-loss beta (1/N) sum_t lse(z_t)^2 with zcoef = beta / N: dz +=
 * zcoef 2 lse(z) softmax(z). score is the score row the router made from z. */
void moe_score_backward_row(float *dz, const float *ds, const float *score, const float *z,
                            int E, moe_score kind, double zcoef);

/* The task's loss, mean squared error over the global batch: returns sum over the n rows of
 * sum_j (y - target)^2 (double), and gy (n, d) = dL/dy = 2 (y - target) / (N_global d). */
double moe_mse_grad(float *gy, const float *y, const float *target, int64_t n, int64_t d,
                    int64_t n_global);

/* --lr's default (docs/training.md: the documented configuration). */
#define MOE_TRAIN_DEFAULT_LR 1.0
#define MOE_TRAIN_DEFAULT_OPTIMIZER MOE_OPT_SGD
/* The teacher's expert e has the weights moe_expert_init gives expert id MOE_TEACHER_ID + e
 * (2 MOE_MAX_EXPERTS: beyond every routed and shared expert). */
#define MOE_TEACHER_ID 131072
/* --mode train without --token-mean: the shared direction of its tokens. */
#define MOE_TRAIN_DEFAULT_TOKEN_MEAN 0.5

/* Optimizers (--optimizer), on n weights w with gradient g. */
typedef enum moe_optimizer {
    MOE_OPT_SGD = 0, /* SGD with momentum (PyTorch's form): v = mu v + g; w -= lr v           */
    MOE_OPT_ADAM = 1 /* Adam (Kingma & Ba 2015): m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
                      * w -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)              */
} moe_optimizer;

const char *moe_optimizer_name(moe_optimizer o);

#define MOE_SGD_MOMENTUM 0.9
#define MOE_ADAM_BETA1 0.9
#define MOE_ADAM_BETA2 0.999
#define MOE_ADAM_EPS 1e-8

/* One SGD-with-momentum step: vel (n) is the state, zero at the start. */
void moe_sgd_step(float *w, float *vel, const float *g, int64_t n, double lr, double momentum);

/* One Adam step t (1-based): m and v (n each) are the state, zero at the start. */
void moe_adam_step(float *w, float *m, float *v, const float *g, int64_t n, double lr, int64_t t);

/* Optimizer state floats per weight: 1 (SGD's velocity) or 2 (Adam's moments). */
int moe_optimizer_state_per_weight(moe_optimizer o);

#endif
