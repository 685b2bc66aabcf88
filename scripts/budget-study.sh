#!/usr/bin/env bash
# Compute-budget study (docs/TRAINING.md): story base models of several shapes,
# each trained for the same wall-clock budget on one thread, scored on the whole
# of stories/valid.txt. Prints one JSON line per run.
#
#   scripts/budget-study.sh DATA_DIR TOKENIZER OUT_DIR BUDGET_S [BUDGET_S ...]
#
# Shapes: d128 L4 (1.26 M), d192 L6 (3.22 M), d256 L6 (5.48 M) at vocab 4096.
# Run it on a core of its own (taskset -c 1 ...); EDGELM_BIN=DIR picks prebuilt
# binaries (default: target/release). Needs python3 for the arithmetic.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
DATA=$1 TOK=$(realpath "$2") OUT=$3; shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${EDGELM_BIN:-$ROOT/target/release}
export RAYON_NUM_THREADS=1
vocab=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['model']['vocab']))" "$TOK")
mkdir -p "$OUT"; cd "$OUT"

run() { # name budget dim layers heads kv ffn
  local name=$1 budget=$2 dim=$3 layers=$4 heads=$5 kv=$6 ffn=$7 tps steps warm start end
  tps=$("$B/edgelm-train" bench --dim "$dim" --layers "$layers" --heads "$heads" --kv-heads "$kv" \
        --ffn "$ffn" --vocab "$vocab" --seq-len 256 --batch 16 --steps 3 --warmup-steps 1 --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')
  steps=$(python3 -c "print(max(50, int($budget * $tps / 4096)))")
  warm=$(python3 -c "print(max(20, $steps // 15))")
  start=$(date +%s)
  "$B/edgelm-train" base --corpus "$DATA/stories/train.txt" --valid "$DATA/stories/valid.txt" \
    --tokenizer "$TOK" --out "$name" --dim "$dim" --layers "$layers" --heads "$heads" --kv-heads "$kv" \
    --ffn "$ffn" --seq-len 256 --batch 16 --steps "$steps" --lr 2e-3 --min-lr 2e-4 --warmup "$warm" \
    --seed 1 --checkpoint-every 1000000 --eval-every 0 --no-progress >&2
  end=$(date +%s)
  "$B/edgelm-train" eval --checkpoint "$name" --valid "$DATA/stories/valid.txt" --json > "$name/eval.json"
  python3 - "$name" "$budget" "$dim" "$layers" "$steps" "$((end - start))" <<'PY'
import json, sys
name, budget, dim, layers, steps, wall = sys.argv[1:]
e = json.loads(open(f"{name}/eval.json").readline())
print(json.dumps({"name": name, "budget_s": int(budget), "dim": int(dim), "layers": int(layers),
                  "steps": int(steps), "tokens": int(steps) * 4096, "train_wall_s": int(wall),
                  "bpb": e["bpb"]}))
PY
}

for budget in "$@"; do
  run "s-$budget" "$budget" 128 4 4 2 352
  run "m-$budget" "$budget" 192 6 6 3 512
  run "l-$budget" "$budget" 256 6 8 4 704
done
