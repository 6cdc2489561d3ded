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
          gcc libc6-dev libopenblas-dev libjansson-dev)
[ "$mode" = test ] && packages+=(python3 python3-numpy)

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
meson test -C build --print-errorlogs || status=$?
/usr/bin/python3 - build/meson-logs/testlog.json <<'PY'
import json, sys
counts = {"passed": 0, "failed": 0, "skipped": 0}
with open(sys.argv[1]) as log:
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
PY
exit $status
