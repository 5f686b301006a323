#!/usr/bin/env bash
# Type-checks (clippy, -D warnings) the crate for Apple Silicon macOS from Linux: users run
# krbottle on macOS, and this keeps the platform seams compiling. Nothing is linked or run.
# The Apple standard library comes from rustup; there is no Apple SDK here, so the C code of
# -sys build scripts is "compiled" by a no-op compiler: `cargo check` never links it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"
cd "$repo"

target=aarch64-apple-darwin
if ! rustup target list --installed | grep -qx "$target"; then
    say "installing the Rust standard library for $target (rustup)"
    rustup target add "$target" >/dev/null || die "rustup target add $target failed"
fi
nocc=$repo/target/check-macos/no-cc
mkdir -p "$(dirname "$nocc")"
cat >"$nocc" <<'SH'
#!/bin/sh
# A C compiler and archiver that only touch their output file (-o FILE, or an archive name).
prev=
for a; do
    case "$prev" in -o) : >"$a" ;; esac
    case "$a" in *.a) : >"$a" ;; esac
    prev=$a
done
exit 0
SH
chmod +x "$nocc"
say "cargo clippy --target $target (type-check only)"
CC_aarch64_apple_darwin=$nocc AR_aarch64_apple_darwin=$nocc \
    CARGO_TARGET_DIR=$repo/target/check-macos \
    cargo clippy --locked --target "$target" --all-targets -q -- -D warnings
