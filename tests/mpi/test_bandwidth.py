"""Bandwidth as nccl-tests reports it, the spread of single iterations, and the run's environment
(docs/json.md `bandwidth`, `timing`, `environment`; docs/model.md, Traffic).

Runs at R = 1, 2, 3 and 4 (R = 4 with --ranks-per-node 2: two emulated nodes, so that bytes leave
their node), with --json and the text report. From the JSON's own traffic.dispatch_bytes (D, R x R,
[src][dst]), placement[].node and timing:
  bandwidth.dispatch.algbw  == max_s sum_d D[s][d] / timing.dispatch.max   (busiest sender's bytes)
  bandwidth.combine.algbw   == max_d sum_s D[s][d] / timing.combine.max    (combine is D transposed)
  busbw                     == algbw (R - 1) / R                           (nccl-tests, alltoall)
  off_rank_bytes            == sum of D off the diagonal (both exchanges)
  off_node_bytes            == sum of D[s][d] with node(s) != node(d); > 0 at R = 4 on two nodes
  dispatch_bytes_per_second, combine_bytes_per_second kept, == sum D / the phase's max
  timing.<phase> and timing.step: iter_min <= min <= mean <= max <= iter_max
  environment: hosts == the distinct placement hosts in order of first rank; cores int or null;
    load averages number or null; openmpi, openblas strings (openmpi begins "Open MPI" when mpirun
    is Open MPI's); moesim == what `moesim --version` prints; utc parses as ISO 8601 UTC and lies
    between the test's clock before and after the run (to the second); warnings a list of strings
    with a spread warning for dispatch (combine) exactly when (iter_max - iter_min) / iter_min of
    that phase exceeds 25%.
  text report: the nccl-tests line follows the "all-to-all:" line with the JSON's figures in GB/s
    (to the printed 2 decimals), then the off-rank / off-node line; every JSON warning appears as a
    "warning: " line; the added lines are at most 100 columns.
MOESIM_FAKE_LOADAVG (docs/options.md, Environment): 1000 gives load_average_start == _end == 1000
and both load warnings (when cores is known); 0 gives neither; "none" gives null and neither.
--predict-only keeps bandwidth and timing null and fills environment.

Tolerances: algbw and busbw rel 1e-12. moesim divides an int64 byte count (exactly representable
below 2^53) by the same double the JSON prints with 17 significant digits, and multiplies by
(R - 1) / R in the same order as here: at most two roundings, far below 1e-12, while a wrong row,
a missing diagonal or the total in place of the busiest sender is off by 10% or more.
"""

import datetime
import json
import os
import re
import time

import numpy as np

import moetest as mt

BASE = ["--tokens", 1001, "--hidden", 32, "--experts", 8, "--top-k", 2, "--seed", 7,
        "--iters", 3, "--warmup", 1]
RTOL = 1e-12
PHASES = ("router", "count_wait", "count_exchange", "pack", "dispatch_wait", "dispatch", "dispatch_raw",
          "regroup", "expert", "combine_wait", "combine", "combine_raw", "unpack", "shared")
ENV_KEYS = ("hosts", "cores", "load_average_start", "load_average_end", "openmpi", "openblas",
            "gelu_kernel", "moesim", "utc", "warnings", "wall_seconds", "step_seconds", "outside_steps_fraction")


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def run_doc(exe, ranks, args, wd, tag, fake_load=None, quiet=False):
    """One run with --json; (JSON document, text report, seconds since the epoch before, after)."""
    jpath = os.path.join(wd, tag + ".json")
    old = os.environ.get("MOESIM_FAKE_LOADAVG")
    if fake_load is not None:
        os.environ["MOESIM_FAKE_LOADAVG"] = fake_load
    try:
        before = time.time()
        r = mt.run(exe, ranks, list(args) + ["--json", jpath] + (["--quiet"] if quiet else []))
        after = time.time()
    finally:
        if old is None:
            os.environ.pop("MOESIM_FAKE_LOADAVG", None)
        else:
            os.environ["MOESIM_FAKE_LOADAVG"] = old
    if r.returncode != 0:
        raise AssertionError("moesim failed (R=%d, %s)\n%s" % (ranks, tag, r.describe()))
    with open(jpath) as fh:
        return json.load(fh), r.stdout, before, after


def moesim_version(exe):
    r = mt.run(exe, 1, ["--version"])
    m = re.match(r"moesim (\S+) \(", r.stdout)
    if r.returncode != 0 or m is None:
        raise AssertionError("moesim --version: %s" % r.describe())
    return m.group(1)


def spread(t):
    return (t["iter_max"] - t["iter_min"]) / t["iter_min"] if t["iter_min"] > 0 else None


def check_bandwidth(ck, doc, R, tag):
    D = np.array(doc["traffic"]["dispatch_bytes"], dtype=np.int64)
    C = np.array(doc["traffic"]["combine_bytes"], dtype=np.int64)
    # the combine sends the dispatched rows back (the transpose), perhaps in another row format
    ck.check(np.array_equal(C > 0, D.T > 0), tag + ": combine_bytes has dispatch_bytes' pattern, "
             "transposed")
    nodes = [p["node"] for p in doc["placement"]]
    bw, timing = doc["bandwidth"], doc["timing"]
    for name, M in (("dispatch", D), ("combine", C)):
        off_rank = int(M.sum() - np.trace(M))
        off_node = int(sum(M[s, d] for s in range(R) for d in range(R) if nodes[s] != nodes[d]))
        b = bw.get(name)
        if not ck.check(isinstance(b, dict), tag + ": bandwidth.%s is an object" % name, repr(b)):
            continue
        for key, typ in (("algbw", is_num), ("busbw", is_num), ("off_rank_bytes", is_int),
                         ("off_node_bytes", is_int)):
            ck.check(typ(b.get(key)), tag + ": bandwidth.%s.%s typed" % (name, key), repr(b))
        t = timing[name]["max"]
        send = int(M.sum(axis=1).max())
        ck.close(b["algbw"], send / t, tag + ": %s algbw = busiest sender %d B / %.3g s"
                 % (name, send, t), rtol=RTOL, atol=0)
        ck.close(b["busbw"], b["algbw"] * (R - 1) / R, tag + ": %s busbw = algbw (R-1)/R" % name,
                 rtol=RTOL, atol=0)
        ck.equal(b["off_rank_bytes"], off_rank, tag + ": %s off_rank_bytes" % name)
        ck.equal(b["off_node_bytes"], off_node, tag + ": %s off_node_bytes" % name)
        old = bw.get(name + "_bytes_per_second")
        ck.check(is_num(old), tag + ": bandwidth.%s_bytes_per_second kept" % name)
        if is_num(old):
            ck.close(old, D.sum() / t, tag + ": %s_bytes_per_second = sum / max" % name,
                     rtol=RTOL, atol=0)
        if len(set(nodes)) > 1:
            ck.check(off_node > 0, tag + ": %s bytes leave their node on %d nodes"
                     % (name, len(set(nodes))))
    return D


def check_timing(ck, doc, tag):
    for p in PHASES + ("step",):
        t = doc["timing"].get(p)
        if not ck.check(isinstance(t, dict), tag + ": timing.%s" % p):
            continue
        vals = [t.get(k) for k in ("iter_min", "min", "mean", "max", "iter_max")]
        if ck.check(all(is_num(v) for v in vals), tag + ": timing.%s keys are numbers" % p,
                    repr(t)):
            ck.check(all(a <= b for a, b in zip(vals, vals[1:])),
                     tag + ": timing.%s iter_min <= min <= mean <= max <= iter_max" % p, repr(t))


def check_environment(ck, doc, tag, version, before, after):
    env = doc.get("environment")
    if not ck.check(isinstance(env, dict), tag + ": environment is an object", repr(env)):
        return None
    ck.equal(sorted(env), sorted(ENV_KEYS), tag + ": environment keys")
    hosts = []
    for p in doc["placement"]:
        if p["host"] not in hosts:
            hosts.append(p["host"])
    ck.equal(env.get("hosts"), hosts, tag + ": environment.hosts = distinct placement hosts")
    ck.check(env.get("cores") is None or (is_int(env["cores"]) and env["cores"] > 0),
             tag + ": cores int > 0 or null", repr(env.get("cores")))
    for k in ("load_average_start", "load_average_end"):
        ck.check(env.get(k) is None or (is_num(env[k]) and env[k] >= 0),
                 tag + ": %s number >= 0 or null" % k, repr(env.get(k)))
    for k in ("openmpi", "openblas"):
        ck.check(isinstance(env.get(k), str) and env[k] and env[k] == env[k].strip()
                 and "\n" not in env[k], tag + ": %s a trimmed one-line string" % k,
                 repr(env.get(k)))
    ck.check(env.get("gelu_kernel") in ("avx512-fma", "avx2-fma", "plain"),
             tag + ": gelu_kernel one of avx512-fma, avx2-fma, plain", repr(env.get("gelu_kernel")))
    if OPEN_MPI:
        ck.check(str(env.get("openmpi")).startswith("Open MPI"), tag + ": openmpi names Open MPI",
                 repr(env.get("openmpi")))
    ck.equal(env.get("moesim"), version, tag + ": environment.moesim = moesim --version")
    ck.equal(doc.get("moesim_version"), version, tag + ": moesim_version = moesim --version")
    try:
        utc = datetime.datetime.strptime(env.get("utc") or "", "%Y-%m-%dT%H:%M:%SZ")
        t = utc.replace(tzinfo=datetime.timezone.utc).timestamp()
        ck.check(int(before) <= t <= after, tag + ": utc within the run's wall time",
                 "%s not in [%s, %s]" % (env["utc"], before, after))
    except ValueError:
        ck.check(False, tag + ": utc parses as YYYY-MM-DDTHH:MM:SSZ", repr(env.get("utc")))
    # the run's wall time: within what this script saw, the steps inside it, the share outside
    wall, steps, out = env.get("wall_seconds"), env.get("step_seconds"), env.get("outside_steps_fraction")
    if ck.check(is_num(wall) and is_num(steps) and is_num(out), tag + ": wall, step seconds and "
                "the outside share are numbers", repr((wall, steps, out))):
        ck.check(0 < wall <= after - before + 1, tag + ": wall_seconds within the run",
                 "%s s, the run took %.2f s" % (wall, after - before))
        ck.check(0 <= steps <= wall, tag + ": 0 <= step_seconds <= wall_seconds", repr((steps, wall)))
        ck.close(out, 1 - steps / wall, tag + ": outside_steps_fraction = 1 - steps / wall",
                 rtol=1e-9, atol=1e-12)
        if doc["timing"] is None: # --predict-only runs no step
            ck.equal(steps, 0, tag + ": no step under --predict-only")
        else: # every step of the run is inside: at least iters x the median step of rank 0
            ck.check(steps > 0, tag + ": steps ran", repr(steps))
    w = env.get("warnings")
    if ck.check(isinstance(w, list) and all(isinstance(x, str) for x in w),
                tag + ": warnings a list of strings", repr(w)):
        for p in ("dispatch", "combine"):
            s = spread(doc["timing"][p]) if doc["timing"] else None
            has = any(x.startswith(p + " times spread") for x in w)
            ck.equal(has, s is not None and s > 0.25,
                     tag + ": a %s spread warning exactly when the spread (%s) > 25%%" % (p, s))
    return env


def check_text(ck, doc, text, tag):
    lines = text.splitlines()
    idx = [i for i, l in enumerate(lines) if l.startswith("  all-to-all: dispatch ")]
    if not ck.check(len(idx) == 1 and idx[0] + 2 < len(lines), tag + ": one all-to-all line"):
        return
    nccl, offs = lines[idx[0] + 1], lines[idx[0] + 2]
    bw = doc["bandwidth"]
    want = ("  nccl-tests style: dispatch algbw %.2f GB/s busbw %.2f GB/s, combine algbw %.2f "
            "busbw %.2f" % (bw["dispatch"]["algbw"] / 1e9, bw["dispatch"]["busbw"] / 1e9,
                            bw["combine"]["algbw"] / 1e9, bw["combine"]["busbw"] / 1e9))
    ck.equal(nccl, want, tag + ": nccl-tests line after the all-to-all line")
    size = r"[0-9.]+ (B|KiB|MiB|GiB|TiB)"
    same = (bw["dispatch"]["off_rank_bytes"] == bw["combine"]["off_rank_bytes"] and
            bw["dispatch"]["off_node_bytes"] == bw["combine"]["off_node_bytes"])
    pattern = (r"  bytes off-rank %s, off-node %s in each exchange \(algbw, busbw: docs/model.md\)"
               % (size, size) if same else
               r"  bytes off-rank %s / %s, off-node %s / %s \(dispatch / combine\)"
               % (size, size, size, size))
    ck.check(re.fullmatch(pattern, offs), tag + ": off-rank / off-node line", offs)
    if bw["dispatch"]["off_node_bytes"] == 0:
        ck.check(", off-node 0 B " in offs, tag + ": off-node 0 B when nothing leaves a node", offs)
    added = [nccl, offs]
    for w in doc["environment"]["warnings"]:
        line = "warning: " + w
        ck.check(line in lines, tag + ": JSON warning printed: " + w, text[-2000:])
        added.append(line)
    for line in added:
        ck.check(len(line) <= 100, tag + ": added line <= 100 columns", line)


def case(ck, exe, wd, version, R, extra):
    tag = "R%d%s" % (R, "".join(str(x) for x in extra))
    doc, text, before, after = run_doc(exe, R, BASE + extra, wd, tag)
    check_bandwidth(ck, doc, R, tag)
    check_timing(ck, doc, tag)
    check_environment(ck, doc, tag, version, before, after)
    check_text(ck, doc, text, tag)
    if extra:
        ck.equal(len(set(p["node"] for p in doc["placement"])), R // 2, tag + ": emulated nodes")


def fake_load(ck, exe, wd, version):
    R = 2
    for fake, want, warned in (("1000", 1000.0, True), ("0", 0.0, False), ("none", None, False)):
        tag = "fake_load_" + fake
        doc, text, before, after = run_doc(exe, R, BASE, wd, tag, fake_load=fake)
        env = check_environment(ck, doc, tag, version, before, after)
        if env is None:
            continue
        check_text(ck, doc, text, tag)
        ck.equal(env["load_average_start"], want, tag + ": load_average_start")
        ck.equal(env["load_average_end"], want, tag + ": load_average_end")
        loads = [w for w in env["warnings"] if w.startswith("load average")]
        expect = 2 if warned and env["cores"] is not None else 0
        ck.equal(len(loads), expect, tag + ": load warnings (start and end)")
        if expect:
            ck.check(loads[0].startswith("load average 1000.00 at the start exceeds the %d online "
                                         "cores" % env["cores"]), tag + ": start warning text",
                     loads[0])
            ck.check(" at the end " in loads[1], tag + ": end warning text", loads[1])


def predict_only(ck, exe, wd, version):
    tag = "predict_only"
    doc, _, before, after = run_doc(exe, 2, BASE + ["--predict-only"], wd, tag, quiet=True)
    ck.check(doc.get("bandwidth", 0) is None, tag + ": bandwidth null")
    ck.check(doc.get("timing", 0) is None, tag + ": timing null")
    env = check_environment(ck, doc, tag, version, before, after)
    if env is not None:
        ck.check(not any("spread" in w for w in env["warnings"]), tag + ": no spread warning")


def open_mpi():
    import subprocess
    try:
        p = subprocess.run(["mpirun", "--version"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=20)
        return "Open MPI" in p.stdout or "OpenRTE" in p.stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


OPEN_MPI = False


def raw_baseline(ck, exe, wd):
    """--raw-baseline: off runs no baseline (its phases and ratios null, the report says so);
    first times it once, on the first timed iteration (so each rank's median is that one time and
    the phase's min and max over ranks are its iter_min and iter_max); on times every step; and
    count_wait, the barrier before the counts, is timed in every mode."""
    args = BASE + ["--iters", 4]
    docs = {}
    for mode in ("off", "first", "on"):
        doc, out, _, _ = run_doc(exe, 2, args + ["--raw-baseline", mode], wd, "raw_" + mode)
        docs[mode] = doc
        ck.equal(doc["config"]["raw_baseline"], mode, mode + ": config.raw_baseline")
        cw = doc["timing"]["count_wait"]
        ck.check(all(is_num(cw[k]) and cw[k] >= 0 for k in ("min", "mean", "max")),
                 mode + ": timing.count_wait measured", repr(cw))
        for d in ("dispatch", "combine"):
            raw, ratio = doc["timing"][d + "_raw"], doc["exchange"][d + "_over_raw"]
            if mode == "off":
                ck.check(all(raw[k] is None for k in raw), "off: timing.%s_raw all null" % d,
                         repr(raw))
                ck.equal(ratio, None, "off: exchange.%s_over_raw null" % d)
            else:
                ck.check(is_num(raw["max"]) and raw["max"] > 0 and is_num(ratio),
                         mode + ": timing.%s_raw and its ratio measured" % d, repr(raw))
            if mode == "first":
                ck.equal((raw["min"], raw["max"]), (raw["iter_min"], raw["iter_max"]),
                         "first: one %s_raw time per rank (min, max = iter_min, iter_max)" % d)
        if mode == "off":
            ck.check("no raw MPI_Alltoallv baseline (--raw-baseline off)" in out,
                     "off: the report says there is no baseline", out[-1500:])
    mt.check_refused(ck, exe, "bad_raw_baseline", 1, BASE + ["--raw-baseline", "sometimes"],
                     ["--raw-baseline", "first", "off"], wd)


def main():
    global OPEN_MPI
    exe = mt.moesim_path()
    OPEN_MPI = open_mpi()
    ck = mt.Checker("test_bandwidth")
    wd = mt.workdir()
    t0 = time.monotonic()
    version = ck.guard("version", moesim_version, exe)
    if version is None:
        ck.finish()
    for R, extra in ((1, []), (2, []), (3, []), (4, ["--ranks-per-node", 2])):
        ck.guard("R=%d" % R, case, ck, exe, wd, version, R, extra)
    ck.guard("fake_load", fake_load, ck, exe, wd, version)
    ck.guard("predict_only", predict_only, ck, exe, wd, version)
    ck.guard("raw_baseline", raw_baseline, ck, exe, wd)
    print("test_bandwidth: %.1f s" % (time.monotonic() - t0))
    ck.finish()


if __name__ == "__main__":
    main()
