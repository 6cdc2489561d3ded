#include "moesim/driver.h"

#include "moesim/error.h"
#include "moesim/exchange.h"
#include "moesim/expert.h"
#include "moesim/fileout.h"
#include "moesim/npy.h"

#include <cblas.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int moe_driver_resolve(moe_config *cfg, int nranks, MPI_Comm comm, char *msg, size_t msglen)
{
    moe_npy_header th, rh, lh;
    int rc = MOE_OK;
    /* regular files only, named with their option (a FIFO would block every rank forever) */
    const char *files[] = {cfg->tokens_file, cfg->router_file, cfg->logits_file};
    const char *options[] = {"--tokens-file", "--router-file", "--logits-file"};
    for (int i = 0; i < 3 && rc == MOE_OK; i++)
        if (files[i] != NULL)
            rc = moe_input_check(files[i], options[i], msg, msglen);
    if (rc == MOE_OK && cfg->tokens_file != NULL)
        rc = moe_npy_read_header(cfg->tokens_file, &th, msg, msglen);
    if (rc == MOE_OK && cfg->router_file != NULL)
        rc = moe_npy_read_header(cfg->router_file, &rh, msg, msglen);
    if (rc == MOE_OK && cfg->logits_file != NULL)
        rc = moe_npy_read_header(cfg->logits_file, &lh, msg, msglen);
    /* the other inputs: regular files only (a FIFO would block every rank forever) */
    if (rc == MOE_OK && cfg->network != NULL)
        rc = moe_input_check(cfg->network, "--network", msg, msglen);
    struct stat st;
    if (rc == MOE_OK && cfg->topology != NULL && stat(cfg->topology, &st) == 0)
        rc = moe_input_check(cfg->topology, "--topology", msg, msglen);
    if (rc == MOE_OK)
        rc = moe_config_resolve(cfg, nranks, cfg->tokens_file ? &th : NULL,
                                cfg->router_file ? &rh : NULL, cfg->logits_file ? &lh : NULL, msg,
                                msglen);
    return moe_agree(comm, rc, msg, msglen);
}

int moe_driver_stdout_is_terminal(void)
{
    if (!isatty(STDOUT_FILENO) || getenv("MOESIM_NO_TTY") != NULL)
        return 0;
    if (getenv("OMPI_COMM_WORLD_SIZE") == NULL && getenv("PMI_RANK") == NULL &&
        getenv("PMIX_RANK") == NULL)
        return 1;
    char link[64], target[256];
    snprintf(link, sizeof link, "/proc/%ld/fd/1", (long)getppid());
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0)
        return 0;
    target[n] = '\0';
    return strncmp(target, "/dev/pts/", 9) == 0 || strncmp(target, "/dev/tty", 8) == 0;
}

/* A "Name: N kB" line of /proc/meminfo in bytes, or -1. */
static int64_t meminfo(const char *name)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (f == NULL)
        return -1;
    char line[256], want[64];
    snprintf(want, sizeof want, "%s: %%lld kB", name);
    long long kb;
    int64_t bytes = -1;
    while (bytes < 0 && fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, want, &kb) == 1)
            bytes = (int64_t)kb * 1024;
    fclose(f);
    return bytes;
}

/* sysconf's page count times the page size, or -1 */
static int64_t pages_bytes(int which)
{
    long pages = sysconf(which), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (int64_t)pages * page : -1;
}

int64_t moe_driver_mem_total(void)
{
    int64_t b = meminfo("MemTotal");
    return b >= 0 ? b : pages_bytes(_SC_PHYS_PAGES);
}

int64_t moe_driver_peak_rss(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return (int64_t)ru.ru_maxrss * 1024; /* Linux: kilobytes */
}

void moe_driver_advise_huge(void *p, size_t bytes)
{
#ifdef MADV_HUGEPAGE
    const uintptr_t page = 4096, min_bytes = (uintptr_t)8 << 20;
    if (p == NULL || bytes < min_bytes)
        return;
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + bytes) & ~(page - 1);
    if (hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

int64_t moe_driver_mem_available(void)
{
    int64_t b = meminfo("MemAvailable");
    return b >= 0 ? b : pages_bytes(_SC_AVPHYS_PAGES);
}

bool moe_driver_fault(const char *site, int rank)
{
    const char *spec = getenv("MOESIM_FAULT");
    if (spec == NULL || site == NULL)
        return false;
    size_t n = strlen(site);
    for (const char *p = spec; p != NULL && *p != '\0';) {
        const char *next = strchr(p, ',');
        if (strncmp(p, site, n) == 0 && p[n] == ':') {
            char *end;
            long r = strtol(p + n + 1, &end, 10);
            if (end != p + n + 1 && (r == rank || r < 0))
                return true;
        }
        p = next ? next + 1 : NULL;
    }
    return false;
}

double moe_driver_load_average(void)
{
    const char *fake = getenv("MOESIM_FAKE_LOADAVG");
    if (fake != NULL) {
        char *end;
        double v = strtod(fake, &end);
        return end != fake && *end == '\0' && isfinite(v) ? v : NAN; /* "none": unavailable */
    }
    double load[1];
    return getloadavg(load, 1) == 1 ? load[0] : NAN;
}

int64_t moe_driver_online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int64_t)n : -1;
}

void moe_driver_format_utc(char *buf, size_t len, time_t t)
{
    struct tm tm;
    if (len == 0)
        return;
    if (gmtime_r(&t, &tm) == NULL || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        buf[0] = '\0';
}

/* The first line of s into buf, without the whitespace around it. */
static void first_line(char *buf, size_t len, const char *s)
{
    while (*s != '\0' && isspace((unsigned char)*s))
        s++;
    size_t n = strcspn(s, "\r\n");
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    snprintf(buf, len, "%.*s", (int)(n < len ? n : len - 1), s);
}

void moe_driver_environment(moe_environment *env)
{
    memset(env, 0, sizeof *env);
    env->cores = moe_driver_online_cpus();
    env->load_start = moe_driver_load_average();
    env->load_end = NAN;
    moe_driver_format_utc(env->utc, sizeof env->utc, time(NULL));
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    if (MPI_Get_library_version(version, &n) == MPI_SUCCESS)
        first_line(env->mpi_library, sizeof env->mpi_library, version);
    else
        snprintf(env->mpi_library, sizeof env->mpi_library, "MPI %d.%d", MPI_VERSION,
                 MPI_SUBVERSION);
    first_line(env->openblas, sizeof env->openblas, openblas_get_config());
    env->gelu_kernel = moe_expert_kernel_name(moe_expert_kernel_level());
}
