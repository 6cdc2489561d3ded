"""--mode fwd-bwd and --mode train (issue 12; docs/training.md).

  - fwd-bwd against the float64 NumPy backward (moetest.backward_reference, written from
    docs/training.md): at R = 1, 2, 3 (global scope, cf 1.0 so that assignments drop), with the
    softmax router, --renormalize and sigmoid with --topk-scale, with the aux loss and the z-loss
    weighted: training.task_loss, aux_loss, z_loss and the gradients' norms (router, experts,
    layer input) equal the reference within 2e-6 relative (float32 against float64 over sums of
    a few thousand terms; measured 1e-8 to 8e-8). The run at R = 2 and 3 equals R = 1 within the
    same tolerance: the distributed backward is the serial one; so do --a2a hierarchical (R = 3,
    two emulated nodes) and --pad-to-capacity. Local scope at R = 2 equals its
    own reference (its capacity groups are the ranks);
  - --token-mean 0.5 and --teacher-experts 3 against the reference (moetest.add_token_mean,
    gen_teacher with 3 experts) at R = 1, 2;
  - cf 0.001 (one slot per expert): nearly every assignment dropped, most tokens leave as their
    residual; equal to the reference, which gives a dropped assignment no gradient;
  - timing: the backward phases (combine_bwd, expert_bwd, dispatch_bwd, router_bwd, allreduce and
    the two waits) are in timing in fwd-bwd and absent in forward; the step sums them;
  - the memory estimate of fwd-bwd exceeds forward's by at least the saved activations and
    gradients, and train's by the optimizer's state (Adam two floats a weight, SGD one);
  - train: --steps 12 (the default SGD) lowers the task loss; steps[] carries task_loss, aux_loss, z_loss
    (null in forward), the CSV the task_loss / train_aux_loss / train_z_loss columns, and
    training.optimizer_steps = steps; the same at R = 1 and R = 2 within 1e-4 over the steps
    (float rounding of the summed router gradient compounds over steps);
  - collapse (the documented configuration at R = 2): alpha = 0 starves experts and its Gini
    grows while its task loss falls; alpha = 1e-2 and --expert-bias stay balanced (collapse());
  - refusals: --optimizer or --lr outside train, --aux-loss-coeff / --z-loss-coeff in forward,
    and each path the backward does not cover (expert choice, --logits-file, --dispatch per-rank,
    --wire bf16, --shared-experts, --redundant-experts, --drop-policy reroute, --workload,
    --predict-only, a cf list).
"""

import csv
import json
import os

import numpy as np

import moetest as mt

SEED, N, D, E, K = 3, 500, 16, 6, 2
BASE = ["--seed", SEED, "--tokens", N, "--hidden", D, "--experts", E, "--top-k", K,
        "--iters", 1, "--warmup", 0]
RTOL = 2e-6
KEYS = ("task_loss", "aux_loss", "z_loss", "router", "experts", "input")
BWD_PHASES = ["combine_bwd_wait", "combine_bwd", "expert_bwd", "dispatch_bwd_wait", "dispatch_bwd",
              "router_bwd", "allreduce"]


def run_json(exe, R, args, wd, tag):
    path = os.path.join(wd, tag + ".json")
    r = mt.run(exe, R, [str(a) for a in args] + ["--quiet", "--json", path])
    if r.returncode != 0:
        raise AssertionError("moesim failed (%s)\n%s" % (tag, r.describe()))
    with open(path) as fh:
        return json.load(fh)


def figures(doc):
    t = doc["training"]
    g = t["grad_norm"]
    return {"task_loss": t["task_loss"], "aux_loss": t["aux_loss"], "z_loss": t["z_loss"],
            "router": g["router"], "experts": g["experts"], "input": g["input"]}


def reference(cf, scope, R, router, alpha, beta):
    opts = dict(router)
    renorm = opts.pop("renormalize", False)
    ref = mt.generated_reference(SEED, N, D, E, K, cf, scope=scope, ranks=R, renormalize=renorm,
                                 **opts).solve()
    Wt, te = mt.gen_teacher(SEED, 1, D, 2 * D)  # --teacher-experts 1: one dense FFN
    return ref, mt.backward_reference(ref, mt.teacher_target(ref.h, Wt, te), alpha, beta)


def compare(ck, tag, got, want, rtol=RTOL):
    for key in KEYS:
        ck.close(got[key], want[key], "%s: %s" % (tag, key), rtol=rtol, atol=1e-12)


ROUTERS = {
    "softmax": ([], {}),
    "renormalize": (["--renormalize"], {"renormalize": True}),
    "sigmoid": (["--score", "sigmoid", "--topk-scale", "2"], {"score": "sigmoid", "topk_scale": 2.0}),
}


def against_reference(ck, exe, wd):
    alpha, beta = 0.01, 0.001
    for name, (flags, router) in ROUTERS.items():
        args = BASE + ["--capacity-factor", "1.0", "--mode", "fwd-bwd", "--aux-loss-coeff", alpha,
                       "--z-loss-coeff", beta] + flags
        ref, want = reference(1.0, "global", 1, router, alpha, beta)
        by_r = {}
        for R in (1, 2, 3):
            tag = "%s global R=%d" % (name, R)
            doc = ck.guard(tag, run_json, exe, R, args, wd, "ref_%s_%d" % (name, R))
            if doc is None:
                continue
            ck.equal(doc["drops"]["dropped_assignments"], ref.dropped_assignments,
                     tag + ": the reference's drops (some assignments drop)")
            by_r[R] = figures(doc)
            compare(ck, tag + " vs NumPy", by_r[R], want)
        for R in (2, 3):
            if 1 in by_r and R in by_r:
                compare(ck, "%s: R=%d vs R=1" % (name, R), by_r[R], by_r[1])
    # the two-level exchange and padded experts move and compute other rows: the same gradients
    ref, want = reference(1.0, "global", 1, {}, alpha, beta)
    base = BASE + ["--capacity-factor", "1.0", "--mode", "fwd-bwd", "--aux-loss-coeff", alpha,
                   "--z-loss-coeff", beta]
    for tag, R, extra in (("hierarchical R=3", 3, ["--a2a", "hierarchical", "--ranks-per-node", 2]),
                          ("padded R=2", 2, ["--pad-to-capacity"])):
        doc = ck.guard(tag, run_json, exe, R, base + extra, wd, tag.split()[0])
        if doc is not None:
            compare(ck, tag + " vs NumPy", figures(doc), want)
    # local scope: the ranks are the capacity groups
    ref, want = reference(1.0, "local", 2, {}, alpha, beta)
    args = BASE + ["--capacity-factor", "1.0", "--capacity-scope", "local", "--mode", "fwd-bwd",
                   "--aux-loss-coeff", alpha, "--z-loss-coeff", beta]
    doc = ck.guard("local R=2", run_json, exe, 2, args, wd, "ref_local")
    if doc is not None:
        ck.equal(doc["drops"]["dropped_assignments"], ref.dropped_assignments, "local R=2: drops")
        compare(ck, "local R=2 vs NumPy", figures(doc), want)


def runs_match(ck, exe, wd, tag, ranks, args, ref, want):
    """moesim at each R: the reference's drops, and its losses and gradients within RTOL."""
    for R in ranks:
        t = "%s R=%d" % (tag, R)
        doc = ck.guard(t, run_json, exe, R, args, wd, t.replace(" ", "_").replace("=", ""))
        if doc is None:
            continue
        ck.equal(doc["drops"]["dropped_assignments"], ref.dropped_assignments,
                 t + ": the reference's drops")
        compare(ck, t + " vs NumPy", figures(doc), want)


def teacher_and_mean(ck, exe, wd):
    """--token-mean 0.5 and --teacher-experts 3: the tokens moetest.add_token_mean makes, the
    teacher's top-1 over its 3 experts; the backward equal to the reference at R = 1 and 2."""
    alpha = 0.01
    ref = mt.generated_reference(SEED, N, D, E, K, 1.0)
    h = mt.add_token_mean(SEED, mt.gen_tokens(SEED, N, D), 0.5)
    ref = mt.Reference(h, ref.W, ref.experts_w, K, 1.0).solve()
    Wt, te = mt.gen_teacher(SEED, 3, D, 2 * D)
    want = mt.backward_reference(ref, mt.teacher_target(h, Wt, te), alpha, 0.0)
    args = BASE + ["--capacity-factor", "1.0", "--mode", "fwd-bwd", "--token-mean", 0.5,
                   "--teacher-experts", 3, "--aux-loss-coeff", alpha]
    runs_match(ck, exe, wd, "mean+teacher", (1, 2), args, ref, want)


def all_dropped(ck, exe, wd):
    """cf 0.001: C = 1 slot per expert, so all but E assignments drop and most tokens leave as
    their residual. The reference gives dropped assignments no gradient and a fully dropped token
    dL/dh = dL/dy (plus the router's term): equal within RTOL at R = 1 and 3."""
    args = BASE + ["--capacity-factor", "0.001", "--mode", "fwd-bwd"]
    ref, want = reference(0.001, "global", 1, {}, 0.0, 0.0)
    ck.check((ref.accepted.sum(axis=1) == 0).sum() > N // 2, "cf 0.001: most tokens fully dropped")
    runs_match(ck, exe, wd, "cf 0.001", (1, 3), args, ref, want)


def timing_and_memory(ck, exe, wd):
    fwd = ck.guard("forward", run_json, exe, 2, BASE, wd, "fwd")
    fb = ck.guard("fwd-bwd", run_json, exe, 2, BASE + ["--mode", "fwd-bwd"], wd, "fb")
    # --token-mean 0: the tokens of forward and fwd-bwd (train shifts its tokens by default)
    tr = BASE + ["--mode", "train", "--token-mean", 0]
    tr_adam = ck.guard("train adam", run_json, exe, 2, tr + ["--optimizer", "adam"], wd, "tra")
    tr_sgd = ck.guard("train sgd", run_json, exe, 2, tr + ["--optimizer", "sgd", "--lr", "0.1"],
                      wd, "trs")
    if fwd is not None:
        ck.check(not set(BWD_PHASES) & set(fwd["timing"]), "forward: no backward phase in timing",
                 sorted(set(BWD_PHASES) & set(fwd["timing"])))
        ck.equal(fwd["training"], None, "forward: training is null")
        ck.equal(fwd["config"]["teacher_experts"], None, "forward: config.teacher_experts null")
        ck.equal((fwd["config"]["optimizer"], fwd["config"]["lr"],
                  fwd["config"]["aux_loss_coeff"], fwd["config"]["z_loss_coeff"]),
                 (None, None, None, None), "forward: the training keys of config are null")
    if fb is not None:
        tm = fb["timing"]
        ck.check(set(BWD_PHASES) <= set(tm), "fwd-bwd: every backward phase in timing",
                 sorted(set(BWD_PHASES) - set(tm)))
        if set(BWD_PHASES) <= set(tm):
            for p in BWD_PHASES:
                ck.check(0 <= tm[p]["min"] <= tm[p]["mean"] <= tm[p]["max"],
                         "fwd-bwd: timing.%s ordered and non-negative" % p, repr(tm[p]))
            bwd = sum(tm[p]["min"] for p in BWD_PHASES)
            ck.check(tm["step"]["max"] >= bwd, "fwd-bwd: the step includes the backward",
                     "%r < %r" % (tm["step"]["max"], bwd))
        ck.equal((fb["config"]["mode"], fb["config"]["aux_loss_coeff"], fb["config"]["optimizer"],
                  fb["config"]["teacher_experts"], fb["workload"]["token_mean"]),
                 ("fwd-bwd", 0.0, None, 1, 0.0), "fwd-bwd: config")
        ck.equal(fb["training"]["optimizer_steps"], 0, "fwd-bwd: no optimizer step")
    # per rank: 2 floats a weight of the router (E d) and of the rank's experts (2 f d each)
    n_le = E // 2
    weights = E * D + n_le * 2 * (2 * D) * D
    est = lambda doc: max(r["estimate_bytes"] for r in doc["memory"]["per_rank"])
    if fwd is not None and fb is not None:
        ck.check(est(fb) - est(fwd) >= 4 * weights, "fwd-bwd: the estimate counts the gradients",
                 "%d vs %d" % (est(fb), est(fwd)))
    if fb is not None and tr_adam is not None and tr_sgd is not None:
        ck.equal(est(tr_adam) - est(fb), 4 * 2 * weights, "train adam: + two floats a weight")
        ck.equal(est(tr_sgd) - est(fb), 4 * weights, "train sgd: + one float a weight")
        ck.equal((tr_adam["config"]["optimizer"], tr_sgd["config"]["optimizer"],
                  tr_sgd["config"]["lr"]), ("adam", "sgd", 0.1), "train: config optimizer, lr")
        ck.equal((tr_adam["config"]["iters"], tr_adam["config"]["warmup"]), (1, 0),
                 "train: one timed iteration a step by default")
    tr = ck.guard("train defaults", run_json, exe, 1, BASE + ["--mode", "train"], wd, "trd")
    if tr is not None:
        ck.equal((tr["config"]["optimizer"], tr["config"]["lr"], tr["workload"]["token_mean"]),
                 ("sgd", 1.0, 0.5), "train: the documented defaults")


def train_series(ck, exe, wd):
    S = 12
    args = BASE + ["--mode", "train", "--steps", S, "--capacity-factor", "1.25"]
    docs = {}
    for R in (1, 2):
        csv_path = os.path.join(wd, "tr%d.csv" % R)
        docs[R] = ck.guard("train R=%d" % R, run_json, exe, R, args + ["--steps-csv", csv_path],
                           wd, "tr%d" % R)
        if docs[R] is None:
            continue
        steps = docs[R]["steps"]
        ck.equal(len(steps), S, "train R=%d: one steps[] entry a step" % R)
        loss = [s["task_loss"] for s in steps]
        ck.check(all(isinstance(x, float) for x in loss), "train R=%d: steps[].task_loss" % R)
        ck.check(loss[-1] < 0.8 * loss[0], "train R=%d: the task loss falls" % R,
                 "%r -> %r" % (loss[0], loss[-1]))
        ck.equal(docs[R]["training"]["optimizer_steps"], S, "train R=%d: %d optimizer steps" % (R, S))
        ck.close(docs[R]["training"]["task_loss"], loss[-1], "train R=%d: training = last step" % R,
                 rtol=0, atol=0)
        with open(csv_path) as fh:
            rows = list(csv.DictReader(fh))
        ck.equal(len(rows), S, "train R=%d: one CSV row a step" % R)
        if rows:
            ck.close([float(r["task_loss"]) for r in rows], loss, "CSV task_loss = JSON",
                     rtol=1e-15, atol=0)
            ck.equal([r["train_aux_loss"] for r in rows[:1]], ["0"],
                     "CSV train_aux_loss 0 with alpha 0")
    if docs.get(1) and docs.get(2):
        l1 = [s["task_loss"] for s in docs[1]["steps"]]
        l2 = [s["task_loss"] for s in docs[2]["steps"]]
        ck.close(l2, l1, "train: R=2's losses follow R=1's", rtol=1e-4, atol=0)
    fwd = ck.guard("forward steps", run_json, exe, 1, BASE + ["--steps", 2], wd, "fwdsteps")
    if fwd is not None:
        ck.equal([(s["task_loss"], s["aux_loss"], s["z_loss"]) for s in fwd["steps"]],
                 [(None, None, None)] * 2, "forward: steps[] losses are null")


def series(doc):
    """Per step: task loss, max over mean, Gini, dropped assignments, routed counts."""
    return [(st["task_loss"], st["load_balance"]["max_over_mean"], st["load_balance"]["gini"],
             st["drops"]["dropped_assignments"], st["routed"]) for st in doc["steps"]]


def collapse(ck, exe, wd):
    """The documented configuration (docs/training.md: --mode train's defaults, 1024 tokens of
    d 32, E 8, k 2, 200 steps, seed 1) at R = 2, deterministic under the seed. Over the last 50
    steps: alpha = 0 has Gini > 1.5x alpha = 1e-2's, over 3x its drops and at least two dead
    experts (routed < 5% of the mean in the last step) where alpha = 1e-2 has none; its Gini grew
    from the first 10 steps and its task loss still fell by half; --expert-bias (gamma 1e-3) stays
    balanced (Gini < 0.15, no dead expert) with a task loss no worse than 1.1x alpha = 1e-2's."""
    args = ["--mode", "train", "--tokens", 1024, "--hidden", 32, "--experts", 8, "--steps", 200]
    runs = {}
    for tag, extra in (("alpha 0", []), ("alpha 1e-2", ["--aux-loss-coeff", "0.01"]),
                       ("bias", ["--expert-bias"])):
        doc = ck.guard("collapse " + tag, run_json, exe, 2, args + extra, wd,
                       "collapse_" + tag.replace(" ", "_"))
        if doc is not None:
            runs[tag] = series(doc)
    if len(runs) < 3:
        return
    mean = lambda xs: sum(xs) / len(xs)
    last = {t: r[-50:] for t, r in runs.items()}
    gini = {t: mean([x[2] for x in v]) for t, v in last.items()}
    drops = {t: mean([x[3] for x in v]) for t, v in last.items()}
    loss = {t: mean([x[0] for x in v]) for t, v in last.items()}
    dead = {t: sum(1 for c in r[-1][4] if c < 0.05 * 2 * 1024 / 8) for t, r in runs.items()}
    detail = "Gini %r drops %r loss %r dead %r" % (gini, drops, loss, dead)
    ck.check(gini["alpha 0"] > 1.5 * gini["alpha 1e-2"], "collapse: alpha 0's Gini > 1.5x "
             "alpha 1e-2's", detail)
    ck.check(drops["alpha 0"] > 3 * drops["alpha 1e-2"], "collapse: alpha 0 drops > 3x", detail)
    ck.check(dead["alpha 0"] >= 2 and dead["alpha 1e-2"] == 0,
             "collapse: alpha 0 starves experts, alpha 1e-2 none", detail)
    first = mean([x[2] for x in runs["alpha 0"][:10]])
    ck.check(gini["alpha 0"] > first + 0.1, "collapse: alpha 0's Gini grows over the steps",
             "first 10 %.3f, last 50 %.3f" % (first, gini["alpha 0"]))
    ck.check(loss["alpha 0"] < 0.5 * runs["alpha 0"][0][0], "collapse: the task loss still falls",
             "%.4f -> %.4f" % (runs["alpha 0"][0][0], loss["alpha 0"]))
    ck.check(gini["bias"] < 0.15 and dead["bias"] == 0, "bias: loads stay balanced", detail)
    ck.check(loss["bias"] < 1.1 * loss["alpha 1e-2"], "bias: task loss no worse than 1.1x "
             "the aux loss's", detail)


REFUSED = [
    (["--optimizer", "sgd"], ["--optimizer", "--mode train"]),
    (["--lr", "0.1", "--mode", "fwd-bwd"], ["--lr", "--mode train"]),
    (["--aux-loss-coeff", "0.01"], ["--aux-loss-coeff", "fwd-bwd"]),
    (["--z-loss-coeff", "0.001", "--mode", "dispatch"], ["--z-loss-coeff"]),
    (["--mode", "fwd-bwd", "--routing", "expert-choice"], ["expert-choice", "docs/training.md"]),
    (["--mode", "train", "--dispatch", "per-rank"], ["per-rank"]),
    (["--mode", "fwd-bwd", "--wire", "bf16"], ["--wire"]),
    (["--mode", "fwd-bwd", "--shared-experts", "1"], ["--shared-experts"]),
    (["--mode", "train", "--redundant-experts", "2"], ["--redundant-experts"]),
    (["--mode", "fwd-bwd", "--drop-policy", "reroute"], ["reroute"]),
    (["--mode", "fwd-bwd", "--workload", "balanced"], ["--workload"]),
    (["--mode", "fwd-bwd", "--predict-only"], ["--predict-only"]),
    (["--mode", "fwd-bwd", "--capacity-factor", "1.0,2.0"], ["capacity-factor"]),
    (["--mode", "fwd-bwd", "--regroup", "alltoallw"], ["--regroup"]),
    (["--mode", "train", "--optimizer", "rmsprop"], ["--optimizer"]),
    (["--mode", "train", "--lr", "0"], ["--lr"]),
]


def refusals(ck, exe, wd):
    for extra, pats in REFUSED:
        mt.check_refused(ck, exe, " ".join(extra), 1, BASE + extra, pats, wd)


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_training")
    wd = mt.workdir()
    against_reference(ck, exe, wd)
    all_dropped(ck, exe, wd)
    teacher_and_mean(ck, exe, wd)
    timing_and_memory(ck, exe, wd)
    train_series(ck, exe, wd)
    collapse(ck, exe, wd)
    refusals(ck, exe, wd)
    ck.finish()


if __name__ == "__main__":
    main()
