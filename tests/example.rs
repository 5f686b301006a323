//! The built-in example, for real: `examples/krbottle.toml` and its agent image, whose smoke test
//! uses Anthropic's Python SDK (a client library nobody here wrote) to call the route host
//! through the bottle's gateway.
//!
//! The route host is pointed at a local stand-in for the API (`tests/support/fake_anthropic.py`,
//! HTTPS with a test CA the gateway is told to trust) which checks the real key arrived and the
//! guest's placeholder did not. Here the smoke runs as a container on the host's network against
//! the bundle's published gateway port (this machine cannot boot the guest); the
//! emulated-hypervisor harness runs the same smoke inside a real guest.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::require_docker;

const BIN: &str = env!("CARGO_BIN_EXE_krbottle");
const REAL_KEY: &str = "sk-ant-real-key-of-the-example-test-0123456789";

/// The fake API on a free port; returns it and its port.
fn fake_api(cert: &Path, key: &Path, log: &Path) -> (std::process::Child, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fake_anthropic.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
        .args(["--expect-key", REAL_KEY, "--log", log.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the fake API");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the fake API did not start: {line:?}"));
    (child, port)
}

/// The host's address on Docker's default bridge, which containers on any bridge reach.
fn docker_host_ip() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or("172.17.0.1")
        .to_string()
}

/// The shipped example manifest, with the route host pointed at the fake API.
fn example_manifest(dir: &Path, api_ca: &Path, port: u16) -> PathBuf {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let text = std::fs::read_to_string(examples.join("krbottle.toml")).unwrap();
    let mut m: toml::Table = text.parse().unwrap();
    let agent = m["agents"]["example"].as_table_mut().unwrap();
    let dockerfile = examples.join(agent["dockerfile"].as_str().unwrap());
    agent.insert("dockerfile".into(), dockerfile.display().to_string().into());
    let prompt = examples.join(agent["prompt"].as_str().unwrap());
    agent.insert("prompt".into(), prompt.display().to_string().into());
    let bottle = m["bottles"]["example"].as_table_mut().unwrap();
    let mut resolve = toml::Table::new();
    resolve.insert("api.anthropic.com".into(), docker_host_ip().into());
    bottle.insert("resolve".into(), resolve.into());
    bottle.insert(
        "upstream_ca_file".into(),
        api_ca.display().to_string().into(),
    );
    let env = bottle["env"].as_table_mut().unwrap();
    env.insert(
        "KRBOTTLE_SMOKE_BASE_URL".into(),
        format!("https://api.anthropic.com:{port}").into(),
    );
    // Rules are bound to ports: the route serves the stand-in's.
    let route = bottle["routes"].as_array_mut().unwrap()[0]
        .as_table_mut()
        .unwrap();
    route.insert("host".into(), format!("api.anthropic.com:{port}").into());
    let path = dir.join("krbottle.toml");
    std::fs::write(&path, toml::to_string(&m).unwrap()).unwrap();
    path
}

#[test]
fn the_example_smoke_reaches_the_api_through_the_gateway_with_the_injected_key() {
    if !require_docker(&common::current_test()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (ca, cert, key) = common::test_pki(dir.path(), &["api.anthropic.com"]);
    let log = dir.path().join("keys.log");
    let (mut api, port) = fake_api(&cert, &key, &log);
    let manifest = example_manifest(dir.path(), &ca, port);
    let krbottle = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("KRBOTTLE_STATE_DIR", &state)
            .env("KRBOTTLE_CACHE_DIR", dir.path().join("cache"))
            .env("ANTHROPIC_API_KEY", REAL_KEY)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    // The plan of the shipped example: its smoke command, a placeholder key, the proxy.
    let out = krbottle(&[
        "start",
        "example",
        "--manifest",
        manifest.to_str().unwrap(),
        "--dry-run",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["argv"],
        serde_json::json!(["python3", "/opt/example/smoke.py"])
    );
    let image = plan["image"].as_str().unwrap().to_string();
    let env = plan["env"].as_array().unwrap();
    let value = |name: &str| {
        env.iter()
            .rev()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let placeholder = value("ANTHROPIC_API_KEY");
    assert!(
        placeholder.starts_with("krbottle-placeholder"),
        "{placeholder}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(REAL_KEY));

    // The example's bundle, and its smoke as a container on the host's network through the
    // bundle's published gateway port, with the bottle CA in its trust store as in a bottle.
    let out = krbottle(&[
        "bundle",
        "up",
        "example",
        "--manifest",
        manifest.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gateway = record["endpoints"]["gateway"].as_str().unwrap().to_string();
    let bottle_ca = state.join("bottles/example/bundle/ca.pem");
    let smoke = Command::new("docker")
        .args(["run", "--rm", "--network", "host", "--user", "0"])
        .arg("-v")
        .arg(format!("{}:/krbottle-ca.pem:ro", bottle_ca.display()))
        .args(["-e", &format!("HTTPS_PROXY=http://{gateway}")])
        .args(["-e", &format!("ANTHROPIC_API_KEY={placeholder}")])
        .args(["-e", &format!("KRBOTTLE_SMOKE_BASE_URL={}", value("KRBOTTLE_SMOKE_BASE_URL"))])
        .args(["-e", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"])
        .arg(&image)
        .args([
            "sh",
            "-c",
            "cat /krbottle-ca.pem >> /etc/ssl/certs/ca-certificates.crt && exec python3 /opt/example/smoke.py",
        ])
        .output()
        .unwrap();
    let down = krbottle(&["bundle", "down", "example"]);
    let _ = api.kill();
    let _ = api.wait();
    let text = String::from_utf8_lossy(&smoke.stdout).to_string()
        + &String::from_utf8_lossy(&smoke.stderr);
    assert!(smoke.status.success(), "the smoke failed:\n{text}");
    assert!(down.status.success());
    assert!(
        text.contains("the API answered: Hello from the fake API"),
        "{text}"
    );
    assert!(text.contains("example.org is refused"), "{text}");
    assert!(
        !text.contains(REAL_KEY),
        "the real key reached the client: {text}"
    );
    let keys = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        keys.trim(),
        REAL_KEY,
        "the API must see the real key only: {keys}"
    );
}
