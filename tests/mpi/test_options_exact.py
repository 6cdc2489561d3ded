"""Option names are matched whole, and the reported hot share is the routed one.

1. Options must be given whole (getopt_long alone takes any unambiguous prefix, so `--expert 16`
   used to mean `--experts 16` silently). At R = 1 and 2, each of these exits 2 promptly, prints
   nothing on stdout and exactly one `moesim: error:` line on stderr (Open MPI's own notice set
   aside, mt.own_stderr_lines) that quotes the bad name and suggests the right one:
     --expert 16, --expert=16, --exp 4     -> did you mean --experts
     --top 2, --top=2                      -> abbreviates both --top-k and --topology
     --capacity 1                          -> abbreviates --capacity-factor and --capacity-scope
     --experst 4, --tokns 5, --hiden 8, --quite  -> did you mean --experts/--tokens/--hidden/--quiet
     --a2a-mode flat                       -> did you mean --a2a (the nearest valid name: the
                                              issue asks for the nearest, and this one is a
                                              valid name plus a suffix)
     --zzzzzzzz 1                          -> names it (nothing is near, no suggestion required)
     --shared 2                            -> abbreviates --shared-experts and --shared-ffn
     --expert-group 8                      -> did you mean --expert-groups
     --experts-groups 8                    -> did you mean --expert-groups (one letter away; a
                                              valid name plus a suffix, --experts, is farther)
     --pre x                               -> abbreviates --preset and --predict-only
     --moe-router-top 2                    -> abbreviates --moe-router-topk and
                                              --moe-router-topk-scaling-factor, suggests the first
     -experts 4                            -> a single dash is refused too
   The value of an option that takes one is not an option name: `--json --weird` (cwd = a temp
   dir) writes the JSON to a file named "--weird", and `--dump-routing --tokens` writes the CSV to
   a file named "--tokens"; the whole names and the `--name=value` form still work (a control run
   with --experts=4 --top-k=1 --capacity-factor 1.0 checks the JSON's config, and so does one with
   their Megatron-Core names --num-experts=4 --moe-router-topk 1 --moe-expert-capacity-factor).
2. workload.hot_share is the share of tokens the routing actually sends to a hot expert. Routing
   ranks float32 probabilities, so logits one ulp apart can tie there; a share computed on the
   logits could differ from the routed one. The issue's 4-token logits file (bit patterns below)
   with --top-k 1 --hot-experts 1 --hot-share 0.5 once reported 0.5 while routing 0.75 to expert
   0: here workload.hot_share must equal the share of tokens whose --dump-routing CSV rows name an
   expert < hot_experts (exactly: both are counts over N), and be 0.5. The same property on 20
   seeded near-tie logits files (N 8..60, E = 2..4, k = 1..2, hot experts 1..E-1, target share
   0.2..0.8, rows whose logits differ by 0..2 ulps of a common value, some rows independent), each
   at R = 1 and 2; and the routed share must not depend on R.
"""

import json
import os
import re
import time

import numpy as np

import moetest as mt

TIMEOUT = 20
PROMPT = 5.0  # seconds; a refusal takes ~0.4 s including mpirun's start
BASE = ["--tokens", 64, "--hidden", 8, "--experts", 4, "--iters", 1, "--warmup", 0, "--quiet"]

# (bad arguments, the name the message must quote, patterns the message must also hold)
BAD = [
    (["--expert", 16], "--expert", [r"did you mean --experts\b"]),
    (["--expert=16"], "--expert", [r"did you mean --experts\b"]),
    (["--exp", 4], "--exp", [r"did you mean --experts\b"]),
    (["--top", 2], "--top", [r"--top-k\b", r"--topology\b"]),
    (["--top=2"], "--top", [r"--top-k\b", r"--topology\b"]),
    (["--capacity", 1], "--capacity", [r"--capacity-factor\b", r"--capacity-scope\b"]),
    (["--experst", 4], "--experst", [r"did you mean --experts\b"]),
    (["--tokns", 5], "--tokns", [r"did you mean --tokens\b"]),
    (["--hiden", 8], "--hiden", [r"did you mean --hidden\b"]),
    (["--quite"], "--quite", [r"did you mean --quiet\b"]),
    (["--a2a-mode", "flat"], "--a2a-mode", [r"--a2a(?![-\w])"]),
    (["--zzzzzzzz", 1], "--zzzzzzzz", []),
    (["--shared", 2], "--shared", [r"--shared-experts\b", r"--shared-ffn\b"]),
    (["--expert-group", 8], "--expert-group", [r"did you mean --expert-groups\b"]),
    (["--experts-groups", 8], "--experts-groups", [r"did you mean --expert-groups\b"]),
    (["--pre", "x"], "--pre", [r"--preset\b", r"--predict-only\b"]),
    (["--moe-router-top", 2], "--moe-router-top",
     [r"--moe-router-topk-scaling-factor\b", r"did you mean --moe-router-topk\?"]),
    (["-experts", 4], "-e", []),
]


def option_cases(ck, exe, root):
    for R in (1, 2):
        for i, (args, name, patterns) in enumerate(BAD):
            tag = "%s (R=%d)" % (" ".join(map(str, args)), R)
            d = os.path.join(root, "opt_R%d_%02d" % (R, i))
            os.makedirs(d)
            r = mt.run(exe, R, BASE + args, timeout=TIMEOUT, cwd=d)
            ck.equal(r.returncode, 2, tag + ": refused, exit 2")
            ck.check(r.elapsed < PROMPT, tag + ": promptly", "%.2f s" % r.elapsed)
            ck.equal(r.stdout, "", tag + ": nothing on stdout")
            lines = r.own_stderr
            if ck.check(len(lines) == 1 and lines[0].startswith("moesim: error: "),
                        tag + ": exactly one 'moesim: error:' line", r.describe()):
                ck.check(re.search(r"'%s'" % re.escape(name), lines[0]),
                         tag + ": the message quotes '%s'" % name, lines[0])
                for pat in patterns:
                    ck.check(re.search(pat, lines[0]), tag + ": the message suggests /%s/" % pat,
                             lines[0])
                print("%-28s %.2f s  %s" % (tag, r.elapsed, lines[0]))
            ck.equal(os.listdir(d), [], tag + ": nothing written")

        # values that look like options are values
        d = os.path.join(root, "values_R%d" % R)
        os.makedirs(d)
        tag = "--json --weird --dump-routing --tokens (R=%d)" % R
        r = mt.run(exe, R, BASE + ["--json", "--weird", "--dump-routing", "--tokens"],
                   timeout=TIMEOUT, cwd=d)
        ck.equal(r.returncode, 0, tag + ": accepted, exit 0")
        ck.equal(sorted(os.listdir(d)), ["--tokens", "--weird"], tag + ": two files so named")
        try:
            doc = json.load(open(os.path.join(d, "--weird")))
            ck.equal(doc["config"]["tokens"], 64, tag + ": '--weird' holds the JSON")
            rt = mt.read_routing(os.path.join(d, "--tokens"))
            ck.equal(len(rt["token"]), 64 * 2, tag + ": '--tokens' holds the routing CSV")
        except (OSError, ValueError) as e:
            ck.check(False, tag + ": the files hold the outputs (%s)" % e, r.describe())

        # the whole names and --name=value
        d = os.path.join(root, "whole_R%d" % R)
        os.makedirs(d)
        tag = "whole names (R=%d)" % R
        r = mt.run(exe, R, ["--tokens=50", "--hidden", 8, "--experts=4", "--top-k=1",
                            "--capacity-factor", "1.0", "--iters", 1, "--warmup=0", "--quiet",
                            "--json=" + os.path.join(d, "a.json")], timeout=TIMEOUT)
        if ck.equal(r.returncode, 0, tag + ": exit 0"):
            c = json.load(open(os.path.join(d, "a.json")))["config"]
            ck.equal((c["tokens"], c["hidden"], c["experts"], c["top_k"], c["capacity_factor"],
                      c["warmup"]), (50, 8, 4, 1, 1.0, 0), tag + ": every value taken")

        # the Megatron-Core names are the same options
        tag = "Megatron-Core names (R=%d)" % R
        r = mt.run(exe, R, ["--tokens=50", "--hidden", 8, "--num-experts=4", "--moe-router-topk", 1,
                            "--moe-expert-capacity-factor", "1.0", "--iters", 1, "--warmup=0",
                            "--quiet", "--json=" + os.path.join(d, "b.json")], timeout=TIMEOUT)
        if ck.equal(r.returncode, 0, tag + ": exit 0"):
            c = json.load(open(os.path.join(d, "b.json")))["config"]
            ck.equal((c["experts"], c["top_k"], c["capacity_factor"]), (4, 1, 1.0),
                     tag + ": every value taken")


# ---------------------------------------------------------------------------------------------
# Hot share

ISSUE_BITS = [[1057082488, 1057082489], [3199097551, 3208376589], [3183376639, 3183376638],
              [3192286387, 3192286386]]


def routed_share(csv_path, N, k, hot):
    rt = mt.read_routing(csv_path)
    ex = rt["expert"].reshape(N, k)
    assert np.array_equal(rt["token"], np.repeat(np.arange(N), k)), "CSV not token-major"
    return int((ex < hot).any(axis=1).sum()), ex


def hot_run(ck, exe, d, tag, R, z, k, hot, share):
    N = z.shape[0]
    zpath = os.path.join(d, "z.npy")
    if not os.path.exists(zpath):
        np.save(zpath, z)
    jpath, cpath = os.path.join(d, "z_R%d.json" % R), os.path.join(d, "z_R%d.csv" % R)
    r = mt.run(exe, R, ["--logits-file", zpath, "--top-k", k, "--hot-experts", hot,
                        "--hot-share", share, "--hidden", 4, "--iters", 1, "--warmup", 0,
                        "--quiet", "--json", jpath, "--dump-routing", cpath], timeout=TIMEOUT)
    if not ck.equal(r.returncode, 0, tag + ": exit 0"):
        print(r.describe())
        return None
    doc = json.load(open(jpath))
    hot_tokens, ex = routed_share(cpath, N, k, hot)
    # what ranking the biased float32 logits (the old computation) would have counted: printed,
    # to show these files reach the case where the two differ
    zb = z + np.array(doc["workload"]["router_bias"], dtype=np.float32)
    on_logits = int((np.argsort(-zb, axis=1, kind="stable")[:, :k] < hot).any(axis=1).sum())
    if on_logits != hot_tokens:
        HOT_DIFFER.append(tag)
    reported = doc["workload"]["hot_share"]
    # both are counts over N: reported * N must be the routed count (to the double's precision)
    ck.check(abs(reported * N - hot_tokens) < 1e-9 * N,
             tag + ": workload.hot_share equals the routed share",
             "reported %r (= %r of %d tokens), routed %d of %d" % (reported, reported * N, N,
                                                                   hot_tokens, N))
    # and the routing CSV agrees with the JSON's per-expert counts
    routed = np.bincount(ex.ravel(), minlength=z.shape[1])
    ck.equal([e["routed"] for e in doc["experts"]], routed.tolist(),
             tag + ": experts[].routed = the CSV's counts")
    return hot_tokens, reported


HOT_DIFFER = []  # runs where ranking logits instead of probabilities would count another share


def near_tie_logits(rng, N, E):
    z = np.empty((N, E), dtype=np.float32)
    for i in range(N):
        if rng.random() < 0.25:  # an independent row
            z[i] = rng.standard_normal(E).astype(np.float32)
            continue
        b = np.float32(rng.uniform(0.05, 2.0) * rng.choice([-1, 1]))
        bits = np.array([b], dtype=np.float32).view(np.uint32)[0]
        steps = rng.integers(-2, 3, size=E)  # 0..2 ulps either way, same sign: bit arithmetic
        z[i] = (np.uint32(bits) + steps.astype(np.int64)).astype(np.uint32).view(np.float32)
    return z


def hot_cases(ck, exe, root):
    d = os.path.join(root, "hot_issue")
    os.makedirs(d)
    z = np.array(ISSUE_BITS, dtype=np.uint32).view(np.float32)
    for R in (1, 2):
        tag = "issue logits file (R=%d)" % R
        got = hot_run(ck, exe, d, tag, R, z, 1, 1, 0.5)
        if got:
            ck.equal(got[1], 0.5, tag + ": workload.hot_share is 0.5")
            print("%s: reported %r, routed %d of 4" % (tag, got[1], got[0]))
    rng = np.random.default_rng(20240611)
    for case in range(20):
        # hot + k <= E, so that a token can miss every hot expert and the share is not 1 by
        # construction
        E = int(rng.integers(2, 5))
        k = int(rng.integers(1, min(2, E - 1) + 1))
        hot = int(rng.integers(1, E - k + 1))
        N = int(rng.integers(8, 61))
        share = round(float(rng.uniform(0.2, 0.8)), 3)
        z = near_tie_logits(rng, N, E)
        d = os.path.join(root, "hot_%02d" % case)
        os.makedirs(d)
        res = {}
        for R in (1, 2):
            tag = "near ties #%d N=%d E=%d k=%d hot=%d share=%g (R=%d)" % (case, N, E, k, hot,
                                                                          share, R)
            got = hot_run(ck, exe, d, tag, R, z, k, hot, share)
            if got:
                res[R] = got
        if len(res) == 2:
            ck.equal(res[2], res[1], "near ties #%d: the same routed and reported share at R = 1 "
                     "and 2" % case)
        print("near ties #%d N=%d E=%d k=%d hot=%d target %g: %s" % (
            case, N, E, k, hot, share, {R: "%d/%d, reported %.4f" % (h, N, s)
                                        for R, (h, s) in res.items()}))


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_options_exact")
    root = mt.workdir()
    t0 = time.monotonic()
    ck.guard("options", option_cases, ck, exe, root)
    print("-- options: %.1f s" % (time.monotonic() - t0), flush=True)
    t = time.monotonic()
    ck.guard("hot share", hot_cases, ck, exe, root)
    print("runs where the share counted on the biased logits differs from the routed one: %d%s"
          % (len(HOT_DIFFER), "".join("\n  " + t for t in HOT_DIFFER)))
    print("-- hot share: %.1f s" % (time.monotonic() - t))
    ck.finish()


if __name__ == "__main__":
    main()
