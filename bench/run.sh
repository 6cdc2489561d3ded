#!/bin/bash
# Run moe_bench on this machine over a few standard configurations; see --help and bench/README.md.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

usage() {
    cat <<EOF
Usage: bench/run.sh [options] [-- extra moe_bench options]
Run moe_bench (the moesim layer step against raw MPI_Alltoallv, memcpy and cblas_sgemm floors)
over standard configurations, one mpirun each, printing every mpirun line before running it.

Configurations (run in this order; pick some with --config):
  default     moesim's defaults: 8192 tokens, d 512, f 1024, 8 experts, top-2, capacity 1.25
  mixtral     8 experts, top-2, renormalized gates, dropless (capacity factor 0), d 1024, 4096 tokens
  fine        64 fine-grained experts, top-6 (DeepSeekMoE-like), d 512, f 352, 4096 tokens

Options
  --ranks R        MPI ranks (default 2); --oversubscribe is added when R exceeds the $(nproc)
                   cores here
  --config NAME    run only this configuration (repeatable)
  --build DIR      meson build directory holding bench/moe_bench (default $repo/build)
  --json-dir DIR   also write DIR/moe_bench-NAME-rR.json for each configuration
  --dry-run        print the mpirun lines without running them
  --help           this text
Anything after -- is appended to every moe_bench command line (e.g. -- --iters 40).

As root, OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 are set for mpirun (and shown
in the printed line). OPENBLAS_NUM_THREADS is passed through if set; otherwise moe_bench uses one
OpenBLAS thread per rank. Exit status: non-zero if any run failed (a FAIL verdict is not a failure).
EOF
}

config_args() {
    case $1 in
    default) echo "" ;;
    mixtral) echo "--experts 8 --top-k 2 --renormalize --capacity-factor 0 --hidden 1024 --tokens 4096" ;;
    fine) echo "--experts 64 --top-k 6 --hidden 512 --ffn 352 --tokens 4096" ;;
    *) return 1 ;;
    esac
}

ranks=2
configs=""
build="$repo/build"
json_dir=""
dry_run=0
while [ $# -gt 0 ]; do
    case $1 in
    --ranks) ranks=${2:?--ranks needs a value}; shift 2 ;;
    --config)
        config_args "${2:?--config needs a value}" >/dev/null ||
            { echo "run.sh: unknown configuration '$2' (see --help)" >&2; exit 2; }
        configs="$configs $2"; shift 2 ;;
    --build) build=${2:?--build needs a value}; shift 2 ;;
    --json-dir) json_dir=${2:?--json-dir needs a value}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --help | -h) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case $ranks in
'' | *[!0-9]* | 0) echo "run.sh: --ranks needs a positive whole number, got '$ranks'" >&2; exit 2 ;;
esac
[ -n "$configs" ] || configs="default mixtral fine"

bench="$build/bench/moe_bench"
if [ "$dry_run" -eq 0 ] && [ ! -x "$bench" ]; then
    echo "run.sh: $bench not found: build first (ninja -C $build)" >&2
    exit 2
fi
if [ -n "$json_dir" ]; then
    mkdir -p "$json_dir"
fi

env_prefix=""
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    env_prefix="OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
fi
over=""
if [ "$ranks" -gt "$(nproc)" ]; then
    over="--oversubscribe"
fi

extra=("$@")
status=0
for name in $configs; do
    read -r -a args <<<"$(config_args "$name")"
    cmd=(mpirun)
    [ -n "$over" ] && cmd+=("$over")
    cmd+=(-n "$ranks" "$bench" "${args[@]}")
    [ -n "$json_dir" ] && cmd+=(--json "$json_dir/moe_bench-$name-r$ranks.json")
    cmd+=("${extra[@]}")
    echo "# configuration '$name'"
    echo "${env_prefix}${cmd[*]}"
    if [ "$dry_run" -eq 0 ]; then
        "${cmd[@]}" || { echo "run.sh: configuration '$name' failed" >&2; status=1; }
    fi
    echo
done
exit $status
