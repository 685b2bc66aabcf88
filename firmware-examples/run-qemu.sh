#!/usr/bin/env bash
# Builds a firmware image, boots it in QEMU with a time limit, streams its
# UART to stdout and exits with the image's own status (0: success).
#   firmware-examples/run-qemu.sh virt|cortex-m7
# Build settings (EDGELM_FW_PROMPT_STORY, EDGELM_FW_SEED, …: see README.md)
# are passed to the build as they are. EDGELM_QEMU_TIMEOUT (seconds, default
# 900) bounds the run; past it QEMU is stopped and the status is 124.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

usage() {
  echo "usage: $0 virt|cortex-m7" >&2
  exit 2
}
[ $# -eq 1 ] || usage
case "$1" in
  virt)
    crate=edgelm-virt-aarch64
    target=aarch64-unknown-none
    # cortex-a72: a Pi 4's core (NEON without dotprod), as the image's kernels;
    # two cores: the image splits large matrix-vector products with core 1
    qemu=(qemu-system-aarch64 -M virt -cpu cortex-a72 -smp "${EDGELM_QEMU_CORES:-2}" -m 256M)
    ;;
  cortex-m7)
    crate=edgelm-cortex-m7
    target=thumbv7em-none-eabihf
    # AN500: the MPS2 FPGA image with a Cortex-M7 (README: why this machine)
    qemu=(qemu-system-arm -M mps2-an500)
    ;;
  *) usage ;;
esac
limit="${EDGELM_QEMU_TIMEOUT:-900}"

if ! command -v "${qemu[0]}" >/dev/null; then
  echo "error: ${qemu[0]} not found; install Debian's qemu-system-arm package" >&2
  exit 1
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
  echo "error: the Rust target $target is missing; run: rustup target add $target" >&2
  exit 1
fi

# cargo's own messages go to stderr; the image's path comes from its JSON
elf=$(cargo build --release --manifest-path "$here/Cargo.toml" -p "$crate" --target "$target" \
  --message-format=json-render-diagnostics | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$elf" ] || [ ! -f "$elf" ]; then
  echo "error: cargo built no image for $crate" >&2
  exit 1
fi

set +e
timeout -k 10 "$limit" "${qemu[@]}" -display none -monitor none -serial stdio \
  -semihosting-config enable=on,target=native -kernel "$elf" </dev/null
status=$?
set -e
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "error: the $1 image was still running after ${limit} s (EDGELM_QEMU_TIMEOUT); QEMU was stopped" >&2
elif [ "$status" -ne 0 ]; then
  echo "error: the $1 image exited with status $status" >&2
fi
exit "$status"
