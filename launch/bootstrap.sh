#!/usr/bin/env bash
# The README's two commands: set up a fresh Debian machine, build, then either run the default
# scenario (`run`) or the whole test suite (`test`). Safe to repeat: it installs only what is missing.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: bash launch/bootstrap.sh run|test [extra moesim options for run]

  run    install what is missing, build, run the default scenario under mpirun
  test   install what is missing (plus the test tools), build, run every test suite, and end with
         one line "N passed, N failed, N skipped"
Installing needs root (apt-get); as another user it prints the exact command to run instead.
USAGE
}

mode=${1:-}
case "$mode" in
    run|test) shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

packages=(openmpi-bin libopenmpi-dev libhwloc-dev hwloc check meson ninja-build pkg-config
          gcc libc6-dev libopenblas-dev libjansson-dev gnuplot-nox bsdextrautils)
[ "$mode" = test ] && packages+=(python3 python3-numpy)
# the sanitizer and fuzz builds: gcc's ASan/UBSan come with gcc; clang, its libFuzzer runtime
# (libclang_rt.fuzzer) and llvm-symbolizer (readable stacks in clang's sanitizer reports)
[ "$mode" = test ] && packages+=(clang libclang-rt-dev llvm)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "== installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "moesim bootstrap: missing Debian packages. Run, then retry:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

echo "== building in build/"
if [ -f build/build.ninja ]; then
    meson setup --reconfigure build >/dev/null
else
    meson setup build >/dev/null
fi
ninja -C build >/dev/null

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ "$mode" = run ]; then
    echo "== default scenario"
    exec launch/moesim-local "$@"
fi

echo "== test suites (meson test)"
status=0
started=$SECONDS
# a log name of its own, so that another meson test in the same tree cannot replace it
rm -f build/meson-logs/bootstrap.json
meson test -C build --print-errorlogs --logbase bootstrap || status=$?
echo "== normal suites: $((SECONDS - started)) s"

# configure_build DIR CC MESON-OPTIONS...: set DIR up with compiler CC, or apply the options to it
# if it exists (it keeps the compiler it was set up with). `meson configure`, because meson 1.0's
# `setup --reconfigure` ignores a changed c_args.
configure_build() {
    local dir=$1 compiler=$2
    shift 2
    if [ -f "$dir/build.ninja" ]; then
        meson configure "$dir" "$@" >/dev/null
    else
        CC=$compiler meson setup "$dir" "$@" >/dev/null
    fi
}

# Sanitizers (docs/testing.md, "Sanitizers"): gcc's AddressSanitizer (with LeakSanitizer) and
# UndefinedBehaviorSanitizer plus float-cast-overflow (UB, but outside gcc's "undefined" group), any
# undefined behaviour fatal; the unit suite and the MPI tests below (R = 1, 2, 3, 4) run against
# that build. Run-time settings:
#   fast_unwind_on_malloc=0  full stacks for every allocation: Open MPI has no frame pointers, and
#                            the suppressions must see its frames. The unit tests never call MPI, so
#                            they keep the fast unwinder (the slow one made test_plan 6x slower)
#   MOESIM_TEST_SANITIZED=1  the MPI tests that run hundreds of cases take a subset of their rank
#                            counts (tests/mpi/moetest.py, sanitized())
#   lsan.supp                Open MPI's own allocations, and nothing else (the file says why)
#   memory=^patcher          Open MPI's memory patcher rewrites munmap/madvise/brk, which ASan
#                            intercepts too; the self and vader transports used here do not need it
asan_env=(ASAN_OPTIONS=fast_unwind_on_malloc=0:halt_on_error=1:print_summary=1
          "LSAN_OPTIONS=suppressions=$root/tests/sanitize/lsan.supp:print_suppressions=0"
          UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:print_summary=1
          OMPI_MCA_memory=^patcher)
asan_mpi_tests=(hier-R1 hier-R2 hier-R4 residual small_batch replay reference bad_input policies)
asan_c_args="-fsanitize=float-cast-overflow -fno-sanitize-recover=undefined,float-cast-overflow"
fuzz_c_args="-fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined"
echo "== sanitizer build in build-asan/ (gcc, ASan + UBSan)"
started=$SECONDS
rm -f build-asan/meson-logs/asan-unit.json build-asan/meson-logs/asan-mpi.json
if configure_build build-asan gcc -Db_sanitize=address,undefined -Db_lundef=false \
       -Dbuildtype=debugoptimized "-Dc_args=$asan_c_args" &&
   ninja -C build-asan >/dev/null; then
    env "${asan_env[@]}" ASAN_OPTIONS=halt_on_error=1:print_summary=1 \
        meson test -C build-asan --no-rebuild --print-errorlogs --logbase asan-unit --suite unit ||
        status=$?
    env "${asan_env[@]}" MOESIM_TEST_SANITIZED=1 meson test -C build-asan --no-rebuild --print-errorlogs \
        --logbase asan-mpi --timeout-multiplier 2 "${asan_mpi_tests[@]}" || status=$?
else
    echo "moesim bootstrap: the sanitizer build failed" >&2
    status=1
fi
echo "== sanitizer suites: $((SECONDS - started)) s"

# Fuzzing (docs/testing.md, "Fuzzing"): clang's libFuzzer targets of tests/fuzz, each replaying
# its seeds and regression cases, then a short fuzz run from a fixed seed.
echo "== fuzz targets in build-fuzz/ (clang, libFuzzer + ASan + UBSan)"
started=$SECONDS
rm -f build-fuzz/meson-logs/fuzz.json
if configure_build build-fuzz clang -Dfuzz=enabled -Db_sanitize=address,undefined -Db_lundef=false \
       -Dbuildtype=debugoptimized "-Dc_args=$fuzz_c_args" &&
   ninja -C build-fuzz fuzzers >/dev/null; then
    meson test -C build-fuzz --no-rebuild --print-errorlogs --logbase fuzz --suite fuzz || status=$?
else
    echo "moesim bootstrap: the fuzz build failed" >&2
    status=1
fi
echo "== fuzz suite: $((SECONDS - started)) s"

# One line for all three; a log that is missing (its build failed) counts as one failure.
/usr/bin/python3 - build/meson-logs/bootstrap.json build-asan/meson-logs/asan-unit.json \
    build-asan/meson-logs/asan-mpi.json build-fuzz/meson-logs/fuzz.json <<'PY' || status=1
import json, sys
counts = {"passed": 0, "failed": 0, "skipped": 0}
for path in sys.argv[1:]:
    try:
        log = open(path)
    except OSError:
        print(f"   {path}: no test log (its build failed), counted as one failure")
        counts["failed"] += 1
        continue
    with log:
        for line in log:
            line = line.strip()
            if not line:
                continue
            result = json.loads(line).get("result", "")
            if result in ("OK", "EXPECTEDFAIL"):
                counts["passed"] += 1
            elif result == "SKIP":
                counts["skipped"] += 1
            else:
                counts["failed"] += 1
print(f'{counts["passed"]} passed, {counts["failed"]} failed, {counts["skipped"]} skipped')
sys.exit(1 if counts["failed"] else 0)
PY
exit $status
