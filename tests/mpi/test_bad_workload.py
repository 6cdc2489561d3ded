"""Bad inputs to the workload, replay and ablation options are refused before the layer runs: each
run ends within 10 s (a hang hits a 20 s timeout and fails), exits 2, prints on stderr exactly one
line `moesim: error: ...` that names the problem (patterns per case, case-insensitive), nothing on
stdout, and writes nothing at its --json / --dump-routing / --dump-output paths
(moetest.check_refused). The logits-file cases are repeated at R = 3 or 4, one with a NaN in a row
only the last rank reads, so the ranks must agree on an error rank 0 did not see.
"""

import os

import numpy as np

import moetest as mt

N, D, E = 100, 16, 6
SMALL = ["--tokens", N, "--hidden", D, "--experts", E]


def make_files(d):
    rng = np.random.default_rng(1)
    p = lambda name: os.path.join(d, name)
    z = rng.standard_normal((N, E)).astype(np.float32)
    np.save(p("logits.npy"), z)
    np.save(p("logits_1d.npy"), z.ravel())
    np.save(p("logits_int.npy"), (z * 10).astype(np.int32))
    np.save(p("logits_3cols.npy"), z[:, :3])
    zn = z.copy()
    zn[80, 2] = np.nan  # rows 67..99 are rank 2's of 3, 75..99 rank 3's of 4
    np.save(p("logits_nan.npy"), zn)
    np.save(p("tokens90.npy"), rng.standard_normal((90, D)).astype(np.float32))
    np.save(p("router.npy"), rng.standard_normal((E, D)).astype(np.float32))


CASES = [
    # name, ranks, arguments ('@name' is a file of make_files), patterns for the error line
    ("cf_list_empty_item", 1, SMALL + ["--capacity-factor", "1.0,,2"],
     [r"--capacity-factor", r"1\.0,,2"]),
    ("cf_list_trailing_comma", 1, SMALL + ["--capacity-factor", "1.0,"],
     [r"--capacity-factor", r"'1\.0,'"]),
    ("cf_list_negative", 1, SMALL + ["--capacity-factor", "1,-1"],
     [r"--capacity-factor", r"-1", r">= 0|negative"]),
    ("cf_list_word", 1, SMALL + ["--capacity-factor", "1,abc"], [r"--capacity-factor", r"abc"]),
    ("cf_list_17_values", 1, SMALL + ["--capacity-factor", ",".join(["1"] * 17)],
     [r"--capacity-factor", r"at most 16"]),
    ("skew_negative", 1, SMALL + ["--skew", "-1"], [r"--skew", r"-1"]),
    ("skew_nan", 1, SMALL + ["--skew", "nan"], [r"--skew", r"nan"]),
    ("hot_share_1.5", 1, SMALL + ["--hot-experts", 2, "--hot-share", "1.5"],
     [r"--hot-share", r"1\.5"]),
    ("hot_share_1", 1, SMALL + ["--hot-experts", 2, "--hot-share", "1"],
     [r"--hot-share", r"between 0 and 1|< ?1|strictly"]),
    ("hot_share_0", 1, SMALL + ["--hot-experts", 2, "--hot-share", "0"],
     [r"--hot-share", r"between 0 and 1|> ?0|strictly"]),
    ("hot_share_without_hot_experts", 1, SMALL + ["--hot-share", "0.3"],
     [r"--hot-share", r"--hot-experts"]),
    ("hot_experts_E", 1, SMALL + ["--hot-experts", E], [r"--hot-experts 6", r"experts \(6\)|\b6 experts"]),
    ("hot_experts_E_R3", 3, SMALL + ["--hot-experts", E], [r"--hot-experts 6"]),
    ("hot_experts_negative", 1, SMALL + ["--hot-experts", -1], [r"--hot-experts", r"-1"]),
    ("clusters_negative", 1, SMALL + ["--clusters", -2], [r"--clusters", r"-2"]),
    ("clusters_with_tokens_file", 1, ["--tokens-file", "@tokens90.npy", "--clusters", 3],
     [r"--clusters", r"--tokens-file"]),
    ("pad_with_cf_list_0", 1, SMALL + ["--pad-to-capacity", "--capacity-factor", "1.0,0"],
     [r"--pad-to-capacity", r"dropless|capacity-factor 0"]),
    ("pad_with_cf_list_0_first_R2", 2, SMALL + ["--pad-to-capacity", "--capacity-factor", "0,1.0"],
     [r"--pad-to-capacity", r"dropless|capacity-factor 0"]),
    # --logits-file
    ("logits_missing", 1, ["--logits-file", "@missing.npy"], [r"missing\.npy", r"no such file"]),
    ("logits_missing_R3", 3, ["--logits-file", "@missing.npy"], [r"missing\.npy", r"no such file"]),
    ("logits_1d", 1, ["--logits-file", "@logits_1d.npy"],
     [r"logits_1d\.npy", r"\b1 dimension|2-d|two-dim"]),
    ("logits_int32", 1, ["--logits-file", "@logits_int.npy"], [r"logits_int\.npy", r"dtype|i4|int"]),
    ("logits_rows_vs_tokens", 1, ["--logits-file", "@logits.npy", "--tokens", 99],
     [r"logits\.npy", r"\b100 rows", r"\b99 tokens"]),
    ("logits_rows_vs_tokens_R3", 3, ["--logits-file", "@logits.npy", "--tokens", 99],
     [r"logits\.npy", r"\b100 rows", r"\b99 tokens"]),
    ("logits_rows_vs_tokens_file", 1, ["--logits-file", "@logits.npy", "--tokens-file",
                                        "@tokens90.npy"],
     [r"logits\.npy", r"\b100 rows", r"\b90 tokens"]),
    ("logits_cols_vs_experts", 1, ["--logits-file", "@logits.npy", "--experts", 8],
     [r"--experts 8", r"logits\.npy", r"\b6 columns"]),
    ("logits_cols_vs_experts_R4", 4, ["--logits-file", "@logits.npy", "--experts", 8],
     [r"--experts 8", r"logits\.npy", r"\b6 columns"]),
    ("logits_3_experts_R4", 4, ["--logits-file", "@logits_3cols.npy"],
     [r"\b4 ranks", r"\b3 experts"]),
    ("logits_with_router_file", 1, ["--logits-file", "@logits.npy", "--router-file", "@router.npy",
                                    "--hidden", D],
     [r"--logits-file", r"--router-file"]),
    ("logits_with_router_file_R3", 3, ["--logits-file", "@logits.npy", "--router-file",
                                       "@router.npy", "--hidden", D],
     [r"--logits-file", r"--router-file"]),
    ("logits_nan_last_rank_R3", 3, ["--logits-file", "@logits_nan.npy", "--hidden", D],
     [r"logits_nan\.npy", r"non-finite|nan", r"row 80\b"]),
    ("logits_nan_last_rank_R4", 4, ["--logits-file", "@logits_nan.npy", "--hidden", D],
     [r"logits_nan\.npy", r"non-finite|nan", r"row 80\b"]),
]


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_bad_workload")
    root = mt.workdir()
    files = os.path.join(root, "files")
    os.makedirs(files)
    make_files(files)
    before = sorted(os.listdir(files))
    for name, ranks, args, patterns in CASES:
        argv = [os.path.join(files, a[1:]) if isinstance(a, str) and a.startswith("@") else a
                for a in args]
        mt.check_refused(ck, exe, "%s (R=%d)" % (name, ranks), ranks, argv, patterns, root)
    ck.equal(sorted(os.listdir(files)), before, "no stray file beside the inputs")

    # the control: good values of the same options run
    out = os.path.join(root, "control")
    os.makedirs(out)
    good = [
        ("cf_list_16_values", 1, SMALL + ["--capacity-factor", ",".join(["1"] * 16), "--iters", 1]),
        ("hot_and_skew", 1, SMALL + ["--hot-experts", 5, "--hot-share", 0.5, "--skew", 0]),
        ("logits_R3", 3, ["--logits-file", os.path.join(files, "logits.npy"), "--tokens", N,
                          "--experts", E, "--hidden", D, "--clusters", 2]),
        ("pad_cf_list", 2, SMALL + ["--pad-to-capacity", "--capacity-factor", "1.0,2.0"]),
    ]
    for name, ranks, args in good:
        r = mt.run(exe, ranks, args + ["--quiet", "--json", os.path.join(out, name + ".json")],
                   timeout=20)
        ck.equal(r.returncode, 0, "control %s: runs" % name)
        ck.check(os.path.exists(os.path.join(out, name + ".json")), "control %s: JSON written" % name)
    ck.finish()


if __name__ == "__main__":
    main()
