/* Files in and out, safely. Pure: no MPI, no printing.
 *
 * Outputs never destroy anything that is not theirs:
 *   "-"                          standard output (text, or binary when stdout is not a terminal);
 *   a character device, FIFO     written in place, never renamed over (/dev/null, /dev/stdout, a
 *   or socket                    pipe someone reads); a socket is connected to (AF_UNIX stream);
 *   a symbolic link              followed: its final target is written, atomically beside it;
 *   a regular file, or nothing   replaced atomically: a temporary "NAME.moesim-tmp.PID.XXXXXX" in
 *                                the same directory (".moesim-tmp.PID.XXXXXX" when NAME is too long
 *                                for the suffix), fsync, rename over NAME, fsync of the directory.
 * A temporary is removed on every error path; only SIGKILL (or a crash) can leave one behind, and it
 * is never a complete output.
 *
 * Inputs must be regular files: a FIFO would block forever, a directory is named as such. */
#ifndef MOESIM_FILEOUT_H
#define MOESIM_FILEOUT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

/* The marker in every temporary name: "NAME" MOE_TMP_MARK ".PID.XXXXXX". */
#define MOE_TMP_MARK ".moesim-tmp"

typedef enum moe_out_kind {
    MOE_OUT_ATOMIC,  /* regular file or a new one: temporary + rename                */
    MOE_OUT_INPLACE, /* character device or FIFO: opened for writing where it is      */
    MOE_OUT_SOCKET,  /* a Unix-domain socket: connected to and written               */
    MOE_OUT_STDOUT   /* "-"                                                          */
} moe_out_kind;

/* What an output path names, settled before anything runs. */
typedef struct moe_out_target {
    moe_out_kind kind;
    char path[4096];  /* the file finally written: the symlink's target, or the path itself */
    bool exists;      /* path exists now (dev, ino valid)                                   */
    dev_t dev;
    ino_t ino;
} moe_out_target;

/* Classify an output path and check that it can be written: for MOE_OUT_ATOMIC a temporary is
 * created and removed in the target's directory; a directory, a path ending in '/', an empty name
 * or a dangling chain of more than 40 links are refused; binary = true refuses "-" when stdout is a
 * terminal (stdout_is_terminal). MOE_EUSAGE with the option's name. */
int moe_out_classify(moe_out_target *t, const char *path, const char *option, bool binary,
                     bool stdout_is_terminal, char *msg, size_t msglen);

/* Refuse, before anything runs, an output that is the same file as an input or as another output
 * (device and inode when the file exists, else the resolved path; two "-" collide too). NULL
 * entries are skipped. The message names both options. MOE_EUSAGE. */
int moe_out_check_distinct(const char *const *out_paths, const char *const *out_options, int n_out,
                           const char *const *in_paths, const char *const *in_options, int n_in,
                           bool stdout_is_terminal, char *msg, size_t msglen);

/* One output being written. */
typedef struct moe_outfile {
    moe_out_target target;
    const char *option; /* for messages: "--json" */
    char tmp[4200];     /* the temporary (MOE_OUT_ATOMIC), "" once renamed or removed */
    FILE *f;            /* where the writer writes */
    bool failed;        /* the writer failed: set it (and err, the errno it saw) to discard */
    int err;
} moe_outfile;

/* Open path for writing as moe_out_classify describes. On failure nothing is left behind. The FIFO
 * case waits up to fifo_wait_s seconds for a reader (non-blocking open, retried), then fails. */
int moe_outfile_open(moe_outfile *o, const char *path, const char *option, bool binary,
                     bool stdout_is_terminal, double fifo_wait_s, char *msg, size_t msglen);

/* The same, giving up the wait for a FIFO's reader as soon as *cancel becomes non-zero (a flag a
 * signal handler sets): MOE_EINTR, nothing left behind. cancel may be NULL. */
int moe_outfile_open_cancellable(moe_outfile *o, const char *path, const char *option, bool binary,
                                 bool stdout_is_terminal, double fifo_wait_s,
                                 const volatile sig_atomic_t *cancel, char *msg, size_t msglen);

/* Flush and close (fsync for a temporary); the temporary stays unpublished. On failure the
 * temporary is removed. */
int moe_outfile_close(moe_outfile *o, char *msg, size_t msglen);

/* Rename a closed temporary over its target and fsync the directory; a no-op for the other kinds. */
int moe_outfile_publish(moe_outfile *o, char *msg, size_t msglen);

/* Close without publishing and remove the temporary. Safe on a zeroed or finished outfile. */
void moe_outfile_discard(moe_outfile *o);

/* Close every outfile, then publish them all: either every temporary is renamed or (on the first
 * failure to close) none is and all are removed. n may be 0; NULL entries are skipped. */
int moe_outfiles_commit(moe_outfile **files, int n, char *msg, size_t msglen);

/* Open an input for reading: refuses a directory ("is a directory") and anything that is not a
 * regular file (a FIFO, device or socket) without blocking on it. mode is "r" or "rb". MOE_EIO /
 * MOE_EUSAGE with option (may be NULL) and path in the message; *out is NULL on failure. */
int moe_input_open(FILE **out, const char *path, const char *option, const char *mode, char *msg,
                   size_t msglen);

/* The same checks without keeping the file open. */
int moe_input_check(const char *path, const char *option, char *msg, size_t msglen);

#endif
