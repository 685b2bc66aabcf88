#!/bin/sh
# Prompt processing and eval speed of two `edgelm` builds, alternating rounds
# (docs/BENCHMARKS.md, "The batched q8/q4 kernels"). Run on a quiet machine.
#   benches/scripts/prompt_before_after.sh BEFORE_BIN AFTER_BIN VALID_TXT MODEL...
# Prints one line per measurement: round, build, threads/eval, model, prompt, JSON.
set -eu
[ $# -ge 4 ] || { echo "usage: $0 BEFORE_BIN AFTER_BIN VALID_TXT MODEL..." >&2; exit 2; }
before=$1 after=$2 valid=$3; shift 3
for round in 1 2 3; do
  for v in before after; do
    if [ $v = before ]; then bin=$before; else bin=$after; fi
    for t in 1 2; do
      for model in "$@"; do
        for p in 64 240; do
          echo "$round $v t$t $(basename "$model") p$p $(timeout 300 "$bin" bench --model "$model" --prompt-tokens $p --gen-tokens 8 --runs 5 --threads $t --json)"
        done
      done
    done
    echo "$round $v eval $(timeout 600 "$bin" eval --model "$1" "$valid" --limit 60 --json)"
  done
done
