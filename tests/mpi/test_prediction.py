"""The prediction of drops and empty slots, before any token row moves, against the measurement.

1. Counts-based ("exact") prediction equals the measurement, exactly, for every capacity factor of
   a list that includes 0 (dropless), in both capacity scopes (global, local) and the only policy
   (position), at R = 1, 2, 3, 4 with uneven splits (N = 301, E = 7) and a skewed router with a hot
   expert so that there are real drops:
     ablation[i].predicted.exact_dropped_assignments == ablation[i].dropped_assignments
     ablation[i].predicted.exact_empty_slots         == ablation[i].empty_slots
   cf 0: capacity null, every prediction and measurement 0. Both also equal this file's own count
   (moetest.apply_capacity on the routing of the --dump-routing CSV). The first cf's entry equals
   the top-level drops / waste / traffic and experts[].capacity; capacity is the formula summed
   over groups; global-scope counts are the same for every R.
2. The closed form: expected_* equal this file's Binomial sums (exact integer coefficients) with
   q_i = min(1, k P_i) from load_balance.P (rtol 1e-6: P is printed with 17 digits) and, for the
   _uniform keys, q_i = k/E (rtol 1e-9); closed_form_error == expected - measured (atol 1e-7 ·
   max(1, |expected|): both printed with 17 significant digits).
3. A uniform router with small groups (N = 64, E = 8, k = 1, local scope, R = 4, cf 1.0: groups of
   16 tokens, C = 2) overflows: the uniform closed form predicts drops > 0 and drops are measured.
4. The text: the "Prediction, before any token row moves" table comes before the report
   ("Experts"), the "Capacity-factor ablation" table after it, and both hold the JSON's numbers.
   --predict-only exits 0, prints the prediction but no report, and writes a JSON whose ablation
   entries have capacity and predicted (equal to a full run's) and every measured key null, with
   the top-level drops / waste / timing / bandwidth / output null, and the traffic of the first cf
   planned: its dispatch bytes equal the full run's.
"""

import numpy as np

import moetest as mt

N, D, E, K = 301, 16, 7, 2
CFS = ["1.25", "0", "0.5", "1.0", "2.0"]  # first cf drops; the list includes dropless
WORKLOAD = ["--skew", "0.8", "--hot-experts", "1", "--hot-share", "0.5"]


def base_args(n=N, d=D, e=E, k=K, cfs=CFS, scope="global", extra=WORKLOAD):
    return (["--tokens", n, "--hidden", d, "--experts", e, "--top-k", k, "--capacity-factor",
             ",".join(cfs), "--capacity-scope", scope, "--drop-policy", "position", "--iters", 1,
             "--warmup", 0] + list(extra))


def close_rel(ck, got, want, what, rtol):
    ck.check(got is not None and abs(got - want) <= rtol * max(1.0, abs(want)), what,
             "got %r expected %r (rtol %g)" % (got, want, rtol))


def check_ablation(ck, tag, res, n, e, k, cfs, scope, R):
    """Every check of section 1 and 2 of the docstring on one run."""
    doc = res.json
    ab = doc["ablation"]
    if not ck.equal(len(ab), len(cfs), tag + ": one ablation entry per cf"):
        return
    ck.equal([a["capacity_factor"] for a in ab], [float(c) for c in cfs],
             tag + ": ablation in the order given")
    ck.equal(doc["config"]["capacity_factors"], [float(c) for c in cfs],
             tag + ": config.capacity_factors")
    expert, _, acc = res.routing_matrix(k)
    P = doc["load_balance"]["P"]
    q_router = [min(1.0, k * p) for p in P]
    q_uniform = [k / e] * e
    for cf, a in zip(cfs, ab):
        t = "%s cf %s" % (tag, cf)
        mine = mt.apply_capacity(expert, e, cf, scope, R)
        pr = a["predicted"]
        ck.equal(a["capacity"], mine["capacity"], t + ": capacity = sum over groups of "
                 "ceil(cf G k / E) (%s scope)" % scope)
        ck.equal(pr["exact_dropped_assignments"], a["dropped_assignments"],
                 t + ": predicted exact dropped == measured")
        ck.equal(pr["exact_empty_slots"], a["empty_slots"], t + ": predicted exact empty == measured")
        ck.equal((a["dropped_assignments"], a["empty_slots"], a["dropped_tokens"]),
                 (mine["dropped_assignments"], mine["empty_slots"], mine["dropped_tokens"]),
                 t + ": measured (dropped, empty, dropped tokens) == capacity applied to the CSV routing")
        if float(cf) == 0:
            ck.equal(a["capacity"], None, t + ": dropless capacity is null")
            ck.equal((pr["exact_dropped_assignments"], pr["exact_empty_slots"],
                      pr["expected_dropped_assignments"], pr["expected_empty_slots"],
                      pr["expected_dropped_assignments_uniform"],
                      pr["expected_empty_slots_uniform"], a["dropped_assignments"],
                      a["empty_slots"]), (0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0),
                     t + ": dropless predicts and measures 0 dropped, 0 empty")
        # the closed form, recomputed here
        dr, em = mt.closed_form(q_router, cf, n, k, e, scope, R)
        close_rel(ck, pr["expected_dropped_assignments"], dr, t + ": closed form dropped "
                  "(Binomial, q = min(1, k P))", 1e-6)
        close_rel(ck, pr["expected_empty_slots"], em, t + ": closed form empty", 1e-6)
        du, eu = mt.closed_form(q_uniform, cf, n, k, e, scope, R)
        close_rel(ck, pr["expected_dropped_assignments_uniform"], du,
                  t + ": uniform closed form dropped (q = k/E)", 1e-9)
        close_rel(ck, pr["expected_empty_slots_uniform"], eu, t + ": uniform closed form empty", 1e-9)
        cfe = a["closed_form_error"]
        close_rel(ck, cfe["dropped_assignments"],
                  pr["expected_dropped_assignments"] - a["dropped_assignments"],
                  t + ": closed_form_error.dropped_assignments = expected - measured", 1e-7)
        close_rel(ck, cfe["empty_slots"], pr["expected_empty_slots"] - a["empty_slots"],
                  t + ": closed_form_error.empty_slots = expected - measured", 1e-7)

    # the first cf describes the top level
    first = ab[0]
    ck.equal((first["dropped_assignments"], first["dropped_tokens"], first["empty_slots"]),
             (doc["drops"]["dropped_assignments"], doc["drops"]["dropped_tokens"],
              doc["waste"]["empty_slots"]),
             tag + ": first cf's (dropped, dropped tokens, empty) == top-level drops/waste")
    ck.equal(first["flops_wasted"], doc["waste"]["flops_wasted"],
             tag + ": first cf's flops_wasted == waste.flops_wasted")
    ck.equal(first["dispatch_bytes"], int(np.sum(doc["traffic"]["dispatch_bytes"])),
             tag + ": first cf's dispatch_bytes == sum of traffic.dispatch_bytes")
    ck.equal([x["capacity"] for x in doc["experts"]], [first["capacity"]] * e,
             tag + ": experts[].capacity is the first cf's")
    ck.equal(doc["config"]["capacity_factor"], float(cfs[0]), tag + ": config.capacity_factor is the first")
    mine = mt.apply_capacity(expert, e, cfs[0], scope, R)
    ck.check(np.array_equal(acc, mine["accepted"]),
             tag + ": CSV accepted flags (first cf) == position policy applied to its routing",
             "%d assignments differ" % (acc != mine["accepted"]).sum())
    return ab


def counts_of(ab):
    return [(a["capacity"], a["dropped_assignments"], a["dropped_tokens"], a["empty_slots"],
             a["predicted"]["exact_dropped_assignments"], a["predicted"]["exact_empty_slots"])
            for a in ab]


def exact_everywhere(ck, exe, wd):
    base = {}
    for scope in ("global", "local"):
        for R in (1, 2, 3, 4):
            tag = "exact_%s_R%d" % (scope, R)
            res = ck.guard(tag, mt.run_full, exe, R, base_args(scope=scope), wd, tag, output=False)
            if res is None:
                continue
            ab = check_ablation(ck, tag, res, N, E, K, CFS, scope, R)
            if ab is None:
                continue
            dropping = [a["dropped_assignments"] for a in ab if float(a["capacity_factor"]) in (1.0, 1.25)]
            ck.check(all(x > 0 for x in dropping), tag + ": the workload drops at cf 1.0 and 1.25",
                     "dropped %s" % dropping)
            if scope == "global":
                if R == 1:
                    base[scope] = counts_of(ab)
                elif scope in base:
                    ck.equal(counts_of(ab), base[scope], tag + ": global-scope ablation counts == R=1")
    # a second workload: hot experts only, k = 1, E = 6, N = 250
    cfs = ["0.75", "1.0", "0", "1.5"]
    for scope in ("global", "local"):
        for R in (2, 3):
            tag = "exact_hot_k1_%s_R%d" % (scope, R)
            args = base_args(n=250, e=6, k=1, cfs=cfs, scope=scope,
                             extra=["--hot-experts", 2, "--hot-share", 0.6, "--seed", 5])
            res = ck.guard(tag, mt.run_full, exe, R, args, wd, tag, output=False)
            if res is not None:
                check_ablation(ck, tag, res, 250, 6, 1, cfs, scope, R)


def uniform_small_groups(ck, exe, wd):
    tag = "uniform_small_groups"
    args = base_args(n=64, e=8, k=1, cfs=["1.0", "2.0"], scope="local", extra=[])
    res = ck.guard(tag, mt.run_full, exe, 4, args, wd, tag, output=False)
    if res is None:
        return
    ab = check_ablation(ck, tag, res, 64, 8, 1, ["1.0", "2.0"], "local", 4)
    if ab is None:
        return
    a = ab[0]
    ck.equal(a["capacity"], 4 * 2, tag + ": capacity 2 slots per group of 16, 4 groups")
    du = a["predicted"]["expected_dropped_assignments_uniform"]
    ck.check(du > 0, tag + ": the uniform closed form predicts drops at cf 1.0", "%r" % du)
    ck.check(a["dropped_assignments"] > 0, tag + ": drops are measured at cf 1.0",
             "%r" % a["dropped_assignments"])
    ck.check(ab[1]["dropped_assignments"] <= a["dropped_assignments"],
             tag + ": fewer drops at cf 2.0")
    print("%s: uniform closed form %.2f, router closed form %.2f, measured %d dropped" % (
        tag, du, a["predicted"]["expected_dropped_assignments"], a["dropped_assignments"]))


def text_and_predict_only(ck, exe, wd):
    args = base_args(scope="local")
    tag = "text_R3"
    full = ck.guard(tag, mt.run_full, exe, 3, args, wd, tag, output=False, quiet=False)
    if full is None:
        return
    out = full.run.stdout
    p, x, a = (out.find("Prediction, before any token row moves"), out.find("\nExperts"),
               out.find("Capacity-factor ablation"))
    ck.check(0 <= p < x < a, tag + ": prediction table, then the report (Experts), then the "
             "ablation table", "offsets %d, %d, %d" % (p, x, a))
    ab = full.json["ablation"]
    pt, at = mt.prediction_table(out), mt.ablation_table(out)
    if ck.check(pt is not None and len(pt) == len(CFS), tag + ": one prediction row per cf",
                "%r" % pt):
        for row, j in zip(pt, ab):
            t = "%s: prediction row cf %g" % (tag, j["capacity_factor"])
            ck.equal((row["cf"], row["capacity"]), (j["capacity_factor"], j["capacity"]),
                     t + ": cf and capacity")
            ck.equal(row["exact"], (j["predicted"]["exact_dropped_assignments"],
                                    j["predicted"]["exact_empty_slots"]), t + ": exact columns")
            ck.close(row["router"], (j["predicted"]["expected_dropped_assignments"],
                                     j["predicted"]["expected_empty_slots"]),
                     t + ": closed-form columns (printed to 0.1)", rtol=0, atol=0.051)
            ck.close(row["uniform"], (j["predicted"]["expected_dropped_assignments_uniform"],
                                      j["predicted"]["expected_empty_slots_uniform"]),
                     t + ": uniform columns (printed to 0.1)", rtol=0, atol=0.051)
    if ck.check(at is not None and len(at) == len(CFS), tag + ": one ablation row per cf",
                "%r" % at):
        for row, j in zip(at, ab):
            ck.equal((row["cf"], row["capacity"], row["dropped"], row["dropped_tokens"],
                      row["empty"], row["exact_dropped"]),
                     (j["capacity_factor"], j["capacity"], j["dropped_assignments"],
                      j["dropped_tokens"], j["empty_slots"],
                      j["predicted"]["exact_dropped_assignments"]),
                     "%s: ablation row cf %g holds the JSON's numbers" % (tag, j["capacity_factor"]))

    tag = "predict_only_R3"
    po = ck.guard(tag, mt.run_full, exe, 3, args + ["--predict-only"], wd, tag, routing=False,
                  output=False, quiet=False)
    if po is None:
        return
    out, doc = po.run.stdout, po.json
    ck.check("Prediction, before any token row moves" in out, tag + ": prints the prediction")
    ck.check("Experts" not in out and "Capacity-factor ablation" not in out
             and "Phase times" not in out, tag + ": prints no report and no ablation table", out)
    ck.equal(doc["config"]["predict_only"], True, tag + ": config.predict_only")
    for key in ("drops", "waste", "timing", "bandwidth", "output"):
        ck.check(key in doc and doc[key] is None, tag + ": top-level %s is null" % key,
                 "%r" % doc.get(key, "<absent>"))
    # the traffic the first cf's decision makes is planned without moving anything (issue 10)
    if ck.check(doc.get("traffic") is not None, tag + ": traffic is planned"):
        ck.equal(int(np.sum(doc["traffic"]["dispatch_bytes"])), ab[0]["dispatch_bytes"],
                 tag + ": planned dispatch bytes == the full run's first cf")
    pab = doc["ablation"]
    if ck.equal(len(pab), len(CFS), tag + ": one ablation entry per cf"):
        for j, pj in zip(ab, pab):
            t = "%s cf %g" % (tag, j["capacity_factor"])
            ck.equal((pj["capacity_factor"], pj["capacity"]), (j["capacity_factor"], j["capacity"]),
                     t + ": capacity as in the full run")
            ck.equal({k: pj["predicted"][k] for k in ("exact_dropped_assignments", "exact_empty_slots")},
                     {k: j["predicted"][k] for k in ("exact_dropped_assignments", "exact_empty_slots")},
                     t + ": exact prediction as in the full run")
            for k in ("expected_dropped_assignments", "expected_empty_slots",
                      "expected_dropped_assignments_uniform", "expected_empty_slots_uniform"):
                close_rel(ck, pj["predicted"][k], j["predicted"][k],
                          t + ": predicted.%s as in the full run" % k, 1e-9)
            missing = [k for k in mt.ABLATION_MEASURED if k not in pj]
            ck.check(not missing, t + ": every measured key is present (as null)",
                     "absent: %s" % missing)
            notnull = [k for k in mt.ABLATION_MEASURED if k in pj and pj[k] is not None]
            ck.check(not notnull, t + ": measured keys are null", "not null: %s" % notnull)


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_prediction")
    wd = mt.workdir()
    exact_everywhere(ck, exe, wd)
    uniform_small_groups(ck, exe, wd)
    text_and_predict_only(ck, exe, wd)
    ck.finish()


if __name__ == "__main__":
    main()
