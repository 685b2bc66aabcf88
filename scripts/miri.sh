#!/usr/bin/env bash
# Miri (nightly) over the runtime's scalar paths: the format reader and
# writer, tokenizers, sampler, and whole sessions on the micro model with the
# reference kernels (runtime/tests/scalar_session.rs). SIMD kernels, threads
# and mmap are out of Miri's reach and are left out.
# Last result: docs/RELIABILITY.md. CPU: MIRI_CPU=N pins to core N (niced).
set -euo pipefail
cd "$(dirname "$0")/.."
pin=()
if [ -n "${MIRI_CPU:-}" ]; then pin=(nice -n 19 taskset -c "$MIRI_CPU"); fi
rustup +nightly component add miri rust-src >/dev/null
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
# libm/force-soft-floats: libm's x86 sqrt is inline asm, which Miri cannot run.
# The tests shrink themselves under cfg(miri) (fewer proptest cases, shorter
# inputs, one generated token): see the comments at each `cfg!(miri)`.
t=${MIRI_TIMEOUT:-3600}
timeout -k 10 "$t" "${pin[@]}" cargo +nightly miri setup
# One build for both test binaries: the library unit tests of the scalar
# modules (filters are module paths) and runtime/tests/scalar_session.rs
# (its two tests end in `reference_kernels`).
timeout -k 10 "$t" "${pin[@]}" cargo +nightly miri test -p edgelm-runtime --features libm/force-soft-floats \
  --lib --test scalar_session -- format:: tokenizer:: sampler:: bpb:: reference_kernels
