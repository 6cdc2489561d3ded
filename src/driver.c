#include "moesim/driver.h"

#include "moesim/error.h"
#include "moesim/exchange.h"
#include "moesim/npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int moe_driver_resolve(moe_config *cfg, int nranks, MPI_Comm comm, char *msg, size_t msglen)
{
    moe_npy_header th, rh, lh;
    int rc = MOE_OK;
    if (cfg->tokens_file != NULL)
        rc = moe_npy_read_header(cfg->tokens_file, &th, msg, msglen);
    if (rc == MOE_OK && cfg->router_file != NULL)
        rc = moe_npy_read_header(cfg->router_file, &rh, msg, msglen);
    if (rc == MOE_OK && cfg->logits_file != NULL)
        rc = moe_npy_read_header(cfg->logits_file, &lh, msg, msglen);
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

int64_t moe_driver_mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (f != NULL) {
        char line[256];
        long long kb;
        while (fgets(line, sizeof line, f) != NULL)
            if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) {
                fclose(f);
                return (int64_t)kb * 1024;
            }
        fclose(f);
    }
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (int64_t)pages * page : -1;
}
