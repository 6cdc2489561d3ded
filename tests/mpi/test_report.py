"""The text report (issue 13): it fits 100 columns, the result comes first, the per-expert table
follows --report, a per-rank table shows the ranks' imbalance, and the run ends with a verdict
block that fails when one of the run's own counts is off.

  - order and width: at R = 4 with 256 experts on a hot-experts batch (auto = summary), and the
    same with --report full, and at R = 2 with 8 experts: every line is at most 100 characters;
    the header, then Summary, then Experts, ..., Verdict come in that order and the last line is
    VALID; the Summary's dropped and wasted figures are the JSON's drops and waste (with
    --drop-policy reroute also drops.rerouted and drops.still_dropped, and only then); with
    --steps, the Summary's note that the detail is step 0's and the run line's count of steps;
  - --report: auto and summary at 256 experts list the 5 hottest and 5 coldest (by routed, the
    JSON's own loads) with one "..." line between and a load histogram whose bins hold all 256
    experts; full lists all 256 in expert order; at 8 experts auto is full; a bad value is refused;
  - the Ranks table has one row per rank whose tokens and rows are the JSON's per_rank, the tokens
    summing to N and the rows to the rows the experts computed (accepted, padding included);
  - the verdict: a valid run's JSON verdict has the four checks in order, each ran and passed, and
    result VALID; with MOESIM_FAULT=selfcheck-bytes / selfcheck-combine / selfcheck-finite (one
    count off on one rank, as a corrupted exchange would leave it) the run exits 1, says INVALID
    on stderr and as the report's last line, still writes its JSON (verdict.valid false) and
    exactly the check that reads that count fails. --predict-only has verdict null.
"""

import json
import os

import moetest as mt

SECTIONS = ["moesim ", "Summary", "Experts", "Load balance", "Drops and waste", "Dense baseline",
            "Traffic", "Phase times", "Ranks", "Traffic by locality", "Memory",
            "Capacity-factor ablation", "Verdict"]


def section_lines(text):
    """Index of the first line starting each section heading, in SECTIONS order."""
    lines = text.splitlines()
    out = {}
    for name in SECTIONS:
        for i, line in enumerate(lines):
            if line.startswith(name) and i not in out.values():
                if name == "Traffic" and line.startswith("Traffic by locality"):
                    continue
                out[name] = i
                break
    return out


def expert_rows(text):
    """(expert, routed) of each row of the Experts table, and whether a '...' line was there."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Experts"))
    rows, gap = [], False
    for ln in lines[start + 2:]:
        f = ln.split()
        if not f:
            break
        if f[0] == "...":
            gap = True
            continue
        if not f[0].isdigit():
            break
        rows.append((int(f[0]), int(f[2])))
    return rows, gap


def histogram(text):
    lines = text.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if "load histogram" in ln)
    except StopIteration:
        return None
    counts = []
    for ln in lines[start + 1:]:
        f = ln.split()
        if len(f) >= 2 and (f[1] == "-" or f[0] == ">="):
            counts.append(int(f[3] if f[1] == "-" else f[2]))
        else:
            break
    return counts


def check_layout(ck, tag, text, doc):
    lines = text.splitlines()
    wide = [(i + 1, len(ln)) for i, ln in enumerate(lines) if len(ln) > 100]
    ck.check(not wide, tag + ": every line fits 100 columns", str(wide[:5]))
    at = section_lines(text)
    missing = [s for s in SECTIONS if s not in at]
    ck.check(not missing, tag + ": every section is there", str(missing))
    order = [at[s] for s in SECTIONS if s in at]
    ck.check(order == sorted(order), tag + ": header, Summary first, ..., Verdict last",
             str([(s, at.get(s)) for s in SECTIONS]))
    ck.equal(lines[-1].strip(), "VALID", tag + ": the last line is the verdict")
    # the Summary's figures are the JSON's
    summ = "\n".join(lines[at.get("Summary", 0):at.get("Experts", 0)])
    d = doc["drops"]
    want = "dropped   %d of %d assignments" % (d["dropped_assignments"], d["assignments"])
    ck.check(want in summ, tag + ": Summary says " + want, summ)
    w = doc["waste"]
    want = "wasted    %d of %d expert slots empty" % (w["empty_slots"], w["slots"])
    ck.check(want in summ, tag + ": Summary says " + want, summ)
    ck.check("verdict   VALID" in summ, tag + ": Summary carries the verdict", summ)


def check_ranks(ck, tag, text, doc, R, N):
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Ranks"))
    rows = []
    for ln in lines[start + 2:]:
        f = ln.split()
        if not f or not f[0].isdigit():
            break
        rows.append((int(f[0]), int(f[1]), int(f[2])))
    pr = doc["per_rank"]
    ck.equal(len(pr), R, tag + ": per_rank has one entry a rank")
    ck.equal(rows, [(p["rank"], p["tokens"], p["rows_computed"]) for p in pr],
             tag + ": the Ranks table shows per_rank's tokens and rows")
    ck.equal(sum(p["tokens"] for p in pr), N, tag + ": per_rank tokens sum to N")
    accepted = sum(e["accepted"] for e in doc["experts"])
    padded = doc["config"].get("pad_to_capacity", False)
    if not padded:
        ck.equal(sum(p["rows_computed"] for p in pr), accepted,
                 tag + ": per_rank rows sum to the accepted assignments")
    ck.equal([p["dispatch_bytes_sent"] for p in pr], doc["traffic"]["dispatch_bytes_sent"],
             tag + ": per_rank bytes are traffic.dispatch_bytes_sent")
    for p in pr:
        ck.check(p["seconds"]["step"] > 0, tag + ": rank %d has a step time" % p["rank"])


def run_text(exe, R, args, d, tag, env=None):
    jpath = os.path.join(d, tag + ".json")
    old = dict(os.environ)
    if env:
        os.environ.update(env)
    try:
        r = mt.run(exe, R, list(args) + ["--json", jpath])
    finally:
        os.environ.clear()
        os.environ.update(old)
    doc = None
    if os.path.exists(jpath):
        with open(jpath) as fh:
            doc = json.load(fh)
    return r, doc


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("report")
    d = mt.workdir()
    if True:
        big = ["--experts", 256, "--tokens", 1024, "--hidden", 32, "--ffn", 32, "--top-k", 8,
               "--workload", "hot-experts", "--capacity-factor", "1.25"]
        for mode in (None, "summary", "full"):
            tag = "E256_" + (mode or "auto")
            args = big + (["--report", mode] if mode else [])
            r, doc = run_text(exe, 4, args, d, tag)
            if r.returncode != 0 or doc is None:
                ck.check(False, tag + ": runs", r.describe())
                continue
            ck.equal(doc["config"]["report"], mode or "auto", tag + ": config.report")
            check_layout(ck, tag, r.stdout, doc)
            check_ranks(ck, tag, r.stdout, doc, 4, 1024)
            rows, gap = expert_rows(r.stdout)
            routed = [e["routed"] for e in doc["experts"]]
            if mode == "full":
                ck.equal([e for e, _ in rows], list(range(256)), tag + ": all 256 in order")
                ck.equal([n for _, n in rows], routed, tag + ": their routed loads")
                ck.check(not gap, tag + ": no gap line")
            else:
                ck.check(len(rows) == 10, tag + ": 5 hottest and 5 coldest", str(rows))
                ck.check(gap, tag + ": one '...' line between them")
                order = sorted(routed, reverse=True)
                ck.equal([n for _, n in rows[:5]], order[:5], tag + ": the 5 hottest loads")
                ck.equal([n for _, n in rows[5:]], order[-5:], tag + ": the 5 coldest loads")
                for e, n in rows:
                    ck.equal(routed[e], n, tag + ": expert %d's row is its own load" % e)
                h = histogram(r.stdout)
                ck.check(h is not None and sum(h) == 256,
                         tag + ": the histogram's bins hold all 256 experts", str(h))
        # 8 experts: auto is full
        small = ["--experts", 8, "--tokens", 256, "--hidden", 32, "--ffn", 64]
        r, doc = run_text(exe, 2, small, d, "E8")
        if r.returncode == 0 and doc is not None:
            check_layout(ck, "E8", r.stdout, doc)
            check_ranks(ck, "E8", r.stdout, doc, 2, 256)
            rows, gap = expert_rows(r.stdout)
            ck.equal([e for e, _ in rows], list(range(8)), "E8: auto lists every expert")
            ck.check(histogram(r.stdout) is None, "E8: no histogram in full mode")
            v = doc["verdict"]
            ck.equal(v["valid"], True, "E8: verdict.valid")
            ck.equal(v["result"], "VALID", "E8: verdict.result")
            ck.equal([c["name"] for c in v["checks"]], ["drops", "bytes", "combine", "finite"],
                     "E8: the four checks in order")
            ck.check(all(c["ran"] and c["passed"] for c in v["checks"]), "E8: each ran, passed",
                     str(v))
        else:
            ck.check(False, "E8: runs", r.describe())
        # reroute: the Summary says how many of the dropped were served elsewhere
        r, doc = run_text(exe, 2, small + ["--workload", "hot-experts", "--capacity-factor", "1",
                                           "--drop-policy", "reroute"], d, "reroute")
        if r.returncode == 0 and doc is not None:
            check_layout(ck, "reroute", r.stdout, doc)
            dr = doc["drops"]
            want = "of them %d rerouted to a next-best expert, %d (" % (dr["rerouted"],
                                                                        dr["still_dropped"])
            ck.check(dr["rerouted"] > 0 and want in r.stdout,
                     "reroute: Summary says " + want, r.stdout[:1500])
        else:
            ck.check(False, "reroute: runs", r.describe())
        ck.check("rerouted to a next-best" not in mt.run(exe, 2, small).stdout,
                 "no reroute line without --drop-policy reroute")
        # --steps: the Summary says whose batch the detail is; the run line counts every step
        r = mt.run(exe, 2, small + ["--steps", 3, "--iters", 2, "--warmup", 1])
        ck.check(r.returncode == 0 and "(--steps 3: this block and the detail below are step 0's"
                 in r.stdout, "--steps 3: the Summary says the detail is step 0's", r.describe())
        ck.check(" s of it in 9 steps, " in r.stdout,
                 "--steps 3 --iters 2 --warmup 1: the run line counts 9 layer steps", r.stdout[-3000:])
        r = mt.run(exe, 2, small + ["--iters", 1, "--warmup", 0])
        ck.check(" s of it in 1 step, " in r.stdout and "(--steps" not in r.stdout,
                 "one step: singular, no --steps note", r.stdout[-3000:])
        # one count off: exactly its check fails
        for site, check in (("selfcheck-bytes", "bytes"), ("selfcheck-combine", "combine"),
                            ("selfcheck-finite", "finite")):
            for rank in (0, 1):
                tag = "%s_r%d" % (site, rank)
                r, doc = run_text(exe, 2, small, d, tag, {"MOESIM_FAULT": "%s:%d" % (site, rank)})
                ck.equal(r.returncode, 1, tag + ": exits 1")
                ck.check(any("INVALID" in ln for ln in r.own_stderr), tag + ": INVALID on stderr",
                         "\n".join(r.own_stderr))
                last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
                ck.equal(last.strip(), "INVALID", tag + ": the report's last line")
                if doc is None:
                    ck.check(False, tag + ": the JSON is still written")
                    continue
                v = doc["verdict"]
                ck.equal(v["valid"], False, tag + ": verdict.valid false")
                ck.equal(v["result"], "INVALID", tag + ": verdict.result")
                failed = [c["name"] for c in v["checks"] if c["ran"] and not c["passed"]]
                ck.equal(failed, [check], tag + ": exactly that check fails")
        r, doc = run_text(exe, 1, small + ["--predict-only", "--ranks", 4, "--quiet"], d, "plan")
        ck.equal(r.returncode, 0, "predict-only runs")
        ck.check(doc is not None and doc["verdict"] is None, "predict-only: verdict null")
        r, _ = run_text(exe, 1, small + ["--report", "brief"], d, "bad")
        ck.equal(r.returncode, 2, "--report brief is refused")
        ck.check(any("--report must be" in ln for ln in r.own_stderr), "and says what is allowed",
                 "\n".join(r.own_stderr))
    ck.finish()


if __name__ == "__main__":
    main()
