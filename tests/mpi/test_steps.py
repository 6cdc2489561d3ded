"""--steps N and --steps-csv (issue 12): N consecutive layer steps, each on a new batch.

  - generated batches at R = 1, 2, 3 (global scope, cf 1.0, so some assignments drop): steps[]
    has one object per step, step = 0 .. N-1; step t's routed counts, dropped assignments, dropped
    tokens and empty slots are those of the NumPy reference on tokens t*N .. t*N + N - 1 of the
    generator; step 0 is the top-level batch (its drops object equal to the top-level one); the
    series is the same at every R;
  - steps[t].predicted (t >= 1) is the closed form with q_i = min(1, routed_i / N) of step t-1,
    computed here with exact binomial sums; step 0 has none;
  - local scope at R = 2 (one capacity group per rank), the same checks;
  - --tokens-file slices: a file of 3 N rows with --steps 3 gives batches of N rows, step t the
    t-th slice; a file that is not a whole number of batches, or too short for --tokens, is
    refused;
  - --steps-csv: the documented header, one row per step, the routed columns equal to the JSON;
  - progress ("step i of N") on stderr only when stdout is a terminal (a pty), never otherwise;
  - --expert-bias (DeepSeek-V3's loss-free balancing): steps[0].expert_bias is 0; steps[t+1]'s
    bias is steps[t]'s plus gamma sign(mean - routed_i) of step t (float32), the same at R = 1
    and 3; each step's routing is the NumPy reference's with that selection bias; on a hot
    workload (--hot-experts 2) the hottest expert's load over the mean falls from the first step
    to the last, while without the bias it stays;
  - refusals: --steps 0, --steps with a list of capacity factors, --steps with --predict-only,
    --bias-update-rate without --expert-bias, --expert-bias with expert choice.
"""

import csv
import math
import os
import pty
import subprocess
import time

import numpy as np

import moetest as mt

SEED, N, D, E, K = 5, 600, 16, 6, 2
CSV_HEAD = ["step", "dropped_assignments", "dropped_tokens", "empty_slots", "max_over_mean", "gini",
            "entropy", "aux_loss", "z_loss", "rank_overload", "max_expert_load", "cf_needed",
            "predicted_dropped_assignments", "predicted_empty_slots", "task_loss",
            "train_aux_loss", "train_z_loss", "step_seconds",
            "dispatch_seconds", "combine_seconds", "expert_seconds"]


def experts():
    cache = {}

    def get(e):
        if e not in cache:
            cache[e] = mt.gen_expert(SEED, e, D, 2 * D)
        return cache[e]
    return get


def step_tokens(t):
    return mt.fill_normal(SEED, 1, t * N * D, N * D).reshape(N, D)


def check_series(ck, tag, doc, steps, cf, scope, ranks, tokens_of):
    st = doc.get("steps")
    if not ck.check(isinstance(st, list) and len(st) == steps, tag + ": steps[] has one per step",
                    "%r" % (None if st is None else len(st))):
        return
    ck.equal([s["step"] for s in st], list(range(steps)), tag + ": steps numbered 0 ..")
    ck.equal(st[0]["drops"], doc["drops"], tag + ": step 0 is the top-level batch")
    ck.check(st[0]["predicted"] is None, tag + ": step 0 has no prediction")
    W = mt.gen_router(SEED, E, D)
    prev = None
    for t, s in enumerate(st):
        ref = mt.Reference(tokens_of(t), W, experts(), K, cf, scope, ranks).solve()
        ck.equal(s["routed"], ref.routed_per_expert.tolist(), tag + ": step %d routed" % t)
        ck.equal(s["drops"]["dropped_assignments"], ref.dropped_assignments,
                 tag + ": step %d dropped assignments" % t)
        ck.equal(s["drops"]["dropped_tokens"], ref.dropped_tokens,
                 tag + ": step %d dropped tokens" % t)
        slots = mt.capacity_total(cf, N, K, E, scope, ranks) * E
        ck.equal(s["waste"]["empty_slots"], slots - int(ref.accepted_per_expert.sum()),
                 tag + ": step %d empty slots" % t)
        for key in ("max_over_mean", "gini", "aux_loss"):
            ck.check(isinstance(s["load_balance"][key], float), tag + ": step %d %s" % (t, key))
        ck.check(s["timing"]["step"]["max"] > 0, tag + ": step %d timed" % t)
        if prev is not None:
            q = [min(1.0, r / N) for r in prev]
            want_d, want_e = mt.closed_form(q, cf, N, K, E, scope, ranks)
            p = s["predicted"]
            ok = p is not None and math.isclose(p["expected_dropped_assignments"], want_d,
                                                rel_tol=1e-7, abs_tol=1e-7) and \
                math.isclose(p["expected_empty_slots"], want_e, rel_tol=1e-7, abs_tol=1e-7)
            ck.check(ok, tag + ": step %d predicted from step %d's loads" % (t, t - 1),
                     "%r, want %.9g %.9g" % (p, want_d, want_e))
            if p is not None:
                ck.check(math.isclose(p["error_dropped_assignments"],
                                      p["expected_dropped_assignments"] -
                                      s["drops"]["dropped_assignments"], abs_tol=1e-9),
                         tag + ": step %d prediction error = expected - measured" % t)
        prev = s["routed"]


def series_counts(doc):
    return [(s["routed"], s["drops"], s["waste"]["empty_slots"]) for s in doc["steps"]]


def run_json(ck, exe, wd, tag, ranks, args):
    path = os.path.join(wd, tag + ".json")
    r = mt.run(exe, ranks, list(args) + ["--json", path])
    if not ck.check(r.returncode == 0, tag + ": runs", r.describe()):
        return None, r
    import json
    with open(path) as f:
        return json.load(f), r


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_steps")
    wd = mt.workdir()
    base = ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", K, "--seed", SEED,
            "--iters", 1, "--warmup", 0]

    series = {}
    for ranks in (1, 2, 3):
        tag = "generated_R%d" % ranks
        csv_path = os.path.join(wd, tag + ".csv")
        doc, r = run_json(ck, exe, wd, tag, ranks,
                          base + ["--capacity-factor", "1.0", "--steps", 4, "--steps-csv", csv_path])
        if doc is None:
            continue
        check_series(ck, tag, doc, 4, "1.0", "global", ranks, step_tokens)
        series[ranks] = series_counts(doc)
        ck.check(len({tuple(s["routed"]) for s in doc["steps"]}) == 4,
                 tag + ": every step is a new batch (the routed counts differ)")
        ck.check("step 2 of" not in r.stderr, tag + ": no progress when stdout is not a terminal",
                 r.stderr[-300:])
        ck.check("Steps: 4 batches" in r.stdout, tag + ": the report summarizes the series",
                 r.stdout[-600:])
        with open(csv_path, newline="") as f:
            rows = list(csv.reader(f))
        head = CSV_HEAD + ["routed_%d" % e for e in range(E)]
        ck.equal(rows[0], head, tag + ": --steps-csv header")
        ck.equal(len(rows), 5, tag + ": one CSV row per step")
        ck.equal([[int(v) for v in row[len(CSV_HEAD):]] for row in rows[1:]],
                 [s["routed"] for s in doc["steps"]], tag + ": CSV routed columns = JSON")
        ck.equal([int(row[1]) for row in rows[1:]],
                 [s["drops"]["dropped_assignments"] for s in doc["steps"]],
                 tag + ": CSV dropped_assignments = JSON")
        ck.equal(rows[1][12:14], ["", ""], tag + ": step 0 has no predicted columns")
    if len(series) == 3:
        ck.check(series[1] == series[2] == series[3], "the series is the same at R = 1, 2, 3")

    doc, _ = run_json(ck, exe, wd, "local_R2", 2,
                      base + ["--capacity-factor", "1.0", "--capacity-scope", "local", "--steps",
                              3])
    if doc is not None:
        check_series(ck, "local_R2", doc, 3, "1.0", "local", 2, step_tokens)

    # a tokens file of three batches
    rng = np.random.default_rng(7)
    h = rng.standard_normal((3 * N, D)).astype(np.float32)
    tpath = os.path.join(wd, "three.npy")
    np.save(tpath, h)
    args = ["--tokens-file", tpath, "--experts", E, "--top-k", K, "--seed", SEED,
            "--capacity-factor", "1.0", "--iters", 1, "--warmup", 0, "--steps", 3]
    doc, _ = run_json(ck, exe, wd, "file_slices", 2, args)
    if doc is not None:
        ck.equal(doc["config"]["tokens"], N, "file_slices: the batch is a third of the file")
        check_series(ck, "file_slices", doc, 3, "1.0", "global", 2,
                     lambda t: h[t * N:(t + 1) * N])
    mt.check_refused(ck, exe, "file_not_whole", 2,
                     ["--tokens-file", tpath, "--experts", E, "--steps", 7],
                     [r"--tokens-file", r"whole number", r"--tokens"], wd)
    mt.check_refused(ck, exe, "file_too_short", 2,
                     ["--tokens-file", tpath, "--tokens", N, "--experts", E, "--steps", 4],
                     [r"--tokens-file", r"holds %d rows" % (3 * N), r"need %d" % (4 * N)], wd)

    # progress on a terminal only
    master, slave = pty.openpty()
    cmd = ["mpirun", "--oversubscribe", "-n", "2", exe] + [str(a) for a in base] + ["--steps",
                                                                                    "3"]
    env = dict(os.environ)
    env.update(mt.MPI_ENV)
    env.pop("MOESIM_NO_TTY", None)
    p = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         env=env, cwd=wd)
    os.close(slave)
    out = b""
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        out += chunk
    err = p.communicate(timeout=60)[1].decode(errors="replace")
    os.close(master)
    ck.equal(p.returncode, 0, "pty: runs")
    ck.check("step 2 of 3" in err and "step 3 of 3" in err,
             "pty: progress 'step i of N' on stderr when stdout is a terminal", err[-400:])

    # --expert-bias: the update rule, R-invariance, the reference's routing with the bias
    gamma = 0.01
    biased = {}
    for ranks in (1, 3):
        tag = "expert_bias_R%d" % ranks
        doc, _ = run_json(ck, exe, wd, tag, ranks,
                          base + ["--capacity-factor", "1.0", "--steps", 5, "--expert-bias",
                                  "--bias-update-rate", gamma])
        if doc is None:
            continue
        st = doc["steps"]
        biased[ranks] = [(s["routed"], s["expert_bias"]) for s in st]
        ck.equal(st[0]["expert_bias"], [0.0] * E, tag + ": the bias starts at 0")
        ck.equal((doc["config"]["expert_bias"], doc["config"]["bias_update_rate"]), (True, gamma),
                 tag + ": config.expert_bias, config.bias_update_rate")
        W = mt.gen_router(SEED, E, D)
        for t in range(len(st)):
            b = np.array(st[t]["expert_bias"], dtype=np.float32)
            if t + 1 < len(st):
                loads = np.array(st[t]["routed"], dtype=np.int64)
                step = np.where(loads * E < loads.sum(), gamma,
                                np.where(loads * E > loads.sum(), -gamma, 0.0))
                want = (b.astype(np.float64) + step).astype(np.float32)
                ck.equal(np.array(st[t + 1]["expert_bias"], dtype=np.float32).tolist(),
                         want.tolist(), tag + ": step %d's bias = step %d's + gamma sign(mean - "
                                              "load)" % (t + 1, t))
            ref = mt.Reference(step_tokens(t), W, experts(), K, "1.0", "global", ranks,
                               bias=b).solve()
            ck.equal(st[t]["routed"], ref.routed_per_expert.tolist(),
                     tag + ": step %d routed as the reference with the step's bias" % t)
            ck.equal(st[t]["drops"]["dropped_assignments"], ref.dropped_assignments,
                     tag + ": step %d dropped as the reference" % t)
        ck.check(any(x != 0 for x in st[-1]["expert_bias"]), tag + ": the bias moved")
    if len(biased) == 2:
        ck.check(biased[1] == biased[3], "expert_bias: the same series at R = 1 and 3")
    hot = ["--tokens", 4096, "--hidden", 64, "--experts", 16, "--top-k", 2, "--seed", SEED,
           "--iters", 1, "--warmup", 0, "--capacity-factor", "1.0", "--steps", 12,
           "--hot-experts", 2, "--hot-share", "0.5"]
    for extra, falls in (([], False), (["--expert-bias", "--bias-update-rate", "0.005"], True)):
        tag = "hot_" + ("bias" if falls else "plain")
        doc, _ = run_json(ck, exe, wd, tag, 2, hot + extra)
        if doc is None:
            continue
        mom = [s["load_balance"]["max_over_mean"] for s in doc["steps"]]
        if falls:
            ck.check(mom[-1] < 0.75 * mom[0], tag + ": the bias brings the hot experts down",
                     "max/mean %s" % mom)
        else:
            ck.check(min(mom) > 0.8 * mom[0], tag + ": without it the hot experts stay hot",
                     "max/mean %s" % mom)
    mt.check_refused(ck, exe, "rate_without_bias", 1, base + ["--bias-update-rate", "0.01"],
                     [r"--bias-update-rate", r"--expert-bias"], wd)
    mt.check_refused(ck, exe, "bias_expert_choice", 1,
                     base + ["--expert-bias", "--routing", "expert-choice"],
                     [r"--expert-bias", r"expert choice"], wd)

    mt.check_refused(ck, exe, "steps_zero", 1, base + ["--steps", 0], [r"--steps"], wd)
    mt.check_refused(ck, exe, "steps_with_cf_list", 1,
                     base + ["--steps", 2, "--capacity-factor", "1.0,1.25"],
                     [r"--steps", r"one capacity factor"], wd)
    mt.check_refused(ck, exe, "steps_predict_only", 1, base + ["--steps", 2, "--predict-only"],
                     [r"--steps", r"--predict-only"], wd)
    ck.finish()


if __name__ == "__main__":
    main()
