#!/usr/bin/env bash
# The MCP client of the supervise tests: the official Python SDK (`mcp` from PyPI), in a venv
# under target/. Idempotent and safe to run from several tests at once; prints the venv's
# python on stdout.
#
# usage: scripts/mcp-client.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"

# Pinned: the tests read its API (mcp.Client, call_tool's progress callback).
MCP_VERSION=2.3.0
venv=${KRBOTTLE_MCP_VENV:-$repo/target/mcp-client-venv}
mkdir -p "$(dirname "$venv")"

ready() { "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$MCP_VERSION')" 2>/dev/null; }

exec 9>"$venv.lock"
flock 9
if ! ready; then
    usable() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; }
    python=""
    for p in python3 python3.13 python3.12 python3.11 python3.10; do
        if command -v "$p" >/dev/null && usable "$p"; then python=$p; break; fi
    done
    if [ -z "$python" ]; then
        # Debian's python3 keeps venv's pip bootstrap in a package of its own.
        [ "$(id -u)" = 0 ] || die "no Python 3.10+ with venv: run 'sudo apt-get install -y python3-venv'"
        say "installing python3-venv (for the MCP client)"
        apt-get update -q >/dev/null || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null \
            || die "apt-get install python3-venv failed"
        python=/usr/bin/python3
        usable "$python" || die "$python cannot make a venv (needs Python 3.10+)"
    fi
    rm -rf "$venv"
    say "installing the MCP client (mcp==$MCP_VERSION from PyPI) into $venv"
    "$python" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "mcp==$MCP_VERSION" >&2
    ready || die "mcp $MCP_VERSION did not install into $venv"
fi
echo "$venv/bin/python"
