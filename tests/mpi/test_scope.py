"""Capacity scope: local (each rank's block of tokens is a group with its own C) against global (one
group, C over the whole batch), on hand-built batches where the two must differ, with the expected
drops worked out by hand below; then both scopes against the numpy reference on random data.

Hand-built batches: R = 2, N = 12 (rank 0 holds tokens 0..5, rank 1 tokens 6..11), d = 16, E = 4,
k = 1. The router file is W = 8 I (E x d); token t is 1.0 on the axis of its target expert plus
noise of 0.05, so its target's logit is about 8 and the others about 0: p(target) > 0.99, far from
any tie.

Case "local_drops" (cf 2): targets 0 0 0 0 0 0 | 1 2 3 1 2 3.
  global: C = ceil(2 * 12 * 1 / 4) = 6; expert 0 has 6 assignments: all served; 0 dropped.
  local:  C = ceil(2 * 6 * 1 / 4) = 3 per group; rank 0's group sends 6 to expert 0: tokens 0, 1,
          2 served, 3, 4, 5 dropped; rank 1's group sends 2 to each of 1, 2, 3: all served.
          Dropped: 3 assignments, 3 tokens, all on expert 0. Capacity summed over groups: 3+3 = 6.
Case "global_drops" (cf 1): targets 0 0 1 1 2 2 | 0 0 3 3 1 1.
  global: C = ceil(1 * 12 / 4) = 3; expert 0 gets tokens 0, 1, 6, 7: 7 dropped; expert 1 gets
          2, 3, 10, 11: 11 dropped; experts 2 and 3 get 2 each. Dropped: tokens 7 and 11.
  local:  C = ceil(1 * 6 / 4) = 2 per group; no group sends more than 2 to any expert: 0 dropped.
          Capacity summed over groups: 2+2 = 4.
"""

import os

import numpy as np

import moetest as mt

N, D, E, K, R = 12, 16, 4, 1, 2

CASES = {
    # name: (cf, targets, {scope: (expected dropped token ids, capacity per expert,
    #                             dropped per expert)})
    "local_drops": ("2", [0, 0, 0, 0, 0, 0, 1, 2, 3, 1, 2, 3],
                    {"global": ([], 6, [0, 0, 0, 0]),
                     "local": ([3, 4, 5], 6, [3, 0, 0, 0])}),
    "global_drops": ("1", [0, 0, 1, 1, 2, 2, 0, 0, 3, 3, 1, 1],
                     {"global": ([7, 11], 3, [1, 1, 0, 0]),
                      "local": ([], 4, [0, 0, 0, 0])}),
}


def crafted(ck, exe, wd, name, cf, targets, expected):
    rng = np.random.default_rng(7)
    h = (np.eye(D)[targets] + 0.05 * rng.standard_normal((N, D))).astype(np.float32)
    W = (8.0 * np.eye(E, D)).astype(np.float32)
    tpath, rpath = os.path.join(wd, name + "_h.npy"), os.path.join(wd, name + "_W.npy")
    np.save(tpath, h)
    np.save(rpath, W)
    seen = {}
    for scope, (drop_tokens, cap, dropped_per_expert) in expected.items():
        tag = "%s_%s" % (name, scope)
        res = ck.guard(tag, mt.run_full, exe, R,
                       ["--tokens-file", tpath, "--router-file", rpath, "--top-k", K,
                        "--capacity-factor", cf, "--capacity-scope", scope, "--iters", 1,
                        "--warmup", 0], wd, tag)
        if res is None:
            continue
        expert, _, acc = res.routing_matrix(K)
        ck.equal(expert[:, 0].tolist(), targets, tag + ": every token routed to its target")
        got_drop = np.nonzero(acc[:, 0] == 0)[0].tolist()
        ck.equal(got_drop, drop_tokens, tag + ": dropped token ids (worked by hand)")
        doc = res.json
        ck.equal(doc["config"]["capacity_scope"], scope, tag + ": config.capacity_scope")
        ck.equal([e["capacity"] for e in doc["experts"]], [cap] * E,
                 tag + ": experts[].capacity summed over groups")
        ck.equal([e["dropped"] for e in doc["experts"]], dropped_per_expert,
                 tag + ": experts[].dropped")
        ck.equal(doc["drops"]["dropped_assignments"], len(drop_tokens),
                 tag + ": drops.dropped_assignments")
        ck.equal(doc["drops"]["dropped_tokens"], len(drop_tokens), tag + ": drops.dropped_tokens")
        ck.check(np.array_equal(res.y[drop_tokens].view(np.uint32),
                                h[drop_tokens].view(np.uint32)),
                 tag + ": dropped tokens leave as h, bitwise")
        ref = mt.Reference(h, W, lambda e: mt.gen_expert(1, e, D, 2 * D), K, cf, scope, R).solve()
        ck.close(res.y, ref.output(), tag + ": y against the reference", rtol=1e-4, atol=1e-4)
        seen[scope] = (got_drop, doc["drops"])
    if len(seen) == 2:
        ck.check(seen["global"] != seen["local"], name + ": local and global scopes differ",
                 "both gave %s" % (seen["global"],))


def random_case(ck, exe, wd, R_, N_, d, E_, k, cf, seed):
    """Both scopes on generated data against the reference (same tolerances as test_reference)."""
    drops = {}
    for scope in ("global", "local"):
        tag = "random_R%d_%s" % (R_, scope)
        res = ck.guard(tag, mt.run_full, exe, R_,
                       ["--tokens", N_, "--hidden", d, "--experts", E_, "--top-k", k,
                        "--capacity-factor", cf, "--capacity-scope", scope, "--seed", seed,
                        "--iters", 1, "--warmup", 0], wd, tag)
        if res is None:
            continue
        ref = mt.generated_reference(seed, N_, d, E_, k, cf, scope=scope, ranks=R_)
        expert, gate, acc = res.routing_matrix(k)
        bad = ref.adopt_near_ties(expert, 3e-5)
        ck.check(not bad, tag + ": experts as the reference", "tokens %s" % bad[:5])
        ref.solve()
        ck.check(np.array_equal(acc, ref.accepted), tag + ": accepted flags as the reference",
                 "%d differ; tokens %s" % ((acc != ref.accepted).sum(),
                                           np.nonzero((acc != ref.accepted).any(axis=1))[0][:8]))
        ck.close(gate, ref.gate, tag + ": gates", rtol=3e-5, atol=1e-7)
        ck.close(res.y, ref.output(), tag + ": y", rtol=1e-4, atol=1e-4)
        ck.equal([e["capacity"] for e in res.json["experts"]], [ref.capacity_per_expert] * E_,
                 tag + ": capacity summed over groups %s" % ref.group_caps)
        ck.equal([e["accepted"] for e in res.json["experts"]], ref.accepted_per_expert.tolist(),
                 tag + ": experts[].accepted")
        ck.equal(res.json["drops"]["dropped_tokens"], ref.dropped_tokens,
                 tag + ": drops.dropped_tokens")
        dispatch = np.array(res.json["traffic"]["dispatch_bytes"])
        ck.check(np.array_equal(dispatch, ref.dispatch_bytes()), tag + ": traffic.dispatch_bytes",
                 "got\n%s\nexpected\n%s" % (dispatch, ref.dispatch_bytes()))
        drops[scope] = acc
    if len(drops) == 2 and R_ > 1:
        ck.check(not np.array_equal(drops["global"], drops["local"]),
                 "random_R%d: local and global scopes drop different assignments" % R_)
    if len(drops) == 2 and R_ == 1:
        ck.check(np.array_equal(drops["global"], drops["local"]),
                 "random_R1: with one rank, local scope is global scope")


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_scope")
    wd = mt.workdir()
    for name, (cf, targets, expected) in CASES.items():
        crafted(ck, exe, wd, name, cf, targets, expected)
    random_case(ck, exe, wd, 1, 1001, 32, 7, 2, "1.0", 1)
    random_case(ck, exe, wd, 2, 1001, 32, 7, 2, "1.0", 1)
    random_case(ck, exe, wd, 3, 1001, 32, 7, 2, "1.0", 1)
    random_case(ck, exe, wd, 4, 998, 16, 6, 1, "1.1", 8)
    ck.finish()


if __name__ == "__main__":
    main()
