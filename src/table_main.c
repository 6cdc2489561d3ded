/* moesim-table: a moesim JSON report as CSV or gnuplot tables, for the shell tools in launch/.
 *
 *   moesim-table get [--header] FILE.json KEY[=NAME]...   one CSV line of scalars
 *   moesim-table rows FILE.json LISTKEY FIELD...          one line per element of a list
 *   moesim-table matrix FILE.json KEY                     a list of lists of numbers
 *
 * Exit 0; 2 with one "moesim-table: error: ..." line on bad usage, an unreadable or malformed file,
 * or a key that is not there. docs/launch.md documents it. */
#include "moesim/table.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "Usage: moesim-table get [--header] FILE.json KEY[=NAME]...\n"
    "       moesim-table rows FILE.json LISTKEY FIELD...\n"
    "       moesim-table matrix FILE.json KEY\n"
    "Reads a moesim --json report (\"-\" = standard input) and prints values from it.\n"
    "  get      one CSV line (RFC 4180) of the scalars at the dotted paths KEY\n"
    "           (ablation.1.dropped_assignments: list elements by index); a path through null\n"
    "           gives an empty field. --header first prints a line of the NAMEs (default KEY).\n"
    "  rows     one line per element of the list at LISTKEY: its index, then each FIELD (a\n"
    "           dotted path inside the element, \".\" the element itself), space-separated,\n"
    "           strings quoted, null as NaN: a gnuplot data block.\n"
    "  matrix   the list of lists of numbers at KEY, a row per line (gnuplot 'matrix').\n"
    "Exit status: 0; 2 on bad usage, an unreadable or malformed file, or a key not in it.\n";

static int fail(const char *fmt, const char *a, const char *b)
{
    fputs("moesim-table: error: ", stderr);
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    return 2;
}

static json_t *load(const char *path)
{
    json_error_t err;
    json_t *doc = strcmp(path, "-") == 0 ? json_loadf(stdin, 0, &err)
                                        : json_load_file(path, 0, &err);
    if (!doc) {
        char where[256];
        snprintf(where, sizeof where, "line %d: %s", err.line, err.text);
        fail("cannot read %s: %s", path, where);
    }
    return doc;
}

/* The value at path, or NULL for a null; *bad set (and the error printed) when it is absent. */
static const json_t *at(const json_t *root, const char *file, const char *path, bool *bad)
{
    const json_t *v = NULL;
    char msg[512];
    switch (moe_table_lookup(root, path, &v, msg, sizeof msg)) {
    case MOE_TABLE_VALUE:
        return v;
    case MOE_TABLE_NULL:
        return NULL;
    case MOE_TABLE_ABSENT:
    default:
        fail("%s: %s", file, msg);
        *bad = true;
        return NULL;
    }
}

static int cmd_get(int argc, char **argv)
{
    bool header = false;
    int i = 0;
    if (i < argc && strcmp(argv[i], "--header") == 0) {
        header = true;
        i++;
    }
    if (argc - i < 2)
        return fail("%s%s", "get needs FILE.json and at least one KEY", "");
    const char *file = argv[i++];
    json_t *doc = load(file);
    if (!doc)
        return 2;
    int nkeys = argc - i;
    char **keys = argv + i;
    /* Check every key before printing anything, so a bad key leaves no partial line. */
    char *line = NULL;
    size_t line_len = 0;
    FILE *buf = open_memstream(&line, &line_len);
    bool bad = !buf;
    for (int k = 0; k < nkeys && !bad; k++) {
        char path[1024];
        const char *eq = strchr(keys[k], '=');
        size_t plen = eq ? (size_t)(eq - keys[k]) : strlen(keys[k]);
        if (plen >= sizeof path) {
            fail("key too long: %.60s%s", keys[k], "...");
            bad = true;
            break;
        }
        memcpy(path, keys[k], plen);
        path[plen] = '\0';
        const json_t *v = at(doc, file, path, &bad);
        if (bad)
            break;
        char msg[256];
        if (k)
            fputc(',', buf);
        if (moe_table_csv_field(buf, v, msg, sizeof msg) != 0) {
            fail("%s: %s", path, msg);
            bad = true;
        }
    }
    if (buf)
        fclose(buf);
    if (!bad) {
        if (header) {
            for (int k = 0; k < nkeys; k++) {
                const char *eq = strchr(keys[k], '=');
                json_t *name = json_string(eq ? eq + 1 : keys[k]);
                char msg[64];
                if (k)
                    putchar(',');
                if (eq)
                    fputs(eq + 1, stdout);
                else
                    moe_table_csv_field(stdout, name, msg, sizeof msg);
                json_decref(name);
            }
            putchar('\n');
        }
        fwrite(line, 1, line_len, stdout);
        putchar('\n');
    }
    free(line);
    json_decref(doc);
    return bad ? 2 : 0;
}

static int cmd_rows(int argc, char **argv)
{
    if (argc < 3)
        return fail("%s%s", "rows needs FILE.json, LISTKEY and at least one FIELD", "");
    const char *file = argv[0];
    json_t *doc = load(file);
    if (!doc)
        return 2;
    bool bad = false;
    const json_t *list = at(doc, file, argv[1], &bad);
    if (!bad && !json_is_array(list)) {
        fail("%s: \"%s\" is not a list", file, argv[1]);
        bad = true;
    }
    char *out = NULL;
    size_t out_len = 0;
    FILE *buf = bad ? NULL : open_memstream(&out, &out_len);
    for (size_t e = 0; buf && !bad && e < json_array_size(list); e++) {
        const json_t *elem = json_array_get(list, e);
        fprintf(buf, "%zu", e);
        for (int k = 2; k < argc && !bad; k++) {
            const json_t *v = at(elem, file, argv[k], &bad);
            char msg[256];
            fputc(' ', buf);
            if (!bad && moe_table_plot_field(buf, v, msg, sizeof msg) != 0) {
                fail("%s: %s", argv[k], msg);
                bad = true;
            }
        }
        fputc('\n', buf);
    }
    if (buf)
        fclose(buf);
    if (!bad)
        fwrite(out, 1, out_len, stdout);
    free(out);
    json_decref(doc);
    return bad ? 2 : 0;
}

static int cmd_matrix(int argc, char **argv)
{
    if (argc != 2)
        return fail("%s%s", "matrix needs FILE.json and one KEY", "");
    const char *file = argv[0];
    json_t *doc = load(file);
    if (!doc)
        return 2;
    bool bad = false;
    const json_t *m = at(doc, file, argv[1], &bad);
    if (!bad && !json_is_array(m)) {
        fail("%s: \"%s\" is not a list of lists (null: the report summarised it)", file, argv[1]);
        bad = true;
    }
    for (size_t r = 0; !bad && r < json_array_size(m); r++) {
        const json_t *row = json_array_get(m, r);
        bool ok = json_is_array(row);
        for (size_t c = 0; ok && c < json_array_size(row); c++)
            ok = json_is_number(json_array_get(row, c));
        if (!ok) {
            fail("%s: \"%s\" is not a list of lists of numbers", file, argv[1]);
            bad = true;
        }
    }
    for (size_t r = 0; !bad && r < json_array_size(m); r++) {
        const json_t *row = json_array_get(m, r);
        char msg[64];
        for (size_t c = 0; c < json_array_size(row); c++) {
            if (c)
                putchar(' ');
            moe_table_plot_field(stdout, json_array_get(row, c), msg, sizeof msg);
        }
        putchar('\n');
    }
    json_decref(doc);
    return bad ? 2 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (argc < 2) {
        fputs(usage_text, stderr);
        return 2;
    }
    int rc;
    if (strcmp(argv[1], "get") == 0)
        rc = cmd_get(argc - 2, argv + 2);
    else if (strcmp(argv[1], "rows") == 0)
        rc = cmd_rows(argc - 2, argv + 2);
    else if (strcmp(argv[1], "matrix") == 0)
        rc = cmd_matrix(argc - 2, argv + 2);
    else
        rc = fail("unknown command \"%s\"%s (get, rows or matrix; --help)", argv[1], "");
    if (fflush(stdout) != 0 || ferror(stdout))
        rc = rc ? rc : fail("%s%s", "cannot write standard output", "");
    return rc;
}
