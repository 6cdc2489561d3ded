#!/bin/bash
# DeepEP's normal-kernel table (github.com/deepseek-ai/DeepEP, README) against moesim's projection
# of the same setup, planned with --predict-only (no payload, so hidden 7168 fits a laptop):
# 4096 tokens per rank, hidden 7168, 256 experts, top-8, sigmoid scores, 8 expert groups of which
# each token keeps 4, FP8 dispatch and BF16 combine, per-rank deduplicated dispatch, flat exchange,
# nodes of 8 ranks. Plans EP8, EP16, EP32, EP64 with --ranks from PROCS processes (default 2; the
# numbers are those of EP real processes, tests/mpi/test_planned_ranks.py), fits the network on EP8 and EP16 (bench/deepep_fit.py) and prints the
# table. Usage: [PROCS=N] bench/deepep_validation.sh [MOESIM] [OUTDIR] [NETWORK]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
moesim=${1:-$here/../build/moesim}
out=${2:-$(mktemp -d)}
net=${3:-$here/../launch/h800-cx7.network}
[ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$out"
for ep in 8 16 32 64; do
    echo "EP$ep ..." >&2
    mpirun --oversubscribe -n "${PROCS:-2}" "$moesim" --tokens $((4096 * ep)) --hidden 7168 --experts 256 \
        --top-k 8 --score sigmoid --topk-scale 2.5 --expert-groups 8 --group-top-k 4 \
        --capacity-factor 0 --wire fp8 --dispatch per-rank --ranks-per-node 8 --predict-only --ranks $ep \
        --network "$net" --quiet --json "$out/ep$ep.json"
done
/usr/bin/python3 "$here/deepep_fit.py" "$out"/ep8.json "$out"/ep16.json "$out"/ep32.json \
    "$out"/ep64.json
