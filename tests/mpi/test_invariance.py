"""Rank-count invariance (global capacity scope): the same batch run on R = 1, 2, 3, 4 ranks gives
the same routing, the same counts and the same output.

Sizes are chosen so that neither tokens nor experts split evenly over 2, 3 or 4 ranks (N = 1001,
997; E = 6, 7, 12), with a capacity factor that drops (1.0, 0.8) and the dropless mode (cf 0).

What must be identical for every R (integers, exactly): the routing CSV's token, choice, expert and
accepted columns; per expert routed, accepted, dropped and capacity; drops; waste; load_balance.f.
Expert owners must follow the block partition of E over R, and the traffic matrix must be the one
implied by the routing CSV and the block partitions of tokens and experts.

Tolerances:
  gates: |dg| <= 4 ulp of float32 (rtol 5e-7). They come from z = h W^T computed by one sgemm over
    the rank's block of tokens; OpenBLAS may block a different row count differently, which can
    change the last bit of a logit. In practice they are identical.
  y: |dy| <= 1e-4 + 1e-5 |y|. y_e = GELU(x W1^T) W2^T runs as sgemm over the rows an expert
    received, whose number changes with R; a different blocking reorders sums of f = 2d <= 128
    float32 products, whose error is bounded by about f * 2^-24 * sum|terms| ~ 1e-5 for the values
    of order one here, so 1e-4 is a safe bound that still catches any wrong gate or lost
    assignment (those change y by 1e-2 or more).
  rows of tokens whose assignments were all dropped: bitwise equal (they are h, untouched).
  load_balance.P and aux_loss: rtol 1e-6 (P is an exact sum of the float32 probabilities, so it
    equals R=1's bit for bit whenever the probabilities do, as they do in practice; the tolerance
    only allows for the last-bit logit differences described for the gates; test_reproducible
    demands exact equality).
"""

import numpy as np

import moetest as mt

CASES = [
    # name, N, d, E, k, cf, extra options
    ("drops_E7", 1001, 32, 7, 2, "1.0", []),
    ("dropless_E6", 1001, 16, 6, 2, "0", []),
    ("drops_E12_k3_renorm", 997, 64, 12, 3, "0.8", ["--renormalize", "--seed", "7"]),
    ("drops_E6_k1", 1001, 24, 6, 1, "1.0", ["--seed", "3"]),
]
RANKS = [1, 2, 3, 4]


def check_case(ck, exe, wd, name, N, d, E, k, cf, extra):
    args = ["--tokens", N, "--hidden", d, "--experts", E, "--top-k", k, "--capacity-factor", cf,
            "--capacity-scope", "global", "--iters", 1, "--warmup", 0] + extra
    base = None
    for R in RANKS:
        tag = "%s_R%d" % (name, R)
        res = ck.guard(tag, mt.run_full, exe, R, args, wd, tag)
        if res is None:
            continue
        doc = res.json
        ck.equal(doc["config"]["ranks"], R, tag + ": config.ranks")
        ck.equal([e["rank"] for e in doc["experts"]], [mt.owner(E, R, e) for e in range(E)],
                 tag + ": expert owners follow the block partition of E over R")
        expert, gate, acc = res.routing_matrix(k)
        ck.equal(res.y.shape, (N, d), tag + ": --dump-output shape")
        ck.equal(res.y.dtype, np.float32, tag + ": --dump-output dtype")

        # traffic implied by the CSV: accepted rows from the token's rank to the expert's rank
        want = np.zeros((R, R), dtype=np.int64)
        for t in range(N):
            for c in range(k):
                if acc[t, c]:
                    want[mt.owner(N, R, t), mt.owner(E, R, expert[t, c])] += d * 4
        disp = np.array(doc["traffic"]["dispatch_bytes"], dtype=np.int64)
        comb = np.array(doc["traffic"]["combine_bytes"], dtype=np.int64)
        ck.check(np.array_equal(disp, want), tag + ": traffic.dispatch_bytes matches the CSV",
                 "got\n%s\nexpected\n%s" % (disp, want))
        ck.check(np.array_equal(comb, want.T), tag + ": traffic.combine_bytes is the transpose")

        if base is None:
            base = (res, expert, gate, acc)
            ck.check(N * k - acc.sum() > 0 if cf != "0" else acc.all(),
                     tag + ": the case drops (cf > 0) or accepts everything (cf 0)",
                     "dropped %d of %d" % (N * k - acc.sum(), N * k))
            continue
        b, bexp, bgate, bacc = base
        ck.check(np.array_equal(expert, bexp), tag + ": CSV experts identical to R=1",
                 "%d tokens differ" % (expert != bexp).any(axis=1).sum())
        ck.check(np.array_equal(acc, bacc), tag + ": CSV accepted flags identical to R=1",
                 "%d assignments differ" % (acc != bacc).sum())
        ck.close(gate, bgate, tag + ": CSV gates equal to R=1", rtol=5e-7, atol=0)
        if res.routing["text"] != b.routing["text"]:
            print("note: %s: routing CSV text differs from R=1 in the last digits of gates" % tag)
        got, want_counts = mt.json_counts(doc), mt.json_counts(b.json)
        for key in ("experts", "drops", "waste", "f"):
            ck.equal(got[key], want_counts[key], tag + ": JSON %s identical to R=1" % key)
        ck.close(doc["load_balance"]["P"], b.json["load_balance"]["P"],
                 tag + ": load_balance.P equal to R=1", rtol=1e-6, atol=0)
        ck.close(doc["load_balance"]["aux_loss"], b.json["load_balance"]["aux_loss"],
                 tag + ": aux_loss equal to R=1", rtol=1e-6, atol=0)
        ck.close(res.y, b.y, tag + ": y equal to R=1", rtol=1e-5, atol=1e-4)
        dropped = bacc.sum(axis=1) == 0
        ck.check(np.array_equal(res.y[dropped].view(np.uint32), b.y[dropped].view(np.uint32)),
                 tag + ": rows of fully dropped tokens bitwise equal to R=1")
        if np.array_equal(res.y, b.y):
            print("note: %s: y bitwise identical to R=1" % tag)


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_invariance")
    wd = mt.workdir()
    for case in CASES:
        check_case(ck, exe, wd, *case)
    ck.finish()


if __name__ == "__main__":
    main()
