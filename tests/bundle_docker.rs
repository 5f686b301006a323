//! The bundle through Docker: `krbottle bundle up/down/gc/logs` with the real engine, `curl`
//! as the client. These tests skip (saying why) without a Docker engine or the local base
//! image, and fail instead when `CI` is set.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_krbottle");
const TOKEN: &str = "sk-docker-test-token-0123456789";

/// `None` when the tests can run, else why not.
fn why_skip() -> Option<String> {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(o) if o.status.success() => {}
        _ => return Some("no Docker engine answers (`docker info` failed)".into()),
    }
    let base = Command::new("docker")
        .args(["image", "inspect", krbottle::bundle::image::BASE_IMAGE])
        .output();
    match base {
        Ok(o) if o.status.success() => None,
        _ => Some("the base image is missing: run scripts/build-base-image.sh".into()),
    }
}

/// Returns true when the test should go on; fails under CI instead of skipping.
fn docker_available() -> bool {
    match why_skip() {
        None => true,
        Some(reason) if std::env::var_os(krbottle::env_vars::CI).is_some() => {
            panic!("Docker tests cannot run under CI: {reason}")
        }
        Some(reason) => {
            eprintln!("skipping: {reason}");
            false
        }
    }
}

fn krbottle(state: &Path, args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("KRBOTTLE_STATE_DIR", state);
    if let Some(t) = token {
        cmd.env("KRB_DOCKER_TEST_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// IDs of the containers and networks labelled with `bottle`.
fn leftovers(bottle: &str) -> String {
    let filter = format!("label=krbottle.bottle={bottle}");
    docker(&["ps", "-aq", "--filter", &filter])
        + &docker(&["network", "ls", "-q", "--filter", &filter])
}

fn manifest(dir: &Path, bottles: &[&str], token_route: bool) -> std::path::PathBuf {
    let mut text = String::new();
    for b in bottles {
        text.push_str(&format!("[bottles.{b}]\nallow = [\"example.com\"]\n"));
        if token_route {
            text.push_str(&format!(
                "[[bottles.{b}.routes]]\nhost = \"api.example.com\"\nheader = \"authorization\"\nscheme = \"Bearer\"\ntoken_env = \"KRB_DOCKER_TEST_TOKEN\"\n"
            ));
        }
    }
    let path = dir.join("krbottle.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Takes a bottle's bundle down when dropped, so a failing test leaves nothing behind.
struct Down<'a>(&'a Path, Vec<String>);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        for b in &self.1 {
            let _ = krbottle(self.0, &["bundle", "down", b], None);
        }
    }
}

fn up_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "bundle up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn up_serves_the_gateway_and_down_removes_everything() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let bottle = format!("kt{}up", std::process::id());
    let m = manifest(dir.path(), &[&bottle], true);
    let m = m.to_str().unwrap();
    let _down = Down(&state, vec![bottle.clone()]);
    let out = krbottle(
        &state,
        &["bundle", "up", &bottle, "--manifest", m, "--json"],
        Some(TOKEN),
    );
    let record = up_json(&out);
    let addr = record["endpoints"]["gateway"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "published on loopback only: {addr}"
    );

    let denied = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--proxy",
            &format!("http://{addr}"),
            "https://evil.test/",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403"));

    // The CA key stays owner-only on the host; the certificate is for the guest.
    let key = state.join(format!("bottles/{bottle}/bundle/ca.key"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let logs = krbottle(&state, &["bundle", "logs", &bottle], None);
    let logs = String::from_utf8_lossy(&logs.stdout).to_string();
    assert!(
        logs.contains(r#""host":"evil.test""#) && logs.contains(r#""decision":"deny""#),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN));

    // The token is in no image layer or config, and on no command line in the container.
    let image = record["image"].as_str().unwrap();
    assert!(!docker(&["image", "inspect", image]).contains(TOKEN));
    assert!(!docker(&["history", "--no-trunc", image]).contains(TOKEN));
    let top = docker(&[
        "top",
        record["container"].as_str().unwrap(),
        "-eo",
        "pid,args",
    ]);
    assert!(top.contains("gateway") && !top.contains(TOKEN), "{top}");

    let down = krbottle(&state, &["bundle", "down", &bottle], None);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(
        leftovers(&bottle).trim(),
        "",
        "nothing of the bottle remains"
    );
}

#[test]
fn five_bundles_at_once_get_distinct_networks_and_ports() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let bottles: Vec<String> = (0..5)
        .map(|i| format!("kt{}f{i}", std::process::id()))
        .collect();
    let names: Vec<&str> = bottles.iter().map(String::as_str).collect();
    let m = manifest(dir.path(), &names, false);
    let _down = Down(&state, bottles.clone());
    let children: Vec<_> = bottles
        .iter()
        .map(|b| {
            Command::new(BIN)
                .args(["bundle", "up", b, "--json", "--manifest"])
                .arg(&m)
                .env("KRBOTTLE_STATE_DIR", &state)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let records: Vec<serde_json::Value> = children
        .into_iter()
        .map(|c| up_json(&c.wait_with_output().unwrap()))
        .collect();
    let mut ports: Vec<&str> = records
        .iter()
        .map(|r| r["endpoints"]["gateway"].as_str().unwrap())
        .collect();
    let mut subnets: Vec<String> = records
        .iter()
        .map(|r| {
            docker(&[
                "network",
                "inspect",
                r["network"].as_str().unwrap(),
                "--format",
                "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            ])
        })
        .collect();
    for b in &bottles {
        assert!(
            krbottle(&state, &["bundle", "down", b], None)
                .status
                .success()
        );
        assert_eq!(leftovers(b).trim(), "");
    }
    ports.sort();
    ports.dedup();
    subnets.sort();
    subnets.dedup();
    assert_eq!(ports.len(), 5, "{ports:?}");
    assert_eq!(subnets.len(), 5, "{subnets:?}");
}

#[test]
fn gc_removes_what_a_killed_up_left_behind() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let bottle = format!("kt{}gc", std::process::id());
    let m = manifest(dir.path(), &[&bottle], true);
    let _down = Down(&state, vec![bottle.clone()]);
    // A token the gateway refuses (too short) keeps the bundle from ever becoming ready, so
    // `up` is still waiting when it is killed.
    let mut up = Command::new(BIN)
        .args(["bundle", "up", &bottle, "--manifest"])
        .arg(&m)
        .env("KRBOTTLE_STATE_DIR", &state)
        .env("KRB_DOCKER_TEST_TOKEN", "short")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let filter = format!("label=krbottle.bottle={bottle}");
    let mut created = false;
    for _ in 0..1200 {
        if !docker(&["ps", "-q", "--filter", &filter]).trim().is_empty() {
            created = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    up.kill().unwrap();
    up.wait().unwrap();
    assert!(created, "the bundle container never appeared");
    assert!(
        !leftovers(&bottle).trim().is_empty(),
        "the kill left a container and network"
    );

    // gc of another state directory must not touch this bottle's objects.
    let other = dir.path().join("other-state");
    assert!(krbottle(&other, &["bundle", "gc"], None).status.success());
    assert!(!leftovers(&bottle).trim().is_empty());

    let gc = krbottle(&state, &["bundle", "gc", "--json"], None);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let removed: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(
        removed["containers"].as_array().unwrap().len(),
        1,
        "{removed}"
    );
    assert_eq!(
        removed["networks"].as_array().unwrap().len(),
        1,
        "{removed}"
    );
    assert_eq!(leftovers(&bottle).trim(), "");
}
