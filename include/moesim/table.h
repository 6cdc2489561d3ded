/* JSON report → tables, for the shell tools (launch/moesim-sweep, moesim-plot, moesim-quiz).
 * Pure: no MPI, no printing except to the FILE the caller gives.
 *
 * A key is a dotted path into a document: "drops.dropped_assignments", "ablation.1.capacity"
 * (a list element by its index). */
#ifndef MOESIM_TABLE_H
#define MOESIM_TABLE_H

#include <stdio.h>
#include <stddef.h>
#include <jansson.h>

/* What a path reached. */
typedef enum moe_table_found {
    MOE_TABLE_VALUE,   /* *out is the value at the path (never NULL)                        */
    MOE_TABLE_NULL,    /* the path passed through (or ended at) a JSON null: no value          */
    MOE_TABLE_ABSENT   /* a key is missing from an object, or an index out of a list's range   */
} moe_table_found;

/* Walks root along path; "." (or "") is root itself. On MOE_TABLE_ABSENT, msg names the missing
 * component. */
moe_table_found moe_table_lookup(const json_t *root, const char *path, const json_t **out,
                                 char *msg, size_t msglen);

/* One scalar as a CSV field (RFC 4180: quoted when it holds a comma, a quote, CR or LF; quotes
 * doubled): numbers "%.17g" (integers exactly), true/false, strings as is, null as "". Returns 0,
 * or -1 (msg filled) for a list or an object. */
int moe_table_csv_field(FILE *out, const json_t *v, char *msg, size_t msglen);

/* One scalar as a gnuplot field: numbers as in CSV, null as NaN, true/false as 1/0, strings in
 * double quotes (inner quotes replaced by '). Returns 0, or -1 for a list or an object. */
int moe_table_plot_field(FILE *out, const json_t *v, char *msg, size_t msglen);

#endif
