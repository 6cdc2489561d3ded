#!/usr/bin/python3
"""Fit the intranode and internode bandwidths of launch/h800-cx7.network on DeepEP's published
normal-kernel figures for EP8 and EP16, and predict EP32 and EP64 (docs/validation.md).

Input: the --json of four `moesim --predict-only` runs of DeepEP's setup (bench/deepep_validation.sh
makes them): EP8, EP16, EP32, EP64, each 4096 tokens per rank. From each JSON it takes the byte
matrices as they travel (traffic.dispatch_bytes, traffic.combine_bytes) and the nodes
(placement[].node). The projection is moesim's alpha-beta model (docs/projection.md), written out
here: a message of b bytes in class c costs latency_c + b / bandwidth_c; a rank's sends are
serial, so are its receives, the two overlap; the exchange ends with its slowest rank:
    T = max over ranks r of max(sum over its sends, sum over its receives).
The figure compared with DeepEP's table is, per exchange, the largest rank's bytes that cross the
link DeepEP measures, over T: bytes leaving the rank (NVLink) for EP8, bytes leaving the node
(RDMA) from EP16 on.

Usage: deepep_fit.py EP8.json EP16.json EP32.json EP64.json [--write NETWORK_FILE]
Prints the fitted parameters and the table; --write writes the network file.
"""

import json
import sys

DEEPEP = {8: (153.0, 158.0), 16: (43.0, 43.0), 32: (58.0, 57.0), 64: (51.0, 50.0)}
LAT_INTRA, LAT_INTER, LAT_SELF, BW_SELF = 2e-6, 3e-6, 0.0, 1000e9


def load(path):
    with open(path) as fh:
        doc = json.load(fh)
    nodes = [p["node"] for p in doc["placement"]]
    return doc, nodes


def project(m, nodes, bw_intra, bw_inter):
    R = len(m)
    send = [0.0] * R
    recv = [0.0] * R
    for s in range(R):
        for d in range(R):
            b = m[s][d]
            if b == 0:
                continue
            if s == d:
                cost = LAT_SELF + b / BW_SELF
            elif nodes[s] == nodes[d]:
                cost = LAT_INTRA + b / bw_intra
            else:
                cost = LAT_INTER + b / bw_inter
            send[s] += cost
            recv[d] += cost
    return max(max(send), max(recv))


def crossing(m, nodes, internode):
    """The largest rank's bytes over the measured link: off-node if internode, else off-rank."""
    R = len(m)
    best = 0
    for s in range(R):
        b = sum(m[s][d] for d in range(R)
                if (nodes[s] != nodes[d] if internode else s != d))
        best = max(best, b)
    return best


def figure(doc, nodes, key, bw_intra, bw_inter):
    m = doc["traffic"][key]
    internode = len(set(nodes)) > 1
    t = project(m, nodes, bw_intra, bw_inter)
    return crossing(m, nodes, internode) / t / 1e9, t


def solve(fn, target, lo=1e9, hi=2e12):
    """bw with fn(bw) = target (fn increasing in bw), by bisection in log space."""
    for _ in range(200):
        mid = (lo * hi) ** 0.5
        if fn(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo * hi) ** 0.5


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = sys.argv[sys.argv.index("--write") + 1] if "--write" in sys.argv else None
    if out:
        args.remove(out)
    runs = {}
    for path in args:
        doc, nodes = load(path)
        runs[len(nodes)] = (doc, nodes)
    if sorted(runs) != [8, 16, 32, 64]:
        sys.exit("need the EP8, EP16, EP32 and EP64 JSONs, got ranks %s" % sorted(runs))
    d8, n8 = runs[8]
    bw_intra = solve(lambda bw: figure(d8, n8, "dispatch_bytes", bw, 50e9)[0], DEEPEP[8][0])
    d16, n16 = runs[16]
    bw_inter = solve(lambda bw: figure(d16, n16, "dispatch_bytes", bw_intra, bw)[0], DEEPEP[16][0])
    print("fitted: intranode %.2f GB/s (latency %g us), internode %.2f GB/s (latency %g us)"
          % (bw_intra / 1e9, LAT_INTRA * 1e6, bw_inter / 1e9, LAT_INTER * 1e6))
    print("%-5s %-8s %10s %10s %10s %8s  %s" % ("EP", "exchange", "DeepEP", "moesim", "ms", "error",
                                              "moesim's own projection"))
    for ep in (8, 16, 32, 64):
        doc, nodes = runs[ep]
        for j, key in enumerate(("dispatch_bytes", "combine_bytes")):
            f, t = figure(doc, nodes, key, bw_intra, bw_inter)
            ref = DEEPEP[ep][j]
            # with --network launch/h800-cx7.network the JSON holds moesim's own projection: the
            # figure from it, which docs/validation.md reports (equal to the fit's up to the
            # network file's two decimals)
            own = ""
            proj = doc.get("projection")
            if proj and proj["network"].startswith("H800"):
                t_own = proj["flat"][key.split("_")[0]]
                internode = len(set(nodes)) > 1
                f_own = crossing(doc["traffic"][key], nodes, internode) / t_own / 1e9
                own = "%.1f GB/s in %.3f ms (%+.1f%%)" % (f_own, t_own * 1e3,
                                                         100.0 * (f_own - ref) / ref)
            print("%-5d %-8s %10.1f %10.1f %10.3f %+7.1f%%  %s" % (
                ep, key.split("_")[0], ref, f, t * 1e3, 100.0 * (f - ref) / ref, own))
    if out:
        with open(out, "w") as fh:
            fh.write(NETWORK % {"intra": bw_intra / 1e9, "inter": bw_inter / 1e9})
        print("wrote", out)


NETWORK = """# DeepEP's testbed (DeepSeek, 2025; github.com/deepseek-ai/DeepEP, README "Normal kernels"):
# H800 GPUs, 8 per node on NVLink (about 160 GB/s measured), one 400 Gb/s ConnectX-7 InfiniBand
# NIC per GPU (about 50 GB/s). One rank per GPU: use --ranks-per-node 8.
# The two bandwidths are fitted by bench/deepep_fit.py on DeepEP's published EP8 (intranode) and
# EP16 (internode) dispatch figures, with the latencies fixed at 2 us (NVLink) and 3 us (RDMA);
# EP32 and EP64 are then predicted (docs/validation.md has the table and what the model leaves out).
name = H800 nodes of 8 (NVLink), ConnectX-7 400 Gb/s per GPU, fitted on DeepEP EP8 and EP16
same_rank.latency_us = 0
same_rank.bandwidth_GBps = 1000
same_numa.latency_us = 2
same_numa.bandwidth_GBps = %(intra).2f
same_package.latency_us = 2
same_package.bandwidth_GBps = %(intra).2f
same_node.latency_us = 2
same_node.bandwidth_GBps = %(intra).2f
other_node.latency_us = 3
other_node.bandwidth_GBps = %(inter).2f
"""

if __name__ == "__main__":
    main()
