/* libFuzzer target: the .npy header parser, moe_npy_parse_header (include/moesim/npy.h).
 * Input: the first bytes of a file, exactly as moe_npy_read_header would pass them. On success the
 * header must describe a 2-D float32/float64 array of at most MOE_NPY_MAX_ELEMENTS elements whose
 * data starts inside the prefix and header that were read; on failure a negative code and a
 * message. Seeds: tests/fuzz/corpus/npy (numpy's own v1/v2/v3 headers and near misses). */
#include "moesim/error.h"
#include "moesim/npy.h"

#include "fuzz.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moe_npy_header hdr;
    memset(&hdr, 0xa5, sizeof hdr);
    char msg[256];
    memset(msg, 'x', sizeof msg);
    int rc = moe_npy_parse_header(data, size, &hdr, msg, sizeof msg);
    if (rc != MOE_OK) {
        FUZZ_ASSERT(rc == MOE_EFORMAT || rc == MOE_ERANGE, "rc %d (%s)", rc, moe_strerror(rc));
        FUZZ_ASSERT_MESSAGE(msg, sizeof msg);
        return 0;
    }
    FUZZ_ASSERT(hdr.item_size == 4 || hdr.item_size == 8, "item_size %d", hdr.item_size);
    FUZZ_ASSERT(hdr.rows >= 1 && hdr.cols >= 1, "shape (%lld, %lld)", (long long)hdr.rows,
                (long long)hdr.cols);
    FUZZ_ASSERT(hdr.rows <= MOE_NPY_MAX_ELEMENTS / hdr.cols, "shape (%lld, %lld) over 2^40",
                (long long)hdr.rows, (long long)hdr.cols);
    /* version 1: 10-byte prefix, else 12; the data starts right after the header that was read */
    FUZZ_ASSERT(hdr.data_offset >= 10 && (uint64_t)hdr.data_offset <= size,
                "data_offset %lld for %zu bytes read", (long long)hdr.data_offset, size);
    return 0;
}
