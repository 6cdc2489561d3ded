#include "moesim/npy.h"

#include "moesim/error.h"
#include "moesim/fileout.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAX_HEADER 65536 /* numpy itself refuses headers over 10000 bytes by default */

const char *moe_npy_dict_value(const char *dict, const char *key)
{
    char pattern[32];
    snprintf(pattern, sizeof pattern, "'%s'", key);
    const char *at = strstr(dict, pattern);
    if (at == NULL) {
        snprintf(pattern, sizeof pattern, "\"%s\"", key);
        at = strstr(dict, pattern);
    }
    if (at == NULL)
        return NULL;
    at += strlen(pattern);
    while (isspace((unsigned char)*at))
        at++;
    if (*at != ':')
        return NULL;
    at++;
    while (isspace((unsigned char)*at))
        at++;
    return at;
}

int moe_npy_parse_header(const unsigned char *buf, size_t len, moe_npy_header *out, char *msg,
                         size_t msglen)
{
    if (len < 10 || memcmp(buf, NPY_MAGIC, 6) != 0)
        return moe_fail(MOE_EFORMAT, msg, msglen, "not a .npy file (bad magic string)");
    int major = buf[6];
    size_t hlen, prefix;
    if (major == 1) {
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
        prefix = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12)
            return moe_fail(MOE_EFORMAT, msg, msglen, "truncated .npy header");
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        prefix = 12;
    } else {
        return moe_fail(MOE_EFORMAT, msg, msglen, "unsupported .npy format version %d", major);
    }
    if (hlen > NPY_MAX_HEADER)
        return moe_fail(MOE_EFORMAT, msg, msglen, ".npy header of %zu bytes is too large", hlen);
    if (prefix + hlen > len)
        return moe_fail(MOE_EFORMAT, msg, msglen, "truncated .npy header");

    char dict[NPY_MAX_HEADER + 1];
    memcpy(dict, buf + prefix, hlen);
    dict[hlen] = '\0';
    if (strlen(dict) != hlen)
        return moe_fail(MOE_EFORMAT, msg, msglen, ".npy header contains a NUL byte");

    const char *descr = moe_npy_dict_value(dict, "descr");
    const char *order = moe_npy_dict_value(dict, "fortran_order");
    const char *shape = moe_npy_dict_value(dict, "shape");
    if (descr == NULL || order == NULL || shape == NULL)
        return moe_fail(MOE_EFORMAT, msg, msglen,
                        ".npy header lacks one of 'descr', 'fortran_order', 'shape'");

    char quote = *descr;
    if (quote != '\'' && quote != '"')
        return moe_fail(MOE_EFORMAT, msg, msglen,
                        "unsupported .npy dtype (structured arrays are not supported)");
    char dtype[16] = {0};
    size_t n = 0;
    for (const char *c = descr + 1; *c != quote; c++) {
        if (*c == '\0' || n + 1 >= sizeof dtype)
            return moe_fail(MOE_EFORMAT, msg, msglen, "malformed .npy dtype");
        dtype[n++] = *c;
    }
    if (strcmp(dtype, "<f4") == 0)
        out->item_size = 4;
    else if (strcmp(dtype, "<f8") == 0)
        out->item_size = 8;
    else
        return moe_fail(MOE_EFORMAT, msg, msglen,
                        ".npy dtype '%s' is not supported: need little-endian float32 ('<f4') or "
                        "float64 ('<f8')",
                        dtype);

    if (strncmp(order, "False", 5) != 0 || isalnum((unsigned char)order[5])) {
        if (strncmp(order, "True", 4) == 0 && !isalnum((unsigned char)order[4]))
            return moe_fail(MOE_EFORMAT, msg, msglen,
                            ".npy array is in Fortran order; save it in C order "
                            "(numpy.ascontiguousarray)");
        return moe_fail(MOE_EFORMAT, msg, msglen, "malformed .npy 'fortran_order'");
    }

    if (*shape != '(')
        return moe_fail(MOE_EFORMAT, msg, msglen, "malformed .npy shape");
    int64_t dims[3];
    int ndim = 0;
    const char *c = shape + 1;
    for (;;) {
        while (isspace((unsigned char)*c))
            c++;
        if (*c == ')')
            break;
        if (!isdigit((unsigned char)*c))
            return moe_fail(MOE_EFORMAT, msg, msglen, "malformed .npy shape");
        errno = 0;
        char *end;
        unsigned long long v = strtoull(c, &end, 10);
        if (errno == ERANGE || v > (unsigned long long)MOE_NPY_MAX_ELEMENTS)
            return moe_fail(MOE_ERANGE, msg, msglen, ".npy dimension %.*s is absurdly large (over 2^40)",
                            (int)(end - c < 30 ? end - c : 30), c);
        if (ndim < 3)
            dims[ndim] = (int64_t)v;
        ndim++;
        c = end;
        while (isspace((unsigned char)*c))
            c++;
        if (*c == ',')
            c++;
        else if (*c != ')')
            return moe_fail(MOE_EFORMAT, msg, msglen, "malformed .npy shape");
    }
    if (ndim != 2)
        return moe_fail(MOE_EFORMAT, msg, msglen, ".npy array has %d dimensions; need 2 (rows, cols)",
                        ndim);
    if (dims[0] < 1 || dims[1] < 1)
        return moe_fail(MOE_EFORMAT, msg, msglen, ".npy array has an empty shape (%lld, %lld)",
                        (long long)dims[0], (long long)dims[1]);
    if (dims[0] > MOE_NPY_MAX_ELEMENTS / dims[1])
        return moe_fail(MOE_ERANGE, msg, msglen,
                        ".npy shape (%lld, %lld) is absurdly large (over 2^40 elements)",
                        (long long)dims[0], (long long)dims[1]);
    out->rows = dims[0];
    out->cols = dims[1];
    out->data_offset = (int64_t)(prefix + hlen);
    return MOE_OK;
}

int moe_npy_read_header(const char *path, moe_npy_header *out, char *msg, size_t msglen)
{
    FILE *f = NULL;
    int orc = moe_input_open(&f, path, NULL, "rb", msg, msglen);
    if (orc != MOE_OK)
        return orc;
    unsigned char *buf = malloc(NPY_MAX_HEADER + 12);
    if (buf == NULL) {
        fclose(f);
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory reading '%s'", path);
    }
    size_t got = fread(buf, 1, NPY_MAX_HEADER + 12, f);
    struct stat st;
    int stat_rc = fstat(fileno(f), &st);
    fclose(f);
    char inner[256];
    int rc = moe_npy_parse_header(buf, got, out, inner, sizeof inner);
    free(buf);
    if (rc != MOE_OK)
        return moe_fail(rc, msg, msglen, "'%s': %s", path, inner);
    if (stat_rc != 0)
        return moe_fail(MOE_EIO, msg, msglen, "cannot stat '%s'", path);
    int64_t want = out->data_offset + out->rows * out->cols * out->item_size;
    if ((int64_t)st.st_size < want)
        return moe_fail(MOE_EFORMAT, msg, msglen,
                        "'%s' is truncated: shape (%lld, %lld) needs %lld bytes, the file has %lld",
                        path, (long long)out->rows, (long long)out->cols, (long long)want,
                        (long long)st.st_size);
    if ((int64_t)st.st_size > want)
        return moe_fail(MOE_EFORMAT, msg, msglen,
                        "'%s' has %lld bytes after the data of shape (%lld, %lld): not a plain .npy",
                        path, (long long)(st.st_size - want), (long long)out->rows,
                        (long long)out->cols);
    return MOE_OK;
}

int moe_npy_read_rows(const char *path, const moe_npy_header *h, int64_t first, int64_t count,
                      float *out, char *msg, size_t msglen)
{
    if (first < 0 || count < 0 || first + count > h->rows)
        return moe_fail(MOE_EINVAL, msg, msglen, "rows [%lld, %lld) outside '%s'", (long long)first,
                        (long long)(first + count), path);
    if (count == 0)
        return MOE_OK;
    FILE *f = NULL;
    int rc = moe_input_open(&f, path, NULL, "rb", msg, msglen);
    if (rc != MOE_OK)
        return rc;
    if (fseeko(f, (off_t)(h->data_offset + first * h->cols * h->item_size), SEEK_SET) != 0) {
        rc = moe_fail(MOE_EIO, msg, msglen, "cannot seek in '%s'", path);
        goto done;
    }
    /* Read in chunks of rows so float64 input needs only a small staging buffer. */
    int64_t chunk_rows = (INT64_C(1) << 20) / h->cols + 1;
    double *stage = h->item_size == 8 ? malloc((size_t)(chunk_rows * h->cols) * sizeof *stage) : NULL;
    if (h->item_size == 8 && stage == NULL) {
        rc = moe_fail(MOE_ENOMEM, msg, msglen, "out of memory reading '%s'", path);
        goto done;
    }
    for (int64_t r = 0; r < count && rc == MOE_OK; r += chunk_rows) {
        int64_t nr = count - r < chunk_rows ? count - r : chunk_rows;
        size_t n = (size_t)(nr * h->cols);
        float *dst = out + r * h->cols;
        size_t got = h->item_size == 8 ? fread(stage, 8, n, f) : fread(dst, 4, n, f);
        if (got != n) {
            rc = moe_fail(MOE_EFORMAT, msg, msglen, "'%s' is truncated", path);
            break;
        }
        for (size_t i = 0; i < n; i++) {
            double v = h->item_size == 8 ? stage[i] : dst[i];
            if (!isfinite(v) || (h->item_size == 8 && fabs(v) > 3.4028234663852886e38)) {
                rc = moe_fail(MOE_EFORMAT, msg, msglen,
                              "'%s' holds %s at row %lld, column %lld", path,
                              isfinite(v) ? "a value beyond float32's range" : "a non-finite value",
                              (long long)(first + r + (int64_t)i / h->cols),
                              (long long)((int64_t)i % h->cols));
                break;
            }
            dst[i] = (float)v;
        }
    }
    free(stage);
done:
    fclose(f);
    return rc;
}

int moe_npy_write_f32_file(FILE *f, const float *data, int64_t rows, int64_t cols)
{
    char dict[128];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                     (long long)rows, (long long)cols);
    /* Pad with spaces so that magic + length + dict + '\n' is a multiple of 64 bytes. */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)n + pad + 1;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
    for (size_t i = 0; ok && i < pad; i++)
        ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF;
    ok = ok && fwrite(data, sizeof *data, (size_t)(rows * cols), f) == (size_t)(rows * cols);
    return ok ? MOE_OK : MOE_EIO;
}

int moe_npy_write_f32(const char *path, const float *data, int64_t rows, int64_t cols, char *msg,
                      size_t msglen)
{
    moe_outfile o;
    int rc = moe_outfile_open(&o, path, "output", true, false, 0.0, msg, msglen);
    if (rc != MOE_OK)
        return rc;
    if (moe_npy_write_f32_file(o.f, data, rows, cols) != MOE_OK) {
        o.failed = true;
        o.err = errno;
    }
    moe_outfile *one = &o;
    return moe_outfiles_commit(&one, 1, msg, msglen);
}
