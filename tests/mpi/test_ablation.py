"""The capacity-factor ablation: a list of cf routes once and runs the layer for each value; a
separate run per cf must agree with it, and both must agree with capacity applied here to the
routing.

For global scope at R = 2 and 3 and local scope at R = 3 and 4 (N = 257, E = 6, k = 2, a skewed
router, so that there are drops), with the list 1.5,0.5,0,1.0,0.75 (not sorted, dropless inside):
  - ablation has one entry per cf, in the order given;
  - each entry's capacity, dropped_assignments, dropped_tokens, empty_slots, flops_wasted and
    dispatch_bytes equal what a single-cf run with the same options reports at the top level (and
    in its own one-entry ablation);
  - every single-cf run's routing CSV has the same experts and gates (routing does not depend on
    cf), and its accepted flags equal the position policy applied here (moetest.apply_capacity,
    C = ceil(cf G k / E) per group) to that routing, so do its drops and empty slots;
  - the list run's CSV and y (which describe the first cf) are identical, byte for byte, to the
    single run of that cf; its top-level counts are that run's;
  - dropped assignments never increase with cf (dropless counts as infinite capacity: 0 dropped);
  - capacity is the formula summed over groups: ceil(cf N k / E) in global scope,
    sum_r ceil(cf N_r k / E) over the ranks' blocks in local scope.
"""

import os

import numpy as np

import moetest as mt

N, D, E, K = 257, 16, 6, 2
CFS = ["1.5", "0.5", "0", "1.0", "0.75"]
CONFIGS = [("global", 2), ("global", 3), ("local", 3), ("local", 4)]
KEYS = ("capacity", "dropped_assignments", "dropped_tokens", "empty_slots", "flops_wasted",
        "dispatch_bytes")


def args_for(cfs, scope):
    return ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", K, "--capacity-factor",
            ",".join(cfs), "--capacity-scope", scope, "--skew", "0.6", "--seed", 11,
            "--iters", 1, "--warmup", 0]


def top_level(doc):
    """The single run's figures in the ablation-entry vocabulary, from its top-level keys."""
    caps = {e["capacity"] for e in doc["experts"]}
    return {"capacity": caps.pop() if len(caps) == 1 else sorted(caps, key=str),
            "dropped_assignments": doc["drops"]["dropped_assignments"],
            "dropped_tokens": doc["drops"]["dropped_tokens"],
            "empty_slots": doc["waste"]["empty_slots"],
            "flops_wasted": doc["waste"]["flops_wasted"],
            "dispatch_bytes": int(np.sum(doc["traffic"]["dispatch_bytes"]))}


def check_config(ck, exe, wd, scope, R):
    tag = "%s_R%d" % (scope, R)
    lst = ck.guard(tag + " list", mt.run_full, exe, R, args_for(CFS, scope), wd, tag + "_list")
    singles = {}
    for cf in CFS:
        t = "%s_cf%s" % (tag, cf)
        singles[cf] = ck.guard(t, mt.run_full, exe, R, args_for([cf], scope), wd, t)
    if lst is None or any(s is None for s in singles.values()):
        return
    ab = lst.json["ablation"]
    if not ck.equal([a["capacity_factor"] for a in ab], [float(c) for c in CFS],
                    tag + ": one ablation entry per cf, in the order given"):
        return

    ref_expert, ref_gate, _ = singles[CFS[0]].routing_matrix(K)
    for cf, a in zip(CFS, ab):
        t = "%s cf %s" % (tag, cf)
        s = singles[cf]
        one = top_level(s.json)
        ck.equal({k: a[k] for k in KEYS}, one, t + ": list entry == a single-cf run's top level")
        ck.equal(len(s.json["ablation"]), 1, t + ": the single run has one ablation entry")
        ck.equal({k: s.json["ablation"][0][k] for k in KEYS}, one,
                 t + ": the single run's own ablation entry == its top level")
        expert, gate, acc = s.routing_matrix(K)
        ck.check(np.array_equal(expert, ref_expert) and np.array_equal(gate, ref_gate),
                 t + ": routing (experts, gates) the same for every cf")
        mine = mt.apply_capacity(expert, E, cf, scope, R)
        ck.check(np.array_equal(acc, mine["accepted"]),
                 t + ": CSV accepted flags == position policy applied to the routing",
                 "%d of %d differ" % ((acc != mine["accepted"]).sum(), acc.size))
        ck.equal((a["capacity"], a["dropped_assignments"], a["dropped_tokens"], a["empty_slots"]),
                 (mine["capacity"], mine["dropped_assignments"], mine["dropped_tokens"],
                  mine["empty_slots"]),
                 t + ": (capacity, dropped, dropped tokens, empty) == the numpy count")
        ck.equal(a["dispatch_bytes"], int(mine["accepted"].sum()) * D * 4,
                 t + ": dispatch_bytes == accepted rows x d x 4")
        if float(cf) == 0:
            want_cap = None
        elif scope == "global":
            want_cap = mt.capacity(cf, N, K, E)
        else:
            want_cap = sum(mt.capacity(cf, mt.partition(N, R, r)[1], K, E) for r in range(R))
        ck.equal(a["capacity"], want_cap, t + ": capacity formula (%s scope)" % scope)

    first = singles[CFS[0]]
    ck.equal(lst.routing["text"], first.routing["text"],
             tag + ": list run's CSV == the single run of the first cf, line for line")
    ck.equal(open(os.path.join(wd, tag + "_list.npy"), "rb").read(),
             open(os.path.join(wd, "%s_cf%s.npy" % (tag, CFS[0])), "rb").read(),
             tag + ": list run's y file == the single run of the first cf, byte for byte")
    ck.equal(mt.json_counts(lst.json), mt.json_counts(first.json),
             tag + ": list run's top-level counts == the single run of the first cf")

    order = sorted(range(len(CFS)), key=lambda i: float(CFS[i]) if float(CFS[i]) > 0 else np.inf)
    drops = [ab[i]["dropped_assignments"] for i in order]
    ck.check(all(x >= y for x, y in zip(drops, drops[1:])),
             tag + ": dropped assignments never increase with cf",
             "by increasing cf %s: %s" % ([CFS[i] for i in order], drops))
    ck.check(drops[0] > drops[-2] > 0 and drops[-1] == 0,
             tag + ": drops at small cf, fewer at larger, none dropless", "%s" % drops)


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_ablation")
    wd = mt.workdir()
    for scope, R in CONFIGS:
        check_config(ck, exe, wd, scope, R)
    ck.finish()


if __name__ == "__main__":
    main()
