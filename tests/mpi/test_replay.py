"""Replaying recorded router logits (--dump-routing X.npy, then --logits-file X.npy).

For two workloads (a skewed router; hot experts on clustered tokens), N = 203, E = 6, k = 2,
cf 1.0 (drops), global scope:
  A  at R = 3 with the workload, --dump-routing z.npy --dump-output yA.npy
  A' the same run with --dump-routing a.csv (one run writes either form)
  B  at R = 1 and R = 2 with --logits-file z.npy and no router workload option (no --skew, no
     --hot-experts; --clusters stays, as it shapes the tokens the experts read), --dump-output
     yB.npy --dump-routing b.csv
must give: yA == yB byte for byte (the file, header included); every JSON count equal; the CSV
of A' equal to B's line for line (same experts, same gate text, same flags). The expert GEMMs see
the same rows in the same order for any R in global scope, and the logits no longer come from a
per-rank sgemm, so nothing may differ, not even the last bit.
The logits file itself: shape (N, E), float32, and equal to this file's recomputation
h W^T + bias (h, W from the generator, clustered h from the documented formula, bias
-skew ln(e+1) + hot_bias from the JSON's workload) within |dz| <= 2 d 2^-24 sum_j |h_j W_ej| +
2^-23 |z| + 1e-7 (a float32 dot product of d terms, plus rounding the sum with the bias).
B's JSON says what it replayed: config.logits_file, workload.skew 0, a zero router bias, E from
the file's columns.

A hand-made logits file (random float32 rows, five all-equal rows, a row with two equal maxima)
replayed at R = 2: the CSV's experts are the top-k of softmax(z) with ties to the lower id (an
all-equal row picks experts 0..k-1, each with gate 1/E), gates within rtol 1e-6 (a float32
softmax of E = 5 exact inputs), accepted flags, y within 1e-4 + 1e-4 |y| of the reference and every
JSON count.
"""

import os

import numpy as np

import moetest as mt

N, D, E, K, SEED = 203, 16, 6, 2, 4
COMMON = ["--tokens", N, "--hidden", D, "--top-k", K, "--capacity-factor", "1.0",
          "--capacity-scope", "global", "--iters", 1, "--warmup", 0, "--seed", SEED]
WORKLOADS = [
    ("skew", ["--skew", "1.2"], 0),
    ("hot_clusters", ["--hot-experts", 2, "--hot-share", 0.6, "--clusters", 3], 3),
]


def check_logits(ck, tag, z, doc, clusters):
    if not ck.equal((z.shape, z.dtype), ((N, E), np.dtype(np.float32)),
                    tag + ": logits file is (N, E) float32"):
        return
    if clusters:
        h, _ = mt.gen_clustered_tokens(SEED, N, D, clusters)
    else:
        h = mt.gen_tokens(SEED, N, D)
    W = mt.gen_router(SEED, E, D)
    wl = doc["workload"]
    bias = mt.workload_bias(E, wl["skew"], wl["hot_experts"], wl["hot_bias"])
    ck.close(wl["router_bias"], bias, tag + ": workload.router_bias == -skew ln(e+1) (+ hot_bias)",
             rtol=1e-6, atol=1e-7)
    h64, W64 = h.astype(np.float64), W.astype(np.float64)
    want = h64 @ W64.T + bias.astype(np.float64)
    bound = 2 * D * 2.0 ** -24 * (np.abs(h64) @ np.abs(W64).T) + 2.0 ** -23 * np.abs(want) + 1e-7
    err = np.abs(z.astype(np.float64) - want)
    ck.check((err <= bound).all(), tag + ": logits == h W^T + bias within the float32 bound",
             "%d values outside; worst excess %.3g" % ((err > bound).sum(), (err - bound).max()))


def replay(ck, exe, wd, name, workload, clusters):
    zpath = os.path.join(wd, name + "_z.npy")
    tag_a = name + "_A_R3"
    a = ck.guard(tag_a, mt.run_full, exe, 3,
                 COMMON + ["--experts", E] + workload + ["--dump-routing", zpath], wd, tag_a,
                 routing=False)
    tag_c = name + "_Acsv_R3"
    a_csv = ck.guard(tag_c, mt.run_full, exe, 3, COMMON + ["--experts", E] + workload, wd, tag_c)
    if a is None or a_csv is None:
        return
    ck.check(a.json["drops"]["dropped_assignments"] > 0, tag_a + ": the run drops")
    z = np.load(zpath)
    check_logits(ck, tag_a, z, a.json, clusters)
    ck.equal(mt.json_counts(a.json), mt.json_counts(a_csv.json),
             name + ": the .npy and .csv runs of A agree")
    ya = open(os.path.join(wd, tag_a + ".npy"), "rb").read()
    for R in (1, 2):
        tag_b = "%s_B_R%d" % (name, R)
        # --clusters shapes the tokens, which the experts still read: B keeps it
        tokens = ["--clusters", clusters] if clusters else []
        b = ck.guard(tag_b, mt.run_full, exe, R, COMMON + tokens + ["--logits-file", zpath], wd,
                     tag_b)
        if b is None:
            continue
        yb = open(os.path.join(wd, tag_b + ".npy"), "rb").read()
        diff = np.abs(a.y.astype(np.float64) - b.y).max() if a.y.shape == b.y.shape else None
        ck.check(ya == yb, tag_b + ": y file byte for byte equal to A's (R=3)",
                 "max |dy| = %s" % diff)
        ck.equal(mt.json_counts(b.json), mt.json_counts(a.json), tag_b + ": JSON counts == A's")
        ck.equal(b.json["ablation"][0]["predicted"], a.json["ablation"][0]["predicted"],
                 tag_b + ": prediction == A's")
        ck.equal(b.json["output"]["checksum"], a.json["output"]["checksum"],
                 tag_b + ": output.checksum == A's")
        ck.equal(b.routing["text"], a_csv.routing["text"],
                 tag_b + ": routing CSV line for line equal to A's")
        ck.equal(b.json["config"]["logits_file"], zpath, tag_b + ": config.logits_file")
        ck.equal(b.json["config"]["experts"], E, tag_b + ": E from the file's columns")
        wl = b.json["workload"]
        ck.equal((wl["skew"], wl["hot_experts"], wl["router_bias"]), (0.0, 0, [0.0] * E),
                 tag_b + ": no workload bias on replay")


def handmade(ck, exe, wd):
    n, e, k, d = 40, 5, 2, 8
    rng = np.random.default_rng(3)
    z = rng.standard_normal((n, e)).astype(np.float32)
    z[0:5] = 0.0           # all equal: experts 0 and 1, gates 1/5
    z[7] = [0.5, 2.0, -1.0, 2.0, 1.0]  # two equal maxima: 1 then 3
    zpath = os.path.join(wd, "hand_z.npy")
    np.save(zpath, z)
    tag = "handmade_R2"
    res = ck.guard(tag, mt.run_full, exe, 2,
                   ["--logits-file", zpath, "--hidden", d, "--top-k", k, "--capacity-factor",
                    "0.8", "--iters", 1, "--warmup", 0], wd, tag)
    if res is None:
        return
    ref = mt.LogitsReference(z, mt.gen_tokens(1, n, d), mt.expert_weights(1, d, 2 * d), k, "0.8")
    expert, gate, acc = res.routing_matrix(k)
    ck.equal(expert[:5].tolist(), [[0, 1]] * 5, tag + ": all-equal logits pick experts 0, 1")
    ck.close(gate[:5], np.full((5, 2), 0.2), tag + ": ... each with gate 1/E", rtol=1e-6, atol=0)
    ck.equal(expert[7].tolist(), [1, 3], tag + ": two equal maxima: the lower id first")
    bad = ref.adopt_near_ties(expert, 1e-6)
    ck.check(not bad, tag + ": CSV experts are the top-k of softmax(z)", "tokens %s" % bad[:5])
    ref.solve()
    ck.close(gate, ref.gate, tag + ": gates", rtol=1e-6, atol=1e-8)
    ck.check(np.array_equal(acc, ref.accepted), tag + ": accepted flags")
    ck.close(res.y, ref.output(), tag + ": y", rtol=1e-4, atol=1e-4)
    doc = res.json
    ck.equal([x["routed"] for x in doc["experts"]], ref.routed_per_expert.tolist(),
             tag + ": experts[].routed")
    ck.equal([x["accepted"] for x in doc["experts"]], ref.accepted_per_expert.tolist(),
             tag + ": experts[].accepted")
    ck.equal((doc["drops"]["dropped_assignments"], doc["drops"]["dropped_tokens"]),
             (int(n * k - ref.accepted.sum()), ref.dropped_tokens), tag + ": drops")
    ck.equal((doc["config"]["tokens"], doc["config"]["experts"]), (n, e),
             tag + ": N and E come from the logits file")


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_replay")
    wd = mt.workdir()
    for name, workload, clusters in WORKLOADS:
        replay(ck, exe, wd, name, workload, clusters)
    handmade(ck, exe, wd)
    ck.finish()


if __name__ == "__main__":
    main()
