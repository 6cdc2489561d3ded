"""Run one libFuzzer target as a meson test (suite 'fuzz'; docs/testing.md, "Fuzzing").

    run_fuzz.py FUZZER --corpus DIR --regressions DIR --work DIR --runs N [--dict FILE]
                [--max-seconds S]

1. Replay: every file of the seed corpus and of the regression cases, once each (libFuzzer given
   files rather than directories runs them and stops). A crash, a sanitizer report or a broken
   contract on any of them fails the test, naming the file.
2. A short fuzz run from the seed corpus: N inputs from seed 1, so every machine tries the same
   inputs (--max-seconds, 120 by default, only guards against a machine far slower than expected).
   New corpus entries go to a temporary directory under --work, removed afterwards: the source tree
   is only read.

A failing input is kept under WORK/artifacts/FUZZER/ (the path is printed): copy it into the
regressions directory with a name that says what it found, then fix the bug. Exit 0 pass, 1 fail.
Standard library only.
"""

import argparse
import os
import subprocess
import sys
import tempfile


def inputs(directory):
    """The files of a corpus directory, sorted, README files aside."""
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if not name.startswith("README") and
                  os.path.isfile(os.path.join(directory, name)))


def main():
    ap = argparse.ArgumentParser(description="replay, then fuzz briefly, one libFuzzer target")
    ap.add_argument("fuzzer")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--regressions", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--dict")
    ap.add_argument("--max-seconds", type=int, default=120)
    args = ap.parse_args()

    fuzzer = os.path.abspath(args.fuzzer)
    name = os.path.basename(fuzzer)
    artifacts = os.path.join(os.path.abspath(args.work), "artifacts", name)
    os.makedirs(artifacts, exist_ok=True)
    # -timeout: an input that takes over 10 s is a hang, reported like a crash. The artifact
    # prefix keeps crash-*, timeout-*, leak-* and oom-* files out of the source tree.
    common = ["-timeout=10", "-artifact_prefix=" + artifacts + os.sep]
    if args.dict:
        common.append("-dict=" + os.path.abspath(args.dict))

    seeds, cases = inputs(args.corpus), inputs(args.regressions)
    if not seeds:
        print("FAIL: no seed corpus in %s" % args.corpus)
        return 1
    with tempfile.TemporaryDirectory(prefix=name + ".", dir=args.work) as tmp:
        print("== %s: replaying %d seeds and %d regression cases" % (name, len(seeds), len(cases)),
              flush=True)
        replay = subprocess.run([fuzzer] + common + seeds + cases, cwd=tmp)
        if replay.returncode != 0:
            print("FAIL: %s failed on a seed or regression case (exit %d): the input is the last "
                  "'Running:' line above" % (name, replay.returncode))
            return 1

        new_corpus = os.path.join(tmp, "corpus")
        os.mkdir(new_corpus)
        print("== %s: fuzzing, %d runs from seed 1" % (name, args.runs), flush=True)
        # libFuzzer writes new inputs into the first directory only: the temporary one.
        fuzz = subprocess.run([fuzzer] + common +
                              ["-seed=1", "-runs=%d" % args.runs,
                               "-max_total_time=%d" % args.max_seconds, "-print_final_stats=1",
                               new_corpus, os.path.abspath(args.corpus)], cwd=tmp)
        if fuzz.returncode != 0:
            found = sorted(os.listdir(artifacts))
            print("FAIL: %s found a failing input (exit %d); in %s: %s"
                  % (name, fuzz.returncode, artifacts, ", ".join(found) or "nothing"))
            return 1
    print("PASS: %s: %d seeds and %d regression cases replayed, %d fuzz runs clean"
          % (name, len(seeds), len(cases), args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
