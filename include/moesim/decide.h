/* The capacity protocol: which of this rank's assignments are served, agreed with the experts'
 * owners. MPI half of the overflow policies; every decision itself is made by the pure functions
 * of overflow.h, so the result does not depend on the rank count in global scope.
 *
 *   position (and reroute's round 0)  counts to owners, accepted counts back (O(E) per rank)
 *   probs, choice, random             keys to owners, one threshold per expert back to all ranks
 *   reroute                           round 0, then rounds of proposals (counts) and replies,
 *                                     with the room of every expert agreed by an allreduce
 *   expert choice                     keys of every (token, expert) pair to owners, thresholds back
 * In local scope every group is one source rank's tokens: the source decides alone and only the
 * counts the owners need for the row exchange move.
 *
 * Slots: an assignment is slot t * A + c of this rank's n tokens, A = k (token choice) or E
 * (expert choice: slot t * E + e is the pair (t, e)). */
#ifndef MOESIM_DECIDE_H
#define MOESIM_DECIDE_H

#include "moesim/capacity.h"
#include "moesim/exchange.h"
#include "moesim/router.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct moe_decider moe_decider;

/* What a decision reads and writes, all this rank's (pointers into the layer's buffers). */
typedef struct moe_decide_io {
    /* in */
    const float *sel;        /* (n, E) selection scores p + b: reroute and expert choice */
    const float *p;          /* (n, E) scores: the gate of a rerouted slot */
    const int64_t *group_cap;/* capacity per group: [0] global, [s] for source s when local */
    /* in and out */
    int32_t *expert;         /* (n, A) the router's choices in; the serving experts out */
    float *gate;             /* (n, A) gates; a rerouted slot's gate is rewritten */
    /* out */
    int32_t *orig;           /* (n, k) reroute only: the router's choices */
    uint8_t *flag;           /* (n, A) 1 = served */
    uint8_t *rerouted;       /* (n, A) 1 = served after a reroute */
    int64_t *routed;         /* (E) this rank's router assignments per expert (expert choice:
                              * the pairs the experts chose) */
    int64_t *cnt_owner;      /* (R, n_le) what each source routed to my experts */
    int64_t *acc_owner;      /* (R, n_le) what I serve of it (rows that will arrive) */
    int64_t *accepted;       /* (E) rows of mine each expert serves */
    int rounds;              /* reroute: rounds after round 0 (the same on every rank) */
} moe_decide_io;

/* Set up for this rank's n tokens [first, first + n), E experts in contiguous blocks, k choices.
 * normalize and scale are how the router made gates (for rerouted gates). Collective: no.
 * MOE_ENOMEM. */
int moe_decider_create(moe_decider **out, moe_exchange *ex, moe_policy policy, moe_scope scope,
                       moe_routing routing, int64_t n, int64_t first, int E, int k,
                       bool normalize, double scale, uint64_t seed, char *msg, size_t msglen);
void moe_decider_destroy(moe_decider *d);

/* Decide. Collective over ex->comm; returns the same code on every rank. */
int moe_decide(moe_decider *d, moe_decide_io *io, char *msg, size_t msglen);

/* Bytes the decider holds (its key buffers grow to the largest decision seen). */
int64_t moe_decider_bytes(const moe_decider *d);

#endif
