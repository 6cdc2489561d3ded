"""The router and capacity options of issue 9 against the serial reference (moetest.Reference,
extended for them), at R = 1, 2 and 3 (601 tokens: 3 does not divide them, 2 neither):

1. Reference runs. For each case below, at every R: the routing CSV's experts are the reference's
   top-k on the selection key (near ties within TIE_TOL taken as moesim broke them, counted),
   its accepted flags equal the reference's exactly, its gates are within GATE_RTOL, y from
   --dump-output within Y_ATOL + Y_RTOL |y|, and every JSON count is exact: experts[].routed /
   accepted / dropped / capacity, drops (assignments, dropped_assignments, dropped_tokens,
   max_expert_load, and cf_needed to within 4 ulps of the exact L E / (G k)), waste (slots,
   empty_slots), the ablation row's capacity, its exact prediction and its max_expert_load and
   cf_needed; load_balance.P (the softmax probabilities, or the sigmoid scores normalized over the
   experts) within 1e-5; and config.score / topk_scale / min_capacity / expert_bias_file.
     sigmoid            --score sigmoid, cf 1.0, global
     sigmoid_bias       --score sigmoid --expert-bias-file b.npy (shape (1, E)) --topk-scale 2.5
     softmax_bias_local --expert-bias-file b.npy (shape (E, 1)) --renormalize, cf 1.1, local
     scale_min_local    --topk-scale 0.5 --min-capacity 40, cf 0.5, local: C = 40 > ceil(33.4)
                        in every group
     min_global         --min-capacity 120, cf 0.5, global: C = 120 > ceil(100.17); and a floor
                        below the formula (--min-capacity 50) changes nothing
     sigmoid_k1         --score sigmoid --top-k 1 --topk-scale 2: a single sigmoid gate is
                        normalized to 1 (DeepSeek-V3's Gate), so every gate is exactly 2
     dropless_bias      --score sigmoid --expert-bias-file, cf 0 (global and local)
   The bias is strong (0.3 x N(0, 1), against scores in (0, 1)), so the biased routing must differ
   from the unbiased one on many tokens (checked against a run without the bias), while the gates
   stay the scores: the reference's gates are s (or p) normalized, never s + b.
2. Rank-count invariance (global scope): the CSV's expert and accepted columns and every JSON
   count (experts, drops with max_expert_load and cf_needed, waste) are identical (==) at R = 1,
   2, 3 for sigmoid, sigmoid_bias, min_global and dropless_bias.
3. cf_needed: for the dropless runs (both scopes, every R), a rerun at --capacity-factor cf_needed
   (the JSON's double, printed back exactly by repr) drops nothing, and one at cf_low =
   max_g (L_g - 1) E / (G_g k) (where the tightest group's ceiling falls one slot short) drops at
   least one assignment; the text report's Drops block prints the same load and a cf that reads
   back at or above cf_needed.
4. --predict-only with --min-capacity (local, R = 3, cf list 0.5,1.0): ablation[].capacity and
   the exact predicted drops and empty slots equal the reference's; predicted.max_expert_load and
   cf_needed equal the reference's.
5. Bad selection-bias files are refused like the other .npy inputs (exit 2, one `moesim: error:`
   line naming --expert-bias-file, nothing written), at R = 1 and 3: a 1-D array, the wrong E,
   a NaN (finite values only), a float64 value that overflows float32, a directory, a missing
   file, an int32 array; and an output path equal to the bias file.

Tolerances are test_reference.py's (the reference is float64 from the same float32 inputs): gates
rtol 3e-5 (logit error ~1e-5, a sigmoid or softmax inherits at most twice that; the route scale
multiplies both sides), near ties 3e-5 on the selection key, y 1e-4 + 1e-4 |y| (the scale 2.5
multiplies an error of ~1e-5).
"""

import os
import re
from fractions import Fraction

import numpy as np

import moetest as mt

GATE_RTOL = 3e-5
TIE_TOL = 3e-5
Y_ATOL, Y_RTOL = 1e-4, 1e-4
N, D, E, K, SEED = 601, 24, 6, 2, 3
RANKS = (1, 2, 3)
ULP = 2.0 ** -52


def base_args(k=K, seed=SEED):
    return ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", k, "--seed", seed,
            "--iters", 1, "--warmup", 0]


def bias_values():
    rng = np.random.default_rng(9)
    return (0.3 * rng.standard_normal(E)).astype(np.float32)


def compare(ck, tag, res, ref, cf, scope, R, opts):
    """Every check of one run against its reference (ref.solve() is called here)."""
    k = ref.k
    expert, gate, acc = res.routing_matrix(k)
    bad = ref.adopt_near_ties(expert, TIE_TOL)
    ck.check(not bad, tag + ": CSV experts are the reference's top-k on the selection key",
             "%d tokens differ, first %s: got %s, expected %s (key %s)" % (
                 len(bad), bad[:1], expert[bad[0]] if bad else "",
                 ref.expert[bad[0]] if bad else "", np.round(ref.sel[bad[0]], 6) if bad else ""))
    if ref.ties_adopted:
        print("note: %s: %d near ties (|d key| < %g) resolved as moesim did" % (
            tag, ref.ties_adopted, TIE_TOL))
    ref.solve()
    ck.close(gate, ref.gate, tag + ": CSV gates", rtol=GATE_RTOL, atol=1e-7)
    ck.check(np.array_equal(acc, ref.accepted), tag + ": CSV accepted flags",
             "%d of %d differ" % ((acc != ref.accepted).sum(), acc.size))
    y_ref = ref.output()
    ck.close(res.y, y_ref, tag + ": y", rtol=Y_RTOL, atol=Y_ATOL)
    doc = res.json
    ck.equal([e["routed"] for e in doc["experts"]], ref.routed_per_expert.tolist(),
             tag + ": experts[].routed")
    ck.equal([e["accepted"] for e in doc["experts"]], ref.accepted_per_expert.tolist(),
             tag + ": experts[].accepted")
    ck.equal([e["dropped"] for e in doc["experts"]],
             (ref.routed_per_expert - ref.accepted_per_expert).tolist(), tag + ": experts[].dropped")
    cap = ref.capacity_per_expert
    ck.equal([e["capacity"] for e in doc["experts"]], [cap] * E, tag + ": experts[].capacity")
    n_acc = int(ref.accepted.sum())
    groups = mt.group_sizes(N, scope, R)
    max_load, need, _ = mt.capacity_needed(ref.loads, groups, k, E)
    drops = doc["drops"]
    ck.equal({key: drops[key] for key in ("assignments", "dropped_assignments", "dropped_tokens",
                                          "max_expert_load")},
             {"assignments": N * k, "dropped_assignments": N * k - n_acc,
              "dropped_tokens": ref.dropped_tokens, "max_expert_load": max_load},
             tag + ": JSON drops (counts and the largest expert load)")
    ck.check(drops["cf_needed"] is not None and
             abs(Fraction(drops["cf_needed"]) - need) <= 4 * ULP * need,
             tag + ": drops.cf_needed = max_g L_g E / (G_g k) within 4 ulps",
             "got %r, exact %s = %.17g" % (drops["cf_needed"], need, float(need)))
    slots = n_acc if cap is None else cap * E
    ck.equal((doc["waste"]["slots"], doc["waste"]["empty_slots"]), (slots, slots - n_acc),
             tag + ": JSON waste slots, empty_slots")
    row = doc["ablation"][0]
    exact = mt.apply_capacity(ref.expert, E, cf, scope, R, opts.get("min_capacity", 0))
    ck.equal((row["capacity"], row["predicted"]["exact_dropped_assignments"],
              row["predicted"]["exact_empty_slots"], row["predicted"]["max_expert_load"],
              row["predicted"]["cf_needed"]),
             (cap, exact["dropped_assignments"], exact["empty_slots"], max_load,
              drops["cf_needed"]),
             tag + ": ablation[0] capacity, exact prediction, max_expert_load, cf_needed")
    P = mt.balance_probs(ref.p, ref.score).mean(axis=0)
    ck.close(doc["load_balance"]["P"], P, tag + ": load_balance.P", rtol=1e-5, atol=0)
    ck.close(sum(doc["load_balance"]["P"]), 1.0, tag + ": load_balance.P sums to 1", rtol=0,
             atol=1e-6)
    ck.close(doc["output"]["checksum"], y_ref.sum(), tag + ": output.checksum", rtol=0,
             atol=Y_ATOL * N * D)
    c = doc["config"]
    ck.equal((c["score"], c["topk_scale"], c["min_capacity"], c["expert_bias_file"]),
             (opts.get("score", "softmax"), float(opts.get("topk_scale", 1.0)),
              int(opts.get("min_capacity", 0)), opts.get("bias_path")),
             tag + ": config.score, topk_scale, min_capacity, expert_bias_file")
    return doc


def options_args(opts):
    a = []
    if "score" in opts:
        a += ["--score", opts["score"]]
    if "bias_path" in opts:
        a += ["--expert-bias-file", opts["bias_path"]]
    if "topk_scale" in opts:
        a += ["--topk-scale", opts["topk_scale"]]
    if "min_capacity" in opts:
        a += ["--min-capacity", opts["min_capacity"]]
    if opts.get("renormalize"):
        a.append("--renormalize")
    return a


def run_case(ck, exe, wd, name, cf, scope, opts, R, k=K):
    tag = "%s R=%d" % (name, R)
    args = base_args(k) + ["--capacity-factor", cf, "--capacity-scope", scope] + options_args(opts)
    res = ck.guard(tag, mt.run_full, exe, R, args, wd, "%s_R%d" % (name, R), quiet=False)
    if res is None:
        return None, None
    ref = mt.generated_reference(SEED, N, D, E, k, cf, scope=scope, ranks=R,
                                 renormalize=opts.get("renormalize", False),
                                 score=opts.get("score", "softmax"), bias=opts.get("bias"),
                                 topk_scale=float(opts.get("topk_scale", 1.0)),
                                 min_capacity=int(opts.get("min_capacity", 0)))
    compare(ck, tag, res, ref, cf, scope, R, opts)
    return res, ref


def invariance(ck, name, results, k):
    """Global scope: the counts and the routing do not depend on R."""
    base = results.get(1)
    if base is None:
        return
    b_exp, _, b_acc = base.routing_matrix(k)
    for R, res in results.items():
        if R == 1 or res is None:
            continue
        expert, _, acc = res.routing_matrix(k)
        ck.check(np.array_equal(expert, b_exp) and np.array_equal(acc, b_acc),
                 "%s R=%d: CSV expert and accepted columns identical to R=1" % (name, R))
        got, want = mt.json_counts(res.json), mt.json_counts(base.json)
        for key in ("experts", "drops", "waste"):
            ck.equal(got[key], want[key], "%s R=%d: JSON %s identical (==) to R=1" % (name, R, key))


def drops_block(stdout):
    """The 'largest expert load' line of the Drops block: (load, cf text)."""
    m = re.search(r"^  largest expert load\s+(\d+)\s+\(one expert, one group\): "
                  r"cf (\S+) drops nothing$", stdout, re.MULTILINE)
    return (int(m.group(1)), m.group(2)) if m else None


def cf_needed_reruns(ck, exe, wd, name, scope, opts, R, res, ref):
    """A dropless run's cf_needed drops nothing when rerun with it; cf_low drops something."""
    doc = res.json
    need = doc["drops"]["cf_needed"]
    line = drops_block(res.run.stdout)
    ck.check(line is not None and line[0] == doc["drops"]["max_expert_load"] and
             float(line[1]) >= need,
             "%s R=%d: the Drops block prints the load and a cf >= cf_needed" % (name, R),
             "line %r, JSON %r" % (line, doc["drops"]))
    _, _, low = mt.capacity_needed(ref.loads, mt.group_sizes(N, scope, R), K, E)
    for cf, want_zero in ((repr(need), True), (repr(float(low)), False)):
        tag = "%s R=%d rerun at cf %s" % (name, R, cf)
        args = base_args() + ["--capacity-factor", cf, "--capacity-scope", scope] + \
            options_args(opts)
        r = ck.guard(tag, mt.run_full, exe, R, args, wd, "%s_R%d_cf%s" % (name, R, cf),
                     routing=False, output=False)
        if r is None:
            continue
        d = r.json["drops"]
        if want_zero:
            ck.equal(d["dropped_assignments"], 0, tag + ": cf_needed drops nothing")
            ck.equal((d["max_expert_load"], d["cf_needed"]),
                     (doc["drops"]["max_expert_load"], need),
                     tag + ": the same load and cf_needed (routing does not depend on cf)")
        else:
            ck.check(d["dropped_assignments"] > 0,
                     tag + ": cf_low = max_g (L_g - 1) E / (G_g k) drops something",
                     "%r" % d)


def predict_only_min(ck, exe, wd, bias):
    R, cfs, M = 3, ["0.5", "1.0"], 40
    tag = "predict_only_min_local R=%d" % R
    args = base_args() + ["--capacity-factor", ",".join(cfs), "--capacity-scope", "local",
                          "--min-capacity", M, "--predict-only", "--score", "sigmoid"]
    res = ck.guard(tag, mt.run_full, exe, R, args, wd, "predict_min", routing=False, output=False)
    if res is None:
        return
    ref = mt.generated_reference(SEED, N, D, E, K, cfs[0], scope="local", ranks=R,
                                 score="sigmoid", min_capacity=M)
    ref.solve()
    max_load, need, _ = mt.capacity_needed(ref.loads, mt.group_sizes(N, "local", R), K, E)
    for cf, row in zip(cfs, res.json["ablation"]):
        mine = mt.apply_capacity(ref.expert, E, cf, "local", R, M)
        p = row["predicted"]
        ck.equal((row["capacity"], p["exact_dropped_assignments"], p["exact_empty_slots"],
                  p["max_expert_load"]),
                 (mine["capacity"], mine["dropped_assignments"], mine["empty_slots"], max_load),
                 "%s cf %s: capacity, exact prediction, max_expert_load" % (tag, cf))
        ck.check(abs(Fraction(p["cf_needed"]) - need) <= 4 * ULP * need,
                 "%s cf %s: predicted.cf_needed" % (tag, cf), "%r vs %s" % (p["cf_needed"], need))
    ck.equal(res.json["ablation"][0]["capacity"], 3 * M,
             tag + ": cf 0.5: the floor 40 in each of 3 groups (ceil(0.5 * 200 * 2 / 6) = 34)")
    ck.equal(res.json["drops"], None, tag + ": drops null (nothing moved)")


def bad_files(ck, exe, wd):
    d = os.path.join(wd, "bad")
    os.makedirs(d)
    p = lambda n: os.path.join(d, n)
    b = bias_values()
    np.save(p("oned.npy"), b)
    np.save(p("wrong_e.npy"), np.zeros((1, E + 1), dtype=np.float32))
    np.save(p("two_rows.npy"), np.zeros((2, E), dtype=np.float32))
    bn = b.reshape(1, E).copy()
    bn[0, 4] = np.nan
    np.save(p("nan.npy"), bn)
    b64 = b.reshape(E, 1).astype(np.float64)
    b64[2, 0] = 1e39
    np.save(p("overflow.npy"), b64)
    np.save(p("int32.npy"), np.zeros((1, E), dtype=np.int32))
    np.save(p("good.npy"), b.reshape(1, E))
    os.makedirs(p("adir"))
    cases = [
        ("bias_1d", "oned.npy", [r"--expert-bias-file", r"dimension", r"\(1, 6\)"]),
        ("bias_wrong_E", "wrong_e.npy", [r"--expert-bias-file", r"\(1, 7\)", r"6 experts"]),
        ("bias_two_rows", "two_rows.npy", [r"--expert-bias-file", r"\(2, 6\)"]),
        ("bias_nan", "nan.npy", [r"--expert-bias-file", r"nan|finite|not a number"]),
        ("bias_f64_overflow", "overflow.npy", [r"--expert-bias-file", r"inf|finite|range"]),
        ("bias_int32", "int32.npy", [r"--expert-bias-file", r"dtype|float"]),
        ("bias_directory", "adir", [r"--expert-bias-file", r"directory"]),
        ("bias_missing", "missing.npy", [r"--expert-bias-file", r"No such file"]),
    ]
    small = ["--tokens", 60, "--hidden", 8, "--experts", E]
    for R in (1, 3):
        for tag, name, pats in cases:
            mt.check_refused(ck, exe, "%s R=%d" % (tag, R), R,
                             small + ["--expert-bias-file", p(name)], pats, wd)
    # an output that is the bias file is refused, and the file is left as it was
    before = open(p("good.npy"), "rb").read()
    r = mt.run(exe, 2, small + ["--expert-bias-file", p("good.npy"), "--json", p("good.npy"),
                                "--quiet"], timeout=20)
    ck.equal(r.returncode, 2, "bias file as --json output: exit 2")
    ck.check(any("--expert-bias-file" in l for l in r.own_stderr),
             "bias file as --json output: the message names --expert-bias-file", r.describe())
    ck.check(open(p("good.npy"), "rb").read() == before, "bias file as --json output: untouched")


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_router_options")
    wd = mt.workdir()
    b = bias_values()
    row_path, col_path = os.path.join(wd, "bias_row.npy"), os.path.join(wd, "bias_col.npy")
    np.save(row_path, b.reshape(1, E))
    np.save(col_path, b.reshape(E, 1))
    cases = [
        ("sigmoid", "1.0", "global", {"score": "sigmoid"}, K),
        ("sigmoid_bias", "1.0", "global",
         {"score": "sigmoid", "bias": b, "bias_path": row_path, "topk_scale": "2.5"}, K),
        ("softmax_bias_local", "1.1", "local",
         {"bias": b, "bias_path": col_path, "renormalize": True}, K),
        ("scale_min_local", "0.5", "local", {"topk_scale": "0.5", "min_capacity": 40}, K),
        ("min_global", "0.5", "global", {"min_capacity": 120}, K),
        ("min_below_formula", "0.5", "global", {"min_capacity": 50}, K),
        ("sigmoid_k1", "1.25", "global", {"score": "sigmoid", "topk_scale": "2"}, 1),
        ("dropless_bias", "0", "global", {"score": "sigmoid", "bias": b, "bias_path": row_path}, K),
        ("dropless_bias_local", "0", "local",
         {"score": "sigmoid", "bias": b, "bias_path": row_path}, K),
    ]
    runs = {}
    for name, cf, scope, opts, k in cases:
        runs[name] = {}
        for R in RANKS:
            res, ref = run_case(ck, exe, wd, name, cf, scope, opts, R, k)
            runs[name][R] = res
            if res is not None and cf == "0":
                cf_needed_reruns(ck, exe, wd, name, scope, opts, R, res, ref)

    # what the cases are there for
    r = runs["min_global"].get(1)
    if r is not None:
        ck.equal(r.json["experts"][0]["capacity"], 120, "min_global: C = 120, the floor")
    r = runs["min_below_formula"].get(1)
    if r is not None:
        ck.equal(r.json["experts"][0]["capacity"], 101, "min_below_formula: C = ceil(100.17)")
    r = runs["scale_min_local"].get(3)
    if r is not None:
        ck.equal(r.json["experts"][0]["capacity"], 120, "scale_min_local R=3: 40 in each group")
        _, gate, _ = r.routing_matrix(K)
        ck.check(np.all(gate.sum(axis=1) <= 0.5 + 1e-6), "scale_min_local: gates sum to at most 0.5")
    r = runs["sigmoid_bias"].get(1)
    if r is not None:
        _, gate, _ = r.routing_matrix(K)
        ck.close(gate.sum(axis=1), np.full(N, 2.5), "sigmoid_bias: gates sum to the scale 2.5",
                 rtol=0, atol=2e-6)
        plain = runs["sigmoid"].get(1)
        if plain is not None:
            ex_b, _, _ = r.routing_matrix(K)
            ex_p, _, _ = plain.routing_matrix(K)
            moved = int((np.sort(ex_b, axis=1) != np.sort(ex_p, axis=1)).any(axis=1).sum())
            ck.check(moved > N // 10, "sigmoid_bias: the bias changes the choice of many tokens",
                     "%d of %d tokens" % (moved, N))
    r = runs["sigmoid"].get(1)
    if r is not None:
        _, gate, _ = r.routing_matrix(K)
        ck.close(gate.sum(axis=1), np.ones(N), "sigmoid: normalized gates sum to 1", rtol=0,
                 atol=1e-6)
    r = runs["sigmoid_k1"].get(1)
    if r is not None:
        _, gate, _ = r.routing_matrix(1)
        ck.check(np.all(gate == 2.0), "sigmoid_k1: the single gate is s / s = 1, times 2, exactly",
                 "range %g .. %g" % (gate.min(), gate.max()))
    for name, k in (("sigmoid", K), ("sigmoid_bias", K), ("min_global", K), ("dropless_bias", K),
                    ("sigmoid_k1", 1)):
        invariance(ck, name, runs[name], k)

    predict_only_min(ck, exe, wd, b)
    bad_files(ck, exe, wd)
    ck.finish()


if __name__ == "__main__":
    main()
