//! Helpers of the supervise tests: the real MCP client (the Python SDK, through
//! `tests/supervise/mcp_client.py`), the host verbs, and raw HTTP for what no client sends.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_krbottle");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The Python SDK's client, installed once per test binary by `scripts/mcp-client.sh`.
pub struct Mcp {
    python: PathBuf,
}

impl Mcp {
    /// The client, or `None` (the skip recorded) when it cannot be installed here; under CI its
    /// absence fails the test.
    pub fn get() -> Option<&'static Mcp> {
        static MCP: OnceLock<Result<Mcp, String>> = OnceLock::new();
        let mcp = MCP.get_or_init(|| {
            let out = Command::new("bash")
                .arg(Path::new(REPO).join("scripts/mcp-client.sh"))
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run scripts/mcp-client.sh: {e}"))?;
            if !out.status.success() {
                return Err("scripts/mcp-client.sh could not install the mcp package".into());
            }
            let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(Mcp {
                python: PathBuf::from(python),
            })
        });
        match mcp {
            Ok(m) => Some(m),
            Err(why) => {
                crate::common::skip_or_fail(&crate::common::current_test(), why);
                None
            }
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(Path::new(REPO).join("tests/supervise/mcp_client.py"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// `tools/list`: tool name → input schema.
    pub fn list(&self, url: &str) -> Value {
        let out = self.command(&["list", url]).output().unwrap();
        parse(&out)
    }

    /// One `tools/call`, waited for.
    pub fn call(&self, url: &str, tool: &str, args: Value) -> Value {
        self.start_call(url, tool, args, "legacy").finish()
    }

    /// One `tools/call` in the background (`mode`: the SDK's `legacy` initialize handshake,
    /// as Claude Code does, or `auto`, the 2026 protocol's discovery).
    pub fn start_call(&self, url: &str, tool: &str, args: Value, mode: &str) -> Call {
        let args = args.to_string();
        let child = self
            .command(&["call", url, tool, &args, "--mode", mode])
            .spawn()
            .unwrap();
        Call { child: Some(child) }
    }
}

/// A client call running in the background; killed if never finished.
pub struct Call {
    child: Option<Child>,
}

impl Call {
    pub fn finish(mut self) -> Value {
        let child = self.child.take().unwrap();
        parse(&child.wait_with_output().unwrap())
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn parse(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the MCP client printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The text of a successful call (asserted: no exception, no tool error).
pub fn ok_text(result: &Value) -> String {
    assert!(result.get("exception").is_none(), "{result}");
    assert_eq!(result["is_error"], false, "{result}");
    result["text"].as_str().unwrap().to_string()
}

/// The request id in an answer ("request abc123 …").
pub fn id_in(text: &str) -> String {
    let rest = text
        .split("request ")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    rest.chars().take(6).collect()
}

/// Runs the krbottle binary with `state` as its state dir.
pub fn krbottle(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("KRBOTTLE_STATE_DIR", state)
        .env("USER", "reviewer-test")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `krbottle queue --json [bottle]`.
pub fn queue_json(state: &Path, bottle: Option<&str>) -> Vec<Value> {
    let mut args = vec!["queue", "--json"];
    args.extend(bottle);
    let out = krbottle(state, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until `krbottle queue --json` lists `n` pending requests; returns them.
pub fn wait_pending(state: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: Vec<Value> = queue_json(state, None)
            .into_iter()
            .filter(|r| r["state"] == "pending")
            .collect();
        if pending.len() >= n {
            return pending;
        }
        assert!(Instant::now() < deadline, "never {n} pending: {pending:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `krbottle approve|deny ID [--comment C]`: (success, stderr).
pub fn answer(state: &Path, verb: &str, id: &str, comment: Option<&str>) -> (bool, String) {
    let mut args = vec![verb, id];
    if let Some(c) = comment {
        args.extend(["--comment", c]);
    }
    let out = krbottle(state, &args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One raw HTTP/1.1 POST of `body` to `addr` with `host` as its Host header; the status code.
pub fn raw_post(addr: SocketAddr, host: &str, path: &str, body: &[u8]) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading the whole body and close.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// An MCP `initialize` request body, as a client sends it first.
pub fn initialize_body() -> Vec<u8> {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}
        }
    })
    .to_string()
    .into_bytes()
}
