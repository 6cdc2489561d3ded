/* Overflow policies: the key model of position / probs / choice / random, the threshold of one
 * expert in one group, reroute rounds and expert choice (contracts and sources in overflow.h). */
#include "moesim/overflow.h"

#include "moesim/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Sentinels that compare after (ALL) or before (NONE) every real key: real keys are finite. */
const moe_key MOE_KEY_ALL = {INFINITY, INT64_MAX, INT32_MAX, -1};
const moe_key MOE_KEY_NONE = {-INFINITY, INT64_MIN, INT32_MIN, -1};

int moe_key_cmp(const moe_key *a, const moe_key *b)
{
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    if (a->token != b->token)
        return a->token < b->token ? -1 : 1;
    if (a->choice != b->choice)
        return a->choice < b->choice ? -1 : 1;
    return 0;
}

double moe_overflow_key(moe_policy p, float gate, int32_t choice, int64_t token, int k,
                        uint64_t seed)
{
    switch (p) {
    case MOE_POLICY_PROBS:
        return -(double)gate;
    case MOE_POLICY_CHOICE:
        return (double)choice;
    case MOE_POLICY_RANDOM:
        /* DeepSpeed use_rts, drawn per (token, choice) so it does not depend on the rank count */
        return moe_rng_uniform(seed, MOE_STREAM_DROP, (uint64_t)token * (uint64_t)k + (uint64_t)choice);
    case MOE_POLICY_POSITION:
    case MOE_POLICY_REROUTE:
    default:
        return 0.0;
    }
}

bool moe_key_served(const moe_key *key, const moe_key *threshold)
{
    return moe_key_cmp(key, threshold) <= 0;
}

static void key_swap(moe_key *a, moe_key *b)
{
    moe_key t = *a;
    *a = *b;
    *b = t;
}

moe_key moe_overflow_threshold(moe_key *keys, int64_t n, int64_t capacity)
{
    if (capacity == MOE_CAPACITY_UNLIMITED || n <= capacity)
        return MOE_KEY_ALL;
    if (capacity == 0)
        return MOE_KEY_NONE;
    /* Quickselect (Hoare 1961, FIND) for rank capacity-1, three-way partition so that equal keys
     * cannot make it quadratic; the pivot index comes from a SplitMix64 sequence seeded by n, so
     * the result and the work are deterministic (no rand()) and O(n) expected. */
    int64_t want = capacity - 1, lo = 0, hi = n - 1;
    uint64_t state = (uint64_t)n;
    while (lo < hi) {
        state += UINT64_C(0x9E3779B97F4A7C15);
        int64_t pi = lo + (int64_t)(moe_rng_mix(state) % (uint64_t)(hi - lo + 1));
        moe_key pivot = keys[pi];
        /* [lo, lt) < pivot, [lt, i) == pivot, (gt, hi] > pivot */
        int64_t lt = lo, i = lo, gt = hi;
        while (i <= gt) {
            int c = moe_key_cmp(&keys[i], &pivot);
            if (c < 0)
                key_swap(&keys[lt++], &keys[i++]);
            else if (c > 0)
                key_swap(&keys[i], &keys[gt--]);
            else
                i++;
        }
        if (want < lt)
            hi = lt - 1;
        else if (want > gt)
            lo = gt + 1;
        else
            return pivot;
    }
    return keys[want];
}

/* Expert first, then key order: groups a sorted copy into one run per expert. */
static int key_by_expert_cmp(const void *pa, const void *pb)
{
    const moe_key *a = pa, *b = pb;
    if (a->expert != b->expert)
        return a->expert < b->expert ? -1 : 1;
    return moe_key_cmp(a, b);
}

/* First index in sorted[0, n) that does not come before x (key_by_expert_cmp order). */
static int64_t lower_bound(const moe_key *sorted, int64_t n, const moe_key *x)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (key_by_expert_cmp(&sorted[mid], x) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void moe_overflow_keys_ref(uint8_t *flag, const moe_key *keys, int64_t n_assign, int n_exp,
                           const int64_t *capacity, moe_key *scratch)
{
    (void)n_exp;
    if (n_assign == 0)
        return;
    /* scratch: the keys sorted by (expert, key order); an assignment's rank at its expert is its
     * position in that expert's run, found by binary search. */
    memcpy(scratch, keys, (size_t)n_assign * sizeof *scratch);
    qsort(scratch, (size_t)n_assign, sizeof *scratch, key_by_expert_cmp);
    for (int64_t i = 0; i < n_assign; i++) {
        int64_t cap = capacity[keys[i].expert];
        if (cap == MOE_CAPACITY_UNLIMITED) {
            flag[i] = 1;
            continue;
        }
        moe_key run_start = {-INFINITY, INT64_MIN, INT32_MIN, keys[i].expert};
        int64_t rank = lower_bound(scratch, n_assign, &keys[i]) -
                       lower_bound(scratch, n_assign, &run_start);
        flag[i] = rank < cap;
    }
}

void moe_overflow_position_caps(int64_t *accepted, const int64_t *counts, int n_src, int n_exp,
                                const int64_t *cap)
{
    for (int e = 0; e < n_exp; e++) {
        int64_t used = 0;
        for (int s = 0; s < n_src; s++) {
            int64_t want = counts[(int64_t)s * n_exp + e];
            int64_t take = want;
            if (cap[e] != MOE_CAPACITY_UNLIMITED) {
                int64_t left = cap[e] - used > 0 ? cap[e] - used : 0;
                take = want < left ? want : left;
            }
            accepted[(int64_t)s * n_exp + e] = take;
            used += take;
        }
    }
}

/* Does the token hold expert e in one of its slots (its router choices or its current ones)? */
static bool token_holds(const int32_t *orig_row, const int32_t *expert_row, int k, int e)
{
    for (int c = 0; c < k; c++)
        if (orig_row[c] == e || expert_row[c] == e)
            return true;
    return false;
}

int64_t moe_reroute_propose(int32_t *expert, uint8_t *pending, uint8_t *final_, int64_t *proposals,
                            const int32_t *orig, const uint8_t *flag, const float *sel,
                            const int64_t *room, int64_t n, int k, int E)
{
    for (int e = 0; e < E; e++)
        proposals[e] = 0;
    int64_t made = 0;
    for (int64_t t = 0; t < n; t++) {
        const float *sr = sel + t * E;
        const int32_t *orow = orig + t * k;
        int32_t *erow = expert + t * k;
        for (int c = 0; c < k; c++) {
            int64_t i = t * k + c;
            if (flag[i] || final_[i])
                continue;
            /* best by selection score, strict '>' over increasing ids: ties to the lower id; an
             * unlimited expert (MOE_CAPACITY_UNLIMITED) always has room */
            int best = -1;
            for (int e = 0; e < E; e++) {
                if (!(room[e] > 0 || room[e] == MOE_CAPACITY_UNLIMITED))
                    continue;
                if (best >= 0 && !(sr[e] > sr[best]))
                    continue;
                if (token_holds(orow, erow, k, e))
                    continue;
                best = e;
            }
            if (best < 0) {
                final_[i] = 1;
                erow[c] = orow[c];
                continue;
            }
            erow[c] = best;
            pending[i] = 1;
            proposals[best]++;
            made++;
        }
    }
    return made;
}

void moe_reroute_settle(uint8_t *flag, uint8_t *rerouted, uint8_t *pending, const int32_t *expert,
                        int64_t n, int k, int E, const int64_t *served, int64_t *seen)
{
    for (int e = 0; e < E; e++)
        seen[e] = 0;
    for (int64_t i = 0; i < n * k; i++) {
        if (!pending[i])
            continue;
        int e = expert[i];
        if (seen[e] < served[e]) {
            flag[i] = 1;
            rerouted[i] = 1;
        }
        seen[e]++;
        pending[i] = 0;
    }
}

float moe_reroute_gate(const float *p_row, const int32_t *orig_row, int k, int e_new,
                       bool normalize, double scale)
{
    /* the arithmetic of moe_topk_select: sum in double over the k chosen p in choice order, one
     * rounding to float, then the scale */
    float gate = p_row[e_new];
    if (normalize) {
        double sum = 0.0;
        for (int c = 0; c < k; c++)
            sum += p_row[orig_row[c]];
        gate = sum > 0.0 ? (float)(gate / sum) : 0.0f;
    }
    if (scale != 1.0)
        gate = (float)((double)gate * scale);
    return gate;
}

int moe_overflow_reroute_ref(int32_t *expert, uint8_t *flag, uint8_t *rerouted,
                             const int32_t *orig, const float *sel, int64_t n, int k, int E,
                             const int64_t *capacity, uint8_t *pending, uint8_t *final_,
                             int64_t *room, int64_t *proposals, int64_t *seen)
{
    int64_t nk = n * k;
    /* round 0: position in token order; room = capacity - served */
    for (int e = 0; e < E; e++)
        room[e] = capacity[e];
    for (int64_t i = 0; i < nk; i++) {
        int e = orig[i];
        expert[i] = e;
        rerouted[i] = 0;
        pending[i] = 0;
        final_[i] = 0;
        if (room[e] == MOE_CAPACITY_UNLIMITED) {
            flag[i] = 1;
        } else {
            flag[i] = room[e] > 0;
            room[e] -= flag[i];
        }
    }
    int rounds = 0;
    for (;;) {
        if (moe_reroute_propose(expert, pending, final_, proposals, orig, flag, sel, room, n, k,
                                E) == 0)
            break;
        rounds++;
        /* one source: the first min(proposals, room) to each expert are served */
        for (int e = 0; e < E; e++) {
            if (room[e] == MOE_CAPACITY_UNLIMITED)
                continue;
            proposals[e] = proposals[e] < room[e] ? proposals[e] : room[e];
            room[e] -= proposals[e];
        }
        moe_reroute_settle(flag, rerouted, pending, expert, n, k, E, proposals, seen);
    }
    return rounds;
}

/* Descending score, ties to the lower token: the key model with key = -p. */
static int key_qsort_cmp(const void *a, const void *b)
{
    return moe_key_cmp(a, b);
}

void moe_expert_choice_ref(uint8_t *flag, const float *p, int64_t first_token, int64_t n, int E,
                           int64_t capacity, moe_key *scratch)
{
    int64_t C = capacity == MOE_CAPACITY_UNLIMITED || capacity > n ? n : capacity;
    for (int e = 0; e < E; e++) {
        for (int64_t t = 0; t < n; t++)
            scratch[t] = (moe_key){-(double)p[t * E + e], first_token + t, e, e};
        qsort(scratch, (size_t)n, sizeof *scratch, key_qsort_cmp);
        moe_key threshold = C == 0 ? MOE_KEY_NONE : scratch[C - 1];
        for (int64_t t = 0; t < n; t++) {
            moe_key key = {-(double)p[t * E + e], first_token + t, e, e};
            flag[t * E + e] = moe_key_served(&key, &threshold);
        }
    }
}
