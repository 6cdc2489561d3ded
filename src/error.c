#include "moesim/error.h"

#include <stdarg.h>
#include <stdio.h>

const char *moe_strerror(int code)
{
    switch (code) {
#define MOE_ERROR_CASE(name, value, text) \
    case name:                            \
        return text;
        MOE_ERRORS(MOE_ERROR_CASE)
#undef MOE_ERROR_CASE
    }
    return "unknown error";
}

int moe_fail(int code, char *msg, size_t msglen, const char *fmt, ...)
{
    if (msg != NULL && msglen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
    }
    return code;
}

void moe_appendf(char *buf, size_t len, size_t *used, const char *fmt, ...)
{
    if (buf == NULL || *used >= len)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *used, len - *used, fmt, ap);
    va_end(ap);
    if (n > 0)
        *used = *used + (size_t)n < len ? *used + (size_t)n : len - 1;
}
