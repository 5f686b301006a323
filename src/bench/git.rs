//! `krbottle bench git`: what git-gate costs a push and a fetch, against the same git talking
//! straight to the same SSH upstream, in one run.
//!
//! The upstream is an openssh-server container built from the local Debian base (no
//! registry), published on a random `127.0.0.1` port, holding a bare repository. The gate runs
//! as the process runtime runs it (`krbottle bundle git-gate`, a host process with only `PATH`
//! and a bench secret in its environment), with a policy that accepts the bench's branch, so
//! every push pays the whole gate: smart HTTP in, the pre-receive hook's ref checks and its
//! secret and credential scan of every new object, the atomic push upstream over SSH.
//!
//! - Push: a history of `--mib` MiB of incompressible files in `--commits` commits, pushed to a
//!   new branch, directly and through the gate, alternating, `--rounds` times each; the branch
//!   is deleted (untimed) after each push so the next one sends the whole history again.
//! - Fetch of an up-to-date repository: `git fetch` with nothing new, directly and through the
//!   gate, alternating. The gate refreshes its copy from the upstream before answering a fetch
//!   at most every `fetch_interval_secs`; the median row is within that interval, and a
//!   separate row shows a fetch for which the refresh was due (the common case for an agent
//!   that fetches now and then).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::bench::{median, ms};
use crate::output::Reporter;

const UPSTREAM_TAG: &str = "krbottle-bench/git-upstream:1";
const UPSTREAM_DOCKERFILE: &str = r#"FROM krbottle/debian-base:bookworm
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server git \
    && rm -rf /var/lib/apt/lists/*
RUN useradd -m -s /bin/sh git && usermod -p '*' git && mkdir -p /run/sshd \
    && su git -c 'git init -q --bare -b main /home/git/app.git && git init -q --bare -b main /home/git/direct.git' \
    && su git -c 'cd /tmp && git init -q -b main seed && cd seed && git -c user.name=b -c user.email=b@b commit -q --allow-empty -m seed && git push -q /home/git/app.git main && git push -q /home/git/direct.git main && rm -rf /tmp/seed'
COPY entry.sh /entry.sh
RUN chmod 755 /entry.sh
ENTRYPOINT ["/entry.sh"]
"#;
const UPSTREAM_ENTRY: &str = r#"#!/bin/sh
set -e
mkdir -p /home/git/.ssh
printf '%s\n' "$AUTHORIZED_KEY" > /home/git/.ssh/authorized_keys
chown -R git /home/git/.ssh && chmod 700 /home/git/.ssh && chmod 600 /home/git/.ssh/authorized_keys
exec /usr/sbin/sshd -D -e
"#;
/// The secret the gate scans every pushed object for (the bench's, made up).
const TOKEN_ENV: &str = crate::env_vars::KRBOTTLE_BENCH_ROUTE_TOKEN;
const TOKEN: &str = "bench-git-token-0123456789abcdef";
const BRANCH: &str = "refs/heads/bench/history";
const FETCH_INTERVAL_SECS: u64 = 2;
pub const TARGET_PUSH_RATIO: f64 = 1.5;
pub const TARGET_FETCH_RATIO: f64 = 1.2;

/// What to measure.
#[derive(Clone, Debug)]
pub struct GitBench {
    pub mib: u32,
    pub commits: u32,
    pub rounds: u32,
}

#[derive(Debug, Serialize)]
pub struct GitReport {
    history_mib: u32,
    commits: u32,
    rounds: u32,
    push_direct_ms: f64,
    push_gate_ms: f64,
    push_ratio: f64,
    target_push_ratio: f64,
    fetch_direct_ms: f64,
    fetch_gate_ms: f64,
    fetch_ratio: f64,
    target_fetch_ratio: f64,
    /// A gate fetch for which the refresh from the upstream was due (median of the rounds).
    fetch_gate_refresh_ms: f64,
    fetch_interval_secs: u64,
}

impl crate::bench::Report for GitReport {
    fn print(&self) {
        let r = self;
        println!(
            "bench git (127.0.0.1; an openssh-server container as the upstream; the gate as a host process; median of {} rounds)",
            r.rounds
        );
        println!(
            "  push of a {} MiB history ({} commits) to a new branch:",
            r.history_mib, r.commits
        );
        println!(
            "    direct to the SSH upstream   {:>9.1} ms",
            r.push_direct_ms
        );
        println!(
            "    through git-gate             {:>9.1} ms   ({:.2}x, target <= {}x)",
            r.push_gate_ms, r.push_ratio, r.target_push_ratio
        );
        println!("  fetch of an up-to-date repository:");
        println!(
            "    direct to the SSH upstream   {:>9.1} ms",
            r.fetch_direct_ms
        );
        println!(
            "    through git-gate             {:>9.1} ms   ({:.2}x, target <= {}x; within the {} s refresh interval)",
            r.fetch_gate_ms, r.fetch_ratio, r.target_fetch_ratio, r.fetch_interval_secs
        );
        println!(
            "    through git-gate, refresh due {:>8.1} ms   ({:.2}x: the gate fetches from the upstream first)",
            r.fetch_gate_refresh_ms,
            r.fetch_gate_refresh_ms / r.fetch_direct_ms
        );
    }
}

/// Runs the bench.
pub async fn run(args: &GitBench, reporter: &Reporter) -> anyhow::Result<GitReport> {
    let engine = crate::docker::Engine::connect().await?;
    reporter.status("building the SSH upstream image if absent (not timed)");
    build_upstream(&engine).await?;
    let args = args.clone();
    let reporter = reporter.clone();
    tokio::task::spawn_blocking(move || measure(&args, &reporter))
        .await
        .context("The bench's thread panicked")?
}

async fn build_upstream(engine: &crate::docker::Engine) -> anyhow::Result<()> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("Dockerfile", UPSTREAM_DOCKERFILE, 0o644),
        ("entry.sh", UPSTREAM_ENTRY, 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, name, data.as_bytes())?;
    }
    let request = crate::docker::BuildRequest {
        what: "the bench's SSH upstream".into(),
        context_tar: tar.into_inner()?,
        dockerfile: String::new(),
        tag: UPSTREAM_TAG.into(),
        target: None,
        build_args: Default::default(),
        labels: Default::default(),
    };
    engine.build(request, |_| {}).await?;
    Ok(())
}

/// A command's output, or its stderr as the error.
fn check(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&super::output(cmd, what)?).into_owned())
}

/// The container, removed on drop.
struct Upstream(String);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The gate process, killed on drop.
struct GateProcess(std::process::Child);

impl Drop for GateProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn measure(args: &GitBench, reporter: &Reporter) -> anyhow::Result<GitReport> {
    let scratch = tempfile::Builder::new()
        .prefix("krbottle-bench-git-")
        .tempdir()
        .context("Could not create a scratch dir in the temp dir")?;
    let dir = scratch.path();
    let identity = dir.join("id");
    check(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&identity),
        "ssh-keygen",
    )?;
    let public = std::fs::read_to_string(identity.with_extension("pub"))?;
    let name = format!("krbottle-bench-git-{}", std::process::id());
    let id = check(
        Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            "127.0.0.1::22",
            "-e",
            &format!("AUTHORIZED_KEY={}", public.trim()),
            UPSTREAM_TAG,
        ]),
        "docker run (the SSH upstream)",
    )?;
    let _upstream = Upstream(id.trim().to_string());
    let port_line = check(
        Command::new("docker").args(["port", &name, "22/tcp"]),
        "docker port",
    )?;
    let port: u16 = port_line
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .context("docker port printed no port")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let host_key = loop {
        let key = Command::new("docker")
            .args(["exec", &name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
            .output()?;
        let pid = Command::new("docker")
            .args(["exec", &name, "test", "-e", "/run/sshd.pid"])
            .status()?;
        if key.status.success() && pid.success() {
            break String::from_utf8_lossy(&key.stdout)
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
        }
        if Instant::now() > deadline {
            bail!("the SSH upstream did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}\n"))?;
    let upstream_url = format!("ssh://git@127.0.0.1:{port}/home/git/app.git");
    // The direct pushes go to a twin repository of the same server that the gate never
    // fetches, so neither contender finds the other's objects advertised.
    let direct_url = format!("ssh://git@127.0.0.1:{port}/home/git/direct.git");

    // The gate, configured from a manifest as `bundle up` would, placed as a host process.
    let manifest_text = format!(
        "[bottles.bench]\n[[bottles.bench.routes]]\nhost = \"api.bench.test\"\nheader = \"x-api-key\"\ntoken_env = \"{TOKEN_ENV}\"\n\
         [[bottles.bench.git]]\nname = \"app\"\nupstream = \"{upstream_url}\"\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\n\
         push = [\"bench/*\"]\nallow_delete = true\nmax_push_mib = 4096\nfetch_interval_secs = {FETCH_INTERVAL_SECS}\n",
        identity.display(),
        known_hosts.display()
    );
    let manifest = crate::manifest::Manifest::parse(&dir.join("krbottle.toml"), &manifest_text)?;
    let bottle = &manifest.bottles["bench"];
    let dirs = crate::state::StateRoot::at(dir.join("state")).bottle("bench")?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let place = crate::daemon::Placement {
        listen,
        config_dir: dirs.bundle_dir(),
        state: Some(dirs.clone()),
    };
    let config = (crate::daemon::git_gate::DAEMON.config)(bottle, &place)?;
    let config_path = dir.join("git-gate.json");
    std::fs::write(&config_path, config)?;
    let gate = Command::new(std::env::current_exe()?)
        .args(["bundle", "git-gate", "--config"])
        .arg(&config_path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(TOKEN_ENV, TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("Could not start the git-gate daemon")?;
    let _gate = GateProcess(gate);
    let gate_url = crate::daemon::git_gate::repo_url(listen, "app");

    let client = Client::new(dir, &identity, &known_hosts)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.git(&["ls-remote", &gate_url]).is_err() {
        if Instant::now() > deadline {
            bail!("git-gate did not answer on {listen}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reporter.status(format!(
        "writing a {} MiB history of {} commits (not timed)",
        args.mib, args.commits
    ));
    client.write_history(args.mib, args.commits)?;

    let (mut direct, mut gated) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        reporter.status(format!("push round {}/{}", round + 1, args.rounds));
        for (url, times) in [(&direct_url, &mut direct), (&gate_url, &mut gated)] {
            let t = Instant::now();
            client.git(&["push", "-q", url, &format!("{BRANCH}:{BRANCH}")])?;
            times.push(t.elapsed());
            client.git(&["push", "-q", url, &format!(":{BRANCH}")])?;
        }
    }
    let (push_direct, push_gate) = (median(direct), median(gated));

    reporter.status("fetch rounds");
    // Up to date on both sides: the history is on the upstream, and the gate has fetched it.
    for url in [&direct_url, &gate_url] {
        client.git(&["push", "-q", url, &format!("{BRANCH}:{BRANCH}")])?;
    }
    let fetch = |url: &str| -> anyhow::Result<Duration> {
        let t = Instant::now();
        client.git(&["fetch", "-q", url, "+refs/heads/*:refs/remotes/bench/*"])?;
        Ok(t.elapsed())
    };
    fetch(&direct_url)?;
    fetch(&gate_url)?;
    let (mut direct, mut gated, mut refresh) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        std::thread::sleep(Duration::from_secs(FETCH_INTERVAL_SECS) + Duration::from_millis(100));
        refresh.push(fetch(&gate_url)?);
        for _ in 0..3 {
            direct.push(fetch(&direct_url)?);
            gated.push(fetch(&gate_url)?);
        }
    }
    let (fetch_direct, fetch_gate) = (median(direct), median(gated));
    Ok(GitReport {
        history_mib: args.mib,
        commits: args.commits,
        rounds: args.rounds,
        push_direct_ms: ms(push_direct),
        push_gate_ms: ms(push_gate),
        push_ratio: push_gate.as_secs_f64() / push_direct.as_secs_f64(),
        target_push_ratio: TARGET_PUSH_RATIO,
        fetch_direct_ms: ms(fetch_direct),
        fetch_gate_ms: ms(fetch_gate),
        fetch_ratio: fetch_gate.as_secs_f64() / fetch_direct.as_secs_f64(),
        target_fetch_ratio: TARGET_FETCH_RATIO,
        fetch_gate_refresh_ms: ms(median(refresh)),
        fetch_interval_secs: FETCH_INTERVAL_SECS,
    })
}

/// The bench's git client: its own repository and HOME, the bench key for the direct pushes.
struct Client {
    repo: PathBuf,
    home: PathBuf,
    ssh: String,
}

impl Client {
    fn new(dir: &Path, identity: &Path, known_hosts: &Path) -> anyhow::Result<Client> {
        let (repo, home) = (dir.join("client.git"), dir.join("home"));
        std::fs::create_dir_all(&home)?;
        let ssh = format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o BatchMode=yes",
            crate::daemon::git_gate::upstream::shell_quote(&identity.to_string_lossy()),
            crate::daemon::git_gate::upstream::shell_quote(&known_hosts.to_string_lossy()),
        );
        let client = Client { repo, home, ssh };
        check(
            client
                .command()
                .args(["init", "-q", "--bare"])
                .arg(&client.repo),
            "git init",
        )?;
        Ok(client)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_SSH_COMMAND", &self.ssh)
            .env("GIT_TERMINAL_PROMPT", "0");
        for v in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            cmd.env_remove(v);
        }
        cmd
    }

    fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        check(
            self.command().arg("--git-dir").arg(&self.repo).args(args),
            &format!("git {}", args.first().copied().unwrap_or_default()),
        )
    }

    /// `commits` commits on [`BRANCH`], each adding one file of incompressible bytes, `mib`
    /// MiB in all (through `git fast-import`: no work tree).
    fn write_history(&self, mib: u32, commits: u32) -> anyhow::Result<()> {
        use std::io::Write;
        let per = (u64::from(mib) << 20) / u64::from(commits.max(1));
        let mut child = self
            .command()
            .arg("--git-dir")
            .arg(&self.repo)
            .args(["fast-import", "--quiet"])
            .stdin(Stdio::piped())
            .spawn()
            .context("Could not run git fast-import")?;
        let mut w = std::io::BufWriter::new(child.stdin.take().context("piped")?);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..commits.max(1) {
            let mut data = Vec::with_capacity(per as usize);
            while (data.len() as u64) < per {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.extend_from_slice(&x.to_le_bytes());
            }
            writeln!(w, "commit {BRANCH}")?;
            writeln!(
                w,
                "committer bench <bench@krbottle.invalid> {} +0000",
                1_700_000_000 + i
            )?;
            writeln!(w, "data 6\ncommit")?;
            writeln!(w, "M 644 inline file-{i}.bin\ndata {}", data.len())?;
            w.write_all(&data)?;
            writeln!(w)?;
        }
        w.flush()?;
        drop(w);
        if !child.wait()?.success() {
            bail!("git fast-import failed");
        }
        Ok(())
    }
}
