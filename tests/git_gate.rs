//! git-gate against a real SSH upstream: an openssh-server container (built from the local
//! Debian base) holding bare repositories, the gate in the bundle container (and once as a
//! host process), and a stock `git` client pushing through it. Each refused push must say why
//! in `remote:` lines and leave the upstream untouched. These tests skip (saying why) without a
//! Docker engine or the local base image, and fail instead when `CI` is set.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_krbottle");
const TOKEN_ENV: &str = "KRB_GG_TEST_TOKEN";
/// The bundle's secret (a route token) that no push may carry.
const TOKEN: &str = "kgg-route-token-7f3a9c1e5b2d";

const UPSTREAM_DOCKERFILE: &str = r#"
FROM krbottle/debian-base:bookworm
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server git \
    && rm -rf /var/lib/apt/lists/*
RUN useradd -m -s /bin/sh git && usermod -p '*' git && mkdir -p /run/sshd \
    && su git -c 'git init -q --bare -b main /home/git/app.git && git init -q --bare -b main /home/git/other.git' \
    && su git -c 'cd /tmp && git init -q -b main seed && cd seed && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m seed && git push -q /home/git/app.git main && git push -q /home/git/other.git main && rm -rf /tmp/seed'
COPY pre-receive /home/git/app.git/hooks/pre-receive
COPY entry.sh /entry.sh
RUN chmod 755 /home/git/app.git/hooks/pre-receive /entry.sh
ENTRYPOINT ["/entry.sh"]
"#;

const UPSTREAM_ENTRY: &str = r#"#!/bin/sh
set -e
mkdir -p /home/git/.ssh
printf '%s\n' "$AUTHORIZED_KEY" > /home/git/.ssh/authorized_keys
chown -R git /home/git/.ssh && chmod 700 /home/git/.ssh && chmod 600 /home/git/.ssh/authorized_keys
exec /usr/sbin/sshd -D -e
"#;

/// The upstream's own policy: one branch name it refuses, with its own message.
const UPSTREAM_HOOK: &str = r#"#!/bin/sh
while read old new ref; do
    case "$ref" in
        refs/heads/agent/upstream-no*) echo "upstream policy: $ref is not welcome here" >&2; exit 1 ;;
    esac
done
"#;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn docker(args: &[&str]) -> (bool, String) {
    run(Command::new("docker").args(args))
}

/// The upstream image, built once per test binary; and its ed25519 host key.
fn upstream_image() -> &'static (String, String) {
    static IMAGE: OnceLock<(String, String)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tag = common::docker_build(
            "krbottle-test/git-upstream:1",
            UPSTREAM_DOCKERFILE,
            &[
                ("entry.sh", UPSTREAM_ENTRY.as_bytes()),
                ("pre-receive", UPSTREAM_HOOK.as_bytes()),
            ],
        );
        let (ok, key) = docker(&[
            "run",
            "--rm",
            "--entrypoint",
            "cat",
            &tag,
            "/etc/ssh/ssh_host_ed25519_key.pub",
        ]);
        assert!(ok, "{key}");
        let key = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        (tag, key)
    })
}

fn keygen(path: &Path) -> String {
    let (ok, out) = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "krbottle-test", "-f"])
        .arg(path));
    assert!(ok, "ssh-keygen: {out}");
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// A host-side git client with its own empty HOME and no proxy.
fn git(dir: &Path, home: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "agent")
        .env("GIT_AUTHOR_EMAIL", "agent@example.test")
        .env("GIT_COMMITTER_NAME", "agent")
        .env("GIT_COMMITTER_EMAIL", "agent@example.test");
    for v in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    run(&mut cmd)
}

/// One bottle with one gate repository, its bundle up, and its own upstream container on the
/// bundle's network (labelled like the bundle, so `down` removes it too).
struct Gate {
    dir: tempfile::TempDir,
    state: PathBuf,
    name: String,
    record: Value,
    upstream: String,
    repo: String,
}

struct GateSpec<'a> {
    suffix: &'a str,
    repo: &'a str,
    /// Trust the upstream's real host key (else another one).
    right_host_key: bool,
    settings: &'a str,
}

impl Gate {
    fn new(spec: GateSpec<'_>) -> Gate {
        let (image, host_key) = upstream_image();
        let dir = tempfile::tempdir().unwrap();
        let name = format!("kg{}{}", std::process::id(), spec.suffix);
        let identity = dir.path().join("id_gate");
        let public = keygen(&identity);
        let trusted = if spec.right_host_key {
            host_key.clone()
        } else {
            let other = keygen(&dir.path().join("not_the_host"));
            other
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("upstream.test {trusted}\n")).unwrap();
        let manifest = dir.path().join("krbottle.toml");
        std::fs::write(
            &manifest,
            format!(
                "[bottles.{name}]\nallow = [\"example.com\"]\n\
                 [[bottles.{name}.routes]]\nhost = \"api.example.test\"\nheader = \"x-api-key\"\ntoken_env = \"{TOKEN_ENV}\"\n\
                 [[bottles.{name}.git]]\nname = \"{repo}\"\nupstream = \"git@upstream.test:{repo}.git\"\n\
                 identity_file = \"{}\"\nknown_hosts = \"{}\"\nfetch_interval_secs = 0\n{}\n",
                identity.display(),
                known_hosts.display(),
                spec.settings,
                repo = spec.repo,
            ),
        )
        .unwrap();
        let state = dir.path().join("state");
        let out = Command::new(BIN)
            .args(["bundle", "up", &name, "--json", "--manifest"])
            .arg(&manifest)
            .env("KRBOTTLE_STATE_DIR", &state)
            .env(TOKEN_ENV, TOKEN)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bundle up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let record: Value = serde_json::from_slice(&out.stdout).unwrap();
        let upstream = format!("{name}-upstream");
        let (ok, out) = docker(&[
            "run",
            "-d",
            "--name",
            &upstream,
            "--network",
            record["network"].as_str().unwrap(),
            "--network-alias",
            "upstream.test",
            "--label",
            "krbottle.role=bundle",
            "--label",
            &format!("krbottle.bottle={name}"),
            "--label",
            &format!("krbottle.state-dir={}", state.display()),
            "-e",
            &format!("AUTHORIZED_KEY={public}"),
            image,
        ]);
        assert!(ok, "upstream: {out}");
        let gate = Gate {
            dir,
            state,
            name,
            record,
            upstream,
            repo: spec.repo.to_string(),
        };
        gate.wait_for_sshd();
        gate
    }

    fn wait_for_sshd(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if docker(&["exec", &self.upstream, "test", "-e", "/run/sshd.pid"]).0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "sshd never started: {}",
            docker(&["logs", &self.upstream]).1
        );
    }

    /// The host URL of the gate repository, from `bundle up --json`.
    fn url(&self) -> String {
        self.record["git"][&self.repo]
            .as_str()
            .unwrap_or_else(|| panic!("no git remote in {}", self.record))
            .to_string()
    }

    fn addr(&self) -> SocketAddr {
        self.record["endpoints"]["git-gate"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn home(&self) -> PathBuf {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        home
    }

    /// A clone of the gate repository.
    fn clone_work(&self, dir: &str) -> PathBuf {
        let work = self.dir.path().join(dir);
        let (ok, out) = git(self.dir.path(), &self.home(), &["clone", &self.url(), dir]);
        assert!(ok, "clone through the gate: {out}");
        work
    }

    /// The upstream's value of `refname`, if it has it.
    fn upstream_ref(&self, refname: &str) -> Option<String> {
        let (ok, out) = docker(&[
            "exec",
            &self.upstream,
            "git",
            "--git-dir",
            &format!("/home/git/{}.git", self.repo),
            "rev-parse",
            "--verify",
            "--quiet",
            refname,
        ]);
        ok.then(|| out.trim().to_string())
    }

    fn logs(&self) -> String {
        run(Command::new(BIN)
            .args(["bundle", "logs", &self.name])
            .env("KRBOTTLE_STATE_DIR", &self.state))
        .1
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["bundle", "down", &self.name])
            .env("KRBOTTLE_STATE_DIR", &self.state)
            .output();
    }
}

fn commit_file(work: &Path, home: &Path, file: &str, contents: &[u8], msg: &str) -> String {
    let path = work.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, contents).unwrap();
    let (ok, out) = git(work, home, &["add", file]);
    assert!(ok, "{out}");
    let (ok, out) = git(work, home, &["commit", "-q", "-m", msg]);
    assert!(ok, "{out}");
    head(work, home)
}

fn head(work: &Path, home: &Path) -> String {
    git(work, home, &["rev-parse", "HEAD"]).1.trim().to_string()
}

/// A push that must be refused by `rule`, saying so in `remote:` lines, naming `refname`.
fn assert_refused(out: &(bool, String), rule: &str, refname: &str) {
    let (ok, text) = out;
    assert!(!ok, "the push went through: {text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("remote:") && l.contains(&format!("(rule {rule})")))
        .unwrap_or_else(|| panic!("no remote: line naming rule {rule}: {text}"));
    assert!(line.contains(refname), "{line}");
    assert!(!text.contains(TOKEN), "the secret was echoed: {text}");
}

fn ready() -> bool {
    common::require_docker(&common::current_test())
}

#[test]
fn pushes_land_upstream_only_through_the_policy() {
    if !ready() {
        return;
    }
    let gate = Gate::new(GateSpec {
        suffix: "p",
        repo: "app",
        right_host_key: true,
        settings: "push = [\"agent/*\"]\nprotected = [\"main\", \"agent/locked\"]\nmax_push_mib = 1\n",
    });
    let home = gate.home();
    let work = gate.clone_work("work");
    let seed = gate
        .upstream_ref("refs/heads/main")
        .expect("the upstream's main");
    assert_eq!(head(&work, &home), seed, "the clone is the upstream's");

    // An allowed branch lands upstream.
    let first = commit_file(&work, &home, "a.txt", b"hello\n", "first");
    let (ok, out) = git(&work, &home, &["push", "origin", "HEAD:agent/ok"]);
    assert!(ok, "allowed push: {out}");
    assert_eq!(
        gate.upstream_ref("refs/heads/agent/ok").as_deref(),
        Some(first.as_str())
    );

    // Force, with or without a lease, and with --no-verify: refused, upstream unchanged.
    let (ok, out) = git(
        &work,
        &home,
        &["commit", "-q", "--amend", "-m", "rewritten"],
    );
    assert!(ok, "{out}");
    assert_refused(
        &git(&work, &home, &["push", "-f", "origin", "HEAD:agent/ok"]),
        "force",
        "refs/heads/agent/ok",
    );
    assert_refused(
        &git(
            &work,
            &home,
            &[
                "push",
                "--force-with-lease",
                "--no-verify",
                "origin",
                "HEAD:agent/ok",
            ],
        ),
        "force",
        "refs/heads/agent/ok",
    );
    assert_eq!(
        gate.upstream_ref("refs/heads/agent/ok").as_deref(),
        Some(first.as_str())
    );
    let (ok, out) = git(&work, &home, &["reset", "-q", "--hard", &first]);
    assert!(ok, "{out}");

    // Delete, protected, outside the patterns, a tag.
    assert_refused(
        &git(&work, &home, &["push", "origin", ":agent/ok"]),
        "delete",
        "refs/heads/agent/ok",
    );
    assert_eq!(
        gate.upstream_ref("refs/heads/agent/ok").as_deref(),
        Some(first.as_str())
    );
    assert_refused(
        &git(
            &work,
            &home,
            &["push", "--no-verify", "origin", "HEAD:main"],
        ),
        "protected",
        "refs/heads/main",
    );
    assert_refused(
        &git(&work, &home, &["push", "origin", "HEAD:agent/locked"]),
        "protected",
        "refs/heads/agent/locked",
    );
    assert_refused(
        &git(&work, &home, &["push", "origin", "HEAD:feature"]),
        "not_in_push",
        "refs/heads/feature",
    );
    assert_refused(
        &git(&work, &home, &["push", "origin", "HEAD:refs/notes/x"]),
        "not_in_push",
        "refs/notes/x",
    );
    let (ok, out) = git(&work, &home, &["tag", "v1"]);
    assert!(ok, "{out}");
    assert_refused(
        &git(&work, &home, &["push", "origin", "v1"]),
        "tag",
        "refs/tags/v1",
    );
    // One refused ref refuses the whole push.
    let both = git(
        &work,
        &home,
        &["push", "origin", "HEAD:agent/with-main", "HEAD:main"],
    );
    assert_refused(&both, "protected", "refs/heads/main");
    for r in [
        "refs/heads/main",
        "refs/heads/agent/locked",
        "refs/heads/feature",
        "refs/notes/x",
        "refs/tags/v1",
        "refs/heads/agent/with-main",
    ] {
        let want = (r == "refs/heads/main").then(|| seed.clone());
        assert_eq!(gate.upstream_ref(r), want, "{r} reached the upstream");
    }

    // Push options are not offered: the push fails before anything is sent.
    let (ok, out) = git(
        &work,
        &home,
        &["push", "-o", "ci.skip", "origin", "HEAD:agent/opts"],
    );
    assert!(!ok && out.contains("push options"), "{out}");
    assert_eq!(gate.upstream_ref("refs/heads/agent/opts"), None);

    // Oversized: 1.5 MiB of incompressible bytes against a 1 MiB cap.
    let mut noise = Vec::with_capacity(3 << 19);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while noise.len() < 3 << 19 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    commit_file(&work, &home, "big.bin", &noise, "big");
    assert_refused(
        &git(&work, &home, &["push", "origin", "HEAD:agent/big"]),
        "max_push_mib",
        "refs/heads/agent/big",
    );
    assert_eq!(gate.upstream_ref("refs/heads/agent/big"), None);
    let (ok, out) = git(&work, &home, &["reset", "-q", "--hard", &first]);
    assert!(ok, "{out}");

    // The upstream's own refusal reaches the agent, and the gate's ref does not move.
    let out = git(&work, &home, &["push", "origin", "HEAD:agent/upstream-no"]);
    assert_refused(&out, "upstream_refused", "refs/heads/agent/upstream-no");
    assert!(
        out.1.lines().any(|l| l.starts_with("remote:")
            && l.contains("upstream policy: refs/heads/agent/upstream-no is not welcome here")),
        "{}",
        out.1
    );
    assert_eq!(gate.upstream_ref("refs/heads/agent/upstream-no"), None);
    let (_, remote_refs) = git(&work, &home, &["ls-remote", "origin"]);
    assert!(
        !remote_refs.contains("upstream-no"),
        "the gate's ref moved: {remote_refs}"
    );

    // Upstream's new commits reach the agent through the gate.
    let (ok, out) = docker(&[
        "exec",
        "-u",
        "git",
        &gate.upstream,
        "sh",
        "-c",
        "cd /tmp && git clone -q /home/git/app.git up && cd up && git -c user.name=u -c user.email=u@u commit -q --allow-empty -m upstream-news && git push -q origin HEAD:main && git rev-parse HEAD",
    ]);
    assert!(ok, "{out}");
    let news = out.lines().last().unwrap().trim().to_string();
    let (ok, out) = git(&work, &home, &["fetch", "origin"]);
    assert!(ok, "{out}");
    assert_eq!(
        git(&work, &home, &["rev-parse", "origin/main"]).1.trim(),
        news
    );

    // One decision line per ref, tagged with the daemon, never the secret.
    let logs = gate.logs();
    let decisions: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["daemon"] == "git-gate")
        .collect();
    let find = |r: &str, decision: &str| {
        decisions
            .iter()
            .any(|d| d["ref"] == r && d["decision"] == decision)
    };
    assert!(find("refs/heads/agent/ok", "allow"), "{logs}");
    assert!(
        decisions
            .iter()
            .any(|d| d["ref"] == "refs/heads/agent/ok" && d["rule"] == "force"),
        "{logs}"
    );
    assert!(
        decisions
            .iter()
            .any(|d| d["ref"] == "refs/tags/v1" && d["rule"] == "tag"),
        "{logs}"
    );
    assert!(find("refs/heads/agent/upstream-no", "fail"), "{logs}");
    assert!(
        decisions
            .iter()
            .any(|d| d["ref"] == "refs/heads/agent/with-main" && d["rule"] == "other_ref_refused"),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN));
}

#[test]
fn secrets_and_keys_never_leave() {
    if !ready() {
        return;
    }
    let gate = Gate::new(GateSpec {
        suffix: "s",
        repo: "app",
        right_host_key: true,
        settings: "push = [\"agent/*\"]\n",
    });
    let home = gate.home();
    let work = gate.clone_work("work");
    let base = head(&work, &home);
    let reset = |to: &str| {
        let (ok, out) = git(&work, &home, &["reset", "-q", "--hard", to]);
        assert!(ok, "{out}");
    };

    // The raw token in a file.
    let c = commit_file(
        &work,
        &home,
        "config/settings.env",
        format!("KEY={TOKEN}\n").as_bytes(),
        "settings",
    );
    let out = git(&work, &home, &["push", "origin", "HEAD:agent/s1"]);
    assert_refused(&out, "secret", "refs/heads/agent/s1");
    assert!(
        out.1.contains("config/settings.env") && out.1.contains(&c) && out.1.contains(TOKEN_ENV),
        "{}",
        out.1
    );
    reset(&base);

    // Its base64 form, three commits deep.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("token: {TOKEN}"));
    let deep = commit_file(&work, &home, "deep/blob.txt", b64.as_bytes(), "one");
    std::fs::remove_file(work.join("deep/blob.txt")).unwrap();
    let (ok, out) = git(&work, &home, &["commit", "-q", "-am", "two"]);
    assert!(ok, "{out}");
    commit_file(&work, &home, "three.txt", b"three\n", "three");
    let out = git(&work, &home, &["push", "origin", "HEAD:agent/s2"]);
    assert_refused(&out, "secret", "refs/heads/agent/s2");
    assert!(
        out.1.contains("deep/blob.txt") && out.1.contains(&deep),
        "{}",
        out.1
    );
    reset(&base);

    // A private key.
    let key = gate.dir.path().join("leaked_key");
    keygen(&key);
    commit_file(
        &work,
        &home,
        "id_leaked",
        &std::fs::read(&key).unwrap(),
        "oops",
    );
    let out = git(&work, &home, &["push", "origin", "HEAD:agent/s3"]);
    assert_refused(&out, "credential", "refs/heads/agent/s3");
    assert!(
        out.1.contains("private key") && out.1.contains("id_leaked"),
        "{}",
        out.1
    );
    reset(&base);

    for r in ["agent/s1", "agent/s2", "agent/s3"] {
        assert_eq!(
            gate.upstream_ref(&format!("refs/heads/{r}")),
            None,
            "{r} reached the upstream"
        );
    }
    let logs = gate.logs();
    assert!(logs.contains("\"decision\":\"block\""), "{logs}");
    assert!(!logs.contains(TOKEN) && !logs.contains(&b64));

    // The identity file is not reachable through the gate: any path, any repository name.
    let identity = std::fs::read_to_string(gate.dir.path().join("id_gate")).unwrap();
    let key_body = identity.lines().nth(1).unwrap().to_string();
    for path in [
        "/../run/krbottle/git-keys/app/identity",
        "/app.git/../../../run/krbottle/git-keys/app/identity",
        "/run/krbottle/git-keys/app/identity",
        "/%2e%2e/%2e%2e/run/krbottle/git-keys/app/identity",
        "/app.git/HEAD",
        "/app.git/config",
        "/app.git/hooks/pre-receive",
        "/app.git/objects/info/packs",
        "/../../run/krbottle/git-keys/app/info/refs?service=git-upload-pack",
        "/git-keys/info/refs?service=git-upload-pack",
        "/.home/info/refs?service=git-upload-pack",
        "/other.git/info/refs?service=git-upload-pack",
    ] {
        let (status, body) = raw_get(gate.addr(), path);
        assert_ne!(status, 200, "{path} was served: {body}");
        assert!(
            !body.contains(&key_body) && !body.contains("PRIVATE KEY"),
            "{path}: {body}"
        );
    }
    for url in [
        format!("http://{}/../app.git", gate.addr()),
        format!("http://{}/run/krbottle/git-keys/app", gate.addr()),
        format!("http://{}//run/krbottle/git-keys/app/identity", gate.addr()),
    ] {
        let (ok, out) = git(gate.dir.path(), &home, &["ls-remote", &url]);
        assert!(
            !ok || out.trim().is_empty() || !out.contains("PRIVATE"),
            "{url}: {out}"
        );
        assert!(!out.contains(&key_body));
    }
}

/// One raw HTTP GET of `path` exactly as given (no client normalises it); status and body.
fn raw_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn two_bottles_have_separate_gates_and_host_keys_are_strict() {
    if !ready() {
        return;
    }
    let a = Gate::new(GateSpec {
        suffix: "a",
        repo: "app",
        right_host_key: true,
        settings: "push = [\"agent/*\"]\n",
    });
    let b = Gate::new(GateSpec {
        suffix: "b",
        repo: "other",
        right_host_key: false,
        settings: "push = [\"agent/*\"]\n",
    });
    assert_ne!(a.addr(), b.addr());
    let home = a.home();
    // Neither gate serves the other's repository.
    for (gate, other) in [(&a, "other"), (&b, "app")] {
        let url = format!("http://{}/{other}.git", gate.addr());
        let (ok, out) = git(gate.dir.path(), &home, &["ls-remote", &url]);
        assert!(!ok, "{url} served: {out}");
    }
    // A wrong host key: nothing is fetched, and a push is refused before anything is sent.
    let work = b.dir.path().join("work");
    let (ok, out) = git(b.dir.path(), &home, &["clone", &b.url(), "work"]);
    assert!(ok, "{out}");
    assert_eq!(
        git(&work, &home, &["rev-parse", "--verify", "-q", "HEAD"])
            .1
            .trim(),
        "",
        "fetched past a wrong host key"
    );
    commit_file(&work, &home, "x.txt", b"x\n", "x");
    let out = git(&work, &home, &["push", "origin", "HEAD:agent/x"]);
    assert_refused(&out, "upstream_refused", "refs/heads/agent/x");
    assert!(out.1.contains("Host key verification failed"), "{}", out.1);
    assert_eq!(b.upstream_ref("refs/heads/agent/x"), None);
}

#[test]
fn the_gate_runs_as_a_host_process() {
    if !ready() {
        return;
    }
    let (image, host_key) = upstream_image();
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("id_gate");
    let public = keygen(&identity);
    let container = format!("kg{}h-upstream", std::process::id());
    let (ok, out) = docker(&[
        "run",
        "-d",
        "--rm",
        "--name",
        &container,
        "-p",
        "127.0.0.1::22",
        "-e",
        &format!("AUTHORIZED_KEY={public}"),
        image,
    ]);
    assert!(ok, "{out}");
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _remove = Remove(container.clone());
    let (_, port) = docker(&["port", &container, "22/tcp"]);
    let port: u16 = port
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}\n")).unwrap();
    let manifest_text = format!(
        "[bottles.h]\n[[bottles.h.routes]]\nhost = \"api.example.test\"\nheader = \"x-api-key\"\ntoken_env = \"{TOKEN_ENV}\"\n\
         [[bottles.h.git]]\nname = \"app\"\nupstream = \"ssh://git@127.0.0.1:{port}/home/git/app.git\"\n\
         identity_file = \"{}\"\nknown_hosts = \"{}\"\npush = [\"agent/*\"]\nfetch_interval_secs = 0\n",
        identity.display(),
        known_hosts.display()
    );
    let manifest =
        krbottle::manifest::Manifest::parse(&dir.path().join("krbottle.toml"), &manifest_text)
            .unwrap();
    let bottle = &manifest.bottles["h"];
    let dirs = krbottle::state::StateRoot::at(dir.path().join("state"))
        .bottle("h")
        .unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let place = krbottle::daemon::Placement {
        listen,
        config_dir: dirs.bundle_dir(),
        state: Some(dirs.clone()),
    };
    let config = (krbottle::daemon::git_gate::DAEMON.config)(bottle, &place).unwrap();
    let config_path = dir.path().join("git-gate.json");
    std::fs::write(&config_path, config).unwrap();
    // As the process runtime starts it: PATH and the secrets, nothing else.
    let mut daemon = Command::new(BIN)
        .args(["bundle", "git-gate", "--config"])
        .arg(&config_path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env(TOKEN_ENV, TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stdout = daemon.stdout.take().unwrap();
    let _daemon = Kill(daemon);
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = krbottle::daemon::git_gate::repo_url(listen, "app");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    loop {
        if git(dir.path(), &home, &["ls-remote", &url])
            .1
            .contains("refs/heads/main")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the host-process gate never served the upstream"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = git(dir.path(), &home, &["clone", &url, "work"]);
    assert!(ok, "{out}");
    let work = dir.path().join("work");
    let c = commit_file(&work, &home, "a.txt", b"a\n", "a");
    let (ok, out) = git(&work, &home, &["push", "origin", "HEAD:agent/host"]);
    assert!(ok, "{out}");
    let (_, upstream) = docker(&[
        "exec",
        &container,
        "git",
        "--git-dir",
        "/home/git/app.git",
        "rev-parse",
        "agent/host",
    ]);
    assert_eq!(upstream.trim(), c);
    commit_file(&work, &home, "b.txt", TOKEN.as_bytes(), "b");
    assert_refused(
        &git(&work, &home, &["push", "origin", "HEAD:agent/host"]),
        "secret",
        "refs/heads/agent/host",
    );
    drop(_daemon);
    let mut lines = String::new();
    stdout.read_to_string(&mut lines).unwrap();
    assert!(
        lines
            .lines()
            .any(|l| l.contains("\"decision\":\"allow\"") && l.contains("agent/host")),
        "{lines}"
    );
    assert!(
        lines.lines().any(|l| l.contains("\"decision\":\"block\"")),
        "{lines}"
    );
    assert!(!lines.contains(TOKEN));
}
