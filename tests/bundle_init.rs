//! Black-box test of `krbottle bundle init`: it starts the gateway, restarts it when it dies,
//! and on SIGTERM stops it and exits 0.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_krbottle");

fn healthy(port: u16) -> bool {
    Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "2",
            &format!("http://127.0.0.1:{port}/healthz"),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The pids of the direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// Polls `cond` every 50 ms for up to 20 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[test]
fn init_restarts_a_dead_daemon_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("gateway.json"),
        format!(r#"{{"bottle": "init", "listen": "127.0.0.1:{port}"}}"#),
    )
    .unwrap();
    let mut init = Command::new(BIN)
        .args(["bundle", "init", "--daemons", "gateway", "--config-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the gateway answers", || healthy(port));
    let first = children(init.id());
    assert_eq!(first.len(), 1, "one daemon: {first:?}");

    signal(first[0], rustix::process::Signal::KILL);
    eventually("a new gateway answers", || {
        let now = children(init.id());
        now.len() == 1 && now[0] != first[0] && healthy(port)
    });
    let second = children(init.id())[0];

    signal(init.id(), rustix::process::Signal::TERM);
    let status = init.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{second}")).exists()
            || std::fs::read_to_string(format!("/proc/{second}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the daemon must be stopped with init"
    );
    assert!(!healthy(port));
}

#[test]
fn init_refuses_unknown_daemons() {
    let out = Command::new(BIN)
        .args(["bundle", "init", "--daemons", "gateway,nope"])
        .output()
        .unwrap();
    // A usage error (clap's exit 2), naming the daemon and the known ones.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown daemon \"nope\"") && stderr.contains("gateway"),
        "{stderr}"
    );
}
