//! Shared helpers of the black-box tests: run the built binary, decide whether to skip.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

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

/// Skips (returns false, with the reason on stderr) when `reason` is Some, unless `CI` is set:
/// there the capability is expected and its absence is a failure.
pub fn should_run(reason: Option<String>) -> bool {
    match reason {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => panic!("CI is set but: {why}"),
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            false
        }
    }
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
