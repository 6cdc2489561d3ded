/* moesim error codes: one list, one strerror.
 * The library never prints and never exits: every fallible function returns one of these
 * (negative on failure) and writes a human-readable message into a buffer the caller owns. */
#ifndef MOESIM_ERROR_H
#define MOESIM_ERROR_H

#include <stddef.h>

/* X(name, value, description) */
#define MOE_ERRORS(X)                                              \
    X(MOE_OK, 0, "success")                                        \
    X(MOE_EUSAGE, -1, "usage error")                               \
    X(MOE_EINVAL, -2, "invalid input")                             \
    X(MOE_EIO, -3, "input/output error")                           \
    X(MOE_EFORMAT, -4, "malformed file")                           \
    X(MOE_ENOMEM, -5, "out of memory")                             \
    X(MOE_ERANGE, -6, "size out of range")                         \
    X(MOE_EMPI, -7, "MPI error")                                   \
    X(MOE_EINTR, -8, "interrupted by a signal")                     \
    X(MOE_ECHECK, -9, "a self-check failed (the verdict is INVALID)")

enum moe_error {
#define MOE_ERROR_ENUM(name, value, text) name = value,
    MOE_ERRORS(MOE_ERROR_ENUM)
#undef MOE_ERROR_ENUM
};

/* Static description of a code; "unknown error" for values not in the list. */
const char *moe_strerror(int code);

/* printf into msg (if msg != NULL && msglen > 0) and return code: `return moe_fail(rc, msg, len, ...)`. */
int moe_fail(int code, char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Append printf output at buf + *used (buf holds len bytes) and advance *used by what was
 * appended; output that does not fit is cut, and buf stays NUL-terminated. For lists of
 * warnings. */
void moe_appendf(char *buf, size_t len, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
