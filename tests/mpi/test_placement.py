"""Where experts live (issue 10): --placement contiguous|strided|eplb, --redundant-experts N
(DeepSeek's EPLB: replicas of the most loaded experts, packed so ranks compute evenly) and
--eplb-from self|PATH.

On a hot-expert batch (2 of 8 experts attract 60% of the tokens), R = 1, 2, 4 (E + N must be a
multiple of R under EPLB), both capacity scopes, dropless and cf 1.0 (position and reroute):
  - y is bit for bit the contiguous run's without replicas: the decision is per logical expert
    and the combine adds a token's results in expert id order whatever rank computed them; with
    replicas within float rounding (|dy| <= 1e-6 (1 + |y|)), since an expert's rows then go
    through several sgemm calls of fewer rows, and OpenBLAS may round a row differently with the
    row count (its kernels treat the remainder rows apart); routing CSV, experts[]
    routed/accepted/dropped and drops are identical in every case;
  - experts[].rank follows the map: e mod R for strided; every logical expert has >= 1 replica
    and E + N slots in all (replication.replicas), each rank E + N / R of them under EPLB;
  - the rows each rank computes (traffic.rows column sums) add up to the served assignments;
  - replication.rank_overload_before equals the overload recomputed here for contiguous experts
    (max over ranks of the served rows of its block over the mean), and with N = R replicas on
    the hot batch rank_overload_after < rank_overload_before (EPLB's purpose; true for these seeds,
    not a theorem: docs/placement.md);
  - replication.extra_weight_bytes = N * 2 f d * 4;
  - --eplb-from a CSV of the batch's own routed loads gives the same placement as self;
  - --dispatch per-rank with replicas: y within float rounding of the contiguous run;
  - refusals: E + N not a multiple of R, --eplb-from without EPLB, strided with replicas, expert
    choice with EPLB, a loads file with the wrong count.
"""

import os

import numpy as np

import moetest as mt

N_TOK, D, E, F = 400, 16, 8, 24
BASE = ["--tokens", N_TOK, "--hidden", D, "--ffn", F, "--experts", E, "--hot-experts", 2,
        "--hot-share", "0.6", "--iters", 1, "--warmup", 0, "--seed", 3]


def overload_contiguous(doc, R):
    rows = np.zeros(R)
    for e in doc["experts"]:
        rows[mt.owner(E, R, e["id"])] += e["accepted"]
    return rows.max() / rows.mean()


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_placement")
    wd = mt.workdir()
    for R in (1, 2, 4):
        for scope in ("global", "local"):
            for cfname, cf in (("dropless", ["--capacity-factor", "0"]),
                               ("cf1", ["--capacity-factor", "1.0"]),
                               ("reroute", ["--capacity-factor", "1.0", "--drop-policy", "reroute"])):
                tag0 = "R%d_%s_%s" % (R, scope, cfname)
                args = BASE + cf + ["--capacity-scope", scope]
                ref = ck.guard(tag0, mt.run_full, exe, R, args, wd, tag0 + "_contig")
                if ref is None:
                    continue
                ck.close(ref.json["replication"]["rank_overload_before"], overload_contiguous(ref.json, R),
                         tag0 + ": overload before recomputed", rtol=1e-12, atol=0)
                for pname, extra, redundant in (("strided", ["--placement", "strided"], 0),
                                                ("eplb", ["--placement", "eplb"], 0),
                                                ("replicas", ["--redundant-experts", R], R)):
                    if (E + redundant) % R:
                        continue
                    tag = tag0 + "_" + pname
                    run = ck.guard(tag, mt.run_full, exe, R, args + extra, wd, tag)
                    if run is None:
                        continue
                    doc = run.json
                    if redundant == 0:
                        ck.check(np.array_equal(run.y, ref.y),
                                 tag + ": y bit for bit the contiguous run's",
                                 "max |dy| %g" % float(np.abs(run.y - ref.y).max()))
                    else:
                        ck.close(run.y, ref.y, tag + ": y as the contiguous run's (replicas)",
                                 rtol=1e-6, atol=1e-6)
                    ck.check(run.routing["text"] == ref.routing["text"], tag + ": routing as contiguous")
                    ck.equal([(e["routed"], e["accepted"], e["dropped"]) for e in doc["experts"]],
                             [(e["routed"], e["accepted"], e["dropped"]) for e in ref.json["experts"]],
                             tag + ": per-expert counts as contiguous")
                    ck.equal(doc["drops"], ref.json["drops"], tag + ": drops as contiguous")
                    rep = doc["replication"]
                    slots = rep["replicas"]
                    ck.equal(len(slots), E + redundant, tag + ": E + N slots")
                    ck.equal(sorted(set(s[0] for s in slots)), list(range(E)),
                             tag + ": every expert has a slot")
                    ck.equal(rep["redundant"], redundant, tag + ": replication.redundant")
                    ck.equal(rep["extra_weight_bytes"], redundant * 2 * F * D * 4,
                             tag + ": extra weight bytes")
                    if pname == "strided":
                        ck.equal([e["rank"] for e in doc["experts"]], [e % R for e in range(E)],
                                 tag + ": strided ranks")
                    else:
                        per_rank = np.bincount([s[1] for s in slots], minlength=R)
                        ck.check(np.all(per_rank == (E + redundant) // R),
                                 tag + ": EPLB gives every rank (E + N) / R slots", str(per_rank))
                    served = sum(e["accepted"] for e in doc["experts"])
                    ck.equal(int(np.sum(doc["traffic"]["rows"])), served,
                             tag + ": rows moved = served assignments")
                    ck.close(rep["rank_overload_before"], ref.json["replication"]["rank_overload_before"],
                             tag + ": overload before as contiguous's", rtol=1e-12, atol=0)
                    if pname == "replicas" and R == 4 and cfname == "dropless":
                        ck.check(rep["rank_overload_after"] < rep["rank_overload_before"],
                                 tag + ": replicas lower the rank overload", "%r" % rep)
                    if pname == "replicas" and scope == "global" and cfname == "dropless":
                        path = os.path.join(wd, tag + "_loads.csv")
                        with open(path, "w") as fh:
                            fh.write("load\n" + "".join("%d\n" % e["routed"] for e in ref.json["experts"]))
                        fromfile = ck.guard(tag + " file", mt.run_full, exe, R,
                                            args + extra + ["--eplb-from", path], wd, tag + "_file",
                                            routing=False)
                        if fromfile is not None:
                            ck.equal(fromfile.json["replication"]["replicas"], slots,
                                     tag + ": --eplb-from the batch's loads = self")
                            ck.check(np.array_equal(fromfile.y, run.y), tag + ": file-planned y = self-planned y")
                            ck.equal(fromfile.json["config"]["eplb_from"], path, tag + ": config.eplb_from")
                        pr = ck.guard(tag + " per-rank", mt.run_full, exe, R,
                                      args + extra + ["--dispatch", "per-rank"], wd, tag + "_pr",
                                      routing=False)
                        if pr is not None:
                            ck.close(pr.y, ref.y, tag + ": per-rank with replicas", rtol=1e-5, atol=1e-5)

    bad = os.path.join(wd, "short.csv")
    with open(bad, "w") as fh:
        fh.write("1\n2\n3\n")
    refusals = [
        ("not_multiple", 4, ["--redundant-experts", 1], ["multiple of the rank count"]),
        ("from_without_eplb", 2, ["--eplb-from", bad], ["--eplb-from", "eplb"]),
        ("strided_replicas", 2, ["--placement", "strided", "--redundant-experts", 2],
         ["--redundant-experts", "--placement strided"]),
        ("ec_eplb", 2, ["--routing", "expert-choice", "--capacity-factor", "1.0",
                        "--redundant-experts", 2], ["expert choice"]),
        ("short_file", 2, ["--redundant-experts", 2, "--eplb-from", bad], ["--eplb-from", "short.csv"]),
        ("bad_placement", 2, ["--placement", "random"], ["--placement must be"]),
    ]
    plain = ["--tokens", N_TOK, "--hidden", D, "--experts", E, "--iters", 1, "--warmup", 0]
    for tag, R, extra, pats in refusals:
        mt.check_refused(ck, exe, tag, R, plain + extra, pats, wd)
    return ck.finish()


if __name__ == "__main__":
    raise SystemExit(main())
