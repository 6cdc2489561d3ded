#include "moesim/simd.h"

#include <stdbool.h>

static int supported_level(void)
{
#if MOE_SIMD_X86
    static int level = -1; /* one thread per rank calls this; a race would store the same value */
    if (level < 0) {
        __builtin_cpu_init();
        bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        bool v4 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
        level = !v3 ? 0 : v4 ? 2 : 1;
    }
    return level;
#else
    return 0;
#endif
}

static int g_level = -1; /* -1: the CPU's, else moe_simd_set_level's */

int moe_simd_level(void)
{
    return g_level < 0 ? supported_level() : g_level;
}

int moe_simd_set_level(int level)
{
    int top = supported_level();
    g_level = level < 0 ? -1 : level < top ? level : top;
    return moe_simd_level();
}
