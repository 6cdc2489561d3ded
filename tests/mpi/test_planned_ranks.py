"""--predict-only --ranks R plans R ranks with fewer processes (issue 10): its numbers are a real
R-process --predict-only run's.

For layers covering both capacity scopes, every drop policy, expert choice, per-rank rows with fp8
on the wire, strided and EPLB placement with replicas (from the batch and from a loads file), per-rank rows
under the two-level exchange (node rows),
padding, group-limited routing with one group per node and a capacity-factor list, and for
R = 1 .. 4: `mpirun -n P moesim ... --predict-only --ranks R` (P = 1, and 2 where R >= 2) against
`mpirun -n R moesim ... --predict-only`:
- exactly: every expert's owner and routed count; the ablation's capacities, exact drops and empty
  slots, largest load and the cf that drops nothing; the balance counts (tokens_per_expert, gini,
  max_over_mean) and the rank overload; the replication block; traffic rows, dispatch and combine
  bytes, metadata and dedup saving; the bytes and messages that stay on their rank and that leave
  their node; the full-run memory estimate; config.ranks = R;
- within 1e-6 relative: the figures that sum floats over the ranks' tokens in rank order (the mean
  gate probabilities P, the aux and z losses, the closed-form predictions, the projection);
- the traffic within a node (planned ranks have no hwloc placement, so it is same_node where the
  real run's hwloc says same_numa) adds up to the real run's over the intranode classes.
Also the refusals: --ranks without --predict-only, more processes than --ranks, --ranks above the
experts, and --ranks 0.
"""

import os

import numpy as np

import moetest as mt

N, D, E = 480, 24, 8
BASE = ["--tokens", N, "--hidden", D, "--experts", E, "--iters", 1, "--warmup", 0, "--seed", 9,
        "--predict-only"]
HOT = ["--hot-experts", 1, "--hot-share", "0.4"]  # a token-choice router with one hot expert
INTRA = ("same_numa", "same_package", "same_node")


def layers(loads_path):
    """(name, extra options, rank counts)"""
    return [
        ("position_global", ["--capacity-factor", "1.0,1.5"], (1, 2, 3, 4)),
        ("position_local_per_rank_fp8",
         ["--capacity-scope", "local", "--top-k", 3, "--dispatch", "per-rank", "--wire", "fp8",
          "--capacity-factor", "1.0"], (1, 2, 3, 4)),
        ("probs_local_strided",
         ["--drop-policy", "probs", "--capacity-scope", "local", "--placement", "strided"], (2, 3)),
        ("choice_global_pad", ["--drop-policy", "choice", "--pad-to-capacity",
                               "--capacity-factor", "0.8"], (2, 4)),
        ("random_local_eplb",
         ["--drop-policy", "random", "--capacity-scope", "local", "--redundant-experts", 4,
          "--dispatch", "per-rank", "--top-k", 3], (2, 3, 4)),
        ("reroute_global", ["--drop-policy", "reroute", "--capacity-factor", "1.0"], (2, 3)),
        ("reroute_local", ["--drop-policy", "reroute", "--capacity-scope", "local",
                           "--capacity-factor", "1.0"], (3, 4)),
        ("expert_choice_local", ["--routing", "expert-choice", "--capacity-scope", "local",
                                 "--skew", "0.8"], (2, 3)),
        ("expert_choice_global", ["--routing", "expert-choice", "--skew", "0.8"], (4,)),
        ("groups_per_node", ["--group-top-k", 1, "--ranks-per-node", 2, "--min-capacity", 70],
         (3, 4)),
        ("per_rank_two_level", ["--dispatch", "per-rank", "--a2a", "hierarchical", "--top-k", 3,
                                "--ranks-per-node", 2, "--wire", "fp8"], (3, 4)),
        ("eplb_file", ["--placement", "eplb", "--eplb-from", loads_path, "--dispatch", "per-rank",
                       "--ranks-per-node", 2], (4,)),
    ]


def close_tree(ck, got, want, tag):
    """got equals want: integers, strings and booleans exactly, floats within 1e-6 relative."""
    if isinstance(want, dict):
        if ck.equal(sorted(got), sorted(want), tag + ": keys"):
            for k in want:
                close_tree(ck, got[k], want[k], tag + "." + k)
    elif isinstance(want, list):
        if ck.equal(len(got), len(want), tag + ": length"):
            for i, (g, w) in enumerate(zip(got, want)):
                close_tree(ck, g, w, "%s[%d]" % (tag, i))
    elif isinstance(want, float) or isinstance(got, float):
        ck.close(float(got), float(want), tag, rtol=1e-6, atol=1e-9)
    else:
        ck.equal(got, want, tag)


def compare(ck, tag, plan, run, R):
    ck.equal(plan["config"]["ranks"], R, tag + ": config.ranks")
    ck.equal(plan["config"]["planned_ranks"], True, tag + ": config.planned_ranks")
    ck.equal(run["config"]["planned_ranks"], False, tag + ": a launched run's planned_ranks")
    for key in ("experts", "ablation", "load_balance", "replication"):
        close_tree(ck, plan[key], run[key], tag + ": " + key)
    for key in ("rows", "dispatch_bytes", "combine_bytes", "metadata_bytes", "dedup_saving",
                "node_rows", "node_row_bytes"):
        ck.equal(plan["traffic"][key], run["traffic"][key], tag + ": traffic." + key)
    for block in ("by_class", "by_class_hierarchical"):
        p, r = plan["traffic"][block], run["traffic"][block]
        for cls in ("same_rank", "other_node"):
            ck.equal(p[cls], r[cls], "%s: traffic.%s.%s" % (tag, block, cls))
        for what in ("bytes", "messages"):
            ck.equal(sum(p[c][what] for c in INTRA), sum(r[c][what] for c in INTRA),
                     "%s: traffic.%s within a node, %s" % (tag, block, what))
    close_tree(ck, plan["projection"], run["projection"], tag + ": projection")
    ck.equal(plan["memory"]["full_run_estimate_bytes"], run["memory"]["full_run_estimate_bytes"],
             tag + ": memory.full_run_estimate_bytes")
    ck.equal([p["node"] for p in plan["placement"]], [p["node"] for p in run["placement"]],
             tag + ": the planned ranks' nodes")


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_planned_ranks")
    wd = mt.workdir()
    net = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "launch",
                       "nvlink-ib400.network")
    loads_path = os.path.join(wd, "loads.csv")
    with open(loads_path, "w") as fh:
        fh.write("\n".join(str(v) for v in (900, 50, 40, 300, 30, 20, 10, 5)) + "\n")
    for name, extra, ranks in layers(loads_path):
        for R in ranks:
            hot = [] if "expert-choice" in extra else HOT
            args = BASE + hot + extra + ["--network", net]
            tag = "%s_R%d" % (name, R)
            run = ck.guard(tag + " run", mt.run_full, exe, R, args, wd, tag + "_run",
                           routing=False, output=False)
            for P in sorted({1, min(2, R)}):
                plan = ck.guard(tag + " plan P%d" % P, mt.run_full, exe, P,
                                args + ["--ranks", R], wd, "%s_P%d" % (tag, P), routing=False,
                                output=False)
                if run is not None and plan is not None:
                    compare(ck, "%s_P%d" % (tag, P), plan.json, run.json, R)
                    ck.equal(plan.json["config"]["processes"], P, tag + ": config.processes")
                    ck.equal(len(plan.json["memory"]["per_rank"]), P,
                             tag + ": memory.per_rank lists the processes")

    # a plan larger than the machine: EP 64 from two processes, with its planned nodes
    big = ["--tokens", 64 * 64, "--hidden", 64, "--experts", 256, "--top-k", 8, "--predict-only",
           "--ranks", 64, "--ranks-per-node", 8, "--dispatch", "per-rank", "--network", net]
    plan = ck.guard("ep64 plan", mt.run_full, exe, 2, big, wd, "ep64", routing=False, output=False,
                    quiet=False)
    if plan is not None:
        rows = np.array(plan.json["traffic"]["rows"])
        ck.equal(rows.shape, (64, 64), "ep64: a 64 x 64 row matrix")
        ck.check(rows.sum() <= 64 * 64 * 8 and rows.sum() >= 64 * 64,
                 "ep64: between one and k rows per token", str(rows.sum()))
        ck.equal(len({p["node"] for p in plan.json["placement"]}), 8, "ep64: 8 planned nodes")
        ck.check(plan.json["traffic"]["by_class"]["other_node"]["bytes"] > 0,
                 "ep64: traffic leaves the nodes")
        ck.check("planned with --ranks" in plan.run.stdout, "ep64: the report says planned",
                 plan.run.stdout[:400])

    mt.check_refused(ck, exe, "ranks_without_predict", 1, BASE[:-1] + ["--ranks", 4],
                     ["--ranks", "--predict-only"], wd)
    mt.check_refused(ck, exe, "ranks_below_processes", 3, BASE + ["--ranks", 2],
                     ["--ranks 2", "3 processes"], wd)
    mt.check_refused(ck, exe, "ranks_above_experts", 1, BASE + ["--ranks", 16],
                     ["16 ranks", "8 experts"], wd)
    mt.check_refused(ck, exe, "ranks_zero", 1, BASE + ["--ranks", 0], ["--ranks", "between 1"], wd)
    return ck.finish()


if __name__ == "__main__":
    raise SystemExit(main())
