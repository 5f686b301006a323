#!/usr/bin/env bash
# Creates the unprivileged user the rootless (`userns`) tests run as, with subordinate id ranges.
# Idempotent; needs root. The tests find it by name (KRBOTTLE_TEST_USER, default krbottle-test).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
user=${KRBOTTLE_TEST_USER:-krbottle-test}
[ "$(id -u)" = 0 ] || die "creating the test user needs root: run 'sudo $0'"
if ! id "$user" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
    say "created test user $user"
fi
grep -q "^$user:" /etc/subuid 2>/dev/null || usermod --add-subuids 300000-365535 "$user"
grep -q "^$user:" /etc/subgid 2>/dev/null || usermod --add-subgids 300000-365535 "$user"
