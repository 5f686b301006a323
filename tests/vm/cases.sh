# The cases run inside the emulated machine (busybox sh). Each case is a function `case_NAME`
# whose exit status is its verdict; its output is kept in the console log for failures.

BB=/rootfs/busybox
AGENT=/rootfs/agent

case_kvm_is_usable() {
    test -c /dev/kvm && dmesg | grep -qi 'nested paging'
}

run_case() {
    echo "KRB-CASE $1"
    t0=$(cut -d' ' -f1 /proc/uptime)
    if timeout 180 sh -c ". /cases.sh; case_$1" 2>&1; then r=pass; else r=fail; fi
    echo "KRB-RESULT $1 $r $(cut -d' ' -f1 /proc/uptime) (started $t0)"
}

if [ "${0##*/}" = cases.sh ] || [ -z "${KRB_CASES_SOURCED:-}" ]; then
    export KRB_CASES_SOURCED=1
    for c in $(grep -o '^case_[a-z0-9_]*' /cases.sh | sed 's/^case_//'); do run_case "$c"; done
fi
