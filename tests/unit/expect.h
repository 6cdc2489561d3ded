/* Assertion macros shared by the unit suites.
 * Check reports every passing ck_assert to the parent process (a write per check in fork mode), so
 * checks inside large loops use these, which only act on failure. */
#ifndef MOESIM_TEST_EXPECT_H
#define MOESIM_TEST_EXPECT_H

#include <check.h>
#include <stdint.h>
#include <string.h>

#define EXPECT(c)                                                                                  \
    do {                                                                                           \
        if (!(c))                                                                                  \
            ck_abort_msg("Assertion '%s' failed", #c);                                             \
    } while (0)
#define EXPECT_MSG(c, ...)                                                                         \
    do {                                                                                           \
        if (!(c))                                                                                  \
            ck_abort_msg(__VA_ARGS__);                                                             \
    } while (0)
#define EXPECT_EQ(a, b)                                                                            \
    do {                                                                                           \
        intmax_t a_ = (intmax_t)(a), b_ = (intmax_t)(b);                                           \
        if (a_ != b_)                                                                              \
            ck_abort_msg("Assertion '%s == %s' failed: %jd != %jd", #a, #b, a_, b_);               \
    } while (0)
#define EXPECT_UEQ(a, b)                                                                           \
    do {                                                                                           \
        uintmax_t a_ = (uintmax_t)(a), b_ = (uintmax_t)(b);                                        \
        if (a_ != b_)                                                                              \
            ck_abort_msg("Assertion '%s == %s' failed: %#jx != %#jx", #a, #b, a_, b_);             \
    } while (0)
#define EXPECT_UNE(a, b) EXPECT((uintmax_t)(a) != (uintmax_t)(b))
#define EXPECT_MEM_EQ(a, b, n) EXPECT(memcmp((a), (b), (n)) == 0)

#endif
