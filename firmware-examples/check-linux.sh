#!/usr/bin/env bash
# The firmware's byte-for-byte test: boots an image (run-qemu.sh), then
# replays each of its runs with `edgelm generate` on aarch64 Linux (the CLI
# cross-built, run under qemu-aarch64, EDGELM_KERNELS forced to the image's
# kernel path) and compares the text the two printed, byte for byte.
#   firmware-examples/check-linux.sh virt|cortex-m7
# The image's transcript names its models, kernels and every `edgelm
# generate` flag, so nothing here repeats the build settings; the models
# may change, the comparison is made anew each time.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
export LC_ALL=C
[ $# -eq 1 ] || { echo "usage: $0 virt|cortex-m7" >&2; exit 2; }
image="$1"
limit="${EDGELM_QEMU_TIMEOUT:-900}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "=== $image: boot in QEMU" >&2
"$here/run-qemu.sh" "$image" >"$work/uart.txt" || {
  status=$?
  cat "$work/uart.txt"
  echo "error: the $image image failed (status $status)" >&2
  exit 1
}
cat "$work/uart.txt"

echo "=== $image: the same runs with edgelm generate on aarch64 Linux (qemu-aarch64)" >&2
cli=$(cd "$root" && cargo build --release --bin edgelm --target aarch64-unknown-linux-gnu \
  --message-format=json-render-diagnostics | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -n "$cli" ] && [ -f "$cli" ] || { echo "error: cargo built no aarch64 edgelm" >&2; exit 1; }

mark='[edgelm]'
field() { sed -n "s/^\[edgelm\] $1: //p" "$work/uart.txt" | head -n 1; }
kernels=$(field kernels)
models=$(field models)
[ -n "$kernels" ] && [ -n "$models" ] || { echo "error: the transcript lacks its kernels/models lines" >&2; exit 1; }
read -ra model_args <<<"$models"

# Split the transcript: run-N.args (the flags) and image-N.txt (the text
# between the run: and done: lines, as `edgelm generate` prints it).
awk -v dir="$work" -v mark="$mark" '
  index($0, mark " run: ") == 1 { n++; inrun = 1; print substr($0, length(mark) + 7) > (dir "/run-" n ".args"); next }
  index($0, mark " done: ") == 1 { if (inrun) done++; inrun = 0; next }
  inrun { print > (dir "/image-" n ".txt") }
  END { if (n == 0 || done != n) exit 1 }
' "$work/uart.txt" || { echo "error: the transcript has no complete run" >&2; exit 1; }

failed=0
for args_file in "$work"/run-*.args; do
  n=$(basename "$args_file" .args)
  n=${n#run-}
  line=$(cat "$args_file")
  flags=${line%% --prompt *}
  prompt=${line#* --prompt }
  [ "$line" != "${line% --prompt}" ] && prompt=""
  read -ra flag_args <<<"$flags"
  (cd "$root" && EDGELM_KERNELS="$kernels" timeout -k 10 "$limit" \
    qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a72 "$cli" generate \
    "${model_args[@]}" "${flag_args[@]}" --prompt "$prompt") >"$work/linux-$n.txt" 2>"$work/linux-$n.err" || {
    cat "$work/linux-$n.err" >&2
    echo "error: edgelm generate failed for run $n" >&2
    exit 1
  }
  touch "$work/image-$n.txt"
  if cmp -s "$work/linux-$n.txt" "$work/image-$n.txt"; then
    echo "run $n ($flags): $(wc -c <"$work/image-$n.txt") bytes, identical to aarch64 Linux ($kernels kernels)"
  else
    echo "run $n ($flags): DIFFERS from aarch64 Linux ($kernels kernels):" >&2
    diff "$work/linux-$n.txt" "$work/image-$n.txt" | head -n 20 >&2 || true
    failed=1
  fi
done
exit "$failed"
