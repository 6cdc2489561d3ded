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

int moe_network_load(const char *path, moe_network *out, char *msg, size_t msglen)
{
    memset(out, 0, sizeof *out);
    for (int c = 0; c < MOE_LOC_COUNT; c++) {
        out->latency[c] = -1.0;
        out->bandwidth[c] = -1.0;
    }
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return moe_fail(MOE_EUSAGE, msg, msglen, "--network '%s': %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = MOE_OK;
    while (rc == MOE_OK && getline(&line, &cap, f) != -1) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash != NULL)
            *hash = '\0';
        char *text = trim(line);
        if (*text == '\0')
            continue;
        char *eq = strchr(text, '=');
        if (eq == NULL) {
            rc = moe_fail(MOE_EUSAGE, msg, msglen, "--network '%s' line %d: expected 'key = value'",
                          path, lineno);
            break;
        }
        *eq = '\0';
        char *key = trim(text), *value = trim(eq + 1);
        if (strcmp(key, "name") == 0) {
            snprintf(out->name, sizeof out->name, "%s", value);
            continue;
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
        if (cls < 0 || (!is_lat && !is_bw)) {
            rc = moe_fail(MOE_EUSAGE, msg, msglen,
                          "--network '%s' line %d: unknown key '%s%s%s' (keys: name, "
                          "<class>.latency_us, <class>.bandwidth_GBps; classes same_rank, same_numa, "
                          "same_package, same_node, other_node)",
                          path, lineno, key, dot ? "." : "", field);
            break;
        }
        errno = 0;
        char *end;
        double v = strtod(value, &end);
        if (end == value || *end != '\0' || errno == ERANGE || !isfinite(v) || v < 0 ||
            (is_bw && v == 0)) {
            rc = moe_fail(MOE_EUSAGE, msg, msglen, "--network '%s' line %d: '%s' needs a %s number, got '%s'",
                          path, lineno, key, is_bw ? "positive" : "non-negative", value);
            break;
        }
        if (is_lat)
            out->latency[cls] = v * 1e-6;
        else
            out->bandwidth[cls] = v * 1e9;
    }
    free(line);
    fclose(f);
    for (int c = 0; rc == MOE_OK && c < MOE_LOC_COUNT; c++)
        if (out->latency[c] < 0 || out->bandwidth[c] <= 0)
            rc = moe_fail(MOE_EUSAGE, msg, msglen,
                          "--network '%s' does not give %s.latency_us and %s.bandwidth_GBps", path,
                          moe_locality_name(c), moe_locality_name(c));
    if (rc == MOE_OK && out->name[0] == '\0')
        snprintf(out->name, sizeof out->name, "%s", path);
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

/* Lowest rank on r's node. */
static int leader_of(const moe_placement *placement, int R, int r)
{
    for (int i = 0; i < R; i++)
        if (placement[i].node == placement[r].node)
            return i;
    return r;
}

void moe_hier_schedule(int64_t *stage0, int64_t *stage1, int64_t *stage2, const int64_t *bytes,
                       const moe_placement *placement, int R)
{
    size_t n = (size_t)R * (size_t)R;
    memset(stage0, 0, n * sizeof *stage0);
    memset(stage1, 0, n * sizeof *stage1);
    memset(stage2, 0, n * sizeof *stage2);
    for (int s = 0; s < R; s++) {
        int ls = leader_of(placement, R, s);
        for (int d = 0; d < R; d++) {
            int64_t b = bytes[(int64_t)s * R + d];
            int ld = leader_of(placement, R, d);
            stage0[(int64_t)s * R + ls] += b;  /* gather to the source node's leader  */
            stage1[(int64_t)ls * R + ld] += b; /* leader to leader (diagonal: stays)  */
            stage2[(int64_t)ld * R + d] += b;  /* scatter from the destination leader */
        }
    }
}
