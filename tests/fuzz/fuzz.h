/* Shared by the libFuzzer targets in this directory (docs/testing.md, "Fuzzing").
 * A target checks the contract of the function it fuzzes, not only that it does not crash: a broken
 * promise is reported like a crash (abort, so libFuzzer keeps the input as an artifact). */
#ifndef MOESIM_FUZZ_H
#define MOESIM_FUZZ_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* On failure print file:line, the condition and a message, then abort(). */
#define FUZZ_ASSERT(cond, ...)                                                                  \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: contract broken: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

/* A refusal's message: written, NUL-terminated inside its buffer, and not empty. */
#define FUZZ_ASSERT_MESSAGE(msg, len)                                                         \
    FUZZ_ASSERT(memchr((msg), '\0', (len)) != NULL && (msg)[0] != '\0',                       \
                "a refusal must come with a message")

#endif
