#include "moesim/fileout.h"

#include "moesim/error.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINKS 40

static const char *kind_of(mode_t m)
{
    if (S_ISCHR(m))
        return "character device";
    if (S_ISBLK(m))
        return "block device";
    if (S_ISFIFO(m))
        return "FIFO";
    if (S_ISSOCK(m))
        return "socket";
    if (S_ISDIR(m))
        return "directory";
    return "special file";
}

/* dir and base of path into the buffers ("." for a bare name). */
static int split_path(const char *path, char *dir, size_t dlen, char *base, size_t blen)
{
    char a[4096], b[4096];
    if (strlen(path) >= sizeof a)
        return -1;
    strcpy(a, path);
    strcpy(b, path);
    if ((size_t)snprintf(dir, dlen, "%s", dirname(a)) >= dlen ||
        (size_t)snprintf(base, blen, "%s", basename(b)) >= blen)
        return -1;
    return 0;
}

/* Follow a chain of symbolic links whose end does not exist yet: the path that will be created.
 * Relative links are taken relative to the link's directory. */
static int follow_dangling(const char *path, char *out, size_t outlen, const char *option,
                           char *msg, size_t msglen)
{
    char cur[4096];
    if ((size_t)snprintf(cur, sizeof cur, "%s", path) >= sizeof cur)
        return moe_fail(MOE_EUSAGE, msg, msglen, "%s: path too long", option);
    for (int hop = 0; hop <= MAX_LINKS; hop++) {
        struct stat lst;
        if (lstat(cur, &lst) != 0 || !S_ISLNK(lst.st_mode)) {
            if ((size_t)snprintf(out, outlen, "%s", cur) >= outlen)
                return moe_fail(MOE_EUSAGE, msg, msglen, "%s: path too long", option);
            return MOE_OK;
        }
        char link[4096];
        ssize_t n = readlink(cur, link, sizeof link - 1);
        if (n < 0)
            return moe_fail(MOE_EUSAGE, msg, msglen, "%s '%s': cannot read the link: %s", option,
                            path, strerror(errno));
        link[n] = '\0';
        if (link[0] == '/') {
            snprintf(cur, sizeof cur, "%s", link);
        } else {
            char dir[4096], base[4096], next[8200];
            if (split_path(cur, dir, sizeof dir, base, sizeof base) != 0)
                return moe_fail(MOE_EUSAGE, msg, msglen, "%s: path too long", option);
            snprintf(next, sizeof next, "%s/%s", dir, link);
            if (strlen(next) >= sizeof cur)
                return moe_fail(MOE_EUSAGE, msg, msglen, "%s: path too long", option);
            strcpy(cur, next);
        }
    }
    return moe_fail(MOE_EUSAGE, msg, msglen, "%s '%s': more than %d symbolic links", option, path,
                    MAX_LINKS);
}

/* A temporary beside target: NAME.moesim-tmp.PID.XXXXXX, created with mkstemp; when NAME is so
 * long that the suffix would pass the file-name limit, .moesim-tmp.PID.XXXXXX in the same directory. */
static int make_temp(char *tmp, size_t len, const char *target)
{
    const char *slash = strrchr(target, '/');
    size_t base = strlen(slash ? slash + 1 : target), dir = slash ? (size_t)(slash - target) + 1 : 0;
    int n;
    if (base + 32 > NAME_MAX)
        n = snprintf(tmp, len, "%.*s" MOE_TMP_MARK ".%ld.XXXXXX", (int)dir, target, (long)getpid());
    else
        n = snprintf(tmp, len, "%s" MOE_TMP_MARK ".%ld.XXXXXX", target, (long)getpid());
    if (n < 0 || (size_t)n >= len) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return mkstemp(tmp);
}

int moe_out_classify(moe_out_target *t, const char *path, const char *option, bool binary,
                     bool stdout_is_terminal, char *msg, size_t msglen)
{
    memset(t, 0, sizeof *t);
    size_t len = strlen(path);
    if (len == 0)
        return moe_fail(MOE_EUSAGE, msg, msglen, "%s needs a file name, got ''", option);
    if (strcmp(path, "-") == 0) {
        if (binary && stdout_is_terminal)
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "%s - would write binary .npy data to a terminal: redirect standard "
                            "output to a file or a pipe, or give a file name",
                            option);
        t->kind = MOE_OUT_STDOUT;
        snprintf(t->path, sizeof t->path, "-");
        /* what standard output is, so that "-" and /dev/stdout (or the file stdout is
         * redirected to) are recognised as the same output */
        struct stat so;
        if (fstat(STDOUT_FILENO, &so) == 0) {
            t->exists = true;
            t->dev = so.st_dev;
            t->ino = so.st_ino;
        }
        return MOE_OK;
    }
    if (len >= sizeof t->path - 64)
        return moe_fail(MOE_EUSAGE, msg, msglen, "%s: path too long", option);
    if (path[len - 1] == '/')
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%s '%s' ends in '/': that names a directory; give a file name", option, path);
    struct stat st;
    if (stat(path, &st) == 0) {
        t->exists = true;
        t->dev = st.st_dev;
        t->ino = st.st_ino;
        if (S_ISDIR(st.st_mode))
            return moe_fail(MOE_EUSAGE, msg, msglen, "%s '%s' is a directory; give a file name",
                            option, path);
        if (S_ISBLK(st.st_mode))
            return moe_fail(MOE_EUSAGE, msg, msglen,
                            "%s '%s' is a block device: moesim will not write to it", option, path);
        if (!S_ISREG(st.st_mode)) {
            t->kind = S_ISSOCK(st.st_mode) ? MOE_OUT_SOCKET : MOE_OUT_INPLACE;
            snprintf(t->path, sizeof t->path, "%s", path);
            if (t->kind == MOE_OUT_INPLACE && access(path, W_OK) != 0)
                return moe_fail(MOE_EUSAGE, msg, msglen, "%s '%s' (a %s) cannot be written: %s",
                                option, path, kind_of(st.st_mode), strerror(errno));
            return MOE_OK;
        }
        /* a regular file, perhaps through links: its canonical name */
        char *real = realpath(path, NULL);
        if (real == NULL)
            return moe_fail(MOE_EUSAGE, msg, msglen, "%s '%s': %s", option, path, strerror(errno));
        int too_long = strlen(real) >= sizeof t->path - 64;
        if (!too_long)
            snprintf(t->path, sizeof t->path, "%s", real);
        free(real);
        if (too_long)
            return moe_fail(MOE_EUSAGE, msg, msglen, "%s: path too long", option);
    } else if (errno == ENOENT) {
        char end[4096];
        int rc = follow_dangling(path, end, sizeof end, option, msg, msglen);
        if (rc != MOE_OK)
            return rc;
        char dir[4096], base[4096];
        if (split_path(end, dir, sizeof dir, base, sizeof base) != 0)
            return moe_fail(MOE_EUSAGE, msg, msglen, "%s: path too long", option);
        char *real = realpath(dir, NULL);
        if (real == NULL)
            return moe_fail(MOE_EUSAGE, msg, msglen, "%s '%s' cannot be written: directory '%s': %s",
                            option, path, dir, strerror(errno));
        int n = snprintf(t->path, sizeof t->path, "%s/%s", strcmp(real, "/") == 0 ? "" : real, base);
        free(real);
        if (n < 0 || (size_t)n >= sizeof t->path - 64)
            return moe_fail(MOE_EUSAGE, msg, msglen, "%s: path too long", option);
    } else {
        return moe_fail(MOE_EUSAGE, msg, msglen, "%s '%s' cannot be written: %s", option, path,
                        strerror(errno));
    }
    t->kind = MOE_OUT_ATOMIC;
    char tmp[4200];
    int fd = make_temp(tmp, sizeof tmp, t->path);
    if (fd < 0)
        return moe_fail(MOE_EUSAGE, msg, msglen, "%s '%s' cannot be written: %s", option, path,
                        strerror(errno));
    close(fd);
    unlink(tmp);
    return MOE_OK;
}

/* Same file: both exist with the same device and inode, or the same resolved name, or both "-". */
static bool same_target(const moe_out_target *a, const moe_out_target *b)
{
    if (a->kind == MOE_OUT_STDOUT && b->kind == MOE_OUT_STDOUT)
        return true;
    if (a->exists && b->exists)
        return a->dev == b->dev && a->ino == b->ino;
    return strcmp(a->path, b->path) == 0;
}

int moe_out_check_distinct(const char *const *out_paths, const char *const *out_options, int n_out,
                           const char *const *in_paths, const char *const *in_options, int n_in,
                           bool stdout_is_terminal, char *msg, size_t msglen)
{
    moe_out_target *t = calloc((size_t)(n_out > 0 ? n_out : 1), sizeof *t);
    if (t == NULL)
        return moe_fail(MOE_ENOMEM, msg, msglen, "out of memory checking the outputs");
    int rc = MOE_OK;
    for (int i = 0; rc == MOE_OK && i < n_out; i++)
        if (out_paths[i] != NULL)
            rc = moe_out_classify(&t[i], out_paths[i], out_options[i], false, stdout_is_terminal,
                                  msg, msglen);
    for (int i = 0; rc == MOE_OK && i < n_out; i++) {
        if (out_paths[i] == NULL)
            continue;
        for (int j = 0; rc == MOE_OK && j < i; j++)
            if (out_paths[j] != NULL && same_target(&t[i], &t[j]))
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "%s '%s' and %s '%s' are the same %s: give each output its own file",
                              out_options[j], out_paths[j], out_options[i], out_paths[i],
                              t[i].kind == MOE_OUT_STDOUT || t[j].kind == MOE_OUT_STDOUT
                                  ? "standard output"
                                  : "file");
        for (int j = 0; rc == MOE_OK && j < n_in; j++) {
            struct stat st;
            if (in_paths[j] == NULL || !t[i].exists || stat(in_paths[j], &st) != 0)
                continue;
            if (st.st_dev == t[i].dev && st.st_ino == t[i].ino)
                rc = moe_fail(MOE_EUSAGE, msg, msglen,
                              "%s '%s' is the input %s '%s': writing it would destroy the input",
                              out_options[i], out_paths[i], in_options[j], in_paths[j]);
        }
    }
    free(t);
    return rc;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Open a FIFO for writing without blocking forever: retry a non-blocking open while no reader has
 * it open (ENXIO), up to wait_s seconds. */
static int open_fifo(const char *path, double wait_s, const volatile sig_atomic_t *cancel)
{
    double waited = 0.0;
    for (;;) {
        if (cancel != NULL && *cancel != 0) {
            errno = EINTR;
            return -1;
        }
        int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) {
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0)
                fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
            return fd;
        }
        if (errno != ENXIO || waited >= wait_s)
            return -1;
        sleep_ms(50);
        waited += 0.05;
    }
}

static int open_socket(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

int moe_outfile_open(moe_outfile *o, const char *path, const char *option, bool binary,
                     bool stdout_is_terminal, double fifo_wait_s, char *msg, size_t msglen)
{
    return moe_outfile_open_cancellable(o, path, option, binary, stdout_is_terminal, fifo_wait_s,
                                        NULL, msg, msglen);
}

int moe_outfile_open_cancellable(moe_outfile *o, const char *path, const char *option, bool binary,
                                 bool stdout_is_terminal, double fifo_wait_s,
                                 const volatile sig_atomic_t *cancel, char *msg, size_t msglen)
{
    memset(o, 0, sizeof *o);
    o->option = option;
    int rc = moe_out_classify(&o->target, path, option, binary, stdout_is_terminal, msg, msglen);
    if (rc != MOE_OK)
        return rc == MOE_EUSAGE ? MOE_EIO : rc;
    int fd = -1;
    switch (o->target.kind) {
    case MOE_OUT_STDOUT:
        o->f = stdout;
        return MOE_OK;
    case MOE_OUT_SOCKET:
        fd = open_socket(o->target.path);
        break;
    case MOE_OUT_INPLACE: {
        struct stat st;
        if (stat(o->target.path, &st) == 0 && S_ISFIFO(st.st_mode))
            fd = open_fifo(o->target.path, fifo_wait_s, cancel);
        else
            fd = open(o->target.path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
        break;
    }
    case MOE_OUT_ATOMIC: {
        fd = make_temp(o->tmp, sizeof o->tmp, o->target.path);
        if (fd < 0) {
            o->tmp[0] = '\0';
            break;
        }
        /* the permissions the file would have had: the old file's, or 0666 less the umask */
        struct stat st;
        mode_t mode;
        if (o->target.exists && stat(o->target.path, &st) == 0) {
            mode = st.st_mode & 07777;
        } else {
            mode_t mask = umask(0);
            umask(mask);
            mode = 0666 & ~mask;
        }
        if (fchmod(fd, mode) != 0) { /* not fatal: the data is what matters */
        }
        break;
    }
    }
    if (fd < 0 && errno == EINTR && cancel != NULL && *cancel != 0)
        return moe_fail(MOE_EINTR, msg, msglen,
                        "stopped waiting for a reader of the FIFO %s '%s'", option, path);
    if (fd < 0) {
        int err = errno;
        return moe_fail(MOE_EIO, msg, msglen, "cannot write %s '%s': %s%s", option, path,
                        strerror(err),
                        err == ENXIO && o->target.kind == MOE_OUT_INPLACE
                            ? " (no process opened the FIFO for reading)"
                            : "");
    }
    o->f = fdopen(fd, binary ? "wb" : "w");
    if (o->f == NULL) {
        int err = errno;
        close(fd);
        moe_outfile_discard(o);
        return moe_fail(MOE_EIO, msg, msglen, "cannot write %s '%s': %s", option, path,
                        strerror(err));
    }
    return MOE_OK;
}

int moe_outfile_close(moe_outfile *o, char *msg, size_t msglen)
{
    if (o->f == NULL)
        return o->failed ? MOE_EIO : MOE_OK;
    int ok = !o->failed && fflush(o->f) == 0 && !ferror(o->f);
    int err = ok ? 0 : o->failed && o->err ? o->err : errno;
    if (o->target.kind == MOE_OUT_STDOUT) {
        o->f = NULL;
    } else {
        if (ok && o->target.kind == MOE_OUT_ATOMIC && fsync(fileno(o->f)) != 0) {
            ok = 0;
            err = errno;
        }
        if (fclose(o->f) != 0 && ok) {
            ok = 0;
            err = errno;
        }
        o->f = NULL;
    }
    if (!ok) {
        o->failed = true;
        if (o->tmp[0] != '\0') {
            unlink(o->tmp);
            o->tmp[0] = '\0';
        }
        return moe_fail(MOE_EIO, msg, msglen, "cannot write %s '%s': %s", o->option,
                        o->target.path, err ? strerror(err) : "write error");
    }
    return MOE_OK;
}

int moe_outfile_publish(moe_outfile *o, char *msg, size_t msglen)
{
    if (o->target.kind != MOE_OUT_ATOMIC || o->tmp[0] == '\0')
        return MOE_OK;
    if (rename(o->tmp, o->target.path) != 0) {
        int err = errno;
        unlink(o->tmp);
        o->tmp[0] = '\0';
        return moe_fail(MOE_EIO, msg, msglen, "cannot write %s '%s': %s", o->option,
                        o->target.path, strerror(err));
    }
    o->tmp[0] = '\0';
    /* make the rename itself durable */
    char dir[4096], base[4096];
    if (split_path(o->target.path, dir, sizeof dir, base, sizeof base) == 0) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    return MOE_OK;
}

void moe_outfile_discard(moe_outfile *o)
{
    if (o == NULL)
        return;
    if (o->f != NULL && o->target.kind != MOE_OUT_STDOUT)
        fclose(o->f);
    else if (o->f != NULL)
        fflush(o->f);
    o->f = NULL;
    if (o->tmp[0] != '\0')
        unlink(o->tmp);
    o->tmp[0] = '\0';
}

int moe_outfiles_commit(moe_outfile **files, int n, char *msg, size_t msglen)
{
    int rc = MOE_OK;
    for (int i = 0; i < n; i++)
        if (files[i] != NULL && rc == MOE_OK)
            rc = moe_outfile_close(files[i], msg, msglen);
    if (rc != MOE_OK) {
        for (int i = 0; i < n; i++)
            moe_outfile_discard(files[i]);
        return rc;
    }
    for (int i = 0; i < n; i++) {
        if (files[i] == NULL)
            continue;
        int r = moe_outfile_publish(files[i], msg, msglen);
        if (rc == MOE_OK)
            rc = r;
    }
    return rc;
}

int moe_input_open(FILE **out, const char *path, const char *option, const char *mode, char *msg,
                   size_t msglen)
{
    *out = NULL;
    /* "--tokens-file 'x.npy'" or, without an option, "'x.npy'" */
    char what[4200];
    snprintf(what, sizeof what, "%s%s'%s'", option ? option : "", option ? " " : "", path);
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int err = errno;
        struct stat st;
        if (err == EISDIR)
            return moe_fail(MOE_EUSAGE, msg, msglen, "%s is a directory; give a file", what);
        if (err == ENXIO && stat(path, &st) == 0 && !S_ISREG(st.st_mode)) /* a socket */
            return moe_fail(MOE_EUSAGE, msg, msglen, "%s is a %s, not a regular file; give a file",
                            what, kind_of(st.st_mode));
        return moe_fail(MOE_EIO, msg, msglen, "cannot open %s: %s", what, strerror(err));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return moe_fail(MOE_EIO, msg, msglen, "cannot stat %s: %s", what, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        if (S_ISDIR(st.st_mode))
            return moe_fail(MOE_EUSAGE, msg, msglen, "%s is a directory; give a file", what);
        return moe_fail(MOE_EUSAGE, msg, msglen,
                        "%s is a %s, not a regular file: moesim reads its inputs more than once "
                        "and from every rank, so give a file",
                        what, kind_of(st.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *out = fdopen(fd, mode);
    if (*out == NULL) {
        int err = errno;
        close(fd);
        return moe_fail(MOE_EIO, msg, msglen, "cannot open %s: %s", what, strerror(err));
    }
    return MOE_OK;
}

int moe_input_check(const char *path, const char *option, char *msg, size_t msglen)
{
    FILE *f = NULL;
    int rc = moe_input_open(&f, path, option, "rb", msg, msglen);
    if (f != NULL)
        fclose(f);
    return rc;
}
