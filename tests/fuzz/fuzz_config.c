/* libFuzzer target: the option parser and its validation, moe_config_parse and moe_config_resolve
 * (include/moesim/config.h), as main calls them.
 * Input: byte 0 is the rank count, 1 + (byte & 63): '@' is 1 rank, 'A' 2, 'C' 4, '?' 64. One
 * separator may follow it; the rest are the arguments after "moesim", separated by '\n' or NUL (so
 * a seed is readable text, one argument a line; a final separator ends the last argument, it does
 * not start an empty one). Checked:
 *   - a refusal is MOE_EUSAGE with a message;
 *   - parsing is a function of argv: a second parse of the same strings (in their original order)
 *     gives the same code, message and configuration, whatever state the first left behind;
 *   - after a successful resolve the shape relations it promises hold: 1 <= k <= E, R <= E, hot
 *     experts < E, ffn set, 1..MOE_MAX_CF capacity factors each in [0, 1e6], and the rows one rank
 *     sends fit an int count.
 * Seeds: tests/fuzz/corpus/config (typical command lines and refused ones). */
#include "moesim/config.h"
#include "moesim/error.h"

#include "fuzz.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int is_separator(uint8_t c)
{
    return c == '\n' || c == '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int nranks = 1 + (data[0] & 63);
    size_t at = 1;
    if (at < size && is_separator(data[at]))
        at++;
    /* strings: the argument bytes, each separator turned into the NUL that ends an argument */
    size_t n_bytes = size - at;
    char *strings = malloc(n_bytes + 1);
    size_t max_args = 2 + n_bytes; /* "moesim", one per separator, the last, NULL */
    char **argv = malloc((max_args + 1) * sizeof *argv);
    char **again = malloc((max_args + 1) * sizeof *again);
    FUZZ_ASSERT(strings != NULL && argv != NULL && again != NULL, "out of memory");
    static char program[] = "moesim";
    int argc = 0;
    argv[argc++] = program;
    if (n_bytes > 0) {
        memcpy(strings, data + at, n_bytes);
        size_t start = 0;
        for (size_t i = 0; i < n_bytes; i++)
            if (is_separator((uint8_t)strings[i])) {
                strings[i] = '\0';
                argv[argc++] = strings + start;
                start = i + 1;
            }
        if (start < n_bytes) {
            strings[n_bytes] = '\0';
            argv[argc++] = strings + start;
        }
    }
    argv[argc] = NULL;
    memcpy(again, argv, (size_t)(argc + 1) * sizeof *argv); /* before getopt_long permutes argv */

    moe_config cfg, cfg2;
    char msg[512], msg2[512];
    memset(msg, 'x', sizeof msg);
    moe_config_defaults(&cfg);
    int rc = moe_config_parse(&cfg, argc, argv, msg, sizeof msg);
    if (rc != MOE_OK) {
        FUZZ_ASSERT(rc == MOE_EUSAGE, "parse rc %d (%s)", rc, moe_strerror(rc));
        FUZZ_ASSERT_MESSAGE(msg, sizeof msg);
    }

    memset(msg2, 'x', sizeof msg2);
    moe_config_defaults(&cfg2);
    int rc2 = moe_config_parse(&cfg2, argc, again, msg2, sizeof msg2);
    FUZZ_ASSERT(rc2 == rc, "second parse of the same argv gave %d, first %d", rc2, rc);
    if (rc != MOE_OK)
        FUZZ_ASSERT(strcmp(msg, msg2) == 0, "second parse said '%s', first '%s'", msg2, msg);
    else /* both start from zeroed defaults; pointers point into the same strings */
        FUZZ_ASSERT(memcmp(&cfg, &cfg2, sizeof cfg) == 0, "second parse, another configuration");

    if (rc == MOE_OK && !cfg.help && !cfg.version) {
        memset(msg, 'x', sizeof msg);
        rc = moe_config_resolve(&cfg, nranks, NULL, NULL, NULL, msg, sizeof msg);
        if (rc != MOE_OK) {
            FUZZ_ASSERT(rc == MOE_EUSAGE, "resolve rc %d (%s)", rc, moe_strerror(rc));
            FUZZ_ASSERT_MESSAGE(msg, sizeof msg);
        } else {
            FUZZ_ASSERT(cfg.tokens >= 1 && cfg.hidden >= 1 && cfg.ffn >= 1, "shape %lld %lld %lld",
                        (long long)cfg.tokens, (long long)cfg.hidden, (long long)cfg.ffn);
            FUZZ_ASSERT(cfg.top_k >= 1 && cfg.top_k <= cfg.experts, "k %d, E %d", cfg.top_k,
                        cfg.experts);
            FUZZ_ASSERT(nranks <= cfg.experts, "R %d > E %d", nranks, cfg.experts);
            FUZZ_ASSERT(cfg.hot_experts >= 0 && cfg.hot_experts < cfg.experts, "hot %d, E %d",
                        cfg.hot_experts, cfg.experts);
            FUZZ_ASSERT(cfg.n_cf >= 1 && cfg.n_cf <= MOE_MAX_CF, "n_cf %d", cfg.n_cf);
            FUZZ_ASSERT(cfg.capacity_factor == cfg.cf_list[0], "cf %g, list[0] %g",
                        cfg.capacity_factor, cfg.cf_list[0]);
            for (int i = 0; i < cfg.n_cf; i++)
                FUZZ_ASSERT(cfg.cf_list[i] >= 0 && cfg.cf_list[i] <= 1e6, "cf[%d] %g", i,
                            cfg.cf_list[i]);
            int64_t max_local = (cfg.tokens + nranks - 1) / nranks;
            FUZZ_ASSERT(max_local * cfg.top_k <= INT_MAX, "%lld rows per rank",
                        (long long)(max_local * cfg.top_k));
        }
    }
    free(again);
    free(argv);
    free(strings);
    return 0;
}
