"""Reproducibility: the same seed and options give byte-identical JSON apart from the timing,
bandwidth, exchange, placement, environment and memory fields, across runs; across R in global
scope `experts` (but their `rank`), `drops`, `waste`, `load_balance` and `output.checksum` are
identical. This test checks both.

Part A, across runs: each case runs twice with the same command line (relative output paths, each
run in a fresh directory of its own, so not even a path differs), on R = 2 and R = 3, with a list
of capacity factors, hot experts, renormalized gates, local scope, skew and clusters. From each
JSON the top-level keys timing, bandwidth, exchange, placement, environment and memory are
removed (times, rates and their ratios, where the ranks ran, resident memory: they are measured,
not computed), from every ablation[] row the *_seconds keys and from every steps[] object its
timing (timings), from every per_rank[] row its seconds. Then:
  - the two documents are equal when re-serialised (json.dumps(sort_keys=True));
  - the raw bytes of the file are equal key by key: every remaining top-level value's text, and
    inside ablation[] every remaining key's text (so a value that parses the same but prints
    differently, e.g. a last digit, is caught too);
  - the --dump-routing CSV and the --dump-output .npy are byte-identical.
No tolerance: every number is computed by the same code from the same seeded inputs on the same
R, with OpenBLAS single-threaded (MPI_ENV), so nothing may differ.

Part B, across R (global scope): N = 1001 and E = 12 or 7 split unevenly over R = 1, 2, 3, 4, with
a capacity factor that drops (1.0) and dropless (0). `experts` with `rank` removed, `drops`,
`waste`, `load_balance` (every key but `rank_overload`, the busiest rank's rows over the mean,
which depends on R by definition) and `output.checksum` must be exactly equal (==) to R = 1's. No
tolerance: the counts are integers; P, aux_loss, z_loss, importance and the checksum are sums over
tokens that the contract requires to be independent of how the tokens are split (an exact
summation), so they must come out to the same double, and print the same (the JSON prints 17
significant digits, enough to read the double back). Every differing value is printed with its
absolute and relative difference.
"""

import json
import os
import tempfile

import moetest as mt

EXCLUDED_TOP = ("timing", "bandwidth", "exchange", "placement", "environment", "memory")

CASES_A = [
    # name, ranks, options
    ("R2_cflist_hot_renorm", 2,
     ["--tokens", 1001, "--hidden", 32, "--experts", 7, "--top-k", 2, "--seed", 5,
      "--capacity-factor", "1.0,1.25,0", "--hot-experts", 2, "--hot-share", 0.6,
      "--renormalize", "--iters", 2, "--warmup", 1]),
    ("R3_local_skew_clusters", 3,
     ["--tokens", 997, "--hidden", 48, "--experts", 12, "--top-k", 3, "--seed", 11,
      "--capacity-factor", "0.8,0", "--capacity-scope", "local", "--skew", 0.7,
      "--clusters", 5, "--iters", 2, "--warmup", 1]),
    ("R3_global_pad", 3,
     ["--tokens", 1000, "--hidden", 16, "--experts", 6, "--top-k", 2,
      "--capacity-factor", "1.1", "--pad-to-capacity", "--hot-experts", 1,
      "--iters", 1, "--warmup", 0]),
]

CASES_B = [
    # name, options (global scope, one step)
    ("E12_cf1.0", ["--tokens", 1001, "--hidden", 32, "--experts", 12, "--top-k", 2,
                   "--capacity-factor", "1.0"]),
    ("E7_dropless", ["--tokens", 1001, "--hidden", 24, "--experts", 7, "--top-k", 2,
                     "--capacity-factor", "0"]),
    ("E7_cf1.0_k3_renorm", ["--tokens", 1001, "--hidden", 16, "--experts", 7, "--top-k", 3,
                            "--capacity-factor", "1.0", "--renormalize", "--seed", 9]),
]
RANKS_B = [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Raw text of JSON values: where each value of an object or array lies in the file

_DEC = json.JSONDecoder()
_WS = " \t\n\r"


def _skip(s, i):
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def object_spans(s, i=0):
    """{key: (start, end)} of the values of the JSON object starting at s[i] (after whitespace)."""
    i = _skip(s, i)
    if s[i] != "{":
        raise ValueError("no object at %d" % i)
    spans, i = {}, _skip(s, i + 1)
    if s[i] == "}":
        return spans
    while True:
        key, i = _DEC.raw_decode(s, i)
        i = _skip(s, i)
        if s[i] != ":":
            raise ValueError("':' expected at %d" % i)
        start = _skip(s, i + 1)
        _, end = _DEC.raw_decode(s, start)
        spans[key] = (start, end)
        i = _skip(s, end)
        if s[i] == "}":
            return spans
        if s[i] != ",":
            raise ValueError("',' expected at %d" % i)
        i = _skip(s, i + 1)


def array_spans(s, i):
    """[(start, end)] of the elements of the JSON array starting at s[i]."""
    i = _skip(s, i)
    if s[i] != "[":
        raise ValueError("no array at %d" % i)
    spans, i = [], _skip(s, i + 1)
    if s[i] == "]":
        return spans
    while True:
        _, end = _DEC.raw_decode(s, i)
        spans.append((i, end))
        i = _skip(s, end)
        if s[i] == "]":
            return spans
        if s[i] != ",":
            raise ValueError("',' expected at %d" % i)
        i = _skip(s, i + 1)


def strip_measured(doc):
    """The document without what is measured rather than computed."""
    doc = {k: v for k, v in doc.items() if k not in EXCLUDED_TOP}
    if isinstance(doc.get("ablation"), list):
        doc["ablation"] = [{k: v for k, v in row.items() if not k.endswith("_seconds")}
                           for row in doc["ablation"]]
    if isinstance(doc.get("steps"), list):
        doc["steps"] = [{k: v for k, v in st.items() if k != "timing"} for st in doc["steps"]]
    if isinstance(doc.get("per_rank"), list):
        doc["per_rank"] = [{k: v for k, v in row.items() if k != "seconds"}
                           for row in doc["per_rank"]]
    return doc


def raw_pieces(text):
    """{name: raw text} of every top-level value but the excluded ones; ablation[] split into its
    rows' keys, the *_seconds left out; per_rank[] without its seconds."""
    out = {}
    for key, (a, b) in object_spans(text).items():
        if key in EXCLUDED_TOP:
            continue
        if key in ("ablation", "steps", "per_rank") and text[a] == "[":
            for j, (ra, _) in enumerate(array_spans(text, a)):
                for rk, (x, y) in object_spans(text, ra).items():
                    if not rk.endswith("_seconds") and rk not in ("timing", "seconds"):
                        out["%s[%d].%s" % (key, j, rk)] = text[x:y]
        else:
            out[key] = text[a:b]
    return out


# ---------------------------------------------------------------------------------------------

def run_in(exe, ranks, args, d):
    r = mt.run(exe, ranks, list(args) + ["--quiet", "--json", "out.json", "--dump-routing",
                                         "routing.csv", "--dump-output", "y.npy"], cwd=d)
    if r.returncode != 0:
        raise AssertionError("moesim failed (R=%d)\n%s" % (ranks, r.describe()))
    files = {}
    for name in ("out.json", "routing.csv", "y.npy"):
        with open(os.path.join(d, name), "rb") as fh:
            files[name] = fh.read()
    return files


def part_a(ck, exe, wd, name, ranks, args):
    runs = []
    for i in (1, 2):
        d = tempfile.mkdtemp(prefix="%s-run%d-" % (name, i), dir=wd)
        runs.append(run_in(exe, ranks, args, d))
    t1, t2 = (r["out.json"].decode() for r in runs)
    d1, d2 = strip_measured(json.loads(t1)), strip_measured(json.loads(t2))
    s1, s2 = json.dumps(d1, sort_keys=True), json.dumps(d2, sort_keys=True)
    differing = sorted(k for k in set(d1) | set(d2) if d1.get(k) != d2.get(k))
    ck.check(s1 == s2, "A %s: the JSON minus the measured keys is identical across runs" % name,
             "top-level keys that differ: %s" % differing)
    p1, p2 = raw_pieces(t1), raw_pieces(t2)
    ck.equal(sorted(p2), sorted(p1), "A %s: the same keys in both JSON files" % name)
    bad = [k for k in p1 if k in p2 and p1[k] != p2[k]]
    ck.check(not bad, "A %s: raw bytes of every non-excluded value identical across runs" % name,
             "\n".join("%s:\n  run 1: %s\n  run 2: %s" % (k, p1[k][:300], p2[k][:300])
                       for k in bad))
    for f in ("routing.csv", "y.npy"):
        ck.check(runs[0][f] == runs[1][f], "A %s: %s byte-identical across runs" % (name, f),
                 "%d vs %d bytes" % (len(runs[0][f]), len(runs[1][f])))
    print("A %-24s R=%d: %d raw values compared, %d differ" % (name, ranks, len(p1), len(bad)))


def describe_diff(got, want, base_r, path=""):
    """Lines naming every leaf where got and want differ, with the size of numeric differences."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got)):
            where = "%s.%s" % (path, k) if path else k
            out += describe_diff(got.get(k), want.get(k), base_r, where)
        return out
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        out = []
        for i, (g, w) in enumerate(zip(got, want)):
            out += describe_diff(g, w, base_r, "%s[%d]" % (path, i))
        return out
    if got == want:
        return []
    if isinstance(got, (int, float)) and isinstance(want, (int, float)) and \
            not isinstance(got, bool) and not isinstance(want, bool):
        ad = abs(got - want)
        rd = ad / abs(want) if want else float("inf")
        return ["%s: got %r, R=%d %r (|diff| %.3g, rel %.3g)" % (path, got, base_r, want, ad, rd)]
    return ["%s: got %r, R=%d %r" % (path, got, base_r, want)]


def part_b(ck, exe, wd, name, args):
    args = list(args) + ["--capacity-scope", "global", "--iters", 1, "--warmup", 0]
    base, base_r = None, None
    for R in RANKS_B:
        tag = "B %s R=%d" % (name, R)
        res = ck.guard(tag, mt.run_full, exe, R, args, wd, "%s_R%d" % (name, R))
        if res is None:
            continue
        doc = res.json
        picked = {"experts": [{k: v for k, v in e.items() if k != "rank"} for e in doc["experts"]],
                  "drops": doc["drops"], "waste": doc["waste"],
                  # every figure but the rank overload, which is about ranks by definition
                  "load_balance": {k: v for k, v in doc["load_balance"].items()
                                   if k != "rank_overload"},
                  "output.checksum": doc["output"]["checksum"]}
        if base is None:
            base, base_r = picked, R
            continue
        for key in picked:
            diff = describe_diff(picked[key], base[key], base_r)
            ck.check(not diff, "%s: %s identical (==) to R=%d" % (tag, key, base_r),
                     "\n".join(diff))


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_reproducible")
    wd = mt.workdir()
    for name, ranks, args in CASES_A:
        ck.guard("A " + name, part_a, ck, exe, wd, name, ranks, args)
    for name, args in CASES_B:
        ck.guard("B " + name, part_b, ck, exe, wd, name, args)
    ck.finish()


if __name__ == "__main__":
    main()
