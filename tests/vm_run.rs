//! `krbottle run` end to end: bad input is refused before anything starts, every libkrun
//! configuration call is made for real up to `krun_start_enter`, and a boot runs where the
//! hypervisor can (gated on `krbottle doctor`'s verdict).

mod common;

use std::net::TcpListener;

use common::{
    busybox_rootfs, cannot_boot_reason, krbottle, namespaces_unavailable, run, should_run,
};

/// Runs `krbottle run ARGS` and returns (exit code, stderr).
fn run_args(args: &[&str]) -> (Option<i32>, String) {
    let (out, _, stderr) = run(krbottle().arg("run").args(args));
    (out.status.code(), stderr)
}

fn first_error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("")
}

#[test]
fn bad_input_is_one_line_with_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let root = rootfs.to_str().unwrap();
    let missing = dir.path().join("missing");
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("8888=127.0.0.1:{closed_port}");

    // Syntax is checked by the command line's parsers (usage, exit 2); the rest by `run`.
    let cases: Vec<(Vec<&str>, u8, &str)> = vec![
        (
            vec![missing.to_str().unwrap(), "--", "sh"],
            1,
            "is not a directory; unpack an image there first",
        ),
        (vec![root, "--", "sh"], 1, "Command `sh` not found in"),
        (
            vec!["--endpoint", "8888", root, "--", "sh"],
            2,
            "Bad --endpoint `8888`: expected GUESTPORT=HOST:PORT",
        ),
        (
            vec!["--env", "NOEQ", root, "--", "sh"],
            2,
            "Bad environment entry `NOEQ`: expected NAME=VALUE",
        ),
        (
            vec!["--env", "=x", root, "--", "sh"],
            2,
            "cannot be given to the guest",
        ),
        (vec!["--user", "me", root, "--", "sh"], 2, "Bad --user `me`"),
        (
            vec!["--workdir", "rel", root, "--", "sh"],
            1,
            "must be an absolute path",
        ),
        (
            vec!["--share", "/nonexistent-dir:/x", root, "--", "sh"],
            1,
            "does not exist; create it or fix --share",
        ),
    ];
    for (args, want_code, want) in &cases {
        let (code, stderr) = run_args(args);
        assert_eq!(code, Some(i32::from(*want_code)), "{args:?}: {stderr}");
        assert!(
            first_error_line(&stderr).contains(want),
            "{args:?}: {stderr}"
        );
    }

    // These need a rootfs that has the command.
    busybox_rootfs(&rootfs).expect("a static busybox on this machine");
    let (code, stderr) = run_args(&["--endpoint", &unreachable, root, "--", "sh"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        first_error_line(&stderr).contains("is not reachable; start the service"),
        "{stderr}"
    );

    let out = krbottle()
        .args(["run", root, "--", "sh"])
        .env("KRBOTTLE_LIBKRUNFW", "/nonexistent/libkrunfw.so.5")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        first_error_line(&stderr).contains("No libkrunfw found at /nonexistent"),
        "{stderr}"
    );
    assert!(stderr.contains("install libkrunfw"), "{stderr}");
}

#[test]
fn exit_codes_are_documented_in_help() {
    let (out, stdout, _) = run(krbottle().arg("--help"));
    assert!(out.status.success());
    assert!(stdout.contains("125  run: the VMM failed"), "{stdout}");
}

/// Every libkrun configuration call is made and checked. The child tells the parent it is
/// entering `krun_start_enter` only after all of them succeeded; any failure before that is a
/// setup error (exit 1), never exit 125. Where the hypervisor can boot, the guest really runs.
#[test]
fn configuration_reaches_krun_start_enter_and_boots_where_possible() {
    if !should_run(namespaces_unavailable()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    busybox_rootfs(dir.path()).expect("a static busybox on this machine");
    let root = dir.path().to_str().unwrap();
    let (out, stdout, stderr) = run(krbottle().args([
        "run",
        "--cpus",
        "1",
        "--memory",
        "256",
        "--env",
        "GREETING=it's \"quoted\"",
        "--workdir",
        "/bin",
        root,
        "--",
        "sh",
        "-c",
        "echo \"$GREETING\" in $(pwd); exit 7",
    ]));
    match cannot_boot_reason() {
        Some(why) => {
            eprintln!("boot part skipped, doctor says this machine cannot boot: {why}");
            assert_eq!(
                out.status.code(),
                Some(125),
                "stdout: {stdout}\nstderr: {stderr}"
            );
            assert!(
                first_error_line(&stderr).starts_with("error: VMM failed:"),
                "{stderr}"
            );
            assert!(!stderr.contains("Configuring libkrun failed"), "{stderr}");
        }
        None => {
            assert_eq!(out.status.code(), Some(7), "stderr: {stderr}");
            assert_eq!(stdout.trim(), "it's \"quoted\" in /bin");
        }
    }
}

/// Names, sizes and mtimes of everything under `dir`, to show it was not written.
fn snapshot(dir: &std::path::Path) -> Vec<(String, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            }
            out.push((
                e.path().display().to_string(),
                m.len(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
            ));
        }
    }
    out.sort();
    out
}

/// `--overlay`: the child mounts lower+upper on the root inside its own mount namespace (a
/// failed mount is a setup error, exit 1), the host never sees the mount, and the lower dir is
/// not written. Where the guest boots, its writes land in the upper dir.
#[test]
fn overlay_is_mounted_privately_and_lower_stays_untouched() {
    if !should_run(namespaces_unavailable()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (lower, upper, merged) = (
        dir.path().join("lower"),
        dir.path().join("bottle"),
        dir.path().join("merged"),
    );
    std::fs::create_dir(&lower).unwrap();
    std::fs::create_dir(&merged).unwrap();
    busybox_rootfs(&lower).expect("a static busybox on this machine");
    let before = snapshot(&lower);
    let overlay = format!("{}:{}", lower.display(), upper.display());
    let (out, stdout, stderr) = run(krbottle().args([
        "run",
        "--cpus",
        "1",
        "--memory",
        "256",
        "--overlay",
        &overlay,
        merged.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo new > /written-by-guest && rm /bin/sh",
    ]));
    assert!(!stderr.contains("Could not mount the overlay"), "{stderr}");
    match cannot_boot_reason() {
        Some(why) => {
            eprintln!("boot part skipped, doctor says this machine cannot boot: {why}");
            assert_eq!(
                out.status.code(),
                Some(125),
                "stdout: {stdout}\nstderr: {stderr}"
            );
        }
        None => {
            assert_eq!(out.status.code(), Some(0), "{stderr}");
            assert_eq!(
                std::fs::read_to_string(upper.join("diff/written-by-guest")).unwrap(),
                "new\n"
            );
        }
    }
    assert_eq!(snapshot(&lower), before, "the lower dir was written");
    assert!(upper.join("diff").is_dir() && upper.join("work").is_dir());
    assert_eq!(
        std::fs::read_dir(&merged).unwrap().count(),
        0,
        "the mount leaked to the host"
    );
}

/// With a terminal (a pty from util-linux `script`), the parent puts it in raw mode for the
/// guest and restores it even when the VMM fails.
#[test]
fn terminal_settings_are_restored_after_the_run() {
    if !should_run(namespaces_unavailable()) {
        return;
    }
    let has_script = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok();
    if !should_run((!has_script).then(|| "util-linux `script` is not installed".to_owned())) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs).expect("a static busybox on this machine");
    let (before, after) = (dir.path().join("before"), dir.path().join("after"));
    let inner = format!(
        "stty -g > {b}; {bin} run --cpus 1 --memory 256 {r} -- sh -c 'exit 3'; stty -g > {a}",
        b = before.display(),
        a = after.display(),
        bin = env!("CARGO_BIN_EXE_krbottle"),
        r = rootfs.display(),
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let before = std::fs::read_to_string(&before).unwrap();
    let after = std::fs::read_to_string(&after).unwrap();
    assert!(!before.is_empty());
    assert_eq!(
        before,
        after,
        "terminal not restored: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
