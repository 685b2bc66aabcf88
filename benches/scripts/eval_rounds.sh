#!/bin/bash
# Issue 16's eval target in matched time windows (docs/BENCHMARKS.md, stop 35):
#   benches/scripts/eval_rounds.sh PRE16 NEW VALID_TXT [ROUNDS]
# Each round: PRE16 (the CLI from before issue 16) once at 1 and once at 2 threads (~24 s each
# here), then NEW 10 times at 2 threads and 5 times at 1 (~22 s each), so that both builds are
# timed over windows of about the same length on a VM whose speed moves from minute to minute.
# tokens/s = scored tokens / the eval's own seconds, summed over a build's runs; the ratio is
# NEW at 2 threads over PRE16's better figure of the round. Nothing else may run.
set -u
[ $# -ge 3 ] || { echo "usage: $0 PRE16 NEW VALID_TXT [ROUNDS]" >&2; exit 2; }
pre16=$1 new=$2 valid=$3 rounds=${4:-3}
agg() { # BIN THREADS TIMES: scored tokens per second over TIMES runs
  local bin=$1 threads=$2 times=$3 tokens=0 secs=0 out
  for _ in $(seq "$times"); do
    out=$(timeout 600 "$bin" eval --model models/base.edgelm "$valid" --threads "$threads" --json) || return 1
    tokens=$(awk -v a="$tokens" -v b="$(grep -o '"scored_tokens":[0-9]*' <<<"$out" | cut -d: -f2)" 'BEGIN { print a + b }')
    secs=$(awk -v a="$secs" -v b="$(grep -o '"seconds":[0-9.]*' <<<"$out" | cut -d: -f2)" 'BEGIN { print a + b }')
  done
  awk -v t="$tokens" -v s="$secs" 'BEGIN { printf "%.0f", t / s }'
}
echo "start $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
  a=$(agg "$pre16" 1 1) b=$(agg "$pre16" 2 1) c=$(agg "$new" 2 10) d=$(agg "$new" 1 5)
  echo "round $r pre16@1 $a pre16@2 $b new@2x10 $c new@1x5 $d ratio $(awk -v c="$c" -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", c / (a > b ? a : b) }')"
done
echo "end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
