"""--mode dispatch (issue 10): identity experts, so the step is the exchange.

For R = 1 .. 4 and both capacity scopes, on a batch that drops (cf 0.8) and with
--drop-policy reroute at cf 1.0 (rows travel to another expert than the router chose):
  - y equals, bit for bit, h + the gate-weighted sum of h over the served assignments, computed
    here in float32 in the order moesim sums (expert id order per token), from the CSV's gates and
    flags: y_t = (((h_t + g_1 h_t) + g_2 h_t) ...). No tolerance: every operand is a float32 that
    moesim and numpy round the same way (one multiply and one add per term, no fused multiply-add
    in C11 mode on this target), so any difference is a wrong row or a wrong gate.
  - the routing, every count and the traffic matrix equal those of --mode forward on the same
    batch (the experts do not change what moves);
  - the experts are the identity (y above proves it; no timing is compared: under oversubscription
    a rank descheduled between two clock reads makes any time bound flaky), config.mode is
    "dispatch", and the memory estimate is smaller (no weights, no activation);
  - --predict-only --mode dispatch runs and reports config.mode;
  - --shared-experts is left out in dispatch mode (waste.flops_shared is 0, y as above);
  - a bad --mode value is refused with one line naming the option.
"""

import numpy as np

import moetest as mt

N, D, E, K = 301, 16, 6, 2
BASE = ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", K, "--capacity-factor", "0.8",
        "--iters", 2, "--warmup", 0, "--seed", 5]


def expected_y(h, rt):
    """h + sum of gate * h over the served rows, per token in expert id order, float32."""
    y = h.copy()
    served = rt["accepted"] == 1
    tok, exp, gate = rt["token"][served], rt["expert"][served], rt["gate"][served]
    order = np.lexsort((exp, tok))
    for t, g in zip(tok[order], gate[order]):
        y[t] = y[t] + np.float32(g) * h[t]
    return y


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_modes")
    wd = mt.workdir()
    h = mt.gen_tokens(5, N, D).astype(np.float32)
    for scope in ("global", "local"):
        for policy in ("position", "reroute"):
            # reroute at cf 1.0, where some experts keep room for the others' overflow
            cf = ["--capacity-factor", "1.0"] if policy == "reroute" else []
            args = BASE + ["--capacity-scope", scope, "--drop-policy", policy] + cf
            for R in (1, 2, 3, 4):
                tag = "%s_%s_R%d" % (scope, policy, R)
                fwd = ck.guard(tag + " forward", mt.run_full, exe, R, args, wd, tag + "_fwd")
                dis = ck.guard(tag + " dispatch", mt.run_full, exe, R, args + ["--mode", "dispatch"],
                               wd, tag + "_dis")
                if fwd is None or dis is None:
                    continue
                y_ref = expected_y(h, dis.routing)
                ck.check(np.array_equal(dis.y, y_ref), tag + ": y = h + sum gate * h, bit for bit",
                         "max |dy| = %g" % float(np.abs(dis.y - y_ref).max()))
                ck.check(dis.routing["text"] == fwd.routing["text"],
                         tag + ": routing CSV identical to --mode forward")
                for key in ("experts", "drops"):
                    ck.equal(dis.json[key], fwd.json[key], tag + ": JSON " + key + " as forward")
                ck.equal(dis.json["traffic"]["dispatch_bytes"], fwd.json["traffic"]["dispatch_bytes"],
                         tag + ": dispatch bytes as forward")
                ck.equal(dis.json["config"]["mode"], "dispatch", tag + ": config.mode")
                ck.equal(fwd.json["config"]["mode"], "forward", tag + ": config.mode forward")
                ck.check(dis.json["memory"]["estimate_bytes"] < fwd.json["memory"]["estimate_bytes"],
                         tag + ": no expert weights or activations in the estimate")
                if policy == "reroute":
                    ck.check(dis.json["drops"]["rerouted"] > 0, tag + ": rows were rerouted")

    # shared experts are left out: y as above, no shared time
    sh = ck.guard("shared", mt.run_full, exe, 2,
                  BASE + ["--mode", "dispatch", "--shared-experts", 2], wd, "shared")
    if sh is not None:
        ck.check(np.array_equal(sh.y, expected_y(h, sh.routing)),
                 "shared experts in dispatch mode: y = h + sum gate * h")
        ck.equal(sh.json["waste"]["flops_shared"], 0.0, "no shared experts' work in dispatch mode")

    # --predict-only
    r = mt.run(exe, 2, BASE + ["--mode", "dispatch", "--predict-only", "--quiet", "--json", "-"])
    ck.equal(r.returncode, 0, "--predict-only --mode dispatch runs")
    if r.returncode == 0:
        import json
        ck.equal(json.loads(r.stdout)["config"]["mode"], "dispatch", "--predict-only config.mode")

    # refusal
    mt.check_refused(ck, exe, "bad_mode", 2, BASE + ["--mode", "backward"],
                     ["--mode must be", "'backward'"], wd)
    return ck.finish()


if __name__ == "__main__":
    raise SystemExit(main())
