/* JSON report → tables: path lookup and scalar formatting (include/moesim/table.h). */
#include "moesim/table.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* A list index: all digits, no sign, fits size_t. */
static bool parse_index(const char *s, size_t len, size_t *idx)
{
    if (len == 0 || len > 18)
        return false;
    size_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (size_t)(s[i] - '0');
    }
    *idx = v;
    return true;
}

moe_table_found moe_table_lookup(const json_t *root, const char *path, const json_t **out,
                                 char *msg, size_t msglen)
{
    const json_t *cur = root;
    const char *p = path;
    if (strcmp(p, ".") == 0)
        p = "";
    while (*p) {
        if (json_is_null(cur))
            return MOE_TABLE_NULL;
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (json_is_object(cur)) {
            const json_t *next = json_object_getn(cur, p, len);
            if (!next) {
                snprintf(msg, msglen, "no key \"%.*s\" in \"%s\"", (int)len, p, path);
                return MOE_TABLE_ABSENT;
            }
            cur = next;
        } else if (json_is_array(cur)) {
            size_t idx;
            if (!parse_index(p, len, &idx)) {
                snprintf(msg, msglen, "\"%.*s\" in \"%s\" is not an index of a list", (int)len, p,
                         path);
                return MOE_TABLE_ABSENT;
            }
            if (idx >= json_array_size(cur)) {
                snprintf(msg, msglen, "index %zu in \"%s\" is past the list's %zu elements", idx,
                         path, json_array_size(cur));
                return MOE_TABLE_ABSENT;
            }
            cur = json_array_get(cur, idx);
        } else {
            int at = p > path ? (int)(p - path - 1) : 0;
            snprintf(msg, msglen, "\"%s\": \"%.*s\" is a single value, with no \"%.*s\"", path,
                     at, at ? path : ".", (int)len, p);
            return MOE_TABLE_ABSENT;
        }
        p += len;
        if (*p == '.')
            p++;
    }
    *out = cur;
    return json_is_null(cur) ? MOE_TABLE_NULL : MOE_TABLE_VALUE;
}

static void number(FILE *out, const json_t *v)
{
    if (json_is_integer(v))
        fprintf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else
        fprintf(out, "%.17g", json_real_value(v));
}

static int not_scalar(const json_t *v, char *msg, size_t msglen)
{
    snprintf(msg, msglen, "a %s, not a single value", json_is_array(v) ? "list" : "object");
    return -1;
}

int moe_table_csv_field(FILE *out, const json_t *v, char *msg, size_t msglen)
{
    if (!v || json_is_null(v))
        return 0;
    if (json_is_number(v)) {
        number(out, v);
    } else if (json_is_boolean(v)) {
        fputs(json_is_true(v) ? "true" : "false", out);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strpbrk(s, ",\"\r\n") == NULL) {
            fputs(s, out);
        } else {
            fputc('"', out);
            for (; *s; s++) {
                if (*s == '"')
                    fputc('"', out);
                fputc(*s, out);
            }
            fputc('"', out);
        }
    } else {
        return not_scalar(v, msg, msglen);
    }
    return 0;
}

int moe_table_plot_field(FILE *out, const json_t *v, char *msg, size_t msglen)
{
    if (!v || json_is_null(v)) {
        fputs("NaN", out);
    } else if (json_is_number(v)) {
        number(out, v);
    } else if (json_is_boolean(v)) {
        fputc(json_is_true(v) ? '1' : '0', out);
    } else if (json_is_string(v)) {
        fputc('"', out);
        for (const char *s = json_string_value(v); *s; s++)
            fputc(*s == '"' ? '\'' : (*s == '\n' || *s == '\r') ? ' ' : *s, out);
        fputc('"', out);
    } else {
        return not_scalar(v, msg, msglen);
    }
    return 0;
}
