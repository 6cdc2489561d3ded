/* Deduplicated dispatch (--dispatch per-rank; DeepEP's normal kernels): each token row travels
 * once to each rank that hosts at least one of its served experts, with the gates and local
 * expert ids beside it; the owner fans the row out to its experts, sums their gate-weighted
 * outputs, and sends one row back per (token, rank). Part of the layer (layer_internal.h).
 *
 * A travelling row: the payload in the --wire format, then meta_slots entries of (int32 local
 * expert id, float32 gate), id -1 for an unused entry; meta_slots = min(slots per token, most
 * slots on one rank). The rows a rank sends are sorted by destination rank, then token. */
#include "layer_internal.h"

#include "moesim/error.h"
#include "moesim/tokens.h"
#include "moesim/wire.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* One metadata entry as it travels: MOE_DEDUP_ENTRY_BYTES. */
typedef struct dedup_entry {
    int32_t expert; /* local expert index on the destination, -1 unused */
    float gate;
} dedup_entry;
_Static_assert(sizeof(dedup_entry) == MOE_DEDUP_ENTRY_BYTES, "a metadata entry is 8 bytes");

/* Sizes the dedup buffers for n_pairs rows out and n_recv rows in (grown, never shrunk). */
static int reserve(moe_layer *L, int64_t n_out, int64_t n_in, char *msg, size_t msglen)
{
    int64_t row = L->ex.row_out_bytes, back = L->ex.row_back_bytes;
    struct {
        void **p;
        int64_t *cap, need, size;
    } bufs[] = {
        {(void **)&L->dd_send, &L->dd_cap_send, n_out, row},
        {(void **)&L->dd_back_recv, &L->dd_cap_back_recv, n_out, back},
        {(void **)&L->dd_recv, &L->dd_cap_recv, n_in, row},
        {(void **)&L->dd_back_send, &L->dd_cap_back_send, n_in, back},
        {(void **)&L->dd_fan, &L->dd_cap_fan, n_in * L->meta_slots, (int64_t)sizeof(int64_t)},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (bufs[i].need <= *bufs[i].cap)
            continue;
        void *p = realloc(*bufs[i].p, (size_t)(bufs[i].need * bufs[i].size));
        if (p == NULL)
            return moe_fail(MOE_ENOMEM, msg, msglen,
                            "out of memory for the deduplicated dispatch (%lld rows)",
                            (long long)bufs[i].need);
        L->bytes += (bufs[i].need - *bufs[i].cap) * bufs[i].size;
        *bufs[i].p = p;
        *bufs[i].cap = bufs[i].need;
    }
    return MOE_OK;
}

int moe_dedup_plan(moe_layer *L, char *msg, size_t msglen)
{
    int R = L->R, A = L->A, M = L->meta_slots;
    /* pairs per destination: a token counts once for each rank owning one of its served slots */
    int *seen = L->dd_seen; /* (R), -1 = not yet this token */
    for (int r = 0; r < R; r++) {
        L->dd_send_rows[r] = 0;
        seen[r] = -1;
    }
    for (int64_t t = 0; t < L->n; t++)
        for (int c = 0; c < A; c++) {
            int64_t i = t * A + c;
            if (!L->flag[i])
                continue;
            int r = L->owner_of[L->phys[i]];
            if (seen[r] != (int)t) {
                seen[r] = (int)t;
                L->dd_send_rows[r]++;
            }
        }
    /* rows arriving from each source */
    MOE_MPI_CHECK(MPI_Alltoall(L->dd_send_rows, 1, MPI_INT64_T, L->dd_recv_rows, 1, MPI_INT64_T,
                               L->comm),
                  msg, msglen);
    int64_t out = 0, in = 0;
    for (int r = 0; r < R; r++) {
        out += L->dd_send_rows[r];
        in += L->dd_recv_rows[r];
    }
    L->dd_n_send = out;
    L->dd_n_recv = in;
    if (L->cfg.predict_only) /* the counts are the plan: no row will move */
        return moe_exchange_set_rows(&L->ex, L->dd_send_rows, L->dd_recv_rows, msg, msglen);
    int rc = reserve(L, out, in, msg, msglen);
    if ((rc = moe_agree(L->comm, rc, msg, msglen)) != MOE_OK)
        return rc;
    /* the pairs in send order (destination, then token), with their metadata: cursor per rank */
    int64_t *cursor = L->dd_cursor, acc = 0;
    for (int r = 0; r < R; r++) {
        cursor[r] = acc;
        acc += L->dd_send_rows[r];
    }
    for (int r = 0; r < R; r++)
        seen[r] = -1;
    int64_t row = L->ex.row_out_bytes, payload = moe_wire_row_bytes(L->wire_out, L->d);
    for (int64_t t = 0; t < L->n; t++)
        for (int c = 0; c < A; c++) {
            int64_t i = t * A + c;
            if (!L->flag[i])
                continue;
            int p = L->phys[i], r = L->owner_of[p]; /* the slot serving it */
            if (seen[r] != (int)t) { /* a new pair: its row, with every entry unused */
                seen[r] = (int)t;
                int64_t p = cursor[r]++;
                L->dd_tok[p] = t;
                dedup_entry *meta = (dedup_entry *)((uint8_t *)L->dd_send + p * row + payload);
                for (int m = 0; m < M; m++)
                    meta[m] = (dedup_entry){.expert = -1, .gate = 0.0f};
                L->dd_last[r] = p;
            }
            /* the entry: slots are visited in choice order; kept sorted by local expert id, so
             * the owner sums a token's outputs in expert id order */
            dedup_entry *meta =
                (dedup_entry *)((uint8_t *)L->dd_send + L->dd_last[r] * row + payload);
            int m = 0;
            while (m < M && meta[m].expert >= 0)
                m++;
            dedup_entry entry = {.expert = L->local_of[p], .gate = L->gate[i]};
            while (m > 0 && meta[m - 1].expert > entry.expert) {
                meta[m] = meta[m - 1];
                m--;
            }
            meta[m] = entry;
        }
    return moe_exchange_set_rows(&L->ex, L->dd_send_rows, L->dd_recv_rows, msg, msglen);
}

void moe_dedup_pack(moe_layer *L)
{
    /* payloads in place, after the metadata the plan wrote: one encoded row at a time */
    int64_t row = L->ex.row_out_bytes;
    for (int64_t p = 0; p < L->dd_n_send; p++)
        moe_wire_encode_rows((uint8_t *)L->dd_send + p * row, L->h, &L->dd_tok[p], 1, L->d,
                             L->wire_out);
}

void moe_dedup_fan_out(moe_layer *L)
{
    /* arrival order is source-major, tokens in order within a source: placing each row at its
     * experts' cursors gives every expert block the rows in (source, token) order, the layout of
     * the per-expert regroup */
    int64_t row = L->ex.row_out_bytes, payload = moe_wire_row_bytes(L->wire_out, L->d);
    int M = L->meta_slots;
    for (int64_t le = 0; le < L->n_ls; le++) /* every local slot, replicas included */
        L->placed[le] = 0;
    for (int64_t j = 0; j < L->dd_n_recv; j++) {
        const uint8_t *src = (const uint8_t *)L->dd_recv + j * row;
        const dedup_entry *meta = (const dedup_entry *)(src + payload);
        int64_t first = -1;
        for (int m = 0; m < M; m++) {
            int64_t pos = -1;
            if (meta[m].expert >= 0) {
                int le = meta[m].expert;
                pos = L->x_start[le] + L->placed[le]++;
                float *dst = L->x + pos * L->d;
                if (first < 0)
                    moe_wire_decode_rows(dst, src, 1, L->d, L->wire_out);
                else
                    memcpy(dst, L->x + first * L->d, (size_t)L->d * sizeof(float));
                first = first < 0 ? pos : first;
            }
            L->dd_fan[j * M + m] = pos;
        }
    }
}

void moe_dedup_fan_in(moe_layer *L, const float *out)
{
    int64_t row = L->ex.row_out_bytes, back = L->ex.row_back_bytes;
    int64_t payload = moe_wire_row_bytes(L->wire_out, L->d);
    int M = L->meta_slots;
    float *sum = L->dd_sum; /* (d) */
    for (int64_t j = 0; j < L->dd_n_recv; j++) {
        const dedup_entry *meta = (const dedup_entry *)((const uint8_t *)L->dd_recv + j * row +
                                                        payload);
        for (int64_t x = 0; x < L->d; x++)
            sum[x] = 0.0f;
        for (int m = 0; m < M; m++) {
            int64_t pos = L->dd_fan[j * M + m];
            if (pos < 0)
                continue;
            float g = meta[m].gate;
            const float *o = out + pos * L->d;
            for (int64_t x = 0; x < L->d; x++)
                sum[x] += g * o[x];
        }
        moe_wire_encode_rows((uint8_t *)L->dd_back_send + j * back, sum, NULL, 1, L->d,
                             L->wire_back);
    }
}

void moe_dedup_add_back(moe_layer *L, float *y, const void *rows, const int64_t *tok, int64_t count)
{
    int64_t back = L->ex.row_back_bytes;
    float *row = L->dd_sum;
    memcpy(y, L->h, (size_t)(L->n * L->d) * sizeof(float));
    for (int64_t p = 0; p < count; p++) {
        moe_wire_decode_rows(row, (const uint8_t *)rows + p * back, 1, L->d, L->wire_back);
        float *o = y + tok[p] * L->d;
        for (int64_t x = 0; x < L->d; x++)
            o[x] += row[x];
    }
}

void moe_dedup_combine(moe_layer *L, float *y)
{
    /* destination-major: a token's contributions are added in rank order */
    moe_dedup_add_back(L, y, L->dd_back_recv, L->dd_tok, L->dd_n_send);
}
