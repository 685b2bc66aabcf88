#!/usr/bin/env bash
# Compute-budget study (docs/TRAINING.md): story base models of several shapes,
# each trained for the same wall-clock budget on one thread, scored on the whole
# of stories/valid.txt. Prints one JSON line per run.
#
#   scripts/budget-study.sh DATA_DIR TOKENIZER OUT_DIR BUDGET_S [BUDGET_S ...]
#
# Shapes: s = d128 L4 (1.26 M at vocab 4096), m = d192 L6 (3.22 M), l = d256 L6
# (5.48 M); the vocabulary is the tokenizer's. SHAPES="s m" picks some (default
# all three); SEQ_LEN=N sets the context (default 256), the batch then being
# 4096/N sequences so that every run sees 4096 tokens a step. Run names carry the
# shape, budget, vocabulary and context (s-600-v4096-c256).
# Run it on a core of its own (taskset -c 1 ...); EDGELM_BIN=DIR picks prebuilt
# binaries (default: target/release). Needs python3 for the arithmetic.
set -euo pipefail
# usage: the comment block above, up to the first line that is not a comment
[ $# -ge 4 ] || { sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
DATA=$1 TOK=$(realpath "$2") OUT=$3; shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${EDGELM_BIN:-$ROOT/target/release}
export RAYON_NUM_THREADS=1
vocab=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['model']['vocab']))" "$TOK")
TOKENS_PER_STEP=4096
SEQ=${SEQ_LEN:-256}
[ $((TOKENS_PER_STEP % SEQ)) -eq 0 ] || { echo "SEQ_LEN must divide $TOKENS_PER_STEP" >&2; exit 2; }
BATCH=$((TOKENS_PER_STEP / SEQ))
SHAPES=${SHAPES:-s m l}
shape_args() { # shape -> dim layers heads kv ffn
  case $1 in
    s) echo 128 4 4 2 352 ;;
    m) echo 192 6 6 3 512 ;;
    l) echo 256 6 8 4 704 ;;
    *) return 1 ;;
  esac
}
for shape in $SHAPES; do
  shape_args "$shape" >/dev/null || { echo "unknown shape $shape (s, m or l)" >&2; exit 2; }
done
mkdir -p "$OUT"; cd "$OUT"

run() { # name budget dim layers heads kv ffn
  local name=$1 budget=$2 dim=$3 layers=$4 heads=$5 kv=$6 ffn=$7 tps steps warm start end
  tps=$("$B/edgelm-train" bench --dim "$dim" --layers "$layers" --heads "$heads" --kv-heads "$kv" \
        --ffn "$ffn" --vocab "$vocab" --seq-len "$SEQ" --batch "$BATCH" --steps 3 --warmup-steps 1 --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')
  steps=$(python3 -c "print(max(50, int($budget * $tps / $TOKENS_PER_STEP)))")
  warm=$(python3 -c "print(max(20, $steps // 15))")
  start=$(date +%s)
  "$B/edgelm-train" base --corpus "$DATA/stories/train.txt" --valid "$DATA/stories/valid.txt" \
    --tokenizer "$TOK" --out "$name" --dim "$dim" --layers "$layers" --heads "$heads" --kv-heads "$kv" \
    --ffn "$ffn" --seq-len "$SEQ" --batch "$BATCH" --steps "$steps" --lr 2e-3 --min-lr 2e-4 --warmup "$warm" \
    --seed 1 --checkpoint-every 1000000 --eval-every 0 --no-progress >&2
  end=$(date +%s)
  "$B/edgelm-train" eval --checkpoint "$name" --valid "$DATA/stories/valid.txt" --json > "$name/eval.json"
  python3 - "$name" "$budget" "$dim" "$layers" "$steps" "$((end - start))" "$vocab" "$SEQ" "$TOKENS_PER_STEP" <<'PY'
import json, sys
name, budget, dim, layers, steps, wall, vocab, seq, per_step = sys.argv[1:]
e = json.loads(open(f"{name}/eval.json").readline())
print(json.dumps({"name": name, "budget_s": int(budget), "dim": int(dim), "layers": int(layers),
                  "vocab": int(vocab), "seq_len": int(seq), "steps": int(steps),
                  "tokens": int(steps) * int(per_step), "train_wall_s": int(wall), "bpb": e["bpb"]}))
PY
}

for budget in "$@"; do
  for shape in $SHAPES; do
    # shellcheck disable=SC2046 # five numbers, split on purpose
    run "$shape-$budget-v$vocab-c$SEQ" "$budget" $(shape_args "$shape")
  done
done
