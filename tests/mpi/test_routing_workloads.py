"""--workload (issue 12): routing defined by the workload itself, no router.

  - every kind at R = 1 and 3 (zero-expert-rank at 2 and 4): the routing dumped by
    --dump-routing equals the NumPy reference (moetest.wl_route, written from docs/workloads.md)
    expert for expert and gate for gate (float32), and the drops are those of the position policy
    on it (moetest.apply_capacity); over --steps 5, every step's routed counts equal the
    reference's for that step;
  - R-invariance: the step series of every kind but zero-expert-rank is the same at R = 1 and 3;
  - each kind's defining property over the steps: k distinct experts per token; hot-rank's hot
    set on rank 0, spread-hot's on --hot-experts different ranks, zero-expert-rank's last rank
    receiving nothing; the hot set's share of the assignments near --hot-share; the rotation
    moving every --period steps; burst hot on every P-th step only; balanced within binomial noise;
  - config.workload, period, workload_hot_experts, workload_hot_share in the JSON;
  - --eplb-from previous: each step planned from the step before's loads, equal to a static plan
    from a file of those loads (eplb_previous);
  - refusals: an unknown kind, --period without rotating-hotspot or burst, a router option with a
    workload, --hot-experts with balanced, hot-rank with more hot experts than rank 0 holds.
"""

import json
import os

import numpy as np

import moetest as mt

SEED, N, D, E, K = 9, 400, 8, 12, 2
KINDS = ["balanced", "hot-experts", "hot-rank", "spread-hot", "zero-expert-rank",
         "rotating-hotspot", "burst", "source-ragged"]


def owner_rank(e, ranks):
    return mt.owner(E, ranks, e)


def eplb_previous(ck, exe, wd):
    """--eplb-from previous on rotating-hotspot (R = 4, E 12 + 4 replicas, 3 steps): step t's
    plan is EPLB on step t - 1's routed loads, so step t equals step t of a run whose static plan
    is read from a file of those loads (--eplb-from FILE), exactly: rank overload, drops, routed
    counts. Step 0 (no step before) is planned from its own batch, as self."""
    common = ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", K, "--seed", SEED,
              "--redundant-experts", 4, "--steps", 3, "--iters", 1, "--warmup", 0]
    eplb_previous_case(ck, exe, wd, "rotating", common + ["--workload", "rotating-hotspot",
                                                         "--hot-experts", 2])
    # a router that reroutes: the plan is of the router's choices, not of the rerouted experts
    eplb_previous_case(ck, exe, wd, "reroute", common + ["--hot-experts", 2, "--hot-share", "0.6",
                                                        "--drop-policy", "reroute",
                                                        "--capacity-factor", "1.0"])


def eplb_previous_case(ck, exe, wd, name, args):
    path = os.path.join(wd, name + "_prev.json")
    r = mt.run(exe, 4, [str(a) for a in args] + ["--eplb-from", "previous", "--quiet", "--json",
                                                 path])
    if not ck.check(r.returncode == 0, "--eplb-from previous runs", r.describe()):
        return
    with open(path) as fh:
        prev = json.load(fh)
    ck.equal(prev["config"]["eplb_from"], "previous", "config.eplb_from previous")
    key = lambda st: (st["load_balance"]["rank_overload"], st["drops"], st["routed"])
    for t in range(3):
        loads = prev["steps"][t - 1]["routed"] if t > 0 else prev["steps"][0]["routed"]
        lpath = os.path.join(wd, "%s_loads%d.csv" % (name, t))
        with open(lpath, "w") as fh:
            fh.write("\n".join(str(x) for x in loads) + "\n")
        fpath = os.path.join(wd, "%s_file%d.json" % (name, t))
        r = mt.run(exe, 4, [str(a) for a in args] + ["--eplb-from", lpath, "--quiet", "--json",
                                                     fpath])
        if not ck.check(r.returncode == 0, "--eplb-from FILE runs", r.describe()):
            continue
        with open(fpath) as fh:
            static = json.load(fh)
        ck.equal(key(prev["steps"][t]), key(static["steps"][t]),
                 "%s: --eplb-from previous, step %d = a plan from step %d's loads"
                 % (name, t, max(t - 1, 0)))
    moved = [st["load_balance"]["rank_overload"] for st in prev["steps"]]
    ck.check(name != "rotating" or len(set(moved)) > 1, name + ": the plans differ between steps",
             repr(moved))


def ragged(ck, exe, wd):
    """Uneven token blocks: source-ragged's r + 1 shares at R = 3 and 4, and --tokens-per-rank
    with the router (no workload) at R = 3: each rank sends its block's accepted rows
    (traffic.rows_sent), the routing is the even-block run's (token ids do not move), and in local
    scope (the blocks are the capacity groups) the drops and empty slots are the position policy's
    on those groups."""
    base = ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", K, "--seed", SEED,
            "--iters", 1, "--warmup", 0, "--capacity-factor", "1.0", "--capacity-scope", "local"]
    cases = [("source-ragged R=3", 3, ["--workload", "source-ragged"], mt.ragged_blocks(N, 3)),
             ("source-ragged R=4", 4, ["--workload", "source-ragged"], mt.ragged_blocks(N, 4)),
             ("source-ragged listed R=3", 3, ["--workload", "source-ragged",
                                              "--tokens-per-rank", "50,0,350"], [50, 0, 350]),
             ("router R=3", 3, ["--tokens-per-rank", "100,250,50"], [100, 250, 50])]
    for tag, R, extra, blocks in cases:
        ck.equal(sum(blocks), N, tag + ": the blocks sum to the batch")
        res = ck.guard(tag, mt.run_full, exe, R, base + extra, wd, tag.replace(" ", "_").replace(
            "=", ""), output=False)
        even = ck.guard(tag + " even", mt.run_full, exe, 1, base + [x for x in extra if x not in (
            "--tokens-per-rank", "50,0,350", "100,250,50")], wd, tag.replace(" ", "_").replace(
            "=", "") + "_even", output=False)
        if res is None or even is None:
            continue
        ck.equal(res.json["workload"]["tokens_per_rank"], blocks, tag + ": workload.tokens_per_rank")
        ck.equal(even.json["workload"]["tokens_per_rank"],
                 [N] if "source-ragged" in extra else None,
                 tag + ": workload.tokens_per_rank at R = 1 (null for the router's even blocks)")
        expert, _, _ = res.routing_matrix(K)
        want, _, _ = even.routing_matrix(K)
        ck.equal(expert.tolist(), want.tolist(), tag + ": the routing of the even blocks")
        cap = mt.apply_capacity(expert, E, "1.0", "local", R, blocks=blocks)
        ck.equal(res.json["traffic"]["rows_sent"],
                 [int(cap["accepted"][f:f + c].sum()) for f, c in mt.token_blocks(N, R, blocks)],
                 tag + ": each rank sends its block's accepted rows")
        ck.equal((res.json["drops"]["dropped_assignments"], res.json["waste"]["empty_slots"]),
                 (cap["dropped_assignments"], cap["empty_slots"]),
                 tag + ": local-scope drops and empty slots on the ragged groups")
    r = mt.run(exe, 3, [str(a) for a in base + ["--tokens-per-rank", "100,250,50"]])
    ck.check(r.returncode == 0 and "3 groups of 50 to 250 tokens (local scope" in r.stdout,
             "the text report names the ragged groups", r.describe())
    for extra, pat in ((["--tokens-per-rank", "100,200"], "2 counts for 3 ranks"),
                       (["--tokens-per-rank", "100,200,x"], "entry 3"),
                       (["--tokens-per-rank", "100,200,-1"], "entry 3"),
                       (["--tokens-per-rank", "100,200,200"], "sums to"),
                       (["--tokens-per-rank", "100,200,100,0"], "more than one count"),
                       (["--tokens-per-rank", "400", "--predict-only", "--ranks", 2], "--ranks"),
                       (["--workload", "source-ragged", "--predict-only", "--ranks", 2],
                        "--ranks")):
        mt.check_refused(ck, exe, "refused " + " ".join(str(x) for x in extra),
                         1 if "--ranks" in extra else 3, base + extra, [pat], wd)


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_routing_workloads")
    wd = mt.workdir()
    series = {}
    for kind in KINDS:
        rank_list = (2, 4) if kind == "zero-expert-rank" else (1, 3)
        for ranks in rank_list:
            tag = "%s_R%d" % (kind, ranks)
            extra = ["--hot-experts", 2, "--hot-share", "0.6"] if kind not in (
                "balanced", "zero-expert-rank", "source-ragged") else []
            if kind in ("rotating-hotspot", "burst"):
                extra += ["--period", 2]
            args = ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", K, "--seed", SEED,
                    "--capacity-factor", "1.0", "--workload", kind, "--steps", 5, "--iters", 1,
                    "--warmup", 0] + extra
            res = ck.guard(tag, mt.run_full, exe, ranks, args, wd, tag, output=False)
            if res is None:
                continue
            doc = res.json
            c = doc["config"]
            hot_n = 0 if kind in ("balanced", "zero-expert-rank", "source-ragged") else 2
            period = 2 if kind in ("rotating-hotspot", "burst") else 1
            ck.equal((c["workload"], c["period"]), (kind, period), tag + ": config.workload, period")
            if hot_n:
                ck.equal((c["workload_hot_experts"], c["workload_hot_share"]), (2, 0.6),
                         tag + ": config.workload_hot_experts, workload_hot_share")
            zero_first = mt.partition(E, ranks, ranks - 1)[0] if kind == "zero-expert-rank" \
                else None
            # step 0's routing, expert for expert and gate for gate
            expert, gate, acc = res.routing_matrix(K)
            want_e, want_g = mt.wl_route(kind, N, E, K, SEED, 0, hot_n, 0.6, period, zero_first)
            ck.equal(expert.tolist(), want_e.tolist(), tag + ": step 0 experts = the reference")
            ck.equal(gate.astype(np.float32).tolist(), want_g.tolist(),
                     tag + ": step 0 gates = the reference")
            cap = mt.apply_capacity(want_e, E, "1.0", "global", ranks)
            ck.equal(doc["drops"]["dropped_assignments"], cap["dropped_assignments"],
                     tag + ": drops = the position policy on the reference routing")
            st = doc["steps"]
            for t, s in enumerate(st):
                we, _ = mt.wl_route(kind, N, E, K, SEED, t, hot_n, 0.6, period, zero_first)
                ck.equal(s["routed"], np.bincount(we.ravel(), minlength=E).tolist(),
                         tag + ": step %d routed = the reference" % t)
                # properties
                hot = mt.wl_hot_set(kind, E, hot_n, period, SEED, t)
                share = sum(s["routed"][e] for e in hot) / (N * K)
                if hot and K < len(hot):
                    se = (0.6 * 0.4 / (N * K)) ** 0.5
                    ck.check(abs(share - 0.6) < 5 * se, tag + ": step %d hot share near 0.6" % t,
                             "%.3f" % share)
                elif hot:  # top-2 with 2 hot: a token takes both with probability 0.36
                    ck.check(share > 1.5 * len(hot) / E, tag + ": step %d the hot set is hot" % t,
                             "%.3f" % share)
            ck.check(all(len(set(row)) == K for row in expert.tolist()),
                     tag + ": k distinct experts per token")
            if kind == "hot-rank":
                ck.check(all(owner_rank(e, ranks) == 0
                             for e in mt.wl_hot_set(kind, E, 2, 1, SEED, 0)),
                         tag + ": the hot set is on rank 0")
            if kind == "spread-hot":
                owners = {owner_rank(e, ranks) for e in mt.wl_hot_set(kind, E, 2, 1, SEED, 0)}
                ck.check(ranks < 2 or len(owners) == 2, tag + ": the hot experts on 2 ranks",
                         "%r" % owners)
            if kind == "zero-expert-rank":
                ck.check(all(s["routed"][e] == 0 for s in st for e in range(zero_first, E)),
                         tag + ": the last rank's experts receive nothing")
                ck.check(all(s["routed"][e] > 0 for s in st for e in range(zero_first)),
                         tag + ": the others receive some")
            if kind == "rotating-hotspot":
                hots = [mt.wl_hot_set(kind, E, 2, 2, SEED, t) for t in range(5)]
                ck.check(hots[0] == hots[1] != hots[2] == hots[3] != hots[4],
                         tag + ": the hot set moves every 2 steps", "%r" % hots)
                hottest = [int(np.argmax(s["routed"])) for s in st]
                ck.check(all(hottest[t] in hots[t] for t in range(5)),
                         tag + ": each step's hottest expert is in its hot set", "%r" % hottest)
            if kind == "burst":
                mom = [s["load_balance"]["max_over_mean"] for s in st]
                ck.check(mom[1] > 1.5 and mom[3] > 1.5 and max(mom[0], mom[2], mom[4]) < 1.5,
                         tag + ": steps 1 and 3 hot, the others balanced", "%r" % mom)
            if kind == "balanced":
                mean = N * K / E
                ck.check(all(abs(r - mean) < 5 * mean ** 0.5 for s in st for r in s["routed"]),
                         tag + ": balanced within binomial noise")
            series[(kind, ranks)] = [(s["routed"], s["drops"]) for s in st]
        if kind != "zero-expert-rank" and (kind, 1) in series and (kind, 3) in series:
            ck.check(series[(kind, 1)] == series[(kind, 3)],
                     kind + ": the same step series at R = 1 and 3")

    base = ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", K]
    mt.check_refused(ck, exe, "unknown_kind", 1, base + ["--workload", "spiky"],
                     [r"--workload must be", r"rotating-hotspot"], wd)
    mt.check_refused(ck, exe, "period_without", 1, base + ["--workload", "hot-experts",
                                                           "--period", 3],
                     [r"--period", r"rotating-hotspot or burst"], wd)
    mt.check_refused(ck, exe, "period_alone", 1, base + ["--period", 3], [r"--period"], wd)
    mt.check_refused(ck, exe, "router_clash", 1, base + ["--workload", "balanced", "--skew", 1],
                     [r"--workload balanced", r"--skew"], wd)
    mt.check_refused(ck, exe, "hot_with_balanced", 1,
                     base + ["--workload", "balanced", "--hot-experts", 2],
                     [r"no hot set", r"--hot-experts"], wd)
    mt.check_refused(ck, exe, "hot_rank_too_many", 3,
                     base + ["--workload", "hot-rank", "--hot-experts", 5],
                     [r"hot-rank", r"rank 0", r"4 experts"], wd)
    mt.check_refused(ck, exe, "zero_one_rank", 1, base + ["--workload", "zero-expert-rank"],
                     [r"zero-expert-rank", r"2 ranks"], wd)
    eplb_previous(ck, exe, wd)
    ragged(ck, exe, wd)
    ck.finish()


if __name__ == "__main__":
    main()
