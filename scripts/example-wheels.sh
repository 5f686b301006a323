#!/usr/bin/env bash
# Downloads the example agent's Python wheels (examples/agent/requirements.txt, for the Python
# of the Debian base image: 3.11, x86_64 or aarch64) into examples/agent/wheels, so the example
# image builds without reaching PyPI. Idempotent; the wheels are not committed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"
dir=$repo/examples/agent
mkdir -p "$dir/wheels"
if [ -f "$dir/wheels/.complete" ] && [ "$dir/wheels/.complete" -nt "$dir/requirements.txt" ]; then
    exit 0
fi
case "$(uname -m)" in
    x86_64|amd64) arch=x86_64 ;;
    aarch64|arm64) arch=aarch64 ;;
    *) die "no wheels for $(uname -m)" ;;
esac
command -v python3 >/dev/null || need_pkgs python3 python3
python3 -m pip --version >/dev/null 2>&1 || need_pkgs pip python3-pip
say "downloading the example agent's Python wheels (Anthropic's SDK) from PyPI"
python3 -m pip download -q -r "$dir/requirements.txt" --dest "$dir/wheels" --only-binary=:all: \
    --python-version 3.11 --platform "manylinux2014_$arch" --platform "manylinux_2_17_$arch"
touch "$dir/wheels/.complete"
