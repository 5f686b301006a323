//! Shared helpers for the integration tests: run the built binary, and capability gates that
//! say why they skip and fail instead under CI (which always has the capability).
#![allow(dead_code)]

pub mod oracle;

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The local base image every test Dockerfile starts FROM (scripts/build-base-image.sh).
pub use krbottle::image::BASE_IMAGE;

pub fn krbottle() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_krbottle"));
    cmd.stdin(Stdio::null())
        .env_remove("KRBOTTLE_LIBKRUNFW")
        .env_remove("KRBOTTLE_LOG");
    cmd
}

pub fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run the krbottle binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Runs the krbottle binary with a private cache dir; returns (status, stdout, stderr).
pub fn run_krbottle(cache: &Path, args: &[&str]) -> (i32, String, String) {
    let (out, stdout, stderr) = run(krbottle().args(args).env("KRBOTTLE_CACHE_DIR", cache));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// Skips (returns false, with the reason recorded) when `reason` is Some, unless `CI` is set:
/// there the capability is expected and its absence is a failure.
pub fn should_run(reason: Option<String>) -> bool {
    match reason {
        None => true,
        Some(why) => skip_or_fail(&current_test(), &why),
    }
}

/// The running test's name (libtest names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_string()
}

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
    if std::env::var_os(krbottle::env_vars::CI).is_some() {
        panic!("{test}: CI must run this test, but {why}");
    }
    eprintln!("SKIP {test}: {why}");
    if let Some(log) = std::env::var_os("KRBOTTLE_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
    false
}

/// The unprivileged user for rootless tests (scripts/test-user.sh creates it) and its uid.
pub fn require_test_user(test: &str) -> Option<(String, u32)> {
    let user = std::env::var("KRBOTTLE_TEST_USER").unwrap_or_else(|_| "krbottle-test".into());
    if !rustix::process::geteuid().is_root() {
        skip_or_fail(
            test,
            "rootless tests switch to the test user and need root to do so",
        );
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
    docker_build_dir(dir.path(), tag);
    tag.to_string()
}

/// `docker build` of the directory `context` tagged `tag`, through the CLI.
pub fn docker_build_dir(context: &Path, tag: &str) {
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(context)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build {tag} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a server certificate signed by it for `names`, as PEM files in `dir`:
/// `(ca.pem, cert.pem, key.pem)`.
pub fn test_pki(
    dir: &Path,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "krbottle test upstream CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let leaf = leaf_params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Why confined children cannot be created here, if they cannot.
pub fn namespaces_unavailable() -> Option<String> {
    let (out, _, stderr) = run(krbottle().args(["debug", "net-probe", "--try", "127.0.0.1:1"]));
    (!out.status.success()).then(|| format!("cannot create the VMM's namespaces here: {stderr}"))
}

/// A root filesystem holding a static busybox as `/bin/sh`, `/bin/busybox`.
pub fn busybox_rootfs(dir: &Path) -> Option<String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", dir.join("bin/sh")).unwrap();
    Some(busybox.to_owned())
}

/// The boot verdict of `krbottle doctor --json`: `None` when it can boot, else the reason.
pub fn cannot_boot_reason() -> Option<String> {
    let (_, stdout, _) = run(krbottle().args(["doctor", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("doctor --json prints JSON");
    match v["boot"]["verdict"].as_str() {
        Some("can_boot") => None,
        _ => Some(v["boot"]["reason"].as_str().unwrap_or("unknown").to_owned()),
    }
}

/// Docker's own flattening of `image` (`docker create` + `docker export`, through the CLI so the
/// oracle shares no code with what it checks), as a tar stream; the container is removed when
/// the reader is dropped.
pub fn docker_export(image: &str) -> DockerExport {
    let out = Command::new("docker")
        .args(["create", image, "true"])
        .output()
        .expect("run docker create");
    assert!(
        out.status.success(),
        "docker create {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let child = Command::new("docker")
        .args(["export", &id])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run docker export");
    DockerExport { id, child }
}

pub struct DockerExport {
    id: String,
    child: std::process::Child,
}

impl std::io::Read for DockerExport {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.child.stdout.as_mut().expect("piped").read(buf)
    }
}

impl Drop for DockerExport {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("docker").args(["rm", "-f", &self.id]).output();
    }
}
