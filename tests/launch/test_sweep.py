"""launch/moesim-sweep on tiny grids (64 tokens, d 16, f 16), in a temporary directory.

  - a grid of --experts 2,4 x --ranks 1,2,4 x --capacity-factor 1,1.25: sweep.csv's header is
    the documented column list (docs/sweep.md's Columns table, in order), one row per runnable
    point (10), each with every column; the (E 2, R 4) points are skipped and listed in
    skipped.txt and on stderr; every row's values equal its points/NAME.json (read with Python's
    JSON parser here, not moesim-table): counts, sums, fractions, the phases' seconds x 1000;
  - rerunning the same command resumes: nothing reruns (the JSON files keep their mtimes), the CSV
    is unchanged, the summary says 10 resumed;
  - interrupted: a sweep of 12 points is stopped (SIGINT to its whole process group, what a
    Ctrl-C sends) after its first row; it exits 130 and every line of the CSV has the full
    column count (no half row, a newline at the end); rerunning completes it, each point once;
  - --predict-only at --ranks 16,64 with --network: rows with the planned counts (the exact drops
    of ablation[0].predicted), the projected columns filled, the measured ones empty;
  - --predict-only at cf 0, 1, 1.25: drops, slots, waste and its FLOPs equal the measured grid's
    points;
  - a grid with fewer experts than ranks at every point: refused, no directory created;
  - a point that fails (top-k 3 of 2 experts) is reported and listed in failed.txt, the others
    still run, the sweep exits 1; rerunning it with other options after -- is refused (exit 2),
    and so is a sweep.csv with another header;
  - --dry-run prints one mpirun line a point and writes nothing; in a Slurm allocation
    (SLURM_JOB_ID set, a recording srun first on PATH that runs moesim on one process) --dry-run
    shows `srun -n R` lines and each point runs through `srun -n R`;
  - bad values (--experts 0, --experts x, --capacity-factor x, no --out, an unknown option)
    exit 2 with one `moesim-sweep: error:` line.
"""

import csv
import json
import os
import re
import shutil
import signal
import tempfile

import launchtest as lt

FIXED = ["--", "--tokens", "64", "--hidden", "16", "--ffn", "16", "--iters", "2"]
PHASES = ("router", "count_exchange", "dispatch", "expert", "combine", "unpack", "step")


def documented_columns(root):
    with open(os.path.join(root, "docs", "sweep.md")) as fh:
        text = fh.read()
    sec = text.split("## Columns", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", sec, re.M)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def close(a, b):
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def check_rows(ck, out, header, rows):
    for r in rows:
        ck.check(len(r) == len(header), "row %s has every column" % r[0])
        rec = dict(zip(header, r))
        with open(os.path.join(out, rec["json"])) as fh:
            doc = json.load(fh)
        c, d, w, t = doc["config"], doc["drops"], doc["waste"], doc["traffic"]
        cls = t["by_class"]
        want = {
            "ranks": c["ranks"], "experts": c["experts"], "top_k": c["top_k"],
            "tokens": c["tokens"], "hidden": c["hidden"], "ffn": c["ffn"], "seed": c["seed"],
            "assignments": d["assignments"], "dropped_assignments": d["dropped_assignments"],
            "dropped_tokens": d["dropped_tokens"], "slots": w["slots"],
            "empty_slots": w["empty_slots"],
            "dispatch_bytes": sum(t["dispatch_bytes_sent"]),
            "combine_bytes": sum(map(sum, t["combine_bytes"])),
            "messages": sum(v["messages"] for v in cls.values()),
        }
        for k in ("same_rank", "same_numa", "same_package", "same_node", "other_node"):
            want["bytes_" + k] = cls[k]["bytes"]
        bad = {k: (rec[k], v) for k, v in want.items() if int(rec[k]) != v}
        for k in ("mode", "dispatch", "workload", "capacity_scope", "drop_policy", "a2a"):
            if rec[k] != c[k]:
                bad[k] = (rec[k], c[k])
        if float(rec["capacity_factor"]) != c["capacity_factor"]:
            bad["capacity_factor"] = (rec["capacity_factor"], c["capacity_factor"])
        floats = {"dropped_fraction": d["dropped_assignments"] / d["assignments"],
                  "wasted_fraction": w["empty_slots"] / w["slots"],
                  "flops_useful": w["flops_useful"], "flops_wasted": w["flops_wasted"],
                  "dispatch_algbw": doc["bandwidth"]["dispatch"]["algbw"],
                  "combine_busbw": doc["bandwidth"]["combine"]["busbw"]}
        for p in PHASES:
            floats[p + "_ms"] = doc["timing"][p]["mean"] * 1000
            floats[p + "_ms_max"] = doc["timing"][p]["max"] * 1000
        for k, v in floats.items():
            if not close(float(rec[k]), v):
                bad[k] = (rec[k], v)
        if rec["projected_dispatch_ms"] != "" or rec["preset"] != "":
            bad["projected/preset"] = "not empty"
        ck.check(not bad, "row %s equals its JSON" % r[0], str(bad))


def main():
    moesim, launch = lt.paths()
    root = os.path.dirname(launch)
    sweep = os.path.join(launch, "moesim-sweep")
    env = lt.clean_env(MOESIM=moesim)
    ck = lt.Checks()
    work = tempfile.mkdtemp(prefix="moesim-sweep-")
    cols = documented_columns(root)
    ck.check(len(cols) == 57, "docs/sweep.md lists the 57 columns", str(cols))

    lt.say("a grid of 12 points, 2 of them skipped")
    out = os.path.join(work, "grid")
    cmd = [sweep, "--out", out, "--experts", "2,4", "--ranks", "1,2,4",
           "--capacity-factor", "1,1.25"] + FIXED
    r = lt.run(cmd, env=env, timeout=120)
    ck.check(r.returncode == 0, "the grid sweep runs", r.describe())
    table = read_csv(os.path.join(out, "sweep.csv"))
    ck.check(table[0] == cols, "the CSV header is the documented column list",
             "%s\n%s" % (table[0], cols))
    rows = table[1:]
    names = sorted("E%d-R%d-cf%s" % (e, rr, cf) for e in (2, 4) for rr in (1, 2, 4)
                   for cf in ("1", "1.25") if e >= rr)
    ck.check(len(rows) == 10, "one row per runnable point (10)", str([x[0] for x in rows]))
    ck.check(sorted(x[0] for x in rows) == names, "the points' names", str([x[0] for x in rows]))
    check_rows(ck, out, table[0], rows)
    with open(os.path.join(out, "skipped.txt")) as fh:
        skipped = fh.read()
    ck.check(skipped.startswith("E2-R4-cf1: skipped") and "\nE2-R4-cf1.25: skipped" in skipped
             and skipped.count("\n") == 2, "the E < R points are listed in skipped.txt", skipped)
    ck.check(r.stderr.count(": skipped: 2 experts on 4 ranks") == 2, "and on stderr", r.stderr)
    ck.check("sweep: 10 points done (0 resumed, 2 skipped, 0 failed)" in r.stdout,
             "the summary line", r.stdout)
    ck.check(len(os.listdir(os.path.join(out, "points"))) == 20, "a JSON and a log a point")

    lt.say("resume: the same command again")
    mt = {f: os.stat(os.path.join(out, "points", f)).st_mtime_ns
          for f in os.listdir(os.path.join(out, "points"))}
    r = lt.run(cmd, env=env, timeout=60)
    ck.check(r.returncode == 0 and "sweep: 10 points done (10 resumed, 2 skipped, 0 failed)"
             in r.stdout, "a rerun resumes every point", r.describe())
    ck.check(read_csv(os.path.join(out, "sweep.csv")) == table, "the CSV is unchanged")
    mt2 = {f: os.stat(os.path.join(out, "points", f)).st_mtime_ns for f in mt}
    ck.check(mt == mt2, "no point ran again (JSON and log mtimes kept)")

    lt.say("interrupted mid-sweep, then resumed")
    out2 = os.path.join(work, "killed")
    cmd2 = [sweep, "--out", out2, "--experts", "4,8,12", "--ranks", "1,2",
            "--top-k", "1,2"] + FIXED[:-2] + ["--iters", "40"]
    p = lt.start(cmd2, env=env)
    path2 = os.path.join(out2, "sweep.csv")
    lt.wait_until(lambda: os.path.exists(path2) and len(read_csv(path2)) >= 2, timeout=60)
    lt.wait_until(lambda: os.path.exists(os.path.join(out2, "points", "E4-R2-k1.log")),
                  timeout=30)
    os.killpg(p.pid, signal.SIGINT)
    k = lt.finish(p, timeout=60)
    ck.check(k.returncode == 130 and "interrupted after" in k.stderr,
             "the interrupted sweep exits 130", k.describe())
    with open(path2) as fh:
        text = fh.read()
    ck.check(text.endswith("\n"), "the CSV ends with a complete line", repr(text[-200:]))
    part = read_csv(path2)
    ck.check(all(len(x) == len(cols) for x in part), "no half row after the interrupt",
             str([len(x) for x in part]))
    ck.check(1 < len(part) < 13, "the interrupt came mid-sweep", str(len(part)))
    r = lt.run(cmd2, env=env, timeout=120)
    ck.check(r.returncode == 0 and "(%d resumed" % (len(part) - 1) in r.stdout,
             "the rerun resumes and completes", r.describe())
    full = read_csv(path2)
    names = [x[0] for x in full[1:]]
    ck.check(len(names) == 12 and len(set(names)) == 12, "each of 12 points exactly once",
             str(names))
    ck.check(full[:len(part)] == part, "the rows before the interrupt are kept as they were")

    lt.say("--predict-only at 16 and 64 ranks")
    out3 = os.path.join(work, "plan")
    r = lt.run([sweep, "--out", out3, "--predict-only", "--experts", "64", "--ranks", "16,64",
                "--network", os.path.join(launch, "laptop.network")] + FIXED, env=env,
               timeout=60)
    ck.check(r.returncode == 0, "a --predict-only sweep at 16 and 64 ranks", r.describe())
    t3 = read_csv(os.path.join(out3, "sweep.csv"))
    recs = [dict(zip(t3[0], x)) for x in t3[1:]]
    ck.check([x["ranks"] for x in recs] == ["16", "64"], "its rows are the planned ranks",
             str(recs))
    ck.check(all(x["projected_dispatch_ms"] and x["projected_combine_ms"] and x["step_ms"] == ""
                 and x["step_ms_max"] == "" and x["dispatch_algbw"] == ""
                 and x["predict_only"] == "true" and x["dispatch_bytes"] != ""
                 for x in recs), "projected filled, measured empty", str(recs))
    for x in recs:
        with open(os.path.join(out3, x["json"])) as fh:
            doc = json.load(fh)
        pr = doc["ablation"][0]["predicted"]
        ck.check(int(x["dropped_assignments"]) == pr["exact_dropped_assignments"]
                 and int(x["empty_slots"]) == pr["exact_empty_slots"]
                 and int(x["assignments"]) == 64 * doc["config"]["top_k"]
                 and int(x["dispatch_bytes"]) == sum(doc["traffic"]["dispatch_bytes_sent"])
                 and close(float(x["projected_dispatch_ms"]),
                           doc["projection"]["flat"]["dispatch"] * 1000),
                 "planned row %s: the exact counts of its plan" % x["point"], str(x))

    lt.say("--predict-only: the planned counts and slots equal the measured ones")
    out7 = os.path.join(work, "plan2")
    r = lt.run([sweep, "--out", out7, "--predict-only", "--experts", "4", "--ranks", "2",
                "--capacity-factor", "0,1,1.25"] + FIXED, env=env, timeout=60)
    ck.check(r.returncode == 0, "a --predict-only sweep at cf 0, 1 and 1.25", r.describe())
    t7 = read_csv(os.path.join(out7, "sweep.csv"))
    planned = {x[0]: dict(zip(t7[0], x)) for x in t7[1:]}
    measured = {x[0]: dict(zip(table[0], x)) for x in rows}
    same = ("assignments", "dropped_assignments", "dropped_fraction", "slots", "empty_slots",
            "wasted_fraction", "flops_useful", "flops_wasted")
    for cf in ("1", "1.25"):
        p, m = planned.get("E4-R2-cf" + cf), measured.get("E4-R2-cf" + cf)
        ck.check(p is not None and m is not None and m["slots"] != ""
                 and all(p[c] == m[c] for c in same),
                 "planned E4-R2-cf%s: the measured point's drops, slots and waste" % cf,
                 "%s\n%s" % (p, m))
    p = planned.get("E4-R2-cf0")
    ck.check(p is not None and p["slots"] == p["assignments"] and p["empty_slots"] == "0"
             and p["wasted_fraction"] == "0", "planned dropless: slots = assignments, no waste",
             str(p))

    lt.say("a grid of which no point can run")
    out8 = os.path.join(work, "none")
    r = lt.run([sweep, "--out", out8, "--experts", "2", "--ranks", "4,8"] + FIXED, env=env)
    ck.check(r.returncode == 2 and "no point of the grid can run" in r.stderr
             and not os.path.exists(out8), "refused (exit 2) before anything is created",
             r.describe())

    lt.say("a failing point; another header")
    out6 = os.path.join(work, "fail")
    r = lt.run([sweep, "--out", out6, "--experts", "2,4", "--ranks", "2"] + FIXED
               + ["--top-k", "3"], env=env)
    ck.check(r.returncode == 1 and "E2-R2 failed" in r.stderr
             and "sweep: 1 points done (0 resumed, 0 skipped, 1 failed)" in r.stdout,
             "a failed point: reported, the sweep goes on, exit 1", r.describe())
    fpath = os.path.join(out6, "failed.txt")
    failed = open(fpath).read() if os.path.exists(fpath) else ""
    ck.check(failed.startswith("E2-R2:") and failed.count("\n") == 1
             and [x[0] for x in read_csv(os.path.join(out6, "sweep.csv"))[1:]] == ["E4-R2"],
             "it is listed in failed.txt, the other point has its row", failed)
    r = lt.run([sweep, "--out", out6, "--experts", "2,4", "--ranks", "2"] + FIXED
               + ["--top-k", "1"], env=env)
    ck.check(r.returncode == 2 and "other settings" in r.stderr and r.stderr.count("\n") == 1,
             "a rerun with other fixed options is refused", r.describe())
    with open(os.path.join(out6, "sweep.csv"), "w") as fh:
        fh.write("point,json,other\n")
    r = lt.run([sweep, "--out", out6, "--experts", "4"] + FIXED, env=env)
    ck.check(r.returncode == 2 and "other columns" in r.stderr and r.stderr.count("\n") == 1,
             "a sweep.csv with another header is refused", r.describe())

    lt.say("--dry-run; a Slurm allocation")
    out4 = os.path.join(work, "dry")
    r = lt.run([sweep, "--out", out4, "--dry-run", "--experts", "8", "--ranks", "2,4"] + FIXED,
               env=env)
    mpl = [ln for ln in r.stdout.splitlines() if re.match(r"E8-R[24]: .*mpirun .*-n [24] ", ln)]
    ck.check(r.returncode == 0 and len(mpl) == 2, "--dry-run prints one mpirun line a point",
             r.describe())
    ck.check(not os.path.exists(out4), "--dry-run writes nothing")
    fake = os.path.join(work, "bin")
    os.makedirs(fake)
    rec = os.path.join(work, "srun.argv")
    with open(os.path.join(fake, "srun"), "w") as fh:
        fh.write("#!/bin/sh\nprintf '%%s ' \"$@\" >> %s\necho >> %s\n"
                 "[ \"$1\" = -n ] && shift 2\n"
                 "exec env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                 "mpirun --oversubscribe -n 1 \"$@\"\n" % (rec, rec))
    os.chmod(os.path.join(fake, "srun"), 0o755)
    senv = dict(env, SLURM_JOB_ID="42", PATH=fake + os.pathsep + env["PATH"])
    out5 = os.path.join(work, "slurm")
    r = lt.run([sweep, "--out", out5, "--dry-run", "--experts", "8", "--ranks", "2,4"] + FIXED,
               env=senv)
    ck.check(r.returncode == 0 and [ln.split(": ", 1)[1][:10] for ln in r.stdout.splitlines()
                                    if ": srun" in ln] == ["srun -n 2 ", "srun -n 4 "],
             "--dry-run in an allocation shows srun lines", r.describe())
    r = lt.run([sweep, "--out", out5, "--experts", "4", "--ranks", "1"] + FIXED, env=senv)
    got = open(rec).read() if os.path.exists(rec) else ""
    ck.check(r.returncode == 0 and got.startswith("-n 1 " + moesim + " --experts 4 "),
             "inside Slurm a point runs as srun -n R moesim", got + r.describe())
    ck.check(len(read_csv(os.path.join(out5, "sweep.csv"))) == 2, "and has its row")

    for bad in (["--out", out, "--experts", "0"], ["--out", out, "--experts", "x"],
                ["--out", out, "--capacity-factor", "x"], ["--experts", "8"],
                ["--out", out, "--bogus"]):
        r = lt.run([sweep] + bad, env=env)
        ck.check(r.returncode == 2 and r.stderr.startswith("moesim-sweep: error:")
                 and r.stderr.count("\n") == 1, "%s exits 2 with one error line" % bad,
                 r.describe())
    if not ck.failed:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("kept for inspection: %s" % work)
    ck.done("sweep")


if __name__ == "__main__":
    main()
