#!/usr/bin/env bash
# Makes the release archive dist/krbottle-<version>-<target>.tar.gz: bin/krbottle, the guest
# kernel library where it may ship (lib/libkrunfw.so.5 on Linux, lib/libkrunfw.5.dylib on macOS;
# the binary's RUNPATH looks in ../lib), README.md, and LICENSES.md: krbottle's licence, the
# licence of libkrunfw (its Debian copyright file: the library is LGPL-2.1, the Linux kernel it
# carries GPL-2.0, whose source is Debian's `libkrunfw` source package) and the name, version and
# licence of every crate linked into the binary. The archive is reproducible (sorted names, zero
# owners and times), and a binary for this machine is run (`--version`) before it is kept.
#
# usage: scripts/package.sh [--target TRIPLE] [--binary PATH]
#   default: build --release for this machine. With --binary, package that binary as built for
#   TRIPLE (e.g. a signed macOS binary, see scripts/sign-macos.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"
cd "$repo"

target=$(rustc -vV | sed -n 's/^host: //p')
binary=""
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target=${2:?--target needs a triple}; shift 2 ;;
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        *) die "unknown argument $1 (usage: scripts/package.sh [--target TRIPLE] [--binary PATH])" ;;
    esac
done
host=$(rustc -vV | sed -n 's/^host: //p')
if [ -z "$binary" ]; then
    [ "$target" = "$host" ] || die "no --binary for $target: build it there (or with cargo zigbuild) and pass --binary"
    say "building krbottle (release)"
    cargo build --release --locked -q
    binary=target/release/krbottle
fi
[ -x "$binary" ] || die "$binary is not an executable file"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
case "$target" in
    *-linux-*) kernel=lib/libkrunfw.so.5 ;;
    *-apple-darwin) kernel=lib/libkrunfw.5.dylib ;;
    *) die "no package layout for $target" ;;
esac

name=krbottle-$version-$target
stage=$(mktemp -d "${TMPDIR:-/tmp}/krbottle-package.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/$name
mkdir -p "$root/bin" "$root/lib"
install -m 0755 "$binary" "$root/bin/krbottle"
cp README.md "$root/README.md"
if [ -e "$kernel" ]; then
    cp -L "$kernel" "$root/$kernel"
    shipped="shipped in lib/ ($(basename "$(readlink -f "$kernel")"))"
else
    shipped="not shipped: install it (Linux: scripts/install-libkrunfw.sh lib; macOS: brew install libkrunfw) into lib/ beside bin/"
    say "warning: $kernel missing; the archive does not carry the guest kernel"
fi
{
    echo "# Licences"
    echo
    echo "## krbottle $version"
    echo
    echo "Apache-2.0."
    echo
    echo "## libkrunfw (the guest kernel, loaded at run time): $shipped"
    echo
    echo "The library is LGPL-2.1-only; the Linux kernel inside it is GPL-2.0-only. Its"
    echo "corresponding source is Debian's \`libkrunfw\` source package (\`apt-get source libkrunfw\`)"
    echo "and https://github.com/libkrun/libkrunfw. Debian's copyright file follows."
    echo
    if [ -e lib/libkrunfw.copyright ]; then
        echo '```'; cat lib/libkrunfw.copyright; echo '```'
    else
        echo "(lib/libkrunfw.copyright missing: rerun scripts/install-libkrunfw.sh to fetch it)"
    fi
    echo
    echo "## Crates linked into the binary (name, version, licence)"
    echo
    cargo metadata --locked --format-version 1 --filter-platform "$target" | python3 -c '
import json, sys
m = json.load(sys.stdin)
pkgs = {p["id"]: p for p in m["packages"]}
nodes = {n["id"]: n for n in m["resolve"]["nodes"]}
root = m["resolve"]["root"]
seen, todo = set(), [root]
while todo:
    i = todo.pop()
    if i in seen:
        continue
    seen.add(i)
    for d in nodes[i]["deps"]:
        if any(k["kind"] in (None, "normal") for k in d["dep_kinds"]):
            todo.append(d["pkg"])
seen.discard(root)
for p in sorted((pkgs[i] for i in seen), key=lambda p: (p["name"], p["version"])):
    print("- %s %s: %s" % (p["name"], p["version"], p.get("license") or "see its crate"))
'
} >"$root/LICENSES.md"

if [ "$target" = "$host" ]; then
    got=$("$root/bin/krbottle" --version) || die "the packaged binary does not run"
    say "the packaged binary runs: $got"
fi
mkdir -p dist
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -czf "dist/$name.tar.gz.tmp" "$name"
mv "dist/$name.tar.gz.tmp" "dist/$name.tar.gz"
say "dist/$name.tar.gz ($(du -h "dist/$name.tar.gz" | cut -f1)): $(tar -tzf "dist/$name.tar.gz" | tr '\n' ' ')"
