/* The scratch directory of a unit suite that writes files: made before the suite runs and removed,
 * with everything in it, after the run, even when a forked test failed midway. */
#ifndef MOESIM_TEST_SCRATCH_H
#define MOESIM_TEST_SCRATCH_H

#include <check.h>
#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Entries of dir but "." and "..": what a test left there. */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static int scratch_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* mkdtemp(dir) (a "...XXXXXX" template, filled in), run suite, call before_removal(dir) if given
 * (to undo what a failed test may have left, such as a read-only directory), remove dir. Returns
 * the process exit status. */
static int run_in_scratch(char *dir, Suite *suite, void (*before_removal)(const char *dir))
{
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(suite);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (before_removal != NULL)
        before_removal(dir);
    nftw(dir, scratch_remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
