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

/// `start` as an unprivileged user (`userns` mode: the image unpacked in the user's id mapping,
/// the bundle's daemons as host processes since the user has no Docker, the image from a saved
/// archive): the provisioned files carry the guest's ids as the namespace maps them, and the
/// start does everything up to the hypervisor (this user may not open /dev/kvm).
#[test]
fn rootless_start_provisions_the_writable_layer_with_the_guests_ids() {
    let test = "rootless_start_provisions_the_writable_layer_with_the_guests_ids";
    let Some((user, uid)) = require_test_user(test) else {
        return;
    };
    if !common::require_docker(test) {
        return;
    }
    let image = common::docker_build(
        "krbottle-test/rootless-start:latest",
        &format!(
            "FROM {}\nRUN useradd --create-home --uid 1000 --user-group agent\nUSER agent\nWORKDIR /home/agent\nCMD [\"/bin/sh\"]\n",
            common::BASE_IMAGE
        ),
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let save = home.join("agent.tar");
    let status = Command::new("docker")
        .args(["save", "-o", save.to_str().unwrap(), &image])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(home.join("prompt.md"), "Be careful.\n").unwrap();
    std::fs::write(
        home.join("krbottle.toml"),
        "[agents.a]\nimage_archive = \"agent.tar\"\nprompt = \"prompt.md\"\n[bottles.b]\nmemory_mib = 256\n[[bottles.b.routes]]\nhost = \"api.example.com\"\nheader = \"x-api-key\"\ntoken_env = \"KRB_ROOTLESS_TOKEN\"\n",
    )
    .unwrap();
    let chown = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(&home)
        .status()
        .unwrap();
    assert!(chown.success());
    let out = as_user(&user)
        .args(["start", "a", "--name", "rl1", "--", "/bin/true"])
        .current_dir(&home)
        .env("KRBOTTLE_STATE_DIR", home.join("state"))
        .env("KRBOTTLE_CACHE_DIR", home.join("cache"))
        .env("KRBOTTLE_BUNDLE_RUNTIME", "process")
        .env("KRB_ROOTLESS_TOKEN", "rootless-token-0123456789")
        .env("HOME", &home)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(125) | Some(0)),
        "the start failed: {stderr}"
    );
    // Namespace id 0 is the user; 1.. are its subordinate range (300000.. for the test user).
    let sub = std::fs::read_to_string("/etc/subuid")
        .unwrap()
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(user.as_str())).then(|| f.next().unwrap().parse::<u32>().unwrap())
        })
        .unwrap();
    let guest_1000 = sub + 999;
    let upper = home.join("state/bottles/rl1/root/diff");
    use std::os::unix::fs::MetadataExt;
    let meta = |p: &str| {
        std::fs::symlink_metadata(upper.join(p)).unwrap_or_else(|e| panic!("{p}: {e}\n{stderr}"))
    };
    let claude = meta("home/agent/.claude.json");
    assert_eq!(
        (claude.uid(), claude.gid(), claude.mode() & 0o777),
        (guest_1000, guest_1000, 0o600)
    );
    let prompt = meta("home/agent/.claude/CLAUDE.md");
    assert_eq!((prompt.uid(), prompt.mode() & 0o777), (guest_1000, 0o600));
    // Root's files are the user's own uid (namespace 0).
    let bundle = meta("etc/ssl/certs/ca-certificates.crt");
    assert_eq!(bundle.uid(), uid);
    // The user can remove its own bottle (files of subordinate ids included).
    let rm = as_user(&user)
        .args(["rm", "rl1"])
        .env("KRBOTTLE_STATE_DIR", home.join("state"))
        .output()
        .unwrap();
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    assert!(!home.join("state/bottles/rl1").exists());
}
