"""Memory: estimated from the configuration before the first large allocation, checked against the
node's budget (MemAvailable or --max-memory), and reported beside the measured peak RSS
(docs/options.md, "Memory"; docs/json.md, memory.*).

Checked:
  - the overflow of the issue: `--tokens 100 --experts 65536 --hidden 16777216 --ffn 16777216` (and
    without --ffn) at R = 1, 2 and 3, where summing per-rank needs capped at INT64_MAX used to wrap
    negative and pass. Refused, exit 2, one `moesim: error:` line about memory and the budget,
    nothing on stdout; no slower than a refused `--bogus` at the same R by more than 1 s (the
    better of two runs each, so a scheduler hiccup does not decide); and the job's peak RSS (the
    largest ru_maxrss of any process of it, RUSAGE_CHILDREN of a helper that runs only this mpirun)
    stays under 500 MB: nothing large was allocated before the refusal;
  - a big run that fits (N = 16384, d = 1024, f = 256, E = 8, one step: ~400 MiB per rank), at
    R = 2 and at R = 3 with --ranks-per-node 2 (two nodes):
      * JSON memory.estimate_bytes, peak_rss_bytes, baseline_rss_bytes are integers and the largest
        over memory.per_rank; per_rank lists every rank once with its node; per_node has, for each
        node, the number of its ranks and the sums of their estimates and peaks, and the budget
        (MemAvailable: positive and at most MemTotal);
      * per rank, peak_rss - baseline_rss is within 10% + 64 MiB of estimate_bytes. Why that
        should hold: every buffer the estimate counts is written during a step (tokens, router
        probabilities, assignments, expert weights, send/receive/expert rows), so all its pages are
        resident at the peak; what is left is MPI's and OpenBLAS's working memory and the allocator
        (measured: ~6 MB here);
      * the estimate against the formula of docs/options.md evaluated on the JSON's own counts:
        tokens and output 2 n d floats, router E d + E floats and n E probabilities, 17 bytes per
        assignment, experts 2 n_le f d floats, send and receive rows (row and column sums of
        traffic.dispatch_bytes) and per computed row d + f + d floats; the estimate must be at least
        that and at most that plus the raw baseline's buffer (max(send, receive) rows) and 1 MiB of
        counts and results;
      * the text report (without --quiet) has a Memory block: a per-rank line with the largest
        estimate and peak RSS, formatted as the JSON's values, and one line per node with its ranks,
        estimate, peak RSS and budget;
  - --max-memory: one byte below the node estimate the run is refused (exit 2, message naming
    --max-memory), one byte above it runs with memory.budget_source "--max-memory" and
    per_node.budget_bytes the value given; at the default CF 1.25 and at CF 1.0 (where some
    assignments are dropped, so the exact estimate is below the balanced one); a percentage below
    the node estimate's share of MemTotal (and "1%" when that is below it) refuses, one above runs,
    with budget_bytes = MemTotal * p / 100;
  - --max-memory values: bytes, K, M, G, T, KiB, MiB, GiB, TiB, fractions, percentages are
    accepted and give the budget they name (JSON per_node.budget_bytes, config.max_memory_bytes);
    malformed ones (0, negative, no number, unknown unit, space, over 100%, NaN, inf, under one
    byte, absurdly large) are refused with exit 2, one error line naming --max-memory;
  - --predict-only with expert weights (2 GiB per rank) that would not fit a 256 MiB budget in
    which tokens and router fit: without --predict-only the run is refused (exit 2), with it the
    run succeeds, its report still has the Memory block, and each rank's estimate is h alone (no
    y: no step runs), the router and the assignments, excluding the weights and the exchange
    buffers, and matches its measured RSS as above.
"""

import json
import os
import re
import subprocess
import sys
import time

import moetest as mt

TIMEOUT = 60
MiB = 1 << 20
OVERFLOW = ["--tokens", 100, "--experts", 65536, "--hidden", 16777216, "--ffn", 16777216]
FITS = ["--tokens", 16384, "--hidden", 1024, "--ffn", 256, "--experts", 8, "--top-k", 2,
        "--iters", 1, "--warmup", 0]
TINY = ["--tokens", 64, "--hidden", 8, "--experts", 4, "--iters", 1, "--warmup", 0, "--quiet"]


def meminfo(key):
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def fmt(b):
    """moesim's byte formatting: B below 1 KiB, else one decimal in KiB..EiB."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    v, u = float(b), 0
    while v >= 1024.0 and u < 6:
        v /= 1024.0
        u += 1
    return "%.0f %s" % (v, units[u]) if u == 0 else "%.1f %s" % (v, units[u])


def job_peak_rss(exe, ranks, args):
    """(returncode, stderr, seconds, peak RSS in bytes of any process of the job): mpirun run by a
    helper interpreter, whose RUSAGE_CHILDREN then covers this job alone."""
    helper = ("import os, resource, subprocess, sys, time\n"
              "t = time.monotonic()\n"
              "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE,"
              " timeout=%d)\n"
              "dt = time.monotonic() - t\n"
              "sys.stderr.buffer.write(p.stderr)\n"
              "print(p.returncode, dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
              " len(p.stdout))\n" % TIMEOUT)
    env = dict(os.environ)
    env.update(mt.MPI_ENV)
    cmd = ["mpirun", "--oversubscribe", "-n", str(ranks), exe] + [str(a) for a in args]
    p = subprocess.run([sys.executable, "-c", helper] + cmd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=env, timeout=TIMEOUT + 10)
    rc, dt, kb, nout = p.stdout.split()
    return int(rc), p.stderr, float(dt), int(kb) * 1024, int(nout)


def best_of(exe, ranks, args, n=2):
    runs = [mt.run(exe, ranks, args, timeout=TIMEOUT) for _ in range(n)]
    return min(runs, key=lambda r: r.elapsed)


def one_error(ck, tag, r, patterns):
    lines = r.own_stderr
    ok = ck.check(len(lines) == 1 and lines[0].startswith("moesim: error: "),
                  tag + ": exactly one 'moesim: error:' line", r.describe())
    if ok:
        for pat in patterns:
            ck.check(re.search(pat, lines[0], re.IGNORECASE), tag + ": message names /%s/" % pat,
                     lines[0])
    return ok


def overflow_cases(ck, exe):
    for R in (1, 2, 3):
        for args in (OVERFLOW, OVERFLOW[:6]):
            tag = "overflow %s (R=%d)" % (" ".join(map(str, args)), R)
            rc, err, dt, peak, nout = job_peak_rss(exe, R, args)
            lines = mt.own_stderr_lines(err)
            ck.equal(rc, 2, tag + ": refused, exit 2")
            if ck.check(len(lines) == 1 and lines[0].startswith("moesim: error: "),
                        tag + ": exactly one 'moesim: error:' line", err[-2000:]):
                ck.check(re.search(r"memory|budget", lines[0]) and
                         re.search(r"budget|MemAvailable|available", lines[0]),
                         tag + ": the message is about memory and the budget", lines[0])
            ck.equal(nout, 0, tag + ": nothing on stdout")
            ck.check(peak < 500 * 10 ** 6, tag + ": the job's peak RSS stays under 500 MB",
                     "peak %d bytes" % peak)
            print("%-40s %.2f s, peak RSS %.1f MiB: %s" % (tag, dt, peak / MiB,
                                                          lines[0] if lines else ""))
        over = best_of(exe, R, OVERFLOW)
        bogus = best_of(exe, R, ["--bogus"])
        ck.equal(bogus.returncode, 2, "--bogus (R=%d): exit 2" % R)
        ck.check(over.elapsed - bogus.elapsed < 1.0,
                 "overflow (R=%d): refused within a second of an option error" % R,
                 "overflow %.2f s, --bogus %.2f s" % (over.elapsed, bogus.elapsed))
        print("overflow R=%d: %.2f s, --bogus: %.2f s" % (R, over.elapsed, bogus.elapsed))


def check_memory_json(ck, tag, doc, ranks, nodes_of, budget=None, source="MemAvailable"):
    m = doc["memory"]
    pr, pn = m["per_rank"], m["per_node"]
    for key in ("estimate_bytes", "peak_rss_bytes", "baseline_rss_bytes"):
        ck.check(type(m[key]) is int, tag + ": memory.%s is an integer" % key, repr(m[key]))
        ck.check(all(type(x[key]) is int for x in pr), tag + ": per_rank %s integers" % key)
        ck.equal(m[key], max(x[key] for x in pr), tag + ": memory.%s = max over per_rank" % key)
    ck.equal([x["rank"] for x in pr], list(range(ranks)), tag + ": per_rank lists every rank")
    ck.equal([x["node"] for x in pr], nodes_of, tag + ": per_rank nodes")
    ck.equal(m["budget_source"], source, tag + ": budget_source")
    want_nodes = sorted(set(nodes_of))
    ck.equal([x["node"] for x in pn], want_nodes, tag + ": per_node lists every node")
    for x in pn:
        mine = [y for y in pr if y["node"] == x["node"]]
        ck.equal(x["ranks"], len(mine), tag + ": node %d ranks" % x["node"])
        ck.equal(x["estimate_bytes"], sum(y["estimate_bytes"] for y in mine),
                 tag + ": node %d estimate = sum over its ranks" % x["node"])
        ck.equal(x["peak_rss_bytes"], sum(y["peak_rss_bytes"] for y in mine),
                 tag + ": node %d peak RSS = sum over its ranks" % x["node"])
        if budget is None:
            ck.check(0 < x["budget_bytes"] <= meminfo("MemTotal"),
                     tag + ": node %d budget is MemAvailable-sized" % x["node"],
                     "budget %r" % x["budget_bytes"])
        else:
            ck.equal(x["budget_bytes"], budget, tag + ": node %d budget" % x["node"])


def formula(doc, rank, predict_only=False):
    """(lower, upper) bounds on rank's estimate from docs/options.md on the JSON's counts."""
    c = doc["config"]
    N, d, f, E, k, R = (c["tokens"], c["hidden"], c["ffn"], c["experts"], c["top_k"], c["ranks"])
    _, n = mt.partition(N, R, rank)
    _, n_le = mt.partition(E, R, rank)
    # h and y (h alone under --predict-only, which never runs a step), W and bias, probabilities,
    # 17 bytes per assignment
    base = (1 if predict_only else 2) * n * d * 4 + (E * d + E + n * E) * 4 + 17 * n * k
    if predict_only:
        return base, base + MiB
    m = doc["traffic"]["dispatch_bytes"]
    send = sum(m[rank]) // (d * 4)
    recv = sum(m[s][rank] for s in range(R)) // (d * 4)
    rows_x = sum(e["accepted"] for e in doc["experts"] if e["rank"] == rank)
    low = base + 2 * n_le * f * d * 4 + (send + recv) * d * 4 + rows_x * (2 * d + f) * 4
    return low, low + max(send, recv) * d * 4 + MiB


def fitting_cases(ck, exe, root):
    estimates = {}
    for R, extra, nodes_of in ((2, [], [0, 0]), (3, ["--ranks-per-node", 2], [0, 0, 1])):
        tag = "fitting run (R=%d%s)" % (R, ", 2 nodes" if extra else "")
        jpath = os.path.join(root, "fits_R%d.json" % R)
        r = mt.run(exe, R, FITS + extra + ["--json", jpath], timeout=TIMEOUT)
        if not ck.equal(r.returncode, 0, tag + ": exit 0"):
            print(r.describe())
            continue
        doc = json.load(open(jpath))
        check_memory_json(ck, tag, doc, R, nodes_of)
        m = doc["memory"]
        for x in m["per_rank"]:
            used = x["peak_rss_bytes"] - x["baseline_rss_bytes"]
            est = x["estimate_bytes"]
            ck.check(abs(used - est) <= 0.10 * est + 64 * MiB,
                     tag + ": rank %d peak - baseline RSS within 10%% + 64 MiB of the estimate"
                     % x["rank"], "peak-baseline %d, estimate %d" % (used, est))
            lo, hi = formula(doc, x["rank"])
            ck.check(lo <= est <= hi, tag + ": rank %d estimate matches the documented formula"
                     % x["rank"], "estimate %d, formula [%d, %d]" % (est, lo, hi))
            print("%s rank %d: estimate %s, peak-baseline %s (%+.1f MiB), formula [%s, %s]" % (
                tag, x["rank"], fmt(est), fmt(used), (used - est) / MiB, fmt(lo), fmt(hi)))
        # the text report's Memory block, from the same run
        lines = r.stdout.splitlines()
        head = [i for i, l in enumerate(lines) if l.startswith("Memory")]
        if ck.check(head, tag + ": the report has a Memory block", r.stdout[-3000:]):
            block = lines[head[0]:head[0] + 2 + len(m["per_node"])]
            per_rank = [l for l in block if l.strip().startswith("per rank")]
            ck.check(per_rank and ("estimate %s max" % fmt(m["estimate_bytes"])) in per_rank[0]
                     and ("peak RSS %s max" % fmt(m["peak_rss_bytes"])) in per_rank[0],
                     tag + ": the per-rank line shows the largest estimate and peak RSS",
                     "\n".join(block))
            for x in m["per_node"]:
                pat = (r"^\s*node %d\s+%d ranks?\s*: estimate %s, peak RSS %s, budget %s "
                       r"\(MemAvailable\)$" % (x["node"], x["ranks"], re.escape(fmt(x["estimate_bytes"])),
                                               re.escape(fmt(x["peak_rss_bytes"])),
                                               re.escape(fmt(x["budget_bytes"]))))
                ck.check([l for l in block if re.match(pat, l)],
                         tag + ": a line for node %d with its ranks, estimate, RSS, budget"
                         % x["node"], "\n".join(block))
        estimates[R] = doc
    return estimates


def budget_cases(ck, exe, root, fits):
    doc = fits.get(2)
    if doc is None:
        ck.check(False, "--max-memory cases need the R=2 fitting run")
        return
    for cf in ("1.25", "1.0"):
        args = FITS + ["--capacity-factor", cf, "--quiet"]
        jpath = os.path.join(root, "cf%s.json" % cf)
        r = mt.run(exe, 2, args + ["--json", jpath], timeout=TIMEOUT)
        if not ck.equal(r.returncode, 0, "CF %s without --max-memory: exit 0" % cf):
            continue
        node = json.load(open(jpath))["memory"]["per_node"][0]["estimate_bytes"]
        tag = "--max-memory estimate-1 (CF %s, R=2)" % cf
        r = mt.run(exe, 2, args + ["--max-memory", node - 1], timeout=TIMEOUT)
        ck.equal(r.returncode, 2, tag + ": refused, exit 2")
        one_error(ck, tag, r, [r"--max-memory", r"budget"])
        tag = "--max-memory estimate+1 (CF %s, R=2)" % cf
        r = mt.run(exe, 2, args + ["--max-memory", node + 1, "--json", jpath], timeout=TIMEOUT)
        if ck.equal(r.returncode, 0, tag + ": runs, exit 0 (the reported node estimate is %d)"
                    % node):
            d2 = json.load(open(jpath))
            check_memory_json(ck, tag, d2, 2, [0, 0], budget=node + 1, source="--max-memory")
            ck.equal(d2["config"]["max_memory_bytes"], node + 1, tag + ": config.max_memory_bytes")
        else:
            print("   %s: %s" % (tag, r.own_stderr))
    # percentages of MemTotal
    total = meminfo("MemTotal")
    node = doc["memory"]["per_node"][0]["estimate_bytes"]
    share = 100.0 * node / total
    below, above = "%.6f%%" % (share * 0.8), "%.6f%%" % min(100.0, share * 1.3)
    pcts = [(below, 2), (above, 0)]
    if total * 0.01 < node:
        pcts.append(("1%", 2))
    jpath = os.path.join(root, "pct.json")
    for p, want in pcts:
        tag = "--max-memory %s (R=2; the node estimate is %.3f%% of MemTotal)" % (p, share)
        r = mt.run(exe, 2, FITS + ["--quiet", "--max-memory", p, "--json", jpath], timeout=TIMEOUT)
        ck.equal(r.returncode, want, tag + ": exit %d" % want)
        if want == 2:
            one_error(ck, tag, r, [r"--max-memory"])
        elif r.returncode == 0:
            pv = float(p[:-1])
            check_memory_json(ck, tag, json.load(open(jpath)), 2, [0, 0],
                              budget=int(total * pv / 100.0), source="--max-memory")


def value_cases(ck, exe, root):
    total = meminfo("MemTotal")
    K = 1024
    good = [("67108864", 64 * K * K), ("65536K", 64 * K * K), ("65536KiB", 64 * K * K),
            ("64M", 64 * K * K), ("64MiB", 64 * K * K), ("1G", K ** 3), ("1GiB", K ** 3),
            ("0.5G", K ** 3 // 2), ("1.5GiB", 3 * K ** 3 // 2), ("2048M", 2 * K ** 3),
            ("1T", K ** 4), ("1TiB", K ** 4), ("50%", None), ("100%", None), ("12.5%", None)]
    jpath = os.path.join(root, "val.json")
    for i, (v, want) in enumerate(good):
        R = 1 + i % 2
        tag = "--max-memory %s (R=%d)" % (v, R)
        r = mt.run(exe, R, TINY + ["--max-memory", v, "--json", jpath], timeout=TIMEOUT)
        if not ck.equal(r.returncode, 0, tag + ": accepted, exit 0"):
            print(r.describe())
            continue
        doc = json.load(open(jpath))
        if want is None:
            pv = float(v[:-1])
            want = int(total * pv / 100.0)
            ck.equal(doc["config"]["max_memory_percent"], pv, tag + ": config.max_memory_percent")
        else:
            ck.equal(doc["config"]["max_memory_bytes"], want, tag + ": config.max_memory_bytes")
        check_memory_json(ck, tag, doc, R, [0] * R, budget=want, source="--max-memory")
    bad = ["0", "-1", "-5%", "abc", "", "10X", "1GG", "1Gi", "1 G", " 1G", "G", "101%", "0%",
           "nan", "inf", "1e400", "0.5", "1e30T", "50%%", "1KiBB"]
    for i, v in enumerate(bad):
        R = 1 + i % 2
        tag = "--max-memory %r (R=%d)" % (v, R)
        r = mt.run(exe, R, TINY + ["--max-memory", v], timeout=TIMEOUT)
        ck.equal(r.returncode, 2, tag + ": refused, exit 2")
        one_error(ck, tag, r, [r"--max-memory"])
        ck.equal(r.stdout, "", tag + ": nothing on stdout")
        ck.check(r.elapsed < 10, tag + ": promptly", "%.1f s" % r.elapsed)


def predict_only_cases(ck, exe, root):
    big = ["--tokens", 1024, "--hidden", 1024, "--ffn", 65536, "--experts", 8, "--iters", 1,
           "--warmup", 0, "--quiet", "--max-memory", "256M"]
    weights = 2 * 4 * 65536 * 1024 * 4  # per rank at R = 2: 2 n_le f d floats, 2 GiB
    tag = "weights over budget (R=2)"
    r = mt.run(exe, 2, big, timeout=TIMEOUT)
    ck.equal(r.returncode, 2, tag + ": without --predict-only refused, exit 2")
    one_error(ck, tag, r, [r"--max-memory", r"budget"])
    tag = "weights over budget --predict-only (R=2)"
    jpath = os.path.join(root, "predict.json")
    args = [a for a in big if a != "--quiet"] + ["--predict-only", "--json", jpath]
    r = mt.run(exe, 2, args, timeout=TIMEOUT)
    if not ck.equal(r.returncode, 0, tag + ": runs, exit 0"):
        print(r.describe())
        return
    ck.check(re.search(r"^Memory", r.stdout, re.M) and "budget 256.0 MiB (--max-memory)" in r.stdout,
             tag + ": the report has the Memory block with the budget", r.stdout[-2000:])
    doc = json.load(open(jpath))
    check_memory_json(ck, tag, doc, 2, [0, 0], budget=256 * MiB, source="--max-memory")
    for x in doc["memory"]["per_rank"]:
        lo, hi = formula(doc, x["rank"], predict_only=True)
        ck.check(x["estimate_bytes"] < weights, tag + ": rank %d estimate excludes the weights"
                 % x["rank"], "estimate %d" % x["estimate_bytes"])
        ck.check(lo <= x["estimate_bytes"] <= hi,
                 tag + ": rank %d estimate is tokens, router and assignments only" % x["rank"],
                 "estimate %d, formula [%d, %d]" % (x["estimate_bytes"], lo, hi))
        used = x["peak_rss_bytes"] - x["baseline_rss_bytes"]
        ck.check(abs(used - x["estimate_bytes"]) <= 0.10 * x["estimate_bytes"] + 64 * MiB,
                 tag + ": rank %d peak - baseline RSS within 10%% + 64 MiB of the estimate"
                 % x["rank"], "peak-baseline %d, estimate %d" % (used, x["estimate_bytes"]))


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_memory")
    root = mt.workdir()
    t0 = time.monotonic()
    ck.guard("overflow", overflow_cases, ck, exe)
    print("-- overflow: %.1f s" % (time.monotonic() - t0), flush=True)
    t = time.monotonic()
    fits = ck.guard("fitting", fitting_cases, ck, exe, root) or {}
    print("-- fitting: %.1f s" % (time.monotonic() - t), flush=True)
    t = time.monotonic()
    ck.guard("budget", budget_cases, ck, exe, root, fits)
    print("-- budget: %.1f s" % (time.monotonic() - t), flush=True)
    t = time.monotonic()
    ck.guard("values", value_cases, ck, exe, root)
    ck.guard("predict_only", predict_only_cases, ck, exe, root)
    print("-- values, predict-only: %.1f s" % (time.monotonic() - t), flush=True)
    print("total %.1f s" % (time.monotonic() - t0))
    ck.finish()


if __name__ == "__main__":
    main()
