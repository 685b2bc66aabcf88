#!/bin/bash
# A/B of two `edgelm` builds run at the same time, one per core, then swapped, so that both see the
# same state of a noisy host (docs/BENCHMARKS.md, "Issue 16 back on the Zen 3 VM"):
#   benches/scripts/ab_simultaneous.sh A B ROUNDS FIELD -- [bench|eval] ARGS...
# (`bench` when no subcommand is named) e.g.
#   ... edgelm-before edgelm-after 6 prompt_tokens_per_s -- --model s15m-q4.edgelm --prompt-tokens 64 --gen-tokens 0 --runs 200
#   ... edgelm-before edgelm-after 6 tokens_per_s -- eval --model models/base.edgelm stories/valid.txt --limit 30
# Prints each pair and the median of the ratios B/A. Needs two idle cores (0 and 1); nothing else may run.
set -u
[ $# -ge 5 ] && [ "$5" = "--" ] || { echo "usage: $0 A B ROUNDS FIELD -- [bench|eval] ARGS..." >&2; exit 2; }
a=$1 b=$2 rounds=$3 field=$4; shift 5
sub=bench
case "${1:-}" in bench|eval) sub=$1; shift ;; esac
run() { local bin=$1 core=$2; shift 2; timeout 300 taskset -c "$core" "$bin" "$sub" "$@" --json 2>/dev/null | grep -o "\"$field\":[0-9.]*" | cut -d: -f2; }
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
