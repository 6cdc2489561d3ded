"""The balance figures of JSON load_balance (docs/json.md) recomputed here in NumPy from moesim's own
dumps of the same run, and their independence from the rank count.

Each case runs twice with the same options: once with --dump-routing X.npy (the N x E float32
logits the run routed on, workload bias included) and once with --dump-routing X.csv (token,
choice, expert, gate, accepted); both with --json, whose load_balance must be identical (==) in the
two runs. From the dumps:
  z_loss          mean over tokens of logsumexp(z)^2, z from the .npy in float64 (max subtracted)
  importance_cv2  importance_e = sum of the CSV gates of every assignment routed to e (before
                  capacity); population variance over the squared mean
  entropy         -sum s ln s, s_e = routed_e / (N k), routed_e counted from the CSV's expert column
  gini            sum_ij |routed_i - routed_j| / (2 E sum routed), exactly (integers, Fraction)
  max_over_mean   max routed / (N k / E), exactly
  tokens_per_expert  min, max (integers), mean N k / E, population std
  rank_overload   rows per rank = sum over the experts it owns (block partition of E over R, moetest
                  owner()) of JSON experts[].accepted, or experts[].capacity with --pad-to-capacity;
                  max over mean over ranks, exactly; for a --capacity-factor list, the first one
The .npy is also checked to be the logits routing used: every CSV choice is among the k largest
logits of its row (up to 1e-5, a near tie that float32 softmax may break either way).

Cases (N = 1001 or 997, d = 16): R = 1, 2, 3; E = 6..12; k = 1..3; with and without --renormalize;
--skew and --hot-experts; a dropping capacity factor, dropless (cf 0), a cf list, local capacity
scope, and one run with --pad-to-capacity.

R-invariance: one dropping, renormalized, skewed case and one hot-expert dropless case at R = 1, 2,
3, 4 in global scope: every load_balance key but rank_overload (f, P, aux_loss included) is equal
(==) to R = 1's; rank_overload against its NumPy value at each R. --predict-only on three cases
fills every load_balance key, rank_overload from the planned rows, == the measured run's.

Tolerances (relative):
  z_loss, importance_cv2: 1e-12. moesim sums exactly and rounds once (xsum; the z-loss terms
    lse^2 carried as two floats, 48 bits of each); NumPy's float64 sums of N <= 1001 terms
    differ from the exact sum by a few ulps of the sum, and its exp and log from the C library's
    by an ulp: 1e-12 is far above that and far below the 1e-4 that a missing token, a wrong gate
    (pre-renormalization) or a logit without its bias makes.
  entropy, std: 1e-14. E <= 12 terms of one sign, each within 2 ulps (division, log, product),
    summed in another order: the two sides differ by at most about 15 ulps of the sum.
  gini, max_over_mean, rank_overload: 1e-15 (under 5 ulps) against the exact rational, rounded
    once here: each is a ratio of integer sums that moesim forms with at most three roundings.
  tokens_per_expert min, max and mean: == (integers, and one correctly rounded division).
"""

import json
import os
import time
from fractions import Fraction

import numpy as np

import moetest as mt

D, SEED = 16, 3
RTOL_SUM = 1e-12
RTOL_LOG = 1e-14
RTOL_RATIO = 1e-15
TIE_TOL = 1e-5
KEYS = ("z_loss", "importance_cv2", "entropy", "gini", "max_over_mean", "rank_overload",
        "tokens_per_expert")


def base_args(N, E, k, cf, extra=()):
    return ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", k, "--capacity-factor", cf,
            "--seed", SEED, "--iters", 1, "--warmup", 0] + list(extra)


def run_json(exe, ranks, args, wd, tag, dump=None):
    """One run with --quiet --json (and --dump-routing dump); the JSON document."""
    jpath = os.path.join(wd, tag + ".json")
    extra = ["--quiet", "--json", jpath] + (["--dump-routing", dump] if dump else [])
    r = mt.run(exe, ranks, list(args) + extra)
    if r.returncode != 0:
        raise AssertionError("moesim failed (R=%d, %s)\n%s" % (ranks, tag, r.describe()))
    with open(jpath) as fh:
        return json.load(fh)


def figures(z, routing, doc, N, E, k, R, padded):
    """Every load_balance figure from the dumps: z (N, E) float32 logits, routing (the CSV arrays),
    doc (the JSON, for experts[].accepted / capacity). Returns (values, exact rationals)."""
    z64 = z.astype(np.float64)
    zmax = z64.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z64 - zmax).sum(axis=1))
    expert = routing["expert"]
    gate = routing["gate"].astype(np.float64)
    importance = np.bincount(expert, weights=gate, minlength=E)
    routed = np.bincount(expert, minlength=E).astype(np.int64)
    total = int(routed.sum())
    share = routed[routed > 0] / float(N * k)
    ints = [int(v) for v in routed]
    D_abs = sum(abs(a - b) for a in ints for b in ints)
    mean_q = Fraction(total, E)
    var_q = sum((Fraction(v) - mean_q) ** 2 for v in ints) / E
    rows = [0] * R
    for e, x in enumerate(doc["experts"]):
        rows[mt.owner(E, R, e)] += x["capacity"] if padded else x["accepted"]
    exact = {
        "gini": Fraction(D_abs, 2 * E * total) if total else Fraction(0),
        "max_over_mean": Fraction(max(ints)) / mean_q,
        "rank_overload": Fraction(max(rows) * R, sum(rows)) if sum(rows) else None,
        "mean": mean_q,
    }
    val = {
        "z_loss": float(np.mean(lse * lse)),
        "importance_cv2": float(np.var(importance) / np.mean(importance) ** 2),
        "entropy": float(-(share * np.log(share)).sum()),
        "gini": float(exact["gini"]),
        "max_over_mean": float(exact["max_over_mean"]),
        "rank_overload": None if exact["rank_overload"] is None else float(exact["rank_overload"]),
        "tokens_per_expert": {"min": float(min(ints)), "max": float(max(ints)),
                              "mean": float(mean_q), "std": float(np.sqrt(float(var_q)))},
    }
    return val, rows


def compare(ck, tag, lb, val):
    """JSON load_balance lb against the NumPy figures val, with the tolerances of the docstring."""
    ck.close(lb["z_loss"], val["z_loss"], tag + ": z_loss = mean logsumexp(z)^2", RTOL_SUM, 0)
    ck.close(lb["importance_cv2"], val["importance_cv2"],
             tag + ": importance_cv2 from the CSV gates", RTOL_SUM, 0)
    ck.close(lb["entropy"], val["entropy"], tag + ": entropy of routed_e / (N k)", RTOL_LOG, 0)
    ck.close(lb["gini"], val["gini"], tag + ": gini of routed_e", RTOL_RATIO, 0)
    ck.close(lb["max_over_mean"], val["max_over_mean"], tag + ": max_over_mean", RTOL_RATIO, 0)
    if val["rank_overload"] is None:
        ck.equal(lb["rank_overload"], None, tag + ": rank_overload null (nothing computed)")
    else:
        ck.check(lb["rank_overload"] is not None, tag + ": rank_overload present")
        if lb["rank_overload"] is not None:
            ck.close(lb["rank_overload"], val["rank_overload"],
                     tag + ": rank_overload from experts[] per owner rank", RTOL_RATIO, 0)
    tpe, want = lb["tokens_per_expert"], val["tokens_per_expert"]
    ck.equal(sorted(tpe), ["max", "mean", "min", "std"], tag + ": tokens_per_expert keys")
    ck.equal((tpe.get("min"), tpe.get("max"), tpe.get("mean")),
             (want["min"], want["max"], want["mean"]), tag + ": tokens_per_expert min, max, mean")
    if "std" in tpe:
        ck.close(tpe["std"], want["std"], tag + ": tokens_per_expert std (population)", RTOL_LOG,
                 0)


def case(ck, exe, wd, tag, R, N, E, k, cf, extra=(), predict=False):
    """Both runs of one case, every figure against NumPy; returns the measured load_balance."""
    args = base_args(N, E, k, cf, extra)
    padded = "--pad-to-capacity" in extra
    npy = os.path.join(wd, tag + "_logits.npy")
    csv = os.path.join(wd, tag + "_routing.csv")
    doc_z = run_json(exe, R, args, wd, tag + "_z", dump=npy)
    doc = run_json(exe, R, args, wd, tag + "_csv", dump=csv)
    z = np.load(npy)
    routing = mt.read_routing(csv)
    ck.check(z.dtype == np.float32 and z.shape == (N, E), tag + ": .npy is (N, E) float32",
             "%s %s" % (z.dtype, z.shape))
    ck.equal(len(routing["expert"]), N * k, tag + ": CSV has N k rows")
    if z.shape != (N, E) or len(routing["expert"]) != N * k:
        return None
    ck.equal(doc_z["load_balance"], doc["load_balance"],
             tag + ": load_balance identical in the .npy and the .csv runs")
    # the logits are those routing used: the chosen k are the k largest of their row
    ex = routing["expert"].reshape(N, k)
    chosen = np.take_along_axis(z, ex, axis=1).astype(np.float64)
    mask = np.ones((N, E), dtype=bool)
    np.put_along_axis(mask, ex, False, axis=1)
    others = np.where(mask, z.astype(np.float64), -np.inf).max(axis=1)
    bad = np.nonzero(chosen.min(axis=1) < others - TIE_TOL)[0]
    ck.check(bad.size == 0, tag + ": CSV choices are the top-k of the .npy logits",
             "%d tokens, first %s: chose %s, row %s" % (
                 bad.size, bad[:3], ex[bad[0]] if bad.size else "", z[bad[0]] if bad.size else ""))
    # ... and they are h W^T plus the reported router bias (float32 GEMM of d = 16 terms of order
    # one: |error| < 1e-5): a z-loss without the bias would differ from the .npy's
    if "--logits-file" not in extra:
        h, W = mt.gen_tokens(SEED, N, D), mt.gen_router(SEED, E, D)
        bias = np.asarray(doc["workload"]["router_bias"], dtype=np.float64)
        ck.close(z, h.astype(np.float64) @ W.astype(np.float64).T + bias,
                 tag + ": .npy logits = h W^T + workload.router_bias", 0, 1e-5)
        if "--skew" in extra or "--hot-experts" in extra:
            ck.check(np.abs(bias).max() > 0.1, tag + ": the workload bias is not zero",
                     str(bias))
    if "--renormalize" in extra:
        g = routing["gate"].astype(np.float64).reshape(N, k)
        ck.close(g.sum(axis=1), np.ones(N), tag + ": CSV gates renormalized (sum 1 per token)",
                 0, 1e-6)
    val, rows = figures(z, routing, doc, N, E, k, R, padded)
    compare(ck, tag, doc["load_balance"], val)
    if predict:
        pdoc = run_json(exe, R, args + ["--predict-only"], wd, tag + "_predict")
        for key in KEYS:
            ck.equal(pdoc["load_balance"].get(key), doc["load_balance"][key],
                     tag + ": --predict-only load_balance.%s == the measured run's" % key)
        compare(ck, tag + " --predict-only", pdoc["load_balance"], val)
    print("%-22s R=%d N=%d E=%2d k=%d cf=%-7s rows per rank %s  overload %.4f  z-loss %.4f  "
          "cv2 %.4f  gini %.4f" % (tag, R, N, E, k, cf, rows, val["rank_overload"] or 0,
                                   val["z_loss"], val["importance_cv2"], val["gini"]))
    return doc["load_balance"]


def invariance(ck, exe, wd, tag, N, E, k, cf, extra):
    """R = 1, 2, 3, 4: load_balance but rank_overload == R = 1's; rank_overload against NumPy."""
    args = base_args(N, E, k, cf, extra)
    padded = "--pad-to-capacity" in extra
    first = None
    for R in (1, 2, 3, 4):
        t = "%s_R%d" % (tag, R)
        csv = os.path.join(wd, t + ".csv")
        doc = run_json(exe, R, args, wd, t, dump=csv)
        lb = dict(doc["load_balance"])
        if first is None:
            first = lb
        else:
            for key in sorted(set(first) | set(lb)):
                if key != "rank_overload":
                    ck.equal(lb.get(key), first.get(key),
                             "%s: load_balance.%s at R=%d == R=1 (exactly)" % (tag, key, R))
        routing = mt.read_routing(csv)
        # rank_overload is about ranks: check it against this R's owners (z is not needed for it)
        z_dummy = np.zeros((N, E), dtype=np.float32)
        val, rows = figures(z_dummy, routing, doc, N, E, k, R, padded)
        ck.close(lb["rank_overload"], val["rank_overload"],
                 "%s: rank_overload at R=%d (rows per rank %s)" % (tag, R, rows), RTOL_RATIO, 0)
    print("%-22s R=1..4 invariant: %s" % (tag, {k_: first[k_] for k_ in KEYS if k_ != "rank_overload"}))


def huge_logits(ck, exe, wd):
    """A replayed logit of 1e20: lse^2 = 2e40 per such token, beyond float32. Every token must count
    (the first version dropped such terms as non-finite); rtol 1e-12 as for the other z-losses."""
    z = np.random.default_rng(5).standard_normal((50, 4)).astype(np.float32)
    z[0] = [1e20, 1e20, 0, 0]
    path = os.path.join(wd, "huge_logits.npy")
    np.save(path, z)
    for R in (1, 2):
        doc = run_json(exe, R, ["--logits-file", path, "--hidden", 8, "--top-k", 2,
                                "--capacity-factor", "0", "--iters", 1, "--warmup", 0], wd,
                       "huge_R%d" % R)
        z64 = z.astype(np.float64)
        zmax = z64.max(axis=1)
        lse = zmax + np.log(np.exp(z64 - zmax[:, None]).sum(axis=1))
        want = float((lse ** 2).mean())
        ck.close(doc["load_balance"]["z_loss"], want,
                 "huge logits R=%d: z_loss counts the 1e20 token (%.6g)" % (R, want),
                 rtol=1e-12, atol=0)


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_balance")
    wd = mt.workdir()
    t0 = time.monotonic()
    # name, R, N, E, k, cf, extra options, also --predict-only
    cases = [
        ("plain_k1_drop", 1, 1001, 6, 1, "1.0", [], True),
        ("skew_renorm_k2", 2, 997, 8, 2, "1.25", ["--skew", "0.8", "--renormalize"], False),
        ("hot_dropless_k3", 3, 1001, 12, 3, "0", ["--hot-experts", "2", "--hot-share", "0.8"], False),
        ("pad_drop_k2", 3, 997, 7, 2, "1.0", ["--pad-to-capacity", "--skew", "0.5"], True),
        ("hot_renorm_cflist_k3", 2, 1001, 9, 3, "1.0,2.0",
         ["--hot-experts", "1", "--renormalize"], True),
        ("local_scope_k2", 3, 997, 10, 2, "1.1", ["--capacity-scope", "local", "--skew", "0.3"],
         False),
        ("renorm_k1_dropless", 2, 997, 11, 1, "0", ["--renormalize"], False),
    ]
    for name, R, N, E, k, cf, extra, predict in cases:
        ck.guard(name, case, ck, exe, wd, name, R, N, E, k, cf, extra, predict)
    ck.guard("inv_skew_renorm", invariance, ck, exe, wd, "inv_skew_renorm", 997, 10, 2, "1.0",
             ["--skew", "0.6", "--renormalize"])
    ck.guard("inv_hot_dropless", invariance, ck, exe, wd, "inv_hot_dropless", 1001, 6, 3, "0",
             ["--hot-experts", "2", "--hot-share", "0.95"])
    ck.guard("huge_logits", huge_logits, ck, exe, wd)
    print("test_balance: %.1f s" % (time.monotonic() - t0))
    ck.finish()


if __name__ == "__main__":
    main()
