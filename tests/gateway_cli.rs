//! Black-box tests of `krbottle bundle gateway`: the built binary in a temp dir, `curl` as the
//! client.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_krbottle");

fn write_config(dir: &Path, routes: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.json");
    let text = format!(
        r#"{{"bottle": "cli", "listen": "127.0.0.1:0", "allow": ["allowed.test"], "routes": [{routes}],
            "ca_cert": "{0}/ca.pem", "ca_key": "{0}/ca.key"}}"#,
        dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the gateway and returns it with the address it printed.
fn start(config: &Path, envs: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["bundle", "gateway", "--config"])
        .arg(config)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("krbottle gateway listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (child, addr)
}

fn curl(proxy: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", "--proxy"])
        .arg(format!("http://{proxy}"))
        .args(args)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .expect("curl must be installed");
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn gateway_denies_logs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (mut child, addr) = start(&config, &[]);
    let (_, err) = curl(&addr, &["https://denied.test/"]);
    assert!(err.contains("403"), "{err}");
    let (out, _) = curl(&addr, &["http://127.0.0.1:9/"]);
    assert!(out.ends_with("403") && out.contains("IP address"), "{out}");
    let health = Command::new("curl")
        .args(["-sS", &format!("http://{addr}/healthz")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&health.stdout).contains("ok"));

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["host"], "denied.test");
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[0]["bottle"], "cli");
    assert_eq!(lines[1]["host"], "127.0.0.1");
    // Denials carry a stable code and the manifest change that would allow them.
    assert_eq!(lines[0]["reason_code"], "not_allowed");
    assert!(
        lines[0]["allow_with"]
            .as_str()
            .unwrap()
            .contains("denied.test")
    );
    assert_eq!(lines[1]["reason_code"], "ip_not_allowed");
    for line in stdout.lines() {
        assert!(
            krbottle::daemon::gateway::log::is_denial(line.as_bytes()),
            "{line}"
        );
    }
}

#[test]
fn gateway_refuses_to_start_without_a_route_token() {
    let dir = tempfile::tempdir().unwrap();
    krbottle::ca::BottleCa::generate("cli")
        .unwrap()
        .write(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
        .unwrap();
    let config = write_config(
        dir.path(),
        r#"{"host": "api.example.com", "header": "authorization", "scheme": "Bearer", "token_env": "KRB_TEST_TOKEN"}"#,
    );
    let out = Command::new(BIN)
        .args(["bundle", "gateway", "--config"])
        .arg(&config)
        .env_remove("KRB_TEST_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KRB_TEST_TOKEN") && err.contains("api.example.com"),
        "{err}"
    );
}

#[test]
fn gateway_config_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"bottle": "x", "listen": "127.0.0.1:0", "alow": []}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["bundle", "gateway", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json") && err.contains("alow"), "{err}");
}

/// The token travels in the environment only: never on the gateway's command line.
#[test]
fn route_token_is_not_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    krbottle::ca::BottleCa::generate("cli")
        .unwrap()
        .write(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
        .unwrap();
    let config = write_config(
        dir.path(),
        r#"{"host": "api.example.com", "header": "x-api-key", "token_env": "KRB_TEST_TOKEN"}"#,
    );
    let token = "sk-test-command-line-check-123";
    let (mut child, _addr) = start(&config, &[("KRB_TEST_TOKEN", token)]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(token));
    assert!(String::from_utf8_lossy(&cmdline).contains("gateway"));
}
