#!/usr/bin/env python3
"""The goals of issue 11, judged from the JSON files that bench/run.sh writes.

Three commands, one per section of bench/run.sh (bench/README.md says how each figure is made):

  goals.py goals --shape NAME PEER_GOAL MOE_BENCH_JSON MOESIM_JSON PEER_JSON [--shape ...]
      One table per shape: moe_bench's eight rows (moesim against its floor, with moe_bench's own
      goal and verdict), moesim's non-GEMM time against the mpi4py + NumPy peer's (goal: at most
      PEER_GOAL times the peer's), and moesim's peak RSS against the bytes its buffers need (goal:
      at most 1.25x); then the phases beside the peer's, and a final "goals: N of M PASS" line.
  goals.py scaling [--cores N] MOESIM_JSON...
      The scaling table: one row per moesim run (normally R = 1, 2, 3, 4, 8 at a fixed per-rank
      load).
  goals.py planning [--timeout S] --run LABEL STATUS WALL_S JSON MESSAGE [--run ...]
      The large-R planning table: wall time (goal: under 60 s) and peak RSS (goal: under 4 GiB) of
      each --predict-only run, STATUS being ok, refused, timeout or failed; a final
      "planning: N of M PASS" line.

A FAIL is a measurement: the exit status is 0 whatever the verdicts. It is 2, after one
"goals.py: error:" line, when an input file is missing, is not JSON or lacks a key that is needed.
Plain Python 3.11 standard library.
"""
import argparse
import json
import mmap
import re
import sys

# moe_bench's rows (results.<key> in its JSON), in its order, with their labels.
BENCH_ROWS = (
    ("dispatch_step", "dispatch, step phase"),
    ("dispatch_exchange", "dispatch, exchange only"),
    ("combine_step", "combine, step phase"),
    ("combine_exchange", "combine, exchange only"),
    ("pack", "pack"),
    ("regroup", "regroup, both ways"),
    ("unpack", "unpack"),
    ("expert", "expert"),
)

# moesim's phases that make its non-GEMM time: everything in the step but the experts and the
# three barrier waits (count_wait, dispatch_wait, combine_wait), whose counterparts in the peer
# are untimed barriers.
NON_GEMM = ("router", "count_exchange", "pack", "dispatch", "regroup", "combine", "unpack")
WAITS = ("count_wait", "dispatch_wait", "combine_wait")

# The peer's phases (bench/peer.py's "phases" keys) and moesim's phase for each.
PEER_PHASES = (
    ("router", "router"),
    ("counts", "count_exchange"),
    ("pack", "pack"),
    ("dispatch", "dispatch"),
    ("regroup", "regroup"),
    ("expert", "expert"),
    ("combine", "combine"),
    ("unpack", "unpack"),
)

RSS_GOAL = 1.25  # peak RSS over what the buffers need
PLAN_SECONDS = 60.0  # a --predict-only plan at large R: under a minute ...
PLAN_BYTES = 4 << 30  # ... and under 4 GiB
MIB = float(1 << 20)

# What each row of a shape's table compares, printed under it.
FOOTNOTE = (
    "ratio = moesim / floor (or reference), both the slowest rank's median; PASS when ratio <= goal.",
    "The eight moe_bench rows come from its run (moesim and floor interleaved in one process):",
    "  dispatch, combine: floor = raw MPI_Alltoallv of the same byte matrix as MPI_BYTE; goal",
    "    1/0.95 (0.95x its speed). step phase = moe_layer_step's phase, after its barrier;",
    "    exchange only = moe_layer_exchange (the step's own exchange) alone, behind a barrier.",
    "    Where the dispatch gathers its rows from h itself (no pack phase: alltoallw's dispatch,",
    "    fp32 rows; moe_bench's shape.dispatch_gathers), its floor is the raw exchange plus the",
    "    pack's memcpy. The step's combine starts right after the experts: its floor is the raw",
    "    combine timed right after the sgemm floor, sending the rows the sgemm wrote (the",
    "    caches as the step leaves them); the combine alone keeps the raw pair's floor.",
    "  pack: floor = one memcpy of n_send x d x 4 bytes; goal 1/0.9 (0.9x memcpy's speed).",
    "  unpack: floor = memcpy of the residual, n x d x 4 bytes, plus memcpy of n_send x d x 4",
    "    from the rows that raw combine after the sgemm delivered (the unpack follows the",
    "    combine in the step); goal 1/0.9.",
    "  regroup: goal none: PASS when the phase is absent (its median under 10 us); the floor",
    "    column is two memcpy of n_recv x d x 4 bytes, what a copy regroup would cost.",
    "  expert: floor = the same two cblas_sgemm per local expert, same shapes, no GELU; goal 1.05.",
    "The last two rows and the phase table come from the moesim run (--raw-baseline off):",
    "  non-GEMM: moesim's router + count_exchange + pack + dispatch + regroup + combine + unpack",
    "    (each phase's slowest rank, summed; the barrier waits excluded) against the peer's",
    "    non_gemm_s (bench/peer.py: the slowest rank's median of its step minus its expert",
    "    phase; its barriers are untimed).",
    "  floors alone: not a goal; the floors above of the work any layer of this shape does",
    "    besides its GEMMs: the two raw MPI_Alltoallv (the dispatch's floor less the pack's",
    "    memcpy where it gathers) plus the unpack's memcpy floor, against the peer's non-GEMM.",
    "    Above PEER_GOAL, the non-GEMM goal cannot be met on this machine by any layer that",
    "    moves all these fp32 bytes with MPI_Alltoallv (the router and the counts left out);",
    "    moesim's own rows do not enter MPI (docs/model.md, --regroup), so it can read below.",
    "  peak RSS: (peak_rss - baseline_rss) / (estimate_bytes - the raw-baseline buffer,",
    "    max(rows sent, rows received) x d x 4 bytes, allocated but untouched), worst rank.",
)


class InputError(Exception):
    """A missing, unreadable or malformed input file: exit 2."""


def load(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not JSON: {err}") from None


def get(doc, path, dotted):
    """doc's value at the dotted key, e.g. get(d, p, "timing.router.max"); InputError if absent."""
    value = doc
    for key in dotted.split("."):
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise InputError(f"{path} has no key {dotted}")
    return value


def number(doc, path, dotted):
    value = get(doc, path, dotted)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{path}: {dotted} is {value!r}, not a number")
    return value


def phase_s(moesim, path, phase):
    """The slowest rank's median time of one moesim phase, seconds."""
    return number(moesim, path, f"timing.{phase}.max")


def non_gemm_s(moesim, path):
    return sum(phase_s(moesim, path, p) for p in NON_GEMM)


def work_floors_s(bench, path):
    """The floors of the work every implementation of the layer does outside its GEMMs, from
    moe_bench's run: the two raw MPI_Alltoallv of the step's byte matrices (the dispatch's floor
    less the pack's memcpy where the dispatch gathers its rows) and the unpack's memcpy floor, as
    its goal defines it. Seconds, each the slowest rank's median."""
    def floor(key):
        return number(bench, path, f"results.{key}.floor_seconds.max")
    dispatch = floor("dispatch_exchange")
    if get(bench, path, "shape.dispatch_gathers"):
        dispatch -= floor("pack")
    return dispatch + floor("combine_exchange") + floor("unpack")


def verdict(ok):
    return "PASS" if ok else "FAIL"


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


# ---- goals -------------------------------------------------------------------------------------


def rows_per_rank(moesim, path):
    """(rows each rank sends, rows each receives): traffic.rows_sent and rows_received, or, in a
    JSON that predates them, the row and column sums of traffic.rows."""
    traffic = get(moesim, path, "traffic")
    if isinstance(traffic, dict) and "rows_sent" in traffic and "rows_received" in traffic:
        sent, received = traffic["rows_sent"], traffic["rows_received"]
        if not (isinstance(sent, list) and isinstance(received, list)
                and len(sent) == len(received)):
            raise InputError(f"{path}: traffic.rows_sent and rows_received are not two lists "
                             f"of one length")
        return sent, received
    rows = get(moesim, path, "traffic.rows")
    if not (isinstance(rows, list)
            and all(isinstance(row, list) and len(row) == len(rows) for row in rows)):
        raise InputError(f"{path}: traffic.rows is not a square matrix")
    return [sum(row) for row in rows], [sum(column) for column in zip(*rows)]


def rss_figures(moesim, path):
    """(ratio, used bytes, needed bytes, rank) of the rank with the largest peak RSS ratio.

    used = peak_rss - baseline_rss (what moesim added to the process after MPI_Init); needed =
    estimate_bytes minus the raw-baseline buffer, which moesim allocates but, with --raw-baseline
    off, never touches: max(rows rank r sends, rows it receives) x hidden x 4 bytes, the row and
    column sums of traffic.rows (traffic.rows_sent, traffic.rows_received)."""
    sent, received = rows_per_rank(moesim, path)
    hidden = number(moesim, path, "config.hidden")
    worst = None
    for i in range(len(get(moesim, path, "memory.per_rank"))):
        where = f"memory.per_rank.{i}"
        r = number(moesim, path, f"{where}.rank")
        if not 0 <= r < len(sent):
            raise InputError(f"{path}: {where}.rank {r} is not one of the {len(sent)} ranks")
        raw = max(sent[r], received[r]) * hidden * 4
        used = number(moesim, path, f"{where}.peak_rss_bytes") - number(
            moesim, path, f"{where}.baseline_rss_bytes")
        needed = number(moesim, path, f"{where}.estimate_bytes") - raw
        ratio = used / needed if needed > 0 else float("inf")
        if worst is None or ratio > worst[0]:
            worst = (ratio, used, needed, r)
    if worst is None:
        raise InputError(f"{path}: memory.per_rank is empty")
    return worst


def check_same_shape(name, files):
    """The three runs of one shape must describe the same layer."""
    (bench, bench_path), (moesim, moesim_path), (peer, peer_path) = files
    for key in ("tokens", "hidden", "experts", "top_k", "capacity_factor"):
        values = {number(doc, path, f"config.{key}") for doc, path in files}
        if len(values) > 1:
            raise InputError(f"shape {name}: config.{key} differs between {bench_path}, "
                             f"{moesim_path} and {peer_path}")
    ranks = {number(bench, bench_path, "run.ranks"), number(moesim, moesim_path, "config.ranks"),
             number(peer, peer_path, "config.ranks")}
    if len(ranks) > 1:
        raise InputError(f"shape {name}: the ranks differ between {bench_path}, {moesim_path} "
                         f"and {peer_path}")
    for doc, path in files[:2]:  # the peer always groups capacity by source rank
        if get(doc, path, "config.capacity_scope") != "local":
            raise InputError(f"shape {name}: {path} is not in local capacity scope, as the peer is")


def shape_table(name, peer_goal, bench_path, moesim_path, peer_path):
    """Print one shape's table; return the list of its verdicts (True = PASS)."""
    bench, moesim, peer = load(bench_path), load(moesim_path), load(peer_path)
    for doc, path, what, key in ((bench, bench_path, "moe_bench", "benchmark"),
                                 (moesim, moesim_path, "moesim", "timing"),
                                 (peer, peer_path, "bench/peer.py", "non_gemm_s")):
        if not isinstance(doc, dict) or key not in doc or (
                what == "moe_bench" and doc[key] != "moe_bench"):
            raise InputError(f"{path} is not a {what} JSON (no {key} key)")
    check_same_shape(name, [(bench, bench_path), (moesim, moesim_path), (peer, peer_path)])
    c = {key: get(moesim, moesim_path, f"config.{key}") for key in
         ("ranks", "tokens", "hidden", "ffn", "experts", "top_k", "capacity_factor",
          "capacity_scope")}
    ranks = c["ranks"]
    load_avg = get(bench, bench_path, "run.load_average")
    env = get(moesim, moesim_path, "environment")
    print(f"shape {name}: {ranks} ranks, tokens {c['tokens']} ({c['tokens'] // ranks} per rank), "
          f"hidden {c['hidden']}, ffn {c['ffn']}, experts {c['experts']}, top-k {c['top_k']},")
    print(f"  capacity factor {c['capacity_factor']:g}, {c['capacity_scope']} scope")
    print(f"  load average before: moe_bench {fmt(load_avg, '.2f')}, moesim "
          f"{fmt(env.get('load_average_start'), '.2f')} (at its end "
          f"{fmt(env.get('load_average_end'), '.2f')}); {env.get('cores')} cores")
    head = ("quantity", "unit", "moesim", "floor/ref", "ratio", "goal", "verdict")
    line = "  {:<26} {:>4} {:>10} {:>10} {:>8} {:>8}  {}"
    print(line.format(*head))
    verdicts = []
    for key, label in BENCH_ROWS:
        row = f"results.{key}"
        moesim_ms = number(bench, bench_path, f"{row}.moesim_seconds.max") * 1e3
        floor_ms = number(bench, bench_path, f"{row}.floor_seconds.max") * 1e3
        ratio, goal = get(bench, bench_path, f"{row}.ratio"), get(bench, bench_path, f"{row}.goal")
        said = get(bench, bench_path, f"{row}.verdict")
        if said not in ("PASS", "FAIL"):
            raise InputError(f"{bench_path}: {row}.verdict is {said!r}")
        verdicts.append(said == "PASS")
        goal_text = "none" if goal is None else f"<={goal:.3f}"
        print(line.format(label, "ms", f"{moesim_ms:.3f}", f"{floor_ms:.3f}", fmt(ratio, ".3f"),
                          goal_text, said))

    mine, theirs = non_gemm_s(moesim, moesim_path), number(peer, peer_path, "non_gemm_s")
    ratio = mine / theirs if theirs > 0 else float("inf")
    verdicts.append(ratio <= peer_goal)
    print(line.format("non-GEMM vs peer", "ms", f"{mine * 1e3:.3f}", f"{theirs * 1e3:.3f}",
                      f"{ratio:.3f}", f"<={peer_goal:.3f}", verdict(verdicts[-1])))
    floors = work_floors_s(bench, bench_path)
    floor_ratio = floors / theirs if theirs > 0 else float("inf")
    print(line.format("  floors alone vs peer", "ms", f"{floors * 1e3:.3f}", f"{theirs * 1e3:.3f}",
                      f"{floor_ratio:.3f}", "info", "below the goal" if floor_ratio <= peer_goal
                      else "above the goal"))

    ratio, used, needed, rank = rss_figures(moesim, moesim_path)
    verdicts.append(ratio <= RSS_GOAL)
    print(line.format(f"peak RSS (rank {rank})", "MiB", f"{used / MIB:.1f}", f"{needed / MIB:.1f}",
                      f"{ratio:.3f}", f"<={RSS_GOAL:.3f}", verdict(verdicts[-1])))

    print(f"  {'phase':<26} {'moesim ms':>10} {'peer ms':>10} {'moesim/peer':>12}")
    for peer_name, moesim_name in PEER_PHASES:
        a = phase_s(moesim, moesim_path, moesim_name)
        b = number(peer, peer_path, f"phases.{peer_name}")
        label = peer_name if peer_name == moesim_name else f"{peer_name} ({moesim_name})"
        print(f"  {label:<26} {a * 1e3:>10.3f} {b * 1e3:>10.3f} "
              f"{fmt(a / b if b > 0 else None, '>12.2f')}")
    waits = sum(phase_s(moesim, moesim_path, w) for w in WAITS)
    print(f"  {'barrier waits (excluded)':<26} {waits * 1e3:>10.3f} {'untimed':>10}")
    step, peer_step = phase_s(moesim, moesim_path, "step"), number(peer, peer_path, "step_s")
    print(f"  {'step':<26} {step * 1e3:>10.3f} {peer_step * 1e3:>10.3f} "
          f"{fmt(step / peer_step if peer_step > 0 else None, '>12.2f')}")
    print(f"  (peer: mpi4py {peer.get('mpi4py')}, NumPy {peer.get('numpy')}, tanh GELU; "
          f"moesim's step includes its barrier waits)")
    print()
    return verdicts


def goals_cmd(args):
    verdicts = []
    for name, peer_goal, bench_path, moesim_path, peer_path in args.shape:
        try:
            goal = float(peer_goal)
        except ValueError:
            raise InputError(f"shape {name}: PEER_GOAL {peer_goal!r} is not a number") from None
        verdicts += shape_table(name, goal, bench_path, moesim_path, peer_path)
    for note in FOOTNOTE:
        print(note)
    print(f"goals: {sum(verdicts)} of {len(verdicts)} PASS")


# ---- scaling -----------------------------------------------------------------------------------


def scaling_cmd(args):
    line = "{:>3} {:>7} {:>5} {:>3} {:>2} {:>10} {:>11} {:>11} {:>10} {:>10} {:>12}"
    print(line.format("R", "tokens", "d", "E", "k", "step ms", "non-GEMM ms", "dispatch ms",
                      "combine ms", "expert ms", "dispatch GB/s"))
    for path in args.json:
        doc = load(path)
        c = {key: number(doc, path, f"config.{key}")
             for key in ("ranks", "tokens", "hidden", "experts", "top_k")}
        step = get(doc, path, "timing.step.max")
        if step is None:
            step = sum(phase_s(doc, path, p) for p in NON_GEMM + WAITS + ("expert",))
        algbw = number(doc, path, "bandwidth.dispatch.algbw")
        print(line.format(c["ranks"], c["tokens"], c["hidden"], c["experts"], c["top_k"],
                          f"{step * 1e3:.2f}", f"{non_gemm_s(doc, path) * 1e3:.2f}",
                          f"{phase_s(doc, path, 'dispatch') * 1e3:.3f}",
                          f"{phase_s(doc, path, 'combine') * 1e3:.3f}",
                          f"{phase_s(doc, path, 'expert') * 1e3:.2f}", f"{algbw / 1e9:.2f}"))
    print("Times: the slowest rank's median over the timed steps (timing.<phase>.max); step")
    print("  includes the barrier waits; non-GEMM as in the goals (router + count_exchange + pack +")
    print("  dispatch + regroup + combine + unpack).")
    print("dispatch GB/s: bandwidth.dispatch.algbw, the busiest sender's bytes (its own block")
    print("  included) over the dispatch time; at R = 1 a copy to itself.")
    cores = f"{args.cores}" if args.cores else "the"
    print(f"Note: R above the machine's {cores} cores (nproc) runs oversubscribed: those rows")
    print("  measure the OS scheduler, not the layer.")


# ---- planning ----------------------------------------------------------------------------------


def plan_peak_rss(path):
    """memory.peak_rss_bytes of a --predict-only JSON, without parsing the whole file.

    At R = 4096 the file is over 500 MB, which json.load would take gigabytes to hold; the
    top-level "memory" object (docs/json.md) is small, so it alone is decoded, found as the last
    "memory" key in the file."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
            at = m.rfind(b'"memory"')
            found = re.compile(rb'"memory"\s*:\s*').match(m, at) if at >= 0 else None
            if found is None:
                raise InputError(f"{path} has no key memory")
            text = m[found.end():found.end() + (1 << 20)].decode("utf-8", "replace")
    except (OSError, ValueError) as err:  # ValueError: mmap of an empty file
        raise InputError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        memory, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: its memory object is not JSON: {err}") from None
    return number({"memory": memory}, path, "memory.peak_rss_bytes")


def planning_cmd(args):
    line = "  {:<42} {:>8} {:>10} {:>10}  {}"
    print(line.format("plan (--predict-only, 1 process)", "wall s", "peak RSS", "JSON", "verdict"))
    verdicts = []
    for label, status, wall_text, path, message in args.run:
        try:
            wall = float(wall_text) if wall_text else None
        except ValueError:
            raise InputError(f"run {label}: WALL_S {wall_text!r} is not a number") from None
        if status == "ok":
            peak = plan_peak_rss(path)
            try:
                with open(path, "rb") as fh:
                    size = fh.seek(0, 2)
            except OSError as err:
                raise InputError(f"cannot read {path}: {err.strerror}") from None
            ok = wall is not None and wall < PLAN_SECONDS and peak < PLAN_BYTES
            verdicts.append(ok)
            print(line.format(label, fmt(wall, ".1f"), f"{peak / MIB:.0f} MiB",
                              f"{size / MIB:.0f} MiB", verdict(ok)))
            continue
        verdicts.append(False)
        if status == "refused":
            what = f"FAIL  refused: {message}"
        elif status == "timeout":
            what = f"FAIL  timeout: stopped after {args.timeout:g} s"
        else:
            what = f"FAIL  failed: {message}"
        print(line.format(label, fmt(wall, ".1f"), "-", "-", what))
    print(f"  goals: wall time under {PLAN_SECONDS:g} s (mpirun's start included) and peak RSS")
    print(f"  (memory.peak_rss_bytes: the planning process's) under {PLAN_BYTES >> 30} GiB; JSON = "
          f"the file's size")
    print(f"planning: {sum(verdicts)} of {len(verdicts)} PASS")


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv):
    class Parser(argparse.ArgumentParser):
        def error(self, message):
            self.exit(2, f"goals.py: error: {message} (see --help)\n")

    p = Parser(prog="goals.py", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("goals", help="the goal tables of one or more shapes")
    g.add_argument("--shape", nargs=5, action="append", required=True,
                   metavar=("NAME", "PEER_GOAL", "MOE_BENCH_JSON", "MOESIM_JSON", "PEER_JSON"))
    s = sub.add_parser("scaling", help="the scaling table")
    s.add_argument("--cores", type=int, help="the machine's cores, for the note (nproc)")
    s.add_argument("json", nargs="+", metavar="MOESIM_JSON")
    n = sub.add_parser("planning", help="the large-R planning table")
    n.add_argument("--timeout", type=float, default=300.0, help="the runs' timeout, seconds")
    n.add_argument("--run", nargs=5, action="append", required=True,
                   metavar=("LABEL", "STATUS", "WALL_S", "JSON", "MESSAGE"))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    command = {"goals": goals_cmd, "scaling": scaling_cmd, "planning": planning_cmd}
    try:
        command[args.command](args)
    except InputError as err:
        sys.stdout.flush()
        print(f"goals.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
