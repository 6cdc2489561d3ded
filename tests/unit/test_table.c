/* Unit tests of table, the JSON-report-to-table helpers behind moesim-table: path lookup (objects,
 * list indices, nulls, absent keys, paths past a scalar) and the CSV and gnuplot field formats
 * (RFC 4180 quoting, exact integers, doubles that read back exactly). No tolerance: every check is
 * an exact string or an exact enum value. */
#include "moesim/table.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *doc_of(const char *text)
{
    json_error_t err;
    json_t *d = json_loads(text, 0, &err);
    ck_assert_msg(d != NULL, "fixture: %s", err.text);
    return d;
}

/* What a field function writes for v, as a string (static buffer). */
static const char *field(int (*fn)(FILE *, const json_t *, char *, size_t), const json_t *v,
                         int *rc)
{
    static char text[512];
    char msg[128];
    memset(text, 0, sizeof text);
    FILE *f = fmemopen(text, sizeof text, "w");
    ck_assert_ptr_nonnull(f);
    *rc = fn(f, v, msg, sizeof msg);
    fclose(f);
    return text;
}

static const char fixture[] =
    "{\"config\": {\"experts\": 8, \"preset\": null, \"cf\": 1.25},"
    " \"ablation\": [{\"capacity\": 256}, {\"capacity\": 320}],"
    " \"projection\": null, \"m\": [[1, 2], [3, 4]]}";

START_TEST(test_lookup_paths)
{
    json_t *d = doc_of(fixture);
    const json_t *v = NULL;
    char msg[256] = "";
    ck_assert_int_eq(moe_table_lookup(d, "config.experts", &v, msg, sizeof msg), MOE_TABLE_VALUE);
    ck_assert_int_eq(json_integer_value(v), 8);
    ck_assert_int_eq(moe_table_lookup(d, "ablation.1.capacity", &v, msg, sizeof msg),
                     MOE_TABLE_VALUE);
    ck_assert_int_eq(json_integer_value(v), 320);
    ck_assert_int_eq(moe_table_lookup(d, "m.1.0", &v, msg, sizeof msg), MOE_TABLE_VALUE);
    ck_assert_int_eq(json_integer_value(v), 3);
    ck_assert_int_eq(moe_table_lookup(d, ".", &v, msg, sizeof msg), MOE_TABLE_VALUE);
    ck_assert_ptr_eq(v, d);
    /* through a null, and ending at one: no value, not an error */
    ck_assert_int_eq(moe_table_lookup(d, "projection.flat.dispatch", &v, msg, sizeof msg),
                     MOE_TABLE_NULL);
    ck_assert_int_eq(moe_table_lookup(d, "config.preset", &v, msg, sizeof msg), MOE_TABLE_NULL);
    json_decref(d);
}
END_TEST

START_TEST(test_lookup_absent)
{
    json_t *d = doc_of(fixture);
    const json_t *v = NULL;
    char msg[256] = "";
    ck_assert_int_eq(moe_table_lookup(d, "config.expert", &v, msg, sizeof msg), MOE_TABLE_ABSENT);
    ck_assert_msg(strstr(msg, "\"expert\"") != NULL, "message names the key: %s", msg);
    ck_assert_int_eq(moe_table_lookup(d, "ablation.2.capacity", &v, msg, sizeof msg),
                     MOE_TABLE_ABSENT);
    ck_assert_msg(strstr(msg, "index 2") != NULL, "%s", msg);
    ck_assert_int_eq(moe_table_lookup(d, "ablation.first", &v, msg, sizeof msg), MOE_TABLE_ABSENT);
    ck_assert_int_eq(moe_table_lookup(d, "ablation.-1", &v, msg, sizeof msg), MOE_TABLE_ABSENT);
    ck_assert_int_eq(moe_table_lookup(d, "config.experts.x", &v, msg, sizeof msg),
                     MOE_TABLE_ABSENT);
    ck_assert_msg(strstr(msg, "\"config.experts\" is a single value") != NULL, "%s", msg);
    json_decref(d);
}
END_TEST

START_TEST(test_csv_fields)
{
    int rc;
    json_t *v = json_integer(9007199254740993LL); /* 2^53 + 1: exact as an integer, not as a double */
    ck_assert_str_eq(field(moe_table_csv_field, v, &rc), "9007199254740993");
    json_decref(v);
    v = json_real(0.1);
    ck_assert_str_eq(field(moe_table_csv_field, v, &rc), "0.10000000000000001");
    ck_assert_double_eq(strtod(field(moe_table_csv_field, v, &rc), NULL), 0.1);
    json_decref(v);
    ck_assert_str_eq(field(moe_table_csv_field, json_true(), &rc), "true");
    ck_assert_str_eq(field(moe_table_csv_field, json_null(), &rc), "");
    ck_assert_str_eq(field(moe_table_csv_field, NULL, &rc), "");
    v = json_string("plain");
    ck_assert_str_eq(field(moe_table_csv_field, v, &rc), "plain");
    json_decref(v);
    v = json_string("experts 8, top-k \"2\"");
    ck_assert_str_eq(field(moe_table_csv_field, v, &rc), "\"experts 8, top-k \"\"2\"\"\"");
    ck_assert_int_eq(rc, 0);
    json_decref(v);
    v = json_array();
    field(moe_table_csv_field, v, &rc);
    ck_assert_int_eq(rc, -1);
    json_decref(v);
}
END_TEST

START_TEST(test_plot_fields)
{
    int rc;
    ck_assert_str_eq(field(moe_table_plot_field, json_null(), &rc), "NaN");
    ck_assert_str_eq(field(moe_table_plot_field, json_false(), &rc), "0");
    json_t *v = json_string("a \"b\"\nc");
    ck_assert_str_eq(field(moe_table_plot_field, v, &rc), "\"a 'b' c\"");
    json_decref(v);
    v = json_object();
    field(moe_table_plot_field, v, &rc);
    ck_assert_int_eq(rc, -1);
    json_decref(v);
}
END_TEST

static Suite *table_suite(void)
{
    Suite *s = suite_create("table");
    TCase *tc = tcase_create("hand");
    tcase_add_test(tc, test_lookup_paths);
    tcase_add_test(tc, test_lookup_absent);
    tcase_add_test(tc, test_csv_fields);
    tcase_add_test(tc, test_plot_fields);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(table_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
