"""--regroup (issue 11): received rows land straight in the experts' blocks, and the combine sends
straight from the experts' outputs, with no staging buffer and no regroup copy.

For each layer below, at several rank counts (R = 1 for the plain one: every row is the rank's own,
copied outside MPI by the dispatch and left in the blocks by the combine), against --regroup copy (the staged exchange and its
two copies) on the same batch:
  - y is bit for bit the same under alltoallw (one MPI_Alltoallw whose receive datatypes scatter
    each source's rows into the blocks) and slots (one MPI_Alltoallv per local-expert slot): the
    blocks hold the same rows in the same order, so the expert GEMMs see the same inputs;
  - routing, drops and traffic are the same;
  - alltoallw-slots (alltoallw's dispatch, slots' combine from the same blocks) likewise;
  - exchange.regroup says what ran and config.regroup what was asked; auto (more than one slot a
    rank, rows well under 2 GiB) dispatches by alltoallw and probes the two combines:
    exchange.regroup_probe holds both times and the faster one ran (alltoallw, no probe, when the
    combine's rows are encoded, fp8 or bf16); auto is slots with one expert per rank; a forced mode has no probe;
  - the per-rank estimate (memory.per_rank[].estimate_bytes) is exactly n_recv x d x 4 bytes
    smaller without the staging buffer, n_recv = the rows the rank receives (traffic.rows column;
    not checked for the cf list, whose buffers serve every cf);
  - the layers cover padding (empty slots stay zero and are computed), EPLB replicas (a rank with
    more slots than another), strided placement, fp8 and bf16 rows on the wire (decoded into the
    blocks, encoded out of them), identity experts, expert choice, and a capacity-factor list;
  - --regroup alltoallw, slots or alltoallw-slots is refused with --a2a hierarchical and --dispatch per-rank, where
    rows do not arrive from one flat exchange of per-expert rows; auto there is copy (or fan-out).
"""

import numpy as np

import moetest as mt

N, D, E = 203, 16, 8
BASE = ["--tokens", N, "--hidden", D, "--experts", E, "--iters", 1, "--warmup", 0, "--seed", 5]

MODES = ("copy", "alltoallw", "slots", "alltoallw-slots", "auto")

LAYERS = [
    ("base", [1, 2, 3], []),
    ("pad", [2, 4], ["--pad-to-capacity", "--capacity-factor", "1.0"]),
    ("eplb", [4], ["--redundant-experts", 4, "--skew", "1.2"]),
    ("strided", [3], ["--placement", "strided", "--capacity-scope", "local"]),
    ("fp8", [2], ["--wire", "fp8"]),
    ("bf16", [3], ["--wire", "bf16", "--wire-combine", "bf16", "--top-k", 3]),
    ("identity", [4], ["--mode", "dispatch"]),
    ("expert_choice", [2], ["--routing", "expert-choice"]),
    ("cf_list", [2], ["--capacity-factor", "1.0,2.0"]),
]


def estimate(doc, rank):
    return next(p["estimate_bytes"] for p in doc["memory"]["per_rank"] if p["rank"] == rank)


def one_layer(ck, exe, wd, tag, R, extra):
    runs = {}
    for mode in MODES:
        runs[mode] = ck.guard("%s R=%d %s" % (tag, R, mode), mt.run_full, exe, R,
                              BASE + extra + ["--regroup", mode], wd, "%s_%d_%s" % (tag, R, mode),
                              routing=False)
    ref = runs["copy"]
    if ref is None:
        return
    t = "%s R=%d" % (tag, R)
    ck.equal(ref.json["exchange"]["regroup"], "copy", t + ": exchange.regroup copy")
    rows = np.array(ref.json["traffic"]["rows"], dtype=np.int64)
    for mode in MODES[1:]:
        got = runs[mode]
        if got is None:
            continue
        ck.equal(got.json["config"]["regroup"], mode, t + ": config.regroup " + mode)
        ran, probe = got.json["exchange"]["regroup"], got.json["exchange"]["regroup_probe"]
        if mode == "auto" and got.json["wire"]["combine"] != "fp32":
            # encoded rows leave contiguous: alltoallw, nothing probed
            ck.equal((ran, probe), ("alltoallw", None), t + ": auto, encoded combine: no probe")
        elif mode == "auto":
            # the probe times both combines; the faster ran
            ok = isinstance(probe, dict) and sorted(probe) == ["alltoallw", "alltoallw-slots"] \
                and all(isinstance(v, float) and v > 0 for v in probe.values())
            if ck.check(ok, t + ": auto: exchange.regroup_probe holds both times", repr(probe)):
                ck.equal(ran, min(probe, key=probe.get), t + ": auto ran the faster combine")
        else:
            ck.equal((ran, probe), (mode, None), t + ": exchange.regroup under " + mode)
        ck.check(np.array_equal(got.y, ref.y), t + ": y bit for bit under --regroup " + mode,
                 "max |dy| %g" % float(np.max(np.abs(got.y - ref.y))))
        ck.equal(got.json["drops"], ref.json["drops"], t + ": drops under " + mode)
        ck.equal(got.json["traffic"]["rows"], ref.json["traffic"]["rows"],
                 t + ": traffic.rows under " + mode)
        # (a cf list sizes its buffers for every cf, its traffic is the first cf's)
        for r in range(R if tag != "cf_list" else 0):
            ck.equal(estimate(ref.json, r) - estimate(got.json, r), int(rows[:, r].sum()) * D * 4,
                     t + ": rank %d saves its staged arrivals under %s" % (r, mode))


def main():
    ck = mt.Checker("regroup")
    exe = mt.moesim_path()
    wd = mt.workdir()
    for tag, ranks, extra in LAYERS:
        for R in ranks:
            ck.guard(tag, one_layer, ck, exe, wd, tag, R, extra)
    # one expert per rank: auto is the single Alltoallv of slots
    one = ck.guard("one slot", mt.run_full, exe, 4, BASE + ["--experts", 4], wd, "one",
                   routing=False)
    if one is not None:
        ck.equal(one.json["exchange"]["regroup"], "slots", "one expert a rank: auto is slots")
    # where rows do not arrive from one flat exchange of per-expert rows
    for name, opt in (("hier", ["--a2a", "hierarchical", "--ranks-per-node", 1]),
                      ("per_rank", ["--dispatch", "per-rank"])):
        for mode in ("alltoallw", "slots", "alltoallw-slots"):
            mt.check_refused(ck, exe, "refused_%s_%s" % (name, mode), 2,
                             BASE + opt + ["--regroup", mode],
                             ["--regroup " + mode, "auto or copy"], wd)
        got = ck.guard(name + " auto", mt.run_full, exe, 2, BASE + opt, wd, name + "_auto",
                       routing=False)
        if got is not None:
            ck.equal(got.json["exchange"]["regroup"], "fan-out" if name == "per_rank" else "copy",
                     name + ": auto regroup")
    mt.check_refused(ck, exe, "bad_regroup", 2, BASE + ["--regroup", "scatter"],
                     ["--regroup must be", "alltoallw"], wd)
    return ck.finish()


if __name__ == "__main__":
    raise SystemExit(main())
