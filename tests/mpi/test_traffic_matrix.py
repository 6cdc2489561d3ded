"""--traffic-matrix (issue 11): the JSON holds the dense R x R traffic matrices up to 1024 ranks
(or with full), per-rank sums beyond (or with summary), and every other figure is the same.

  - a real run at R = 3 (with --ranks-per-node 2 and a --network file, so that every locality
    class, the two-level stages and the projection are in play), full against summary: summary has
    traffic.rows, dispatch_bytes and combine_bytes null and traffic.matrix "summary";
    traffic.rows_sent / rows_received are the row and column sums of full's traffic.rows,
    dispatch_bytes_sent / _received those of its dispatch_bytes, nonzero_blocks its nonzero
    entries; by_class, by_class_hierarchical, by_class_per_rank, bandwidth, exchange figures of the
    traffic and the projection are identical;
  - the same in a --predict-only --ranks plan, where auto is full at 1024 ranks and summary at
    1025, and --traffic-matrix full keeps the 1025 x 1025 matrices;
  - per-rank dispatch (metadata in the rows) summarised the same way;
  - a bad value is refused.
"""

import os

import numpy as np

import moetest as mt

NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "launch",
                   "laptop.network")
SAME = ["by_class", "by_class_hierarchical", "by_class_per_rank", "metadata_bytes",
        "dedup_saving", "node_rows"]


def compare(ck, tag, full, summ):
    tf, ts = full.json["traffic"], summ.json["traffic"]
    # as given: summary or auto (above 1024 ranks), full or auto (up to 1024)
    ck.check(summ.json["config"]["traffic_matrix"] in ("auto", "summary"),
             tag + ": config.traffic_matrix of the summarised run",
             summ.json["config"]["traffic_matrix"])
    ck.check(full.json["config"]["traffic_matrix"] in ("auto", "full"),
             tag + ": config.traffic_matrix of the full run", full.json["config"]["traffic_matrix"])
    ck.equal(tf["matrix"], "full", tag + ": full says so")
    ck.equal(ts["matrix"], "summary", tag + ": summary says so")
    for key in ("rows", "dispatch_bytes", "combine_bytes"):
        ck.check(ts[key] is None, tag + ": summary has no traffic." + key)
        ck.check(tf[key] is not None, tag + ": full has traffic." + key)
    rows = np.array(tf["rows"], dtype=np.int64)
    disp = np.array(tf["dispatch_bytes"], dtype=np.int64)
    for doc, which in ((tf, "full"), (ts, "summary")):
        ck.equal(doc["rows_sent"], rows.sum(axis=1).tolist(), tag + " " + which + ": rows_sent")
        ck.equal(doc["rows_received"], rows.sum(axis=0).tolist(),
                 tag + " " + which + ": rows_received")
        ck.equal(doc["dispatch_bytes_sent"], disp.sum(axis=1).tolist(),
                 tag + " " + which + ": dispatch_bytes_sent")
        ck.equal(doc["dispatch_bytes_received"], disp.sum(axis=0).tolist(),
                 tag + " " + which + ": dispatch_bytes_received")
        ck.equal(doc["nonzero_blocks"], int(np.count_nonzero(rows)),
                 tag + " " + which + ": nonzero_blocks")
    for key in SAME:
        ck.equal(ts.get(key), tf.get(key), tag + ": traffic." + key + " the same")
    ck.equal(summ.json["projection"], full.json["projection"], tag + ": projection the same")
    for key in ("dispatch", "combine") if full.json["bandwidth"] else (): # (--predict-only: none)
        # the bytes (the rates are timings: they vary)
        bf, bs = full.json["bandwidth"][key], summ.json["bandwidth"][key]
        for fig in ("off_rank_bytes", "off_node_bytes"):
            ck.equal(bs[fig], bf[fig], tag + ": bandwidth.%s.%s the same" % (key, fig))


def main():
    ck = mt.Checker("traffic_matrix")
    exe = mt.moesim_path()
    wd = mt.workdir()
    real = ["--tokens", 301, "--hidden", 16, "--experts", 6, "--top-k", 2, "--iters", 1,
            "--warmup", 0, "--ranks-per-node", 2, "--network", NET, "--skew", 0.8]
    for tag, extra in (("per-expert", []), ("per-rank", ["--dispatch", "per-rank"])):
        full = ck.guard(tag + " full", mt.run_full, exe, 3, real + extra, wd, tag + "_full",
                        routing=False, output=False)
        summ = ck.guard(tag + " summary", mt.run_full, exe, 3,
                        real + extra + ["--traffic-matrix", "summary"], wd, tag + "_summary",
                        routing=False, output=False)
        if full is not None and summ is not None:
            compare(ck, tag, full, summ)
            ck.equal(summ.json["config"]["traffic_matrix"], "summary",
                     tag + ": config.traffic_matrix as given")
            ck.equal(full.json["config"]["traffic_matrix"], "auto", tag + ": the default is auto")

    # planned ranks: auto switches above 1024
    def plan(R, extra, tag):
        args = ["--predict-only", "--ranks", R, "--experts", R, "--top-k", 2, "--tokens", 2 * R,
                "--hidden", 16, "--ranks-per-node", 8, "--network", NET] + extra
        return ck.guard(tag, mt.run_full, exe, 1, args, wd, tag, routing=False, output=False,
                        timeout=120)
    at = plan(1024, [], "plan_1024")
    if at is not None:
        ck.equal(at.json["traffic"]["matrix"], "full", "auto at 1024 ranks: full")
        ck.equal(len(at.json["traffic"]["rows"]), 1024, "auto at 1024 ranks: 1024 rows")
    over = plan(1025, [], "plan_1025")
    kept = plan(1025, ["--traffic-matrix", "full"], "plan_1025_full")
    if over is not None:
        ck.equal(over.json["traffic"]["matrix"], "summary", "auto at 1025 ranks: summary")
        ck.equal(len(over.json["traffic"]["rows_sent"]), 1025, "1025 per-rank sums")
    if over is not None and kept is not None:
        ck.equal(len(kept.json["traffic"]["rows"]), 1025, "--traffic-matrix full at 1025")
        compare(ck, "planned 1025", kept, over)
    mt.check_refused(ck, exe, "bad_traffic_matrix", 1,
                     ["--tokens", 64, "--traffic-matrix", "sparse"],
                     ["--traffic-matrix must be", "summary"], wd)
    return ck.finish()


if __name__ == "__main__":
    raise SystemExit(main())
