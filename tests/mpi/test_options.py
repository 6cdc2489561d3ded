"""Options and the JSON contract.

  --seed       another seed changes the routing; the same seed reproduces it (and y) bitwise.
  --iters / --warmup  accepted (including --warmup 0), reflected in config; y does not depend on
               them (every step recomputes the same layer from the same inputs).
  --quiet      no report on stdout (and the JSON is still written); without it rank 0 alone
               prints the report.
  --help       exit 0, every option listed, printed once whatever R.
  --version    exit 0, a version string, printed once.
  --pad-to-capacity  y and every count unchanged, waste.padded true; at R = 1 and R = 3.
  --drop-policy position  accepted, same routing as the default, in config.
  --ffn        sets config.ffn and the FLOP counts (4 d f per row).
  traffic      dispatch sums to (sum of accepted) d 4 bytes, combine is its transpose.
  load balance aux_loss = E sum f P from the JSON's own f and P, and from f recounted from the CSV.
  JSON shape   every documented key present; timing min <= mean <= max; checksum = sum of y.
"""

import os
import re

import numpy as np

import moetest as mt

ALL_OPTIONS = ["--tokens", "--hidden", "--ffn", "--experts", "--top-k", "--capacity-factor",
               "--capacity-scope", "--drop-policy", "--renormalize", "--pad-to-capacity", "--seed",
               "--iters", "--warmup", "--tokens-file", "--router-file", "--json", "--dump-routing",
               "--dump-output", "--quiet", "--help", "--version"]
CONFIG_KEYS = {"ranks", "experts", "top_k", "capacity_factor", "tokens", "hidden", "ffn",
               "capacity_scope", "drop_policy", "seed", "renormalize", "pad_to_capacity", "iters",
               "warmup", "tokens_file", "router_file"}
PHASES = ["router", "count_exchange", "pack", "dispatch", "regroup", "expert", "combine", "unpack",
          "step"]

N, D, E, K = 1001, 32, 7, 2
BASE = ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", K, "--capacity-factor", "1.0",
        "--iters", 1, "--warmup", 0]


def counts(doc):
    return mt.json_counts(doc)


def seeds(ck, exe, wd):
    a = ck.guard("seed 1", mt.run_full, exe, 2, BASE + ["--seed", 1], wd, "seed1a")
    b = ck.guard("seed 1 again", mt.run_full, exe, 2, BASE + ["--seed", 1], wd, "seed1b")
    c = ck.guard("seed 2", mt.run_full, exe, 2, BASE + ["--seed", 2], wd, "seed2")
    if a is None or b is None or c is None:
        return
    ck.check(a.routing["text"] == b.routing["text"], "--seed 1 twice: routing CSV identical")
    ck.check(np.array_equal(a.y.view(np.uint32), b.y.view(np.uint32)),
             "--seed 1 twice: y bitwise identical")
    ea, _, _ = a.routing_matrix(K)
    ec, _, _ = c.routing_matrix(K)
    changed = (ea != ec).any(axis=1).mean()
    ck.check(changed > 0.5, "--seed 2 changes the routing of most tokens",
             "only %.1f%% of tokens route differently" % (100 * changed))
    ck.equal((a.json["config"]["seed"], c.json["config"]["seed"]), (1, 2), "config.seed")
    big = ck.guard("seed 2^63-1", mt.run_full, exe, 1,
                   ["--tokens", 50, "--hidden", 16, "--experts", 4, "--seed", 2 ** 63 - 1], wd,
                   "seedbig")
    if big is not None:
        ck.equal(big.json["config"]["seed"], 2 ** 63 - 1, "config.seed holds 2^63 - 1")
        h = mt.gen_tokens(2 ** 63 - 1, 50, 16)
        _, _, acc = big.routing_matrix(2)
        dropped = acc.sum(axis=1) == 0
        if dropped.any():
            ck.check(np.array_equal(big.y[dropped].view(np.uint32), h[dropped].view(np.uint32)),
                     "seed 2^63-1: dropped tokens are the generated h")


def iters_warmup(ck, exe, wd):
    ref = ck.guard("iters 1 warmup 0", mt.run_full, exe, 3, BASE, wd, "it1")
    for iters, warmup in [(3, 2), (2, 0)]:
        tag = "--iters %d --warmup %d" % (iters, warmup)
        args = BASE + ["--iters", iters, "--warmup", warmup]  # the last occurrence wins
        r = ck.guard(tag, mt.run_full, exe, 3, args, wd, "it%d_%d" % (iters, warmup))
        if r is None or ref is None:
            continue
        ck.equal((r.json["config"]["iters"], r.json["config"]["warmup"]), (iters, warmup),
                 tag + ": config.iters and config.warmup")
        ck.check(np.array_equal(r.y, ref.y), tag + ": y as with one iteration")
        ck.equal(counts(r.json), counts(ref.json), tag + ": counts as with one iteration")


def quiet_help_version(ck, exe, wd):
    jpath = os.path.join(wd, "quiet.json")
    r = mt.run(exe, 2, BASE + ["--quiet", "--json", jpath])
    ck.equal(r.returncode, 0, "--quiet: exit 0")
    ck.equal(r.stdout, "", "--quiet: nothing on stdout")
    ck.equal(r.own_stderr, [], "--quiet: nothing on stderr")
    ck.check(os.path.exists(jpath), "--quiet: the JSON is still written")
    r = mt.run(exe, 3, BASE)
    ck.equal(r.returncode, 0, "without --quiet: exit 0")
    ck.check("expert" in r.stdout.lower() and "drop" in r.stdout.lower(),
             "without --quiet: a report on stdout", r.stdout[:500])
    ck.equal(len(re.findall(r"^moesim \d+\.\d+\.\d+", r.stdout, re.M)), 1,
             "without --quiet: the report is printed once (rank 0 only)")
    for R in (1, 3):
        r = mt.run(exe, R, ["--help"])
        ck.equal(r.returncode, 0, "--help at R=%d: exit 0" % R)
        missing = [o for o in ALL_OPTIONS if not re.search(re.escape(o) + r"\b", r.stdout)]
        ck.equal(missing, [], "--help at R=%d lists every option" % R)
        ck.equal(len(re.findall(r"^Usage", r.stdout, re.M)), 1, "--help at R=%d printed once" % R)
        ck.equal(r.own_stderr, [], "--help at R=%d: nothing on stderr" % R)
        r = mt.run(exe, R, ["--version"])
        ck.equal(r.returncode, 0, "--version at R=%d: exit 0" % R)
        ck.equal(len(re.findall(r"^moesim \d+\.\d+\.\d+", r.stdout, re.M)), 1,
                 "--version at R=%d: one 'moesim X.Y.Z' line" % R)


def pad_to_capacity(ck, exe, wd):
    for R in (1, 3):
        a = ck.guard("no padding R=%d" % R, mt.run_full, exe, R, BASE, wd, "nopad%d" % R)
        b = ck.guard("--pad-to-capacity R=%d" % R, mt.run_full, exe, R,
                     BASE + ["--pad-to-capacity"], wd, "pad%d" % R)
        if a is None or b is None:
            continue
        tag = "--pad-to-capacity R=%d" % R
        ck.equal(b.json["waste"]["padded"], True, tag + ": waste.padded true")
        ck.equal(a.json["waste"]["padded"], False, "without it: waste.padded false")
        ck.equal(b.json["config"]["pad_to_capacity"], True, tag + ": config.pad_to_capacity")
        ca, cb = counts(a.json), counts(b.json)
        ca["waste"].pop("padded")
        cb["waste"].pop("padded")
        ck.equal(cb, ca, tag + ": every count unchanged")
        ck.check(cb["waste"]["empty_slots"] > 0, tag + ": the case has empty slots")
        ck.check(a.routing["text"] == b.routing["text"], tag + ": routing CSV unchanged")
        # zero rows appended to an expert's GEMM may change OpenBLAS's blocking of the real rows:
        # same tolerance as across rank counts (test_invariance)
        ck.close(b.y, a.y, tag + ": y unchanged", rtol=1e-5, atol=1e-4)


def policy_ffn_traffic_aux(ck, exe, wd):
    a = ck.guard("default policy", mt.run_full, exe, 3, BASE, wd, "pol_default")
    b = ck.guard("--drop-policy position", mt.run_full, exe, 3,
                 BASE + ["--drop-policy", "position"], wd, "pol_position")
    if a is not None and b is not None:
        ck.check(a.routing["text"] == b.routing["text"],
                 "--drop-policy position: same routing as the default")
        ck.equal(b.json["config"]["drop_policy"], "position", "config.drop_policy")

    f = 48
    r = ck.guard("--ffn 48", mt.run_full, exe, 4, BASE + ["--ffn", f], wd, "ffn48")
    if r is None:
        return
    doc = r.json
    ck.equal(doc["config"]["ffn"], f, "--ffn 48: config.ffn")
    n_acc = sum(e["accepted"] for e in doc["experts"])
    ck.close(doc["waste"]["flops_useful"], n_acc * 4.0 * D * f, "--ffn 48: flops_useful = 4 d f "
             "per accepted row", rtol=1e-12, atol=0)
    ck.close(doc["waste"]["flops_wasted"], doc["waste"]["empty_slots"] * 4.0 * D * f,
             "--ffn 48: flops_wasted = 4 d f per empty slot", rtol=1e-12, atol=0)
    if a is not None:
        ck.equal(a.json["config"]["ffn"], 2 * D, "default ffn is 2 d")

    # JSON shape
    # The contract only ever adds keys: the documented ones must all be there.
    ck.check(CONFIG_KEYS <= set(doc["config"]), "config has every documented key",
             "missing %s" % sorted(CONFIG_KEYS - set(doc["config"])))
    ck.equal(doc["config"]["ranks"], 4, "config.ranks")
    ck.equal(doc["config"]["capacity_factor"], 1.0, "config.capacity_factor")
    ck.equal((doc["config"]["tokens_file"], doc["config"]["router_file"]), (None, None),
             "config files null when generated")
    ck.equal([e["id"] for e in doc["experts"]], list(range(E)), "experts[].id in order")
    for key, sub in [("load_balance", {"f", "P", "aux_loss"}),
                     ("drops", {"assignments", "dropped_assignments", "dropped_tokens"}),
                     ("waste", {"slots", "empty_slots", "flops_useful", "flops_wasted", "padded"}),
                     ("traffic", {"dispatch_bytes", "combine_bytes"}),
                     ("bandwidth", {"dispatch_bytes_per_second", "combine_bytes_per_second"}),
                     ("output", {"checksum"})]:
        ck.check(sub <= set(doc.get(key) or {}), "JSON %s has every documented key" % key,
                 "missing %s" % sorted(sub - set(doc.get(key) or {})))
    ck.check(set(PHASES) <= set(doc["timing"]), "timing has every phase",
             "missing %s" % sorted(set(PHASES) - set(doc["timing"])))
    for p in PHASES:
        t = doc["timing"][p]
        ck.check(0 <= t["min"] <= t["mean"] <= t["max"], "timing.%s: 0 <= min <= mean <= max" % p,
                 str(t))
    rates = [v for v in doc["bandwidth"].values() if not isinstance(v, dict)]
    rates += [x for v in doc["bandwidth"].values() if isinstance(v, dict) for x in v.values()]
    ck.check(all(v >= 0 for v in rates), "bandwidth non-negative (nccl-tests objects included)")
    ck.close(doc["output"]["checksum"], r.y.astype(np.float64).sum(), "output.checksum = sum of y",
             rtol=0, atol=1e-6 * np.abs(r.y).sum())

    # traffic
    disp = np.array(doc["traffic"]["dispatch_bytes"], dtype=np.int64)
    comb = np.array(doc["traffic"]["combine_bytes"], dtype=np.int64)
    ck.equal(disp.shape, (4, 4), "traffic.dispatch_bytes is R x R")
    ck.equal(int(disp.sum()), n_acc * D * 4, "traffic.dispatch_bytes sums to (sum accepted) d 4")
    ck.check(np.array_equal(comb, disp.T), "traffic.combine_bytes is the transpose of dispatch")
    ck.check(disp.sum() - np.trace(disp) > 0, "some traffic crosses ranks")

    # load balance
    lb = doc["load_balance"]
    fj, Pj = np.array(lb["f"]), np.array(lb["P"])
    ck.close(lb["aux_loss"], E * np.sum(fj * Pj), "aux_loss = E sum f P from the JSON's f and P",
             rtol=1e-8, atol=0)
    expert, _, _ = r.routing_matrix(K)
    f_csv = np.bincount(expert.ravel(), minlength=E) / (N * K)
    ck.close(fj, f_csv, "load_balance.f = routed / (N k) counted from the CSV", rtol=1e-9, atol=0)
    ck.equal([e["routed"] for e in doc["experts"]], np.bincount(expert.ravel(), minlength=E).tolist(),
             "experts[].routed counted from the CSV")
    ck.close(lb["aux_loss"], E * np.sum(f_csv * Pj), "aux_loss = E sum f P with f from the CSV",
             rtol=1e-8, atol=0)
    ck.close(Pj.sum(), 1.0, "load_balance.P sums to 1", rtol=0, atol=1e-6)
    ck.close(fj.sum(), 1.0, "load_balance.f sums to 1", rtol=0, atol=1e-9)


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_options")
    wd = mt.workdir()
    seeds(ck, exe, wd)
    iters_warmup(ck, exe, wd)
    quiet_help_version(ck, exe, wd)
    pad_to_capacity(ck, exe, wd)
    policy_ffn_traffic_aux(ck, exe, wd)
    ck.finish()


if __name__ == "__main__":
    main()
