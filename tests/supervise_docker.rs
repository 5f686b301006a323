//! supervise in the bundle container: `krbottle bundle up --json` prints its endpoint, a real
//! MCP client nobody here wrote (the Python SDK) calls its tools there, and the host verbs
//! answer through the queue directory mounted into the container. These tests skip (saying
//! why) without a Docker engine or the local base image, and fail instead when `CI` is set.

#[path = "supervise/client.rs"]
mod client;
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use client::{
    Mcp, answer, id_in, initialize_body, krbottle, ok_text, queue_json, raw_post, wait_pending,
};

/// A bottle with supervise on (`settings`: its `[bottles.NAME.supervise]` lines) in a temp
/// state dir; its bundle is taken down on drop.
struct Bottle {
    _dir: tempfile::TempDir,
    state: PathBuf,
    manifest: PathBuf,
    name: String,
}

impl Bottle {
    fn new(suffix: &str, settings: &str) -> Bottle {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("ks{}{suffix}", std::process::id());
        let manifest = dir.path().join("krbottle.toml");
        std::fs::write(
            &manifest,
            format!("[bottles.{name}]\nallow = [\"example.com\"]\n[bottles.{name}.supervise]\n{settings}"),
        )
        .unwrap();
        Bottle {
            state: dir.path().join("state"),
            _dir: dir,
            manifest,
            name,
        }
    }

    /// `bundle up --json`; the up record.
    fn up(&self) -> Value {
        let out = krbottle(
            &self.state,
            &[
                "bundle",
                "up",
                &self.name,
                "--json",
                "--manifest",
                self.manifest.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "bundle up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn down(&self) {
        let out = krbottle(&self.state, &["bundle", "down", &self.name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn state(&self) -> &Path {
        &self.state
    }
}

impl Drop for Bottle {
    fn drop(&mut self) {
        let _ = krbottle(&self.state, &["bundle", "down", &self.name]);
    }
}

/// The supervise endpoint of an up record, and its MCP URL.
fn endpoint(record: &Value) -> (SocketAddr, String) {
    let addr: SocketAddr = record["endpoints"]["supervise"]
        .as_str()
        .unwrap_or_else(|| panic!("no supervise endpoint: {record}"))
        .parse()
        .unwrap();
    assert!(
        addr.ip().is_loopback(),
        "published on loopback only: {addr}"
    );
    (addr, format!("http://{addr}/mcp"))
}

fn ready() -> Option<&'static Mcp> {
    if !common::require_docker(&common::current_test()) {
        return None;
    }
    Mcp::get()
}

#[test]
fn the_bundle_serves_the_tools_and_the_host_approves_and_denies() {
    let Some(mcp) = ready() else { return };
    let b = Bottle::new("ad", "wait_secs = 60\n");
    let record = b.up();
    let (_, url) = endpoint(&record);

    let listed = mcp.list(&url);
    let mut names: Vec<&String> = listed["tools"].as_object().unwrap().keys().collect();
    names.sort();
    assert_eq!(names, ["await_decision", "notify", "request_approval"]);

    let call = mcp.start_call(
        &url,
        "request_approval",
        json!({"title": "Push to main", "details": "git push origin main", "kind": "push"}),
        "legacy",
    );
    let pending = wait_pending(b.state(), 1);
    assert_eq!(pending[0]["bottle"], b.name.as_str());
    let id = pending[0]["id"].as_str().unwrap().to_string();
    let (ok, err) = answer(b.state(), "approve", &id, Some("yes, squash first"));
    assert!(ok, "{err}");
    let text = ok_text(&call.finish());
    assert!(
        text.starts_with("APPROVED") && text.contains("yes, squash first"),
        "{text}"
    );

    let call = mcp.start_call(
        &url,
        "request_approval",
        json!({"title": "Delete the staging DB", "details": "dropdb staging"}),
        "auto",
    );
    let id = wait_pending(b.state(), 1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, err) = answer(b.state(), "deny", &id, Some("not today"));
    assert!(ok, "{err}");
    let text = ok_text(&call.finish());
    assert!(
        text.starts_with("DENIED") && text.contains("not today"),
        "{text}"
    );

    // The queue is the bottle's state dir, mounted read-write into the bundle only; the
    // config dir stays read-only.
    let container = record["container"].as_str().unwrap();
    let mounts = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .Mounts}}", container])
        .output()
        .unwrap();
    let mounts: Vec<Value> = serde_json::from_slice(&mounts.stdout).unwrap();
    let queue_dir = b.state().join("bottles").join(&b.name).join("queue");
    let queue = mounts
        .iter()
        .find(|m| m["Destination"] == "/var/lib/krbottle/queue")
        .unwrap_or_else(|| panic!("{mounts:?}"));
    assert_eq!(queue["Source"], queue_dir.to_str().unwrap());
    assert_eq!(queue["RW"], true);
    let config = mounts
        .iter()
        .find(|m| m["Destination"] == "/etc/krbottle")
        .unwrap();
    assert_eq!(config["RW"], false);
}

#[test]
fn a_decision_made_while_the_bundle_is_down_reaches_the_next_await_decision() {
    let Some(mcp) = ready() else { return };
    let b = Bottle::new("rs", "wait_secs = 2\n");
    let (_, url) = endpoint(&b.up());
    let ask = |url: &str, title: &str| {
        let text = ok_text(&mcp.call(
            url,
            "request_approval",
            json!({"title": title, "details": "d"}),
        ));
        assert!(text.starts_with("PENDING"), "{text}");
        id_in(&text)
    };
    let answered = ask(&url, "answered while down");
    let waiting = ask(&url, "still waiting");

    b.down();
    let (ok, err) = answer(
        b.state(),
        "approve",
        &answered,
        Some("done while you were away"),
    );
    assert!(ok, "{err}");
    let (_, url) = endpoint(&b.up());

    // The other request survived the restart, still pending.
    let listed = queue_json(b.state(), Some(&b.name));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["id"], &listed[0]["state"]),
        (&json!(waiting), &json!("pending"))
    );
    let text = ok_text(&mcp.call(&url, "await_decision", json!({"id": answered})));
    assert!(
        text.starts_with("APPROVED") && text.contains("done while you were away"),
        "{text}"
    );
    let text = ok_text(&mcp.call(&url, "await_decision", json!({"id": waiting})));
    assert!(text.starts_with("PENDING"), "{text}");
}

#[test]
fn the_bundle_refuses_foreign_hosts_oversized_calls_and_too_many_requests() {
    let Some(mcp) = ready() else { return };
    let b = Bottle::new(
        "gd",
        "wait_secs = 1\nmax_pending = 1\nmax_request_bytes = 4096\n",
    );
    let (addr, url) = endpoint(&b.up());
    let init = initialize_body();
    assert_eq!(raw_post(addr, &addr.to_string(), "/mcp", &init), 200);
    assert_eq!(raw_post(addr, "localhost:9100", "/mcp", &init), 200);
    for host in [
        format!("attacker.example:{}", addr.port()),
        format!("localhost:{}", addr.port()),
        "rebind.example:9100".to_string(),
    ] {
        assert_eq!(raw_post(addr, &host, "/mcp", &init), 403, "Host {host}");
    }

    let big = mcp.call(
        &url,
        "request_approval",
        json!({"title": "big", "details": "x".repeat(10_000)}),
    );
    assert!(
        big.get("exception").is_some() || big["is_error"] == true,
        "an oversized call went through: {big}"
    );
    assert!(queue_json(b.state(), None).is_empty());

    let first = mcp.call(
        &url,
        "request_approval",
        json!({"title": "one", "details": ""}),
    );
    assert!(ok_text(&first).starts_with("PENDING"));
    let second = mcp.call(
        &url,
        "request_approval",
        json!({"title": "two", "details": ""}),
    );
    assert_eq!(second["is_error"], true, "{second}");
    assert!(second["text"].as_str().unwrap().contains("already waiting"));
}

/// An agent image for `start`: user `agent` (1000) with a home.
fn agent_image() -> String {
    common::docker_build(
        "krbottle-test/supervise-agent:latest",
        &format!(
            "FROM {}\nRUN useradd --create-home --uid 1000 --user-group agent\nUSER agent\nWORKDIR /home/agent\nCMD [\"/bin/sh\"]\n",
            common::BASE_IMAGE
        ),
        &[],
    )
}

#[test]
fn start_wires_the_server_into_claude_code_and_never_shares_the_queue() {
    if !common::require_docker(&common::current_test()) {
        return;
    }
    let image = agent_image();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let name = format!("kss{}", std::process::id());
    std::fs::write(
        dir.path().join("krbottle.toml"),
        format!(
            "[agents.a]\nimage = \"{image}\"\nbottle = \"box\"\n[bottles.box]\nsupervise = true\n"
        ),
    )
    .unwrap();
    let start = |cwd: &Path, extra: &[&str]| {
        let mut args = vec!["start", "a", "--name", &name];
        args.extend(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_krbottle"))
            .args(&args)
            .args(["--manifest"])
            .arg(dir.path().join("krbottle.toml"))
            .args(["--", "/bin/sh", "-c", "exit 3"])
            .env("KRBOTTLE_STATE_DIR", &state)
            .env("KRBOTTLE_CACHE_DIR", dir.path().join("cache"))
            .env_remove("KRBOTTLE_LIBKRUNFW")
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Sharing a directory that holds the state dir is refused before anything starts.
    let (code, stderr) = start(dir.path(), &["--share-cwd"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Cannot share"), "{stderr}");
    assert!(
        !state
            .join("bottles")
            .join(&name)
            .join("bottle.json")
            .exists()
    );

    // A plain start provisions Claude Code's MCP config (whether or not the guest boots here).
    let (code, stderr) = start(dir.path(), &[]);
    assert!(matches!(code, Some(3 | 125)), "{code:?} {stderr}");
    let claude_json = state
        .join("bottles")
        .join(&name)
        .join("root/diff/home/agent/.claude.json");
    let claude: Value = serde_json::from_slice(&std::fs::read(&claude_json).unwrap()).unwrap();
    assert_eq!(
        claude["mcpServers"]["supervise"],
        json!({"type": "http", "url": "http://127.0.0.1:9100/mcp"})
    );
    let _ = krbottle(&state, &["rm", &name]);
}
