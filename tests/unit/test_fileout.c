/* Unit tests of fileout: what an output path names (moe_out_classify), writing it without
 * destroying anything (moe_outfile_*: temporaries, devices, FIFOs, sockets, links, all-or-nothing
 * commits), refusing an output that is an input or another output (moe_out_check_distinct), and
 * inputs that must be regular files (moe_input_open / moe_input_check).
 *
 * Everything happens in a scratch directory made by main and removed by main after the run; each
 * test works in its own subdirectory. Tests that chdir restore the working directory. */
#include "moesim/error.h"
#include "moesim/fileout.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "expect.h"
#include "scratch.h"

static char g_dir[] = "/tmp/moesim-fileout-XXXXXX";

enum { PATH_LEN = 4096, MSG_LEN = 1024 };

static void fresh_dir(char *dir, const char *tag)
{
    ck_assert_int_lt(snprintf(dir, PATH_LEN, "%s/%s", g_dir, tag), PATH_LEN);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
}

static void join(char *buf, const char *dir, const char *name)
{
    ck_assert_int_lt(snprintf(buf, PATH_LEN, "%s/%s", dir, name), PATH_LEN);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

/* The whole file as a string (static buffer, enough for these tests); "<missing>" if absent. */
static const char *slurp(const char *path)
{
    static char buf[4096];
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return "<missing>";
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Entries of dir whose name holds the temporary marker. */
static int count_temps(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += strstr(e->d_name, MOE_TMP_MARK) != NULL;
    closedir(d);
    return n;
}

/* The canonical name of an existing directory joined with a name. */
static void canonical(char *buf, const char *dir, const char *name)
{
    char *real = realpath(dir, NULL);
    ck_assert_ptr_nonnull(real);
    ck_assert_int_lt(snprintf(buf, PATH_LEN, "%s/%s", real, name), PATH_LEN);
    free(real);
}

static mode_t lmode(const char *path)
{
    struct stat st;
    ck_assert_int_eq(lstat(path, &st), 0);
    return st.st_mode;
}

/* The lowest free descriptor: unchanged across a call means the call leaked none. */
static int next_fd(void)
{
    int fd = dup(0);
    ck_assert_int_ge(fd, 0);
    close(fd);
    return fd;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A Unix stream socket bound at path; listening when asked. */
static int bind_socket(const char *path, int listening)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    ck_assert_uint_lt(strlen(path), sizeof addr.sun_path);
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    if (listening)
        ck_assert_int_eq(listen(fd, 4), 0);
    return fd;
}

static int save_cwd(void)
{
    int fd = open(".", O_RDONLY | O_DIRECTORY);
    ck_assert_int_ge(fd, 0);
    return fd;
}

static void restore_cwd(int fd)
{
    ck_assert_int_eq(fchdir(fd), 0);
    close(fd);
}

/* ---- classify ---- */

START_TEST(test_classify_regular_and_new)
{
    char dir[PATH_LEN], path[PATH_LEN], want[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "classify_regular");
    moe_out_target t;

    /* a new file: atomic, its canonical absolute name, not existing; the probe temporary is gone */
    join(path, dir, "new.json");
    canonical(want, dir, "new.json");
    ck_assert_int_eq(moe_out_classify(&t, path, "--json", false, false, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(t.kind, MOE_OUT_ATOMIC);
    ck_assert_str_eq(t.path, want);
    ck_assert(!t.exists);
    ck_assert_int_eq(count_entries(dir), 0);

    /* an existing regular file: atomic, canonical, exists with its device and inode, untouched */
    join(path, dir, "old.json");
    write_file(path, "old");
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    canonical(want, dir, "old.json");
    ck_assert_int_eq(moe_out_classify(&t, path, "--json", true, false, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(t.kind, MOE_OUT_ATOMIC);
    ck_assert_str_eq(t.path, want);
    ck_assert(t.exists);
    ck_assert(t.dev == st.st_dev && t.ino == st.st_ino);
    ck_assert_str_eq(slurp(path), "old");
    ck_assert_int_eq(count_entries(dir), 1);

    /* relative spellings resolve to the same canonical name */
    int cwd = save_cwd();
    ck_assert_int_eq(chdir(dir), 0);
    const char *spellings[] = {"old.json", "./old.json", "../classify_regular/old.json"};
    for (size_t i = 0; i < sizeof spellings / sizeof *spellings; i++) {
        ck_assert_int_eq(
            moe_out_classify(&t, spellings[i], "--json", false, false, msg, sizeof msg), MOE_OK);
        ck_assert_str_eq(t.path, want);
    }
    canonical(want, dir, "fresh.npy");
    ck_assert_int_eq(
        moe_out_classify(&t, "fresh.npy", "--dump-output", true, false, msg, sizeof msg), MOE_OK);
    ck_assert_str_eq(t.path, want);
    ck_assert(!t.exists);
    restore_cwd(cwd);
    ck_assert_int_eq(count_entries(dir), 1);
}
END_TEST

START_TEST(test_classify_stdout)
{
    char msg[MSG_LEN];
    moe_out_target t;
    ck_assert_int_eq(moe_out_classify(&t, "-", "--json", false, true, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(t.kind, MOE_OUT_STDOUT);
    ck_assert_str_eq(t.path, "-");
    ck_assert_int_eq(moe_out_classify(&t, "-", "--json", false, false, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(t.kind, MOE_OUT_STDOUT);
    ck_assert_int_eq(moe_out_classify(&t, "-", "--dump-output", true, false, msg, sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(t.kind, MOE_OUT_STDOUT);
    /* binary data to a terminal is refused, naming the option and saying why */
    msg[0] = '\0';
    ck_assert_int_eq(moe_out_classify(&t, "-", "--dump-output", true, true, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--dump-output"));
    ck_assert_ptr_nonnull(strstr(msg, "terminal"));
}
END_TEST

START_TEST(test_classify_in_place)
{
    char dir[PATH_LEN], path[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "classify_inplace");
    moe_out_target t;

    /* /dev/null: written where it is, never replaced */
    struct stat before, after;
    ck_assert_int_eq(stat("/dev/null", &before), 0);
    ck_assert_int_eq(moe_out_classify(&t, "/dev/null", "--json", true, false, msg, sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(t.kind, MOE_OUT_INPLACE);
    ck_assert_str_eq(t.path, "/dev/null");
    ck_assert(t.exists && t.ino == before.st_ino);
    ck_assert_int_eq(stat("/dev/null", &after), 0);
    ck_assert(S_ISCHR(after.st_mode) && after.st_rdev == before.st_rdev);

    /* a FIFO */
    join(path, dir, "fifo");
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    ck_assert_int_eq(moe_out_classify(&t, path, "--json", false, false, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(t.kind, MOE_OUT_INPLACE);
    ck_assert_str_eq(t.path, path);
    ck_assert(S_ISFIFO(lmode(path)));

    /* a Unix socket */
    join(path, dir, "sock");
    int srv = bind_socket(path, 0);
    ck_assert_int_eq(moe_out_classify(&t, path, "--json", false, false, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(t.kind, MOE_OUT_SOCKET);
    ck_assert_str_eq(t.path, path);
    close(srv);

    /* nothing was created beside them */
    ck_assert_int_eq(count_entries(dir), 2);
}
END_TEST

START_TEST(test_classify_block_device_refused)
{
    /* any block device on this machine; none in some containers */
    DIR *d = opendir("/dev");
    ck_assert_ptr_nonnull(d);
    char path[PATH_LEN] = "";
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        char p[PATH_LEN];
        struct stat st;
        join(p, "/dev", e->d_name);
        if (stat(p, &st) == 0 && S_ISBLK(st.st_mode)) {
            strcpy(path, p);
            break;
        }
    }
    closedir(d);
    if (path[0] == '\0') {
        printf("test_classify_block_device_refused skipped: no block device in /dev\n");
        return;
    }
    char msg[MSG_LEN];
    moe_out_target t;
    ck_assert_int_eq(moe_out_classify(&t, path, "--dump-output", true, false, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "block device") != NULL && strstr(msg, "--dump-output") != NULL,
                  "message: %s", msg);
}
END_TEST

START_TEST(test_classify_symlinks)
{
    char dir[PATH_LEN], d1[PATH_LEN], d2[PATH_LEN], path[PATH_LEN], link[PATH_LEN], want[PATH_LEN];
    char msg[MSG_LEN];
    fresh_dir(dir, "classify_links");
    join(d1, dir, "d1");
    join(d2, dir, "d2");
    ck_assert_int_eq(mkdir(d1, 0700), 0);
    ck_assert_int_eq(mkdir(d2, 0700), 0);
    moe_out_target t;

    /* a link to an existing file: the target's canonical name */
    join(path, d2, "target.json");
    write_file(path, "old");
    join(link, d1, "to_target");
    ck_assert_int_eq(symlink("../d2/target.json", link), 0);
    canonical(want, d2, "target.json");
    ck_assert_int_eq(moe_out_classify(&t, link, "--json", false, false, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(t.kind, MOE_OUT_ATOMIC);
    ck_assert_str_eq(t.path, want);
    ck_assert(t.exists);
    ck_assert(S_ISLNK(lmode(link)));

    /* dangling, relative: taken relative to the link's directory, not the working directory */
    join(link, d1, "dangling_rel");
    ck_assert_int_eq(symlink("../d2/new_rel.json", link), 0);
    canonical(want, d2, "new_rel.json");
    ck_assert_int_eq(moe_out_classify(&t, link, "--json", false, false, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(t.kind, MOE_OUT_ATOMIC);
    ck_assert_str_eq(t.path, want);
    ck_assert(!t.exists);

    /* dangling, absolute */
    join(link, d1, "dangling_abs");
    char abs_target[PATH_LEN];
    join(abs_target, d2, "new_abs.json");
    ck_assert_int_eq(symlink(abs_target, link), 0);
    canonical(want, d2, "new_abs.json");
    ck_assert_int_eq(moe_out_classify(&t, link, "--json", false, false, msg, sizeof msg), MOE_OK);
    ck_assert_str_eq(t.path, want);

    /* a chain of two dangling links across directories: d1/chain -> ../d2/hop, d2/hop -> end.json
     * (relative to d2) */
    join(link, d1, "chain");
    ck_assert_int_eq(symlink("../d2/hop", link), 0);
    join(path, d2, "hop");
    ck_assert_int_eq(symlink("end.json", path), 0);
    canonical(want, d2, "end.json");
    ck_assert_int_eq(moe_out_classify(&t, link, "--json", false, false, msg, sizeof msg), MOE_OK);
    ck_assert_str_eq(t.path, want);
    ck_assert(!t.exists);

    /* nothing was created by the probes: d2 holds target.json and hop only */
    ck_assert_int_eq(count_entries(d2), 2);

    /* a loop of two links, and a link to itself: refused */
    char a[PATH_LEN], b[PATH_LEN];
    join(a, dir, "loop_a");
    join(b, dir, "loop_b");
    ck_assert_int_eq(symlink("loop_b", a), 0);
    ck_assert_int_eq(symlink("loop_a", b), 0);
    msg[0] = '\0';
    ck_assert_int_eq(moe_out_classify(&t, a, "--json", false, false, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--json") != NULL, "message: %s", msg);
    join(a, dir, "self");
    ck_assert_int_eq(symlink("self", a), 0);
    ck_assert_int_eq(moe_out_classify(&t, a, "--json", false, false, msg, sizeof msg), MOE_EUSAGE);

    /* a dangling chain of 45 links (the header allows 40): refused */
    for (int i = 0; i < 45; i++) {
        char name[PATH_LEN], base[16], to[16];
        snprintf(base, sizeof base, "long%02d", i);
        snprintf(to, sizeof to, "long%02d", i + 1);
        join(name, dir, base);
        ck_assert_int_eq(symlink(to, name), 0);
    }
    join(a, dir, "long00");
    ck_assert_int_eq(moe_out_classify(&t, a, "--json", false, false, msg, sizeof msg), MOE_EUSAGE);
    /* a dangling chain of 5 is fine */
    join(a, dir, "long40");
    canonical(want, dir, "long45");
    ck_assert_int_eq(moe_out_classify(&t, a, "--json", false, false, msg, sizeof msg), MOE_OK);
    ck_assert_str_eq(t.path, want);
}
END_TEST

START_TEST(test_classify_refused)
{
    char dir[PATH_LEN], sub[PATH_LEN], path[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "classify_refused");
    join(sub, dir, "sub");
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    moe_out_target t;

    /* a directory, and a name ending in '/' (existing or not) */
    const char *dirs[] = {sub, NULL, NULL};
    char slash[PATH_LEN], missing_slash[PATH_LEN];
    join(slash, sub, "");
    join(missing_slash, dir, "nowhere/");
    dirs[1] = slash;
    dirs[2] = missing_slash;
    for (int i = 0; i < 3; i++) {
        msg[0] = '\0';
        ck_assert_int_eq(moe_out_classify(&t, dirs[i], "--json", false, false, msg, sizeof msg),
                         MOE_EUSAGE);
        ck_assert_msg(strstr(msg, "directory") != NULL && strstr(msg, "--json") != NULL,
                      "'%s': message '%s'", dirs[i], msg);
    }
    /* "." and ".." are directories too */
    ck_assert_int_eq(moe_out_classify(&t, ".", "--json", false, false, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "directory"));

    /* the empty name */
    msg[0] = '\0';
    ck_assert_int_eq(moe_out_classify(&t, "", "--dump-routing", false, false, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_ptr_nonnull(strstr(msg, "--dump-routing"));

    /* a file in a directory that does not exist, and below a regular file */
    join(path, dir, "nowhere/x.json");
    msg[0] = '\0';
    ck_assert_int_eq(moe_out_classify(&t, path, "--json", false, false, msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--json") != NULL && strstr(msg, strerror(ENOENT)) != NULL,
                  "message: %s", msg);
    join(path, dir, "plain");
    write_file(path, "x");
    join(path, dir, "plain/x.json");
    ck_assert_int_eq(moe_out_classify(&t, path, "--json", false, false, msg, sizeof msg),
                     MOE_EUSAGE);
    /* a dangling link into a directory that does not exist */
    join(path, dir, "to_nowhere");
    ck_assert_int_eq(symlink("nowhere/x.json", path), 0);
    ck_assert_int_eq(moe_out_classify(&t, path, "--json", false, false, msg, sizeof msg),
                     MOE_EUSAGE);
    /* nothing was created */
    ck_assert_int_eq(count_entries(dir), 3);
    ck_assert_int_eq(count_entries(sub), 0);
}
END_TEST

/* The checks of a directory that cannot be written, run in a child: as root, the child first
 * becomes nobody, since root's writes ignore permission bits. Exit 0 pass, 1 fail, 77 cannot drop
 * privileges. */
static int readonly_child(const char *ro)
{
    if (geteuid() == 0) {
        if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
            return 77;
    }
    char path[PATH_LEN], msg[MSG_LEN] = "";
    moe_out_target t;
    if (snprintf(path, sizeof path, "%s/new.json", ro) >= (int)sizeof path)
        return 1;
    if (moe_out_classify(&t, path, "--json", false, false, msg, sizeof msg) != MOE_EUSAGE ||
        strstr(msg, "--json") == NULL || strstr(msg, strerror(EACCES)) == NULL) {
        fprintf(stderr, "new file in a read-only directory: %s\n", msg);
        return 1;
    }
    /* an existing, writable file there cannot be replaced atomically either */
    if (snprintf(path, sizeof path, "%s/old.json", ro) >= (int)sizeof path)
        return 1;
    if (moe_out_classify(&t, path, "--json", false, false, msg, sizeof msg) != MOE_EUSAGE) {
        fprintf(stderr, "existing file in a read-only directory accepted\n");
        return 1;
    }
    moe_outfile o;
    if (moe_outfile_open(&o, path, "--json", false, false, 0.0, msg, sizeof msg) == MOE_OK) {
        fprintf(stderr, "opened a file in a read-only directory\n");
        return 1;
    }
    return 0;
}

START_TEST(test_classify_readonly_dir)
{
    char dir[PATH_LEN], path[PATH_LEN];
    fresh_dir(dir, "readonly");
    join(path, dir, "old.json");
    write_file(path, "old");
    ck_assert_int_eq(chmod(path, 0666), 0);
    ck_assert_int_eq(chmod(dir, 0555), 0);
    /* nobody must be able to reach it: the scratch root is 0700 from mkdtemp */
    ck_assert_int_eq(chmod(g_dir, 0711), 0);
    fflush(stdout);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
        _exit(readonly_child(dir));
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    chmod(g_dir, 0700);
    chmod(dir, 0700);
    ck_assert(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) {
        printf("test_classify_readonly_dir skipped: running as root and cannot become nobody\n");
        return;
    }
    ck_assert_msg(WEXITSTATUS(status) == 0, "read-only directory checks failed (see stderr)");
    ck_assert_str_eq(slurp(path), "old");
    ck_assert_int_eq(count_entries(dir), 1);
}
END_TEST

/* ---- outfile: atomic replacement ---- */

/* The temporary of a target: "<base>.moesim-tmp.<pid>.XXXXXX" in dir; its name into buf. */
static int find_temp(const char *dir, const char *base, char *buf)
{
    char prefix[PATH_LEN];
    snprintf(prefix, sizeof prefix, "%s" MOE_TMP_MARK ".%ld.", base, (long)getpid());
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 &&
            strlen(e->d_name) == strlen(prefix) + 6) {
            n++;
            strcpy(buf, e->d_name);
        }
    closedir(d);
    return n;
}

START_TEST(test_outfile_replaces_atomically)
{
    char dir[PATH_LEN], path[PATH_LEN], hard[PATH_LEN], want[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "replace");
    join(path, dir, "out.json");
    write_file(path, "old content");
    ck_assert_int_eq(chmod(path, 0640), 0);
    join(hard, dir, "other_name");
    ck_assert_int_eq(link(path, hard), 0); /* shows that the old inode is left alone */
    struct stat old_st;
    ck_assert_int_eq(stat(path, &old_st), 0);

    moe_outfile o;
    int fds = next_fd();
    ck_assert_int_eq(moe_outfile_open(&o, path, "--json", false, false, 0.0, msg, sizeof msg),
                     MOE_OK);
    ck_assert_ptr_nonnull(o.f);
    ck_assert_int_eq(o.target.kind, MOE_OUT_ATOMIC);
    ck_assert_str_eq(o.option, "--json");
    fputs("new content\n", o.f);
    fflush(o.f);
    /* while open: the target holds the old content; one temporary, named as documented, sits
     * beside it with the new bytes and the old file's permission bits */
    ck_assert_str_eq(slurp(path), "old content");
    char tmpname[PATH_LEN];
    ck_assert_int_eq(find_temp(dir, "out.json", tmpname), 1);
    canonical(want, dir, tmpname);
    ck_assert_str_eq(o.tmp, want);
    ck_assert_str_eq(slurp(o.tmp), "new content\n");
    ck_assert_int_eq(lmode(o.tmp) & 07777, 0640);

    moe_outfile *all[] = {&o};
    ck_assert_int_eq(moe_outfiles_commit(all, 1, msg, sizeof msg), MOE_OK);
    ck_assert_ptr_null(o.f);
    ck_assert_str_eq(o.tmp, "");
    ck_assert_str_eq(slurp(path), "new content\n");
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    ck_assert_int_eq(st.st_mode & 07777, 0640);
    ck_assert(st.st_ino != old_st.st_ino); /* replaced by rename, not rewritten in place */
    ck_assert_str_eq(slurp(hard), "old content");
    ck_assert_int_eq(count_temps(dir), 0);
    ck_assert_int_eq(count_entries(dir), 2);
    ck_assert_int_eq(next_fd(), fds); /* no descriptor left open */
}
END_TEST

START_TEST(test_outfile_new_file_mode)
{
    char dir[PATH_LEN], path[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "newmode");
    const mode_t masks[] = {022, 077, 0, 027};
    mode_t saved = umask(022);
    for (size_t i = 0; i < sizeof masks / sizeof *masks; i++) {
        char name[32];
        snprintf(name, sizeof name, "new%zu.json", i);
        join(path, dir, name);
        umask(masks[i]);
        moe_outfile o;
        ck_assert_int_eq(moe_outfile_open(&o, path, "--json", false, false, 0.0, msg, sizeof msg),
                         MOE_OK);
        ck_assert(!o.target.exists);
        fputs("{}\n", o.f);
        moe_outfile *all[] = {&o};
        ck_assert_int_eq(moe_outfiles_commit(all, 1, msg, sizeof msg), MOE_OK);
        ck_assert_int_eq(lmode(path) & 07777, 0666 & ~masks[i]);
        ck_assert_str_eq(slurp(path), "{}\n");
    }
    umask(saved);
    ck_assert_int_eq(count_temps(dir), 0);
    ck_assert_int_eq(count_entries(dir), 4);
}
END_TEST

START_TEST(test_outfile_close_then_publish)
{
    char dir[PATH_LEN], path[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "publish");
    join(path, dir, "out.csv");
    write_file(path, "old");
    moe_outfile o;
    ck_assert_int_eq(
        moe_outfile_open(&o, path, "--dump-routing", false, false, 0.0, msg, sizeof msg), MOE_OK);
    fputs("new", o.f);
    ck_assert_int_eq(moe_outfile_close(&o, msg, sizeof msg), MOE_OK);
    /* closed but unpublished: the temporary holds the data, the target the old content */
    ck_assert_ptr_null(o.f);
    ck_assert_str_ne(o.tmp, "");
    ck_assert_str_eq(slurp(o.tmp), "new");
    ck_assert_str_eq(slurp(path), "old");
    ck_assert_int_eq(moe_outfile_close(&o, msg, sizeof msg), MOE_OK); /* again: nothing to do */
    ck_assert_int_eq(moe_outfile_publish(&o, msg, sizeof msg), MOE_OK);
    ck_assert_str_eq(o.tmp, "");
    ck_assert_str_eq(slurp(path), "new");
    ck_assert_int_eq(moe_outfile_publish(&o, msg, sizeof msg), MOE_OK); /* a no-op now */
    ck_assert_str_eq(slurp(path), "new");
    moe_outfile_discard(&o); /* safe on a finished outfile: removes nothing */
    ck_assert_str_eq(slurp(path), "new");
    ck_assert_int_eq(count_entries(dir), 1);
}
END_TEST

START_TEST(test_outfile_discard)
{
    char dir[PATH_LEN], path[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "discard");
    join(path, dir, "out.json");
    write_file(path, "old");
    int fds = next_fd();
    moe_outfile o;
    ck_assert_int_eq(moe_outfile_open(&o, path, "--json", false, false, 0.0, msg, sizeof msg),
                     MOE_OK);
    fputs("half a document", o.f);
    ck_assert_int_eq(count_temps(dir), 1);
    moe_outfile_discard(&o);
    ck_assert_ptr_null(o.f);
    ck_assert_int_eq(count_temps(dir), 0);
    ck_assert_str_eq(slurp(path), "old");
    ck_assert_int_eq(next_fd(), fds);
    moe_outfile_discard(&o); /* twice */
    moe_outfile_discard(NULL);
    moe_outfile zero;
    memset(&zero, 0, sizeof zero);
    moe_outfile_discard(&zero);
    /* a discarded new file leaves nothing at all */
    join(path, dir, "never.json");
    ck_assert_int_eq(moe_outfile_open(&o, path, "--json", false, false, 0.0, msg, sizeof msg),
                     MOE_OK);
    fputs("x", o.f);
    moe_outfile_discard(&o);
    ck_assert_int_eq(count_entries(dir), 1);
}
END_TEST

START_TEST(test_outfile_through_symlink)
{
    char dir[PATH_LEN], d1[PATH_LEN], d2[PATH_LEN], target[PATH_LEN], link[PATH_LEN];
    char msg[MSG_LEN];
    fresh_dir(dir, "through_link");
    join(d1, dir, "links");
    join(d2, dir, "files");
    ck_assert_int_eq(mkdir(d1, 0700), 0);
    ck_assert_int_eq(mkdir(d2, 0700), 0);
    join(target, d2, "t.json");
    write_file(target, "old");
    ck_assert_int_eq(chmod(target, 0604), 0);
    join(link, d1, "l.json");
    ck_assert_int_eq(symlink("../files/t.json", link), 0);

    moe_outfile o;
    ck_assert_int_eq(moe_outfile_open(&o, link, "--json", false, false, 0.0, msg, sizeof msg),
                     MOE_OK);
    fputs("new", o.f);
    /* the temporary is beside the target, so that the rename stays in one directory */
    char tmpname[PATH_LEN];
    ck_assert_int_eq(find_temp(d2, "t.json", tmpname), 1);
    ck_assert_int_eq(count_entries(d1), 1);
    moe_outfile *all[] = {&o};
    ck_assert_int_eq(moe_outfiles_commit(all, 1, msg, sizeof msg), MOE_OK);
    ck_assert_str_eq(slurp(target), "new");
    ck_assert_int_eq(lmode(target) & 07777, 0604);
    ck_assert(S_ISLNK(lmode(link)));
    char buf[PATH_LEN];
    ssize_t n = readlink(link, buf, sizeof buf - 1);
    ck_assert_int_gt(n, 0);
    buf[n] = '\0';
    ck_assert_str_eq(buf, "../files/t.json");
    ck_assert_int_eq(count_temps(d2), 0);

    /* a dangling link: its target is created, the link stays a link */
    join(link, d1, "dangling.json");
    ck_assert_int_eq(symlink("../files/created.json", link), 0);
    ck_assert_int_eq(moe_outfile_open(&o, link, "--json", false, false, 0.0, msg, sizeof msg),
                     MOE_OK);
    fputs("created", o.f);
    ck_assert_int_eq(moe_outfiles_commit(all, 1, msg, sizeof msg), MOE_OK);
    join(target, d2, "created.json");
    ck_assert(S_ISREG(lmode(target)));
    ck_assert_str_eq(slurp(target), "created");
    ck_assert(S_ISLNK(lmode(link)));
    ck_assert_str_eq(slurp(link), "created");
    ck_assert_int_eq(count_entries(d1), 2);
    ck_assert_int_eq(count_entries(d2), 2);
}
END_TEST

/* ---- outfile: in place ---- */

START_TEST(test_outfile_dev_null)
{
    char msg[MSG_LEN];
    struct stat before, after;
    ck_assert_int_eq(stat("/dev/null", &before), 0);
    moe_outfile o;
    ck_assert_int_eq(
        moe_outfile_open(&o, "/dev/null", "--dump-output", true, false, 0.0, msg, sizeof msg),
        MOE_OK);
    ck_assert_int_eq(o.target.kind, MOE_OUT_INPLACE);
    ck_assert_str_eq(o.tmp, "");
    for (int i = 0; i < 10000; i++)
        fputs("discarded bytes ", o.f);
    moe_outfile *all[] = {&o};
    ck_assert_int_eq(moe_outfiles_commit(all, 1, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(stat("/dev/null", &after), 0);
    ck_assert(S_ISCHR(after.st_mode));
    ck_assert(after.st_rdev == before.st_rdev && after.st_ino == before.st_ino);
    ck_assert_int_eq(count_temps("/dev"), 0);
}
END_TEST

START_TEST(test_outfile_dev_full)
{
    char msg[MSG_LEN];
    moe_outfile o;
    ck_assert_int_eq(
        moe_outfile_open(&o, "/dev/full", "--json", false, false, 0.0, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(o.target.kind, MOE_OUT_INPLACE);
    fputs("{\"a\": 1}\n", o.f); /* buffered: the failure shows at close */
    moe_outfile *all[] = {&o};
    msg[0] = '\0';
    ck_assert_int_eq(moe_outfiles_commit(all, 1, msg, sizeof msg), MOE_EIO);
    ck_assert_msg(strstr(msg, strerror(ENOSPC)) != NULL && strstr(msg, "--json") != NULL &&
                      strstr(msg, "/dev/full") != NULL,
                  "message: %s", msg);
    ck_assert_ptr_null(o.f);
    ck_assert_str_eq(o.tmp, "");
    ck_assert_int_eq(count_temps("/dev"), 0);
    ck_assert(S_ISCHR(lmode("/dev/full")));
}
END_TEST

/* A child that opens fifo for reading (blocking until a writer comes), copies everything to out
 * and exits. */
static pid_t fifo_reader(const char *fifo, int out)
{
    fflush(stdout);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        alarm(10); /* never outlive a test that failed before opening the FIFO */
        int fd = open(fifo, O_RDONLY);
        if (fd < 0)
            _exit(1);
        char buf[512];
        for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;)
            if (write(out, buf, (size_t)n) != n)
                _exit(1);
        _exit(0);
    }
    return pid;
}

START_TEST(test_outfile_fifo_with_reader)
{
    char dir[PATH_LEN], fifo[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "fifo_reader");
    join(fifo, dir, "pipe");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fifo_reader(fifo, p[1]);
    close(p[1]);
    moe_outfile o;
    /* the reader may not have opened yet: the open waits for it (up to 5 s here) */
    ck_assert_int_eq(moe_outfile_open(&o, fifo, "--json", false, false, 5.0, msg, sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(o.target.kind, MOE_OUT_INPLACE);
    fputs("through the FIFO\n", o.f);
    moe_outfile *all[] = {&o};
    ck_assert_int_eq(moe_outfiles_commit(all, 1, msg, sizeof msg), MOE_OK);
    char got[256];
    size_t len = 0;
    for (ssize_t n; (n = read(p[0], got + len, sizeof got - 1 - len)) > 0;)
        len += (size_t)n;
    got[len] = '\0';
    close(p[0]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert_str_eq(got, "through the FIFO\n");
    ck_assert(S_ISFIFO(lmode(fifo)));
    ck_assert_int_eq(count_entries(dir), 1);
}
END_TEST

START_TEST(test_outfile_fifo_without_reader)
{
    char dir[PATH_LEN], fifo[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "fifo_noreader");
    join(fifo, dir, "pipe");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    moe_outfile o;
    int fds = next_fd();
    double t0 = now_s();
    msg[0] = '\0';
    int rc = moe_outfile_open(&o, fifo, "--json", false, false, 0.2, msg, sizeof msg);
    double waited = now_s() - t0;
    ck_assert_int_eq(rc, MOE_EIO);
    ck_assert_ptr_null(o.f);
    ck_assert_msg(strstr(msg, "FIFO") != NULL && strstr(msg, "reading") != NULL &&
                      strstr(msg, "--json") != NULL,
                  "message: %s", msg);
    /* it waited the 0.2 s asked for (sleeps last at least what they ask), and not much longer:
     * 2 s is slack for a loaded machine */
    ck_assert_msg(waited >= 0.2 && waited < 2.0, "waited %.3f s", waited);
    ck_assert(S_ISFIFO(lmode(fifo)));
    ck_assert_int_eq(count_entries(dir), 1);
    ck_assert_int_eq(next_fd(), fds);
    /* a wait of 0 fails at once */
    t0 = now_s();
    ck_assert_int_eq(moe_outfile_open(&o, fifo, "--json", false, false, 0.0, msg, sizeof msg),
                     MOE_EIO);
    ck_assert_double_lt(now_s() - t0, 1.0);
}
END_TEST

/* A reader that goes away before the writer is done: the write fails with EPIPE and close reports
 * it, once SIGPIPE is ignored (otherwise the signal ends the process: see the report to the lead
 * on src/main.c, which does not ignore it). */
START_TEST(test_outfile_fifo_reader_gone)
{
    char dir[PATH_LEN], fifo[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "fifo_gone");
    join(fifo, dir, "pipe");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    struct sigaction ign = {.sa_handler = SIG_IGN}, old;
    sigemptyset(&ign.sa_mask);
    ck_assert_int_eq(sigaction(SIGPIPE, &ign, &old), 0);
    fflush(stdout);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) { /* open, then leave without reading */
        alarm(10);
        int fd = open(fifo, O_RDONLY);
        _exit(fd >= 0 ? 0 : 1);
    }
    moe_outfile o;
    ck_assert_int_eq(moe_outfile_open(&o, fifo, "--json", false, false, 5.0, msg, sizeof msg),
                     MOE_OK);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    fputs("nobody reads this\n", o.f);
    moe_outfile *all[] = {&o};
    msg[0] = '\0';
    ck_assert_int_eq(moe_outfiles_commit(all, 1, msg, sizeof msg), MOE_EIO);
    ck_assert_msg(strstr(msg, strerror(EPIPE)) != NULL, "message: %s", msg);
    ck_assert(S_ISFIFO(lmode(fifo)));
    sigaction(SIGPIPE, &old, NULL);
}
END_TEST

START_TEST(test_outfile_socket)
{
    char dir[PATH_LEN], sock[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "socket");
    join(sock, dir, "s");
    int srv = bind_socket(sock, 1);
    moe_outfile o;
    ck_assert_int_eq(moe_outfile_open(&o, sock, "--json", false, false, 0.0, msg, sizeof msg),
                     MOE_OK);
    ck_assert_int_eq(o.target.kind, MOE_OUT_SOCKET);
    fputs("{\"over\": \"a socket\"}\n", o.f);
    moe_outfile *all[] = {&o};
    ck_assert_int_eq(moe_outfiles_commit(all, 1, msg, sizeof msg), MOE_OK);
    /* the connection waited in the backlog with the bytes and the end of the stream */
    int c = accept(srv, NULL, NULL);
    ck_assert_int_ge(c, 0);
    char got[256];
    size_t len = 0;
    for (ssize_t n; (n = read(c, got + len, sizeof got - 1 - len)) > 0;)
        len += (size_t)n;
    got[len] = '\0';
    close(c);
    close(srv);
    ck_assert_str_eq(got, "{\"over\": \"a socket\"}\n");
    ck_assert(S_ISSOCK(lmode(sock)));
    ck_assert_int_eq(count_entries(dir), 1);

    /* bound but nobody listening: refused at open, nothing left */
    join(sock, dir, "deaf");
    srv = bind_socket(sock, 0);
    msg[0] = '\0';
    ck_assert_int_eq(moe_outfile_open(&o, sock, "--json", false, false, 0.0, msg, sizeof msg),
                     MOE_EIO);
    ck_assert_ptr_null(o.f);
    ck_assert_msg(strstr(msg, strerror(ECONNREFUSED)) != NULL, "message: %s", msg);
    close(srv);
    ck_assert_int_eq(count_entries(dir), 2);
}
END_TEST

START_TEST(test_outfile_stdout)
{
    char dir[PATH_LEN], path[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "stdout");
    join(path, dir, "captured");
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    ck_assert_int_ge(saved, 0);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(dup2(fd, STDOUT_FILENO), STDOUT_FILENO);
    close(fd);
    moe_outfile o;
    int rc = moe_outfile_open(&o, "-", "--json", false, false, 0.0, msg, sizeof msg);
    FILE *f = o.f;
    if (rc == MOE_OK)
        fputs("to standard output\n", o.f);
    moe_outfile *all[] = {&o};
    int crc = rc == MOE_OK ? moe_outfiles_commit(all, 1, msg, sizeof msg) : rc;
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    ck_assert_int_eq(rc, MOE_OK);
    ck_assert_ptr_eq(f, stdout);
    ck_assert_int_eq(crc, MOE_OK);
    ck_assert_str_eq(slurp(path), "to standard output\n");
    ck_assert_int_eq(count_entries(dir), 1);
    /* stdout stays usable after the commit: it is not closed */
    ck_assert_int_ge(fcntl(STDOUT_FILENO, F_GETFD), 0);
    /* binary to a terminal: refused at open */
    ck_assert_int_lt(moe_outfile_open(&o, "-", "--dump-output", true, true, 0.0, msg, sizeof msg),
                     0);
    ck_assert_ptr_null(o.f);
    ck_assert_ptr_nonnull(strstr(msg, "terminal"));
}
END_TEST

/* ---- outfile: failures leave nothing ---- */

START_TEST(test_outfile_open_failures)
{
    char dir[PATH_LEN], path[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "open_fail");
    int fds = next_fd();
    moe_outfile o;
    const char *bad[] = {"", dir, "/nonexistent-moesim-dir/x.json"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        msg[0] = '\0';
        ck_assert_int_lt(moe_outfile_open(&o, bad[i], "--json", false, false, 0.0, msg, sizeof msg),
                         0);
        ck_assert_ptr_null(o.f);
        ck_assert_msg(strstr(msg, "--json") != NULL, "'%s': message %s", bad[i], msg);
        moe_outfile_discard(&o); /* safe after a failed open */
    }
    join(path, dir, "nowhere/x.json");
    ck_assert_int_lt(moe_outfile_open(&o, path, "--json", false, false, 0.0, msg, sizeof msg), 0);
    ck_assert_int_eq(count_entries(dir), 0);
    ck_assert_int_eq(next_fd(), fds);
}
END_TEST

START_TEST(test_commit_all_or_nothing)
{
    char dir[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "all_or_nothing");
    enum { N = 3 };
    const char *names[N] = {"a.json", "b.csv", "c.npy"};
    const char *options[N] = {"--json", "--dump-routing", "--dump-output"};
    char paths[N + 1][PATH_LEN];
    moe_outfile files[N + 1];
    moe_outfile *all[N + 2];
    for (int i = 0; i < N; i++) {
        join(paths[i], dir, names[i]);
        write_file(paths[i], "old");
    }
    join(paths[N], dir, "d.new"); /* and one that does not exist yet */
    int fds = next_fd();
    for (int i = 0; i <= N; i++) {
        ck_assert_int_eq(moe_outfile_open(&files[i], paths[i], i < N ? options[i] : "--extra",
                                          false, false, 0.0, msg, sizeof msg),
                         MOE_OK);
        fprintf(files[i].f, "new %d\n", i);
        all[i] = &files[i];
    }
    all[N + 1] = NULL; /* a NULL entry is skipped */
    ck_assert_int_eq(count_temps(dir), N + 1);
    /* the writer of the second failed */
    files[1].failed = true;
    files[1].err = EIO;
    msg[0] = '\0';
    ck_assert_int_eq(moe_outfiles_commit(all, N + 2, msg, sizeof msg), MOE_EIO);
    ck_assert_msg(strstr(msg, strerror(EIO)) != NULL && strstr(msg, "--dump-routing") != NULL,
                  "message: %s", msg);
    for (int i = 0; i < N; i++)
        ck_assert_msg(strcmp(slurp(paths[i]), "old") == 0, "%s changed to '%s'", names[i],
                      slurp(paths[i]));
    ck_assert_int_eq(access(paths[N], F_OK), -1);
    ck_assert_int_eq(count_temps(dir), 0);
    ck_assert_int_eq(count_entries(dir), N);
    for (int i = 0; i <= N; i++) {
        ck_assert_ptr_null(files[i].f);
        ck_assert_str_eq(files[i].tmp, "");
    }
    ck_assert_int_eq(next_fd(), fds);

    /* the same, with the failure on the first and on the last */
    for (int fail = 0; fail < N; fail += N - 1) {
        for (int i = 0; i < N; i++) {
            ck_assert_int_eq(moe_outfile_open(&files[i], paths[i], options[i], false, false, 0.0,
                                              msg, sizeof msg),
                             MOE_OK);
            fputs("newer", files[i].f);
        }
        files[fail].failed = true;
        files[fail].err = ENOSPC;
        ck_assert_int_eq(moe_outfiles_commit(all, N, msg, sizeof msg), MOE_EIO);
        ck_assert_ptr_nonnull(strstr(msg, strerror(ENOSPC)));
        for (int i = 0; i < N; i++)
            ck_assert_str_eq(slurp(paths[i]), "old");
        ck_assert_int_eq(count_temps(dir), 0);
    }

    /* and when nothing fails, every one is published */
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(
            moe_outfile_open(&files[i], paths[i], options[i], false, false, 0.0, msg, sizeof msg),
            MOE_OK);
        fprintf(files[i].f, "new %d\n", i);
    }
    moe_outfile *gappy[] = {NULL, all[0], NULL, all[1], all[2]};
    ck_assert_int_eq(moe_outfiles_commit(gappy, 5, msg, sizeof msg), MOE_OK);
    for (int i = 0; i < N; i++) {
        char want[16];
        snprintf(want, sizeof want, "new %d\n", i);
        ck_assert_str_eq(slurp(paths[i]), want);
    }
    ck_assert_int_eq(count_temps(dir), 0);
    ck_assert_int_eq(moe_outfiles_commit(NULL, 0, msg, sizeof msg), MOE_OK);
    ck_assert_int_eq(next_fd(), fds);
}
END_TEST

/* ---- distinct outputs ---- */

static int distinct(const char *const *outs, const char *const *out_opts, int n_out,
                    const char *const *ins, const char *const *in_opts, int n_in, char *msg)
{
    msg[0] = '\0';
    return moe_out_check_distinct(outs, out_opts, n_out, ins, in_opts, n_in, false, msg, MSG_LEN);
}

START_TEST(test_distinct_output_is_input)
{
    char dir[PATH_LEN], sub[PATH_LEN], input[PATH_LEN], other[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "distinct_in");
    join(sub, dir, "sub");
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    join(input, dir, "x.npy");
    write_file(input, "tokens");
    join(other, dir, "other.npy");
    write_file(other, "other");
    char dotted[PATH_LEN], updown[PATH_LEN], sym[PATH_LEN], hard[PATH_LEN];
    join(dotted, dir, "./x.npy");
    join(updown, dir, "sub/../x.npy");
    join(sym, sub, "link.npy");
    ck_assert_int_eq(symlink("../x.npy", sym), 0);
    join(hard, dir, "hard.npy");
    ck_assert_int_eq(link(input, hard), 0);

    int cwd = save_cwd();
    ck_assert_int_eq(chdir(dir), 0);
    const char *spellings[] = {"./x.npy", "x.npy", "sub/../x.npy", dotted, updown, sym, hard};
    const char *in_opts[] = {"--tokens-file"};
    const char *out_opts[] = {"--dump-output"};
    for (size_t i = 0; i < sizeof spellings / sizeof *spellings; i++) {
        const char *outs[] = {spellings[i]};
        const char *ins[] = {input};
        ck_assert_int_eq(distinct(outs, out_opts, 1, ins, in_opts, 1, msg), MOE_EUSAGE);
        ck_assert_msg(strstr(msg, "--dump-output") != NULL && strstr(msg, "--tokens-file") != NULL,
                      "'%s': message %s", spellings[i], msg);
        /* and the other way round: the input spelled differently */
        const char *outs2[] = {input};
        const char *ins2[] = {spellings[i]};
        ck_assert_int_eq(distinct(outs2, out_opts, 1, ins2, in_opts, 1, msg), MOE_EUSAGE);
    }
    restore_cwd(cwd);

    /* distinct files are fine; a new output cannot be an input; NULL entries are skipped */
    char fresh[PATH_LEN];
    join(fresh, dir, "y.npy");
    const char *outs[] = {NULL, other, fresh, NULL};
    const char *oo[] = {"--json", "--dump-output", "--dump-routing", "--other"};
    const char *ins[] = {NULL, input, NULL, "/nonexistent-moesim-input"};
    const char *io[] = {"--router-file", "--tokens-file", "--logits-file", "--network"};
    ck_assert_msg(distinct(outs, oo, 4, ins, io, 4, msg) == MOE_OK, "message: %s", msg);
    ck_assert_int_eq(count_entries(dir), 4); /* sub, x.npy, other.npy, hard.npy */
    /* the input among several: found wherever it sits, naming the right pair */
    const char *outs3[] = {fresh, other, hard};
    ck_assert_int_eq(distinct(outs3, oo, 3, ins, io, 4, msg), MOE_EUSAGE);
    ck_assert_msg(strstr(msg, "--dump-routing") != NULL && strstr(msg, "--tokens-file") != NULL,
                  "message: %s", msg);
}
END_TEST

START_TEST(test_distinct_outputs)
{
    char dir[PATH_LEN], sub[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "distinct_out");
    join(sub, dir, "sub");
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    const char *opts[] = {"--json", "--dump-routing", "--dump-output"};

    /* the same file, not yet existing, through different spellings */
    char a[PATH_LEN], b[PATH_LEN], c[PATH_LEN], l[PATH_LEN];
    join(a, dir, "new.out");
    join(b, dir, "./new.out");
    join(c, dir, "sub/../new.out");
    join(l, sub, "dangling");
    ck_assert_int_eq(symlink("../new.out", l), 0);
    const char *others[] = {b, c, l};
    for (int i = 0; i < 3; i++) {
        const char *outs[] = {a, others[i]};
        ck_assert_int_eq(distinct(outs, opts, 2, NULL, NULL, 0, msg), MOE_EUSAGE);
        ck_assert_msg(strstr(msg, "--json") != NULL && strstr(msg, "--dump-routing") != NULL,
                      "'%s': message %s", others[i], msg);
    }
    /* with the relative spelling too */
    int cwd = save_cwd();
    ck_assert_int_eq(chdir(sub), 0);
    {
        const char *outs[] = {"../new.out", NULL, a};
        ck_assert_int_eq(distinct(outs, opts, 3, NULL, NULL, 0, msg), MOE_EUSAGE);
        ck_assert_msg(strstr(msg, "--json") != NULL && strstr(msg, "--dump-output") != NULL,
                      "message: %s", msg);
    }
    restore_cwd(cwd);

    /* the same existing file through a hard link */
    char e[PATH_LEN], h[PATH_LEN];
    join(e, dir, "exists.out");
    write_file(e, "x");
    join(h, sub, "hard.out");
    ck_assert_int_eq(link(e, h), 0);
    {
        const char *outs[] = {e, h};
        ck_assert_int_eq(distinct(outs, opts, 2, NULL, NULL, 0, msg), MOE_EUSAGE);
    }
    /* two "-" */
    {
        const char *outs[] = {"-", NULL, "-"};
        ck_assert_int_eq(distinct(outs, opts, 3, NULL, NULL, 0, msg), MOE_EUSAGE);
        ck_assert_msg(strstr(msg, "standard output") != NULL && strstr(msg, "--json") != NULL &&
                          strstr(msg, "--dump-output") != NULL,
                      "message: %s", msg);
    }
    /* distinct: "-", a new file, an existing one; and nothing at all */
    {
        const char *outs[] = {"-", a, e};
        ck_assert_msg(distinct(outs, opts, 3, NULL, NULL, 0, msg) == MOE_OK, "message: %s", msg);
        const char *none[] = {NULL, NULL, NULL};
        ck_assert_int_eq(distinct(none, opts, 3, NULL, NULL, 0, msg), MOE_OK);
        ck_assert_int_eq(distinct(NULL, NULL, 0, NULL, NULL, 0, msg), MOE_OK);
    }
    /* an output that cannot be written is refused here as well */
    {
        const char *outs[] = {a, sub};
        ck_assert_int_eq(distinct(outs, opts, 2, NULL, NULL, 0, msg), MOE_EUSAGE);
        ck_assert_ptr_nonnull(strstr(msg, "directory"));
    }
    /* no probe left anything behind: sub, dangling, exists.out, hard.out only */
    ck_assert_int_eq(count_entries(dir), 2);
    ck_assert_int_eq(count_entries(sub), 2);
}
END_TEST

/* ---- inputs ---- */

START_TEST(test_input_open)
{
    char dir[PATH_LEN], path[PATH_LEN], msg[MSG_LEN];
    fresh_dir(dir, "inputs");
    int fds = next_fd();
    FILE *f = (FILE *)1;

    /* a regular file opens, positioned at its start, and reads normally (blocking mode) */
    join(path, dir, "t.npy");
    write_file(path, "contents");
    ck_assert_int_eq(moe_input_open(&f, path, "--tokens-file", "rb", msg, sizeof msg), MOE_OK);
    ck_assert_ptr_nonnull(f);
    char buf[32] = "";
    ck_assert_uint_eq(fread(buf, 1, sizeof buf - 1, f), 8);
    ck_assert_str_eq(buf, "contents");
    ck_assert_int_eq(fcntl(fileno(f), F_GETFL) & O_NONBLOCK, 0);
    fclose(f);
    ck_assert_int_eq(moe_input_check(path, "--tokens-file", msg, sizeof msg), MOE_OK);
    /* through a symbolic link too */
    char link[PATH_LEN];
    join(link, dir, "link.npy");
    ck_assert_int_eq(symlink("t.npy", link), 0);
    ck_assert_int_eq(moe_input_check(link, "--tokens-file", msg, sizeof msg), MOE_OK);

    /* a directory */
    f = (FILE *)1;
    msg[0] = '\0';
    ck_assert_int_eq(moe_input_open(&f, dir, "--router-file", "rb", msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(msg, "directory") != NULL && strstr(msg, "--router-file") != NULL &&
                      strstr(msg, dir) != NULL,
                  "message: %s", msg);

    /* a FIFO is refused at once, without waiting for a writer; alarm() ends the test if it
     * blocks */
    char fifo[PATH_LEN];
    join(fifo, dir, "fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    alarm(5);
    double t0 = now_s();
    f = (FILE *)1;
    msg[0] = '\0';
    ck_assert_int_eq(moe_input_open(&f, fifo, "--logits-file", "rb", msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(msg, "FIFO") != NULL && strstr(msg, "--logits-file") != NULL,
                  "message: %s", msg);
    ck_assert_int_eq(moe_input_check(fifo, "--logits-file", msg, sizeof msg), MOE_EUSAGE);
    alarm(0);
    ck_assert_double_lt(now_s() - t0, 1.0);

    /* a character device */
    ck_assert_int_eq(moe_input_open(&f, "/dev/null", "--network", "r", msg, sizeof msg),
                     MOE_EUSAGE);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(msg, "character device") != NULL, "message: %s", msg);

    /* a socket: refused (open(2) of a socket fails with ENXIO) */
    char sock[PATH_LEN];
    join(sock, dir, "sock");
    int srv = bind_socket(sock, 1);
    ck_assert_int_lt(moe_input_open(&f, sock, "--topology", "r", msg, sizeof msg), 0);
    ck_assert_ptr_null(f);
    ck_assert_ptr_nonnull(strstr(msg, "--topology"));
    close(srv);

    /* a missing file: MOE_EIO with the system's reason */
    join(path, dir, "missing.npy");
    msg[0] = '\0';
    ck_assert_int_eq(moe_input_open(&f, path, "--tokens-file", "rb", msg, sizeof msg), MOE_EIO);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(msg, strerror(ENOENT)) != NULL && strstr(msg, "--tokens-file") != NULL &&
                      strstr(msg, path) != NULL,
                  "message: %s", msg);
    ck_assert_int_eq(moe_input_check(path, "--tokens-file", msg, sizeof msg), MOE_EIO);

    /* option NULL: the message names the path alone */
    char want[PATH_LEN + 128];
    snprintf(want, sizeof want, "cannot open '%s': %s", path, strerror(ENOENT));
    ck_assert_int_eq(moe_input_open(&f, path, NULL, "rb", msg, sizeof msg), MOE_EIO);
    ck_assert_str_eq(msg, want);
    ck_assert_int_eq(moe_input_check(dir, NULL, msg, sizeof msg), MOE_EUSAGE);
    ck_assert_ptr_null(strstr(msg, "(null)"));
    snprintf(want, sizeof want, "'%s' is a directory", dir);
    ck_assert_msg(strncmp(msg, want, strlen(want)) == 0, "message: %s", msg);

    ck_assert_int_eq(next_fd(), fds); /* nothing leaked on any path */
    ck_assert_int_eq(count_entries(dir), 4);
}
END_TEST

static Suite *fileout_suite(void)
{
    Suite *s = suite_create("fileout");
    TCase *tc = tcase_create("classify");
    tcase_add_test(tc, test_classify_regular_and_new);
    tcase_add_test(tc, test_classify_stdout);
    tcase_add_test(tc, test_classify_in_place);
    tcase_add_test(tc, test_classify_block_device_refused);
    tcase_add_test(tc, test_classify_symlinks);
    tcase_add_test(tc, test_classify_refused);
    tcase_add_test(tc, test_classify_readonly_dir);
    suite_add_tcase(s, tc);
    tc = tcase_create("outfile");
    tcase_add_test(tc, test_outfile_replaces_atomically);
    tcase_add_test(tc, test_outfile_new_file_mode);
    tcase_add_test(tc, test_outfile_close_then_publish);
    tcase_add_test(tc, test_outfile_discard);
    tcase_add_test(tc, test_outfile_through_symlink);
    tcase_add_test(tc, test_outfile_dev_null);
    tcase_add_test(tc, test_outfile_dev_full);
    tcase_add_test(tc, test_outfile_fifo_with_reader);
    tcase_add_test(tc, test_outfile_fifo_without_reader);
    tcase_add_test(tc, test_outfile_fifo_reader_gone);
    tcase_add_test(tc, test_outfile_socket);
    tcase_add_test(tc, test_outfile_stdout);
    tcase_add_test(tc, test_outfile_open_failures);
    tcase_add_test(tc, test_commit_all_or_nothing);
    suite_add_tcase(s, tc);
    tc = tcase_create("distinct");
    tcase_add_test(tc, test_distinct_output_is_input);
    tcase_add_test(tc, test_distinct_outputs);
    suite_add_tcase(s, tc);
    tc = tcase_create("inputs");
    tcase_add_test(tc, test_input_open);
    suite_add_tcase(s, tc);
    return s;
}

/* a test that failed midway may leave a directory read-only */
static void make_writable(const char *dir)
{
    chmod(dir, 0700);
    char ro[PATH_LEN];
    snprintf(ro, sizeof ro, "%s/readonly", dir);
    chmod(ro, 0700);
}

int main(void)
{
    return run_in_scratch(g_dir, fileout_suite(), make_writable);
}
