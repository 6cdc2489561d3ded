"""launch/moesim-plot on real moesim output and a hand-made sweep, in a temporary directory.

  - a run's JSON (2 ranks, 8 experts, top-2, --workload hot-experts, --capacity-factor
    1,1.25,1.5, 256 tokens): RUN-load, RUN-heatmap and RUN-drops in PNG and SVG beside it;
  - a --steps-csv file of an 8-step --mode train run: STEPS-steps.png/.svg;
  - a sweep directory (a sweep.csv fixture written here with moesim-sweep's header: experts 8,64
    x ranks 2,4 x cf 1,1.25, projected columns filled): plots/a2a, plots/drops and
    plots/a2a-projected; the same sweep without projected times: no a2a-projected;
  - with --out DIR and --format png: only PNGs, in DIR;
  - a run with --traffic-matrix summary: no heatmap, a note on stderr, exit 0;
  - every file is printed on stdout, is non-empty, PNGs start with the PNG signature, SVGs parse
    as XML, contain <svg and the figure's title (its first line, and the input's name);
  - when launch/moesim-sweep is there, a real 4-point sweep of it is plotted too;
  - errors exit 2 with one `moesim-plot: error:` line: a missing input, a file that is no moesim
    output, a truncated JSON, an unknown option, a bad --format, and a missing gnuplot (GNUPLOT
    pointing nowhere: the line names apt-get install gnuplot-nox).
"""

import os
import shutil
import tempfile
import xml.etree.ElementTree as ET

import launchtest as lt

PNG_SIG = b"\x89PNG\r\n\x1a\n"
SMALL = ["--tokens", "256", "--hidden", "32", "--ffn", "32", "--iters", "2"]

HEADER = ("point,json,ranks,experts,top_k,capacity_factor,tokens,hidden,ffn,preset,workload,"
          "dispatch,mode,capacity_scope,drop_policy,wire_dispatch,wire_combine,a2a,predict_only,"
          "seed,assignments,dropped_assignments,dropped_fraction,dropped_tokens,slots,empty_slots,"
          "wasted_fraction,flops_useful,flops_wasted,dispatch_bytes,combine_bytes,bytes_same_rank,"
          "bytes_same_numa,bytes_same_package,bytes_same_node,bytes_other_node,messages,"
          "dispatch_algbw,dispatch_busbw,combine_algbw,combine_busbw,router_ms,router_ms_max,"
          "count_exchange_ms,count_exchange_ms_max,dispatch_ms,dispatch_ms_max,expert_ms,"
          "expert_ms_max,combine_ms,combine_ms_max,unpack_ms,unpack_ms_max,step_ms,step_ms_max,"
          "projected_dispatch_ms,projected_combine_ms")


def sweep_fixture(path, projected=True):
    """A plausible sweep.csv: E 8,64 x R 2,4 x cf 1,1.25 (made-up but consistent numbers)."""
    cols = HEADER.split(",")
    rows = []
    for e in (8, 64):
        for r in (2, 4):
            for cf in (1, 1.25):
                a = 512
                slots = e * int(-(-cf * a // e))
                dropped = int(a * (0.12 if cf == 1 else 0.05) * (1.5 if e == 64 else 1))
                empty = slots - (a - dropped)
                dbytes = (a - dropped) * 128
                same = dbytes * 2 // r
                t = 0.02 * r + 0.001 * e
                rec = {
                    "point": "E%d-R%d-cf%g" % (e, r, cf), "json": "points/E%d-R%d-cf%g.json" % (e, r, cf),
                    "ranks": r, "experts": e, "top_k": 2, "capacity_factor": "%g" % cf,
                    "tokens": 256, "hidden": 32, "ffn": 64, "preset": "", "workload": "hot-experts",
                    "dispatch": "per-expert", "mode": "forward", "capacity_scope": "global",
                    "drop_policy": "position", "wire_dispatch": "fp32", "wire_combine": "fp32",
                    "a2a": "flat", "predict_only": "false", "seed": 1, "assignments": a,
                    "dropped_assignments": dropped, "dropped_fraction": "%.6g" % (dropped / a),
                    "dropped_tokens": 0, "slots": slots, "empty_slots": empty,
                    "wasted_fraction": "%.6g" % (empty / slots), "dispatch_bytes": dbytes,
                    "combine_bytes": dbytes, "bytes_same_rank": same, "messages": r * r * 2,
                    "dispatch_ms": "%.6g" % t, "dispatch_ms_max": "%.6g" % (t * 1.1),
                    "combine_ms": "%.6g" % t, "combine_ms_max": "%.6g" % (t * 1.2),
                    "step_ms": "%.6g" % (5 * t), "step_ms_max": "%.6g" % (6 * t),
                }
                if projected:
                    rec["projected_dispatch_ms"] = "%.6g" % (t / 3)
                    rec["projected_combine_ms"] = "%.6g" % (t / 3)
                rows.append(",".join(str(rec.get(c, "")) for c in cols))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(HEADER + "\n" + "\n".join(rows) + "\n")


def check_figure(ck, path, titles, printed, want_svg=True):
    """path without extension: its .png and .svg exist, are printed, are well formed."""
    exts = ("png", "svg") if want_svg else ("png",)
    for ext in exts:
        f = path + "." + ext
        ok = ck.check(os.path.isfile(f) and os.path.getsize(f) > 0, "%s written, non-empty" % f)
        ck.check(f in printed, "%s printed on stdout" % f, "stdout: %s" % sorted(printed))
        if not ok:
            continue
        with open(f, "rb") as fh:
            data = fh.read()
        if ext == "png":
            ck.check(data.startswith(PNG_SIG), "%s starts with the PNG signature" % f)
            continue
        text = data.decode("utf-8", "replace")
        ck.check("<svg" in text, "%s contains <svg" % f)
        try:
            ET.fromstring(data)
            parsed = True
        except ET.ParseError as exc:
            parsed = False
            ck.check(False, "%s parses as XML" % f, str(exc))
        if parsed:
            for t in titles:
                ck.check(t in text, "%s shows %r" % (f, t))


def printed_paths(run, cwd):
    return {os.path.normpath(os.path.join(cwd, line)) for line in run.stdout.splitlines() if line}


def main():
    moesim, launch = lt.paths()
    plot = os.path.join(launch, "moesim-plot")
    if not os.access(plot, os.X_OK):
        print("FAIL: no executable %s" % plot)
        return 1
    gnuplot = shutil.which("gnuplot")
    if gnuplot is None:
        lt.skip("gnuplot is not installed (apt-get install gnuplot-nox)")
    local = os.path.join(launch, "moesim-local")
    ck = lt.Checks()
    tmp = tempfile.mkdtemp(prefix="moesim-plot-test-")
    try:
        env = lt.clean_env(MOESIM=moesim, TMPDIR=tmp)

        # real runs
        r = lt.run([local, "-n", "2", "--moesim", moesim, "--", "--experts", "8", "--top-k", "2",
                    "--capacity-factor", "1,1.25,1.5", "--workload", "hot-experts",
                    "--json", os.path.join(tmp, "run.json"), "--quiet"] + SMALL, env=env)
        if not ck.check(r.returncode == 0, "moesim run with a cf list", r.describe()):
            ck.done("plot")
        r = lt.run([local, "-n", "2", "--moesim", moesim, "--", "--experts", "8", "--top-k", "2",
                    "--steps", "8", "--mode", "train", "--aux-loss-coeff", "0.01",
                    "--steps-csv", os.path.join(tmp, "train.csv"), "--quiet"] + SMALL, env=env)
        if not ck.check(r.returncode == 0, "moesim train run with --steps-csv", r.describe()):
            ck.done("plot")
        r = lt.run([local, "-n", "2", "--moesim", moesim, "--", "--experts", "8",
                    "--traffic-matrix", "summary", "--json", os.path.join(tmp, "summary.json"),
                    "--quiet"] + SMALL, env=env)
        ck.check(r.returncode == 0, "moesim run with --traffic-matrix summary", r.describe())
        sweep_fixture(os.path.join(tmp, "sw", "sweep.csv"))
        sweep_fixture(os.path.join(tmp, "sw-noproj", "sweep.csv"), projected=False)
        lt.say("inputs made")

        # everything at once
        r = lt.run([plot, "run.json", "train.csv", "sw"], env=env, cwd=tmp, timeout=120)
        ck.check(r.returncode == 0, "moesim-plot run.json train.csv sw exits 0", r.describe())
        got = printed_paths(r, tmp)
        t = os.path.join(tmp, "")
        check_figure(ck, t + "run-load", ["Expert load", "E=8 top-2, 256 tokens, 2 ranks",
                                          "workload hot-experts", "(run.json)",
                                          "hot expert (1 of 8: the most routed)", "capacity C = ",
                                          "capacity at cf 1.25 = "], got)
        check_figure(ck, t + "run-heatmap", ["Dispatch bytes, source rank x destination rank",
                                             "(run.json)", "destination rank", "KiB"], got)
        check_figure(ck, t + "run-drops", ["Drops and waste against capacity factor",
                                           "(run.json)", "dropped assignments"], got)
        check_figure(ck, t + "train-steps", ["Routing over steps", "8 steps, E=8 experts (train.csv)",
                                             "task loss", "Per-expert load"], got)
        check_figure(ck, t + "sw/plots/a2a", ["All-to-all bytes and time per step against expert count",
                                              "sweep sw: 8 points", "R=2", "R=4"], got)
        check_figure(ck, t + "sw/plots/drops", ["Dropped and wasted fraction against capacity factor",
                                                "sweep sw: 8 points", "E=8", "E=64"], got)
        check_figure(ck, t + "sw/plots/a2a-projected", ["Exchange time, measured against projected",
                                                        "measured = projected"], got)
        ck.check(len(got) == 14, "14 files printed", r.stdout)
        lt.say("run, steps and sweep plotted")

        # no projected columns: no a2a-projected; --out and --format png
        od = os.path.join(tmp, "out")
        r = lt.run([plot, "--out", od, "--format", "png", "sw-noproj", "summary.json"], env=env,
                   cwd=tmp, timeout=60)
        ck.check(r.returncode == 0, "sweep without projections, summary matrix: exit 0", r.describe())
        got = printed_paths(r, tmp)
        check_figure(ck, od + "/a2a", [], got, want_svg=False)
        check_figure(ck, od + "/drops", [], got, want_svg=False)
        check_figure(ck, od + "/summary-load", [], got, want_svg=False)
        ck.check(not os.path.exists(od + "/a2a-projected.png"), "no a2a-projected without projections")
        ck.check(not os.path.exists(od + "/summary-heatmap.png"), "no heatmap from a summary matrix")
        ck.check(not os.path.exists(od + "/summary-drops.png"), "no drops figure for one cf")
        ck.check(not [f for f in os.listdir(od) if f.endswith(".svg")], "--format png: no SVG")
        ck.check("summary-heatmap skipped" in r.stderr, "the skipped heatmap is noted", r.stderr)
        ck.check(not os.path.exists(os.path.join(tmp, "sw-noproj", "plots")),
                 "--out: nothing written into the sweep directory")

        # a real sweep, when moesim-sweep is there
        sweep = os.path.join(launch, "moesim-sweep")
        if os.access(sweep, os.X_OK):
            r = lt.run([sweep, "--out", os.path.join(tmp, "real"), "--experts", "4,8",
                        "--ranks", "2", "--capacity-factor", "1,1.25", "--", "--tokens", "128",
                        "--hidden", "16", "--ffn", "16", "--iters", "1"], env=env, timeout=120)
            if ck.check(r.returncode == 0, "moesim-sweep makes a real sweep", r.describe()):
                r = lt.run([plot, "--points", "real"], env=env, cwd=tmp, timeout=60)
                ck.check(r.returncode == 0, "moesim-plot --points on a real sweep", r.describe())
                got = printed_paths(r, tmp)
                check_figure(ck, t + "real/plots/a2a", ["sweep real: 4 points"], got)
                check_figure(ck, t + "real/plots/drops", ["a line per expert count"], got)
                check_figure(ck, t + "real/plots/E4-R2-cf1-load", ["Expert load"], got)
                check_figure(ck, t + "real/plots/E8-R2-cf1.25-heatmap", ["Dispatch bytes"], got)
            lt.say("real sweep plotted")
        else:
            lt.say("launch/moesim-sweep not there: real sweep not tried")

        # errors
        with open(os.path.join(tmp, "junk.txt"), "w") as fh:
            fh.write("hello\n")
        with open(os.path.join(tmp, "run.json")) as fh:
            whole = fh.read()
        with open(os.path.join(tmp, "cut.json"), "w") as fh:
            fh.write(whole[: len(whole) // 2])
        bad = [
            ([plot, "missing.json"], env, "a missing input"),
            ([plot, "junk.txt"], env, "a file that is no moesim output"),
            ([plot, "cut.json"], env, "a truncated JSON"),
            ([plot, "--colour", "run.json"], env, "an unknown option"),
            ([plot, "--format", "gif", "run.json"], env, "a bad --format"),
            ([plot], env, "no input"),
            ([plot, "run.json"], dict(env, GNUPLOT=os.path.join(tmp, "no-gnuplot")), "no gnuplot"),
        ]
        for cmd, e, what in bad:
            r = lt.run(cmd, env=e, cwd=tmp, timeout=30)
            lines = r.stderr.strip().splitlines()
            ck.check(r.returncode == 2, "%s: exit 2" % what, r.describe())
            ck.check(len(lines) == 1 and lines[0].startswith("moesim-plot: error:"),
                     "%s: one moesim-plot: error: line" % what, r.stderr)
            if what == "no gnuplot":
                ck.check("apt-get install gnuplot-nox" in r.stderr, "no gnuplot: names the package",
                         r.stderr)
        ck.check(not os.path.exists(os.path.join(tmp, "cut-load.png")),
                 "nothing drawn from a truncated JSON")
        r = lt.run([plot, "--help"], env=env, timeout=10)
        ck.check(r.returncode == 0 and "Usage:" in r.stdout, "--help prints usage", r.describe())
        lt.say("errors checked")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ck.done("plot")


if __name__ == "__main__":
    main()
