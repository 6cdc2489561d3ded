#!/bin/bash
# Measure moesim on this machine against the goals of issue 11; see --help and bench/README.md.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

usage() {
    cat <<EOF
Usage: bench/run.sh [options] [-- extra moe_bench options]
Measure moesim on this machine, printing every mpirun line before running it.

Sections (run in this order; pick some with --section, repeatable):
  goals       at --ranks ranks, two shapes: A = the issue's (8192 tokens, 4096 per rank at 2 ranks,
              d 1024, 8 experts, top-2, capacity factor 1.25, local scope) and B = the same with
              128 tokens; for each, moe_bench, moesim and bench/peer.py (mpi4py + NumPy), then
              bench/goals.py prints each phase against its floor, the non-GEMM time against the
              peer's and the peak RSS against the buffers, with PASS/FAIL, and "goals: N of M PASS"
  scaling     moesim at R = 1, 2, 3, 4, 8 with 1024 tokens per rank (d 1024, 8 experts, top-2)
  planning    moesim --predict-only --ranks R in one process, R = 1024, 4096, 16384, and the
              GShard shape (R 2048, 2048 experts, top-2, 131072 tokens): wall time and peak RSS
  configs     moe_bench over the standard configurations (pick some with --config):
                default  moesim's defaults: 8192 tokens, d 512, f 1024, 8 experts, top-2, cf 1.25
                mixtral  8 experts, top-2, renormalized, dropless (cf 0), d 1024, 4096 tokens
                fine     64 fine-grained experts, top-6 (DeepSeekMoE-like), d 512, f 352, 4096 tokens
Default: goals, scaling, planning; with --config and no --section: configs.

Options
  --section NAME   run this section (repeatable): goals, scaling, planning, configs
  --ranks R        MPI ranks of the goals and configs sections (default 2); --oversubscribe is
                   added to any run whose ranks exceed the $(nproc) cores here
  --config NAME    the configs section runs only this configuration (repeatable)
  --build DIR      meson build directory holding moesim and bench/moe_bench (default $repo/build)
  --json-dir DIR   keep every JSON in DIR (the plan at R = 1024 writes 34 MiB); otherwise they
                   go to a temporary directory, removed at the end
  --planning-timeout S
                   stop a planning run after S seconds, a FAIL (default 300)
  --dry-run        print the command lines without running them
  --help           this text
Anything after -- is appended to every moe_bench command line (e.g. -- --iters 40).

As root, OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 are set for mpirun (and shown
in the printed line). OPENBLAS_NUM_THREADS is passed through if set; otherwise moesim, moe_bench
and the peer use one OpenBLAS thread per rank. Python: \$PYTHON, else /usr/bin/python3 (it needs
mpi4py and NumPy for the peer). Exit status: non-zero if a run failed; a FAIL verdict, a refused
or timed-out planning run are measurements, not failures.
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
config_given=0
sections=""
build="$repo/build"
json_dir=""
dry_run=0
plan_timeout=300
while [ $# -gt 0 ]; do
    case $1 in
    --ranks) ranks=${2:?--ranks needs a value}; shift 2 ;;
    --config)
        config_args "${2:?--config needs a value}" >/dev/null ||
            { echo "run.sh: unknown configuration '$2' (see --help)" >&2; exit 2; }
        configs="$configs $2"; config_given=1; shift 2 ;;
    --section)
        case ${2:?--section needs a value} in
        goals | scaling | planning | configs) sections="$sections $2" ;;
        *) echo "run.sh: unknown section '$2' (see --help)" >&2; exit 2 ;;
        esac
        shift 2 ;;
    --build) build=${2:?--build needs a value}; shift 2 ;;
    --json-dir) json_dir=${2:?--json-dir needs a value}; shift 2 ;;
    --planning-timeout) plan_timeout=${2:?--planning-timeout needs a value}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --help | -h) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case $ranks in
'' | *[!0-9]* | 0) echo "run.sh: --ranks needs a positive whole number, got '$ranks'" >&2; exit 2 ;;
esac
case $plan_timeout in
'' | *[!0-9]* | 0)
    echo "run.sh: --planning-timeout needs a positive whole number of seconds, got '$plan_timeout'" >&2
    exit 2 ;;
esac
[ -n "$configs" ] || configs="default mixtral fine"
if [ -z "$sections" ]; then
    if [ "$config_given" -eq 1 ]; then
        sections=" configs"
    else
        sections=" goals scaling planning"
    fi
fi
wants() { case " $sections " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
order=""
for name in goals scaling planning configs; do
    if wants "$name"; then order="$order $name"; fi
done
sections=$order

bench="$build/bench/moe_bench"
moesim="$build/moesim"
python=${PYTHON:-/usr/bin/python3}
[ -x "$python" ] || python=python3
goals_py="$here/goals.py"
peer_py="$here/peer.py"
if [ "$dry_run" -eq 0 ]; then
    for tool in "$bench" "$moesim"; do
        [ -x "$tool" ] || { echo "run.sh: $tool not found: build first (ninja -C $build)" >&2; exit 2; }
    done
    if wants goals && [ ! -f "$peer_py" ]; then
        echo "run.sh: $peer_py not found" >&2
        exit 2
    fi
fi

if [ -n "$json_dir" ]; then
    mkdir -p "$json_dir"
    out=$json_dir
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/moesim-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
[ -n "$json_dir" ] || out=$work

env_prefix=""
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    env_prefix="OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
fi
cores=$(nproc)
extra=("$@")
status=0

# mpirun_cmd R: the start of an mpirun command line for R ranks, in the array cmd
mpirun_cmd() {
    cmd=(mpirun)
    [ "$1" -gt "$cores" ] && cmd+=(--oversubscribe)
    cmd+=(-n "$1")
}

# show: print cmd; an mpirun line with the environment prefix, a goals.py line with the words that
# need it single-quoted for the shell
show() {
    if [ "${cmd[0]}" != "$python" ]; then
        echo "${env_prefix}${cmd[*]}"
        return
    fi
    local word line="" q="'"
    for word in "${cmd[@]}"; do
        case $word in
        '' | *[!A-Za-z0-9_./=:,+-]*) word="$q${word//$q/$q\\$q$q}$q" ;;
        esac
        line="$line${line:+ }$word"
    done
    echo "$line"
}

# show_and_run NAME: print cmd, then run it unless --dry-run; a failure is reported under NAME and
# makes the script's status 1. Returns the run's status.
show_and_run() {
    show
    [ "$dry_run" -eq 0 ] || return 0
    local rc=0
    "${cmd[@]}" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "run.sh: $1 failed (exit $rc)" >&2
        status=1
    fi
    return "$rc"
}

section_header() {
    echo "## $1 (load average $(cut -d ' ' -f 1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%M:%SZ))"
}

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "# bench/run.sh on $(hostname): ${cpu:-unknown CPU}, $cores cores; sections:$sections"
echo

# ---- goals: shapes A and B at --ranks ranks -------------------------------------------------------
if wants goals; then
    section_header "goals, $ranks ranks"
    goal_args=()
    for shape in A B; do
        if [ "$shape" = A ]; then tokens=8192 peer_goal=0.3; else tokens=128 peer_goal=0.2; fi
        layer=(--tokens "$tokens" --hidden 1024 --experts 8 --top-k 2 --capacity-factor 1.25)
        tag="$shape-r$ranks"
        echo "# shape $shape: ${layer[*]} --capacity-scope local"
        ok=1
        mpirun_cmd "$ranks"
        cmd+=("$bench" "${layer[@]}" --capacity-scope local --json "$out/moe_bench-$tag.json" --quiet
            "${extra[@]}")
        show_and_run "moe_bench, shape $shape" || ok=0
        mpirun_cmd "$ranks"
        cmd+=("$moesim" "${layer[@]}" --capacity-scope local --iters 20 --warmup 3 --raw-baseline off
            --json "$out/moesim-$tag.json" --quiet)
        show_and_run "moesim, shape $shape" || ok=0
        mpirun_cmd "$ranks"
        cmd+=("$python" "$peer_py" "${layer[@]}" --iters 20 --warmup 3 --json "$out/peer-$tag.json"
            --quiet)
        show_and_run "peer, shape $shape" || ok=0
        [ "$ok" -eq 1 ] && goal_args+=(--shape "$shape" "$peer_goal" "$out/moe_bench-$tag.json"
            "$out/moesim-$tag.json" "$out/peer-$tag.json")
    done
    echo
    if [ ${#goal_args[@]} -gt 0 ]; then
        cmd=("$python" "$goals_py" goals "${goal_args[@]}")
        show_and_run "goals.py goals" || true
    fi
    echo
fi

# ---- scaling: a fixed load per rank, R = 1..8 -----------------------------------------------------
if wants scaling; then
    section_header "scaling"
    scale_json=()
    for r in 1 2 3 4 8; do
        json="$out/moesim-scaling-r$r.json"
        mpirun_cmd "$r"
        cmd+=("$moesim" --tokens $((1024 * r)) --hidden 1024 --experts 8 --top-k 2
            --capacity-factor 1.25 --capacity-scope local --iters 5 --warmup 1 --raw-baseline off
            --json "$json" --quiet)
        show_and_run "moesim scaling at R = $r" && scale_json+=("$json")
    done
    echo
    if [ ${#scale_json[@]} -gt 0 ]; then
        cmd=("$python" "$goals_py" scaling --cores "$cores" "${scale_json[@]}")
        show_and_run "goals.py scaling" || true
    fi
    echo
fi

# ---- planning: --predict-only at large R, in one process ------------------------------------------
if wants planning; then
    section_header "planning"
    plan_args=()
    for plan in 1024 4096 16384 gshard; do
        if [ "$plan" = gshard ]; then
            layer=(--ranks 2048 --experts 2048 --top-k 2 --tokens 131072 --hidden 64)
            label="GShard: R 2048, E 2048, k 2, N 131072, d 64"
        else
            layer=(--ranks "$plan" --experts "$plan" --top-k 1 --tokens "$plan" --hidden 16)
            label="R $plan, E $plan, k 1, N $plan, d 16"
        fi
        json="$out/moesim-plan-$plan.json"
        mpirun_cmd 1
        cmd=(timeout --kill-after=10 "$plan_timeout" "${cmd[@]}" "$moesim" --predict-only "${layer[@]}"
            --json "$json" --quiet)
        show
        [ "$dry_run" -eq 0 ] || continue
        rc=0
        start=$(date +%s.%N)
        "${cmd[@]}" 2>"$work/plan-$plan.err" || rc=$?
        end=$(date +%s.%N)
        wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
        message=$(grep -m 1 'error:' "$work/plan-$plan.err" || grep -m 1 . "$work/plan-$plan.err" || true)
        case $rc in
        0) state=ok ;;
        2) state=refused ;;
        124 | 137) state=timeout ;;
        *) state=failed; message="exit $rc: $message" ;;
        esac
        [ "$state" = ok ] || echo "# $state (exit $rc) after $wall s${message:+: $message}"
        plan_args+=(--run "$label" "$state" "$wall" "$json" "$message")
    done
    echo
    if [ ${#plan_args[@]} -gt 0 ]; then
        cmd=("$python" "$goals_py" planning --timeout "$plan_timeout" "${plan_args[@]}")
        show_and_run "goals.py planning" || true
    fi
    echo
fi

# ---- configs: moe_bench over the standard configurations ------------------------------------------
if wants configs; then
    section_header "configs, $ranks ranks"
    for name in $configs; do
        read -r -a args <<<"$(config_args "$name")"
        mpirun_cmd "$ranks"
        cmd+=("$bench" "${args[@]}")
        [ -n "$json_dir" ] && cmd+=(--json "$json_dir/moe_bench-$name-r$ranks.json")
        cmd+=("${extra[@]}")
        echo "# configuration '$name'"
        show_and_run "configuration '$name'" || true
        echo
    done
fi
exit $status
