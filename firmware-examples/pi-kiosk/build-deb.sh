#!/usr/bin/env bash
# Builds the arm64 .deb (edgelm, edgelm-kiosk, models, systemd units, the C
# library with header and pkg-config file) and prints its path.
# Needs: rustup target aarch64-unknown-linux-gnu, gcc-aarch64-linux-gnu
# (the linker and strip; .cargo/config.toml names the linker) and cargo-deb
# (`cargo install cargo-deb --locked`). Extra arguments go to cargo build.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=aarch64-unknown-linux-gnu
version=$(cargo metadata --format-version 1 --no-deps \
  | sed -n 's/.*"name":"edgelm-kiosk","version":"\([^"]*\)".*/\1/p')
dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/$target
# files made here for the package (Cargo.toml's assets under target/release/deb-assets/)
assets=$dir/release/deb-assets

cargo build --release --target "$target" -p edgelm-cli -p edgelm-capi -p edgelm-kiosk "$@"

mkdir -p "$assets"
# the pkg-config file for the installed library (runtime/capi/edgelm.pc.in)
sed -e 's|@prefix@|/usr|' -e "s|@libdir@|/usr/lib/aarch64-linux-gnu|" \
    -e 's|@includedir@|/usr/include|' -e "s|@version@|$version|" \
    runtime/capi/edgelm.pc.in > "$assets/edgelm.pc"
# the settings file, pointing at the installed models
sed -e 's|^models = .*|models = "/usr/share/edgelm/models"|' \
    firmware-examples/pi-kiosk/kiosk.toml > "$assets/kiosk.toml"
# the static library without debug sections (cargo deb --strip does the binaries and the .so)
aarch64-linux-gnu-strip --strip-debug -o "$assets/libedgelm.a" "$dir/release/libedgelm.a"

cargo deb -p edgelm-kiosk --target "$target" --no-build --strip --output "$dir/debian/" | tail -n 1
