/* Overflow policies: which assignments an expert serves when more arrive than it has slots, per
 * expert and capacity group. Pure: no MPI. The layer's capacity protocol (decide.c) moves counts
 * and keys between ranks and calls these; the serial *_ref functions decide one group in one place
 * and are what the tests compare the distributed result with.
 *
 * One model covers the ordered policies: every assignment carries a key, and an expert serves the
 * C assignments of a group that come first in key order (key, then token id, then choice index):
 *   position  key 0                  earlier tokens first (Switch; Megatron "position")
 *   probs     key -gate              higher gate first (Megatron "probs", its default; V-MoE batch
 *                                    priority routing, Riquelme et al. 2021)
 *   choice    key = choice index c   every first choice before any second (GShard, Lepikhin et al.
 *                                    2020, Algorithm 1; DeepSpeed top2gating; Tutel)
 *   random    key = uniform(seed, MOE_STREAM_DROP, token * k + c)
 *                                    DeepSpeed's random token selection (use_rts), drawn from the
 *                                    counter generator so it does not depend on the rank count
 * Keys are unique (token, choice), so exactly min(routed, C) are served per expert and group.
 * The gate is the one that multiplies the expert output (after normalizing and --topk-scale).
 *
 * reroute (Megatron-free; in the spirit of BASE layers' reassignment): round 0 is the position
 * policy. Then, in rounds r = 1, 2, ...: every assignment still dropped proposes to the token's
 * best expert by selection score (p + b; equal scores to the lower id) among those that had room
 * at the end of round r-1 in its group and that the token holds in none of its slots (its top-k
 * choices, its served reroutes, the proposals its earlier choices made this round); proposals are
 * served by position (token, then choice) up to each expert's room. An assignment with no such
 * expert is dropped for good. The rounds end when a round makes no proposal; each round either
 * fills an expert or serves every proposal, so there are at most E + 1. */
#ifndef MOESIM_OVERFLOW_H
#define MOESIM_OVERFLOW_H

#include "moesim/capacity.h"

#include <stdbool.h>
#include <stdint.h>

/* The priority of one assignment; smaller comes first. 24 bytes, moved between ranks as bytes. */
typedef struct moe_key {
    double key;
    int64_t token;  /* global token id */
    int32_t choice; /* slot of the token: choice index (token choice) or expert id (expert choice) */
    int32_t expert; /* the expert it is for (carried, not compared) */
} moe_key;

/* < 0 when a comes before b: by key, then token, then choice. */
int moe_key_cmp(const moe_key *a, const moe_key *b);

/* The key of assignment (token, c) under policy p (position, probs, choice, random; reroute is
 * position). gate as above, k the slots per token (counter of the random draw). */
double moe_overflow_key(moe_policy p, float gate, int32_t choice, int64_t token, int k,
                        uint64_t seed);

/* Thresholds: a served assignment is one whose key is not after the threshold. */
extern const moe_key MOE_KEY_ALL;  /* everything is served (n <= C, or dropless) */
extern const moe_key MOE_KEY_NONE; /* nothing is served (C == 0) */
bool moe_key_served(const moe_key *key, const moe_key *threshold);

/* The threshold of one expert in one group: of the n keys (reordered in place), the capacity-th
 * in key order, or MOE_KEY_ALL when n <= capacity or capacity == MOE_CAPACITY_UNLIMITED, or
 * MOE_KEY_NONE when capacity == 0 < n. O(n) expected (quickselect). */
moe_key moe_overflow_threshold(moe_key *keys, int64_t n, int64_t capacity);

/* Serial reference of an ordered policy on one group: flag[i] = 1 for the assignments served.
 * keys (n_assign) with their expert; capacity is per expert (n_exp), MOE_CAPACITY_UNLIMITED
 * allowed. Sorts a copy per expert: O(n log n). scratch holds n_assign keys. */
void moe_overflow_keys_ref(uint8_t *flag, const moe_key *keys, int64_t n_assign, int n_exp,
                           const int64_t *capacity, moe_key *scratch);

/* Position over counts with a capacity per expert: counts and accepted are (n_src, n_exp),
 * row-major, sources in token order; cap (n_exp), MOE_CAPACITY_UNLIMITED allowed.
 * accepted[s][e] = clamp(cap[e] - sum_{s' < s} counts[s'][e], 0, counts[s][e]). */
void moe_overflow_position_caps(int64_t *accepted, const int64_t *counts, int n_src, int n_exp,
                                const int64_t *cap);

/* Reroute, one round's proposals on one source's n tokens (slots (n, k)). For every slot with
 * flag 0 and final_ 0, choose the token's best expert by sel (n, E) = p + b, higher first, equal
 * to the lower id, with room[e] > 0 and held by none of the token's slots (orig (n, k), the
 * router's choices, and expert (n, k), the current ones, which this call updates choice by
 * choice). Found: expert[i] = it, pending[i] = 1, proposals[e]++. None: final_[i] = 1 and
 * expert[i] = orig[i]. proposals (E) is zeroed first. Returns the number of proposals. */
int64_t moe_reroute_propose(int32_t *expert, uint8_t *pending, uint8_t *final_, int64_t *proposals,
                            const int32_t *orig, const uint8_t *flag, const float *sel,
                            const int64_t *room, int64_t n, int k, int E);

/* Reroute, settle a round: of the pending slots in token order, the first served[e] to each expert
 * e are served (flag 1, rerouted 1); the others stay dropped. pending is cleared. seen is scratch
 * of E. */
void moe_reroute_settle(uint8_t *flag, uint8_t *rerouted, uint8_t *pending, const int32_t *expert,
                        int64_t n, int k, int E, const int64_t *served, int64_t *seen);

/* The gate of a slot rerouted to expert e_new: the score the router gives it, normalized and
 * scaled as the token's top-k gates were (moe_topk_select: divided by the sum of the k chosen
 * scores when normalize, then times scale). p_row (E) the scores, orig_row (k) the choices. */
float moe_reroute_gate(const float *p_row, const int32_t *orig_row, int k, int e_new,
                       bool normalize, double scale);

/* Serial reference of reroute on one group of n tokens (all rounds): from orig (n, k), sel (n, E),
 * capacity per expert (E) (MOE_CAPACITY_UNLIMITED: nothing drops), fills expert (n, k) (the
 * serving expert; the router's choice where dropped), flag and rerouted (n, k). Returns the number
 * of rounds after round 0. Scratch: pending, final_ (n*k bytes each), room, proposals, seen (E). */
int moe_overflow_reroute_ref(int32_t *expert, uint8_t *flag, uint8_t *rerouted,
                             const int32_t *orig, const float *sel, int64_t n, int k, int E,
                             const int64_t *capacity, uint8_t *pending, uint8_t *final_,
                             int64_t *room, int64_t *proposals, int64_t *seen);

/* Expert choice (Zhou et al. 2022) on one group: expert e takes the C tokens of highest p[t][e]
 * (equal scores: lower token id), C = capacity (min with n); flag (n, E): flag[t][e] = 1 when e
 * took t. scratch holds n keys. */
void moe_expert_choice_ref(uint8_t *flag, const float *p, int64_t first_token, int64_t n, int E,
                           int64_t capacity, moe_key *scratch);

#endif
