# The cases run inside the emulated machine (busybox sh), against real guest boots. Each case is
# a function `case_NAME` whose exit status is its verdict; its output stays in the console log.
# Nothing here has a network: every server a case needs runs in the emulated machine itself.

BB=/rootfs/busybox
AGENT=/rootfs/agent
RUN="krbottle run --cpus 1 --memory 256"

now() { cut -d' ' -f1 /proc/uptime; }

# bounded SECS OUT CMD...: runs CMD with stdout to OUT and stderr to OUT.err, at most SECS seconds; on
# overrun says so with what the machine was doing (processes, memory) and kills it. Its status is
# CMD's, or 124 after an overrun. Every start case goes through it: a hang is a failed case with
# its evidence, never a harness that runs into its own timeout.
bounded() {
    secs=$1 out=$2; shift 2
    "$@" >"$out" 2>"$out.err" &
    bpid=$!
    i=0
    while kill -0 $bpid 2>/dev/null; do
        if [ $i -ge $((secs * 5)) ]; then
            echo "TIMEOUT after ${secs}s: $*"; echo "--- its output so far:"; cat "$out" "$out.err"
            echo "--- processes:"; ps -o pid,ppid,stat,vsz,rss,args 2>/dev/null || ps
            echo "--- memory:"; cat /proc/meminfo | head -5
            pkill -TERM -P $bpid 2>/dev/null; kill -TERM $bpid 2>/dev/null; sleep 5
            pkill -KILL -f 'krbottle' 2>/dev/null
            wait $bpid 2>/dev/null
            return 124
        fi
        sleep 0.2; i=$((i + 1))
    done
    wait $bpid
}

# expect NAME ACTUAL EXPECTED
expect() {
    if [ "$2" = "$3" ]; then echo "ok   $1"; else echo "FAIL $1: got [$2], want [$3]"; return 1; fi
}

case_doctor_says_this_hypervisor_can_boot() {
    krbottle doctor --json >/tmp/doctor.json; cat /tmp/doctor.json
    grep -q '"verdict": *"can_boot"' /tmp/doctor.json
}

case_exit_code_and_separate_streams() {
    out=$($RUN $BB -- sh -c 'echo hi; echo to-stderr >&2; exit 7' 2>/tmp/err); rc=$?
    expect rc "$rc" 7 && expect stdout "$out" hi && grep -qx to-stderr /tmp/err \
        && ! grep -q hi /tmp/err
}

case_missing_command_is_a_clear_error() {
    $RUN $BB -- /bin/no-such-command 2>/tmp/err; rc=$?
    cat /tmp/err
    [ "$rc" != 0 ] && grep -q 'no-such-command' /tmp/err && [ "$(wc -l </tmp/err)" -le 3 ]
}

case_env_argv_workdir_and_ids_reach_the_guest() {
    envs=""
    i=1; while [ $i -le 100 ]; do envs="$envs -e V$i=value_$i"; i=$((i+1)); done
    out=$($RUN $envs -e 'Q=has "double" and '"'single'"' quotes = signs' -u 1000:1000 -w /tmp $BB -- \
        sh -c 'echo "argv=[$1]"; echo "Q=[$Q]"; env | grep -c "^V[0-9]*=value_"; echo "V100=$V100"; id -u; id -g; pwd' \
        sh 'one arg with spaces') || return 1
    echo "$out"
    expect argv "$(echo "$out" | sed -n 1p)" "argv=[one arg with spaces]" &&
    expect quotes "$(echo "$out" | sed -n 2p)" "Q=[has \"double\" and 'single' quotes = signs]" &&
    expect count "$(echo "$out" | sed -n 3p)" 100 &&
    expect v100 "$(echo "$out" | sed -n 4p)" "V100=value_100" &&
    expect uid "$(echo "$out" | sed -n 5p)" 1000 &&
    expect gid "$(echo "$out" | sed -n 6p)" 1000 &&
    expect pwd "$(echo "$out" | sed -n 7p)" /tmp
}

case_ownership_as_docker_sets_it() {
    out=$($RUN -u 1000:1000 -w /home/agent $AGENT -- /bin/sh -c '
        touch /home/agent/.claude.json && echo home-writable
        touch /tmp/x && echo tmp-writable
        stat -c "%a %U" /tmp
        stat -c "%A" /usr/bin/passwd
        touch /etc/passwd 2>/dev/null && echo etc-WRITABLE || echo etc-denied
        /opt/cap/busybox cat /proc/self/status | grep ^CapEff') || return 1
    echo "$out"
    expect home "$(echo "$out" | sed -n 1p)" home-writable &&
    expect tmp "$(echo "$out" | sed -n 2p)" tmp-writable &&
    expect tmp-mode "$(echo "$out" | sed -n 3p)" "1777 root" &&
    expect setuid "$(echo "$out" | sed -n 4p)" "-rwsr-xr-x" &&
    expect etc "$(echo "$out" | sed -n 5p)" etc-denied &&
    expect file-capability "$(echo "$out" | sed -n 6p)" "CapEff:	0000000000002000"
}

case_confinement_through_tsi() {
    # Two servers in the emulated machine; only the first is given to the guest, as port 8888.
    (while true; do echo from-allowed | nc -l -p 7001; done) >/dev/null 2>&1 & a=$!
    (while true; do echo from-forbidden | nc -l -p 7002; done) >/dev/null 2>&1 & b=$!
    sleep 1
    $RUN --endpoint 8888=127.0.0.1:7001 $BB -- sh -c '
        echo "endpoint=[$(sleep 2 | nc -w 3 127.0.0.1 8888)]"
        nc -w 3 127.0.0.1 7001 </dev/null >/dev/null 2>&1 && echo direct-CONNECTED || echo direct-refused
        nc -w 3 127.0.0.1 7002 </dev/null >/dev/null 2>&1 && echo other-CONNECTED || echo other-refused
        nc -w 3 10.0.2.2 80 </dev/null >/dev/null 2>&1 && echo outside-CONNECTED || echo outside-refused
        nslookup example.com >/dev/null 2>&1 && echo dns-RESOLVED || echo dns-failed
        (nc -l -p 9999 >/dev/null 2>&1 &) ; sleep 2; echo listening
        sleep 3' >/tmp/confined.out 2>&1 &
    guest=$!
    # Probe for the guest's listener while it is up (it listens ~2 s after its output starts).
    host_saw=no-listener
    i=0; while [ $i -lt 40 ] && kill -0 $guest 2>/dev/null; do
        grep -q listening /tmp/confined.out 2>/dev/null && {
            nc -w 2 127.0.0.1 9999 </dev/null >/dev/null 2>&1 && host_saw=LISTENER-VISIBLE; break; }
        sleep 0.5; i=$((i+1))
    done
    wait $guest
    kill $a $b 2>/dev/null
    out=$(cat /tmp/confined.out)
    echo "$out"
    expect endpoint "$(echo "$out" | grep endpoint=)" "endpoint=[from-allowed]" &&
    expect direct "$(echo "$out" | grep direct-)" direct-refused &&
    expect other "$(echo "$out" | grep other-)" other-refused &&
    expect outside "$(echo "$out" | grep outside-)" outside-refused &&
    expect dns "$(echo "$out" | grep dns-)" dns-failed &&
    expect guest-listened "$(echo "$out" | grep -c '^listening$')" 1 &&
    expect listen "$host_saw" no-listener
}

case_terminal_session_through_a_pty() {
    # util-linux `script` gives krbottle a pty; its stdin feeds the pty, so a delayed ^C is a key
    # press. The guest must see a terminal of the pty's size, follow a resize while it runs (a
    # background `stty` on the pty, as a terminal emulator would), get SIGINT from ^C, and the
    # pty's settings must be back as they were afterwards.
    cat >/tmp/tty-session.sh <<SESSION
stty rows 33 cols 101
stty -g >/tmp/stty.before
(i=0; while [ \$i -lt 200 ] && ! grep -q '33 101' /tmp/tty.out; do sleep 0.3; i=\$((i+1)); done
 sleep 1; stty rows 41 cols 119 </dev/tty) &
$RUN $BB -- sh -c 'test -t 0 && echo guest-has-tty; stty size; sleep 12; echo "resized-to \$(stty size)"; trap "echo guest-got-INT; exit 3" INT; echo guest-ready; sleep 60 & wait'
echo "run-rc=\$?"
stty -g >/tmp/stty.after
SESSION
    rm -f /tmp/tty.out
    (i=0; while [ $i -lt 120 ] && ! grep -q guest-ready /tmp/tty.out 2>/dev/null; do
        sleep 0.5; i=$((i+1)); done
     sleep 1; printf '\003'; sleep 5) | script -q -c "sh /tmp/tty-session.sh" /dev/null >/tmp/tty.out 2>&1
    out=$(tr -d '\r' </tmp/tty.out)
    echo "$out"
    echo "$out" | grep -q guest-has-tty &&
    echo "$out" | grep -q '^33 101$' &&
    expect window-resize "$(echo "$out" | grep -o 'resized-to .*')" "resized-to 41 119" &&
    echo "$out" | grep -q guest-got-INT &&
    expect rc "$(echo "$out" | grep -o 'run-rc=[0-9]*')" run-rc=3 &&
    expect terminal-restored "$(cat /tmp/stty.after)" "$(cat /tmp/stty.before)"
}

case_boot_timing_by_phase() {
    t0=$(now)
    $RUN -v $BB -- sh -c 'echo first-output' >/tmp/t.out 2>/tmp/t.err &
    pid=$!
    while ! grep -q first-output /tmp/t.out 2>/dev/null; do
        kill -0 $pid 2>/dev/null || break; sleep 0.05
    done
    t1=$(now)
    wait $pid; t2=$(now)
    awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "KRB-TIMING invocation->first-output %.2f s, first-output->exit %.2f s\n", b-a, c-b }'
    grep 'phases:' /tmp/t.err
    grep -q first-output /tmp/t.out
}

# `krbottle start` of the example agent, as a user runs it, with what the emulated machine has:
# the agent image as a saved archive, the bundle's daemons as host processes, the route host
# pinned to a stand-in for the Anthropic API on this machine's loopback.
START_KEY=sk-ant-harness-real-key-0123456789abcdef
start_env() {
    env KRBOTTLE_BUNDLE_RUNTIME=process KRBOTTLE_STATE_DIR=/start/state \
        KRBOTTLE_CACHE_DIR=/start/cache ANTHROPIC_API_KEY=$START_KEY "$@"
}

# Starts the stand-in API (once) and writes the manifest for its port.
start_fixture() {
    mkdir -p /start/state /start/cache
    if ! [ -s /tmp/api.port ]; then
        (python3 /start/fake_anthropic.py --cert /start/api.pem --key /start/api.key \
            --expect-key $START_KEY --log /tmp/api-keys.log >/tmp/api.out 2>&1 &)
        i=0; while [ $i -lt 300 ] && ! grep -q '^listening' /tmp/api.out 2>/dev/null; do
            sleep 0.2; i=$((i+1)); done
        sed -n 's/^listening //p' /tmp/api.out >/tmp/api.port
    fi
    port=$(cat /tmp/api.port)
    [ -n "$port" ] || { cat /tmp/api.out; return 1; }
    cat >/start/krbottle.toml <<MANIFEST
[agents.example]
image_archive = "example.tar"
command = ["python3", "/opt/example/smoke.py"]
prompt = "CLAUDE.md"
bottle = "example"

[bottles.example]
cpus = 1
memory_mib = 1024
env = { KRBOTTLE_SMOKE_BASE_URL = "https://api.anthropic.com:$port" }
allow = ["github.com"]
resolve = { "api.anthropic.com" = "127.0.0.1" }
upstream_ca_file = "api-ca.pem"
git_user = { name = "Harness Agent", email = "agent@harness.invalid" }

[[bottles.example.routes]]
host = "api.anthropic.com:$port"
header = "x-api-key"
token_env = "ANTHROPIC_API_KEY"

# The example's ask.py: the guest asks the human through supervise (the official MCP client).
[agents.asker]
image_archive = "example.tar"
command = ["python3", "/opt/example/ask.py", "deploy the harness", "asked from the guest"]
bottle = "asker"

[bottles.asker]
cpus = 1
memory_mib = 1024
supervise = true
MANIFEST
}

case_start_example_smoke_reaches_the_api_with_the_injected_key() {
    start_fixture || return 1
    : >/tmp/api-keys.log
    bounded 540 /tmp/smoke.out start_env krbottle start example --manifest /start/krbottle.toml \
        --name smoke; rc=$?
    cat /tmp/smoke.out /tmp/smoke.out.err
    echo "keys the API saw: $(sort -u /tmp/api-keys.log | tr '\n' ' ')"
    expect rc "$rc" 0 &&
    grep -q 'the API answered: Hello from the fake API' /tmp/smoke.out &&
    grep -q 'example.org is refused' /tmp/smoke.out &&
    expect api-saw "$(sort -u /tmp/api-keys.log)" "$START_KEY" &&
    ! grep -q "$START_KEY" /tmp/smoke.out /tmp/smoke.out.err
}

case_start_provisioned_files_as_the_guest_sees_them() {
    start_fixture || return 1
    bounded 300 /tmp/files.out start_env krbottle start example --manifest /start/krbottle.toml --name files -- sh -c '
        id -u; stat -c "%u:%g %a" ~/.claude.json ~/.claude ~/.claude/CLAUDE.md
        grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt >/dev/null && echo ca-in-bundle
        python3 -c "import json,os; d=json.load(open(os.path.expanduser(\"~/.claude.json\"))); print(d[\"hasCompletedOnboarding\"], d[\"projects\"][\"/workspace\"][\"hasTrustDialogAccepted\"])"
        git config user.name
        echo "key=$ANTHROPIC_API_KEY"'; rc=$?
    out=$(cat /tmp/files.out)
    echo "$out"; cat /tmp/files.out.err
    expect rc "$rc" 0 &&
    expect uid "$(echo "$out" | sed -n 1p)" 1000 &&
    expect claude-json "$(echo "$out" | sed -n 2p)" "1000:1000 600" &&
    expect claude-dir "$(echo "$out" | sed -n 3p)" "1000:1000 700" &&
    expect prompt "$(echo "$out" | sed -n 4p)" "1000:1000 600" &&
    expect ca "$(echo "$out" | sed -n 5p)" ca-in-bundle &&
    expect claude-state "$(echo "$out" | sed -n 6p)" "True True" &&
    expect git "$(echo "$out" | sed -n 7p)" "Harness Agent" &&
    echo "$out" | grep -q '^key=krbottle-placeholder'
}

# The guest calls request_approval through its relay with the MCP Python SDK, finding the server
# in the ~/.claude.json start provisioned; the human's side answers with `krbottle approve`.
case_start_supervise_the_guest_asks_and_the_host_approves() {
    start_fixture || return 1
    bounded 400 /tmp/ask.out start_env krbottle start asker --manifest /start/krbottle.toml \
        --name ask &
    asker=$!
    i=0; id=""
    while [ $i -lt 300 ] && [ -z "$id" ] && kill -0 $asker 2>/dev/null; do
        id=$(start_env krbottle queue ask --json 2>/dev/null | tr -d ' \n' |
            sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
        [ -n "$id" ] || sleep 1
        i=$((i + 1))
    done
    echo "the request in the host's queue: [$id]"
    [ -n "$id" ] && start_env krbottle approve "$id" --comment "go ahead, harness"
    wait $asker; rc=$?
    cat /tmp/ask.out /tmp/ask.out.err
    expect rc "$rc" 0 &&
    grep -q '^ask: APPROVED' /tmp/ask.out &&
    grep -q "Reviewer's comment: go ahead, harness" /tmp/ask.out
}

case_start_list_stop_resume_rm_of_a_running_bottle() {
    start_fixture || return 1
    start_env krbottle start example --manifest /start/krbottle.toml --name life -- \
        sh -c 'echo life-up; sleep 300' >/tmp/life.out 2>&1 &
    starter=$!
    i=0; while [ $i -lt 600 ] && ! grep -q life-up /tmp/life.out; do sleep 0.2; i=$((i+1)); done
    state=$(start_env krbottle list --json | tr -d ' \n')
    echo "list while running: $state"
    echo "$state" | grep -q '"name":"life","agent":"example","state":"running"' || return 1
    start_env krbottle stop life || return 1
    wait $starter; echo "start ended with $?"
    start_env krbottle list --json | tr -d ' \n' | grep -q '"name":"life","agent":"example","state":"stopped"' || return 1
    # Resume runs the kept command again on the kept root.
    start_env krbottle resume life >/tmp/life2.out 2>&1 &
    starter=$!
    i=0; while [ $i -lt 600 ] && ! grep -q life-up /tmp/life2.out; do sleep 0.2; i=$((i+1)); done
    grep -q life-up /tmp/life2.out || { cat /tmp/life2.out; return 1; }
    start_env krbottle stop life && wait $starter
    start_env krbottle rm life && ! [ -e /start/state/bottles/life ]
}

# git-gate's upstream: a bare repository of user `git` behind a real sshd on this machine's
# loopback (the binaries, the keys and /etc/hosts' git.harness.invalid are put here by
# scripts/vm-harness.sh), started once, with one commit on main.
UPSTREAM=/srv/git/org/app.git
git_fixture() {
    if ! [ -s /run/sshd.pid ]; then
        mkdir -p /run/sshd /srv/git/org && chmod 755 /run/sshd
        (export HOME=/tmp/seed-home
         git init -q --bare -b main $UPSTREAM &&
         git clone -q $UPSTREAM /tmp/seed 2>/dev/null &&
         echo seeded >/tmp/seed/README &&
         git -C /tmp/seed add README &&
         git -C /tmp/seed -c user.name=Upstream -c user.email=up@harness.invalid commit -q -m seed &&
         git -C /tmp/seed push -q origin HEAD:main) || return 1
        chown -R git:git /srv/git
        cat >/start/git/sshd_config <<'SSHD'
ListenAddress 127.0.0.1:22
HostKey /start/git/ssh_host_ed25519_key
AuthorizedKeysFile /start/git/authorized_keys
AllowUsers git
PidFile /run/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UseDNS no
SSHD
        /usr/sbin/sshd -f /start/git/sshd_config -E /tmp/sshd.log || { cat /tmp/sshd.log; return 1; }
        i=0; while [ $i -lt 100 ] && ! [ -s /run/sshd.pid ]; do sleep 0.2; i=$((i+1)); done
    fi
    [ -s /run/sshd.pid ] || { cat /tmp/sshd.log; return 1; }
    git -c safe.directory='*' --git-dir=$UPSTREAM rev-parse main >/tmp/upstream-seed
}

# The example agent's guest clones the upstream's own URL (the provisioned insteadOf sends it
# to the gate through the guest's relay), commits, pushes an agent/* branch, which reaches the
# upstream over SSH, and main, which the gate refuses naming the rule; the upstream's refs and
# the gate's decision lines say the same.
case_start_git_clone_and_push_through_the_gate() {
    mkdir -p /start/state /start/cache
    git_fixture || return 1
    cat >/start/git.toml <<'MANIFEST'
[agents.pusher]
image_archive = "example.tar"
bottle = "gitbox"

[bottles.gitbox]
cpus = 1
memory_mib = 1024
git_user = { name = "Harness Agent", email = "agent@harness.invalid" }

[[bottles.gitbox.git]]
name = "app"
upstream = "git@git.harness.invalid:org/app.git"
identity_file = "git/id_ed25519"
known_hosts = "git/known_hosts"
push = ["agent/*"]
protected = ["main"]
MANIFEST
    bounded 400 /tmp/git.out start_env krbottle start pusher --manifest /start/git.toml \
        --name gitbox -- sh -c '
        git clone -q git@git.harness.invalid:org/app.git app && cd app || exit 1
        echo "cloned=$(git rev-parse HEAD)"
        echo "from the guest" >agent.txt && git add agent.txt && git commit -q -m "agent change" || exit 1
        echo "agent-head=$(git rev-parse HEAD)"
        git push origin HEAD:agent/harness 2>&1; echo "push-agent-rc=$?"
        git push origin HEAD:main 2>&1; echo "push-main-rc=$?"'; rc=$?
    out=$(cat /tmp/git.out)
    echo "$out"; cat /tmp/git.out.err
    seed=$(cat /tmp/upstream-seed)
    head=$(echo "$out" | sed -n 's/^agent-head=//p')
    up() { git -c safe.directory='*' --git-dir=$UPSTREAM rev-parse --verify -q "$1"; }
    echo "upstream after the pushes: main=$(up main) agent/harness=$(up agent/harness)"
    start_env krbottle logs gitbox --daemon git-gate >/tmp/git-logs.out 2>&1; logs_rc=$?
    echo "--- krbottle logs gitbox --daemon git-gate (exit $logs_rc):"; cat /tmp/git-logs.out
    # decided REF WORDS...: how many of the gate's decision lines for REF hold every WORD.
    decided() {
        ref=$1; shift
        lines=$(grep "\"ref\":\"refs/heads/$ref\"" /tmp/git-logs.out)
        for w in "$@"; do lines=$(echo "$lines" | grep -F "$w"); done
        echo "$lines" | grep -c .
    }
    push_main=$(echo "$out" | grep -o 'push-main-rc=[0-9]*')
    expect rc "$rc" 0 &&
    expect cloned-upstream-main "$(echo "$out" | sed -n 's/^cloned=//p')" "$seed" &&
    expect push-agent "$(echo "$out" | grep -o 'push-agent-rc=[0-9]*')" push-agent-rc=0 &&
    expect upstream-agent-branch "$(up agent/harness)" "$head" &&
    expect push-main-refused "$([ -n "$push_main" ] && [ "$push_main" != push-main-rc=0 ] && echo yes)" yes &&
    expect remote-names-the-rule "$(echo "$out" | grep -c '^remote: krbottle git-gate refused refs/heads/main (rule protected)')" 1 &&
    expect upstream-main-unmoved "$(up main)" "$seed" &&
    expect logs-rc "$logs_rc" 0 &&
    expect log-allow "$(decided agent/harness '"decision":"allow"' '"daemon":"git-gate"')" 1 &&
    expect log-deny "$(decided main '"decision":"deny"' '"rule":"protected"' '"daemon":"git-gate"')" 1
}

run_case() {
    echo "KRB-CASE $1"
    t0=$(now)
    if timeout "${KRB_CASE_TIMEOUT:-600}" sh -c ". /cases.sh; case_$1" 2>&1; then r=pass; else r=fail; fi
    echo "KRB-RESULT $1 $r $(now) (started $t0)"
}

if [ -z "${KRB_CASES_SOURCED:-}" ]; then
    export KRB_CASES_SOURCED=1
    for c in $(grep -o '^case_[a-z0-9_]*' /cases.sh | sed 's/^case_//'); do run_case "$c"; done
fi
