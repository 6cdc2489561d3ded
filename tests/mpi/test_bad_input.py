"""Every bad input is refused before the layer runs: the run ends promptly (a hang hits the
subprocess timeout and fails), exits 2, prints on stderr exactly one line `moesim: error: ...` that
names the problem (checked with a pattern per case; Open MPI's own framed notice about a non-zero
exit is set aside), prints nothing on stdout, and leaves nothing at the --json / --dump-routing /
--dump-output paths (nor any *.tmp.* file beside them or beside the inputs).

Under the sanitizers (MOESIM_TEST_SANITIZED=1) the cases refused by the option parser alone are
left out (parse_only; the fuzz-config target covers that parser under ASan). Most cases run at R = 1; the file cases are repeated at R = 3 or 4 with the bad file seen by every
rank, and one NaN sits in a row that only the last rank reads, so the ranks must agree on an error
that rank 0 did not see.
"""

import os
import re

import numpy as np

import moetest as mt

TIMEOUT = 20  # seconds; a refusal takes well under one
N, D, E = 100, 16, 6
SMALL = ["--tokens", N, "--hidden", D, "--experts", E]


def make_files(d):
    """Every input file a case may name, in directory d."""
    rng = np.random.default_rng(0)
    h = rng.standard_normal((N, D)).astype(np.float32)
    p = lambda name: os.path.join(d, name)
    np.save(p("good.npy"), h)
    np.save(p("router.npy"), rng.standard_normal((E, D)).astype(np.float32))
    np.save(p("router17.npy"), rng.standard_normal((E, D + 1)).astype(np.float32))
    good = open(p("good.npy"), "rb").read()
    mt.write(p("badmagic.npy"), b"\x93NUMPX" + good[6:])
    mt.write(p("truncated.npy"), good[:-10])
    np.save(p("int32.npy"), (h * 10).astype(np.int32))
    np.save(p("oned.npy"), h.ravel())
    np.save(p("threed.npy"), h.reshape(10, 10, D))
    mt.write(p("absurd.npy"), mt.npy_bytes(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000000, 1000000), }",
        b"\0" * 64))
    np.save(p("fortran.npy"), np.asfortranarray(h))
    hn = h.copy()
    hn[80, 5] = np.nan  # row 80: rank 2 of 3 reads it (rows 67..99), rank 3 of 4 (rows 75..99)
    np.save(p("nan.npy"), hn)
    h64 = h.astype(np.float64)
    h64[42, 7] = 1e39  # finite in float64, infinite once rounded to float32
    np.save(p("f64_overflow.npy"), h64)
    mt.write(p("empty.npy"), b"")
    os.makedirs(p("adir"))  # an existing directory given as an output file
    rn = rng.standard_normal((E, D)).astype(np.float32)
    rn[4, 3] = np.nan
    np.save(p("router_nan.npy"), rn)


# name, ranks, arguments (files relative to the case directory, prefixed '@'), patterns that must
# all occur in the error line (case-insensitive)
CASES = [
    ("unknown_option", 1, SMALL + ["--bogus"], [r"unknown option", r"--bogus"]),
    ("missing_value", 1, SMALL + ["--top-k"], [r"--top-k", r"needs a value"]),
    ("top_k_0", 1, SMALL + ["--top-k", 0], [r"--top-k", r"\b0\b"]),
    ("top_k_gt_E", 1, SMALL + ["--top-k", 7], [r"--top-k", r"\b7\b", r"experts"]),
    ("cf_negative", 1, SMALL + ["--capacity-factor", -1], [r"--capacity-factor", r"-1"]),
    ("cf_abc", 1, SMALL + ["--capacity-factor", "abc"], [r"--capacity-factor", r"abc"]),
    ("cf_nan", 1, SMALL + ["--capacity-factor", "nan"], [r"--capacity-factor", r"nan"]),
    ("tokens_0", 1, ["--tokens", 0, "--hidden", D], [r"--tokens", r"\b0\b"]),
    ("hidden_0", 1, ["--tokens", N, "--hidden", 0], [r"--hidden", r"\b0\b"]),
    ("scope_bogus", 1, SMALL + ["--capacity-scope", "bogus"], [r"--capacity-scope", r"bogus"]),
    ("policy_bogus", 1, SMALL + ["--drop-policy", "bogus"], [r"--drop-policy", r"bogus"]),
    ("pad_dropless", 1, SMALL + ["--pad-to-capacity", "--capacity-factor", 0],
     [r"--pad-to-capacity", r"dropless|capacity-factor 0"]),
    ("ranks_gt_experts", 4, ["--tokens", N, "--hidden", D, "--experts", 3],
     [r"\b4 ranks\b", r"\b3 experts\b"]),
    ("json_no_dir", 1, SMALL + ["--json", "@nodir/sub/x.json"], [r"--json", r"nodir/sub/x\.json"]),
    ("json_no_dir_R3", 3, SMALL + ["--json", "@nodir/sub/x.json"], [r"--json", r"nodir/sub"]),
    ("json_is_directory", 1, SMALL + ["--json", "@adir"], [r"--json", r"adir", r"directory"]),
    ("dump_output_dir_slash_R3", 3, SMALL + ["--dump-output", "@adir/"],
     [r"adir", r"directory"]),
    ("json_empty_path", 1, SMALL + ["--json", ""], [r"--json"]),
    ("too_big_mpi_count", 1, ["--tokens", 1000000000000, "--hidden", 65536],
     [r"1000000000000|exceed|memory|too (big|large)"]),
    ("too_big_memory", 1, ["--tokens", 1000000, "--hidden", 65536],
     [r"GiB|memory", r"available|reduce"]),
    ("too_big_memory_R4", 4, ["--tokens", 1000000, "--hidden", 65536, "--experts", 8],
     [r"GiB|memory", r"available|reduce"]),
    # .npy inputs
    ("npy_missing", 1, ["--tokens-file", "@missing.npy"], [r"missing\.npy", r"no such file"]),
    ("npy_missing_R3", 3, ["--tokens-file", "@missing.npy", "--experts", E],
     [r"missing\.npy", r"no such file"]),
    ("npy_bad_magic", 1, ["--tokens-file", "@badmagic.npy"], [r"badmagic\.npy", r"magic|not a \.npy"]),
    ("npy_bad_magic_R3", 3, ["--tokens-file", "@badmagic.npy", "--experts", E],
     [r"badmagic\.npy", r"magic|not a \.npy"]),
    ("npy_truncated", 1, ["--tokens-file", "@truncated.npy"], [r"truncated\.npy", r"truncated|short"]),
    ("npy_truncated_R3", 3, ["--tokens-file", "@truncated.npy", "--experts", E],
     [r"truncated\.npy", r"truncated|short"]),
    ("npy_int32", 1, ["--tokens-file", "@int32.npy"], [r"int32\.npy", r"dtype|i4|int"]),
    ("npy_int32_R4", 4, ["--tokens-file", "@int32.npy", "--experts", E],
     [r"int32\.npy", r"dtype|i4|int"]),
    ("npy_1d", 1, ["--tokens-file", "@oned.npy"], [r"oned\.npy", r"\b1 dimension|2-d|two-dim"]),
    ("npy_3d", 1, ["--tokens-file", "@threed.npy"], [r"threed\.npy", r"\b3 dimension|2-d|two-dim"]),
    ("npy_3d_R3", 3, ["--tokens-file", "@threed.npy", "--experts", E],
     [r"threed\.npy", r"\b3 dimension|2-d|two-dim"]),
    ("npy_absurd", 1, ["--tokens-file", "@absurd.npy"],
     [r"absurd\.npy", r"absurd|too large|too big", r"10000000000000"]),
    ("npy_absurd_R4", 4, ["--tokens-file", "@absurd.npy", "--experts", E],
     [r"absurd\.npy", r"absurd|too large|too big"]),
    ("npy_fortran", 1, ["--tokens-file", "@fortran.npy"], [r"fortran\.npy", r"fortran order"]),
    ("npy_fortran_R4", 4, ["--tokens-file", "@fortran.npy", "--experts", E],
     [r"fortran\.npy", r"fortran order"]),
    ("npy_nan", 1, ["--tokens-file", "@nan.npy"], [r"nan\.npy", r"non-finite|nan", r"row 80\b"]),
    ("npy_nan_last_rank_R3", 3, ["--tokens-file", "@nan.npy", "--experts", E],
     [r"nan\.npy", r"non-finite|nan", r"row 80\b"]),
    ("npy_nan_last_rank_R4", 4, ["--tokens-file", "@nan.npy", "--experts", E],
     [r"nan\.npy", r"non-finite|nan", r"row 80\b"]),
    ("npy_f64_overflow", 1, ["--tokens-file", "@f64_overflow.npy"],
     [r"f64_overflow\.npy", r"row 42\b", r"non-finite|range|overflow|large"]),
    ("npy_empty_file", 1, ["--tokens-file", "@empty.npy"], [r"empty\.npy", r"magic|empty|short|not a"]),
    ("router_nan_R3", 3, SMALL + ["--router-file", "@router_nan.npy"],
     [r"router_nan\.npy", r"non-finite|nan"]),
    ("tokens_disagree", 1, ["--tokens-file", "@good.npy", "--tokens", 99],
     [r"--tokens 99", r"disagree|does not match|mismatch", r"good\.npy"]),
    ("tokens_disagree_R3", 3, ["--tokens-file", "@good.npy", "--tokens", 99, "--experts", E],
     [r"--tokens 99", r"disagree|does not match|mismatch"]),
    ("hidden_disagree", 1, ["--tokens-file", "@good.npy", "--hidden", 17],
     [r"--hidden 17", r"disagree|does not match|mismatch", r"good\.npy"]),
    ("router_columns", 1, ["--tokens-file", "@good.npy", "--router-file", "@router17.npy"],
     [r"router17\.npy", r"\b17\b", r"\b16\b"]),
    ("router_columns_R4", 4, ["--tokens-file", "@good.npy", "--router-file", "@router17.npy"],
     [r"router17\.npy", r"\b17\b", r"\b16\b"]),
    ("router_columns_hidden", 1, ["--tokens", N, "--hidden", D, "--router-file", "@router17.npy"],
     [r"router17\.npy", r"\b17\b", r"\b16\b"]),
]


def run_case(ck, exe, root, name, ranks, args, patterns):
    d = os.path.join(root, name)
    os.makedirs(d)
    make_files(d)
    inputs = sorted(os.listdir(d))
    out = os.path.join(d, "out")
    os.makedirs(out)
    argv = [os.path.join(d, a[1:]) if isinstance(a, str) and a.startswith("@") else a for a in args]
    outputs = []
    for opt, fname in (("--json", "r.json"), ("--dump-routing", "r.csv"),
                       ("--dump-output", "y.npy")):
        if opt not in argv:
            outputs += [opt, os.path.join(out, fname)]
    tag = "%s (R=%d)" % (name, ranks)
    try:
        r = mt.run(exe, ranks, outputs + argv, timeout=TIMEOUT, cwd=d)
    except mt.subprocess.TimeoutExpired:
        ck.check(False, tag + ": ends within %d s (it hung)" % TIMEOUT)
        return
    ck.equal(r.returncode, 2, tag + ": exit status 2")
    lines = r.own_stderr
    ok = ck.check(len(lines) == 1 and lines[0].startswith("moesim: error: "),
                  tag + ": exactly one 'moesim: error:' line on stderr", r.describe())
    if ok:
        for pat in patterns:
            ck.check(re.search(pat, lines[0], re.IGNORECASE),
                     tag + ": message names the problem (/%s/)" % pat, lines[0])
        print("%-24s R=%d  %.2f s  %s" % (name, ranks, r.elapsed, lines[0]))
    ck.equal(r.stdout, "", tag + ": nothing on stdout")
    ck.equal(sorted(os.listdir(out)), [], tag + ": nothing written at the output paths")
    ck.equal(sorted(os.listdir(d)), sorted(inputs + ["out"]),
             tag + ": no stray file beside the inputs")
    ck.equal(os.listdir(os.path.join(d, "adir")), [], tag + ": nothing written into adir/")


def parse_only(case):
    """A case refused while the options are parsed (one rank, no file, no output path, no size
    check): under the sanitizers those paths are the option parser's, which the fuzz-config target
    already runs under ASan and UBSan, so the sanitized run leaves them out."""
    name, ranks, args = case[0], case[1], case[2]
    return (ranks == 1 and not name.startswith("too_big")
            and not any(isinstance(a, str) and a.startswith("@") for a in args)
            and "--json" not in args)


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_bad_input")
    root = mt.workdir()
    for case in CASES:
        if mt.sanitized() and parse_only(case):
            continue
        run_case(ck, exe, root, *case)
    # the control: the same harness with good inputs succeeds and writes all three files
    d = os.path.join(root, "control")
    os.makedirs(d)
    make_files(d)
    r = mt.run(exe, 3, ["--tokens-file", os.path.join(d, "good.npy"), "--router-file",
                        os.path.join(d, "router.npy"), "--quiet",
                        "--json", os.path.join(d, "r.json"), "--dump-routing",
                        os.path.join(d, "r.csv"), "--dump-output", os.path.join(d, "y.npy")],
               timeout=TIMEOUT)
    ck.equal(r.returncode, 0, "control: good inputs run")
    ck.check(all(os.path.exists(os.path.join(d, f)) for f in ("r.json", "r.csv", "y.npy")),
             "control: all three outputs written")
    ck.check(not [f for f in os.listdir(d) if ".tmp." in f], "control: no *.tmp.* left")
    ck.finish()


if __name__ == "__main__":
    main()
