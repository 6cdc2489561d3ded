#include "moesim/decide.h"

#include "moesim/error.h"
#include "moesim/overflow.h"
#include "moesim/tokens.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

struct moe_decider {
    moe_exchange *ex;
    MPI_Comm comm;
    int rank, R, E, k, A;
    int64_t n, first, n_le, first_e;
    moe_policy policy;
    moe_scope scope;
    moe_routing routing;
    bool normalize;
    double scale;
    uint64_t seed;
    MPI_Datatype key_type; /* one moe_key, as bytes */
    moe_key *keys;         /* (n*A) my keys in slot order                         */
    moe_key *send;         /* (n*A) the same sorted by expert: the key exchange's send buffer */
    moe_key *recv;         /* owner: the keys every source sent for my experts (grows)   */
    moe_key *one;          /* owner: one expert's keys from every source (grows)         */
    int64_t recv_cap, one_cap;
    moe_key *thr;          /* (E) every expert's threshold                               */
    moe_key *thr_mine;     /* (n_le) those of my experts                                 */
    int *sc, *sd, *rc, *rd, *tc, *td; /* (R) key counts, displacements; thresholds        */
    int64_t *cursor, *room, *proposals, *served, *seen, *total, *caps; /* (E)             */
    int64_t *owner_in, *owner_out;    /* (R, n_le)                                        */
    uint8_t *pending, *final_;        /* (n*k) reroute                                    */
    int64_t bytes;
};

static void *grab(moe_decider *d, size_t count, size_t size, int *rc)
{
    if (*rc != MOE_OK)
        return NULL;
    void *p = calloc(count ? count : 1, size);
    if (p == NULL)
        *rc = MOE_ENOMEM;
    else
        d->bytes += (int64_t)(count * size);
    return p;
}

int moe_decider_create(moe_decider **out, moe_exchange *ex, moe_policy policy, moe_scope scope,
                       moe_routing routing, int64_t n, int64_t first, int E, int k, bool normalize,
                       double scale, uint64_t seed, char *msg, size_t msglen)
{
    *out = NULL;
    moe_decider *d = calloc(1, sizeof *d);
    if (d == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for the capacity protocol");
    d->ex = ex;
    d->comm = ex->comm;
    d->rank = ex->rank;
    d->R = ex->nranks;
    d->E = E;
    d->k = k;
    d->A = routing == MOE_ROUTING_EXPERT_CHOICE ? E : k;
    d->n = n;
    d->first = first;
    moe_partition(E, d->R, d->rank, &d->first_e, &d->n_le);
    d->policy = policy;
    d->scope = scope;
    d->routing = routing;
    d->normalize = normalize;
    d->scale = scale;
    d->seed = seed;
    d->key_type = MPI_DATATYPE_NULL;
    int rc = MOE_OK;
    size_t R = (size_t)d->R, En = (size_t)E, slots = (size_t)(n * d->A);
    bool keyed = routing == MOE_ROUTING_EXPERT_CHOICE || policy == MOE_POLICY_PROBS ||
                 policy == MOE_POLICY_CHOICE || policy == MOE_POLICY_RANDOM;
    if (keyed) {
        d->keys = grab(d, slots, sizeof(moe_key), &rc);
        d->send = grab(d, slots, sizeof(moe_key), &rc);
        d->thr = grab(d, En, sizeof(moe_key), &rc);
        d->thr_mine = grab(d, (size_t)d->n_le, sizeof(moe_key), &rc);
    }
    int **ints[] = {&d->sc, &d->sd, &d->rc, &d->rd, &d->tc, &d->td};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        *ints[i] = grab(d, R, sizeof(int), &rc);
    int64_t **per_e[] = {&d->cursor, &d->room, &d->proposals, &d->served, &d->seen, &d->total,
                         &d->caps};
    for (size_t i = 0; i < sizeof per_e / sizeof per_e[0]; i++)
        *per_e[i] = grab(d, En, sizeof(int64_t), &rc);
    d->owner_in = grab(d, R * (size_t)d->n_le, sizeof(int64_t), &rc);
    d->owner_out = grab(d, R * (size_t)d->n_le, sizeof(int64_t), &rc);
    if (policy == MOE_POLICY_REROUTE && routing == MOE_ROUTING_TOKEN_CHOICE) {
        d->pending = grab(d, (size_t)(n * k), 1, &rc);
        d->final_ = grab(d, (size_t)(n * k), 1, &rc);
    }
    if (rc == MOE_OK && keyed) {
        int mrc = MPI_Type_contiguous((int)sizeof(moe_key), MPI_BYTE, &d->key_type);
        if (mrc == MPI_SUCCESS)
            mrc = MPI_Type_commit(&d->key_type);
        if (mrc != MPI_SUCCESS) {
            moe_decider_destroy(d);
            return moe_mpi_fail(mrc, "MPI_Type_commit", __FILE__, __LINE__, msg, msglen);
        }
    }
    if (rc != MOE_OK) {
        moe_decider_destroy(d);
        return moe_fail(rc, msg, msglen, "out of memory for the capacity protocol");
    }
    /* thresholds: rank r contributes its n_le experts', in expert order */
    for (int r = 0, off = 0; r < d->R; r++) {
        int64_t fe, ne;
        moe_partition(E, d->R, r, &fe, &ne);
        d->tc[r] = (int)ne;
        d->td[r] = off;
        off += (int)ne;
    }
    *out = d;
    return MOE_OK;
}

void moe_decider_destroy(moe_decider *d)
{
    if (d == NULL)
        return;
    if (d->key_type != MPI_DATATYPE_NULL)
        MPI_Type_free(&d->key_type);
    void *owned[] = {d->keys,   d->send,  d->recv,     d->one,      d->thr,      d->thr_mine,
                     d->sc,     d->sd,    d->rc,       d->rd,       d->tc,       d->td,
                     d->cursor, d->room,  d->proposals, d->served,  d->seen,     d->total,
                     d->caps,   d->owner_in, d->owner_out, d->pending, d->final_};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        free(owned[i]);
    free(d);
}

int64_t moe_decider_bytes(const moe_decider *d)
{
    return d ? d->bytes : 0;
}

/* Make room for `count` keys in *buf (grown, never shrunk: steps repeat the same sizes). */
static int reserve(moe_decider *d, moe_key **buf, int64_t *cap, int64_t count, char *msg,
                   size_t msglen)
{
    if (count <= *cap)
        return MOE_OK;
    moe_key *p = realloc(*buf, (size_t)count * sizeof *p);
    if (p == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for %lld capacity keys",
                        (long long)count);
    d->bytes += (count - *cap) * (int64_t)sizeof *p;
    *buf = p;
    *cap = count;
    return MOE_OK;
}

/* rows[e] = number of slots with flag set, by their (current) expert. */
static void count_served(int64_t *rows, const int32_t *expert, const uint8_t *flag, int64_t slots,
                         int E)
{
    for (int e = 0; e < E; e++)
        rows[e] = 0;
    for (int64_t i = 0; i < slots; i++)
        if (flag[i])
            rows[expert[i]]++;
}

/* The owners learn how many rows of each source they serve: accepted (E) forward to acc_owner. */
static int tell_owners(moe_decider *d, moe_decide_io *io, char *msg, size_t msglen)
{
    count_served(io->accepted, io->expert, io->flag, d->n * d->A, d->E);
    return moe_exchange_counts(d->ex, io->accepted, io->acc_owner, false, msg, msglen);
}

/* Position over counts: the owners decide from cnt_owner, sources learn accepted and mark their
 * first accepted[e] slots at e in token order. Collective. */
static int decide_position(moe_decider *d, moe_decide_io *io, char *msg, size_t msglen)
{
    int n_le = (int)d->n_le;
    if (d->scope == MOE_SCOPE_GLOBAL)
        moe_overflow_position(io->acc_owner, io->cnt_owner, d->R, n_le, io->group_cap[0]);
    else
        for (int s = 0; s < d->R; s++)
            moe_overflow_position(io->acc_owner + (int64_t)s * n_le,
                                  io->cnt_owner + (int64_t)s * n_le, 1, n_le, io->group_cap[s]);
    int rc = moe_exchange_counts(d->ex, io->acc_owner, io->accepted, true, msg, msglen);
    if (rc != MOE_OK)
        return rc;
    moe_mark_accepted(io->flag, io->expert, d->n, d->k, d->E, io->accepted, d->seen);
    return MOE_OK;
}

/* Global scope, keyed policies: my keys (d->keys, slot order, for the slots whose expert is
 * expert[i]) go to the owners, sorted by expert; each owner finds the threshold of each of its
 * experts over every source's keys (capacity cap); every rank learns all E thresholds and serves
 * the slots whose key is not after their expert's. per_source (R, n_le): the keys each source
 * sends for each of my experts. Collective. */
static int decide_by_threshold(moe_decider *d, moe_decide_io *io, const int64_t *per_expert,
                               const int64_t *per_source, int64_t cap, char *msg, size_t msglen)
{
    int R = d->R, E = d->E, rc = MOE_OK;
    int64_t slots = d->n * d->A, n_le = d->n_le;
    /* sort my keys by expert (counting sort, stable) */
    int64_t total = 0;
    for (int e = 0; e < E; e++) {
        d->cursor[e] = total;
        total += per_expert[e];
    }
    for (int64_t i = 0; i < slots; i++)
        if (io->expert[i] >= 0 && d->keys[i].expert >= 0)
            d->send[d->cursor[io->expert[i]]++] = d->keys[i];
    int64_t recv_total = 0, off = 0;
    for (int r = 0; r < R; r++) {
        int64_t fe, ne, s_cnt = 0, r_cnt = 0;
        moe_partition(E, R, r, &fe, &ne);
        for (int64_t e = fe; e < fe + ne; e++)
            s_cnt += per_expert[e];
        for (int64_t le = 0; le < n_le; le++)
            r_cnt += per_source[(int64_t)r * n_le + le];
        d->sc[r] = (int)s_cnt;
        d->sd[r] = (int)off;
        off += s_cnt;
        if (recv_total + r_cnt > INT_MAX)
            rc = moe_fail(MOE_ERANGE, msg, msglen,
                          "%lld capacity keys for one rank's experts are more than one "
                          "MPI_Alltoallv can address: use more ranks or fewer tokens",
                          (long long)(recv_total + r_cnt));
        d->rc[r] = (int)r_cnt;
        d->rd[r] = (int)(recv_total < INT_MAX ? recv_total : 0);
        recv_total += r_cnt;
    }
    if (rc == MOE_OK)
        rc = reserve(d, &d->recv, &d->recv_cap, recv_total, msg, msglen);
    if ((rc = moe_agree(d->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    MOE_MPI_CHECK(MPI_Alltoallv(d->send, d->sc, d->sd, d->key_type, d->recv, d->rc, d->rd,
                                d->key_type, d->comm),
                  msg, msglen);
    /* owner: each expert's keys from every source, then its threshold */
    int64_t most = 0;
    for (int64_t le = 0; le < n_le; le++) {
        int64_t m = 0;
        for (int s = 0; s < R; s++)
            m += per_source[(int64_t)s * n_le + le];
        most = m > most ? m : most;
    }
    rc = reserve(d, &d->one, &d->one_cap, most, msg, msglen);
    if ((rc = moe_agree(d->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    for (int64_t le = 0; le < n_le; le++) {
        int64_t m = 0;
        for (int s = 0; s < R; s++) {
            const moe_key *seg = d->recv + d->rd[s];
            int64_t before = 0;
            for (int64_t j = 0; j < le; j++)
                before += per_source[(int64_t)s * n_le + j];
            int64_t cnt = per_source[(int64_t)s * n_le + le];
            memcpy(d->one + m, seg + before, (size_t)cnt * sizeof *seg);
            m += cnt;
        }
        d->thr_mine[le] = moe_overflow_threshold(d->one, m, cap);
    }
    MOE_MPI_CHECK(MPI_Allgatherv(d->thr_mine, (int)n_le, d->key_type, d->thr, d->tc, d->td,
                                 d->key_type, d->comm),
                  msg, msglen);
    for (int64_t i = 0; i < slots; i++)
        io->flag[i] = io->expert[i] >= 0 && moe_key_served(&d->keys[i], &d->thr[io->expert[i]]);
    return MOE_OK;
}

/* probs, choice, random: a key per slot; local scope decides alone, global by thresholds. */
static int decide_keyed(moe_decider *d, moe_decide_io *io, char *msg, size_t msglen)
{
    int k = d->k, E = d->E;
    for (int64_t t = 0; t < d->n; t++)
        for (int c = 0; c < k; c++) {
            int64_t i = t * k + c;
            d->keys[i] = (moe_key){.key = moe_overflow_key(d->policy, io->gate[i], c, d->first + t,
                                                           k, d->seed),
                                   .token = d->first + t,
                                   .choice = c,
                                   .expert = io->expert[i]};
        }
    if (d->scope == MOE_SCOPE_LOCAL) {
        for (int e = 0; e < E; e++)
            d->caps[e] = io->group_cap[d->rank];
        moe_overflow_keys_ref(io->flag, d->keys, d->n * k, E, d->caps, d->send);
        return MOE_OK;
    }
    return decide_by_threshold(d, io, io->routed, io->cnt_owner, io->group_cap[0], msg, msglen);
}

/* Expert choice: every (token, expert) pair is a candidate with key -sel (ties: lower token). */
static int decide_expert_choice(moe_decider *d, moe_decide_io *io, char *msg, size_t msglen)
{
    int E = d->E, R = d->R, rc;
    int64_t n = d->n, n_le = d->n_le;
    if (d->scope == MOE_SCOPE_LOCAL) {
        moe_expert_choice_ref(io->flag, io->sel, d->first, n, E, io->group_cap[d->rank], d->send);
    } else {
        for (int64_t t = 0; t < n; t++)
            for (int e = 0; e < E; e++)
                d->keys[t * E + e] = (moe_key){.key = -(double)io->sel[t * E + e],
                                               .token = d->first + t,
                                               .choice = e,
                                               .expert = e};
        /* every source offers each expert all of its tokens: routed[e] = n, and cnt_owner
         * holds what each source offers (moe_decide exchanged it) */
        if ((rc = decide_by_threshold(d, io, io->routed, io->cnt_owner, io->group_cap[0], msg,
                                      msglen)) != MOE_OK)
            return rc;
    }
    if ((rc = tell_owners(d, io, msg, msglen)) != MOE_OK)
        return rc;
    /* the experts' choices are the routing: routed = accepted, nothing drops */
    memcpy(io->routed, io->accepted, (size_t)E * sizeof *io->routed);
    memcpy(io->cnt_owner, io->acc_owner, (size_t)(R * n_le) * sizeof *io->cnt_owner);
    memset(io->rerouted, 0, (size_t)(n * E));
    return MOE_OK;
}

/* Reroute after round 0: rounds of proposals until none is made. Collective in global scope. */
static int reroute_rounds(moe_decider *d, moe_decide_io *io, char *msg, size_t msglen)
{
    int E = d->E, k = d->k;
    int64_t n = d->n, cap0 = io->group_cap[d->scope == MOE_SCOPE_GLOBAL ? 0 : d->rank];
    bool global = d->scope == MOE_SCOPE_GLOBAL;
    io->rounds = 0;
    if (cap0 == MOE_CAPACITY_UNLIMITED)
        return MOE_OK; /* nothing drops */
    /* room of every expert in my group */
    if (global)
        MOE_MPI_CHECK(MPI_Allreduce(io->accepted, d->total, E, MPI_INT64_T, MPI_SUM, d->comm), msg,
                      msglen);
    else
        memcpy(d->total, io->accepted, (size_t)E * sizeof *d->total);
    for (int e = 0; e < E; e++)
        d->room[e] = cap0 - d->total[e];
    memset(d->pending, 0, (size_t)(n * k));
    memset(d->final_, 0, (size_t)(n * k));
    for (;;) {
        int64_t mine = moe_reroute_propose(io->expert, d->pending, d->final_, d->proposals,
                                           io->orig, io->flag, io->sel, d->room, n, k, E);
        int64_t all = mine;
        if (global)
            MOE_MPI_CHECK(MPI_Allreduce(&mine, &all, 1, MPI_INT64_T, MPI_SUM, d->comm), msg, msglen);
        if (all == 0)
            break;
        io->rounds++;
        if (global) {
            int rc = moe_exchange_counts(d->ex, d->proposals, d->owner_in, false, msg, msglen);
            if (rc != MOE_OK)
                return rc;
            moe_overflow_position_caps(d->owner_out, d->owner_in, d->R, (int)d->n_le,
                                       d->room + d->first_e);
            if ((rc = moe_exchange_counts(d->ex, d->owner_out, d->served, true, msg, msglen)) !=
                MOE_OK)
                return rc;
        } else {
            for (int e = 0; e < E; e++)
                d->served[e] = d->proposals[e] < d->room[e] ? d->proposals[e] : d->room[e];
        }
        moe_reroute_settle(io->flag, io->rerouted, d->pending, io->expert, n, k, E, d->served,
                           d->seen);
        if (global)
            MOE_MPI_CHECK(MPI_Allreduce(d->served, d->total, E, MPI_INT64_T, MPI_SUM, d->comm),
                          msg, msglen);
        else
            memcpy(d->total, d->served, (size_t)E * sizeof *d->total);
        for (int e = 0; e < E; e++)
            d->room[e] -= d->total[e];
    }
    /* a rerouted slot's gate is its new expert's score, made as the router made the others */
    for (int64_t i = 0; i < n * k; i++)
        if (io->rerouted[i])
            io->gate[i] = moe_reroute_gate(io->p + (i / k) * E, io->orig + (i / k) * k, k,
                                           io->expert[i], d->normalize, d->scale);
    if (!global) { /* the report shows the most rounds any group took */
        int mine = io->rounds;
        MOE_MPI_CHECK(MPI_Allreduce(&mine, &io->rounds, 1, MPI_INT, MPI_MAX, d->comm), msg, msglen);
    }
    return MOE_OK;
}

int moe_decide(moe_decider *d, moe_decide_io *io, char *msg, size_t msglen)
{
    int rc, E = d->E;
    int64_t slots = d->n * d->A;
    io->rounds = 0;
    if (d->routing == MOE_ROUTING_EXPERT_CHOICE) {
        /* each source offers each expert all of its tokens; the owners learn how many */
        for (int e = 0; e < E; e++)
            io->routed[e] = d->n;
        if ((rc = moe_exchange_counts(d->ex, io->routed, io->cnt_owner, false, msg, msglen)) !=
            MOE_OK)
            return rc;
        return decide_expert_choice(d, io, msg, msglen);
    }
    for (int e = 0; e < E; e++)
        io->routed[e] = 0;
    for (int64_t i = 0; i < slots; i++)
        io->routed[io->expert[i]]++;
    if ((rc = moe_exchange_counts(d->ex, io->routed, io->cnt_owner, false, msg, msglen)) != MOE_OK)
        return rc;
    memset(io->rerouted, 0, (size_t)slots);
    switch (d->policy) {
    case MOE_POLICY_POSITION:
        return decide_position(d, io, msg, msglen);
    case MOE_POLICY_REROUTE:
        memcpy(io->orig, io->expert, (size_t)slots * sizeof *io->orig);
        if ((rc = decide_position(d, io, msg, msglen)) != MOE_OK ||
            (rc = reroute_rounds(d, io, msg, msglen)) != MOE_OK)
            return rc;
        return tell_owners(d, io, msg, msglen);
    default:
        if ((rc = decide_keyed(d, io, msg, msglen)) != MOE_OK)
            return rc;
        return tell_owners(d, io, msg, msglen);
    }
}
