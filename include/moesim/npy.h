/* NumPy .npy files (format versions 1.0, 2.0 and 3.0): 2-D, C order, little-endian float32 or
 * float64. Reading converts to float32; writing produces float32 version 1.0.
 * Spec: numpy.lib.format, "A Simple File Format for NumPy Arrays" (NEP 1). */
#ifndef MOESIM_NPY_H
#define MOESIM_NPY_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

/* Largest array moesim accepts from a file: 2^40 elements (4 TiB as float32). Anything larger is
 * refused as absurd before any allocation. */
#define MOE_NPY_MAX_ELEMENTS (INT64_C(1) << 40)

typedef struct moe_npy_header {
    int64_t rows, cols;   /* shape (rows, cols)                              */
    int item_size;        /* 4 for float32, 8 for float64                    */
    int64_t data_offset;  /* bytes from the start of the file to the data    */
} moe_npy_header;

/* Parse the header of a file and check it against the file size. Fails (MOE_EIO, MOE_EFORMAT,
 * MOE_ERANGE) on a missing file, bad magic, unsupported dtype, Fortran order, a shape that is not
 * 2-D or has a zero or absurd dimension, or a data section shorter or longer than the shape. */
int moe_npy_read_header(const char *path, moe_npy_header *out, char *msg, size_t msglen);

/* Parse a header already in memory: buf holds the first `len` bytes of a file. Same checks except
 * the file size. Exposed for unit tests and fuzzing. */
int moe_npy_parse_header(const unsigned char *buf, size_t len, moe_npy_header *out, char *msg,
                         size_t msglen);

/* Read rows [first, first + count) into out (count, cols) as float32. Fails on a short read or a
 * non-finite value (NaN or infinity: the message names the row and column). */
int moe_npy_read_rows(const char *path, const moe_npy_header *h, int64_t first, int64_t count,
                      float *out, char *msg, size_t msglen);

/* Write data (rows, cols) as a float32 .npy to path through moe_outfile (fileout.h): atomically
 * for a regular file, in place for a device or FIFO, "-" for stdout; a failure leaves nothing. */
int moe_npy_write_f32(const char *path, const float *data, int64_t rows, int64_t cols, char *msg,
                      size_t msglen);

/* The same bytes to an open stream. MOE_OK or MOE_EIO (the stream's error state tells why). */
int moe_npy_write_f32_file(FILE *f, const float *data, int64_t rows, int64_t cols);

/* In the text of a .npy header dictionary, the value of `key` ('key' or "key", then a colon,
 * spaces skipped): a pointer to its first character, or NULL. For readers of other shapes
 * (placement.c's loads files). */
const char *moe_npy_dict_value(const char *dict, const char *key);

#endif
