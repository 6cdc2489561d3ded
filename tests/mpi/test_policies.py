"""The overflow policies of issue 9 (--drop-policy position | probs | choice | random | reroute)
against the serial reference (moetest.Reference, policy=...), in both capacity scopes at R = 1, 2
and 3 (3 divides none of the batches, 2 not the odd one), on three small layers that drop:
  A  N 90,  d 12, E 6, k 2, cf 1.0, softmax, --min-capacity 11 (raises local R=3's C from 10 to 11)
  B  N 100, d 16, E 8, k 3, cf 0.5, --score sigmoid, --expert-bias-file (strong, 0.3 N(0,1)),
     --topk-scale 2.5
  C  N 61,  d 8,  E 4, k 1, cf 0.8, --renormalize: every gate is exactly 1, so probs ties
     everywhere and must serve by token (== position); a rerouted gate is p[t][new] / p[t][orig]

1. Reference runs (every policy x scope x R x layer): the CSV (issue 9's header token, choice,
   expert, gate, accepted, score, rerouted) has the reference's serving experts (the router's
   choice where dropped), accepted and rerouted flags exactly, gates and scores (sel[t][expert])
   within tolerance; y (--dump-output) within tolerance; the JSON's experts[].routed / accepted /
   rerouted_in / dropped (= routed - (accepted - rerouted_in)) / capacity, drops.rerouted,
   dropped_assignments (= sum of experts[].dropped: a rerouted assignment was dropped by its
   routed expert), still_dropped (served by no expert), reroute_rounds (rounds after round 0 that
   made a proposal; the most of any group), dropped_tokens, routing.experts_per_token (k + 1) and
   unchosen_tokens, waste.empty_slots, traffic.dispatch_bytes (rows go to the serving expert's
   owner) are exact, and config.drop_policy names the policy.
2. Rank-count invariance (global scope, every policy, random included: its key is drawn from the
   counter generator by global (token, choice)): the CSV's expert / accepted / rerouted columns
   and the JSON's experts, drops and waste are identical (==) at R = 2, 3 to R = 1.
3. Defining properties, checked on the measured CSV alone, per capacity group and expert:
   position  the served assignments are a prefix in (token, choice) order;
   probs     sorted by (-gate, token, choice) the served come first (float32 gates as printed);
   choice    sorted by (choice, token) the served come first;
   random    sorted by (uniform(seed, 7, t k + c), token, choice) the served come first;
   ordered   served = min(routed, C) exactly, and nothing is marked rerouted;
   reroute   never more than C served; the non-rerouted rows are a position prefix and, if one of
             them dropped, the expert took exactly C and nobody rerouted in; a token's k rows name
             k distinct experts (a reroute never lands on an expert the token holds); every expert
             a dropped row's token does not name is full (C) in its group.
   And the policies are not all the same: probs, choice and random differ from position on A and
   B; probs equals position on C; reroute serves some rerouted rows on every layer, its routed
   experts drop exactly what position's do, and fewer assignments stay unserved.
4. Dropless (cf 0, layer B, R = 2, both scopes): every policy serves everything against the
   reference, with drops.dropped_assignments, still_dropped, rerouted, reroute_rounds and
   dropped_tokens all 0.

Tolerances (test_reference.py's; the reference is float64 from the same float32 inputs):
  gates rtol 3e-5 (a logit's float32 error is ~1e-5 for d <= 16, a softmax or sigmoid inherits at
  most twice that; the scale 2.5 multiplies both sides); scores (p + b) atol 3e-5 (the same error
  on values below 1, the float32 bias exact); y |dy| <= 1e-4 + 1e-4 |y| (two float32 GEMMs; a
  wrong gate or a lost row moves y by 1e-2 or more).
  Near ties: where two candidates' selection keys differ by less than 3e-5, float32 may order
  them either way. The router's top-k, reroute's choice of the next expert and probs' order of
  near-equal gates then follow moesim when its choice is consistent within that bound (counted
  and printed; zero or a few for these seeds); any other difference fails.
"""

import os

import numpy as np

import moetest as mt

GATE_RTOL = 3e-5
SCORE_ATOL = 3e-5
TIE_TOL = 3e-5
Y_ATOL, Y_RTOL = 1e-4, 1e-4
RANKS = (1, 3) if mt.sanitized() else (1, 2, 3)


def ranks_of(lname):
    """The rank counts a layer runs at. Under the sanitizers (the CI's 15-minute budget) layers A
    and B run at R = 3 only: the distributed protocol, where memory errors hide; C keeps R = 1 as
    well, and the normal run keeps every layer at 1, 2 and 3 (the invariance and cross-policy
    checks against R = 1 are made there)."""
    return (3,) if mt.sanitized() and lname != "C" else RANKS
SCOPES = ("global", "local")

LAYERS = {
    "A": dict(N=90, d=12, E=6, k=2, cf="1.0", seed=5, opts={"min_capacity": 11}),
    "B": dict(N=100, d=16, E=8, k=3, cf="0.5", seed=7,
              opts={"score": "sigmoid", "bias": True, "topk_scale": "2.5"}),
    "C": dict(N=61, d=8, E=4, k=1, cf="0.8", seed=3, opts={"renormalize": True}),
}


def bias_values(E):
    rng = np.random.default_rng(17)
    return (0.3 * rng.standard_normal(E)).astype(np.float32)


def layer_args(L, bias_path):
    o = L["opts"]
    a = ["--tokens", L["N"], "--hidden", L["d"], "--experts", L["E"], "--top-k", L["k"],
         "--capacity-factor", L["cf"], "--seed", L["seed"], "--iters", 1, "--warmup", 0]
    if "score" in o:
        a += ["--score", o["score"]]
    if o.get("bias"):
        a += ["--expert-bias-file", bias_path]
    if "topk_scale" in o:
        a += ["--topk-scale", o["topk_scale"]]
    if "min_capacity" in o:
        a += ["--min-capacity", o["min_capacity"]]
    if o.get("renormalize"):
        a.append("--renormalize")
    return a


def reference(L, scope, R, policy):
    o = L["opts"]
    return mt.generated_reference(
        L["seed"], L["N"], L["d"], L["E"], L["k"], L["cf"], scope=scope, ranks=R,
        renormalize=o.get("renormalize", False), score=o.get("score", "softmax"),
        bias=bias_values(L["E"]) if o.get("bias") else None,
        topk_scale=float(o.get("topk_scale", 1.0)), min_capacity=int(o.get("min_capacity", 0)),
        policy=policy)


def first_diff(a, b):
    rows = np.nonzero((np.asarray(a) != np.asarray(b)).reshape(len(a), -1).any(axis=1))[0]
    return "%d token(s) differ, first %s" % (len(rows), rows[:5].tolist())


def compare(ck, tag, res, ref, L, policy):
    """Every check of one run against its reference (ref.solve() is called here)."""
    N, E, k = L["N"], L["E"], L["k"]
    if not ck.check(res.routing["score"] is not None,
                    tag + ": the CSV has issue 9's header (..., score, rerouted)"):
        return
    col = res.routing_columns(k)
    # the router's own choice: every row but the rerouted ones shows it
    router = np.where(col["rerouted"] == 1, ref.expert, col["expert"])
    bad = ref.adopt_near_ties(router, TIE_TOL)
    ck.check(not bad, tag + ": the router's top-k (the CSV's non-rerouted experts) is the reference's",
             "%d tokens differ, first %s: got %s, expected %s (key %s)" % (
                 len(bad), bad[:1], router[bad[0]] if bad else "",
                 ref.expert[bad[0]] if bad else "", np.round(ref.sel[bad[0]], 6) if bad else ""))
    prefer = {(int(t), int(c)): int(col["expert"][t, c]) for t, c in zip(*np.nonzero(col["rerouted"]))}
    ref.solve(prefer=prefer, tol=TIE_TOL)
    if policy == "probs" and not np.array_equal(col["accepted"], ref.accepted) and \
            np.allclose(col["gate"], ref.gate, rtol=GATE_RTOL, atol=1e-7):
        # order near-equal gates as moesim's float32 values do (the gates were found close)
        ref.solve(key_gate=col["gate"])
        print("note: %s: probs order taken from moesim's float32 gates (near-equal gates)" % tag)
    notes = ref.ties_adopted + ref.reroute_adopted
    if notes:
        print("note: %s: %d near ties (|d key| < %g) resolved as moesim did" % (tag, notes, TIE_TOL))
    ck.check(np.array_equal(col["accepted"], ref.accepted), tag + ": CSV accepted flags",
             first_diff(col["accepted"], ref.accepted))
    ck.check(np.array_equal(col["rerouted"], ref.rerouted), tag + ": CSV rerouted flags",
             first_diff(col["rerouted"], ref.rerouted))
    ck.check(np.array_equal(col["expert"], ref.serve_expert),
             tag + ": CSV experts (the serving expert; the router's choice where dropped)",
             first_diff(col["expert"], ref.serve_expert))
    ck.close(col["gate"], ref.gate, tag + ": CSV gates", rtol=GATE_RTOL, atol=1e-7)
    rows = np.arange(N)[:, None]
    ck.close(col["score"], ref.sel[rows, col["expert"]], tag + ": CSV score = sel[t][expert]",
             rtol=0, atol=SCORE_ATOL)
    y_ref = ref.output()
    ck.close(res.y, y_ref, tag + ": y", rtol=Y_RTOL, atol=Y_ATOL)

    doc = res.json
    ex = doc["experts"]
    for key, want in (("routed", ref.routed_per_expert), ("accepted", ref.accepted_per_expert),
                      ("rerouted_in", ref.rerouted_in), ("dropped", ref.dropped_per_expert)):
        ck.equal([e.get(key) for e in ex], np.asarray(want).tolist(), tag + ": experts[].%s" % key)
    ck.equal([e["capacity"] for e in ex], [ref.capacity_per_expert] * E,
             tag + ": experts[].capacity")
    n_acc = int(ref.accepted.sum())
    d = doc["drops"]
    keys = ("assignments", "dropped_assignments", "dropped_tokens", "rerouted", "still_dropped",
            "reroute_rounds")
    ck.equal({key: d.get(key) for key in keys},
             {"assignments": N * k, "dropped_assignments": ref.dropped_assignments,
              "dropped_tokens": ref.dropped_tokens, "rerouted": ref.drops_rerouted,
              "still_dropped": ref.still_dropped, "reroute_rounds": ref.reroute_rounds},
             tag + ": drops (%s)" % ", ".join(keys))
    rt = doc.get("routing") or {}
    ck.equal((rt.get("experts_per_token"), rt.get("unchosen_tokens")),
             (ref.experts_per_token, ref.unchosen_tokens),
             tag + ": routing.experts_per_token (k + 1 entries) and unchosen_tokens")
    slots = n_acc if ref.capacity_per_expert is None else ref.capacity_per_expert * E
    ck.equal(doc["waste"]["empty_slots"], slots - n_acc, tag + ": waste.empty_slots")
    ck.equal(doc["traffic"]["dispatch_bytes"], ref.dispatch_bytes().tolist(),
             tag + ": traffic.dispatch_bytes (rows to the serving expert's owner)")
    ck.equal(doc["config"].get("drop_policy"), policy, tag + ": config.drop_policy")


def ordered_after(order_keys, acc):
    """True when, sorted by order_keys (a tuple of arrays for np.lexsort, last is primary), the
    served (acc 1) all come before the dropped."""
    if acc.size == 0:
        return True
    a = acc[np.lexsort(order_keys)]
    return bool(np.all(np.diff(a) <= 0))


def properties(ck, tag, res, L, scope, R, policy):
    """The policy's defining property on the measured CSV alone."""
    N, E, k, seed = L["N"], L["E"], L["k"], L["seed"]
    col = res.routing_columns(k)
    if col["score"] is None:
        return
    ex, gate, acc, rer = col["expert"], col["gate"], col["accepted"], col["rerouted"]
    T, Cc = np.meshgrid(np.arange(N), np.arange(k), indexing="ij")
    rkey = mt.random_drop_keys(seed, N, k)
    ok = {"order": True, "count": True, "reroute_cap": True, "reroute_prefix": True,
          "full": True}
    detail = []
    for first, count in mt.group_bounds(N, scope, R):
        C = mt.capacity(L["cf"], count, k, E, L["opts"].get("min_capacity", 0))
        C = count * k if C is None else C  # dropless: room for everything
        g = slice(first, first + count)
        served_at = np.bincount(ex[g][acc[g] == 1], minlength=E)
        for e in range(E):
            m = ex[g] == e
            t, c, a, r = T[g][m], Cc[g][m], acc[g][m], rer[g][m]
            if policy == "reroute":
                if served_at[e] > C:
                    ok["reroute_cap"] = False
                    detail.append("group %d expert %d serves %d > C %d" % (first, e, served_at[e], C))
                o = r == 0
                if not ordered_after((c[o], t[o]), a[o]):
                    ok["reroute_prefix"] = False
                    detail.append("group %d expert %d: round 0 not a position prefix" % (first, e))
                if (a[o] == 0).any() and not (a[o].sum() == C and (r == 1).sum() == 0):
                    ok["reroute_prefix"] = False
                    detail.append("group %d expert %d dropped an original row but is not full of "
                                  "originals" % (first, e))
                continue
            n_served, n_routed = int(a.sum()), len(a)
            if n_served != min(n_routed, C) or r.any():
                ok["count"] = False
                detail.append("group %d expert %d: %d served of %d, C %d" % (
                    first, e, n_served, n_routed, C))
            keys = {"position": (c, t), "probs": (c, t, -gate[g][m].astype(np.float64)),
                    "choice": (t, c), "random": (c, t, rkey[g][m])}[policy]
            if not ordered_after(keys, a):
                ok["order"] = False
                detail.append("group %d expert %d: a dropped assignment comes before a served one "
                              "in %s order" % (first, e, policy))
        if policy == "reroute":
            for t in range(first, first + count):
                if (acc[t] == 0).any():
                    free = [e for e in range(E) if e not in ex[t] and served_at[e] < C]
                    if free:
                        ok["full"] = False
                        detail.append("token %d has a dropped row while experts %s had room" % (
                            t, free))
    distinct = all(len(set(row.tolist())) == k for row in ex)
    if policy == "reroute":
        ck.check(ok["reroute_cap"], tag + ": reroute never serves more than C per expert and group",
                 "; ".join(detail[:5]))
        ck.check(ok["reroute_prefix"], tag + ": reroute's round 0 is position (prefix; full if it "
                 "dropped)", "; ".join(detail[:5]))
        ck.check(ok["full"], tag + ": a row stays dropped only when every expert its token does "
                 "not hold is full", "; ".join(detail[:5]))
        ck.check(distinct, tag + ": a token never holds one expert twice (k distinct experts)")
    else:
        ck.check(ok["count"], tag + ": served = min(routed, C) per expert and group, nothing "
                 "rerouted", "; ".join(detail[:5]))
        ck.check(ok["order"], tag + ": %s order: every served assignment comes before every "
                 "dropped one" % policy, "; ".join(detail[:5]))


def invariance(ck, name, results, k):
    base = results.get(1)
    if base is None or base.routing["score"] is None:
        return
    b = base.routing_columns(k)
    for R, res in results.items():
        if R == 1 or res is None or res.routing["score"] is None:
            continue
        c = res.routing_columns(k)
        ck.check(all(np.array_equal(c[x], b[x]) for x in ("expert", "accepted", "rerouted")),
                 "%s R=%d: CSV expert, accepted, rerouted identical to R=1" % (name, R))
        keys = ("id", "routed", "accepted", "dropped", "capacity", "rerouted_in")
        ck.equal([{x: e.get(x) for x in keys} for e in res.json["experts"]],
                 [{x: e.get(x) for x in keys} for e in base.json["experts"]],
                 "%s R=%d: JSON experts identical (==) to R=1" % (name, R))
        for key in ("drops", "waste"):
            ck.equal(res.json[key], base.json[key],
                     "%s R=%d: JSON %s identical (==) to R=1" % (name, R, key))


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_policies")
    wd = mt.workdir()
    runs = {}
    for lname, L in LAYERS.items():
        bias_path = os.path.join(wd, "bias_%s.npy" % lname)
        np.save(bias_path, bias_values(L["E"]).reshape(1, L["E"]))
        for policy in mt.POLICIES:
            for scope in SCOPES:
                for R in ranks_of(lname):
                    tag = "%s %s %s R=%d" % (lname, policy, scope, R)
                    args = layer_args(L, bias_path) + ["--drop-policy", policy,
                                                       "--capacity-scope", scope]
                    res = ck.guard(tag, mt.run_full, exe, R, args, wd,
                                   "%s_%s_%s_R%d" % (lname, policy, scope, R))
                    runs[(lname, policy, scope, R)] = res
                    if res is None:
                        continue
                    ref = reference(L, scope, R, policy)
                    ck.guard(tag, compare, ck, tag, res, ref, L, policy)
                    ck.guard(tag + " properties", properties, ck, tag, res, L, scope, R, policy)
            invariance(ck, "%s %s global" % (lname, policy),
                       {R: runs[(lname, policy, "global", R)] for R in ranks_of(lname)}, L["k"])

    def accepted(lname, policy, scope="global", R=1):
        r = runs.get((lname, policy, scope, R))
        if r is None or r.routing["score"] is None:
            return None
        return r.routing_columns(LAYERS[lname]["k"])["accepted"]

    for lname in ("A", "B"):
        pos = accepted(lname, "position")
        for policy in ("probs", "choice", "random"):
            other = accepted(lname, policy)
            if pos is not None and other is not None:
                ck.check(not np.array_equal(pos, other),
                         "%s: %s serves other assignments than position" % (lname, policy))
    pos, probs = accepted("C", "position"), accepted("C", "probs")
    if pos is not None and probs is not None:
        ck.check(np.array_equal(pos, probs),
                 "C: every gate is 1, so probs serves by token, as position does")
    for lname in LAYERS:
        for scope in SCOPES:
            for R in ranks_of(lname):
                p, r = runs.get((lname, "position", scope, R)), runs.get((lname, "reroute", scope, R))
                if p is None or r is None:
                    continue
                tag = "%s reroute %s R=%d" % (lname, scope, R)
                ck.check((r.json["drops"].get("rerouted") or 0) > 0,
                         tag + ": some dropped rows are rerouted and served")
                ck.equal(r.json["drops"]["dropped_assignments"],
                         p.json["drops"]["dropped_assignments"],
                         tag + ": reroute's routed experts drop what position's do")
                ck.check((r.json["drops"].get("still_dropped") or 0) <
                         p.json["drops"]["dropped_assignments"],
                         tag + ": reroute leaves fewer assignments unserved than position",
                         "%r vs %r" % (r.json["drops"].get("still_dropped"),
                                       p.json["drops"]["dropped_assignments"]))
    dropless(ck, exe, wd)
    ck.finish()


def dropless(ck, exe, wd):
    """cf 0: no policy drops anything, and reroute makes no round."""
    L = dict(LAYERS["B"], cf="0")
    bias_path = os.path.join(wd, "bias_B.npy")
    for policy in mt.POLICIES:
        for scope in SCOPES:
            R = 2
            tag = "dropless %s %s R=%d" % (policy, scope, R)
            args = layer_args(L, bias_path) + ["--drop-policy", policy, "--capacity-scope", scope]
            res = ck.guard(tag, mt.run_full, exe, R, args, wd, "dropless_%s_%s" % (policy, scope))
            if res is None:
                continue
            ck.guard(tag, compare, ck, tag, res, reference(L, scope, R, policy), L, policy)
            d = res.json["drops"]
            ck.equal((d["dropped_assignments"], d.get("still_dropped"), d.get("rerouted"),
                      d.get("reroute_rounds"), d["dropped_tokens"]), (0, 0, 0, 0, 0),
                     tag + ": nothing dropped, nothing rerouted, no round")


if __name__ == "__main__":
    main()
