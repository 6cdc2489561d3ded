"""--dispatch per-rank with --a2a hierarchical (issue 10; DeepEP's internode path): a token crosses
the leaders' stage once per destination node and the destination leader fans it out to its
node's ranks; the combine sums a token's results inside the node before they cross back.

For (R, ranks per node) = (1, 1), (2, 1), (3, 2), (4, 2), (4, 3), both capacity scopes, k = 3,
expert choice, and replicas, against --dispatch per-expert and the flat per-rank exchange of the
same batch:
  - y equals per-expert's within |dy| <= 1e-5 + 1e-5 |y| (the same float32 expert outputs; the
    gate products summed per rank, then per node, then over nodes);
  - routing, drops, experts[] and traffic.rows equal the flat per-rank run's (the same per-rank
    rows reach the same ranks, in the same order);
  - traffic.node_rows[s][b] = the distinct (token, node b) pairs among source s's served
    assignments, recounted from the per-expert routing CSV (owner = moetest.owner); the flat
    per-rank run reports the same (what its two-level exchange would send);
  - traffic.node_row_bytes = payload + 12 Mn, Mn = min(slots per token, most slots on one node);
  - traffic.by_class_hierarchical = the node schedule (docs/topology.md) recomputed here from
    node_rows and rows: stage 0 node rows to the source leader, stage 1 leader to leader, stage 2
    per-rank rows from the destination leader, and the combine the way back;
  - bandwidth.dispatch.off_node_bytes = the node rows that leave their node x node_row_bytes;
  - --predict-only plans the same node rows, classes and projection;
  - with fp8 on the wire (combine bf16), y stays within the bf16 combine's rounding of the flat
    per-rank run's (the node's sum is rounded to bf16 once more);
  - --mode dispatch: y = h + sum gate h.
"""

import math

import numpy as np

import moetest as mt

N, D, E = 241, 24, 8
BASE = ["--tokens", N, "--hidden", D, "--experts", E, "--capacity-factor", "1.0", "--iters", 2,
        "--warmup", 1, "--seed", 17]
Y_RTOL, Y_ATOL = 1e-5, 1e-5
SHAPES = ((1, 1), (2, 1), (3, 2), (4, 2), (4, 3))


def node_rows(rt, R, nodes):
    """[s][b]: distinct (token, node b) pairs over the served rows, s = the token's rank."""
    n_nodes = max(nodes) + 1
    m = np.zeros((R, n_nodes), dtype=np.int64)
    seen = set()
    for t, e, a in zip(rt["token"], rt["expert"], rt["accepted"]):
        if not a:
            continue
        b = nodes[mt.owner(E, R, int(e))]
        if (int(t), b) not in seen:
            seen.add((int(t), b))
            m[mt.owner(N, R, int(t)), b] += 1
    return m


def node_schedule(nrows, rows, nodes, node_bytes, rank_bytes, reverse):
    R = len(nodes)
    leader = [min(q for q in range(R) if nodes[q] == nodes[r]) for r in range(R)]
    lead_of_node = {nodes[r]: leader[r] for r in range(R)}
    st = [np.zeros((R, R), dtype=np.int64) for _ in range(3)]
    for s in range(R):
        for b in range(nrows.shape[1]):
            v = int(nrows[s, b]) * node_bytes
            if v == 0:
                continue
            if not reverse:
                st[0][s, leader[s]] += v
                st[1][leader[s], lead_of_node[b]] += v
            else:
                st[1][lead_of_node[b], leader[s]] += v
                st[2][leader[s], s] += v
        for d in range(R):
            v = int(rows[s, d]) * rank_bytes
            if not reverse:
                st[2][leader[d], d] += v
            else:
                st[0][d, leader[d]] += v
    return st


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_nodex")
    wd = mt.workdir()
    cases = [("k3_global", ["--top-k", 3], 3),
             ("k3_local", ["--top-k", 3, "--capacity-scope", "local"], 3),
             ("ec", ["--top-k", 2, "--routing", "expert-choice"], E)]
    for R, rpn in SHAPES:
        nodes = [r // rpn for r in range(R)]
        for name, extra, slots in cases:
            tag = "%s_R%d_n%d" % (name, R, rpn)
            args = BASE + extra + ["--ranks-per-node", rpn]
            pe = ck.guard(tag + " per-expert", mt.run_full, exe, R, args, wd, tag + "_pe")
            flat = ck.guard(tag + " flat per-rank", mt.run_full, exe, R,
                            args + ["--dispatch", "per-rank"], wd, tag + "_flat", routing=False)
            nx = ck.guard(tag + " two-level per-rank", mt.run_full, exe, R,
                          args + ["--dispatch", "per-rank", "--a2a", "hierarchical"], wd,
                          tag + "_nx")
            if pe is None or flat is None or nx is None:
                continue
            ck.close(nx.y, pe.y, tag + ": y as per-expert's", rtol=Y_RTOL, atol=Y_ATOL)
            ck.check(nx.routing["text"] == pe.routing["text"], tag + ": routing as per-expert")
            ck.equal(nx.json["drops"], flat.json["drops"], tag + ": drops as flat per-rank")
            ck.equal(nx.json["experts"], flat.json["experts"], tag + ": experts as flat per-rank")
            tr, tf = nx.json["traffic"], flat.json["traffic"]
            ck.equal(tr["rows"], tf["rows"], tag + ": per-rank rows as flat")
            want = node_rows(pe.routing, R, nodes)
            ck.check(np.array_equal(np.array(tr["node_rows"]), want),
                     tag + ": node rows = distinct (token, node) pairs",
                     "got %s, expected %s" % (tr["node_rows"], want.tolist()))
            ck.equal(tf["node_rows"], tr["node_rows"], tag + ": the flat run reports them too")
            per_node = max(sum(mt.partition(E, R, r)[1] for r in range(R) if nodes[r] == b)
                           for b in set(nodes))
            ck.equal(tr["node_row_bytes"], 4 * D + 12 * min(slots, per_node),
                     tag + ": node row bytes = payload + 12 Mn")
            rows = np.array(tr["rows"])
            payload = 4 * D
            M = min(slots, math.ceil(E / R))
            stages = (node_schedule(want, rows, nodes, tr["node_row_bytes"], payload + 8 * M, False)
                      + node_schedule(want, rows, nodes, payload, payload, True))
            classes, _ = mt.traffic_by_class(stages, nx.json["placement"])
            ck.equal(tr["by_class_hierarchical"], classes, tag + ": two-level classes = schedule")
            off = sum(int(want[s, b]) for s in range(R) for b in range(want.shape[1])
                      if b != nodes[s])
            ck.equal(nx.json["bandwidth"]["dispatch"]["off_node_bytes"],
                     off * tr["node_row_bytes"], tag + ": off-node bytes = node rows that leave")
            plan = ck.guard(tag + " plan", mt.run_full, exe, R,
                            args + ["--dispatch", "per-rank", "--a2a", "hierarchical",
                                    "--predict-only"], wd, tag + "_plan", routing=False,
                            output=False)
            if plan is not None:
                for key in ("node_rows", "node_row_bytes", "by_class_hierarchical"):
                    ck.equal(plan.json["traffic"][key], tr[key], tag + ": planned " + key)

    # replicas: 3 slots a rank, a token may use several on one node
    rep = BASE + ["--top-k", 4, "--redundant-experts", 4, "--capacity-factor", 0,
                  "--ranks-per-node", 2]
    pe = ck.guard("replicas per-expert", mt.run_full, exe, 4, rep, wd, "rep_pe", routing=False)
    nx = ck.guard("replicas two-level", mt.run_full, exe, 4,
                  rep + ["--dispatch", "per-rank", "--a2a", "hierarchical"], wd, "rep_nx",
                  routing=False)
    if pe is not None and nx is not None:
        ck.close(nx.y, pe.y, "replicas: y as per-expert's", rtol=Y_RTOL, atol=Y_ATOL)
        ck.equal(nx.json["traffic"]["node_row_bytes"], 4 * D + 12 * 4,
                 "replicas: 4 entries a node row (6 slots a node, k 4)")

    # fp8 on the wire, bf16 combine: the node's sum is rounded to bf16 once more
    fp8 = BASE + ["--top-k", 3, "--ranks-per-node", 2, "--dispatch", "per-rank", "--wire", "fp8"]
    flat = ck.guard("fp8 flat", mt.run_full, exe, 4, fp8, wd, "fp8_flat", routing=False)
    nx = ck.guard("fp8 two-level", mt.run_full, exe, 4, fp8 + ["--a2a", "hierarchical"], wd,
                  "fp8_nx", routing=False)
    if flat is not None and nx is not None:
        scale = float(np.abs(flat.y).max())
        ck.check(float(np.abs(nx.y - flat.y).max()) <= 2.0 ** -7 * scale,
                 "fp8: y within bf16 rounding of the flat per-rank run's",
                 "max |dy| %g, max |y| %g" % (float(np.abs(nx.y - flat.y).max()), scale))
        err = nx.json["wire"]["y_error"]
        ck.check(err is not None and 0 < err["max_rel"] < 0.05, "fp8: y_error measured", str(err))
        ck.equal(nx.json["traffic"]["node_row_bytes"], D + 4 * math.ceil(D / 128) + 12 * 3,
                 "fp8: node rows of d + 4 ceil(d/128) + 12 Mn bytes")

    # identity experts
    dm = ck.guard("dispatch mode", mt.run_full, exe, 3,
                  BASE + ["--top-k", 3, "--ranks-per-node", 2, "--dispatch", "per-rank", "--a2a",
                          "hierarchical", "--mode", "dispatch"], wd, "dm")
    if dm is not None:
        ck.close(dm.y, mt.identity_expert_y(17, N, D, dm.routing),
                 "--mode dispatch: y = h + sum gate h", rtol=Y_RTOL, atol=Y_ATOL)
    return ck.finish()


if __name__ == "__main__":
    raise SystemExit(main())
