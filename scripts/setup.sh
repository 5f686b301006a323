#!/usr/bin/env bash
# Set-up for a fresh machine, then the main job on the built-in example.
#
# Installs what krbottle needs (Debian/Ubuntu; macOS steps are in the README), each step
# idempotent: uidmap (newuidmap/newgidmap), libkrunfw (guest kernel) into ./lib, the local Debian
# base image, the release binary. Then builds the example agent image (examples/agent) and
# unpacks it into .work/example-rootfs with `krbottle image unpack`.
#
# usage: scripts/setup.sh [--no-example]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"
cd "$repo"

case "$(uname -s)" in
    Linux) ;;
    Darwin) die "on macOS follow the README's macOS section (Homebrew libkrunfw, codesign)";;
    *) die "unsupported OS $(uname -s)";;
esac

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs), then re-run"
need_pkgs "newuidmap newgidmap" uidmap
need_pkgs "gcc" gcc
bash "$here/install-libkrunfw.sh"
bash "$here/build-base-image.sh"

say "building the release binary"
cargo build --release --locked -q
bin=$repo/target/release/krbottle
say "built $bin"

if [ "${1:-}" = "--no-example" ]; then exit 0; fi

say "example: building the agent image from examples/agent"
"$bin" image build examples/agent --tag krbottle-example/agent:latest
out=$repo/.work/example-rootfs
rm -rf "$out"
mkdir -p "$(dirname "$out")"
say "example: unpacking it into $out"
"$bin" image unpack krbottle-example/agent:latest "$out" --json
say "done: $out is the example agent's root filesystem"
say "this machine, as krbottle sees it (krbottle doctor):"
"$bin" doctor || say "krbottle run cannot boot guests here (see above); everything else works"
