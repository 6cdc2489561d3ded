/* What every MPI program of this project (moesim, moe_bench) does around the layer: settle the
 * configuration with the input files on every rank, and ask the machine about its terminal and
 * memory. Driver layer: may call MPI. */
#ifndef MOESIM_DRIVER_H
#define MOESIM_DRIVER_H

#include "moesim/config.h"
#include "moesim/stats.h"

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

/* Collective: read the headers of the input .npy files named in cfg (tokens, router, logits) on
 * every rank, settle the shapes with moe_config_resolve, and agree on the outcome (moe_agree). */
int moe_driver_resolve(moe_config *cfg, int nranks, MPI_Comm comm, char *msg, size_t msglen);

/* Whether a person is watching stdout. Open MPI hands its ranks a pseudo-terminal even when mpirun's
 * own output goes to a pipe or file, so under mpirun ask about the launcher's stdout instead (Linux
 * /proc; when it cannot be read, assume no terminal). MOESIM_NO_TTY says no. Not collective. */
int moe_driver_stdout_is_terminal(void);

/* MemAvailable of this node in bytes (/proc/meminfo, else sysconf), or -1 if unknown. */
int64_t moe_driver_mem_available(void);

/* Ask the kernel for transparent huge pages over the whole pages of [p, p + bytes), when bytes is
 * at least 8 MiB (smaller buffers gain nothing): one fault maps 2 MiB instead of 4 KiB, so
 * first-touching a buffer of tokens costs a few hundred faults a GiB instead of 262 144 (here a
 * 15 GiB R = 1 run went from 56 s to 25 s). Advice only: where THP is off ("never") or the call
 * fails, nothing changes. Call it before the buffer is first written. Not collective. */
void moe_driver_advise_huge(void *p, size_t bytes);

/* MemTotal of this node in bytes, or -1 if unknown. */
int64_t moe_driver_mem_total(void);

/* This process's peak resident set size in bytes (getrusage ru_maxrss), or -1. */
int64_t moe_driver_peak_rss(void);

/* The one-minute load average of this node (getloadavg), or NAN when unavailable. For the tests,
 * MOESIM_FAKE_LOADAVG=X makes it X (a number, or "none" for unavailable). Not collective. */
double moe_driver_load_average(void);

/* Online CPUs of this node (sysconf _SC_NPROCESSORS_ONLN), or -1. */
int64_t moe_driver_online_cpus(void);

/* The environment at the run's start, on this rank: online CPUs, load average (load_end is left
 * NAN for the caller to probe at the end), the UTC time now, the first line of
 * MPI_Get_library_version (MPI must be initialized) and openblas_get_config(). Not collective. */
void moe_driver_environment(moe_environment *env);

/* ISO 8601 UTC of t, "2026-12-01T20:15:03Z", into buf (at least 21 bytes). */
void moe_driver_format_utc(char *buf, size_t len, time_t t);

/* Fault injection for the tests of error paths: true when the environment variable MOESIM_FAULT
 * lists "site:rank" (or "site:-1", every rank), comma-separated. Sites: set_rows, hier_plan,
 * locality, gather_dumps, write_outputs. Not collective; never set in normal runs. */
bool moe_driver_fault(const char *site, int rank);

#endif
