/* Unit tests of npy: header parsing, reading rows, writing float32 files. */
#include "moesim/error.h"
#include "moesim/npy.h"

#include <check.h>
#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "scratch.h"

/* Scratch directory made by main (mkdtemp) and removed by main after the run, so it is cleaned up
 * even when a forked test fails. */
static char g_dir[] = "/tmp/moesim-npy-XXXXXX";

/* Each file test works in its own subdirectory of g_dir, so one failing test cannot disturb the
 * directory listings another one checks. */
static void fresh_dir(char *dir, size_t len, const char *tag)
{
    ck_assert_int_lt(snprintf(dir, len, "%s/%s", g_dir, tag), (int)len);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
}

static void join(char *buf, size_t len, const char *dir, const char *name)
{
    ck_assert_int_lt(snprintf(buf, len, "%s/%s", dir, name), (int)len);
}

/* An .npy prefix (magic, version, header length) followed by dict and a newline, padded with spaces
 * to a multiple of 64 bytes as numpy does. Returns the number of bytes written to buf. */
static size_t make_header(unsigned char *buf, int major, const char *dict)
{
    size_t prefix = major == 1 ? 10 : 12, n = strlen(dict);
    size_t total = prefix + n + 1, pad = (64 - total % 64) % 64, hlen = n + pad + 1;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8 & 0xff);
    if (major != 1) {
        buf[10] = (unsigned char)(hlen >> 16 & 0xff);
        buf[11] = (unsigned char)(hlen >> 24 & 0xff);
    }
    memcpy(buf + prefix, dict, n);
    memset(buf + prefix + n, ' ', pad);
    buf[prefix + hlen - 1] = '\n';
    return prefix + hlen;
}

static void write_bytes(const char *path, const void *data, size_t len, const char *mode)
{
    FILE *f = fopen(path, mode);
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Parse dict under version `major`; return the code, header in *h, message in msg. */
static int parse(int major, const char *dict, moe_npy_header *h, char *msg, size_t msglen)
{
    static unsigned char buf[70000];
    size_t len = make_header(buf, major, dict);
    msg[0] = '\0';
    return moe_npy_parse_header(buf, len, h, msg, msglen);
}

/* ---- headers that must parse ---- */

START_TEST(test_parse_v1_f4)
{
    unsigned char buf[256];
    size_t len = make_header(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }");
    moe_npy_header h;
    char msg[256] = "";
    ck_assert_int_eq(moe_npy_parse_header(buf, len, &h, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(h.rows, 3);
    ck_assert_int_eq(h.cols, 4);
    ck_assert_int_eq(h.item_size, 4);
    ck_assert_int_eq(h.data_offset, (int64_t)len); /* the data starts right after the header */
    ck_assert_int_eq(h.data_offset % 64, 0);
}
END_TEST

START_TEST(test_parse_v2_f8)
{
    unsigned char buf[256];
    size_t len = make_header(buf, 2, "{'descr': '<f8', 'fortran_order': False, 'shape': (1000, 17), }");
    moe_npy_header h;
    char msg[256] = "";
    ck_assert_int_eq(moe_npy_parse_header(buf, len, &h, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(h.rows, 1000);
    ck_assert_int_eq(h.cols, 17);
    ck_assert_int_eq(h.item_size, 8);
    ck_assert_int_eq(h.data_offset, (int64_t)len);
}
END_TEST

START_TEST(test_parse_variants)
{
    moe_npy_header h;
    char msg[256];
    /* Extra spaces everywhere, no trailing comma in the dict, trailing comma in the shape. */
    ck_assert_int_eq(parse(1, "{ 'descr' :  '<f4' ,  'fortran_order' :False,'shape':(  7 ,5 ,) }", &h,
                           msg, sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(h.rows, 7);
    ck_assert_int_eq(h.cols, 5);
    /* Double quotes (JSON-like writers). */
    ck_assert_int_eq(parse(1, "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (2, 9)}", &h,
                           msg, sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(h.rows, 2);
    ck_assert_int_eq(h.cols, 9);
    ck_assert_int_eq(h.item_size, 8);
    /* Keys in another order. */
    ck_assert_int_eq(parse(1, "{'shape': (11, 1), 'fortran_order': False, 'descr': '<f4'}", &h, msg,
                           sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(h.rows, 11);
    ck_assert_int_eq(h.cols, 1);
    /* Version 3.0 (UTF-8 header) has the version 2.0 layout. */
    ck_assert_int_eq(parse(3, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2), }", &h, msg,
                           sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(h.rows, 4);
    /* Exactly 2^40 elements is the documented limit and is accepted. */
    ck_assert_int_eq(parse(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1048576), }",
                           &h, msg, sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(h.rows, INT64_C(1) << 20);
    ck_assert_int_eq(parse(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1), }",
                           &h, msg, sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(h.rows, INT64_C(1) << 40);
}
END_TEST

/* ---- headers that must be refused ---- */

static const struct bad_header {
    int major;
    const char *dict;
    int code;
    const char *why; /* a word the message must contain, or NULL */
} bad_headers[] = {
    {4, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", MOE_EFORMAT, "version"},
    {0, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", MOE_EFORMAT, "version"},
    {1, "{'descr': '>f4', 'fortran_order': False, 'shape': (3, 4), }", MOE_EFORMAT, ">f4"},
    {1, "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 4), }", MOE_EFORMAT, "<i4"},
    {1, "{'descr': '<f2', 'fortran_order': False, 'shape': (3, 4), }", MOE_EFORMAT, "<f2"},
    {1, "{'descr': '|u1', 'fortran_order': False, 'shape': (3, 4), }", MOE_EFORMAT, "|u1"},
    {1, "{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (3, 4), }",
     MOE_EFORMAT, "structured"},
    {1, "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }", MOE_EFORMAT, "Fortran"},
    {1, "{'descr': '<f4', 'fortran_order': 0, 'shape': (3, 4), }", MOE_EFORMAT, NULL},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (12,), }", MOE_EFORMAT, "1 dimensions"},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }", MOE_EFORMAT, "3 dimensions"},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", MOE_EFORMAT, "0 dimensions"},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }", MOE_EFORMAT, "empty"},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 0), }", MOE_EFORMAT, "empty"},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-4, 4), }", MOE_EFORMAT, NULL},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4L, 4), }", MOE_EFORMAT, NULL},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': [3, 4], }", MOE_EFORMAT, NULL},
    /* absurd: one dimension over 2^40, 2^62, beyond 64 bits, and a product over 2^40 */
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627777, 2), }", MOE_ERANGE, "absurd"},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 1), }", MOE_ERANGE,
     "absurd"},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 99999999999999999999999), }",
     MOE_ERANGE, "absurd"},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2097152, 1048576), }", MOE_ERANGE,
     "absurd"},
    {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1048577, 1048576), }", MOE_ERANGE,
     "absurd"},
    /* a key missing */
    {1, "{'descr': '<f4', 'shape': (3, 4), }", MOE_EFORMAT, NULL},
    {1, "{'fortran_order': False, 'shape': (3, 4), }", MOE_EFORMAT, NULL},
    {1, "{'descr': '<f4', 'fortran_order': False, }", MOE_EFORMAT, NULL},
    {1, "", MOE_EFORMAT, NULL},
};

START_TEST(test_parse_bad_header)
{
    const struct bad_header *b = &bad_headers[_i];
    moe_npy_header h;
    char msg[256];
    int rc = parse(b->major, b->dict, &h, msg, sizeof msg);
    ck_assert_msg(rc == b->code, "v%d %s: got %d (%s), expected %d", b->major, b->dict, rc, msg,
                  b->code);
    ck_assert_msg(msg[0] != '\0', "no message for %s", b->dict);
    if (b->why != NULL)
        ck_assert_msg(strstr(msg, b->why) != NULL, "message '%s' does not mention '%s'", msg, b->why);
}
END_TEST

START_TEST(test_parse_bad_magic_truncated_nul)
{
    unsigned char buf[256];
    const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
    moe_npy_header h;
    char msg[256];

    size_t len = make_header(buf, 1, dict);
    buf[5] = 'X'; /* "\x93NUMPX" */
    ck_assert_int_eq(moe_npy_parse_header(buf, len, &h, msg, sizeof msg), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(msg, "magic"));
    len = make_header(buf, 1, dict);
    buf[0] = 'x';
    ck_assert_int_eq(moe_npy_parse_header(buf, len, &h, msg, sizeof msg), MOE_EFORMAT);

    /* Truncated: the header length says more bytes than we have; and fewer bytes than a prefix. */
    len = make_header(buf, 1, dict);
    for (size_t cut = 0; cut < len; cut += 7) {
        msg[0] = '\0';
        ck_assert_msg(moe_npy_parse_header(buf, cut, &h, msg, sizeof msg) == MOE_EFORMAT,
                      "header cut to %zu of %zu bytes was accepted", cut, len);
        ck_assert(msg[0] != '\0');
    }
    len = make_header(buf, 2, dict);
    ck_assert_int_eq(moe_npy_parse_header(buf, 11, &h, msg, sizeof msg), MOE_EFORMAT);
    ck_assert_int_eq(moe_npy_parse_header(buf, len - 1, &h, msg, sizeof msg), MOE_EFORMAT);

    /* A NUL inside the header dictionary, before and after the keys. */
    len = make_header(buf, 1, dict);
    buf[10 + 3] = '\0';
    ck_assert_int_eq(moe_npy_parse_header(buf, len, &h, msg, sizeof msg), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(msg, "NUL"));
    len = make_header(buf, 1, dict);
    buf[len - 2] = '\0'; /* in the space padding, after every key */
    ck_assert_int_eq(moe_npy_parse_header(buf, len, &h, msg, sizeof msg), MOE_EFORMAT);

    /* A header length of 65535 with the bytes present but only NULs and spaces. */
    static unsigned char big[65535 + 10];
    memset(big, ' ', sizeof big);
    memcpy(big, "\x93NUMPY\x01\x00\xff\xff", 10);
    ck_assert_int_eq(moe_npy_parse_header(big, sizeof big, &h, msg, sizeof msg), MOE_EFORMAT);
}
END_TEST

/* ---- files ---- */

static void fill_pattern(float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        v[i] = (float)((i * 7919) % 1000) / 64.0f - 7.5f; /* exact in float, distinct-ish */
}

START_TEST(test_round_trip_f32)
{
    enum { ROWS = 13, COLS = 5 };
    float data[ROWS * COLS], back[ROWS * COLS];
    fill_pattern(data, ROWS * COLS);
    data[3] = -0.0f;
    data[4] = 3.4028234663852886e38f; /* FLT_MAX is finite and kept */
    char path[512], msg[512] = "";
    char dir[400];
    fresh_dir(dir, sizeof dir, "round");
    join(path, sizeof path, dir, "round.npy");
    ck_assert_int_eq(moe_npy_write_f32(path, data, ROWS, COLS, msg, sizeof msg), MOE_OK);

    moe_npy_header h;
    ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(h.rows, ROWS);
    ck_assert_int_eq(h.cols, COLS);
    ck_assert_int_eq(h.item_size, 4);
    ck_assert_int_eq(h.data_offset % 64, 0); /* numpy aligns the data to 64 bytes */
    memset(back, 0, sizeof back);
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 0, ROWS, back, msg, sizeof msg), MOE_OK);
    ck_assert_mem_eq(back, data, sizeof data); /* bitwise, -0.0 included */

    /* Partial reads of rows [first, first + count), including the last row and count 0. */
    const int64_t cases[][2] = {{0, 1}, {4, 3}, {12, 1}, {5, 8}, {7, 0}, {13, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int64_t first = cases[c][0], count = cases[c][1];
        float part[ROWS * COLS + 1];
        part[count * COLS] = 99.0f; /* sentinel just past the requested rows */
        ck_assert_int_eq(moe_npy_read_rows(path, &h, first, count, part, msg, sizeof msg), MOE_OK);
        ck_assert_mem_eq(part, data + first * COLS, (size_t)(count * COLS) * sizeof(float));
        ck_assert(part[count * COLS] == 99.0f);
    }
    /* Outside the file. */
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 12, 2, back, msg, sizeof msg), MOE_EINVAL);
    ck_assert_int_eq(moe_npy_read_rows(path, &h, -1, 1, back, msg, sizeof msg), MOE_EINVAL);
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 0, -1, back, msg, sizeof msg), MOE_EINVAL);
    /* Nothing else was left in the directory (no temporary file). */
    ck_assert_int_eq(count_entries(dir), 1);
    ck_assert_int_eq(unlink(path), 0);
}
END_TEST

START_TEST(test_written_header_is_numpy_format)
{
    /* The exact bytes numpy writes for a (2, 3) float32 array, format 1.0. */
    float data[6] = {1, 2, 3, 4, 5, 6};
    char path[512], msg[256];
    char dir[400];
    fresh_dir(dir, sizeof dir, "exact");
    join(path, sizeof path, dir, "exact.npy");
    ck_assert_int_eq(moe_npy_write_f32(path, data, 2, 3, msg, sizeof msg), MOE_OK);
    unsigned char want[128];
    size_t hl = make_header(want, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
    unsigned char got[256];
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(got, 1, sizeof got, f);
    fclose(f);
    ck_assert_uint_eq(n, hl + sizeof data);
    ck_assert_mem_eq(got, want, hl);
    ck_assert_mem_eq(got + hl, data, sizeof data);
    unlink(path);
}
END_TEST

START_TEST(test_truncated_and_trailing)
{
    enum { ROWS = 6, COLS = 4 };
    float data[ROWS * COLS];
    fill_pattern(data, ROWS * COLS);
    char path[512], msg[512];
    moe_npy_header h;
    char dir[400];
    fresh_dir(dir, sizeof dir, "cut");
    join(path, sizeof path, dir, "cut.npy");

    for (int cut = 1; cut <= 5; cut++) {
        ck_assert_int_eq(moe_npy_write_f32(path, data, ROWS, COLS, msg, sizeof msg), MOE_OK);
        struct stat st;
        ck_assert_int_eq(stat(path, &st), 0);
        ck_assert_int_eq(truncate(path, st.st_size - cut), 0);
        msg[0] = '\0';
        ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_EFORMAT);
        ck_assert_msg(strstr(msg, "truncated") != NULL, "message: %s", msg);
    }
    for (int extra = 1; extra <= 5; extra += 4) {
        ck_assert_int_eq(moe_npy_write_f32(path, data, ROWS, COLS, msg, sizeof msg), MOE_OK);
        write_bytes(path, "GARBAGE", (size_t)extra, "ab");
        msg[0] = '\0';
        ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_EFORMAT);
        ck_assert(msg[0] != '\0');
    }
    /* A file that ends inside its header. */
    unsigned char buf[128];
    size_t len = make_header(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }");
    write_bytes(path, buf, len / 2, "wb");
    ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_EFORMAT);
    /* An empty file, and a missing one. */
    write_bytes(path, "", 0, "wb");
    ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_EFORMAT);
    unlink(path);
    msg[0] = '\0';
    ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_EIO);
    ck_assert_ptr_nonnull(strstr(msg, "cut.npy"));
}
END_TEST

START_TEST(test_non_finite_refused)
{
    enum { ROWS = 5, COLS = 3 };
    float data[ROWS * COLS], out[ROWS * COLS];
    fill_pattern(data, ROWS * COLS);
    char path[512], msg[512];
    moe_npy_header h;
    char dir[400];
    fresh_dir(dir, sizeof dir, "nan");
    join(path, sizeof path, dir, "nan.npy");

    data[3 * COLS + 1] = NAN; /* row 3, column 1 */
    ck_assert_int_eq(moe_npy_write_f32(path, data, ROWS, COLS, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_OK); /* shape is fine */
    msg[0] = '\0';
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 0, ROWS, out, msg, sizeof msg), MOE_EFORMAT);
    ck_assert_msg(strstr(msg, "row 3") && strstr(msg, "column 1"), "message: %s", msg);
    /* Rows are numbered in the file, not in the slice read. */
    msg[0] = '\0';
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 2, 3, out, msg, sizeof msg), MOE_EFORMAT);
    ck_assert_msg(strstr(msg, "row 3") && strstr(msg, "column 1"), "message: %s", msg);
    /* A slice that avoids the NaN reads fine. */
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 0, 3, out, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 4, 1, out, msg, sizeof msg), MOE_OK);

    fill_pattern(data, ROWS * COLS);
    data[4 * COLS + 2] = -INFINITY;
    ck_assert_int_eq(moe_npy_write_f32(path, data, ROWS, COLS, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 0, ROWS, out, msg, sizeof msg), MOE_EFORMAT);
    ck_assert_msg(strstr(msg, "row 4") && strstr(msg, "column 2"), "message: %s", msg);
    unlink(path);
}
END_TEST

/* Write a float64 .npy by hand (moesim only writes float32). */
static void write_f64(const char *path, const double *v, int64_t rows, int64_t cols)
{
    char dict[128];
    snprintf(dict, sizeof dict, "{'descr': '<f8', 'fortran_order': False, 'shape': (%lld, %lld), }",
             (long long)rows, (long long)cols);
    unsigned char buf[256];
    size_t len = make_header(buf, 1, dict);
    write_bytes(path, buf, len, "wb");
    write_bytes(path, v, (size_t)(rows * cols) * sizeof(double), "ab");
}

START_TEST(test_float64_converts)
{
    enum { ROWS = 4, COLS = 3 };
    double v[ROWS * COLS] = {0.1, -2.5, 1e-3, 1e30, -1e-40, 0.0, 3.0, 1.0 / 3.0, -7.25, 2e38, 42, -0.0};
    float out[ROWS * COLS];
    char path[512], msg[512];
    moe_npy_header h;
    char dir[400];
    fresh_dir(dir, sizeof dir, "f64");
    join(path, sizeof path, dir, "f64.npy");
    write_f64(path, v, ROWS, COLS);
    ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(h.item_size, 8);
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 0, ROWS, out, msg, sizeof msg), MOE_OK);
    for (int i = 0; i < ROWS * COLS; i++) /* one rounding, as a cast: bitwise */
        ck_assert_msg(out[i] == (float)v[i], "element %d: %.9g vs %.9g", i, out[i], (float)v[i]);
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 2, 2, out, msg, sizeof msg), MOE_OK);
    for (int i = 0; i < 2 * COLS; i++)
        ck_assert(out[i] == (float)v[2 * COLS + i]);

    /* A float64 beyond float range would become infinity: refused, naming its place. */
    v[1 * COLS + 2] = 1e39;
    write_f64(path, v, ROWS, COLS);
    ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 0, ROWS, out, msg, sizeof msg), MOE_EFORMAT);
    ck_assert_msg(strstr(msg, "row 1") && strstr(msg, "column 2"), "message: %s", msg);
    unlink(path);
}
END_TEST

START_TEST(test_float64_many_chunks)
{
    /* read_rows stages float64 in chunks of 2^20 / cols + 1 rows (17 here): 40 rows cross two chunk
     * boundaries. Element (r, c) = r * cols + c, exact in float (< 2^24). */
    enum { ROWS = 40, COLS = 65536 };
    double *v = malloc((size_t)ROWS * COLS * sizeof *v);
    float *out = malloc((size_t)ROWS * COLS * sizeof *out);
    ck_assert(v && out);
    for (int64_t i = 0; i < (int64_t)ROWS * COLS; i++)
        v[i] = (double)i;
    char path[512], msg[512];
    moe_npy_header h;
    char dir[400];
    fresh_dir(dir, sizeof dir, "chunks");
    join(path, sizeof path, dir, "chunks.npy");
    write_f64(path, v, ROWS, COLS);
    ck_assert_int_eq(moe_npy_read_header(path, &h, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 1, ROWS - 1, out, msg, sizeof msg), MOE_OK);
    for (int64_t i = 0; i < (int64_t)(ROWS - 1) * COLS; i++)
        if (out[i] != (float)(i + COLS))
            ck_abort_msg("element %lld of rows [1, 40): %.9g, expected %lld", (long long)i, out[i],
                         (long long)(i + COLS));
    /* A NaN in the third chunk is reported at its row in the file. */
    v[(int64_t)37 * COLS + 12345] = NAN;
    write_f64(path, v, ROWS, COLS);
    ck_assert_int_eq(moe_npy_read_rows(path, &h, 3, ROWS - 3, out, msg, sizeof msg), MOE_EFORMAT);
    ck_assert_msg(strstr(msg, "row 37,") && strstr(msg, "column 12345"), "message: %s", msg);
    free(v);
    free(out);
    unlink(path);
}
END_TEST

START_TEST(test_write_failures_leave_nothing)
{
    float data[4] = {1, 2, 3, 4};
    char dir[400], path[512], msg[512];
    fresh_dir(dir, sizeof dir, "write_fail");
    /* A directory that does not exist. */
    join(path, sizeof path, dir, "no/such/dir/out.npy");
    msg[0] = '\0';
    ck_assert_int_eq(moe_npy_write_f32(path, data, 2, 2, msg, sizeof msg), MOE_EIO);
    ck_assert_ptr_nonnull(strstr(msg, "out.npy"));
    ck_assert(!exists(path));
    ck_assert_int_eq(count_entries(dir), 0);
    /* The rename fails (the target is a directory): the temporary file beside it is removed. */
    join(path, sizeof path, dir, "a_dir");
    ck_assert_int_eq(mkdir(path, 0700), 0);
    ck_assert_int_eq(moe_npy_write_f32(path, data, 2, 2, msg, sizeof msg), MOE_EIO);
    ck_assert_int_eq(count_entries(dir), 1); /* only a_dir */
    ck_assert_int_eq(count_entries(path), 0);
}
END_TEST

static Suite *npy_suite(void)
{
    Suite *s = suite_create("npy");
    TCase *tc = tcase_create("header");
    tcase_add_test(tc, test_parse_v1_f4);
    tcase_add_test(tc, test_parse_v2_f8);
    tcase_add_test(tc, test_parse_variants);
    tcase_add_loop_test(tc, test_parse_bad_header, 0, (int)(sizeof bad_headers / sizeof *bad_headers));
    tcase_add_test(tc, test_parse_bad_magic_truncated_nul);
    suite_add_tcase(s, tc);
    tc = tcase_create("files");
    tcase_add_test(tc, test_round_trip_f32);
    tcase_add_test(tc, test_written_header_is_numpy_format);
    tcase_add_test(tc, test_truncated_and_trailing);
    tcase_add_test(tc, test_non_finite_refused);
    tcase_add_test(tc, test_float64_converts);
    tcase_add_test(tc, test_float64_many_chunks);
    tcase_add_test(tc, test_write_failures_leave_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_in_scratch(g_dir, npy_suite(), NULL);
}
