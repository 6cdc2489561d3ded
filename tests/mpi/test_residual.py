"""A token whose assignments were all dropped leaves the layer as its input, bitwise (Switch §2.2:
the residual passes through); a token with at least one served assignment does not.

Cases with heavy drops (cf well below 1): generated tokens at k = 1 and k = 2 on R = 1, 3 and 4,
compared with h regenerated here from the rng.h spec (a bitwise check, so it also pins the
generator: sqrt, log and cos in double, one rounding to float32); and a float64 --tokens-file,
where moesim's h is the file rounded to float32, at R = 2 with local scope.
"""

import os

import numpy as np

import moetest as mt


def check(ck, tag, res, h, k):
    expert, _, acc = res.routing_matrix(k)
    served = acc.sum(axis=1) > 0
    dropped = ~served
    N = h.shape[0]
    ck.check(dropped.sum() >= N // 10, tag + ": the case drops many tokens",
             "only %d of %d tokens fully dropped" % (dropped.sum(), N))
    ck.check(served.sum() > 0, tag + ": some tokens are served")
    ck.equal(res.json["drops"]["dropped_tokens"], int(dropped.sum()),
             tag + ": drops.dropped_tokens counts the tokens with no accepted row in the CSV")
    same = np.all(res.y.view(np.uint32) == h.view(np.uint32), axis=1)
    ck.check(same[dropped].all(), tag + ": y == h bitwise for every fully dropped token",
             "%d of %d dropped tokens differ, first %s" % (
                 (~same[dropped]).sum(), dropped.sum(),
                 np.nonzero(dropped & ~same)[0][:5].tolist()))
    ck.check(not same[served].any(), tag + ": y != h for every token with a served assignment",
             "tokens %s are unchanged" % np.nonzero(served & same)[0][:5].tolist())
    if k > 1:
        partial = (acc.sum(axis=1) > 0) & (acc.sum(axis=1) < k)
        ck.check(partial.sum() > 0, tag + ": some tokens are partly served")
        ck.check(not same[partial].any(), tag + ": partly served tokens differ from h")


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_residual")
    wd = mt.workdir()
    for N, d, E, k, cf, seed in [(1001, 32, 6, 1, "0.3", 1), (999, 16, 7, 2, "0.4", 2)]:
        h = mt.gen_tokens(seed, N, d)
        for R in (1, 3, 4):
            tag = "gen_k%d_R%d" % (k, R)
            res = ck.guard(tag, mt.run_full, exe, R,
                           ["--tokens", N, "--hidden", d, "--experts", E, "--top-k", k,
                            "--capacity-factor", cf, "--seed", seed, "--iters", 1, "--warmup", 0],
                           wd, tag, routing=True, output=True)
            if res is not None:
                check(ck, tag, res, h, k)

    # float64 file: moesim holds float32(h), the nearest float, and must return exactly that
    rng = np.random.default_rng(99)
    h64 = rng.standard_normal((640, 24)) * 2.0
    tpath = os.path.join(wd, "tokens64.npy")
    np.save(tpath, h64)
    tag = "file_f64_R2_local"
    res = ck.guard(tag, mt.run_full, exe, 2,
                   ["--tokens-file", tpath, "--experts", 5, "--top-k", 2, "--capacity-factor",
                    "0.35", "--capacity-scope", "local", "--iters", 1, "--warmup", 0], wd, tag)
    if res is not None:
        check(ck, tag, res, h64.astype(np.float32), 2)
    ck.finish()


if __name__ == "__main__":
    main()
