/* Unit tests of verdict.h, the run's checks on itself: a hand-made valid run is VALID with every
 * check passed; a copy of it with one count corrupted fails exactly the check that reads that
 * count (and the verdict with it); on random seeded valid results every corruption of one count
 * is caught by its own check and by no other; a --predict-only run (nothing measured) has only
 * the drops check not run and no verdict of VALID. */
#include "moesim/stats.h"
#include "moesim/verdict.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testrng.h"

/* Two capacity factors, both measured, predictions equal to measurements; 2 ranks' worth of
 * rows; y all finite; three later steps predicted right. */
static void valid_results(moe_results *r, moe_ablation_row rows[2])
{
    memset(r, 0, sizeof *r);
    memset(rows, 0, 2 * sizeof rows[0]);
    rows[0].capacity_factor = 1.0;
    rows[0].measured = true;
    rows[0].exact_dropped = rows[0].dropped_assignments = 7;
    rows[1].capacity_factor = 1.25;
    rows[1].measured = true;
    rows[1].exact_dropped = rows[1].dropped_assignments = 2;
    r->ablation = rows;
    r->n_ablation = 2;
    r->row_bytes = 4096;
    r->check.measured = true;
    r->check.rows_sent = r->check.rows_received = 120;
    r->check.served = r->check.returned = 111;
    r->check.y_values = 64 * 1024;
    r->check.y_nonfinite = 0;
    r->check.step_predictions = 3;
    r->check.step_predictions_wrong = 0;
}

static int failed_checks(const moe_check c[MOE_CHECK_COUNT], int *which)
{
    int n = 0;
    for (int i = 0; i < MOE_CHECK_COUNT; i++)
        if (c[i].ran && !c[i].passed) {
            n++;
            *which = i;
        }
    return n;
}

START_TEST(test_valid_run)
{
    moe_results r;
    moe_ablation_row rows[2];
    valid_results(&r, rows);
    moe_check c[MOE_CHECK_COUNT];
    ck_assert(moe_verdict(&r, c));
    const char *names[] = {"drops", "bytes", "combine", "finite"};
    for (int i = 0; i < MOE_CHECK_COUNT; i++) {
        ck_assert_str_eq(c[i].name, names[i]);
        ck_assert(c[i].ran);
        ck_assert(c[i].passed);
        ck_assert(c[i].what != NULL && c[i].what[0] != '\0');
        ck_assert(c[i].detail[0] != '\0');
    }
    /* the detail states the numbers compared */
    ck_assert_str_eq(c[MOE_CHECK_BYTES].detail, "491520 B sent, 491520 B received");
    ck_assert_str_eq(c[MOE_CHECK_COMBINE].detail, "111 served, 111 returned");
    ck_assert_str_eq(c[MOE_CHECK_FINITE].detail, "0 of 65536 values NaN or infinite");
    ck_assert_str_eq(c[MOE_CHECK_DROPS].detail,
                     "equal at 2 capacity factors and every later step");
}
END_TEST

/* One corruption at a time: (what is changed, the check that must fail). */
enum { CORRUPT_EXACT, CORRUPT_MEASURED, CORRUPT_STEP, CORRUPT_SENT, CORRUPT_RECEIVED,
       CORRUPT_SERVED, CORRUPT_RETURNED, CORRUPT_NONFINITE, CORRUPT_COUNT };

static int corrupt(moe_results *r, int what, int64_t by, int row)
{
    switch (what) {
    case CORRUPT_EXACT:
        r->ablation[row].exact_dropped += by;
        return MOE_CHECK_DROPS;
    case CORRUPT_MEASURED:
        r->ablation[row].dropped_assignments += by;
        return MOE_CHECK_DROPS;
    case CORRUPT_STEP:
        r->check.step_predictions_wrong += 1;
        return MOE_CHECK_DROPS;
    case CORRUPT_SENT:
        r->check.rows_sent += by;
        return MOE_CHECK_BYTES;
    case CORRUPT_RECEIVED:
        r->check.rows_received -= by;
        return MOE_CHECK_BYTES;
    case CORRUPT_SERVED:
        r->check.served += by;
        return MOE_CHECK_COMBINE;
    case CORRUPT_RETURNED:
        r->check.returned -= by;
        return MOE_CHECK_COMBINE;
    default:
        r->check.y_nonfinite += by;
        return MOE_CHECK_FINITE;
    }
}

START_TEST(test_one_corruption_hand)
{
    for (int what = 0; what < CORRUPT_COUNT; what++) {
        moe_results r;
        moe_ablation_row rows[2];
        valid_results(&r, rows);
        int expect = corrupt(&r, what, 1, 1);
        moe_check c[MOE_CHECK_COUNT];
        ck_assert_msg(!moe_verdict(&r, c), "corruption %d left the run VALID", what);
        int which = -1;
        ck_assert_int_eq(failed_checks(c, &which), 1);
        ck_assert_int_eq(which, expect);
    }
    /* the failing drops check names the capacity factor and both numbers */
    moe_results r;
    moe_ablation_row rows[2];
    valid_results(&r, rows);
    rows[1].dropped_assignments = 5;
    moe_check c[MOE_CHECK_COUNT];
    ck_assert(!moe_verdict(&r, c));
    ck_assert_str_eq(c[MOE_CHECK_DROPS].detail, "cf 1.25: predicted 2, measured 5");
    /* a later step wrong, the ablation rows right */
    valid_results(&r, rows);
    r.check.step_predictions_wrong = 2;
    ck_assert(!moe_verdict(&r, c));
    ck_assert_str_eq(c[MOE_CHECK_DROPS].detail, "2 of 3 later steps differ");
}
END_TEST

START_TEST(test_one_corruption_random)
{
    g_state = 0x5eed0013u;
    for (int trial = 0; trial < 2000; trial++) {
        moe_results r;
        moe_ablation_row rows[2];
        valid_results(&r, rows);
        /* random valid counts */
        int64_t sent = (int64_t)(next_u64() % 100000);
        int64_t served = (int64_t)(next_u64() % 100000);
        r.check.rows_sent = r.check.rows_received = sent;
        r.check.served = r.check.returned = served;
        r.check.y_values = 1 + (int64_t)(next_u64() % 1000000);
        r.check.step_predictions = (int64_t)(next_u64() % 10);
        for (int i = 0; i < 2; i++)
            rows[i].exact_dropped = rows[i].dropped_assignments =
                (int64_t)(next_u64() % 5000);
        moe_check c[MOE_CHECK_COUNT];
        ck_assert(moe_verdict(&r, c));
        int what = (int)(next_u64() % CORRUPT_COUNT);
        if (what == CORRUPT_STEP && r.check.step_predictions == 0)
            r.check.step_predictions = 1; /* a wrong step is one of the steps compared */
        int64_t by = 1 + (int64_t)(next_u64() % 1000);
        int expect = corrupt(&r, what, by, (int)(next_u64() % 2));
        ck_assert(!moe_verdict(&r, c));
        int which = -1;
        ck_assert_int_eq(failed_checks(c, &which), 1);
        ck_assert_int_eq(which, expect);
    }
}
END_TEST

START_TEST(test_not_measured)
{
    /* --predict-only: ablation rows with predictions but nothing measured, no self-check counts */
    moe_results r;
    moe_ablation_row rows[2];
    valid_results(&r, rows);
    rows[0].measured = rows[1].measured = false;
    rows[0].dropped_assignments = 99; /* not measured: not compared */
    memset(&r.check, 0, sizeof r.check);
    moe_check c[MOE_CHECK_COUNT];
    ck_assert(!moe_verdict(&r, c)); /* nothing ran: no VALID */
    for (int i = 0; i < MOE_CHECK_COUNT; i++)
        ck_assert(!c[i].ran);
    /* one unmeasured row beside a measured one: only the measured one is compared */
    valid_results(&r, rows);
    rows[0].measured = false;
    rows[0].dropped_assignments = 99;
    r.check.step_predictions = 0;
    ck_assert(moe_verdict(&r, c));
    ck_assert_str_eq(c[MOE_CHECK_DROPS].detail, "2 predicted = 2 measured"); /* row 1, not row 0 */
}
END_TEST

START_TEST(test_one_row_detail)
{
    moe_results r;
    moe_ablation_row rows[2];
    valid_results(&r, rows);
    r.n_ablation = 1;
    r.check.step_predictions = 0;
    moe_check c[MOE_CHECK_COUNT];
    ck_assert(moe_verdict(&r, c));
    ck_assert_str_eq(c[MOE_CHECK_DROPS].detail, "7 predicted = 7 measured");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("verdict");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_valid_run);
    tcase_add_test(tc, test_one_corruption_hand);
    tcase_add_test(tc, test_one_corruption_random);
    tcase_add_test(tc, test_not_measured);
    tcase_add_test(tc, test_one_row_detail);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
