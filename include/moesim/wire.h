/* Wire formats of token rows: how a row of d float32 values is laid out in bytes between ranks
 * (dispatch and combine send rows; the format decides the bytes, and for bf16 and fp8 the values
 * the receiver sees). Pure: no MPI, no state, no printing. docs/wire.md is the full contract.
 *
 *   fp32  4·d bytes: the floats as they are.
 *   bf16  2·d bytes: each float rounded to bfloat16, round to nearest, ties to even, on the upper
 *         16 bits (NaN stays NaN with its quiet bit set; overflow rounds to infinity as IEEE 754
 *         does). Decoding is exact.
 *   fp8   d + 4·ceil(d/128) bytes: d OCP E4M3FN codes, then one float32 scale per block of 128
 *         channels (the last block may be shorter), DeepEP's per-token, per-128-channel layout.
 *         Per block: amax = max(1e-4, max |x| over the block's finite values) (DeepEP's margin
 *         kFP8Margin), scale = amax / 448 (float32, rounded once), code = e4m3(x / scale) with
 *         x / scale a float32 division rounded once, then rounded to nearest E4M3, ties to even,
 *         saturating to ±448 (±inf too); NaN becomes S.1111.111. Decoding: e4m3_value(code)·scale.
 *
 * Every multi-byte value (bf16 halves, fp32 values, fp8 scales) is stored with memcpy in host
 * byte order at its byte offset: rows are byte arrays, with no alignment or padding anywhere, so a
 * row's fp8 scales may start at an odd offset. MPI moves them as MPI_BYTE. */
#ifndef MOESIM_WIRE_H
#define MOESIM_WIRE_H

#include <stdint.h>

typedef enum moe_wire { MOE_WIRE_FP32 = 0, MOE_WIRE_BF16 = 1, MOE_WIRE_FP8 = 2 } moe_wire;

#define MOE_WIRE_FP8_BLOCK 128       /* channels per fp8 scale (DeepEP kNumPerChannels)      */
#define MOE_E4M3_MAX 448.0f          /* largest finite E4M3FN value, S.1111.110              */
#define MOE_WIRE_FP8_AMAX_FLOOR 1e-4f /* amax floor (DeepEP kFP8Margin): keeps scale normal */

/* "fp32", "bf16", "fp8"; "unknown" for a value outside the enum. */
const char *moe_wire_name(moe_wire w);

/* The format named name (exactly "fp32", "bf16" or "fp8") into *out: MOE_OK, or MOE_EINVAL and
 * *out untouched. */
int moe_wire_parse(const char *name, moe_wire *out);

/* Exact bytes of one encoded row of d values: 4d, 2d, d + 4·ceil(d/128). -1 if w is not a format or
 * d < 0 or the size would overflow int64. */
int64_t moe_wire_row_bytes(moe_wire w, int64_t d);

/* --dispatch per-rank rows (dedup.c) carry metadata: entries of (int32 local expert id, float32
 * gate), as many as a token can use on one rank, min(slots per token, ceil(P / R)) for P expert
 * slots (experts and replicas) on R ranks; the row is the payload and those entries. */
#define MOE_DEDUP_ENTRY_BYTES 8
int moe_dedup_meta_slots(int slots_per_token, int P, int R);
int64_t moe_dedup_row_bytes(int64_t payload_bytes, int meta_slots);

/* With --a2a hierarchical a per-rank dispatch crosses the leaders' stage once per (token,
 * destination node) (nodex.c): a node row is the payload and min(slots per token, most slots on
 * one node) entries of (int32 destination rank, int32 its local expert id, float32 gate). */
#define MOE_NODEX_ENTRY_BYTES 12

/* Encode n rows of d floats into dst, (n, row_bytes(w, d)) bytes, row i of dst from row rows[i]
 * of src (a gather; rows == NULL: row i). src (·, d) row-major; rows (n) or NULL. */
void moe_wire_encode_rows(void *dst, const float *src, const int64_t *rows, int64_t n, int64_t d,
                          moe_wire w);
/* Decode n encoded rows, src (n, row_bytes(w, d)) bytes, into dst (n, d) floats. */
void moe_wire_decode_rows(float *dst, const void *src, int64_t n, int64_t d, moe_wire w);

/* The twins: plain loops, bit for bit the same bytes and floats as the fast ones. bf16 rounds by
 * comparing the two neighbouring bf16 values in double; e4m3 by searching all 127 magnitudes for
 * the nearest (ties: the even code); the scale arithmetic in double, rounded once to float. */
void moe_wire_encode_rows_ref(void *dst, const float *src, const int64_t *rows, int64_t n,
                              int64_t d, moe_wire w);
void moe_wire_decode_rows_ref(float *dst, const void *src, int64_t n, int64_t d, moe_wire w);

/* The fp8 scale of one block x (len) of at most 128 values: max(1e-4, max finite |x|) / 448. */
float moe_fp8_block_scale(const float *x, int64_t len);

/* One value. bf16: the upper half of the float's bits after rounding. e4m3: the OCP E4M3FN code,
 * sign in bit 7, exponent (bias 7) in bits 6..3, mantissa in bits 2..0; subnormals m·2^-9;
 * 0x7f and 0xff are NaN; the conversion saturates (|x| >= 448 and ±inf give ±448). */
uint16_t moe_bf16_from_float(float x);
float moe_bf16_to_float(uint16_t b);
uint8_t moe_e4m3_from_float(float x);
float moe_e4m3_to_float(uint8_t c);
uint16_t moe_bf16_from_float_ref(float x);
uint8_t moe_e4m3_from_float_ref(float x);

#endif
