"""Workloads with dialled imbalance: --skew, --hot-experts/--hot-share, --clusters.

Skew (N = 1000, E = 8, k = 2, R = 2, skew 0, 0.5, 1, 2):
  - workload.router_bias == -skew ln(e + 1) (float32; rtol 1e-6), workload.skew echoed;
  - for skew > 0 expert 0 is the most loaded, load[0] > load[E-1], and the Spearman correlation of
    load with expert id is < -0.8;
  - aux loss > 1 for skew > 0 and strictly growing with skew;
  - at skew 1 the routing equals this file's top-k of softmax(h W^T + bias) (near ties within
    3e-5 accepted as moesim broke them), so do the per-expert routed counts.
Hot experts (N = 500, E = 8, k = 2, --hot-experts 2 --hot-share 0.6, at R = 1 and R = 3):
  - workload.hot_share within 0.02 of 0.6 (the share is a step function of the bias: one token
    is 1/N = 0.002; 0.02 leaves room for a few tokens flipping at once), hot_share_target 0.6;
  - counting tokens with an expert < 2 among their k in the routing CSV gives hot_share * N;
  - hot_bias > 0 and router_bias == hot_bias on experts 0, 1 and 0 elsewhere;
  - R = 1 and R = 3 agree exactly (the calibration sums over ranks): hot_bias, hot_share, counts.
  With --skew 0.5 as well and --hot-share 0.8: router_bias == -0.5 ln(e+1) + hot_bias on 0, 1, and
  the share is met.
Clusters (N = 600, E = 8, k = 2, --clusters 4):
  - aux loss higher than with --clusters 0 on the same N and seed (routing is correlated);
  - R = 1 and R = 3 identical counts and routing (rank-count invariant);
  - the routing equals this file's top-k for h built from the documented formula
    h_g = (m_c(g) + 0.5 n_g) / sqrt(1.25), c(g) = u64(seed, 3, 2^62 + g) mod C; workload.clusters 4.
"""

import numpy as np

import moetest as mt

D, E, K, SEED = 16, 8, 2, 1


def args(n, extra):
    return ["--tokens", n, "--hidden", D, "--experts", E, "--top-k", K, "--capacity-factor", "0",
            "--seed", SEED, "--iters", 1, "--warmup", 0] + list(extra)


def routing_matches(ck, tag, res, h, bias):
    """The CSV's routing against top-k of softmax(h W^T + bias), float64."""
    W = mt.gen_router(SEED, E, D)
    z = h.astype(np.float64) @ W.astype(np.float64).T + bias.astype(np.float64)
    ref = mt.LogitsReference(z, h, mt.expert_weights(SEED, D, 2 * D), K, "0")
    expert, _, _ = res.routing_matrix(K)
    bad = ref.adopt_near_ties(expert, 3e-5)
    ck.check(not bad, tag + ": routing == top-k of softmax(h W^T + bias)",
             "%d tokens differ, first %s" % (len(bad), bad[:3]))
    ck.equal([x["routed"] for x in res.json["experts"]],
             np.bincount(ref.expert.ravel(), minlength=E).tolist(), tag + ": experts[].routed")


def skew(ck, exe, wd):
    N = 1000
    aux = []
    for s in ("0", "0.5", "1", "2"):
        tag = "skew_%s" % s
        res = ck.guard(tag, mt.run_full, exe, 2, args(N, ["--skew", s]), wd, tag, output=False)
        if res is None:
            return
        doc = res.json
        wl = doc["workload"]
        ck.equal(wl["skew"], float(s), tag + ": workload.skew")
        ck.close(wl["router_bias"], mt.workload_bias(E, float(s)),
                 tag + ": router_bias == -skew ln(e+1)", rtol=1e-6, atol=1e-9)
        load = np.array([x["routed"] for x in doc["experts"]])
        a = doc["load_balance"]["aux_loss"]
        aux.append(a)
        rho = mt.spearman(load, np.arange(E))
        print("%s: loads %s, aux %.4f, Spearman %.3f" % (tag, load.tolist(), a, rho))
        if float(s) > 0:
            ck.check(load[0] == load.max() and load[0] > load[-1],
                     tag + ": expert 0 is the most loaded, load[0] > load[E-1]", "%s" % load)
            ck.check(rho < -0.8, tag + ": load falls with expert id (Spearman < -0.8)",
                     "rho %.3f, loads %s" % (rho, load.tolist()))
            ck.check(a > 1.0, tag + ": aux loss above 1", "%r" % a)
        if s == "1":
            routing_matches(ck, tag, res, mt.gen_tokens(SEED, N, D), mt.workload_bias(E, 1.0))
    ck.check(all(x < y for x, y in zip(aux, aux[1:])), "aux loss grows with skew 0, 0.5, 1, 2",
             "%s" % aux)


def hot(ck, exe, wd):
    N = 500
    got = {}
    for R in (1, 3):
        tag = "hot_R%d" % R
        res = ck.guard(tag, mt.run_full, exe, R, args(N, ["--hot-experts", 2, "--hot-share", 0.6]),
                       wd, tag, output=False)
        if res is None:
            continue
        wl = res.json["workload"]
        print("%s: hot_share %r, hot_bias %r" % (tag, wl["hot_share"], wl["hot_bias"]))
        ck.equal((wl["hot_experts"], wl["hot_share_target"]), (2, 0.6),
                 tag + ": hot_experts, hot_share_target echoed")
        ck.check(abs(wl["hot_share"] - 0.6) <= 0.02, tag + ": hot_share within 0.02 of 0.6",
                 "%r" % wl["hot_share"])
        expert, _, _ = res.routing_matrix(K)
        hot_tokens = int((expert < 2).any(axis=1).sum())
        ck.equal(hot_tokens, round(wl["hot_share"] * N),
                 tag + ": tokens with a hot expert in the CSV == hot_share * N")
        ck.check(wl["hot_bias"] > 0, tag + ": hot_bias > 0", "%r" % wl["hot_bias"])
        ck.close(wl["router_bias"], mt.workload_bias(E, 0.0, 2, wl["hot_bias"]),
                 tag + ": router_bias == hot_bias on experts 0, 1, else 0", rtol=1e-6, atol=1e-9)
        if R == 1:
            routing_matches(ck, tag, res, mt.gen_tokens(SEED, N, D),
                            np.array(wl["router_bias"], dtype=np.float32))
        # experts and flags, not the gate text: the router's sgemm over a rank's block may round
        # a logit's last bit differently for another R (test_invariance)
        e_, _, a_ = res.routing_matrix(K)
        got[R] = (wl["hot_bias"], wl["hot_share"], mt.json_counts(res.json), (e_, a_))
    if 1 in got and 3 in got:
        ck.equal(got[3][:2], got[1][:2], "hot: R=3 calibrates to the same hot_bias and hot_share as R=1")
        ck.equal(got[3][2], got[1][2], "hot: R=3 counts == R=1")
        ck.check(all(np.array_equal(x, y) for x, y in zip(got[3][3], got[1][3])),
                 "hot: R=3 routing (experts, accepted flags) == R=1")

    tag = "hot_skew_R2"
    res = ck.guard(tag, mt.run_full, exe, 2,
                   args(N, ["--skew", "0.5", "--hot-experts", 2, "--hot-share", 0.8]), wd, tag,
                   output=False)
    if res is not None:
        wl = res.json["workload"]
        ck.close(wl["router_bias"], mt.workload_bias(E, 0.5, 2, wl["hot_bias"]),
                 tag + ": router_bias == -0.5 ln(e+1) + hot_bias on experts 0, 1", rtol=1e-6,
                 atol=1e-9)
        ck.check(abs(wl["hot_share"] - 0.8) <= 0.02, tag + ": hot_share within 0.02 of 0.8",
                 "%r" % wl["hot_share"])
        expert, _, _ = res.routing_matrix(K)
        ck.equal(int((expert < 2).any(axis=1).sum()), round(wl["hot_share"] * N),
                 tag + ": tokens with a hot expert in the CSV == hot_share * N")


def clusters(ck, exe, wd):
    N = 600
    plain = ck.guard("clusters_0", mt.run_full, exe, 2, args(N, ["--clusters", 0]), wd,
                     "clusters_0", output=False)
    runs = {}
    for R in (1, 3):
        tag = "clusters_4_R%d" % R
        runs[R] = ck.guard(tag, mt.run_full, exe, R, args(N, ["--clusters", 4]), wd, tag,
                           output=False)
    one, three = runs[1], runs[3]
    if one is not None:
        ck.equal(one.json["workload"]["clusters"], 4, "clusters: workload.clusters")
        h, c = mt.gen_clustered_tokens(SEED, N, D, 4)
        ck.check(len(set(c.tolist())) == 4, "clusters: the reference uses all 4 centres")
        routing_matches(ck, "clusters_4_R1", one, h, np.zeros(E, dtype=np.float32))
    if one is not None and plain is not None:
        a4, a0 = one.json["load_balance"]["aux_loss"], plain.json["load_balance"]["aux_loss"]
        print("clusters: aux loss %.4f with 4 clusters, %.4f without" % (a4, a0))
        ck.check(a4 > a0, "clusters: aux loss with 4 clusters above independent tokens",
                 "%r <= %r" % (a4, a0))
    if one is not None and three is not None:
        ck.equal(mt.json_counts(three.json), mt.json_counts(one.json), "clusters: R=3 counts == R=1")
        e1, _, _ = one.routing_matrix(K)
        e3, _, _ = three.routing_matrix(K)
        ck.check(np.array_equal(e1, e3), "clusters: R=3 routing == R=1")


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_workload")
    wd = mt.workdir()
    skew(ck, exe, wd)
    hot(ck, exe, wd)
    clusters(ck, exe, wd)
    ck.finish()


if __name__ == "__main__":
    main()
