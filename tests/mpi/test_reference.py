"""moesim against a plain serial reference written here from the formulas (moetest.Reference):
routing CSV (experts, gates, accepted flags), y from --dump-output, and the JSON counts.

Runs at R = 1: generated data with drops, dropless, --renormalize with k = 3, --ffn; then
--tokens-file / --router-file written by numpy (float64 tokens with float32 router, and the
reverse), with a few all-zero tokens whose logits tie exactly (so top-k must take experts 0..k-1
in order, each with gate 1/E). The file case is repeated at R = 3 (each rank reads its own slice).

Tolerances (the reference is float64 from the same float32 inputs; moesim computes in float32):
  gates: rtol 3e-5. A logit is a dot product of d <= 64 float32 products; its error is at most
    about d * 2^-24 * sum|h_j W_ej| ~ 1e-5 for these inputs, and a softmax probability inherits at
    most twice that, relatively.
  experts: identical, except that where the reference's probabilities of two candidates differ by
    less than 3e-5 (the same bound) float32 may break the near tie either way; such a choice is
    accepted only if it is consistent within that bound, and is then used by the reference
    downstream. The count of such tokens is printed (it is zero for these seeds).
  y: |dy| <= 1e-4 + 1e-4 |y|: two float32 GEMMs of inner size d and f <= 128 with error about
    f * 2^-24 * sum|terms| ~ 1e-5 for values of order one; a wrong gate or a lost assignment
    moves y by 1e-2 or more.
  load_balance.P, aux_loss: rtol 1e-5 (float32 probabilities against float64 ones).
"""

import os

import numpy as np

import moetest as mt

GATE_RTOL = 3e-5
TIE_TOL = 3e-5
Y_ATOL, Y_RTOL = 1e-4, 1e-4


def compare(ck, tag, res, ref, N, d, E, k, f):
    """Every check of one run against its reference; ref.solve() is called here."""
    expert, gate, acc = res.routing_matrix(k)
    bad = ref.adopt_near_ties(expert, TIE_TOL)
    ck.check(not bad, tag + ": CSV experts are the reference's top-k (ties to the lower id)",
             "%d tokens differ, first %s: got %s, expected %s (p = %s)" % (
                 len(bad), bad[:1], expert[bad[0]] if bad else "", ref.expert[bad[0]] if bad else "",
                 np.round(ref.p[bad[0]], 6) if bad else ""))
    if ref.ties_adopted:
        print("note: %s: %d near ties (|dp| < %g) resolved as moesim did" % (
            tag, ref.ties_adopted, TIE_TOL))
    ref.solve()
    ck.close(gate, ref.gate, tag + ": CSV gates", rtol=GATE_RTOL, atol=1e-7)
    ck.check(np.array_equal(acc, ref.accepted), tag + ": CSV accepted flags (position policy)",
             "%d of %d assignments differ; first at token %s" % (
                 (acc != ref.accepted).sum(), acc.size,
                 np.nonzero((acc != ref.accepted).any(axis=1))[0][:5]))
    y_ref = ref.output()
    ck.close(res.y, y_ref, tag + ": y from --dump-output", rtol=Y_RTOL, atol=Y_ATOL)

    doc = res.json
    ck.equal([e["routed"] for e in doc["experts"]], ref.routed_per_expert.tolist(),
             tag + ": JSON experts[].routed")
    ck.equal([e["accepted"] for e in doc["experts"]], ref.accepted_per_expert.tolist(),
             tag + ": JSON experts[].accepted")
    ck.equal([e["dropped"] for e in doc["experts"]],
             (ref.routed_per_expert - ref.accepted_per_expert).tolist(),
             tag + ": JSON experts[].dropped")
    cap = ref.capacity_per_expert
    ck.equal([e["capacity"] for e in doc["experts"]], [cap] * E, tag + ": JSON experts[].capacity")
    if cap is None:
        ck.equal([e["utilization"] for e in doc["experts"]], [None] * E,
                 tag + ": utilization null when dropless")
    else:
        ck.close([e["utilization"] for e in doc["experts"]], ref.accepted_per_expert / cap,
                 tag + ": JSON experts[].utilization = accepted / capacity", rtol=1e-9, atol=0)
    n_acc = int(ref.accepted.sum())
    # the counted keys (the JSON contract only adds keys: drops also has max_expert_load and
    # cf_needed, checked in test_router_options.py)
    counted = {key: doc["drops"][key] for key in ("assignments", "dropped_assignments",
                                                  "dropped_tokens")}
    ck.equal(counted, {"assignments": N * k, "dropped_assignments": N * k - n_acc,
                       "dropped_tokens": ref.dropped_tokens}, tag + ": JSON drops")
    slots = n_acc if cap is None else cap * E
    w = doc["waste"]
    ck.equal((w["slots"], w["empty_slots"], w["padded"]), (slots, slots - n_acc, False),
             tag + ": JSON waste slots, empty_slots, padded")
    ck.close([w["flops_useful"], w["flops_wasted"]],
             [n_acc * 4.0 * d * f, (slots - n_acc) * 4.0 * d * f],
             tag + ": JSON waste flops (4 d f per row)", rtol=1e-9, atol=0)
    fr = ref.routed_per_expert / (N * k)
    P = ref.p.mean(axis=0)
    ck.close(doc["load_balance"]["f"], fr, tag + ": load_balance.f", rtol=1e-9, atol=0)
    ck.close(doc["load_balance"]["P"], P, tag + ": load_balance.P", rtol=1e-5, atol=0)
    ck.close(doc["load_balance"]["aux_loss"], E * np.sum(fr * P), tag + ": aux_loss",
             rtol=1e-5, atol=0)
    ck.close(doc["output"]["checksum"], y_ref.sum(), tag + ": output.checksum",
             rtol=0, atol=Y_ATOL * N * d)
    c = doc["config"]
    ck.equal((c["tokens"], c["hidden"], c["ffn"], c["experts"], c["top_k"]), (N, d, f, E, k),
             tag + ": JSON config shapes")


def generated(ck, exe, wd, tag, N, d, E, k, cf, seed=1, f=None, renormalize=False, ranks=1):
    args = ["--tokens", N, "--hidden", d, "--experts", E, "--top-k", k, "--capacity-factor", cf,
            "--seed", seed, "--iters", 1, "--warmup", 0]
    if f is not None:
        args += ["--ffn", f]
    if renormalize:
        args.append("--renormalize")
    res = ck.guard(tag, mt.run_full, exe, ranks, args, wd, tag)
    if res is None:
        return
    ref = mt.generated_reference(seed, N, d, E, k, cf, f=f, ranks=ranks, renormalize=renormalize)
    compare(ck, tag, res, ref, N, d, E, k, f or 2 * d)
    ck.equal(res.json["config"]["renormalize"], renormalize, tag + ": config.renormalize")
    if renormalize:
        _, gate, _ = res.routing_matrix(k)
        ck.close(gate.sum(axis=1), np.ones(N), tag + ": renormalized gates sum to 1 per token",
                 rtol=0, atol=1e-6)
    return res


def from_files(ck, exe, wd, tag, tok_dtype, rtr_dtype, ranks):
    """Tokens and router from numpy files; experts still generated from the seed."""
    N, d, E, k, cf, seed = 613, 40, 6, 2, "0.9", 5
    rng = np.random.default_rng(20240611)
    h = rng.standard_normal((N, d)) * 1.3
    zero_rows = [0, 17, 300, N - 1]  # all-zero tokens: z = 0 exactly, p = 1/E, a full tie
    h[zero_rows] = 0.0
    W = rng.standard_normal((E, d)) / np.sqrt(d)
    tpath = os.path.join(wd, tag + "_tokens.npy")
    rpath = os.path.join(wd, tag + "_router.npy")
    np.save(tpath, h.astype(tok_dtype))
    np.save(rpath, W.astype(rtr_dtype))
    # moesim holds both as float32, rounded from the file's values
    h32, W32 = h.astype(tok_dtype).astype(np.float32), W.astype(rtr_dtype).astype(np.float32)
    args = ["--tokens-file", tpath, "--router-file", rpath, "--top-k", k, "--capacity-factor", cf,
            "--seed", seed, "--iters", 1, "--warmup", 0]
    res = ck.guard(tag, mt.run_full, exe, ranks, args, wd, tag)
    if res is None:
        return
    ref = mt.Reference(h32, W32, lambda e: mt.gen_expert(seed, e, d, 2 * d), k, cf, "global",
                       ranks)
    compare(ck, tag, res, ref, N, d, E, k, 2 * d)
    expert, gate, acc = res.routing_matrix(k)
    ck.check(0 < N * k - acc.sum() < N * k // 4, tag + ": the case drops some assignments",
             "%d of %d dropped" % (N * k - acc.sum(), N * k))
    ck.equal(expert[zero_rows].tolist(), [list(range(k))] * len(zero_rows),
             tag + ": exact ties go to the lower expert id, best first")
    ck.equal(gate[zero_rows].tolist(), [[np.float32(1.0 / E)] * k] * len(zero_rows),
             tag + ": gate of a tied token is 1/E")
    c = res.json["config"]
    ck.equal((c["tokens_file"], c["router_file"]), (tpath, rpath),
             tag + ": config.tokens_file and router_file")


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_reference")
    wd = mt.workdir()
    # cf 1.0 with N k / E = 286 exactly: capacity 286, hot experts drop
    generated(ck, exe, wd, "gen_drops", 1001, 32, 7, 2, "1.0")
    generated(ck, exe, wd, "gen_dropless", 800, 16, 5, 2, "0", seed=11)
    generated(ck, exe, wd, "gen_renormalize_k3", 777, 48, 8, 3, "1.25", seed=4, renormalize=True)
    generated(ck, exe, wd, "gen_ffn48_k1", 500, 32, 4, 1, "0.9", seed=9, f=48)
    # 1.1 * 700 * 1 / 7 = 110 exactly in decimals but 110.00000000000001 in binary: the
    # documented guard keeps it at 110 slots, not 111
    res = generated(ck, exe, wd, "gen_cf1.1_guard", 700, 16, 7, 1, "1.1", seed=2)
    if res is not None:
        ck.equal(res.json["experts"][0]["capacity"], 110, "gen_cf1.1_guard: capacity 110 slots")
    from_files(ck, exe, wd, "files_f64tok_f32rtr_R1", np.float64, np.float32, 1)
    from_files(ck, exe, wd, "files_f32tok_f64rtr_R1", np.float32, np.float64, 1)
    from_files(ck, exe, wd, "files_f64tok_f32rtr_R3", np.float64, np.float32, 3)
    ck.finish()


if __name__ == "__main__":
    main()
