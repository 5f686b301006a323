#!/usr/bin/env bash
# Signs a macOS krbottle binary with macos/krbottle.entitlements, then verifies that the
# signature holds the hypervisor entitlement. On a Mac it uses Apple's `codesign`; elsewhere
# `rcodesign` (crates.io `apple-codesign`, `cargo install apple-codesign`), which signs Mach-O
# files on any OS.
#
# usage: scripts/sign-macos.sh BINARY [--identity ID] [--dylib PATH]
#   no --identity: an ad hoc signature (`-s -`), enough to run on the Mac that signed it or
#     that runs it from a local build; Gatekeeper does not check locally built binaries.
#   --identity "Developer ID Application: NAME (TEAM)": a distributable signature with the
#     hardened runtime (what notarization requires; `codesign` only). The hardened runtime's
#     library validation loads only libraries of the same team, so libkrun's dlopen of
#     libkrunfw needs the dylib signed by the same identity: pass the packaged one with --dylib
#     (Homebrew's would be refused; krbottle does not ask for
#     com.apple.security.cs.disable-library-validation to get round that).
#
# The entitlements are exactly one key, com.apple.security.hypervisor: libkrun creates the VM
# with Hypervisor.framework, which refuses a process without it. Nothing else is needed: the
# VMM needs no JIT, no unsigned executable memory and no network entitlement (those are App
# Sandbox keys, and krbottle is not an App Sandbox app; its VMM child confines itself with
# Seatbelt instead).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"

binary=${1:?usage: scripts/sign-macos.sh BINARY [--identity ID] [--dylib PATH]}
shift
identity=""
dylib=""
while [ $# -gt 0 ]; do
    case "$1" in
        --identity) identity=${2:?--identity needs a signing identity}; shift 2 ;;
        --dylib) dylib=${2:?--dylib needs a path}; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done
entitlements=$repo/macos/krbottle.entitlements
[ -f "$binary" ] || die "$binary not found"
head -c 4 "$binary" | od -An -tx1 | grep -Eq 'cf fa ed fe|ca fe ba be' \
    || die "$binary is not a Mach-O binary (build it for aarch64-apple-darwin first)"

if command -v codesign >/dev/null; then
    if [ -n "$identity" ]; then
        if [ -n "$dylib" ]; then
            codesign --force --timestamp --options runtime -s "$identity" "$dylib"
        fi
        codesign --force --timestamp --options runtime --entitlements "$entitlements" -s "$identity" "$binary"
    else
        codesign --force --entitlements "$entitlements" -s - "$binary"
    fi
    codesign --verify --strict --verbose=2 "$binary"
    got=$(codesign -d --entitlements - --xml "$binary" 2>/dev/null || codesign -d --entitlements :- "$binary")
elif command -v rcodesign >/dev/null; then
    [ -z "$identity" ] || die "--identity needs Apple's codesign (on a Mac); rcodesign signs ad hoc here"
    rcodesign sign --entitlements-xml-path "$entitlements" "$binary"
    got=$(rcodesign print-signature-info "$binary")
else
    die "neither codesign (macOS) nor rcodesign found: 'cargo install apple-codesign' gives rcodesign"
fi
echo "$got" | grep -q 'com.apple.security.hypervisor' \
    || die "the signature of $binary does not carry com.apple.security.hypervisor"
say "signed $binary; its signature carries com.apple.security.hypervisor"
