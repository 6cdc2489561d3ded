"""--dispatch per-rank (issue 10; DeepEP's normal kernels): one row per (token, destination rank)
with the gates and local expert ids beside it; the owner fans it out and sums its experts' outputs.

For R = 1 .. 4, both capacity scopes, k = 1 and 3, and expert choice (a token may reach every
rank), against --dispatch per-expert on the same batch:
  - traffic.rows[s][r] = the distinct (token, rank r) pairs among source s's served assignments,
    counted here from the per-expert run's CSV (expert owner = moetest.owner);
  - dispatch bytes = rows x (payload + 8 M), M = min(slots per token, ceil(E / R)) metadata entries
    of (int32 expert, float32 gate); combine bytes = rows^T x payload; traffic.metadata_bytes =
    sum rows x 8 M; traffic.dedup_saving = served assignments x (payload out + payload back) minus
    the per-rank bytes both ways; config.dispatch;
  - routing, drops and per-expert counts equal per-expert's;
  - y equals per-expert's within |dy| <= 1e-5 + 1e-5 |y|: the same float32 expert outputs, the gate
    products summed per rank on the owner and then over ranks on the source instead of one by one
    (a different rounding order of at most k terms of order one: a few float32 ulps);
  - with k = 1 (one expert per token) nothing is saved: rows = served assignments, dedup_saving =
    -(metadata) < 0;
  - --wire fp8 rows: payload d + 4 ceil(d/128);
  - with replicas a rank holds ceil((E + N) / R) slots, more than ceil(E / R): the rows carry that
    many entries and y is still per-expert's;
  - --a2a hierarchical (--ranks-per-node 2, R = 4) gives y within the same tolerance of the flat
    exchange's (it crosses nodes once per node and sums inside the node first: test_nodex.py);
  - --mode dispatch: y = h + sum gate h within the same tolerance.
"""

import math

import numpy as np

import moetest as mt

N, D, E = 241, 24, 8
BASE = ["--tokens", N, "--hidden", D, "--experts", E, "--capacity-factor", "1.0", "--iters", 1,
        "--warmup", 0, "--seed", 13]
Y_RTOL, Y_ATOL = 1e-5, 1e-5


def pairs_matrix(rt, R):
    """rows[s][r]: distinct (token, owner rank) pairs over the served rows, s = the token's rank."""
    m = np.zeros((R, R), dtype=np.int64)
    seen = set()
    for t, e, a in zip(rt["token"], rt["expert"], rt["accepted"]):
        if not a:
            continue
        r = mt.owner(E, R, int(e))
        if (int(t), r) not in seen:
            seen.add((int(t), r))
            m[mt.owner(N, R, int(t)), r] += 1
    return m


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_dedup")
    wd = mt.workdir()
    cases = [("k3", ["--top-k", 3], 3), ("k1", ["--top-k", 1], 1),
             ("ec", ["--top-k", 2, "--routing", "expert-choice"], E)]
    for scope in ("global", "local"):
        for name, extra, slots in cases:
            for R in (1, 2, 3, 4):
                tag = "%s_%s_R%d" % (scope, name, R)
                args = BASE + extra + ["--capacity-scope", scope]
                pe = ck.guard(tag + " per-expert", mt.run_full, exe, R, args, wd, tag + "_pe")
                pr = ck.guard(tag + " per-rank", mt.run_full, exe, R,
                              args + ["--dispatch", "per-rank"], wd, tag + "_pr")
                if pe is None or pr is None:
                    continue
                M = min(slots, math.ceil(E / R))
                rows = np.array(pr.json["traffic"]["rows"])
                want = pairs_matrix(pe.routing, R)
                ck.check(np.array_equal(rows, want), tag + ": rows = distinct (token, rank) pairs",
                         "got %s, expected %s" % (rows.tolist(), want.tolist()))
                payload = 4 * D
                tr = pr.json["traffic"]
                ck.check(np.array_equal(np.array(tr["dispatch_bytes"]), rows * (payload + 8 * M)),
                         tag + ": dispatch bytes = rows x (payload + 8M)")
                ck.check(np.array_equal(np.array(tr["combine_bytes"]), rows.T * payload),
                         tag + ": combine bytes = rows^T x payload")
                ck.equal(tr["metadata_bytes"], int(rows.sum()) * 8 * M, tag + ": metadata bytes")
                served = sum(e["accepted"] for e in pe.json["experts"])
                saving = served * 2 * payload - int(rows.sum()) * (2 * payload + 8 * M)
                ck.equal(tr["dedup_saving"], saving, tag + ": dedup_saving")
                ck.equal(pe.json["traffic"]["metadata_bytes"], 0, tag + ": per-expert: no metadata")
                ck.equal(pr.json["config"]["dispatch"], "per-rank", tag + ": config.dispatch")
                ck.check(pr.routing["text"] == pe.routing["text"], tag + ": routing as per-expert")
                ck.equal(pr.json["drops"], pe.json["drops"], tag + ": drops as per-expert")
                ck.equal(pr.json["experts"], pe.json["experts"], tag + ": experts as per-expert")
                ck.close(pr.y, pe.y, tag + ": y as per-expert's", rtol=Y_RTOL, atol=Y_ATOL)
                if name == "k1":
                    ck.equal(int(rows.sum()), served, tag + ": k = 1: one row per assignment")
                    ck.check(tr["dedup_saving"] < 0, tag + ": k = 1: the metadata costs")
                if name == "k3" and R > 1:
                    ck.check(tr["dedup_saving"] > 0, tag + ": k = 3: deduplication saves bytes")

    # fp8 payloads
    r = ck.guard("fp8", mt.run_full, exe, 2, BASE + ["--top-k", 3, "--dispatch", "per-rank",
                                                     "--wire", "fp8"], wd, "fp8", output=False)
    if r is not None:
        rows = np.array(r.json["traffic"]["rows"])
        M = min(3, math.ceil(E / 2))
        ck.check(np.array_equal(np.array(r.json["traffic"]["dispatch_bytes"]),
                                rows * (D + 4 * math.ceil(D / 128) + 8 * M)),
                 "fp8: dispatch bytes = rows x (d + 4 ceil(d/128) + 8M)")
        ck.check(np.array_equal(np.array(r.json["traffic"]["combine_bytes"]), rows.T * 2 * D),
                 "fp8: combine in bf16, 2d per row")

    # replicas give a rank more slots than ceil(E / R): E 8 + 4 replicas on 4 ranks is 3 slots a
    # rank, so a token with k = 4 can use 3 entries on one rank (M = min(k, ceil((E + N) / R)))
    # (and R = 1: 12 slots on one rank); two timed steps after a warm-up, so that every step
    # starts the owner's fan-out from clean per-slot cursors
    for R, M in ((4, 3), (1, 4)):
        rep = BASE + ["--top-k", 4, "--redundant-experts", 4, "--hot-experts", 2,
                      "--capacity-factor", 0, "--iters", 2, "--warmup", 1]
        tag = "replicas_R%d" % R
        pe = ck.guard(tag + " per-expert", mt.run_full, exe, R, rep, wd, tag + "_pe", routing=False)
        pr = ck.guard(tag + " per-rank", mt.run_full, exe, R, rep + ["--dispatch", "per-rank"], wd,
                      tag + "_pr", routing=False)
        if pe is not None and pr is not None:
            rows = np.array(pr.json["traffic"]["rows"])
            ck.check(np.array_equal(np.array(pr.json["traffic"]["dispatch_bytes"]),
                                    rows * (4 * D + 8 * M)),
                     tag + ": %d metadata entries a row" % M)
            ck.close(pr.y, pe.y, tag + ": per-rank y as per-expert's", rtol=Y_RTOL, atol=Y_ATOL)

    # the two-level exchange moves the same rows
    a = BASE + ["--top-k", 3, "--dispatch", "per-rank", "--ranks-per-node", 2]
    flat = ck.guard("hier flat", mt.run_full, exe, 4, a, wd, "hflat", routing=False)
    hier = ck.guard("hier", mt.run_full, exe, 4, a + ["--a2a", "hierarchical"], wd, "hhier",
                    routing=False)
    if flat is not None and hier is not None: # once per node: the node sums first
        ck.close(hier.y, flat.y, "per-rank: two-level y as flat y", rtol=Y_RTOL, atol=Y_ATOL)

    # identity experts
    dm = ck.guard("dispatch mode", mt.run_full, exe, 3,
                  BASE + ["--top-k", 3, "--dispatch", "per-rank", "--mode", "dispatch"], wd, "dm")
    if dm is not None:
        ck.close(dm.y, mt.identity_expert_y(13, N, D, dm.routing),
                 "--mode dispatch: y = h + sum gate h", rtol=Y_RTOL, atol=Y_ATOL)
    mt.check_refused(ck, exe, "bad_dispatch", 2, BASE + ["--dispatch", "per-node"],
                     ["--dispatch must be"], wd)
    return ck.finish()


if __name__ == "__main__":
    raise SystemExit(main())
