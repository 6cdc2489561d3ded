"""Degenerate batches: one token, fewer tokens than ranks (empty ranks), k = E, and capacities so
small that whole tokens are dropped. Each runs cleanly (exit 0, nothing on stderr from moesim),
in both capacity scopes, prints the prediction, the report and the ablation table (not --quiet),
writes the JSON, and agrees with the serial reference (moetest.Reference, capacity per group):
routing, accepted flags, per-expert routed/accepted/capacity, drops, dropped tokens, empty slots,
the counts-based prediction of every cf (== the measurement), and y within 1e-4 + 1e-4 |y| (two
float32 GEMMs of inner size <= 32 against float64); the output row of every token whose
assignments were all dropped is its h, bitwise.

Cases (d = 8, f = 16):
  N = 1 at R = 1 and R = 2 (rank 1 holds no token; in local scope its group has capacity 0),
  N = 2 at R = 4 (two empty ranks), E = 4, k = 2, cf 1.0,0;
  k = E = 4, N = 30 at R = 3, cf 1.0,0.5,0: every token picks every expert, so at cf 0.5 the
    later half of each group is dropped whole;
  N = 40, E = 4, k = 1, cf 0.01,0.3,0: local scope at R = 4 and 3 gives C = 1 per group and
    expert, so most tokens are dropped whole; global scope at R = 4 keeps 4 tokens in all.
"""

import numpy as np

import moetest as mt

D, SEED = 8, 9
CASES = [
    # name, N, E, k, cfs, [(scope, R), ...]
    ("one_token", 1, 4, 2, ["1.0", "0"], [("global", 1), ("global", 2), ("local", 2)]),
    ("n_lt_r", 2, 4, 2, ["1.0", "0"], [("global", 4), ("local", 4)]),
    ("k_eq_E", 30, 4, 4, ["1.0", "0.5", "0"], [("global", 3), ("local", 3)]),
    ("all_dropped", 40, 4, 1, ["0.01", "0.3", "0"], [("local", 4), ("local", 3), ("global", 4)]),
]


def check(ck, exe, wd, name, n, e, k, cfs, scope, R):
    tag = "%s_%s_R%d" % (name, scope, R)
    args = ["--tokens", n, "--hidden", D, "--experts", e, "--top-k", k, "--capacity-factor",
            ",".join(cfs), "--capacity-scope", scope, "--seed", SEED, "--iters", 1, "--warmup", 0]
    res = ck.guard(tag, mt.run_full, exe, R, args, wd, tag, quiet=False)
    if res is None:
        return None
    out = res.run.stdout
    # lines of libevent inside Open MPI ("[warn] Epoll ...") are not moesim's
    ck.equal([l for l in res.run.own_stderr if not l.startswith("[warn] ")], [],
             tag + ": nothing from moesim on stderr")
    for title in ("Prediction, before any token row moves", "Experts", "Drops and waste",
                  "Capacity-factor ablation"):
        ck.check(title in out, tag + ": text has '%s'" % title)
    doc = res.json
    ck.equal((doc["config"]["tokens"], doc["config"]["ranks"]), (n, R), tag + ": config")

    ref = mt.generated_reference(SEED, n, D, e, k, cfs[0], scope=scope, ranks=R)
    expert, gate, acc = res.routing_matrix(k)
    ck.equal(expert.shape, (n, k), tag + ": CSV has N k rows")
    bad = ref.adopt_near_ties(expert, 3e-5)
    ck.check(not bad, tag + ": experts are the reference's top-k", "tokens %s" % bad[:5])
    ref.solve()
    ck.close(gate, ref.gate, tag + ": gates", rtol=3e-5, atol=1e-7)
    ck.check(np.array_equal(acc, ref.accepted), tag + ": accepted flags",
             "got\n%s\nexpected\n%s" % (acc.T, ref.accepted.T))
    ck.equal([x["routed"] for x in doc["experts"]], ref.routed_per_expert.tolist(),
             tag + ": experts[].routed")
    ck.equal([x["accepted"] for x in doc["experts"]], ref.accepted_per_expert.tolist(),
             tag + ": experts[].accepted")
    ck.equal([x["capacity"] for x in doc["experts"]], [ref.capacity_per_expert] * e,
             tag + ": experts[].capacity (sum over groups)")
    # the counted keys (the contract only adds keys; max_expert_load and cf_needed are checked
    # in test_router_options.py)
    ck.equal({key: doc["drops"][key] for key in ("assignments", "dropped_assignments",
                                                 "dropped_tokens")},
             {"assignments": n * k, "dropped_assignments": int(n * k - ref.accepted.sum()),
              "dropped_tokens": ref.dropped_tokens}, tag + ": drops")
    y_ref = ref.output()
    ck.close(res.y, y_ref, tag + ": y", rtol=1e-4, atol=1e-4)
    gone = ref.accepted.sum(axis=1) == 0
    ck.check(np.array_equal(res.y[gone].view(np.uint32), ref.h[gone].view(np.uint32)),
             tag + ": fully dropped tokens leave as their h, bitwise")

    for cf, a in zip(cfs, doc["ablation"]):
        mine = mt.apply_capacity(ref.expert, e, cf, scope, R)
        want = (mine["capacity"], mine["dropped_assignments"], mine["dropped_tokens"],
                mine["empty_slots"], mine["dropped_assignments"], mine["empty_slots"])
        got = (a["capacity"], a["dropped_assignments"], a["dropped_tokens"], a["empty_slots"],
               a["predicted"]["exact_dropped_assignments"], a["predicted"]["exact_empty_slots"])
        ck.equal(got, want, "%s cf %s: (capacity, dropped, dropped tokens, empty, predicted exact "
                 "dropped, empty) == reference" % (tag, cf))
    return doc


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_small_batch")
    wd = mt.workdir()
    docs = {}
    for name, n, e, k, cfs, runs in CASES:
        for scope, R in runs:
            docs[(name, scope, R)] = check(ck, exe, wd, name, n, e, k, cfs, scope, R)

    # what the cases are there for
    d = docs.get(("k_eq_E", "local", 3))
    if d:
        # groups of 10: C = ceil(0.5 * 10 * 4 / 4) = 5, so 5 tokens of each group keep nothing
        ck.equal(d["ablation"][1]["dropped_tokens"], 15, "k_eq_E local R=3: cf 0.5 drops 15 whole tokens")
    for R in (4, 3):
        d = docs.get(("all_dropped", "local", R))
        if d:
            ck.equal(d["ablation"][0]["capacity"], R, "all_dropped local R=%d: capacity 1 per group" % R)
            ck.check(d["drops"]["dropped_tokens"] >= 40 - 4 * R,
                     "all_dropped local R=%d: at most 4 tokens per group served" % R,
                     "%r" % d["drops"])
    d = docs.get(("all_dropped", "global", 4))
    if d:
        ck.equal(d["drops"]["dropped_tokens"], 36, "all_dropped global: 4 slots in all, 36 tokens dropped")
    d = docs.get(("one_token", "local", 2))
    if d:
        ck.equal(d["ablation"][0]["capacity"], 1, "one_token local R=2: groups of 1 and 0 tokens, "
                 "capacity 1 + 0")
    ck.finish()


if __name__ == "__main__":
    main()
