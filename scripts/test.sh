#!/usr/bin/env bash
# The test command: everything CI runs. Installs the test prerequisites (idempotent), then
# formatting, lints, and the whole test suite (unit, binary, Docker-level). With CI set, tests
# that need Docker fail instead of skipping when it is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"
cd "$repo"

need_pkgs "newuidmap newgidmap" uidmap
bash "$here/install-libkrunfw.sh"
bash "$here/build-base-image.sh"

say "cargo fmt --check"
cargo fmt --check
say "cargo clippy"
cargo clippy --locked --all-targets -q -- -D warnings
say "cargo test"
cargo test --locked --all-targets
