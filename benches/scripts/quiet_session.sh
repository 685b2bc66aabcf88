#!/bin/sh
# Prompt/eval before/after, whole-file eval at 1 and 2 threads, and llama.cpp side by side
# (decode, pp64, pp256; q8 and q4) in one quiet run (docs/BENCHMARKS.md, "Quiet, 2026-11-30 12:11").
# Needs runs/bench/s15m-{q8,q4}.{edgelm,gguf} and target-llama/release/llama_decode.
#   quiet13.sh BEFORE_BIN AFTER_BIN
set -u
cd /work/runs/bench
B=$1 A=$2 V=/work/shared/data/stories/valid.txt M=/work/main/models/base.edgelm
date -u; uptime
echo "== 1. prompt/eval before/after (benches/scripts/prompt_before_after.sh)"
sh /work/main/benches/scripts/prompt_before_after.sh "$B" "$A" "$V" "$M" s15m-q8.edgelm s15m-q4.edgelm
echo "== 2. eval, whole stories valid, after: threads 1 then 2, before: threads 1"
for r in 1 2; do
  echo "after t1 $(timeout 300 "$A" eval --model "$M" "$V" --json --threads 1)"
  echo "after t2 $(timeout 300 "$A" eval --model "$M" "$V" --json --threads 2)"
  [ $r = 1 ] && echo "before t1 $(timeout 300 "$B" eval --model "$M" "$V" --json --threads 1)"
done
echo "== 3. llama.cpp side by side (decode, pp64, pp256), q8 then q4"
for q in q8 q4; do
  echo "-- $q"; timeout 600 /work/main/target-llama/release/llama_decode s15m-$q.gguf s15m-$q.edgelm "$A" 3
done
date -u; uptime
