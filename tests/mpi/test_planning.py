"""--predict-only plans without moving anything (issue 10): the traffic it reports is the run's.

For R = 1 .. 4 and several layers (the default exchange; --dispatch per-rank with --wire fp8;
--drop-policy reroute in local scope; expert choice; noisy top-k with input jitter and clustered
tokens; a --tokens-file input), the --predict-only JSON's traffic (rows, dispatch and combine
bytes, metadata, dedup saving, by_class) and, with --network, its projection equal those of a real
run of the same configuration, exactly (the same decision, computed from the same logits: under
--predict-only h is generated or read a chunk of rows at a time, and the logits of each token are
the same float32 values). Also: a layer far too wide to run here (d = 2^17, experts of 4 GiB
each) plans with --predict-only in a small memory estimate and reports its traffic, while the real
run is refused for memory.
"""

import os

import numpy as np

import moetest as mt

N, D, E = 600, 40, 8
BASE = ["--tokens", N, "--hidden", D, "--experts", E, "--capacity-factor", "1.0", "--iters", 1,
        "--warmup", 0, "--seed", 21]
LAYERS = [
    ("default", []),
    ("per_rank_fp8", ["--top-k", 3, "--dispatch", "per-rank", "--wire", "fp8"]),
    ("reroute_local", ["--drop-policy", "reroute", "--capacity-scope", "local"]),
    ("expert_choice", ["--routing", "expert-choice"]),
    ("noise", ["--noisy-top-k", "--input-jitter", "0.2", "--clusters", 4, "--drop-policy", "probs"]),
]
KEYS = ("rows", "dispatch_bytes", "combine_bytes", "metadata_bytes", "dedup_saving", "by_class",
        "by_class_per_rank", "by_class_hierarchical")


def compare(ck, tag, run, plan):
    for key in KEYS:
        ck.equal(plan["traffic"].get(key), run["traffic"].get(key), tag + ": traffic." + key)
    ck.equal(plan["projection"], run["projection"], tag + ": projection")


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_planning")
    wd = mt.workdir()
    net = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "launch",
                       "nvlink-ib400.network")
    h = np.random.default_rng(5).standard_normal((N, D)).astype(np.float32)
    tokens = os.path.join(wd, "h.npy")
    np.save(tokens, h)
    layers = LAYERS + [("tokens_file", ["--tokens-file", tokens, "--tokens", N, "--hidden", D])]
    for name, extra in layers:
        for R in (1, 2, 3, 4):
            tag = "%s_R%d" % (name, R)
            args = BASE + extra + ["--network", net] + (["--ranks-per-node", 2] if R == 4 else [])
            run = ck.guard(tag + " run", mt.run_full, exe, R, args, wd, tag + "_run", routing=False,
                           output=False)
            plan = ck.guard(tag + " plan", mt.run_full, exe, R, args + ["--predict-only"], wd,
                            tag + "_plan", routing=False, output=False)
            if run is None or plan is None:
                continue
            compare(ck, tag, run.json, plan.json)
            ck.equal([e["routed"] for e in plan.json["experts"]],
                     [e["routed"] for e in run.json["experts"]], tag + ": routed as the run's")

    # a layer too wide to run: planned in little memory
    wide = ["--tokens", 512, "--hidden", 1 << 17, "--ffn", 8192, "--experts", 8, "--iters", 1,
            "--warmup", 0, "--max-memory", "6G", "--dispatch", "per-rank", "--wire", "fp8"]
    plan = ck.guard("wide plan", mt.run_full, exe, 2, wide + ["--predict-only"], wd, "wide",
                    routing=False, output=False)
    if plan is not None:
        est = plan.json["memory"]["estimate_bytes"]
        ck.check(est < 400 << 20, "wide: the plan's estimate stays small", "%d bytes" % est)
        ck.check(plan.json["traffic"] is not None and
                 int(np.sum(plan.json["traffic"]["rows"])) > 0, "wide: traffic planned")
        rows = np.array(plan.json["traffic"]["rows"])
        ck.check(np.array_equal(np.array(plan.json["traffic"]["combine_bytes"]),
                                rows.T * 2 * (1 << 17)), "wide: combine bytes in bf16")
    mt.check_refused(ck, exe, "wide_run", 2, wide, ["would need", "--max-memory"], wd)
    return ck.finish()


if __name__ == "__main__":
    raise SystemExit(main())
