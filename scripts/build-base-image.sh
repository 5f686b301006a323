#!/usr/bin/env bash
# Builds the local Debian base image that krbottle's Dockerfiles and tests start FROM.
# No registry can be reached, so the image is made with debootstrap from Debian's packages and
# `docker import`. Idempotent: does nothing when the tag already exists (pass --force to rebuild).
#
# usage: scripts/build-base-image.sh [--force]
# env:   KRBOTTLE_BASE_IMAGE (default krbottle/debian-base:bookworm), KRBOTTLE_DEBIAN_SUITE (bookworm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

tag=${KRBOTTLE_BASE_IMAGE:-krbottle/debian-base:bookworm}
suite=${KRBOTTLE_DEBIAN_SUITE:-bookworm}
force=${1:-}

command -v docker >/dev/null || die "docker is not installed: install Docker Engine (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer: start it (systemctl start docker) or set DOCKER_HOST"
if [ "$force" != "--force" ] && docker image inspect "$tag" >/dev/null 2>&1; then
    say "base image $tag already exists"
    exit 0
fi
need_pkgs debootstrap debootstrap
[ "$(id -u)" = 0 ] || die "debootstrap needs root: run 'sudo $0'"

work=$(mktemp -d "${TMPDIR:-/tmp}/krbottle-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
mirror=$(debian_mirror)
say "debootstrap $suite from $mirror (a few minutes)"
debootstrap --variant=minbase --include=ca-certificates "$suite" "$work/root" "$mirror" >"$work/log" 2>&1 \
    || { tail -20 "$work/log" >&2; die "debootstrap failed (log above)"; }
# Keep the image small and reproducible-ish: no apt lists or caches, no logs.
rm -rf "$work/root"/var/lib/apt/lists/* "$work/root"/var/cache/apt/*.bin "$work/root"/var/log/*.log
tar -C "$work/root" --numeric-owner -cf - . \
    | docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
say "built base image $tag"
