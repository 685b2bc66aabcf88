#!/usr/bin/env bash
# Builds the kiosk (and the C API's error test, runtime/capi/tests/c/errors.c)
# natively and for aarch64, runs them (aarch64 under qemu-aarch64), checks
# that the kiosk prints exactly what `edgelm generate` prints for the same
# model, domain, prompt and seed (each architecture against its own
# `edgelm`), and runs the native kiosk and error test under valgrind:
# zero errors, zero leaks of any kind.
#
# Environment: CARGOFLAGS (e.g. -j1), TIMEOUT (seconds per process, 600),
# VALGRIND_TOKENS (tokens in the valgrind run, 24), SKIP_AARCH64=1.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
T=${TIMEOUT:-600}
A64=aarch64-unknown-linux-gnu
QEMU=(qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a72)
MODELS=$ROOT/models
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

say() { printf -- '--- %s\n' "$*"; }

# name prompt seed tokens
CASES=(
  "story|Once upon a time|7|80"
  "recipe|Title:|11|80"
)

# compare LABEL RUNNER... : runs the kiosk and `edgelm generate` for every case
compare() {
  local arch=$1 kiosk=$2 edgelm=$3
  shift 3
  local runner=("$@")
  for c in "${CASES[@]}"; do
    IFS='|' read -r domain prompt seed n <<<"$c"
    timeout "$T" "${runner[@]}" "$kiosk" --models "$MODELS" --domain "$domain" --prompt "$prompt" \
      --seed "$seed" -n "$n" >"$TMP/kiosk.txt"
    timeout "$T" "${runner[@]}" "$edgelm" generate --model "$MODELS/base.edgelm" --pack "$MODELS/recipe.edgelm" \
      --domain "$domain" --prompt "$prompt" --seed "$seed" -n "$n" >"$TMP/edgelm.txt" 2>/dev/null
    if ! cmp -s "$TMP/kiosk.txt" "$TMP/edgelm.txt"; then
      echo "$arch $domain: the kiosk and edgelm generate differ:" >&2
      diff "$TMP/kiosk.txt" "$TMP/edgelm.txt" >&2 || true
      exit 1
    fi
    [ "$(wc -c <"$TMP/kiosk.txt")" -gt "$(( ${#prompt} + 20 ))" ] || { echo "$arch $domain: too little text" >&2; exit 1; }
    say "$arch $domain (seed $seed): kiosk == edgelm generate ($(wc -c <"$TMP/kiosk.txt") bytes)"
  done
}

say "native build"
make -s CARGOFLAGS="${CARGOFLAGS:-}"
cargo build -q --manifest-path "$ROOT/Cargo.toml" -p edgelm-cli ${CARGOFLAGS:-}
NATIVE=build/native-debug
timeout "$T" "$NATIVE/errors" "$MODELS/base.edgelm" "$MODELS/recipe.edgelm"
compare native "$NATIVE/kiosk" "$ROOT/target/debug/edgelm"

if [ "${SKIP_AARCH64:-0}" != 1 ]; then
  say "aarch64 build (aarch64-linux-gnu-gcc), run under qemu-aarch64"
  make -s TARGET=$A64 CC=aarch64-linux-gnu-gcc CARGOFLAGS="${CARGOFLAGS:-}"
  cargo build -q --manifest-path "$ROOT/Cargo.toml" -p edgelm-cli --target $A64 ${CARGOFLAGS:-}
  A64B=build/$A64-debug
  readelf -h "$A64B/kiosk" | grep -q AArch64 || { echo "$A64B/kiosk is not an aarch64 binary" >&2; exit 1; }
  timeout "$T" "${QEMU[@]}" "$A64B/errors" "$MODELS/base.edgelm" "$MODELS/recipe.edgelm"
  compare aarch64 "$A64B/kiosk" "$ROOT/target/$A64/debug/edgelm" "${QEMU[@]}"
fi

say "valgrind: the error test and the kiosk (native)"
VG=(valgrind -q --error-exitcode=1 --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=all)
timeout "$T" "${VG[@]}" "$NATIVE/errors" "$MODELS/base.edgelm" "$MODELS/recipe.edgelm"
n=${VALGRIND_TOKENS:-24}
timeout "$T" "${VG[@]}" "$NATIVE/kiosk" --models "$MODELS" --domain recipe --prompt "Title:" --seed 3 -n "$n" \
  >"$TMP/vg.txt"
timeout "$T" "$ROOT/target/debug/edgelm" generate --model "$MODELS/base.edgelm" --pack "$MODELS/recipe.edgelm" \
  --domain recipe --prompt "Title:" --seed 3 -n "$n" >"$TMP/edgelm.txt" 2>/dev/null
cmp "$TMP/vg.txt" "$TMP/edgelm.txt"
# the interactive menu: story, then recipe, then quit
printf '1\n2\nq\n' | timeout "$T" "${VG[@]}" "$NATIVE/kiosk" --models "$MODELS" -n 8 >"$TMP/menu.txt"
grep -q "2) a recipe" "$TMP/menu.txt" || { echo "the menu does not offer a recipe:" >&2; cat "$TMP/menu.txt" >&2; exit 1; }
say "valgrind: no errors, no leaks"
