#!/usr/bin/env bash
# Reproduce the shipped models end to end from corpora laid out like
# ../shared/data (DATA_DIR/stories/{train,valid}.txt, DATA_DIR/recipes/{train,valid}.txt):
# two tokenizers, a story base, a recipe expansion pack over the frozen base,
# both converted to q8 and scored in bits per byte by the runtime.
#
#   scripts/train-default.sh DATA_DIR [--out DIR] [--base-steps N] [--base-restart-at N]
#                            [--expand-steps N] [--expand-restart-at N]
#                            [--dim D --layers L --heads H --kv-heads K --ffn F]
#                            [--vocab V] [--blocks B] [--threads T] [--device cpu|cuda]
#
# The shipped base ran one 4500-step cosine, then was resumed with the cosine
# re-targeted to 13000 steps (a warm restart: --base-restart-at 4500); the
# shipped pack likewise ran 8000 steps, then was extended to 12000
# (--expand-restart-at 8000). The defaults reproduce both. For a new run, one
# cosine over all the steps (--base-restart-at 0 --expand-restart-at 0) is the
# plain choice.
#
# EDGELM_BIN=DIR uses prebuilt binaries instead of building them.
# Time (models/README.md): about 3.3 h for the base and 4 h for
# the pack on one thread of a 2-core 2026 VM (--threads 1), less with more threads.
# Interrupted? Run the same command again: finished stages are skipped and the
# base and the pack continue exactly from their last checkpoints (--resume).
# Bigger hardware: raise --base-steps/--expand-steps and the dims, or --device cuda
# (build the trainer with `--features cuda`).
set -euo pipefail

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[ $# -ge 1 ] || usage 2
case $1 in -h|--help) usage 0 ;; esac
DATA=$1; shift
OUT=runs/default
BASE_STEPS=13000 BASE_RESTART_AT=4500 EXPAND_STEPS=12000 EXPAND_RESTART_AT=8000
DIM=128 LAYERS=4 HEADS=4 KV=2 FFN=352 VOCAB=4096 BLOCKS=2
THREADS=${RAYON_NUM_THREADS:-$(nproc)} DEVICE=cpu
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2 ;; --base-steps) BASE_STEPS=$2 ;; --base-restart-at) BASE_RESTART_AT=$2 ;; --expand-steps) EXPAND_STEPS=$2 ;;
    --expand-restart-at) EXPAND_RESTART_AT=$2 ;;
    --dim) DIM=$2 ;; --layers) LAYERS=$2 ;; --heads) HEADS=$2 ;; --kv-heads) KV=$2 ;;
    --ffn) FFN=$2 ;; --vocab) VOCAB=$2 ;; --blocks) BLOCKS=$2 ;; --threads) THREADS=$2 ;;
    --device) DEVICE=$2 ;; -h|--help) usage 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift 2
done
for f in stories/train.txt stories/valid.txt recipes/train.txt recipes/valid.txt; do
  [ -f "$DATA/$f" ] || { echo "missing $DATA/$f: DATA_DIR must hold stories/ and recipes/ with train.txt and valid.txt" >&2; exit 1; }
done
DATA=$(cd "$DATA" && pwd)   # the stages run inside --out

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${EDGELM_BIN:-}" ]; then   # prebuilt binaries (edgelm-train, edgelm-convert, edgelm)
  BIN=$(cd "$EDGELM_BIN" && pwd)
else
  cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin edgelm-train --bin edgelm-convert --bin edgelm
  BIN=$ROOT/target/release
fi
export RAYON_NUM_THREADS=$THREADS
mkdir -p "$OUT"; cd "$OUT"

step() { printf '\n== %s\n' "$*"; }
[ -f story-tok.json ] || { step "story tokenizer ($VOCAB)";
  "$BIN/edgelm-train" tokenizer --corpus "$DATA/stories/train.txt" --vocab-size "$VOCAB" --output story-tok.json; }
[ -f recipe-tok.json ] || { step "recipe tokenizer ($VOCAB)";
  "$BIN/edgelm-train" tokenizer --corpus "$DATA/recipes/train.txt" --vocab-size "$VOCAB" --output recipe-tok.json; }

# steps done by a checkpoint's resume record in directory $1 (0 before the first)
done_steps() { [ -f "$1/train_state.json" ] && sed -n 's/^ *"step": \([0-9]*\),$/\1/p' "$1/train_state.json" | head -1 || echo 0; }
# one cosine of the base to $1 steps, continuing the last checkpoint if there is one
train_base() {
  [ "$(done_steps story)" -ge "$1" ] && return 0
  step "story base: d$DIM L$LAYERS, cosine to step $1"
  local resume=(); [ -f story/train_state.json ] && resume=(--resume)
  "$BIN/edgelm-train" base --corpus "$DATA/stories/train.txt" --valid "$DATA/stories/valid.txt" \
    --tokenizer story-tok.json --out story --dim "$DIM" --layers "$LAYERS" --heads "$HEADS" \
    --kv-heads "$KV" --ffn "$FFN" --seq-len 256 --batch 16 --steps "$1" --lr 2e-3 --min-lr 2e-4 \
    --warmup 100 --seed 1 --checkpoint-every 100 --eval-every 500 --device "$DEVICE" "${resume[@]}"
}
[ "$BASE_RESTART_AT" -gt 0 ] && [ "$BASE_RESTART_AT" -lt "$BASE_STEPS" ] && train_base "$BASE_RESTART_AT"
train_base "$BASE_STEPS"

# a pack trained over an older base cannot continue over this one: set it aside
if [ -f recipe/train_state.json ] && [ story/model.safetensors -nt recipe/train_state.json ]; then
  mv recipe "recipe.before-$(date +%Y%m%d-%H%M%S)"
fi
# one cosine of the pack to $1 steps, continuing its last checkpoint if there is one
train_pack() {
  [ "$(done_steps recipe)" -ge "$1" ] && return 0
  step "recipe expansion: $BLOCKS new blocks, cosine to step $1 (base frozen)"
  local resume=(); [ -f recipe/train_state.json ] && resume=(--resume)
  "$BIN/edgelm-train" expand --base story --corpus "$DATA/recipes/train.txt" --valid "$DATA/recipes/valid.txt" \
    --domain recipe --domain-tokenizer recipe-tok.json --blocks "$BLOCKS" --steps "$1" --batch 16 \
    --lr 2e-3 --min-lr 2e-4 --warmup 100 --seed 1 --checkpoint-every 100 --out recipe "${resume[@]}"
}
[ "$EXPAND_RESTART_AT" -gt 0 ] && [ "$EXPAND_RESTART_AT" -lt "$EXPAND_STEPS" ] && train_pack "$EXPAND_RESTART_AT"
train_pack "$EXPAND_STEPS"

step "q8 files"
"$BIN/edgelm-convert" import-checkpoint story --output base.edgelm --dtype q8
"$BIN/edgelm-convert" import-checkpoint recipe --base story --output recipe.edgelm

step "bits per byte (runtime, q8)"
"$BIN/edgelm" eval --model base.edgelm --pack recipe.edgelm --domain story "$DATA/stories/valid.txt" --json | tee story-eval.json
"$BIN/edgelm" eval --model base.edgelm --pack recipe.edgelm --domain recipe "$DATA/recipes/valid.txt" --json | tee recipe-eval.json
echo; echo "done: $OUT/base.edgelm and $OUT/recipe.edgelm (copy them to models/ to ship)"
