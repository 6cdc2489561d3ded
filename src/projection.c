#include "moesim/projection.h"

#include "moesim/error.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

/* Nothing given yet: every latency and bandwidth negative, so a class left out is seen. */
static void network_clear(moe_network *out)
{
    memset(out, 0, sizeof *out);
    for (int c = 0; c < MOE_LOC_COUNT; c++) {
        out->latency[c] = -1.0;
        out->bandwidth[c] = -1.0;
    }
}

/* One line of a network file, a NUL-terminated string (as getline would give it, an embedded NUL
 * ending it early): apply it to out. name is the file's name for messages, lineno its number. */
static int network_line(char *line, const char *name, int lineno, moe_network *out, char *msg,
                        size_t msglen)
{
    char *hash = strchr(line, '#');
    if (hash != NULL)
        *hash = '\0';
    char *text = trim(line);
    if (*text == '\0')
        return MOE_OK;
    char *eq = strchr(text, '=');
    if (eq == NULL)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--network '%s' line %d: expected 'key = value'",
                        name, lineno);
    *eq = '\0';
    char *key = trim(text), *value = trim(eq + 1);
    if (strcmp(key, "name") == 0) {
        snprintf(out->name, sizeof out->name, "%s", value);
        return MOE_OK;
    }
    char *dot = strchr(key, '.');
    int cls = -1;
    if (dot != NULL) {
        *dot = '\0';
        for (int c = 0; c < MOE_LOC_COUNT; c++)
            if (strcmp(key, moe_locality_name(c)) == 0)
                cls = c;
    }
    const char *field = dot ? dot + 1 : "";
    int is_lat = strcmp(field, "latency_us") == 0, is_bw = strcmp(field, "bandwidth_GBps") == 0;
    if (cls < 0 || (!is_lat && !is_bw))
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--network '%s' line %d: unknown key '%s%s%s' (keys: name, "
                        "<class>.latency_us, <class>.bandwidth_GBps; classes same_rank, same_numa, "
                        "same_package, same_node, other_node)",
                        name, lineno, key, dot ? "." : "", field);
    errno = 0;
    char *end;
    double v = strtod(value, &end);
    if (end == value || *end != '\0' || errno == ERANGE || !isfinite(v) || v < 0 ||
        (is_bw && v == 0))
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "--network '%s' line %d: '%s' needs a %s number, got '%s'", name, lineno,
                        key, is_bw ? "positive" : "non-negative", value);
    if (is_lat)
        out->latency[cls] = v * 1e-6;
    else
        out->bandwidth[cls] = v * 1e9;
    return MOE_OK;
}

int moe_network_parse(const char *text, size_t len, const char *name, moe_network *out, char *msg,
                      size_t msglen)
{
    network_clear(out);
    /* One private copy, cut into lines in place: each '\n' becomes the NUL that ends its line. */
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "--network '%s': out of memory for %zu bytes",
                        name, len);
    if (len > 0)
        memcpy(copy, text, len);
    copy[len] = '\0';
    int lineno = 0, rc = MOE_OK;
    for (size_t at = 0; rc == MOE_OK && at < len;) {
        char *line = copy + at;
        char *nl = memchr(line, '\n', len - at);
        size_t line_len = nl != NULL ? (size_t)(nl - line) + 1 : len - at;
        if (nl != NULL)
            *nl = '\0';
        at += line_len;
        rc = network_line(line, name, ++lineno, out, msg, msglen);
    }
    free(copy);
    for (int c = 0; rc == MOE_OK && c < MOE_LOC_COUNT; c++)
        if (out->latency[c] < 0 || out->bandwidth[c] <= 0)
            rc = moe_fail(MOE_EUSAGE, msg, msglen,
                          "--network '%s' does not give %s.latency_us and %s.bandwidth_GBps", name,
                          moe_locality_name(c), moe_locality_name(c));
    if (rc == MOE_OK && out->name[0] == '\0')
        snprintf(out->name, sizeof out->name, "%s", name);
    return rc;
}

int moe_network_load(const char *path, moe_network *out, char *msg, size_t msglen)
{
    network_clear(out);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--network '%s': %s", path, strerror(errno));
    /* Read it whole (a network file is a few hundred bytes), refusing anything absurdly large
     * before it is all in memory: --network /dev/zero must not eat the machine. */
    char *text = NULL;
    size_t len = 0, cap = 0;
    int rc = MOE_OK;
    for (;;) {
        if (len == cap) {
            cap = cap == 0 ? 4096 : 2 * cap;
            char *grown = realloc(text, cap);
            if (grown == NULL) {
                rc = moe_fail(MOE_ENOMEM, msg, msglen, "--network '%s': out of memory", path);
                break;
            }
            text = grown;
        }
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f))
                rc = moe_fail(MOE_EUSAGE, msg, msglen, "--network '%s': %s", path, strerror(errno));
            break;
        }
        if (len > MOE_NETWORK_MAX_BYTES) {
            rc = moe_fail(MOE_EUSAGE, msg, msglen,
                          "--network '%s' is over %d bytes: not a network file", path,
                          MOE_NETWORK_MAX_BYTES);
            break;
        }
    }
    fclose(f);
    if (rc == MOE_OK)
        rc = moe_network_parse(text, len, path, out, msg, msglen);
    free(text);
    return rc;
}

double moe_project_stage_blocks(const moe_blocks *bytes, const moe_placement *placement, int R,
                                const moe_network *net)
{
    /* each rank's sends and receives, one term per message */
    double *send = calloc(2 * (size_t)(R > 0 ? R : 1), sizeof *send), *recv = send + R;
    if (send == NULL)
        return NAN;
    for (int64_t i = 0; i < bytes->n; i++) {
        const moe_block *e = &bytes->v[i];
        if (e->val <= 0)
            continue;
        moe_locality c = moe_locality_of(&placement[e->src], &placement[e->dst]);
        double t = net->latency[c] + (double)e->val / net->bandwidth[c];
        send[e->src] += t;
        recv[e->dst] += t;
    }
    double worst = 0.0;
    for (int r = 0; r < R; r++) {
        double t = send[r] > recv[r] ? send[r] : recv[r];
        worst = t > worst ? t : worst;
    }
    free(send);
    return worst;
}

double moe_project_stage(const int64_t *bytes, const moe_placement *placement, int R,
                         const moe_network *net)
{
    moe_blocks b = {0};
    double t = moe_blocks_from_dense(&b, bytes, R, 1, false) == MOE_OK
                   ? moe_project_stage_blocks(&b, placement, R, net)
                   : NAN;
    moe_blocks_free(&b);
    return t;
}

/* leader[r] = the lowest rank on r's node, for every rank: O(R) with a first-rank table per node
 * index (nodes are placement[].node, 0 .. R-1; another value falls back to a scan). */
static void leaders_of(int *leader, const moe_placement *placement, int R)
{
    int *first = malloc((size_t)(R > 0 ? R : 1) * sizeof *first);
    for (int q = 0; first != NULL && q < R; q++)
        first[q] = -1;
    for (int r = 0; r < R; r++) {
        int node = placement[r].node;
        if (first != NULL && node >= 0 && node < R) {
            if (first[node] < 0)
                first[node] = r;
            leader[r] = first[node];
        } else { /* out of range or no table: the scan */
            leader[r] = r;
            for (int i = 0; i < r; i++)
                if (placement[i].node == node) {
                    leader[r] = i;
                    break;
                }
        }
    }
    free(first);
}

/* The three stages as dense matrices, for the dense API. */
static void stages_dense(int64_t *stage0, int64_t *stage1, int64_t *stage2, const moe_blocks *st,
                         int R)
{
    moe_blocks_to_dense(stage0, &st[0], R);
    moe_blocks_to_dense(stage1, &st[1], R);
    moe_blocks_to_dense(stage2, &st[2], R);
}

static int push3(moe_blocks *st, int a0, int b0, int a1, int b1, int a2, int b2, int64_t v)
{
    if (moe_blocks_push(&st[0], a0, b0, v) != MOE_OK ||
        moe_blocks_push(&st[1], a1, b1, v) != MOE_OK ||
        moe_blocks_push(&st[2], a2, b2, v) != MOE_OK)
        return MOE_ENOMEM;
    return MOE_OK;
}

int moe_hier_schedule_blocks(moe_blocks *st, const moe_blocks *bytes,
                             const moe_placement *placement, int R)
{
    int *leader = malloc((size_t)(R > 0 ? R : 1) * sizeof *leader);
    if (leader == NULL)
        return MOE_ENOMEM;
    leaders_of(leader, placement, R);
    int rc = MOE_OK;
    for (int i = 0; i < 3; i++)
        moe_blocks_clear(&st[i]);
    for (int64_t i = 0; i < bytes->n && rc == MOE_OK; i++) {
        const moe_block *e = &bytes->v[i];
        int ls = leader[e->src], ld = leader[e->dst];
        /* gather to the source node's leader, leader to leader (diagonal: stays), scatter from the
         * destination leader */
        rc = push3(st, e->src, ls, ls, ld, ld, e->dst, e->val);
    }
    free(leader);
    for (int i = 0; i < 3; i++)
        moe_blocks_normalize(&st[i]);
    return rc;
}

void moe_hier_schedule(int64_t *stage0, int64_t *stage1, int64_t *stage2, const int64_t *bytes,
                       const moe_placement *placement, int R)
{
    moe_blocks b = {0}, st[3] = {{0}};
    if (moe_blocks_from_dense(&b, bytes, R, 1, false) == MOE_OK &&
        moe_hier_schedule_blocks(st, &b, placement, R) == MOE_OK)
        stages_dense(stage0, stage1, stage2, st, R);
    moe_blocks_free(&b);
    for (int i = 0; i < 3; i++)
        moe_blocks_free(&st[i]);
}

int moe_hier_schedule_nodes_blocks(moe_blocks *st, const int64_t *node_rows, int n_nodes,
                                   const moe_blocks *rows, int64_t node_bytes, int64_t rank_bytes,
                                   const moe_placement *placement, int R, bool reverse)
{
    int *rank_leader = malloc((size_t)(R > 0 ? R : 1) * sizeof *rank_leader);
    int *leader = malloc((size_t)(n_nodes > 0 ? n_nodes : 1) * sizeof *leader); /* of a node */
    int rc = rank_leader != NULL && leader != NULL ? MOE_OK : MOE_ENOMEM;
    for (int i = 0; i < 3; i++)
        moe_blocks_clear(&st[i]);
    if (rc == MOE_OK) {
        leaders_of(rank_leader, placement, R);
        for (int b = 0; b < n_nodes; b++)
            leader[b] = -1;
        for (int r = 0; r < R; r++)
            if (placement[r].node >= 0 && placement[r].node < n_nodes)
                leader[placement[r].node] = rank_leader[r];
    }
    for (int s = 0; s < R && rc == MOE_OK; s++) {
        int ls = leader[placement[s].node];
        for (int b = 0; b < n_nodes && rc == MOE_OK; b++) {
            int64_t v = node_rows[(int64_t)s * n_nodes + b] * node_bytes;
            if (v == 0 || leader[b] < 0)
                continue;
            if (!reverse)
                rc = moe_blocks_push(&st[0], s, ls, v) != MOE_OK ||
                             moe_blocks_push(&st[1], ls, leader[b], v) != MOE_OK
                         ? MOE_ENOMEM
                         : MOE_OK;
            else
                rc = moe_blocks_push(&st[1], leader[b], ls, v) != MOE_OK ||
                             moe_blocks_push(&st[2], ls, s, v) != MOE_OK
                         ? MOE_ENOMEM
                         : MOE_OK;
        }
    }
    for (int64_t i = 0; i < rows->n && rc == MOE_OK; i++) {
        const moe_block *e = &rows->v[i];
        int64_t v = e->val * rank_bytes;
        int ld = leader[placement[e->dst].node];
        rc = reverse ? moe_blocks_push(&st[0], e->dst, ld, v) : moe_blocks_push(&st[2], ld, e->dst, v);
    }
    free(rank_leader);
    free(leader);
    for (int i = 0; i < 3; i++)
        moe_blocks_normalize(&st[i]);
    return rc;
}

void moe_hier_schedule_nodes(int64_t *stage0, int64_t *stage1, int64_t *stage2,
                             const int64_t *node_rows, int n_nodes, const int64_t *rows,
                             int64_t node_bytes, int64_t rank_bytes,
                             const moe_placement *placement, int R, bool reverse)
{
    moe_blocks b = {0}, st[3] = {{0}};
    if (moe_blocks_from_dense(&b, rows, R, 1, false) == MOE_OK &&
        moe_hier_schedule_nodes_blocks(st, node_rows, n_nodes, &b, node_bytes, rank_bytes,
                                       placement, R, reverse) == MOE_OK)
        stages_dense(stage0, stage1, stage2, st, R);
    moe_blocks_free(&b);
    for (int i = 0; i < 3; i++)
        moe_blocks_free(&st[i]);
}

int64_t moe_node_rows_off_node(const int64_t *node_rows, int n_nodes,
                               const moe_placement *placement, int R)
{
    int64_t off = 0;
    for (int s = 0; s < R; s++)
        for (int b = 0; b < n_nodes; b++)
            off += b != placement[s].node ? node_rows[(int64_t)s * n_nodes + b] : 0;
    return off;
}
