#!/usr/bin/env bash
# Installs libkrunfw (the guest kernel libkrun dlopens as libkrunfw.so.5) into the checkout's lib/,
# where the krbottle binary's RUNPATH finds it.
#
# libkrunfw5 is only in Debian unstable. This fetches that one package by name with an apt run
# that has its own source list and state directories, so the system's apt configuration, package
# lists and installed packages are left exactly as they were (adding unstable to the system's
# sources would upgrade libc). Idempotent.
#
# usage: scripts/install-libkrunfw.sh [DESTDIR]     (default: <checkout>/lib)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
dest=${1:-$(dirname "$here")/lib}
pkg=libkrunfw5
soname=libkrunfw.so.5

# Its licence file travels with it (scripts/package.sh ships both).
if [ -e "$dest/$soname" ] && [ -e "$dest/libkrunfw.copyright" ]; then
    say "libkrunfw already installed: $(readlink -f "$dest/$soname")"
    exit 0
fi
command -v apt-get >/dev/null || die "apt-get not found: on a non-Debian system install libkrunfw (>= 5) and set KRBOTTLE_LIBKRUNFW to its path"

state=$(mktemp -d "${TMPDIR:-/tmp}/krbottle-apt.XXXXXX")
trap 'rm -rf "$state"' EXIT
mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || die "$keyring missing: apt-get install debian-archive-keyring"
echo "deb [signed-by=$keyring] $(debian_mirror) unstable main" >"$state/sources.list"
apt_private=(
    -o "Dir::Etc::SourceList=$state/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache" -o Dir::State::status=/dev/null
    -o APT::Sandbox::User=root -o Acquire::Languages=none
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
)
say "fetching $pkg from Debian unstable (private apt state; the system is not touched)"
apt-get -q "${apt_private[@]}" update >"$state/update.log" 2>&1 \
    || { cat "$state/update.log" >&2; die "apt-get update of the private unstable list failed"; }
(cd "$state" && apt-get -q "${apt_private[@]}" download "$pkg" >"$state/download.log" 2>&1) \
    || { cat "$state/download.log" >&2; die "apt-get download $pkg failed"; }
deb=$(ls "$state"/${pkg}_*.deb)
dpkg-deb -x "$deb" "$state/x"
lib=$(find "$state/x" -name "$soname.*" -type f | head -1)
[ -n "$lib" ] || die "$deb has no $soname"
mkdir -p "$dest"
install -m 0644 "$lib" "$dest/$(basename "$lib")"
ln -sfn "$(basename "$lib")" "$dest/$soname.tmp" && mv -T "$dest/$soname.tmp" "$dest/$soname"
copyright=$(find "$state/x" -path "*/doc/$pkg/copyright" | head -1)
[ -n "$copyright" ] || die "$deb has no copyright file"
install -m 0644 "$copyright" "$dest/libkrunfw.copyright"
say "installed $(basename "$deb") as $dest/$(basename "$lib")"
