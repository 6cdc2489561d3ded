#include "moesim/placement.h"

#include "moesim/npy.h"

#include "moesim/error.h"
#include "moesim/fileout.h"
#include "moesim/loss.h"
#include "moesim/tokens.h"

#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static const char *const kind_names[] = {"contiguous", "strided", "eplb"};
#define N_KINDS ((int)(sizeof kind_names / sizeof *kind_names))

const char *moe_place_kind_name(moe_place_kind kind)
{
    return (int)kind >= 0 && (int)kind < N_KINDS ? kind_names[kind] : "unknown";
}

int moe_place_kind_parse(const char *name, moe_place_kind *out, char *msg, size_t msglen)
{
    for (int k = 0; k < N_KINDS; k++)
        if (name != NULL && strcmp(name, kind_names[k]) == 0) {
            *out = (moe_place_kind)k;
            return MOE_OK;
        }
    return moe_fail(MOE_EUSAGE, msg, msglen,
                    "unknown placement '%s'; choose contiguous, strided or eplb",
                    name != NULL ? name : "(null)");
}

/* ---- EPLB, global policy (github.com/deepseek-ai/EPLB, eplb.py) ---- */

void moe_eplb_replicate(int32_t *phy2log, int32_t *phy_replica, int32_t *replicas,
                        const double *loads, int E, int N)
{
    for (int e = 0; e < E; e++) {
        phy2log[e] = e;
        phy_replica[e] = 0;
        replicas[e] = 1;
    }
    /* replicate_experts: each extra replica goes to argmax_e load_e / replicas_e; the strict '>'
     * keeps the lowest id among ties, as torch's max(dim) returns the first maximum. */
    for (int i = E; i < E + N; i++) {
        int best = 0;
        double best_w = loads[0] / replicas[0];
        for (int e = 1; e < E; e++) {
            double w = loads[e] / replicas[e];
            if (w > best_w) {
                best = e;
                best_w = w;
            }
        }
        phy2log[i] = best;
        phy_replica[i] = replicas[best];
        replicas[best]++;
    }
}

typedef struct weighted_item {
    double w;
    int32_t i;
} weighted_item;

/* Descending weight, then ascending index: a total order, so qsort's instability cannot show. */
static int by_weight_desc(const void *a, const void *b)
{
    const weighted_item *x = a, *y = b;
    if (x->w != y->w)
        return x->w > y->w ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

int moe_eplb_pack(int32_t *pack, const double *weight, int n, int R, char *msg, size_t msglen)
{
    if (n < 1 || R < 1 || n % R != 0)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "cannot pack %d physical experts onto %d ranks: the count must be a "
                        "positive multiple of the rank count (EPLB's balanced_packing)",
                        n, R);
    int per_rank = n / R;
    if (per_rank == 1) { /* balanced_packing's shortcut: item i on pack i, no sort */
        for (int i = 0; i < n; i++)
            pack[i] = i;
        return MOE_OK;
    }
    weighted_item *order = malloc((size_t)n * sizeof *order);
    double *rank_w = calloc((size_t)R, sizeof *rank_w);
    int32_t *rank_n = calloc((size_t)R, sizeof *rank_n);
    if (order == NULL || rank_w == NULL || rank_n == NULL) {
        free(order);
        free(rank_w);
        free(rank_n);
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory packing %d experts", n);
    }
    for (int i = 0; i < n; i++)
        order[i] = (weighted_item){weight[i], i};
    qsort(order, (size_t)n, sizeof *order, by_weight_desc);
    /* The lightest rank with a free slot, lowest rank on ties (Python's min keeps the first).
     * O(n R): fine for the few thousand slots of real layers. */
    for (int k = 0; k < n; k++) {
        int best = -1;
        for (int r = 0; r < R; r++)
            if (rank_n[r] < per_rank && (best < 0 || rank_w[r] < rank_w[best]))
                best = r;
        pack[order[k].i] = best;
        rank_w[best] += order[k].w;
        rank_n[best]++;
    }
    free(order);
    free(rank_w);
    free(rank_n);
    return MOE_OK;
}

/* ---- the map ---- */

void moe_expert_map_free(moe_expert_map *m)
{
    if (m == NULL)
        return;
    free(m->logical);
    memset(m, 0, sizeof *m);
}

/* Carve the arrays from one block. logical is the block's start (what free releases). */
static int map_alloc(moe_expert_map *m, int E, int R, int P)
{
    size_t n = 4 * (size_t)P + (size_t)R + 1 + 2 * (size_t)E + 1;
    int32_t *block = malloc(n * sizeof *block);
    if (block == NULL)
        return MOE_ENOMEM;
    m->E = E, m->R = R, m->P = P;
    m->logical = block;
    m->replica = m->logical + P;
    m->rank = m->replica + P;
    m->replica_slot = m->rank + P;
    m->first_slot = m->replica_slot + P;
    m->replicas = m->first_slot + R + 1;
    m->replica_start = m->replicas + E;
    return MOE_OK;
}

/* Lay the slots out rank-major from home (P), the rank of replica j of expert e at
 * home[replica_start[e] + j], with replicas and replica_start already set. Visiting experts in
 * increasing id and replicas in increasing index fills each rank's slots in that order. */
static void map_fill(moe_expert_map *m, const int32_t *home, int32_t *cursor)
{
    for (int r = 0; r <= m->R; r++)
        m->first_slot[r] = 0;
    for (int q = 0; q < m->P; q++)
        m->first_slot[home[q] + 1]++;
    for (int r = 0; r < m->R; r++)
        m->first_slot[r + 1] += m->first_slot[r];
    for (int r = 0; r < m->R; r++)
        cursor[r] = m->first_slot[r];
    for (int e = 0; e < m->E; e++)
        for (int j = 0; j < m->replicas[e]; j++) {
            int q = m->replica_start[e] + j, r = home[q], s = cursor[r]++;
            m->logical[s] = e;
            m->replica[s] = j;
            m->rank[s] = r;
            m->replica_slot[q] = s;
        }
}

static void set_replica_start(moe_expert_map *m)
{
    m->replica_start[0] = 0;
    for (int e = 0; e < m->E; e++)
        m->replica_start[e + 1] = m->replica_start[e] + m->replicas[e];
}

/* EPLB: replicate, pack, then home[(e, j)] = the rank physical expert (e, j) was packed onto. */
static int eplb_home(moe_expert_map *m, const double *loads, int32_t *home, char *msg,
                     size_t msglen)
{
    int E = m->E, P = m->P;
    int32_t *phy2log = malloc((size_t)P * sizeof *phy2log);
    int32_t *phy_replica = malloc((size_t)P * sizeof *phy_replica);
    int32_t *pack = malloc((size_t)P * sizeof *pack);
    double *weight = malloc((size_t)P * sizeof *weight);
    int rc = MOE_OK;
    if (phy2log == NULL || phy_replica == NULL || pack == NULL || weight == NULL) {
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory placing %d experts", P);
        goto done;
    }
    moe_eplb_replicate(phy2log, phy_replica, m->replicas, loads, E, P - E);
    for (int i = 0; i < P; i++) /* tokens_per_phy: each replica carries an even share */
        weight[i] = loads[phy2log[i]] / m->replicas[phy2log[i]];
    if ((rc = moe_eplb_pack(pack, weight, P, m->R, msg, msglen)) != MOE_OK)
        goto done;
    set_replica_start(m);
    for (int i = 0; i < P; i++)
        home[m->replica_start[phy2log[i]] + phy_replica[i]] = pack[i];
done:
    free(phy2log);
    free(phy_replica);
    free(pack);
    free(weight);
    return rc;
}

int moe_expert_map_build(moe_expert_map *m, moe_place_kind kind, int E, int R, int redundant,
                         const double *loads, char *msg, size_t msglen)
{
    memset(m, 0, sizeof *m);
    if (E < 1 || R < 1 || redundant < 0)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "placement needs experts >= 1, ranks >= 1 and redundant >= 0 "
                        "(got %d, %d, %d)",
                        E, R, redundant);
    if ((int)kind < 0 || (int)kind >= N_KINDS)
        return moe_fail(MOE_EUSAGE, msg, msglen, "unknown placement kind %d", (int)kind);
    if ((int64_t)E + redundant > INT32_MAX)
        return moe_fail(MOE_EUSAGE, msg, msglen, "%d experts + %d redundant is too many", E,
                        redundant);
    int P = E + redundant;
    if (kind != MOE_PLACE_EPLB && redundant > 0)
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%d redundant experts need the eplb placement, not %s", redundant,
                        moe_place_kind_name(kind));
    if (kind == MOE_PLACE_EPLB) {
        if (loads == NULL)
            return moe_fail(MOE_EUSAGE, msg, msglen, "the eplb placement needs per-expert loads");
        if (P % R != 0)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "eplb needs experts + redundant (%d + %d = %d) to be a multiple of the "
                            "rank count %d, so that every rank holds as many slots (as EPLB does)",
                            E, redundant, P, R);
        for (int e = 0; e < E; e++)
            if (!isfinite(loads[e]) || loads[e] < 0.0)
                return moe_fail(MOE_EINVAL, msg, msglen,
                                "load of expert %d is %g; loads must be finite and >= 0", e,
                                loads[e]);
    }
    if (map_alloc(m, E, R, P) != MOE_OK) {
        memset(m, 0, sizeof *m);
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for a map of %d slots", P);
    }
    m->kind = kind;
    int32_t *home = malloc((size_t)P * sizeof *home);
    int32_t *cursor = malloc((size_t)R * sizeof *cursor);
    int rc = MOE_OK;
    if (home == NULL || cursor == NULL) {
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory for a map of %d slots", P);
        goto done;
    }
    if (kind == MOE_PLACE_EPLB) {
        rc = eplb_home(m, loads, home, msg, msglen);
    } else {
        for (int e = 0; e < E; e++)
            m->replicas[e] = 1;
        set_replica_start(m);
        for (int e = 0; e < E; e++)
            home[e] = kind == MOE_PLACE_CONTIGUOUS ? moe_partition_owner(E, R, e) : e % R;
    }
    if (rc == MOE_OK)
        map_fill(m, home, cursor);
done:
    free(home);
    free(cursor);
    if (rc != MOE_OK)
        moe_expert_map_free(m);
    return rc;
}

int moe_expert_map_colocated(const moe_expert_map *m)
{
    /* a rank's slots are sorted by logical id: a second copy sits right after the first */
    int n = 0;
    for (int s = 1; s < m->P; s++)
        n += m->rank[s] == m->rank[s - 1] && m->logical[s] == m->logical[s - 1];
    return n;
}

void moe_expert_map_slot_loads(double *slot_load, const moe_expert_map *m, const double *loads)
{
    for (int s = 0; s < m->P; s++)
        slot_load[s] = loads[m->logical[s]] / m->replicas[m->logical[s]];
}

double moe_rank_overload(double *rank_load, const moe_expert_map *m, const double *slot_load)
{
    for (int r = 0; r < m->R; r++) {
        double sum = 0.0;
        for (int s = m->first_slot[r]; s < m->first_slot[r + 1]; s++)
            sum += slot_load[s];
        rank_load[r] = sum;
    }
    return moe_max_over_mean(rank_load, m->R);
}

/* ---- loads from a file ---- */

#define NPY_MAGIC "\x93NUMPY"
#define LOADS_MAX_BYTES (INT64_C(1) << 30) /* far above any E a layer has */

static int bad_load(double v)
{
    return !isfinite(v) || v < 0.0;
}

/* Find `'key':` (or "key") in the header dictionary; the text just past the colon and spaces. */

/* buf (len bytes) holds a whole .npy file. */
static int loads_npy(const char *path, const unsigned char *buf, size_t len, int E, double *loads,
                     char *msg, size_t msglen)
{
    if (len < 10)
        return moe_fail(MOE_EFORMAT, msg, msglen, "'%s': truncated .npy header", path);
    int major = buf[6];
    size_t hlen, prefix;
    if (major == 1) {
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
        prefix = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12)
            return moe_fail(MOE_EFORMAT, msg, msglen, "'%s': truncated .npy header", path);
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        prefix = 12;
    } else {
        return moe_fail(MOE_EFORMAT, msg, msglen, "'%s': unsupported .npy format version %d", path,
                        major);
    }
    if (hlen > len - prefix)
        return moe_fail(MOE_EFORMAT, msg, msglen, "'%s': truncated .npy header", path);
    char *dict = malloc(hlen + 1);
    if (dict == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory reading '%s'", path);
    memcpy(dict, buf + prefix, hlen);
    dict[hlen] = '\0';
    int rc = MOE_OK;
    const char *descr = moe_npy_dict_value(dict, "descr"), *order = moe_npy_dict_value(dict, "fortran_order"),
               *shape = moe_npy_dict_value(dict, "shape");
    char dtype[8] = {0};
    int item = 0;
    bool is_int = false;
    if (strlen(dict) != hlen) {
        rc = moe_fail(MOE_EFORMAT, msg, msglen, "'%s': .npy header contains a NUL byte", path);
        goto done;
    }
    if (descr == NULL || order == NULL || shape == NULL) {
        rc = moe_fail(MOE_EFORMAT, msg, msglen,
                      "'%s': .npy header lacks one of 'descr', 'fortran_order', 'shape'", path);
        goto done;
    }
    if ((*descr == '\'' || *descr == '"') && strchr(descr + 1, *descr) != NULL &&
        strchr(descr + 1, *descr) - (descr + 1) < (ptrdiff_t)sizeof dtype)
        memcpy(dtype, descr + 1, (size_t)(strchr(descr + 1, *descr) - (descr + 1)));
    if (strcmp(dtype, "<f4") == 0 || strcmp(dtype, "<i4") == 0)
        item = 4;
    else if (strcmp(dtype, "<f8") == 0 || strcmp(dtype, "<i8") == 0)
        item = 8;
    if (item == 0) {
        rc = moe_fail(MOE_EFORMAT, msg, msglen,
                      "'%s': .npy dtype %s is not supported: need little-endian float32, float64, "
                      "int32 or int64 ('<f4', '<f8', '<i4', '<i8')",
                      path, dtype[0] ? dtype : "(structured or malformed)");
        goto done;
    }
    is_int = dtype[1] == 'i';
    /* Either order is fine: a (n,), (1, n) or (n, 1) array has the same bytes in C and Fortran
     * order. */
    if (strncmp(order, "False", 5) != 0 && strncmp(order, "True", 4) != 0) {
        rc = moe_fail(MOE_EFORMAT, msg, msglen, "'%s': malformed .npy 'fortran_order'", path);
        goto done;
    }
    int64_t dims[2] = {0, 0};
    int ndim = 0;
    const char *c = shape;
    if (*c++ != '(') {
        rc = moe_fail(MOE_EFORMAT, msg, msglen, "'%s': malformed .npy shape", path);
        goto done;
    }
    for (;;) {
        while (isspace((unsigned char)*c))
            c++;
        if (*c == ')')
            break;
        char *end;
        unsigned long long v = isdigit((unsigned char)*c) ? strtoull(c, &end, 10) : 0;
        if (!isdigit((unsigned char)*c) || ndim == 2) {
            rc = moe_fail(MOE_EFORMAT, msg, msglen,
                          ndim == 2 ? "'%s': .npy array has more than 2 dimensions; need a vector"
                                    : "'%s': malformed .npy shape",
                          path);
            goto done;
        }
        dims[ndim++] = v > (unsigned long long)INT32_MAX ? INT32_MAX : (int64_t)v;
        for (c = end; isspace((unsigned char)*c); c++)
            ;
        if (*c == ',')
            c++;
        else if (*c != ')') {
            rc = moe_fail(MOE_EFORMAT, msg, msglen, "'%s': malformed .npy shape", path);
            goto done;
        }
    }
    int64_t n = ndim == 1 ? dims[0] : dims[0] * dims[1];
    if (ndim == 0) {
        rc = moe_fail(MOE_EFORMAT, msg, msglen,
                      "'%s': .npy array is a scalar; need a vector of %d loads", path, E);
        goto done;
    }
    if (ndim == 2 && dims[0] != 1 && dims[1] != 1) {
        rc = moe_fail(MOE_EFORMAT, msg, msglen,
                      "'%s': .npy array is a matrix; need shape (%d,), (1, %d) or (%d, 1)", path,
                      E, E, E);
        goto done;
    }
    if (n != E) {
        rc = moe_fail(MOE_EUSAGE, msg, msglen, "'%s' holds %lld loads; need %d, one per expert",
                      path, (long long)n, E);
        goto done;
    }
    size_t data = prefix + hlen, want = (size_t)n * (size_t)item;
    if (len - data != want) {
        rc = moe_fail(MOE_EFORMAT, msg, msglen,
                      "'%s' has %zu data bytes; shape and dtype say %zu (truncated or trailing "
                      "bytes)",
                      path, len - data, want);
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *p = buf + data + (size_t)i * (size_t)item;
        double v;
        if (is_int && item == 4) {
            int32_t x;
            memcpy(&x, p, 4);
            v = x;
        } else if (is_int) {
            int64_t x;
            memcpy(&x, p, 8);
            v = (double)x;
        } else if (item == 4) {
            float x;
            memcpy(&x, p, 4);
            v = x;
        } else {
            memcpy(&v, p, 8);
        }
        if (bad_load(v)) {
            rc = moe_fail(MOE_EFORMAT, msg, msglen,
                          "'%s': load at index %lld is %g; loads must be finite and >= 0", path,
                          (long long)i, v);
            goto done;
        }
        loads[i] = v + 0.0; /* -0.0 becomes 0 */
    }
done:
    free(dict);
    return rc;
}

/* buf (len bytes, NUL-terminated beyond) holds a whole text file. */
static int loads_csv(const char *path, char *buf, size_t len, int E, double *loads, char *msg,
                     size_t msglen)
{
    if (strlen(buf) != len)
        return moe_fail(MOE_EFORMAT, msg, msglen,
                        "'%s' holds a NUL byte at offset %zu: neither a .npy nor a text file", path,
                        strlen(buf));
    int64_t count = 0;
    int data_lines = 0, first_fields = 0, line = 0;
    bool header_allowed = true; /* "load" may only be the first line that is not blank */
    for (char *at = buf, *next; at != NULL && *at != '\0'; at = next) {
        line++;
        char *nl = strchr(at, '\n');
        next = nl != NULL ? nl + 1 : NULL;
        if (nl != NULL)
            *nl = '\0';
        char *end = at + strlen(at);
        while (end > at && isspace((unsigned char)end[-1]))
            *--end = '\0';
        while (isspace((unsigned char)*at))
            at++;
        if (*at == '\0')
            continue;
        bool first_nonblank = header_allowed;
        header_allowed = false;
        if (first_nonblank && strcasecmp(at, "load") == 0)
            continue;
        int fields = 1;
        for (const char *c = at; *c; c++)
            fields += *c == ',';
        data_lines++;
        if (data_lines == 1)
            first_fields = fields;
        else if (fields > 1 || first_fields > 1)
            return moe_fail(MOE_EFORMAT, msg, msglen,
                            "'%s' line %d: give one load per line, or all loads on a single "
                            "comma-separated line (this line has %d values, the first had %d)",
                            path, line, fields, first_fields);
        for (int v = 1; v <= fields; v++) {
            char *comma = strchr(at, ',');
            if (comma != NULL)
                *comma = '\0';
            char *f = at;
            while (isspace((unsigned char)*f))
                f++;
            char *fe = f + strlen(f);
            while (fe > f && isspace((unsigned char)fe[-1]))
                *--fe = '\0';
            char where[48];
            if (fields > 1)
                snprintf(where, sizeof where, "line %d, value %d", line, v);
            else
                snprintf(where, sizeof where, "line %d", line);
            char *stop;
            double x = *f != '\0' ? strtod(f, &stop) : 0.0;
            if (*f == '\0')
                return moe_fail(MOE_EFORMAT, msg, msglen, "'%s' %s: empty value", path, where);
            if (*stop != '\0')
                return moe_fail(MOE_EFORMAT, msg, msglen,
                                "'%s' %s: '%.40s' is not a number%s", path, where, f,
                                first_nonblank ? " (the only header allowed is 'load')" : "");
            if (bad_load(x))
                return moe_fail(MOE_EFORMAT, msg, msglen,
                                "'%s' %s: load %s; loads must be finite and >= 0", path, where, f);
            if (count < E)
                loads[count] = x + 0.0;
            count++;
            at = comma != NULL ? comma + 1 : at;
        }
    }
    if (count != E)
        return moe_fail(count == 0 ? MOE_EFORMAT : MOE_EUSAGE, msg, msglen,
                        "'%s' holds %lld loads; need %d, one per expert", path, (long long)count,
                        E);
    return MOE_OK;
}

static int ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), t = strlen(tail);
    return n >= t && strcasecmp(s + n - t, tail) == 0;
}

int moe_loads_read(const char *path, int E, double *loads, char *msg, size_t msglen)
{
    if (E < 1)
        return moe_fail(MOE_EUSAGE, msg, msglen, "reading '%s': need experts >= 1", path);
    FILE *f = NULL;
    int rc = moe_input_open(&f, path, NULL, "rb", msg, msglen);
    if (rc != MOE_OK)
        return rc;
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    if (fstat(fileno(f), &st) != 0) {
        rc = moe_fail(MOE_EIO, msg, msglen, "cannot stat '%s'", path);
        goto done;
    }
    if ((int64_t)st.st_size > LOADS_MAX_BYTES) {
        rc = moe_fail(MOE_ERANGE, msg, msglen, "'%s' is %lld bytes: too large for a loads file",
                      path, (long long)st.st_size);
        goto done;
    }
    buf = malloc((size_t)st.st_size + 2);
    if (buf == NULL) {
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory reading '%s'", path);
        goto done;
    }
    /* one byte more than the size, to see a file that grew under us */
    len = fread(buf, 1, (size_t)st.st_size + 1, f);
    if (ferror(f) || len != (size_t)st.st_size) {
        rc = moe_fail(MOE_EIO, msg, msglen, "cannot read '%s' (%s)", path,
                      ferror(f) ? "read error" : "its size changed while reading");
        goto done;
    }
    buf[len] = '\0';
    if (len >= 6 && memcmp(buf, NPY_MAGIC, 6) == 0)
        rc = loads_npy(path, (const unsigned char *)buf, len, E, loads, msg, msglen);
    else if (ends_with(path, ".npy"))
        rc = moe_fail(MOE_EFORMAT, msg, msglen, "'%s' is named .npy but is not one (bad magic)",
                      path);
    else
        rc = loads_csv(path, buf, len, E, loads, msg, msglen);
done:
    free(buf);
    fclose(f);
    return rc;
}

int moe_nodex_meta_slots(int slots_per_token, const moe_expert_map *map, const int *node_of_rank,
                         int R)
{
    int most = 0, nodes = 0;
    for (int r = 0; r < R; r++)
        nodes = node_of_rank[r] + 1 > nodes ? node_of_rank[r] + 1 : nodes;
    for (int b = 0; b < nodes; b++) {
        int slots = 0;
        for (int r = 0; r < R; r++)
            if (node_of_rank[r] == b)
                slots += map->first_slot[r + 1] - map->first_slot[r];
        most = slots > most ? slots : most;
    }
    return slots_per_token < most ? slots_per_token : most;
}
