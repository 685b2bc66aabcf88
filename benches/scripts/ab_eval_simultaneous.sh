#!/bin/bash
# A/B of two `edgelm` builds on `edgelm eval` (one thread each), run at the same time, one per core,
# then swapped, so that both see the same state of a noisy host (docs/BENCHMARKS.md, stop 32):
#   benches/scripts/ab_eval_simultaneous.sh A B ROUNDS MODEL TEXT [EVAL_ARGS...]
# e.g. ... edgelm-before edgelm-after 6 models/base.edgelm stories/valid.txt --limit 30
# Prints each pair (tokens/s) and the median of the ratios B/A. Needs two idle cores (0 and 1).
set -u
[ $# -ge 5 ] || { echo "usage: $0 A B ROUNDS MODEL TEXT [EVAL_ARGS...]" >&2; exit 2; }
a=$1 b=$2 rounds=$3 model=$4 text=$5; shift 5
run() { local bin=$1 core=$2; shift 2; timeout 600 taskset -c "$core" "$bin" eval --model "$model" "$text" --threads 1 --json "$@" | grep -o '"tokens_per_s":[0-9.]*' | cut -d: -f2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ratios=()
for r in $(seq 1 "$rounds"); do
  for cores in "0 1" "1 0"; do
    ca=${cores% *}; cb=${cores#* }
    run "$a" "$ca" "$@" > "$tmp/a" & run "$b" "$cb" "$@" > "$tmp/b"; wait
    va=$(cat "$tmp/a"); vb=$(cat "$tmp/b")
    echo "round $r A@$ca $va B@$cb $vb"
    ratios+=("$(awk -v a="$va" -v b="$vb" 'BEGIN { print b / a }')")
  done
done
printf '%s\n' "${ratios[@]}" | sort -g | awk '{v[NR]=$1} END {m = NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2; printf "median B/A %.3f over %d pairs (min %.3f, max %.3f)\n", m, NR, v[1], v[NR]}'
