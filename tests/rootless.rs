//! `run` and the confined child as an unprivileged user (the test user from
//! scripts/test-user.sh, with subordinate id ranges): the user namespace is mapped through
//! `newuidmap`/`newgidmap`, and a missing capability is a one-line error with the next step.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{busybox_rootfs, require_test_user};

fn as_user(user: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", user, "--regid", user, "--init-groups"])
        .arg(env!("CARGO_BIN_EXE_krbottle"))
        .env_remove("KRBOTTLE_LIBKRUNFW");
    cmd
}

#[test]
fn rootless_confined_child_sees_only_loopback() {
    let Some((user, _)) = require_test_user("rootless_confined_child_sees_only_loopback") else {
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = as_user(&user)
        .args(["debug", "net-probe", "--try", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#"{"interfaces":["lo"]}"#), "{stdout}");
    // A host loopback listener is not reachable from the child's own network namespace.
    assert!(stdout.contains(r#""connected":false"#), "{stdout}");
}

#[test]
fn run_without_kvm_access_says_what_to_do() {
    let Some((user, _)) = require_test_user("run_without_kvm_access_says_what_to_do") else {
        return;
    };
    let kvm = std::fs::metadata("/dev/kvm");
    if kvm
        .as_ref()
        .map(|m| m.permissions().mode() & 0o006 != 0)
        .unwrap_or(true)
    {
        common::skip_or_fail(
            "run_without_kvm_access_says_what_to_do",
            "/dev/kvm is missing or open to everyone here, so no user lacks access",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("rootfs");
    if busybox_rootfs(&root).is_none() {
        common::skip_or_fail(
            "run_without_kvm_access_says_what_to_do",
            "no busybox on this machine",
        );
        return;
    }
    let out = as_user(&user)
        .arg("run")
        .arg(&root)
        .args(["--", "sh", "-c", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("/dev/kvm") && stderr.contains("kvm` group"),
        "{stderr}"
    );
}
