#!/bin/sh
# One quiet run (docs/BENCHMARKS.md, "Quiet, side by side: 2026-11-30 12:11"): prompt/eval
# before/after, whole-file eval at 1 and 2 threads, and llama.cpp side by side (decode, pp64,
# pp256) for q8 and q4. Run only when nothing else runs.
#   benches/scripts/quiet_session.sh BEFORE_BIN AFTER_BIN VALID_TXT BENCH_DIR
# BENCH_DIR holds s15m-q8/q4 .edgelm (write_synthetic stories15m) and their .gguf
# (edgelm-convert export-gguf); target-llama/release/llama_decode must be built (see above).
set -u
[ $# -eq 4 ] || { echo "usage: $0 BEFORE_BIN AFTER_BIN VALID_TXT BENCH_DIR" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$1 A=$2 V=$3 D=$4 M=$ROOT/models/base.edgelm
date -u; uptime
echo "== 1. prompt/eval before/after (prompt_before_after.sh)"
sh "$ROOT/benches/scripts/prompt_before_after.sh" "$B" "$A" "$V" "$M" "$D/s15m-q8.edgelm" "$D/s15m-q4.edgelm"
echo "== 2. eval, the whole file: after at 1 and 2 threads (twice), before at 1"
for r in 1 2; do
  echo "after t1 $(timeout 300 "$A" eval --model "$M" "$V" --json --threads 1)"
  echo "after t2 $(timeout 300 "$A" eval --model "$M" "$V" --json --threads 2)"
  [ $r = 1 ] && echo "before t1 $(timeout 300 "$B" eval --model "$M" "$V" --json --threads 1)"
done
echo "== 3. llama.cpp side by side (decode, pp64, pp256), q8 then q4"
for q in q8 q4; do
  echo "-- $q"; timeout 600 "$ROOT/target-llama/release/llama_decode" "$D/s15m-$q.gguf" "$D/s15m-$q.edgelm" "$A" 3
done
date -u; uptime
