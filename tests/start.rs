//! `krbottle start` and its lifecycle verbs, black-box, with the real Docker engine.
//!
//! This machine's hypervisor cannot boot the guest (doctor says why), so a start here runs
//! everything up to `krun_start_enter` and then the VMM fails (exit 125); where a guest can boot
//! the same tests see the guest's own exit code. Either way what is checked is real: the plan,
//! the files in the bottle's writable layer, the bundle that came up and went away, the record.
//! The guest side of a start is exercised on real boots in the emulated-hypervisor harness.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BASE_IMAGE, cannot_boot_reason, docker_build, require_docker};

const BIN: &str = env!("CARGO_BIN_EXE_krbottle");
const TOKEN: &str = "sk-start-test-token-0123456789abcdef";
const TOKEN_ENV: &str = "KRB_START_TEST_TOKEN";

/// The agent image of these tests: user `agent` (1000) with a home, a workdir, a command.
fn agent_image() -> String {
    docker_build(
        "krbottle-test/start-agent:latest",
        &format!(
            "FROM {BASE_IMAGE}\nRUN useradd --create-home --uid 1000 --user-group agent && mkdir -p /work && chown agent:agent /work\nUSER agent\nWORKDIR /work\nENV FROM_IMAGE=yes\nCMD [\"/bin/sh\"]\n"
        ),
        &[],
    )
}

/// A test's bottles: a temp dir with the state and cache dirs and the manifest. What is left in
/// Docker under its state dir is removed when it is dropped.
struct Fixture {
    dir: tempfile::TempDir,
    state: PathBuf,
    cache: PathBuf,
}

impl Fixture {
    fn new(image: &str, bottle_extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let cache = dir.path().join("cache");
        std::fs::write(dir.path().join("prompt.md"), "Be careful.\n").unwrap();
        std::fs::create_dir_all(dir.path().join("skills/review")).unwrap();
        std::fs::write(
            dir.path().join("skills/review/SKILL.md"),
            "---\nname: review\ndescription: Reviews a change\n---\nRead the diff.\n",
        )
        .unwrap();
        let manifest = dir.path().join("krbottle.toml");
        std::fs::write(
            &manifest,
            format!(
                r#"[agents.tester]
image = "{image}"
prompt = "prompt.md"
skills = ["skills/review"]
bottle = "box"

[bottles.box]
cpus = 1
memory_mib = 256
env = {{ FROM_BOTTLE = "yes" }}
allow = ["example.com"]
git_user = {{ name = "Test Agent", email = "agent@example.com" }}
{bottle_extra}
[[bottles.box.routes]]
host = "api.example.com"
header = "x-api-key"
token_env = "{TOKEN_ENV}"
"#
            ),
        )
        .unwrap();
        Fixture { dir, state, cache }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("KRBOTTLE_STATE_DIR", &self.state)
            .env("KRBOTTLE_CACHE_DIR", &self.cache)
            .env(TOKEN_ENV, TOKEN)
            .env_remove("KRBOTTLE_LIBKRUNFW")
            .stdin(Stdio::null())
            .current_dir(self.dir.path());
        cmd
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn upper(&self, name: &str) -> PathBuf {
        self.state.join("bottles").join(name).join("root/diff")
    }

    /// Docker containers and networks of this fixture's state dir.
    fn leftovers(&self) -> String {
        let filter = format!("label=krbottle.state-dir={}", self.state.display());
        docker(&["ps", "-aq", "--filter", &filter])
            + &docker(&["network", "ls", "-q", "--filter", &filter])
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let filter = format!("label=krbottle.state-dir={}", self.state.display());
        for id in docker(&["ps", "-aq", "--filter", &filter]).split_whitespace() {
            docker(&["rm", "-f", id]);
        }
        for id in docker(&["network", "ls", "-q", "--filter", &filter]).split_whitespace() {
            docker(&["network", "rm", id]);
        }
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A start that reached the guest: where the hypervisor cannot boot it (this machine),
/// everything up to `krun_start_enter` and exit 125 with doctor's reason; where it can, the
/// guest's own `code`.
fn assert_reached_the_guest(code: i32, stderr: &str, guest_code: i32) {
    match cannot_boot_reason() {
        Some(why) => assert!(
            code == 125 && stderr.contains("cannot boot the guest") && stderr.contains(&why),
            "expected everything but the boot here: {code}\n{stderr}"
        ),
        None => assert_eq!(code, guest_code, "{stderr}"),
    }
}

fn mode_owner(p: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn dry_run_prints_the_whole_plan_and_no_secret() {
    if !require_docker(&common::current_test()) {
        return;
    }
    let fx = Fixture::new(&agent_image(), "");
    let (code, stdout, stderr) =
        fx.run(&["start", "tester", "--name", "plan1", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert_eq!(plan["name"], "plan1");
    assert_eq!(plan["agent"], "tester");
    assert_eq!(plan["image"], "krbottle-test/start-agent:latest");
    assert!(plan["image_id"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        (plan["cpus"].as_u64(), plan["memory_mib"].as_u64()),
        (Some(1), Some(256))
    );
    assert_eq!(plan["user"]["uid"], 1000);
    assert_eq!(plan["user"]["home"], "/home/agent");
    assert_eq!(plan["workdir"], "/work");
    assert_eq!(plan["argv"], serde_json::json!(["/bin/sh"]));
    assert_eq!(plan["daemons"], serde_json::json!(["gateway"]));
    assert_eq!(plan["endpoints"][0]["guest_port"], 8888);
    let env: Vec<String> = plan["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "FROM_IMAGE=yes",
        "FROM_BOTTLE=yes",
        "HTTPS_PROXY=http://127.0.0.1:8888",
        "NO_PROXY=localhost,127.0.0.1",
        "NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
        "HOME=/home/agent",
    ] {
        assert!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
    }
    assert!(
        env.iter()
            .any(|e| e.starts_with(&format!("{TOKEN_ENV}=krbottle-placeholder"))),
        "{env:?}"
    );
    let files: Vec<&str> = plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for want in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/home/agent/.claude/CLAUDE.md",
        "/home/agent/.claude/skills/review/SKILL.md",
        "/home/agent/.claude.json",
        "/home/agent/.gitconfig",
    ] {
        assert!(files.contains(&want), "{want} missing from {files:?}");
    }
    assert!(
        !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
        "the token leaked"
    );
    // Nothing was started or kept.
    assert!(!fx.state.join("bottles/plan1/bottle.json").exists());
    assert_eq!(fx.leftovers().trim(), "");
}

#[test]
fn a_start_provisions_the_writable_layer_and_tears_the_bundle_down() {
    if !require_docker(&common::current_test()) {
        return;
    }
    let fx = Fixture::new(&agent_image(), "");
    let (code, _, stderr) = fx.run(&[
        "start", "tester", "--name", "prov1", "--", "/bin/sh", "-c", "exit 7",
    ]);
    assert_reached_the_guest(code, &stderr, 7);
    assert!(!stderr.contains(TOKEN), "the token leaked: {stderr}");
    assert_eq!(fx.leftovers().trim(), "", "the bundle was not torn down");

    let upper = fx.upper("prov1");
    let home = upper.join("home/agent");
    // The agent's own files: its ids, private modes.
    assert_eq!(mode_owner(&home.join(".claude")), (0o700, 1000, 1000));
    assert_eq!(
        mode_owner(&home.join(".claude/CLAUDE.md")),
        (0o600, 1000, 1000)
    );
    assert_eq!(
        std::fs::read_to_string(home.join(".claude/CLAUDE.md")).unwrap(),
        "Be careful.\n"
    );
    assert_eq!(
        mode_owner(&home.join(".claude/skills/review/SKILL.md")).1,
        1000
    );
    let claude: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join(".claude.json")).unwrap()).unwrap();
    assert_eq!(claude["hasCompletedOnboarding"], true);
    assert_eq!(claude["projects"]["/work"]["hasTrustDialogAccepted"], true);
    assert_eq!(mode_owner(&home.join(".claude.json")), (0o600, 1000, 1000));
    let gitconfig = std::fs::read_to_string(home.join(".gitconfig")).unwrap();
    assert!(gitconfig.contains("name = Test Agent"), "{gitconfig}");
    // The parents the kernel copied up keep the image's owner.
    assert_eq!(mode_owner(&home).1, 1000);
    // The CA, on its own and in the trust bundle, root's and world-readable.
    let ca = std::fs::read_to_string(fx.state.join("bottles/prov1/bundle/ca.pem")).unwrap();
    let bundle = upper.join("etc/ssl/certs/ca-certificates.crt");
    assert!(
        std::fs::read_to_string(&bundle)
            .unwrap()
            .contains(ca.trim())
    );
    assert_eq!(mode_owner(&bundle), (0o644, 0, 0));
    assert!(
        upper
            .join("usr/local/share/ca-certificates/krbottle-prov1.crt")
            .is_file()
    );
    // No secret in the bottle's root.
    let mut stack = vec![upper.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if p.is_file() {
                let data = std::fs::read(&p).unwrap();
                assert!(
                    !String::from_utf8_lossy(&data).contains(TOKEN),
                    "the token is in {}",
                    p.display()
                );
            }
        }
    }

    // The record: stopped, with what resume needs.
    let (code, stdout, _) = fx.run(&["list", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list[0]["name"], "prov1");
    assert_eq!(list[0]["state"], "stopped");
    assert_eq!(list[0]["agent"], "tester");

    // The name is taken: a second start says to resume.
    let (code, _, stderr) = fx.run(&["start", "tester", "--name", "prov1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("krbottle resume prov1"), "{stderr}");

    // Resume boots it again on the same root (the guest's command kept), re-provisioning.
    std::fs::write(home.join("kept-by-the-guest"), "x").unwrap();
    let (code, _, stderr) = fx.run(&["resume", "prov1"]);
    assert_reached_the_guest(code, &stderr, 7);
    assert!(home.join("kept-by-the-guest").exists());
    let bundle_text = std::fs::read_to_string(&bundle).unwrap();
    assert_eq!(
        bundle_text.matches("krbottle: begin").count(),
        1,
        "{bundle_text}"
    );
    assert_eq!(fx.leftovers().trim(), "");

    // Stop of a stopped bottle, rm, then it is gone.
    let (code, _, stderr) = fx.run(&["stop", "prov1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not running"), "{stderr}");
    let (code, _, stderr) = fx.run(&["rm", "prov1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!fx.state.join("bottles/prov1").exists());
    let (_, stdout, _) = fx.run(&["list", "--json"]);
    assert_eq!(stdout.trim(), "[]");
}

/// Images with a link planted at every target provisioning writes, and above them: absolute
/// links to host paths, `..` climbs, links to the image's own files, a hard link. Not one byte
/// may land outside the bottle's root: the start writes in place or stops naming the path.
#[test]
fn links_planted_at_every_provision_target_change_nothing_outside_the_root() {
    if !require_docker(&common::current_test()) {
        return;
    }
    let victims = tempfile::tempdir().unwrap();
    let v = victims.path().display().to_string();
    std::fs::write(victims.path().join("file"), "host file\n").unwrap();
    let image = |tag: &str, links: &str| {
        let dockerfile = format!(
            "FROM {BASE_IMAGE}\nRUN useradd --create-home --uid 1000 --user-group agent \\\n && mkdir -p /etc/ssl/certs /usr/local/share/ca-certificates /etc/pki/tls/certs \\\n && rm -rf /etc/ssl/cert.pem /etc/pki/tls/certs/ca-bundle.crt {links}\nUSER agent\nWORKDIR /home/agent\nCMD [\"/bin/sh\"]\n"
        );
        docker_build(tag, &dockerfile, &[])
    };
    // Links at the files themselves: each is replaced by a real file in the writable layer.
    let at_files = image(
        "krbottle-test/start-hostile-files:latest",
        &format!(
            "&& ln -sf {v}/file /etc/ssl/certs/ca-certificates.crt \\\n && ln -s ../../../../../../../..{v}/file /usr/local/share/ca-certificates/krbottle-hostile1.crt \\\n && ln -s /etc/shadow /etc/ssl/cert.pem \\\n && ln /etc/passwd /etc/pki/tls/certs/ca-bundle.crt \\\n && ln -s {v}/file /home/agent/.gitconfig \\\n && ln -s ../../../../..{v}/file /home/agent/.claude.json"
        ),
    );
    let fx = Fixture::new(&at_files, "");
    let before = snapshot(victims.path());
    let (code, _, stderr) = fx.run(&["start", "tester", "--name", "hostile1", "--", "/bin/true"]);
    assert_eq!(
        snapshot(victims.path()),
        before,
        "something outside the root changed"
    );
    assert_eq!(fx.leftovers().trim(), "", "the bundle was not torn down");
    // `.claude.json` names a file of the host's (read inside the root: not there, so empty),
    // which is replaced: the start goes on.
    assert_reached_the_guest(code, &stderr, 0);
    let upper = fx.upper("hostile1");
    for written in [
        "etc/ssl/certs/ca-certificates.crt",
        "usr/local/share/ca-certificates/krbottle-hostile1.crt",
        "etc/ssl/cert.pem",
        "etc/pki/tls/certs/ca-bundle.crt",
        "home/agent/.gitconfig",
        "home/agent/.claude.json",
    ] {
        let meta = std::fs::symlink_metadata(upper.join(written)).unwrap();
        assert!(
            meta.file_type().is_file(),
            "{written} is not a regular file now"
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.nlink(), 1, "{written}");
    }
    // The image's own files the links named are not in the writable layer: untouched.
    assert!(!upper.join("etc/shadow").exists() && !upper.join("etc/passwd").exists());

    // Links above the files: the start stops, naming the path, and writes nothing there.
    for (n, links) in [
        (
            2,
            format!(
                "&& rm -rf /usr/local/share/ca-certificates && ln -s ../../../../../../../..{v} /usr/local/share/ca-certificates"
            ),
        ),
        (3, format!("&& ln -s {v} /home/agent/.claude")),
        (
            4,
            "&& rm -rf /etc/ssl/certs && ln -s .. /etc/ssl/certs".to_string(),
        ),
    ] {
        let tag = format!("krbottle-test/start-hostile-dirs{n}:latest");
        let fx = Fixture::new(&image(&tag, &links), "");
        let name = format!("hostile{n}");
        let (code, _, stderr) = fx.run(&["start", "tester", "--name", &name, "--", "/bin/true"]);
        assert_eq!(
            snapshot(victims.path()),
            before,
            "{links}: something outside changed"
        );
        assert_eq!(
            fx.leftovers().trim(),
            "",
            "{links}: the bundle was not torn down"
        );
        assert_eq!(code, 1, "{links}: {stderr}");
        assert!(
            stderr.contains("Cannot provision") && stderr.contains("symlink"),
            "{links}: {stderr}"
        );
    }
}

/// Everything below `dir`, with contents: what must not change.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap_or_default();
        out.push((p, data));
    }
    out.sort();
    out
}

/// Each failure point tears down what was started: the bundle (its daemon fails), the image
/// (absent), the VMM child (provisioning refused) and the VMM itself (this hypervisor).
#[test]
fn every_failure_point_leaves_nothing_running() {
    if !require_docker(&common::current_test()) {
        return;
    }
    let image = agent_image();
    // The bundle: its gateway cannot use the token and says why.
    let fx = Fixture::new(&image, "");
    let out = fx
        .cmd(&["start", "tester", "--name", "fail1"])
        .env(TOKEN_ENV, "token-with-a-\u{1}-control-char")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gateway") && stderr.contains("cannot start"),
        "{stderr}"
    );
    assert_eq!(fx.leftovers().trim(), "");
    // The image.
    let fx = Fixture::new("krbottle-test/no-such-image:nope", "");
    let (code, _, stderr) = fx.run(&["start", "tester", "--name", "fail2"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no-such-image"), "{stderr}");
    assert_eq!(fx.leftovers().trim(), "");
    // A token that is not there: said at once, before any image work.
    let fx = Fixture::new(&image, "");
    let out = fx
        .cmd(&["start", "tester"])
        .env_remove(TOKEN_ENV)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(TOKEN_ENV));
    // The VMM: whatever it does, the bundle goes away.
    let fx = Fixture::new(&image, "");
    let (code, _, stderr) = fx.run(&["start", "tester", "--name", "fail3", "--", "/bin/false"]);
    assert_reached_the_guest(code, &stderr, 1);
    assert_eq!(fx.leftovers().trim(), "");
}

/// A start in progress (its VMM child copying a large directory, its bundle up) is running for
/// `list`; `stop` ends it and returns once it has torn down; SIGKILL leaves the bundle for `gc`.
#[test]
fn stop_ends_a_running_start_and_gc_collects_after_a_kill() {
    if !require_docker(&common::current_test()) {
        return;
    }
    let image = agent_image();
    let fx = Fixture::new(&image, "");
    let project = fx.dir.path().join("project");
    for i in 0..40 {
        let d = project.join(format!("d{i}"));
        std::fs::create_dir_all(&d).unwrap();
        for j in 0..500 {
            std::fs::write(d.join(format!("f{j}")), [b'x'; 64]).unwrap();
        }
    }
    for (name, signal) in [("run1", None), ("run2", Some("KILL"))] {
        let mut start = fx
            .cmd(&[
                "start",
                "tester",
                "--name",
                name,
                "--copy-cwd",
                "--",
                "/bin/true",
            ])
            .current_dir(&project)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let running = wait_until(Duration::from_secs(60), || {
            let (_, stdout, _) = fx.run(&["list", "--json"]);
            stdout.contains(&format!("\"name\": \"{name}\"")) && stdout.contains("\"running\"")
        });
        assert!(running, "{name} never showed as running");
        match signal {
            None => {
                let t = Instant::now();
                let (code, _, stderr) = fx.run(&["stop", name]);
                assert_eq!(code, 0, "{stderr}");
                assert!(t.elapsed() < Duration::from_secs(60));
                let out = start.wait_with_output().unwrap();
                assert_ne!(out.status.code(), Some(0));
                assert_eq!(fx.leftovers().trim(), "", "stop left the bundle");
            }
            Some(_) => {
                // Once the bundle container exists, kill the start outright.
                let up = wait_until(Duration::from_secs(60), || {
                    !fx.leftovers().trim().is_empty()
                });
                assert!(up, "the bundle never came up");
                start.kill().unwrap();
                start.wait().unwrap();
                assert!(!fx.leftovers().trim().is_empty());
                let (code, stdout, stderr) = fx.run(&["gc", "--json"]);
                assert_eq!(code, 0, "{stderr}");
                assert!(stdout.contains("containers"), "{stdout}");
                assert_eq!(
                    fx.leftovers().trim(),
                    "",
                    "gc left the killed start's bundle"
                );
            }
        }
        let (_, stdout, _) = fx.run(&["list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let me = list
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap();
        assert_eq!(me["state"], "stopped");
    }
    // The copied tree is in the bottle's root, owned by the agent.
    let copied = fx.upper("run1").join(project.strip_prefix("/").unwrap());
    if copied.join("d0/f0").exists() {
        assert_eq!(mode_owner(&copied.join("d0/f0")).1, 1000);
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Five starts at once from one manifest: distinct names, networks, ports, locks and state; all
/// reach the guest and all tear down.
#[test]
fn five_bottles_at_once_do_not_collide() {
    if !require_docker(&common::current_test()) {
        return;
    }
    let fx = Fixture::new(&agent_image(), "");
    // Prepare the image once, so the five race on the bottles, not on the cache fill.
    let (code, _, stderr) = fx.run(&["start", "tester", "--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    let children: Vec<std::process::Child> = (0..5)
        .map(|_| {
            fx.cmd(&["start", "tester", "--", "/bin/true"])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outs {
        assert_reached_the_guest(
            out.status.code().unwrap_or(-1),
            &String::from_utf8_lossy(&out.stderr),
            0,
        );
    }
    let (_, stdout, _) = fx.run(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let names: std::collections::BTreeSet<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("tester-") && n.len() == "tester-".len() + 4)
    );
    assert_eq!(fx.leftovers().trim(), "");
}
