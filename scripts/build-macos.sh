#!/usr/bin/env bash
# Builds the Apple Silicon macOS binary from Linux, without an Apple SDK: cargo-zigbuild (from
# crates.io) with zig's cross linker (PyPI's `ziglang`), Hypervisor.framework from the text stub
# in macos/link-stubs (the symbols libkrun imports). Then, when `rcodesign` is there, signs it ad
# hoc with the hypervisor entitlement (scripts/sign-macos.sh) and checks the signature carries it.
# Nothing here can run the binary; that needs a Mac.
#
# usage: scripts/build-macos.sh [--release]      output: target/zigbuild/aarch64-apple-darwin/…/krbottle
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"
cd "$repo"

profile=debug
flags=()
if [ "${1:-}" = --release ]; then profile=release; flags=(--release); fi
target=aarch64-apple-darwin
rustup target list --installed | grep -qx "$target" || rustup target add "$target" >/dev/null
python3 -c 'import ziglang' 2>/dev/null || python3 -m pip install -q --break-system-packages ziglang \
    || die "cannot install zig (pip install ziglang)"
command -v cargo-zigbuild >/dev/null || cargo install -q --locked cargo-zigbuild \
    || die "cannot install cargo-zigbuild"
say "cargo zigbuild --target $target ($profile)"
CARGO_TARGET_DIR=$repo/target/zigbuild \
    RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-F$repo/macos/link-stubs" \
    cargo zigbuild --locked --target "$target" --bin krbottle "${flags[@]}"
bin=$repo/target/zigbuild/$target/$profile/krbottle
file "$bin" 2>/dev/null || true
if command -v rcodesign >/dev/null; then
    bash "$here/sign-macos.sh" "$bin"
else
    say "rcodesign not found ('cargo install apple-codesign'): $bin is linked, not signed"
fi
