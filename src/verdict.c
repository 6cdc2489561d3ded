/* The run's self-checks and verdict (include/moesim/verdict.h). */
#include "moesim/verdict.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static void set(moe_check *c, const char *name, const char *what)
{
    memset(c, 0, sizeof *c);
    c->name = name;
    c->what = what;
}

/* The drops check: each measured ablation row, and the steps after the first. */
static void check_drops(const moe_results *r, moe_check *c)
{
    int64_t rows = 0, wrong = 0, first_bad = -1, last = -1;
    for (int i = 0; i < r->n_ablation; i++) {
        const moe_ablation_row *a = &r->ablation[i];
        if (!a->measured)
            continue;
        rows++;
        last = i;
        if (a->exact_dropped != a->dropped_assignments) {
            wrong++;
            if (first_bad < 0)
                first_bad = i;
        }
    }
    int64_t steps = r->check.step_predictions, steps_wrong = r->check.step_predictions_wrong;
    c->ran = rows + steps > 0;
    c->passed = wrong + steps_wrong == 0;
    if (!c->ran)
        return;
    if (first_bad >= 0) {
        const moe_ablation_row *a = &r->ablation[first_bad];
        snprintf(c->detail, sizeof c->detail, "cf %g: predicted %" PRId64 ", measured %" PRId64,
                 a->capacity_factor, a->exact_dropped, a->dropped_assignments);
    } else if (steps_wrong > 0) {
        snprintf(c->detail, sizeof c->detail, "%" PRId64 " of %" PRId64 " later steps differ",
                 steps_wrong, steps);
    } else if (rows == 1 && steps == 0) {
        snprintf(c->detail, sizeof c->detail, "%" PRId64 " predicted = %" PRId64 " measured",
                 r->ablation[last].exact_dropped, r->ablation[last].dropped_assignments);
    } else {
        snprintf(c->detail, sizeof c->detail, "equal at %" PRId64 " capacity factor%s%s", rows,
                 rows == 1 ? "" : "s", steps > 0 ? " and every later step" : "");
    }
}

bool moe_verdict(const moe_results *r, moe_check checks[MOE_CHECK_COUNT])
{
    const moe_selfcheck *s = &r->check;
    set(&checks[MOE_CHECK_DROPS], "drops", "predicted exact drops = measured");
    set(&checks[MOE_CHECK_BYTES], "bytes", "bytes sent = bytes received");
    set(&checks[MOE_CHECK_COMBINE], "combine", "combine returned every served row");
    set(&checks[MOE_CHECK_FINITE], "finite", "y finite");
    check_drops(r, &checks[MOE_CHECK_DROPS]);
    if (s->measured) {
        moe_check *c = &checks[MOE_CHECK_BYTES];
        c->ran = true;
        c->passed = s->rows_sent == s->rows_received;
        snprintf(c->detail, sizeof c->detail,
                 "%" PRId64 " B sent, %" PRId64 " B received", s->rows_sent * r->row_bytes,
                 s->rows_received * r->row_bytes);
        c = &checks[MOE_CHECK_COMBINE];
        c->ran = true;
        c->passed = s->returned == s->served;
        snprintf(c->detail, sizeof c->detail, "%" PRId64 " served, %" PRId64 " returned", s->served,
                 s->returned);
        c = &checks[MOE_CHECK_FINITE];
        c->ran = true;
        c->passed = s->y_nonfinite == 0;
        snprintf(c->detail, sizeof c->detail, "%" PRId64 " of %" PRId64 " values NaN or infinite",
                 s->y_nonfinite, s->y_values);
    }
    bool any = false, ok = true;
    for (int i = 0; i < MOE_CHECK_COUNT; i++) {
        any |= checks[i].ran;
        ok &= !checks[i].ran || checks[i].passed;
    }
    return any && ok;
}
