//! Shared helpers for the integration tests: capability gates that say why they skip, and that
//! fail instead when CI (which always has the capability) is running.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The local base image every test Dockerfile starts FROM (scripts/build-base-image.sh).
pub const BASE_IMAGE: &str = "krbottle/debian-base:bookworm";

/// Whether Docker tests can run. Without Docker: panics under CI, else prints why and returns
/// false so the test returns early (reported by the harness as passed-with-skip message).
pub fn require_docker(test: &str) -> bool {
    let why = match Command::new("docker")
        .args(["image", "inspect", BASE_IMAGE])
        .output()
    {
        Err(e) => format!("docker CLI not runnable ({e})"),
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!(
            "Docker engine or base image {BASE_IMAGE} unavailable: {} (run scripts/build-base-image.sh)",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
    };
    skip_or_fail(test, &why)
}

/// Under CI: panics (CI has every capability these tests need). Elsewhere: records the skip in
/// `KRBOTTLE_SKIP_LOG` (listed by scripts/test.sh at the end) and on stderr, and returns false.
pub fn skip_or_fail(test: &str, why: &str) -> bool {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI must run this test, but {why}");
    }
    eprintln!("SKIP {test}: {why}");
    if let Some(log) = std::env::var_os("KRBOTTLE_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
    false
}

/// The unprivileged user for rootless tests (scripts/test-user.sh creates it) and its uid.
pub fn require_test_user(test: &str) -> Option<(String, u32)> {
    let user = std::env::var("KRBOTTLE_TEST_USER").unwrap_or_else(|_| "krbottle-test".into());
    if !rustix::process::geteuid().is_root() {
        skip_or_fail(test, "rootless tests switch to the test user and need root to do so");
        return None;
    }
    let out = Command::new("id").args(["-u", &user]).output().ok()?;
    if !out.status.success() {
        skip_or_fail(test, &format!("no user {user}: run scripts/test-user.sh"));
        return None;
    }
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((user, uid))
}

/// Builds an image from an inline Dockerfile (context: the given files) and returns its tag.
/// The docker CLI is used here on purpose: the oracle must not share code with what it checks.
pub fn docker_build(tag: &str, dockerfile: &str, files: &[(&str, &[u8])]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (name, data) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build {tag} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tag.to_string()
}

pub fn krbottle() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_krbottle"))
}

/// Runs the krbottle binary with a private cache dir; returns (status, stdout, stderr).
pub fn run_krbottle(cache: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(krbottle())
        .args(args)
        .env("KRBOTTLE_CACHE_DIR", cache)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
