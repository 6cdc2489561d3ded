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

double moe_project_stage(const int64_t *bytes, const moe_placement *placement, int R,
                         const moe_network *net)
{
    double worst = 0.0;
    for (int r = 0; r < R; r++) {
        double send = 0.0, recv = 0.0;
        for (int o = 0; o < R; o++) {
            int64_t out_b = bytes[(int64_t)r * R + o], in_b = bytes[(int64_t)o * R + r];
            if (out_b > 0) {
                moe_locality c = moe_locality_of(&placement[r], &placement[o]);
                send += net->latency[c] + (double)out_b / net->bandwidth[c];
            }
            if (in_b > 0) {
                moe_locality c = moe_locality_of(&placement[o], &placement[r]);
                recv += net->latency[c] + (double)in_b / net->bandwidth[c];
            }
        }
        double t = send > recv ? send : recv;
        worst = t > worst ? t : worst;
    }
    return worst;
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

/* Clear the three (R, R) stages and return each rank's leader (malloc'd; NULL when out of
 * memory, the stages then left zero). */
static int *stages_begin(int64_t *stage0, int64_t *stage1, int64_t *stage2,
                         const moe_placement *placement, int R)
{
    size_t n = (size_t)R * (size_t)R;
    memset(stage0, 0, n * sizeof *stage0);
    memset(stage1, 0, n * sizeof *stage1);
    memset(stage2, 0, n * sizeof *stage2);
    int *leader = malloc((size_t)(R > 0 ? R : 1) * sizeof *leader);
    if (leader != NULL)
        leaders_of(leader, placement, R);
    return leader;
}

void moe_hier_schedule(int64_t *stage0, int64_t *stage1, int64_t *stage2, const int64_t *bytes,
                       const moe_placement *placement, int R)
{
    int *leader = stages_begin(stage0, stage1, stage2, placement, R);
    if (leader == NULL)
        return;
    for (int s = 0; s < R; s++) {
        int ls = leader[s];
        for (int d = 0; d < R; d++) {
            int64_t b = bytes[(int64_t)s * R + d];
            int ld = leader[d];
            stage0[(int64_t)s * R + ls] += b;  /* gather to the source node's leader  */
            stage1[(int64_t)ls * R + ld] += b; /* leader to leader (diagonal: stays)  */
            stage2[(int64_t)ld * R + d] += b;  /* scatter from the destination leader */
        }
    }
    free(leader);
}

void moe_hier_schedule_nodes(int64_t *stage0, int64_t *stage1, int64_t *stage2,
                             const int64_t *node_rows, int n_nodes, const int64_t *rows,
                             int64_t node_bytes, int64_t rank_bytes,
                             const moe_placement *placement, int R, bool reverse)
{
    int *rank_leader = stages_begin(stage0, stage1, stage2, placement, R);
    int *leader = malloc((size_t)(n_nodes > 0 ? n_nodes : 1) * sizeof *leader); /* of a node */
    if (rank_leader == NULL || leader == NULL) {
        free(rank_leader);
        free(leader);
        return;
    }
    for (int b = 0; b < n_nodes; b++)
        leader[b] = -1;
    for (int r = 0; r < R; r++)
        if (placement[r].node >= 0 && placement[r].node < n_nodes)
            leader[placement[r].node] = rank_leader[r];
    free(rank_leader);
    for (int s = 0; s < R; s++) {
        int ls = leader[placement[s].node];
        for (int b = 0; b < n_nodes; b++) {
            int64_t v = node_rows[(int64_t)s * n_nodes + b] * node_bytes;
            if (v == 0 || leader[b] < 0)
                continue;
            if (!reverse) {
                stage0[(int64_t)s * R + ls] += v;
                stage1[(int64_t)ls * R + leader[b]] += v;
            } else {
                stage1[(int64_t)leader[b] * R + ls] += v;
                stage2[(int64_t)ls * R + s] += v;
            }
        }
        for (int d = 0; d < R; d++) {
            int64_t v = rows[(int64_t)s * R + d] * rank_bytes;
            int ld = leader[placement[d].node];
            if (!reverse)
                stage2[(int64_t)ld * R + d] += v;
            else
                stage0[(int64_t)d * R + ld] += v;
        }
    }
    free(leader);
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
