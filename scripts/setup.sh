#!/usr/bin/env bash
# Set-up for a fresh machine, then the main job on the built-in example.
#
# Installs what krbottle needs (Debian/Ubuntu; macOS steps are in the README), each step
# idempotent: uidmap (newuidmap/newgidmap), libkrunfw (guest kernel) into ./lib, the local Debian
# base image, the release binary, the example agent's Python wheels. Then runs the built-in
# example: `krbottle start example` (examples/krbottle.toml), which builds the example agent's
# image, prepares its root, starts its bundle and boots it, where this machine can boot guests.
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

bash "$here/example-wheels.sh"
say "example: krbottle start example --manifest examples/krbottle.toml"
made_up=
if [ -z "${ANTHROPIC_API_KEY:-}" ]; then
    say "ANTHROPIC_API_KEY is not set: the bundle gets a made-up key (the smoke's API call is then refused with 401); export yours for a real answer"
    export ANTHROPIC_API_KEY=sk-ant-not-a-real-key-set-your-own
    made_up=1
fi
rc=0
"$bin" start example --manifest examples/krbottle.toml || rc=$?
case "$rc" in
    0) say "done: the example agent ran in its bottle (krbottle list shows it; krbottle rm NAME removes it)";;
    125) say "this machine cannot boot a guest (above: doctor's reason); everything up to the hypervisor ran."
         say "to see a real boot: scripts/vm-harness.sh runs start in an emulated machine with a capable hypervisor";;
    2) [ -n "$made_up" ] || die "the example's smoke failed (exit 2, above)"
       say "done: the example agent ran in its bottle; the API refused the made-up key, as it should";;
    *) die "krbottle start example failed (exit $rc)";;
esac
