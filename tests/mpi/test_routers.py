"""The routers of issue 9 against the serial reference (moetest.Reference's keyword options):

1. Expert choice (--routing expert-choice; Zhou et al. 2022), both scopes, R = 1 and 3, on
     ec       N 90, d 12, E 6, k 2, cf 1.0, softmax                 C = 30 global, 10 local R=3
     ec_bias  --score sigmoid --expert-bias-file --topk-scale 2 --min-capacity 12, cf 0.5
                                                                   C = 15 global, 12 local R=3
     ec_full  local R=3 (and global) with --min-capacity 40 > G = 30: C = min(40, G), every
              expert takes every token of its group
   The CSV's rows are the reference's chosen (token, expert) pairs, token-major, experts
   ascending, choice = the index among the token's experts, accepted 1, rerouted 0; gate =
   p[t][e] * topk_scale, score = p + b; every expert takes exactly min(C, G) tokens per group
   (checked on the CSV alone); JSON experts[] (routed = accepted = what it took, rerouted_in and
   dropped 0), drops (assignments = the chosen pairs, nothing dropped, dropped_tokens = unchosen),
   routing.experts_per_token (E + 1 entries), unchosen_tokens, reach (over the experts that took
   the token; reach_unlimited null), traffic.dispatch_bytes, config.routing, and y.
2. Group-limited top-k (--expert-groups G --group-top-k M; DeepSeek-V2/V3):
     gl_explicit  E 8, k 3, G 4, M 2 (one best value per group), cf 1.0, R 1 and 2
     gl_k4        E 8, k 4, G 4, M 2 (the two best values per group), --score sigmoid with a
                  selection bias, dropless, R 3
     gl_nodes     only --group-top-k 1: G = nodes = 2 with --ranks-per-node 2 at R = 4 (E 8, k 2:
                  every token stays on one node), and G = 3 with --ranks-per-node 1 at R = 3
                  (E 6, k 2, M 2)
   The CSV's experts are the reference's grouped top-k (near ties within TIE_TOL as moesim broke
   them, also for the group scores), no token uses more than M groups (on the CSV alone), gates,
   accepted flags and y match; routing.reach and routing.reach_unlimited (distinct ranks and nodes
   among a token's experts, with and without the limit: mean within 1e-12, max and histogram
   exact) match the reference; config.expert_groups = G (the resolved node count when only M is
   given) and config.group_top_k = M. A plain run reports reach_unlimited null (and null
   config.expert_groups / group_top_k), and gl_nodes2's limit keeps every token on one node where
   its unlimited top-k reaches more.
3. --noisy-top-k (Shazeer et al. 2017): z += eps softplus(h W_noise^T), R 1 and 2, global and
   local; and --input-jitter 0.3 (routing sees h U(0.7, 1.3), the experts h), R 1 and 2: experts,
   gates, accepted flags and y against the reference; both must change the routing of many
   tokens against the same run without them; config.noisy_top_k / input_jitter.
4. Shared experts (--shared-experts S --shared-ffn F; DeepSeekMoE): S 2, F 24 and S 1 with the
   default F = --ffn, cf 0.5 (tokens drop entirely), R 1 and 2: y = h + routed + shared against the
   reference (a fully dropped token still gets the shared output); traffic.dispatch_bytes and
   combine_bytes identical (==) to the same run without shared experts; waste.flops_shared =
   N S 4 d F > 0 and the routed waste figures unchanged; config.shared_experts / shared_ffn.
5. A preset: --preset deepseek-v3 --hidden 64 --tokens 256 at R = 2 runs, its config shows experts
   256, top_k 8, score sigmoid, expert_groups 8, group_top_k 4, shared_experts 1, preset
   deepseek-v3, hidden 64 (the explicit option wins); its CSV's experts are the reference's
   grouped top-k and use at most 4 groups of 32 per token, and its gates sum to topk_scale.

6. Refusals (exit 2, one `moesim: error:` line naming the options, nothing written; R = 2): expert
   choice with cf 0, with a drop policy, with a group limit; G not dividing E, G without M, M > G,
   M > k, k > M E / G (the k experts do not fit in the M kept groups); --input-jitter 1, negative, or with --logits-file; --shared-ffn without --shared-experts,
   a negative --shared-experts; unknown --drop-policy, --routing and --preset names (the message
   lists the valid ones).

Tolerances are test_reference.py's (float64 reference from the same float32 inputs): gates rtol
3e-5 (a logit's error is ~1e-5 for d <= 64; softmax or sigmoid at most doubles it; the noise term's
softplus of a float32 noise logit adds as much again at |eps| ~ 1), scores atol 3e-5, near ties
3e-5 on the selection key (k // M times that for a group score), y 1e-4 + 1e-4 |y|. The jittered
routing input is rounded to float32 once in both.
"""

import os

import numpy as np

import moetest as mt

GATE_RTOL = 3e-5
SCORE_ATOL = 3e-5
TIE_TOL = 3e-5
Y_ATOL, Y_RTOL = 1e-4, 1e-4


def bias_values(E, seed=23):
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(E)).astype(np.float32)


def args_of(L, extra=()):
    a = ["--tokens", L["N"], "--hidden", L["d"], "--experts", L["E"], "--top-k", L["k"],
         "--capacity-factor", L["cf"], "--seed", L["seed"], "--iters", 1, "--warmup", 0]
    if "f" in L:
        a += ["--ffn", L["f"]]
    return a + list(extra)


def ref_of(L, scope, R, bias=None, **opts):
    return mt.generated_reference(L["seed"], L["N"], L["d"], L["E"], L["k"], L["cf"],
                                  f=L.get("f"), scope=scope, ranks=R, bias=bias, **opts)


def has_new_csv(ck, tag, res):
    return ck.check(res.routing["score"] is not None,
                    tag + ": the CSV has issue 9's header (..., score, rerouted)")


def compare_token_choice(ck, tag, res, ref):
    """Routing, gates, accepted, y and the main counts of a token-choice run."""
    k, N = ref.k, ref.N
    if not has_new_csv(ck, tag, res):
        return
    col = res.routing_columns(k)
    bad = ref.adopt_near_ties(col["expert"], TIE_TOL)
    ck.check(not bad, tag + ": CSV experts are the reference's top-k",
             "%d tokens differ, first %s: got %s, expected %s (key %s)" % (
                 len(bad), bad[:1], col["expert"][bad[0]] if bad else "",
                 ref.expert[bad[0]] if bad else "", np.round(ref.sel[bad[0]], 6) if bad else ""))
    if ref.ties_adopted:
        print("note: %s: %d near ties (|d key| < %g) resolved as moesim did" % (
            tag, ref.ties_adopted, TIE_TOL))
    ref.solve()
    ck.close(col["gate"], ref.gate, tag + ": CSV gates", rtol=GATE_RTOL, atol=1e-7)
    ck.close(col["score"], ref.sel[np.arange(N)[:, None], col["expert"]],
             tag + ": CSV score = sel[t][expert]", rtol=0, atol=SCORE_ATOL)
    ck.check(np.array_equal(col["accepted"], ref.accepted), tag + ": CSV accepted flags",
             "%d of %d differ" % ((col["accepted"] != ref.accepted).sum(), col["accepted"].size))
    ck.close(res.y, ref.output(), tag + ": y", rtol=Y_RTOL, atol=Y_ATOL)
    doc = res.json
    ck.equal([e["routed"] for e in doc["experts"]], ref.routed_per_expert.tolist(),
             tag + ": experts[].routed")
    ck.equal([e["accepted"] for e in doc["experts"]], ref.accepted_per_expert.tolist(),
             tag + ": experts[].accepted")
    ck.equal((doc["drops"]["dropped_assignments"], doc["drops"]["dropped_tokens"]),
             (N * k - int(ref.accepted.sum()), ref.dropped_tokens),
             tag + ": drops.dropped_assignments, dropped_tokens")
    rt = doc.get("routing") or {}
    ck.equal((rt.get("experts_per_token"), rt.get("unchosen_tokens")),
             (ref.experts_per_token, ref.unchosen_tokens),
             tag + ": routing.experts_per_token and unchosen_tokens")


def check_reach(ck, tag, doc, ref):
    rt = doc.get("routing") or {}
    for key, want in (("reach", ref.reach), ("reach_unlimited", ref.reach_unlimited)):
        got = rt.get(key, "missing")
        if want is None:
            ck.equal(got, None, tag + ": routing.%s null without a group limit" % key)
            continue
        if not ck.check(isinstance(got, dict) and set(got) >= {"ranks", "nodes"},
                        tag + ": routing.%s has ranks and nodes" % key, "%r" % (got,)):
            continue
        for level in ("ranks", "nodes"):
            g, w = got[level], want[level]
            ck.close(g.get("mean"), w["mean"], tag + ": routing.%s.%s.mean" % (key, level),
                     rtol=1e-12, atol=0)
            ck.equal((g.get("max"), mt.trim_histogram(g.get("histogram") or [0])),
                     (w["max"], mt.trim_histogram(w["histogram"])),
                     tag + ": routing.%s.%s max and histogram" % (key, level))


# ---------------------------------------------------------------------------------------------
# 1. expert choice

def expert_choice(ck, exe, wd):
    L = dict(N=90, d=12, E=6, k=2, cf="1.0", seed=4)
    Lb = dict(L, cf="0.5")
    bias = bias_values(6)
    bpath = os.path.join(wd, "ec_bias.npy")
    np.save(bpath, bias.reshape(1, 6))
    cases = [("ec", L, [], {}),
             ("ec_bias", Lb, ["--score", "sigmoid", "--expert-bias-file", bpath, "--topk-scale",
                              "2", "--min-capacity", 12],
              dict(score="sigmoid", bias=bias, topk_scale=2.0, min_capacity=12)),
             ("ec_full", L, ["--min-capacity", 40], dict(min_capacity=40))]
    for name, Lc, extra, opts in cases:
        for scope in ("global", "local"):
            for R in (1, 3):
                if name == "ec_full" and R == 1 and scope == "local":
                    continue
                tag = "%s %s R=%d" % (name, scope, R)
                args = args_of(Lc, ["--routing", "expert-choice", "--capacity-scope", scope] +
                               extra)
                res = ck.guard(tag, mt.run_full, exe, R, args, wd, "%s_%s_R%d" % (name, scope, R))
                if res is None:
                    continue
                ref = ref_of(Lc, scope, R, routing="expert-choice", **opts)
                ck.guard(tag, compare_expert_choice, ck, tag, res, ref, Lc, scope, R, opts)


def compare_expert_choice(ck, tag, res, ref, L, scope, R, opts):
    N, E = L["N"], L["E"]
    if not has_new_csv(ck, tag, res):
        return
    r = res.routing
    got = np.zeros((N, E), dtype=np.int64)
    ok_ids = (r["token"] >= 0).all() and (r["token"] < N).all() and (r["expert"] >= 0).all() \
        and (r["expert"] < E).all()
    if not ck.check(ok_ids, tag + ": CSV token and expert ids in range"):
        return
    got[r["token"], r["expert"]] = 1
    ck.equal(int(got.sum()), len(r["token"]), tag + ": no (token, expert) pair twice in the CSV")
    ref.solve(prefer=got, tol=TIE_TOL)
    if ref.ties_adopted:
        print("note: %s: %d near ties (|d key| < %g) resolved as moesim did" % (
            tag, ref.ties_adopted, TIE_TOL))
    want = ref.ec_rows
    ck.check(np.array_equal(got, ref.chosen), tag + ": the chosen pairs are the reference's",
             "%d of %d pairs differ; first at token %s" % (
                 (got != ref.chosen).sum(), got.size,
                 np.nonzero((got != ref.chosen).any(axis=1))[0][:5].tolist()))
    same_rows = len(r["token"]) == len(want["token"])
    if ck.check(same_rows, tag + ": one CSV row per chosen pair",
                "%d rows, %d pairs" % (len(r["token"]), len(want["token"]))):
        ck.check(np.array_equal(r["token"], want["token"]) and
                 np.array_equal(r["expert"], want["expert"]),
                 tag + ": rows token-major, experts ascending within a token")
        ck.equal(r["choice"].tolist(), want["choice"].tolist(),
                 tag + ": choice = index among the token's chosen experts")
        ck.close(r["gate"], ref.gate_ec[r["token"], r["expert"]], tag + ": gate = p * topk_scale",
                 rtol=GATE_RTOL, atol=1e-7)
        ck.close(r["score"], ref.sel[r["token"], r["expert"]], tag + ": score = p + b",
                 rtol=0, atol=SCORE_ATOL)
    ck.check((r["accepted"] == 1).all() and (r["rerouted"] == 0).all(),
             tag + ": every row accepted 1, rerouted 0")
    # on the CSV alone: every expert takes exactly min(C, G) of each group
    fill_ok, detail = True, []
    for (first, count), C in zip(mt.group_bounds(N, scope, R), ref.group_caps):
        want_c = min(mt.capacity(L["cf"], count, L["k"], E, opts.get("min_capacity", 0)), count)
        taken = got[first:first + count].sum(axis=0)
        if not (taken == want_c).all():
            fill_ok = False
            detail.append("group at %d: %s, expected %d each" % (first, taken.tolist(), want_c))
    ck.check(fill_ok, tag + ": every expert takes min(C, G) tokens of every group",
             "; ".join(detail))
    ck.close(res.y, ref.output(), tag + ": y", rtol=Y_RTOL, atol=Y_ATOL)
    doc = res.json
    ck.equal([(e["routed"], e["accepted"], e.get("rerouted_in"), e["dropped"])
              for e in doc["experts"]],
             [(int(a), int(a), 0, 0) for a in ref.accepted_per_expert],
             tag + ": experts[] routed = accepted = what it took, nothing rerouted or dropped")
    n_pairs = int(ref.chosen.sum())
    ck.equal({key: doc["drops"].get(key) for key in ("assignments", "dropped_assignments",
                                                     "dropped_tokens", "rerouted")},
             {"assignments": n_pairs, "dropped_assignments": 0,
              "dropped_tokens": ref.unchosen_tokens, "rerouted": 0},
             tag + ": drops: assignments = chosen pairs, none dropped, unchosen tokens")
    rt = doc.get("routing") or {}
    ck.equal(rt.get("experts_per_token"), ref.experts_per_token,
             tag + ": routing.experts_per_token (E + 1 entries)")
    ck.equal(rt.get("unchosen_tokens"), ref.unchosen_tokens, tag + ": routing.unchosen_tokens")
    check_reach(ck, tag, doc, ref)
    ck.equal(doc["traffic"]["dispatch_bytes"], ref.dispatch_bytes().tolist(),
             tag + ": traffic.dispatch_bytes")
    ck.equal(doc["config"].get("routing"), "expert-choice", tag + ": config.routing")
    if tag.startswith("ec_full local"):
        ck.equal(ref.experts_per_token[-1], N, tag + ": (the case) every token has every expert")


# ---------------------------------------------------------------------------------------------
# 2. group-limited top-k

def group_limited(ck, exe, wd):
    bias = bias_values(8, 5)
    bpath = os.path.join(wd, "gl_bias.npy")
    np.save(bpath, bias.reshape(8, 1))
    cases = [
        # name, layer, R list, extra args, reference options, G, M, ranks_per_node
        ("gl_explicit", dict(N=120, d=16, E=8, k=3, cf="1.0", seed=6), (1, 2),
         ["--expert-groups", 4, "--group-top-k", 2], {}, 4, 2, None),
        ("gl_k4", dict(N=120, d=16, E=8, k=4, cf="0", seed=8), (3,),
         ["--expert-groups", 4, "--group-top-k", 2, "--score", "sigmoid", "--expert-bias-file",
          bpath], dict(score="sigmoid", bias=bias), 4, 2, None),
        ("gl_nodes2", dict(N=100, d=16, E=8, k=2, cf="1.0", seed=9), (4,),
         ["--group-top-k", 1, "--ranks-per-node", 2], {}, 2, 1, 2),
        ("gl_nodes3", dict(N=100, d=12, E=6, k=2, cf="1.0", seed=10), (3,),
         ["--group-top-k", 2, "--ranks-per-node", 1], {}, 3, 2, 1),
    ]
    for name, L, ranks, extra, opts, G, M, rpn in cases:
        for R in ranks:
            tag = "%s R=%d" % (name, R)
            res = ck.guard(tag, mt.run_full, exe, R, args_of(L, extra), wd, "%s_R%d" % (name, R))
            if res is None:
                continue
            ref = ref_of(L, "global", R, expert_groups=G if "--expert-groups" in extra else 0,
                         group_top_k=M, ranks_per_node=rpn, **opts)
            ck.guard(tag, compare_token_choice, ck, tag, res, ref)
            ck.guard(tag, check_reach, ck, tag, res.json, ref)
            if res.routing["score"] is not None:
                ex = res.routing_columns(L["k"])["expert"]
                groups = [len(set((row // (L["E"] // G)).tolist())) for row in ex]
                ck.check(max(groups) <= M, tag + ": no token uses more than M = %d groups" % M,
                         "a token uses %d" % max(groups))
            c = res.json["config"]
            ck.equal((c.get("expert_groups"), c.get("group_top_k")), (G, M),
                     tag + ": config.expert_groups, group_top_k")
            if name == "gl_nodes2":
                rt = res.json.get("routing") or {}
                try:
                    lim = rt["reach"]["nodes"]["mean"]
                    unl = rt["reach_unlimited"]["nodes"]["mean"]
                except (KeyError, TypeError):
                    lim = unl = None
                ck.check(lim == 1.0 and unl is not None and unl > 1.0,
                         tag + ": limited to one node, the plain top-k reaches more",
                         "limited %r, unlimited %r" % (lim, unl))
    # a plain run: reach filled, reach_unlimited null
    L = dict(N=100, d=16, E=8, k=2, cf="1.0", seed=9)
    tag = "plain R=2"
    res = ck.guard(tag, mt.run_full, exe, 2, args_of(L), wd, "plain_R2", output=False)
    if res is not None:
        ref = ref_of(L, "global", 2).solve()
        ck.guard(tag, check_reach, ck, tag, res.json, ref)
        c = res.json["config"]
        ck.equal((c.get("expert_groups", "missing"), c.get("group_top_k", "missing")),
                 (None, None), tag + ": config.expert_groups, group_top_k null without a limit")


# ---------------------------------------------------------------------------------------------
# 3. noisy top-k and input jitter

def noise_and_jitter(ck, exe, wd):
    L = dict(N=100, d=16, E=6, k=2, cf="1.0", seed=12)
    cases = [("noisy", ["--noisy-top-k"], dict(noisy_top_k=True), "noisy_top_k", True),
             ("jitter", ["--input-jitter", "0.3"], dict(input_jitter=0.3), "input_jitter", 0.3)]
    for name, extra, opts, key, value in cases:
        for scope, R in (("global", 1), ("global", 2), ("local", 2)):
            tag = "%s %s R=%d" % (name, scope, R)
            sc = ["--capacity-scope", scope]
            res = ck.guard(tag, mt.run_full, exe, R, args_of(L, extra + sc), wd,
                           "%s_%s_R%d" % (name, scope, R))
            if res is None:
                continue
            ref = ref_of(L, scope, R, **opts)
            ck.guard(tag, compare_token_choice, ck, tag, res, ref)
            ck.equal(res.json["config"].get(key), value, tag + ": config.%s" % key)
            if R != 1 or scope != "global" or res.routing["score"] is None:
                continue
            plain = ck.guard(tag + " plain", mt.run_full, exe, 1, args_of(L), wd,
                             "%s_plain" % name, output=False)
            if plain is not None:
                a, _, _ = res.routing_matrix(L["k"])
                b, _, _ = plain.routing_matrix(L["k"])
                moved = int((np.sort(a, axis=1) != np.sort(b, axis=1)).any(axis=1).sum())
                ck.check(moved > L["N"] // 10, tag + ": changes the routing of many tokens",
                         "%d of %d tokens" % (moved, L["N"]))


# ---------------------------------------------------------------------------------------------
# 4. shared experts

def shared_experts(ck, exe, wd):
    L = dict(N=80, d=16, E=4, k=2, cf="0.5", seed=13, f=32)
    for S, F in ((2, 24), (1, None)):
        for R in (1, 2):
            tag = "shared S=%d F=%s R=%d" % (S, F, R)
            extra = ["--shared-experts", S] + ([] if F is None else ["--shared-ffn", F])
            res = ck.guard(tag, mt.run_full, exe, R, args_of(L, extra), wd,
                           "shared%d_%s_R%d" % (S, F, R))
            base = ck.guard(tag + " without", mt.run_full, exe, R, args_of(L), wd,
                            "noshared%d_%s_R%d" % (S, F, R))
            if res is None:
                continue
            ref = ref_of(L, "global", R, shared_experts=S, shared_ffn=F)
            ck.guard(tag, compare_token_choice, ck, tag, res, ref)
            Fe = F or L["f"]
            if res.routing["score"] is not None:
                _, _, acc = res.routing_matrix(L["k"])
                gone = np.nonzero(acc.sum(axis=1) == 0)[0]
                ck.check(len(gone) > 0, tag + ": (the case) some tokens drop every assignment")
                if len(gone):
                    h = mt.gen_tokens(L["seed"], L["N"], L["d"])
                    ck.check(np.abs(res.y[gone] - h[gone]).max() > 1e-2,
                             tag + ": a fully dropped token still gets the shared output")
            c = res.json["config"]
            ck.equal((c.get("shared_experts"), c.get("shared_ffn")), (S, Fe),
                     tag + ": config.shared_experts, shared_ffn")
            w = res.json["waste"]
            ck.close(w.get("flops_shared") or 0.0, L["N"] * S * 4.0 * L["d"] * Fe,
                     tag + ": waste.flops_shared = N S 4 d F", rtol=1e-12, atol=0)
            if base is None:
                continue
            for key in ("dispatch_bytes", "combine_bytes"):
                ck.equal(res.json["traffic"][key], base.json["traffic"][key],
                         tag + ": traffic.%s identical to the run without shared experts" % key)
            wb = base.json["waste"]
            ck.equal((w["flops_useful"], w["flops_wasted"], w["slots"]),
                     (wb["flops_useful"], wb["flops_wasted"], wb["slots"]),
                     tag + ": the routed waste figures do not change")
            ck.check((w.get("flops_shared") or 0) > (wb.get("flops_shared") or 0),
                     tag + ": more FLOPs than without shared experts")
            ck.equal(base.json["config"].get("shared_ffn"), None,
                     tag + ": without shared experts config.shared_ffn is null")


# ---------------------------------------------------------------------------------------------
# 5. a preset

def preset(ck, exe, wd):
    R, N, d = 2, 256, 64
    tag = "preset deepseek-v3 R=%d" % R
    args = ["--preset", "deepseek-v3", "--hidden", d, "--tokens", N, "--iters", 1, "--warmup", 0]
    res = ck.guard(tag, mt.run_full, exe, R, args, wd, "preset", output=False, timeout=120)
    if res is None:
        return
    c = res.json["config"]
    want = {"experts": 256, "top_k": 8, "score": "sigmoid", "expert_groups": 8, "group_top_k": 4,
            "shared_experts": 1, "preset": "deepseek-v3", "hidden": d, "tokens": N}
    ck.equal({key: c.get(key) for key in want}, want, tag + ": config")
    if not has_new_csv(ck, tag, res) or c.get("experts") != 256 or c.get("top_k") != 8:
        return
    col = res.routing_columns(8)
    groups = [len(set((row // 32).tolist())) for row in col["expert"]]
    ck.check(max(groups) <= 4, tag + ": no token uses more than 4 groups of 32",
             "a token uses %d" % max(groups))
    seed = c["seed"]
    ref = mt.Reference(mt.gen_tokens(seed, N, d), mt.gen_router(seed, 256, d), None, 8,
                       c["capacity_factor"], c["capacity_scope"], R, c["renormalize"],
                       score="sigmoid", topk_scale=c["topk_scale"], min_capacity=c["min_capacity"],
                       seed=seed, expert_groups=8, group_top_k=4)
    bad = ref.adopt_near_ties(col["expert"], TIE_TOL)
    ck.check(not bad, tag + ": CSV experts are the reference's grouped top-k",
             "%d tokens differ, first %s" % (len(bad), bad[:3]))
    ref.solve()
    ck.close(col["gate"], ref.gate, tag + ": CSV gates", rtol=GATE_RTOL, atol=1e-7)
    ck.close(col["gate"].astype(np.float64).sum(axis=1), np.full(N, c["topk_scale"]),
             tag + ": gates sum to topk_scale", rtol=0, atol=1e-5 * c["topk_scale"])


# ---------------------------------------------------------------------------------------------
# 6. combinations without meaning are refused before anything runs

def refusals(ck, exe, wd):
    small = ["--tokens", 60, "--hidden", 8, "--experts", 4]
    logits = os.path.join(wd, "logits.npy")
    np.save(logits, np.zeros((60, 4), dtype=np.float32))
    ec = ["--routing", "expert-choice"]
    cases = [
        ("ec_dropless", ec + ["--capacity-factor", 0], [r"expert-choice", r"capacit"]),
        ("ec_drop_policy", ec + ["--drop-policy", "probs"], [r"drop-policy", r"expert-choice"]),
        ("ec_group_limit", ec + ["--expert-groups", 2, "--group-top-k", 1],
         [r"expert-choice", r"group"]),
        ("groups_not_dividing", ["--expert-groups", 3, "--group-top-k", 1], [r"--expert-groups"]),
        ("groups_without_m", ["--expert-groups", 2], [r"--group-top-k"]),
        ("m_above_g", ["--top-k", 4, "--expert-groups", 2, "--group-top-k", 3],
         [r"--group-top-k", r"--expert-groups|groups"]),
        ("m_above_k", ["--expert-groups", 4, "--group-top-k", 3], [r"--group-top-k", r"--top-k"]),
        ("k_beyond_m_groups", ["--top-k", 3, "--expert-groups", 4, "--group-top-k", 2],
         [r"--top-k|--group-top-k"]),
        ("jitter_one", ["--input-jitter", 1], [r"--input-jitter"]),
        ("jitter_negative", ["--input-jitter", "-0.1"], [r"--input-jitter"]),
        ("jitter_logits_file", ["--input-jitter", "0.1", "--logits-file", logits],
         [r"--input-jitter", r"--logits-file"]),
        ("shared_ffn_alone", ["--shared-ffn", 16], [r"--shared-ffn", r"--shared-experts"]),
        ("shared_negative", ["--shared-experts", -1], [r"--shared-experts"]),
        ("bad_policy", ["--drop-policy", "lifo"], [r"--drop-policy", r"reroute"]),
        ("bad_routing", ["--routing", "hash"], [r"--routing", r"expert-choice"]),
        ("bad_preset", ["--preset", "gpt-9"], [r"--preset", r"deepseek-v3"]),
    ]
    for tag, extra, pats in cases:
        k = [] if "--top-k" in extra else ["--top-k", 2]
        mt.check_refused(ck, exe, "refused %s R=2" % tag, 2, small + k + extra, pats, wd)


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_routers")
    wd = mt.workdir()
    expert_choice(ck, exe, wd)
    group_limited(ck, exe, wd)
    noise_and_jitter(ck, exe, wd)
    shared_experts(ck, exe, wd)
    preset(ck, exe, wd)
    refusals(ck, exe, wd)
    ck.finish()


if __name__ == "__main__":
    main()
