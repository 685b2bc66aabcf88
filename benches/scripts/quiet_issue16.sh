#!/bin/bash
# Issue 16's side-by-side on a quiet machine (docs/BENCHMARKS.md, "Issue 16 on an AVX-512 machine"):
#   benches/scripts/quiet_issue16.sh DIR BEFORE AFTER PRE16 VALID_TXT
# DIR holds s15m-{q4,q8}.edgelm and .gguf (write_synthetic + export-gguf); BEFORE and AFTER are
# two `edgelm` builds, PRE16 the CLI from before issue 16 (for the eval ratio); llama_decode is
# target-llama/release/llama_decode (see the section). Prints every measurement; nothing else may run.
set -u
[ $# -eq 5 ] || { echo "usage: $0 DIR BEFORE AFTER PRE16 VALID_TXT" >&2; exit 2; }
B=$1 before=$2 after=$3 pre16=$4 valid=$5
echo "start $(date -u +%T) load $(cat /proc/loadavg)"
for m in q4 q8; do
  echo "== llama_decode $m"
  timeout 900 target-llama/release/llama_decode "$B/s15m-$m.gguf" "$B/s15m-$m.edgelm" "$after" 3 2>&1 |
    grep -E "^round|^measure|^(decode|pp64|pp256) \|"
done
echo "== before/after $(date -u +%T)"
for round in 1 2 3; do for v in before after; do for t in 1 2; do for m in q4 q8; do
  if [ $v = before ]; then bin=$before; else bin=$after; fi
  echo "$round $v t$t $m decode $(timeout 300 "$bin" bench --model "$B/s15m-$m.edgelm" --runs 5 --threads $t --json)"
  for p in 64 256; do
    echo "$round $v t$t $m pp$p $(timeout 300 "$bin" bench --model "$B/s15m-$m.edgelm" --prompt-tokens $p --gen-tokens 0 --runs 100 --threads $t --json)"
  done
done; done; done; done
echo "== eval $(date -u +%T)"
for t in 1 2; do for v in pre16 after; do
  if [ $v = pre16 ]; then bin=$pre16; else bin=$after; fi
  echo "eval $v t$t $(/usr/bin/time -f 'wall %e s, max RSS %M KB' timeout 900 "$bin" eval --model models/base.edgelm "$valid" --threads $t --json 2>&1 | tr '\n' ' ')"
done; done
echo "end $(date -u +%T) load $(cat /proc/loadavg)"
