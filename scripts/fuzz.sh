#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer, nightly toolchain; fuzz/README.md).
#
#   scripts/fuzz.sh seeds                  seed corpora → fuzz/seeds/<target>/
#   scripts/fuzz.sh run SECONDS [TARGET…]  each target (default: all) for SECONDS,
#                                          one worker, new inputs → fuzz/corpus/<target>/
#
# Prints one summary line per target (runs, result) and fails if any target
# crashed; the crashing input is in fuzz/artifacts/<target>/. Keep it as a
# regression test (see docs/RELIABILITY.md), then fix the library.
# CPU: FUZZ_CPU=N pins every process to core N (niced); unset, no pinning.
# Build timeout: FUZZ_BUILD_TIMEOUT (s, default 3600).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(model_load pack_load llama2c_import gguf_import tokenizer_json tokenizer_bin tokenizer_roundtrip session)
pin=()
if [ -n "${FUZZ_CPU:-}" ]; then pin=(nice -n 19 taskset -c "$FUZZ_CPU"); fi
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

seeds() {
  rm -rf fuzz/seeds
  timeout -k 10 "${FUZZ_BUILD_TIMEOUT:-3600}" "${pin[@]}" \
    cargo run -q -p edgelm-convert --example fuzz_seeds -- fuzz/seeds
}

run() {
  local secs=$1; shift
  local targets=("$@")
  [ ${#targets[@]} -gt 0 ] || targets=("${TARGETS[@]}")
  [ -d fuzz/seeds ] || seeds
  timeout -k 10 "${FUZZ_BUILD_TIMEOUT:-3600}" "${pin[@]}" cargo +nightly fuzz build --fuzz-dir fuzz
  local failed=0 summary=()
  for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/seeds/$t"
    local log="fuzz/artifacts/$t.log"
    local rc=0
    # libFuzzer stops itself after -max_total_time; the outer timeout is the
    # backstop for a hang outside its control
    timeout -k 10 $((secs + 120)) "${pin[@]}" cargo +nightly fuzz run --fuzz-dir fuzz "$t" \
      "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" -dict=fuzz/dict/edgelm.dict -timeout=10 -rss_limit_mb=2048 \
      -max_len=262144 -print_final_stats=1 >"$log" 2>&1 || rc=$?
    local runs
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    if [ $rc -ne 0 ]; then
      failed=1
      summary+=("$t: runs=${runs:-?} FAILED (rc $rc; log $log, input in fuzz/artifacts/$t/)")
      tail -40 "$log" >&2
    else
      summary+=("$t: runs=${runs:-?} ok ($secs s)")
    fi
  done
  printf '%s\n' "${summary[@]}"
  return $failed
}

case "${1:-}" in
  seeds) seeds ;;
  run) shift; [ $# -ge 1 ] || { echo "usage: $0 run SECONDS [TARGET…]" >&2; exit 2; }; run "$@" ;;
  *) echo "usage: $0 seeds | run SECONDS [TARGET…]" >&2; exit 2 ;;
esac
