"""--wire and --wire-combine (issue 10): rows travel as bf16 or fp8 (e4m3 with one fp32 scale per
128 channels), counted as they travel, with the error against fp32 rows measured in the run.

d = 200 (two fp8 blocks, the second partial), E 8, k 2, cf 1.0 so something drops; R = 1 .. 4 and
both capacity scopes; formats (dispatch/combine): fp32/fp32 (the reference run), bf16/fp32,
fp32/bf16, fp8 (whose combine defaults to bf16), fp8/fp32.
  - traffic.rows is the same matrix in every format, and equals the fp32 run's dispatch bytes / 4d;
  - dispatch bytes = rows x the dispatch row size (bf16 2d, fp8 d + 4 ceil(d/128), fp32 4d), and
    combine bytes = the transpose x the combine row size; wire.*_row_bytes say the same;
  - the routing CSV and every count equal the fp32 run's (formats change values, not decisions);
  - wire.y_error equals max |y - y_fp32| / max |y_fp32| and sqrt(sum (y - y_fp32)^2 / sum y_fp32^2)
    recomputed here from the two runs' --dump-output (rel 1e-9: the same float32 values, summed in
    another order), and is 0 < error < a loose bound (bf16 dispatch 1e-2, fp8 1e-1: each element
    of h is off by at most 2^-9 relative in bf16 and 2^-4 of its block's scale in e4m3; an expert
    output sums f of them);
  - fp8 is worse than bf16, and combining in bf16 after fp8 changes y again;
  - --a2a hierarchical with --ranks-per-node 2 gives y bit for bit equal to the flat exchange's in
    every format, the combine using its own two-level exchange when its rows differ;
  - --predict-only accepts the formats (y_error null); --wire-combine fp8 and bad names are refused.
"""

import json
import math

import numpy as np

import moetest as mt

N, D, E, K = 257, 200, 8, 2
BASE = ["--tokens", N, "--hidden", D, "--experts", E, "--top-k", K, "--capacity-factor", "1.0",
        "--iters", 1, "--warmup", 0, "--seed", 9]
FORMATS = [("bf16", "fp32"), ("fp32", "bf16"), ("fp8", None), ("fp8", "fp32")]
ROW = {"fp32": 4 * D, "bf16": 2 * D, "fp8": D + 4 * math.ceil(D / 128)}
BOUND = {"fp32": 1e-2, "bf16": 1e-2, "fp8": 1e-1}


def args_for(fmt):
    out, back = fmt
    a = ["--wire", out]
    if back is not None:
        a += ["--wire-combine", back]
    return a


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_wire_exchange")
    wd = mt.workdir()
    for scope in ("global", "local"):
        for R in (1, 2, 3, 4):
            tag0 = "%s_R%d" % (scope, R)
            base = BASE + ["--capacity-scope", scope]
            ref = ck.guard(tag0 + " fp32", mt.run_full, exe, R, base, wd, tag0 + "_fp32")
            if ref is None:
                continue
            rows = np.array(ref.json["traffic"]["rows"])
            ck.check(np.array_equal(rows * 4 * D, np.array(ref.json["traffic"]["dispatch_bytes"])),
                     tag0 + ": fp32 dispatch bytes = rows x 4d")
            ck.equal(ref.json["wire"]["y_error"], None, tag0 + ": no y_error for fp32 rows")
            errors = {}
            for fmt in FORMATS:
                out = fmt[0]
                back = fmt[1] or ("bf16" if out == "fp8" else "fp32")
                tag = "%s_%s_%s" % (tag0, out, back)
                r = ck.guard(tag, mt.run_full, exe, R, base + args_for(fmt), wd, tag)
                if r is None:
                    continue
                w, tr = r.json["wire"], r.json["traffic"]
                ck.equal((w["dispatch"], w["combine"]), (out, back), tag + ": wire formats")
                ck.equal((w["dispatch_row_bytes"], w["combine_row_bytes"]), (ROW[out], ROW[back]),
                         tag + ": row bytes")
                ck.check(np.array_equal(np.array(tr["rows"]), rows), tag + ": rows as fp32's")
                ck.check(np.array_equal(np.array(tr["dispatch_bytes"]), rows * ROW[out]),
                         tag + ": dispatch bytes = rows x row bytes")
                ck.check(np.array_equal(np.array(tr["combine_bytes"]), rows.T * ROW[back]),
                         tag + ": combine bytes = rows^T x combine row bytes")
                ck.check(r.routing["text"] == ref.routing["text"], tag + ": routing as fp32's")
                ck.equal(r.json["experts"], ref.json["experts"], tag + ": experts as fp32's")
                ck.equal(r.json["drops"], ref.json["drops"], tag + ": drops as fp32's")
                y, y32 = r.y.astype(np.float64), ref.y.astype(np.float64)
                max_rel = np.abs(y - y32).max() / np.abs(y32).max()
                rms_rel = math.sqrt(((y - y32) ** 2).sum() / (y32 ** 2).sum())
                e = w["y_error"]
                if ck.check(e is not None, tag + ": y_error reported"):
                    ck.close(e["max_rel"], max_rel, tag + ": y_error.max_rel recomputed", 1e-9, 0)
                    ck.close(e["rms_rel"], rms_rel, tag + ": y_error.rms_rel recomputed", 1e-9, 0)
                    worst = BOUND[out] if out != "fp32" else BOUND[back]
                    ck.check(0 < e["max_rel"] < worst, tag + ": 0 < max_rel < %g" % worst,
                             "%r" % e)
                errors[(out, back)] = max_rel
            if ("bf16", "fp32") in errors and ("fp8", "fp32") in errors:
                ck.check(errors[("fp8", "fp32")] > errors[("bf16", "fp32")],
                         tag0 + ": fp8 dispatch errs more than bf16")
            if ("fp8", "fp32") in errors and ("fp8", "bf16") in errors:
                ck.check(errors[("fp8", "bf16")] != errors[("fp8", "fp32")],
                         tag0 + ": a bf16 combine changes y")

    # the two-level exchange moves the same encoded rows
    for fmt in [("fp32", None)] + FORMATS:
        tag = "hier_%s_%s" % (fmt[0], fmt[1])
        a = BASE + ["--ranks-per-node", 2] + (args_for(fmt) if fmt[0] != "fp32" or fmt[1] else [])
        flat = ck.guard(tag + " flat", mt.run_full, exe, 4, a, wd, tag + "_flat", routing=False)
        hier = ck.guard(tag + " hier", mt.run_full, exe, 4, a + ["--a2a", "hierarchical"], wd,
                        tag + "_hier", routing=False)
        if flat is not None and hier is not None:
            ck.check(np.array_equal(flat.y, hier.y), tag + ": two-level y == flat y, bit for bit")
            ck.equal(hier.json["traffic"]["combine_bytes"], flat.json["traffic"]["combine_bytes"],
                     tag + ": combine bytes")

    r = mt.run(exe, 2, BASE + ["--wire", "fp8", "--predict-only", "--quiet", "--json", "-"])
    ck.equal(r.returncode, 0, "--predict-only --wire fp8 runs")
    if r.returncode == 0:
        doc = json.loads(r.stdout)
        ck.equal((doc["wire"]["dispatch"], doc["wire"]["combine"], doc["wire"]["y_error"]),
                 ("fp8", "bf16", None), "--predict-only: formats, no y_error")
    mt.check_refused(ck, exe, "combine_fp8", 2, BASE + ["--wire-combine", "fp8"],
                     ["--wire-combine must be", "'fp8'"], wd)
    mt.check_refused(ck, exe, "bad_wire", 2, BASE + ["--wire", "fp16"], ["--wire must be"], wd)
    return ck.finish()


if __name__ == "__main__":
    raise SystemExit(main())
