"""Large block: more than 2^31 bytes in one rank's dispatch block, run when the machine has the
memory (skipped with the reason otherwise).

The batch: N = 33 tokens of d = 2^24 (one token row is 64 MiB), f = 1, E = 2, k = 1, dropless
(cf 0), one step and no warm-up; h and W come from .npy files numpy writes (make_inputs). On R = 1 the one rank sends all 33 rows to itself: a dispatch
block of 33 x 64 MiB = 2 214 592 512 bytes > 2^31, which no int byte count can describe, so every
byte count and offset of pack, the all-to-all, regroup and unpack must be 64-bit (or counted in
rows). The same batch on R = 2 splits the tokens 17 + 16 and the experts 1 + 1: every block is
under 2^31 bytes. Checked:
  - both runs succeed;
  - R = 1: traffic.dispatch_bytes is [[33 d 4]], more than 2^31; R = 2: its entries sum to the
    same total and each is under 2^31 (so R = 2 is the small-block twin of R = 1);
  - integers, exactly: drops, waste, per expert routed / accepted / dropped, and the routing CSV's
    expert and accepted columns, identical for R = 1 and R = 2, and nothing dropped (dropless);
  - output.checksum identical (==) for R = 1 and R = 2. y is computed row by row from the same
    float32 operations whatever R (f = 1: each expert output is one dot product of d terms by the
    same sgemm over the same row, scaled by the gate), so y is bitwise the same and, output.checksum
    being an exact (order-independent) sum of y, so is the checksum;
  - gates in the CSV: equal within 4 ulp of float32 (rtol 5e-7): z = h W^T goes through one sgemm
    over the rank's block of tokens, which OpenBLAS may block differently for 33 and 17 rows.
    In practice they are identical.

Memory: about 7 buffers of N d 4 bytes (tokens, output, send, receive, raw baseline, expert input,
expert output) plus the router and experts' weights: 14.8 GiB at R = 1 and about as much over the
two ranks of R = 2 (measured here: maximum resident set 15.5 GB at R = 1, 8.3 GB on R = 2's
larger rank). The test skips (exit 77) when /proc/meminfo's MemAvailable is below that estimate
plus 1.5 GiB, or when the temporary directory lacks room for the inputs. It must not run beside
other tests (meson: is_parallel false). Time: reading 2.1 GiB of tokens, first-touching the
buffers, generating the experts and one step; the timeout of each run is 420 s.
"""

import json
import os
import resource
import sys
import time

import numpy as np

import moetest as mt

N, D, F, E, K = 33, 1 << 24, 1, 2, 1
ARGS = ["--ffn", F, "--top-k", K, "--capacity-factor", "0", "--iters", 1, "--warmup", 0]
RUN_TIMEOUT = 420
MARGIN = 1.5 * 2 ** 30  # bytes over the estimate: the MPI runtime, Python, page tables, slack
BLOCK = N * D * 4


def need_bytes():
    """Memory of one run, estimated: 7 buffers of N d floats, router (E, d), experts 2 E d f."""
    return 4 * D * (7 * N + E + 2 * E * F)


def mem_available():
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def gib(b):
    return b / 2.0 ** 30


def make_inputs(wd):
    """h (N, d) and W (E, d) as .npy files: generating 553 M token entries with moesim's counter
    generator takes about 90 s here, writing them with numpy a few seconds. Each token row is a
    64 Ki-entry seeded normal block tiled over d and scaled by the token's own factor, so rows
    differ and the router's two logits differ per token; W is seeded normal / sqrt(d)."""
    rng = np.random.default_rng(2031)
    block = rng.standard_normal(1 << 16).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, N).astype(np.float32)
    sign = np.where(rng.random(N) < 0.5, -1.0, 1.0).astype(np.float32)
    hpath, wpath = os.path.join(wd, "h.npy"), os.path.join(wd, "w.npy")
    h = np.lib.format.open_memmap(hpath, mode="w+", dtype=np.float32, shape=(N, D))
    for t in range(N):
        h[t] = np.tile(block * (scale[t] * sign[t]), D // block.size)
    h.flush()
    del h
    w = (rng.standard_normal((E, D)) / np.sqrt(D)).astype(np.float32)
    np.save(wpath, w)
    return ["--tokens-file", hpath, "--router-file", wpath]


def one_run(ck, exe, wd, ranks, inputs):
    tag = "R%d" % ranks
    jpath, cpath = os.path.join(wd, tag + ".json"), os.path.join(wd, tag + ".csv")
    t0 = time.monotonic()
    r = mt.run(exe, ranks, ARGS + inputs + ["--quiet", "--json", jpath, "--dump-routing", cpath],
               timeout=RUN_TIMEOUT)
    elapsed = time.monotonic() - t0
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if r.returncode == 2 and any("budget" in l for l in r.own_stderr):
        avail = mem_available()
        if avail is not None and avail < need_bytes() + MARGIN:
            print("SKIP: moesim refused for memory at R=%d (%s) and MemAvailable is now %.2f GiB"
                  % (ranks, r.own_stderr[-1], gib(avail)))
            sys.exit(77)
    if r.returncode != 0:
        hint = " (137: SIGKILL, perhaps the out-of-memory killer)" if r.returncode == 137 else ""
        raise AssertionError("moesim failed at R=%d%s\n%s" % (ranks, hint, r.describe()))
    with open(jpath) as fh:
        doc = json.load(fh)
    routing = mt.read_routing(cpath)
    print("R=%d: %.1f s wall, step %.1f s, largest process so far %.2f GiB resident%s"
          % (ranks, elapsed, doc["timing"]["step"]["max"], gib(maxrss),
             (", JSON memory: %s" % json.dumps(doc["memory"])) if "memory" in doc else ""))
    return doc, routing


def main():
    exe = mt.moesim_path()
    need, avail = need_bytes(), mem_available()
    if avail is None:
        print("SKIP: /proc/meminfo has no MemAvailable; cannot tell whether %.1f GiB fit"
              % gib(need + MARGIN))
        sys.exit(77)
    if avail < need + MARGIN:
        print("SKIP: this test needs about %.1f GiB (%.1f GiB for moesim's buffers + %.1f GiB "
              "margin) and MemAvailable is %.1f GiB" % (gib(need + MARGIN), gib(need),
                                                        gib(MARGIN), gib(avail)))
        sys.exit(77)
    print("memory: estimate %.2f GiB per run, MemAvailable %.2f GiB" % (gib(need), gib(avail)))
    ck = mt.Checker("test_large_block")
    wd = mt.workdir()
    free = os.statvfs(wd)
    if free.f_bavail * free.f_frsize < 2 * N * D * 4 + (1 << 30):
        print("SKIP: the input files need %.1f GiB in %s, which has %.1f GiB free"
              % (gib(N * D * 4 + E * D * 4), wd, gib(free.f_bavail * free.f_frsize)))
        sys.exit(77)
    t0 = time.monotonic()
    inputs = make_inputs(wd)
    print("inputs written in %.1f s" % (time.monotonic() - t0))

    one = ck.guard("R=1 run", one_run, ck, exe, wd, 1, inputs)
    if one is not None:
        doc1, rt1 = one
        disp = doc1["traffic"]["dispatch_bytes"]
        ck.equal(disp, [[BLOCK]], "R=1: traffic.dispatch_bytes is one block of 33 rows of d floats")
        ck.check(disp[0][0] > 2 ** 31, "R=1: the dispatch block is more than 2^31 bytes",
                 "%d bytes" % disp[0][0])
        ck.equal(doc1["drops"]["dropped_assignments"], 0, "R=1: nothing dropped (dropless)")
        ck.equal(sum(e["routed"] for e in doc1["experts"]), N * K, "R=1: routed sum to N k")
        ck.check(np.isfinite(doc1["output"]["checksum"]), "R=1: output.checksum is finite",
                 repr(doc1["output"]["checksum"]))
    two = ck.guard("R=2 run", one_run, ck, exe, wd, 2, inputs)
    if two is not None:
        doc2, rt2 = two
        disp = np.array(doc2["traffic"]["dispatch_bytes"], dtype=np.int64)
        ck.equal(int(disp.sum()), BLOCK, "R=2: dispatch bytes sum to the same 33 rows")
        ck.check((disp < 2 ** 31).all(), "R=2: every dispatch block is under 2^31 bytes",
                 str(disp.tolist()))
    if one is not None and two is not None:
        def counts(doc):
            return [{k: v for k, v in e.items() if k != "rank"} for e in doc["experts"]]
        ck.equal(counts(doc2), counts(doc1), "experts (routed, accepted, dropped, capacity) "
                 "identical for R=1 and R=2")
        ck.equal(doc2["drops"], doc1["drops"], "drops identical for R=1 and R=2")
        ck.equal(doc2["waste"], doc1["waste"], "waste identical for R=1 and R=2")
        for col in ("token", "choice", "expert", "accepted"):
            ck.check(np.array_equal(rt2[col], rt1[col]),
                     "routing CSV column %s identical for R=1 and R=2" % col)
        if len(rt1["gate"]) == len(rt2["gate"]):
            ck.close(rt2["gate"], rt1["gate"], "routing CSV gates equal for R=1 and R=2",
                     rtol=5e-7, atol=0)
        ck.equal(doc2["output"]["checksum"], doc1["output"]["checksum"],
                 "output.checksum identical (==) for R=1 and R=2")
    ck.finish()


if __name__ == "__main__":
    main()
