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
export OMPI_MCA_orte_tmpdir_base=$tmp/ompi

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
echo "PASS"
