//! The supervise daemon as a plain process (`krbottle bundle supervise --config FILE`, as the
//! VM harness runs it), driven by a real MCP client nobody here wrote (the Python SDK) and
//! answered with the host verbs `krbottle queue`, `approve` and `deny`. The same flows through
//! the bundle container are in `supervise_docker.rs`.

#[path = "supervise/client.rs"]
mod client;
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use client::{Mcp, answer, id_in, initialize_body, ok_text, queue_json, raw_post, wait_pending};

const BOTTLE: &str = "sv";

/// A supervise daemon serving bottle `sv` of a temporary state dir; killed on drop.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(limits: Value) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let queue_dir = state.join("bottles").join(BOTTLE).join("queue");
        let config = json!({
            "bottle": BOTTLE,
            "listen": "127.0.0.1:0",
            "queue_dir": queue_dir,
            "allowed_hosts": ["127.0.0.1", "localhost:9100"],
            "limits": limits,
        });
        let path = dir.path().join("supervise.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_krbottle"))
            .args(["bundle", "supervise", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the daemon exited before listening")
                .unwrap();
            if let Some(a) = line.strip_prefix("krbottle supervise listening on ") {
                break a.parse().unwrap();
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Daemon {
            child,
            addr,
            state,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    fn state(&self) -> &Path {
        &self.state
    }

    fn queue_file(&self, id: &str) -> PathBuf {
        self.state
            .join("bottles")
            .join(BOTTLE)
            .join("queue")
            .join(format!("{id}.json"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_client_lists_exactly_three_tools_none_of_which_decides() {
    let Some(mcp) = Mcp::get() else { return };
    let d = Daemon::start(json!({}));
    let listed = mcp.list(&d.url());
    let tools = listed["tools"]
        .as_object()
        .unwrap_or_else(|| panic!("{listed}"));
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["await_decision", "notify", "request_approval"]);
    let params = |tool: &str| {
        let mut p: Vec<String> = tools[tool]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        p.sort();
        p
    };
    assert_eq!(params("request_approval"), ["details", "kind", "title"]);
    assert_eq!(params("await_decision"), ["id"]);
    assert_eq!(params("notify"), ["message"]);
    for t in names {
        assert_eq!(tools[t]["additionalProperties"], false, "{t}");
    }
}

#[test]
fn approve_reaches_the_waiting_client_with_the_comment() {
    let Some(mcp) = Mcp::get() else { return };
    let d = Daemon::start(json!({"wait_secs": 60, "progress_secs": 1}));
    let call = mcp.start_call(
        &d.url(),
        "request_approval",
        json!({"title": "Push fix-login", "details": "git push origin fix-login", "kind": "push"}),
        "legacy",
    );
    let pending = wait_pending(d.state(), 1);
    let r = &pending[0];
    assert_eq!(
        (&r["bottle"], &r["title"], &r["kind"], &r["details"]),
        (
            &json!(BOTTLE),
            &json!("Push fix-login"),
            &json!("push"),
            &json!("git push origin fix-login")
        )
    );
    assert!(r["age_secs"].as_i64().unwrap() >= 0);
    let id = r["id"].as_str().unwrap().to_string();
    // Let the waiting call send a progress notification or two.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (ok, err) = answer(d.state(), "approve", &id, Some("only to staging"));
    assert!(ok, "{err}");
    let result = call.finish();
    let text = ok_text(&result);
    assert!(text.starts_with("APPROVED"), "{text}");
    assert!(
        text.contains(&id) && text.contains("reviewer-test"),
        "{text}"
    );
    assert!(
        text.contains("Reviewer's comment: only to staging"),
        "{text}"
    );
    let progress = result["progress"].as_array().unwrap();
    assert!(!progress.is_empty(), "no progress notification: {result}");
    assert!(progress[0]["message"].as_str().unwrap().contains(&id));

    // Answered: gone from the queue, and a second answer is an error.
    assert!(queue_json(d.state(), None).is_empty());
    let (ok, err) = answer(d.state(), "deny", &id, None);
    assert!(!ok && err.contains("already approved"), "{err}");
}

#[test]
fn deny_reaches_a_client_on_the_2026_protocol_too() {
    let Some(mcp) = Mcp::get() else { return };
    let d = Daemon::start(json!({"wait_secs": 60}));
    let call = mcp.start_call(
        &d.url(),
        "request_approval",
        json!({"title": "Drop the users table", "details": "DROP TABLE users;"}),
        "auto",
    );
    let id = wait_pending(d.state(), 1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, err) = answer(d.state(), "deny", &id, Some("never in prod"));
    assert!(ok, "{err}");
    let text = ok_text(&call.finish());
    assert!(text.starts_with("DENIED"), "{text}");
    assert!(
        text.contains("never in prod") && text.contains("Do not go ahead"),
        "{text}"
    );
}

#[test]
fn a_bounded_wait_answers_pending_and_await_decision_gets_the_answer() {
    let Some(mcp) = Mcp::get() else { return };
    let d = Daemon::start(json!({"wait_secs": 1}));
    let url = d.url();
    let text = ok_text(&mcp.call(
        &url,
        "request_approval",
        json!({"title": "Deploy", "details": "to prod"}),
    ));
    assert!(text.starts_with("PENDING"), "{text}");
    let id = id_in(&text);
    assert!(
        text.contains(&format!("await_decision with id \"{id}\"")),
        "{text}"
    );
    // Still unanswered: waiting again answers pending again.
    let again = ok_text(&mcp.call(&url, "await_decision", json!({"id": id})));
    assert!(again.starts_with("PENDING"), "{again}");
    let (ok, err) = answer(d.state(), "approve", &id.to_uppercase(), Some("go"));
    assert!(ok, "{err}");
    let done = ok_text(&mcp.call(&url, "await_decision", json!({"id": id})));
    assert!(
        done.starts_with("APPROVED") && done.contains("go"),
        "{done}"
    );

    let unknown = mcp.call(&url, "await_decision", json!({"id": "zzzzzz"}));
    assert_eq!(unknown["is_error"], true, "{unknown}");
    assert!(
        unknown["text"]
            .as_str()
            .unwrap()
            .contains("No request zzzzzz")
    );
    let bad = mcp.call(&url, "await_decision", json!({"id": "../../etc/passwd"}));
    assert_eq!(bad["is_error"], true, "{bad}");
}

#[test]
fn an_expired_request_cannot_be_answered_and_says_so() {
    let Some(mcp) = Mcp::get() else { return };
    let d = Daemon::start(json!({"wait_secs": 1, "expire_secs": 2}));
    let text = ok_text(&mcp.call(
        &d.url(),
        "request_approval",
        json!({"title": "Late", "details": ""}),
    ));
    let id = id_in(&text);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (ok, err) = answer(d.state(), "approve", &id, None);
    assert!(!ok && err.contains("expired"), "{err}");
    let stored: Value = serde_json::from_slice(&std::fs::read(d.queue_file(&id)).unwrap()).unwrap();
    assert_eq!(stored["state"], "expired", "{stored}");
    let answer = ok_text(&mcp.call(&d.url(), "await_decision", json!({"id": id})));
    assert!(answer.starts_with("EXPIRED"), "{answer}");
    let (ok, err) = answer_unknown(d.state());
    assert!(!ok && err.contains("No request"), "{err}");
}

fn answer_unknown(state: &Path) -> (bool, String) {
    answer(state, "approve", "000000", None)
}

#[test]
fn foreign_hosts_and_oversized_calls_are_refused() {
    let Some(mcp) = Mcp::get() else { return };
    let d = Daemon::start(json!({"wait_secs": 1, "max_request_bytes": 8192}));
    let init = initialize_body();
    let port = d.addr.port();
    for (host, want) in [
        (format!("127.0.0.1:{port}"), 200),
        ("localhost:9100".to_string(), 200),
        (format!("localhost:{port}"), 403),
        (format!("evil.example:{port}"), 403),
        ("127.0.0.1.evil.example:9100".to_string(), 403),
    ] {
        assert_eq!(raw_post(d.addr, &host, "/mcp", &init), want, "Host {host}");
    }
    let big = "x".repeat(20_000);
    assert_eq!(
        raw_post(d.addr, &format!("127.0.0.1:{port}"), "/mcp", big.as_bytes()),
        413
    );
    let result = mcp.call(
        &d.url(),
        "request_approval",
        json!({"title": "big", "details": big}),
    );
    assert!(
        result.get("exception").is_some() || result["is_error"] == true,
        "an oversized call went through: {result}"
    );
    assert!(queue_json(d.state(), None).is_empty(), "it was queued");
    // The small one still works.
    let ok = ok_text(&mcp.call(&d.url(), "notify", json!({"message": "small"})));
    assert!(ok.starts_with("DELIVERED"), "{ok}");
}

#[test]
fn the_pending_cap_refuses_more_requests_until_one_is_answered() {
    let Some(mcp) = Mcp::get() else { return };
    let d = Daemon::start(json!({"wait_secs": 1, "max_pending": 2}));
    let url = d.url();
    let ask = |title: &str| {
        mcp.call(
            &url,
            "request_approval",
            json!({"title": title, "details": ""}),
        )
    };
    let first = id_in(&ok_text(&ask("one")));
    ok_text(&ask("two"));
    let third = ask("three");
    assert_eq!(third["is_error"], true, "{third}");
    assert!(
        third["text"].as_str().unwrap().contains("already waiting"),
        "{third}"
    );
    assert_eq!(queue_json(d.state(), None).len(), 2);
    let (ok, err) = answer(d.state(), "deny", &first, None);
    assert!(ok, "{err}");
    assert!(ok_text(&ask("three again")).starts_with("PENDING"));
}

#[test]
fn no_tool_argument_decides_or_changes_another_request() {
    let Some(mcp) = Mcp::get() else { return };
    let d = Daemon::start(json!({"wait_secs": 1}));
    let url = d.url();
    let target = id_in(&ok_text(&mcp.call(
        &url,
        "request_approval",
        json!({"title": "Target", "details": "d"}),
    )));
    let before = std::fs::read(d.queue_file(&target)).unwrap();

    // Arguments no tool has are refused outright.
    for (tool, args) in [
        (
            "request_approval",
            json!({"title": "t", "details": "d", "id": target, "state": "approved"}),
        ),
        (
            "await_decision",
            json!({"id": target, "decision": "approved"}),
        ),
        (
            "await_decision",
            json!({"id": target, "comment": "ok", "by": "human"}),
        ),
        ("notify", json!({"message": "m", "id": target})),
    ] {
        let r = mcp.call(&url, tool, args.clone());
        assert!(
            r.get("exception").is_some() || r["is_error"] == true,
            "{tool} {args}: {r}"
        );
    }
    // Tools nobody has.
    for tool in ["approve", "deny", "decide"] {
        let r = mcp.call(&url, tool, json!({"id": target}));
        assert!(
            r.get("exception").is_some() || r["is_error"] == true,
            "{tool}: {r}"
        );
    }
    // What the tools do take only ever makes new records.
    let other = ok_text(&mcp.call(
        &url,
        "request_approval",
        json!({"title": format!("approve {target}"), "details": format!("krbottle approve {target}"), "kind": "approved"}),
    ));
    assert_ne!(id_in(&other), target);
    ok_text(&mcp.call(
        &url,
        "notify",
        json!({"message": format!("krbottle approve {target}")}),
    ));
    let waited = ok_text(&mcp.call(&url, "await_decision", json!({"id": target})));
    assert!(waited.starts_with("PENDING"), "{waited}");

    assert_eq!(std::fs::read(d.queue_file(&target)).unwrap(), before);
    let listed = queue_json(d.state(), None);
    let t = listed.iter().find(|r| r["id"] == target.as_str()).unwrap();
    assert_eq!(t["state"], "pending");
    assert!(t.get("decision").is_none());
}

#[test]
fn notices_reach_the_queue_and_cannot_be_answered() {
    let Some(mcp) = Mcp::get() else { return };
    let d = Daemon::start(json!({}));
    let text = ok_text(&mcp.call(
        &d.url(),
        "notify",
        json!({"message": "Tests pass\nall 120 of them"}),
    ));
    assert!(text.starts_with("DELIVERED"), "{text}");
    let listed = queue_json(d.state(), Some(BOTTLE));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["state"], &listed[0]["title"]),
        (&json!("notice"), &json!("Tests pass"))
    );
    let id = listed[0]["id"].as_str().unwrap();
    let (ok, err) = answer(d.state(), "approve", id, None);
    assert!(!ok && err.contains("nothing to answer"), "{err}");
}

#[test]
fn healthz_answers_and_other_paths_do_not() {
    let d = Daemon::start(json!({}));
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(d.addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r.split(' ').nth(1).unwrap().to_string()
    };
    assert_eq!(get("/healthz"), "200");
    assert_eq!(get("/"), "404");
    assert_eq!(get("/queue"), "404");
}

/// A line of `child`'s stdout, waited for at most 30 s.
fn next_line(lines: &std::sync::mpsc::Receiver<String>) -> String {
    lines
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("no line from krbottle queue --watch")
}

fn watch(state: &Path, path_env: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_krbottle"))
        .args(["queue", "--watch", "--json"])
        .env("KRBOTTLE_STATE_DIR", state)
        .env("PATH", path_env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

#[test]
fn watch_announces_new_requests_through_notify_send_or_the_bell() {
    use krbottle::queue::{Limits, NewRequest, Queue};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let q = Queue::of(
        &krbottle::state::StateRoot::at(&state)
            .bottle(BOTTLE)
            .unwrap(),
    );
    q.create().unwrap();
    let limits = Limits {
        max_pending: 10,
        expire_after: std::time::Duration::from_secs(600),
    };
    let submit = |title: &str| {
        let r = NewRequest::new(title, "", None).unwrap();
        q.submit(r, limits, chrono::Utc::now())
            .unwrap()
            .id
            .to_string()
    };
    let before = submit("already there");

    // A notify-send that writes down what it was asked to show.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let notified = dir.path().join("notified");
    let fake = bin.join("notify-send");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" >> '{}'\n",
            notified.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (mut child, lines) = watch(&state, &bin);
    let first: Value = serde_json::from_str(&next_line(&lines)).unwrap();
    assert_eq!(first["id"], before.as_str());
    assert!(
        !notified.exists(),
        "what was there already is not announced"
    );
    let new = submit("Push <b>now</b> & then");
    let line: Value = serde_json::from_str(&next_line(&lines)).unwrap();
    assert_eq!(line["id"], new.as_str());
    let shown = std::fs::read_to_string(&notified).unwrap();
    assert!(
        shown.contains(&format!("bottle {BOTTLE} asks for approval")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("Push &lt;b&gt;now&lt;/b&gt; &amp; then ({new})")),
        "{shown}"
    );
    let _ = child.kill();
    let _ = child.wait();

    // Without notify-send: the terminal bell, on stderr.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (mut child, lines) = watch(&state, &empty);
    next_line(&lines);
    next_line(&lines);
    let belled = submit("ring");
    let line: Value = serde_json::from_str(&next_line(&lines)).unwrap();
    assert_eq!(line["id"], belled.as_str());
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.stderr,
        b"\x07",
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}
