#!/bin/sh
# Smoke test of moe_bench (meson test suite 'bench'): usage: smoke.sh MOE_BENCH
# Exit 0 pass, 1 fail, 77 skipped (reason printed). Checks that a tiny run exits 0, prints the
# summary line with a verdict and writes its JSON, and that a refused configuration exits 2 with
# one error line. Never asserts on the ratios: timings on a shared machine are noise.
set -u
bench=${1:?usage: smoke.sh MOE_BENCH}
if ! command -v mpirun >/dev/null 2>&1; then
    echo "SKIP: mpirun is not on PATH"
    exit 77
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 MOESIM_NO_TTY=1
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
# Open MPI's session directories under a root of this test's own (tests/mpi/moetest.py says why)
export OMPI_MCA_orte_tmpdir_base="$tmp/ompi"

set -- mpirun --oversubscribe -n 2 "$bench" --tokens 512 --hidden 64 --experts 4 --iters 2 \
    --warmup 1 --json "$tmp/bench.json"
echo "+ $*"
"$@" >"$tmp/out" 2>"$tmp/err"
rc=$?
cat "$tmp/out" "$tmp/err"
if [ "$rc" -ne 0 ]; then
    echo "FAIL: moe_bench exited $rc"
    exit 1
fi
if ! grep -Eq '^# summary: (PASS|FAIL) \([0-9]+ of [0-9]+ goals met' "$tmp/out"; then
    echo "FAIL: no summary line with a verdict"
    exit 1
fi
if ! grep -q '"verdict": "\(PASS\|FAIL\)"' "$tmp/bench.json" 2>/dev/null; then
    echo "FAIL: --json did not write the verdict"
    exit 1
fi

# One expert cannot be spread over 2 ranks: refused before anything runs.
set -- mpirun --oversubscribe -n 2 "$bench" --tokens 512 --hidden 64 --experts 1 --top-k 1
echo "+ $*"
"$@" >"$tmp/out" 2>"$tmp/err"
rc=$?
cat "$tmp/out" "$tmp/err"
if [ "$rc" -ne 2 ]; then
    echo "FAIL: a refused configuration exited $rc, expected 2"
    exit 1
fi
if [ "$(grep -c '^moe_bench: error:' "$tmp/err")" -ne 1 ]; then
    echo "FAIL: expected exactly one 'moe_bench: error:' line"
    exit 1
fi
# bench/run.sh lists its runs (goals, scaling, planning) without running them; goals.py refuses a
# missing input with exit 2 and one error line. Timings are never judged here.
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$(dirname "$bench")/.." && pwd)
set -- bash "$here/run.sh" --dry-run --build "$build"
echo "+ $*"
if ! "$@" >"$tmp/out" 2>"$tmp/err"; then
    cat "$tmp/out" "$tmp/err"
    echo "FAIL: run.sh --dry-run failed"
    exit 1
fi
for want in "moe_bench --tokens 8192" "peer.py --tokens 128" "--ranks 16384" "--tokens 8192 --hidden 1024"; do
    if ! grep -qe "$want" "$tmp/out"; then
        cat "$tmp/out"
        echo "FAIL: run.sh --dry-run does not list '$want'"
        exit 1
    fi
done
if command -v python3 >/dev/null 2>&1; then
    python3 "$here/goals.py" goals --shape A 0.3 "$tmp/none.json" "$tmp/none.json" \
        "$tmp/none.json" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -ne 2 ] || [ "$(grep -c '^goals.py: error:' "$tmp/err")" -ne 1 ]; then
        cat "$tmp/out" "$tmp/err"
        echo "FAIL: goals.py on a missing file exited $rc, expected 2 with one error line"
        exit 1
    fi
fi
# the floors' sum behind goals.py's "floors alone" line, on a hand-made moe_bench JSON: raw
# dispatch 3 (its floor 5 less the pack's 2 where the dispatch gathers) + combine 4 + unpack 6
if command -v python3 >/dev/null 2>&1; then
    if ! PYTHONPATH="$here" python3 -c '
import goals
def doc(gathers):
    f = {"dispatch_exchange": 5.0, "pack": 2.0, "combine_exchange": 4.0, "unpack": 6.0}
    return {"shape": {"dispatch_gathers": gathers},
            "results": {k: {"floor_seconds": {"max": v}} for k, v in f.items()}}
got = goals.work_floors_s(doc(True), "t"), goals.work_floors_s(doc(False), "t")
assert got == (13.0, 15.0), got
'; then
        echo "FAIL: goals.work_floors_s"
        exit 1
    fi
fi
echo "PASS"
