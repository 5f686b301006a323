# Shared helpers for krbottle's scripts. Sourced, not run.

say() { printf '[krbottle] %s\n' "$*" >&2; }
die() { printf '[krbottle] error: %s\n' "$*" >&2; exit 1; }

# The Debian mirror this machine already uses (first deb822 URIs or sources.list line for the
# main archive), so no host name is hard-coded here. KRBOTTLE_DEBIAN_MIRROR overrides it.
debian_mirror() {
    if [ -n "${KRBOTTLE_DEBIAN_MIRROR:-}" ]; then echo "$KRBOTTLE_DEBIAN_MIRROR"; return; fi
    local m
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/{for(i=2;i<=NF;i++) if ($i !~ /security/) {print $i; exit}}')
    [ -n "$m" ] || m=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null | head -1)
    [ -n "$m" ] || die "no Debian mirror found in /etc/apt/sources.list*; set KRBOTTLE_DEBIAN_MIRROR"
    echo "$m"
}

# Installs Debian packages by name if any of the given commands is missing.
# usage: need_pkgs "cmd1 cmd2" pkg1 pkg2 …
need_pkgs() {
    local cmds=$1; shift
    local missing=0 c
    for c in $cmds; do command -v "$c" >/dev/null 2>&1 || missing=1; done
    [ "$missing" = 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing $cmds: run 'sudo apt-get install -y $*'"
    say "installing $* (for $cmds)"
    if [ -z "${KRBOTTLE_APT_UPDATED:-}" ]; then
        apt-get update -q >/dev/null || die "apt-get update failed"
        export KRBOTTLE_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}
