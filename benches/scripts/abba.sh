#!/bin/bash
# ABBA rounds of two `edgelm` builds on the whole machine (two-thread runs, where the simultaneous
# A/B of ab_simultaneous.sh cannot be used): each round runs A, B, B, A and reports
# (B1 + B2) / (A1 + A2), so a drift of the host's speed within a round cancels to first order
# (docs/BENCHMARKS.md, "Two unequal vCPUs"). Run it once more with B = a copy of A for the
# A/A band of the same minutes; a change is resolved only outside that band.
#   benches/scripts/abba.sh A B ROUNDS FIELD -- BENCH_ARGS...
# e.g. ... edgelm-before edgelm-after 10 decode_tokens_per_s -- --model s15m-q4.edgelm --runs 5 --threads 2
# Nothing else may run.
set -u
[ $# -ge 5 ] && [ "$5" = "--" ] || { echo "usage: $0 A B ROUNDS FIELD -- BENCH_ARGS..." >&2; exit 2; }
a=$1 b=$2 rounds=$3 field=$4; shift 5
get() { local bin=$1; shift; timeout 300 "$bin" bench "$@" --json 2>/dev/null | grep -o "\"$field\":[0-9.]*" | cut -d: -f2; }
echo "start $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
ratios=()
for r in $(seq 1 "$rounds"); do
  a1=$(get "$a" "$@"); b1=$(get "$b" "$@"); b2=$(get "$b" "$@"); a2=$(get "$a" "$@")
  [ -n "$a1" ] && [ -n "$a2" ] && [ -n "$b1" ] && [ -n "$b2" ] || { echo "round $r: a run failed" >&2; exit 1; }
  ratio=$(awk -v a1="$a1" -v a2="$a2" -v b1="$b1" -v b2="$b2" 'BEGIN { print (b1 + b2) / (a1 + a2) }')
  ratios+=("$ratio")
  echo "round $r A $a1 $a2 B $b1 $b2 ratio $ratio"
done
printf '%s\n' "${ratios[@]}" | sort -g | awk '{v[NR]=$1} END {m = NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2; printf "median B/A %.3f over %d rounds (min %.3f, max %.3f)\n", m, NR, v[1], v[NR]}'
