//! Confinement of the VMM child, observed from inside it with `krbottle debug net-probe`
//! (the same child and namespaces as `krbottle run`, attempting connections instead of booting).
//! Only loopback addresses of this machine are used as targets.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::mpsc;

use common::{krbottle, namespaces_unavailable, run, should_run};

/// A host-loopback server that answers `pong:` + what it received, and reports what it got.
fn pong_server() -> (u16, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // krbottle's reachability check connects and closes without a word: ignore that.
        for mut conn in listener.incoming().flatten() {
            let mut got = Vec::new();
            if conn.read_to_end(&mut got).is_err() || got.is_empty() {
                continue;
            }
            let _ = conn.write_all(b"pong:");
            let _ = conn.write_all(&got);
            let _ = conn.shutdown(Shutdown::Write);
            let _ = tx.send(got);
        }
    });
    (port, rx)
}

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON value per line"))
        .collect()
}

#[test]
fn only_the_endpoints_are_reachable_and_they_relay_both_ways() {
    if !should_run(namespaces_unavailable()) {
        return;
    }
    let (upstream, received) = pong_server();
    // Another service on the host's loopback that the guest must not reach.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();

    let targets = [
        "127.0.0.1:8888".to_owned(),       // the endpoint
        format!("127.0.0.1:{upstream}"),   // the relay's upstream, dialled directly
        format!("127.0.0.1:{other_port}"), // another host loopback listener
        "127.0.0.1:8889".to_owned(),       // a port with no endpoint
        "127.0.0.2:8888".to_owned(),       // another loopback address, endpoint port
        "[::1]:8888".to_owned(),           // IPv6 loopback, endpoint port
        format!("[::1]:{other_port}"),
    ];
    let mut cmd = krbottle();
    cmd.args([
        "debug",
        "net-probe",
        "--endpoint",
        &format!("8888=127.0.0.1:{upstream}"),
    ]);
    for t in &targets {
        cmd.args(["--try", t]);
    }
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "net-probe failed: {stderr}");
    let lines = lines(&stdout);

    assert_eq!(
        lines[0]["interfaces"],
        serde_json::json!(["lo"]),
        "only lo: {stdout}"
    );
    for route in lines[1]["routes"].as_array().unwrap() {
        assert_eq!(route["device"], "lo", "a route leaves lo: {stdout}");
        let dest = route["destination"].as_str().unwrap();
        assert!(
            dest == "::1/128",
            "only the loopback route may exist, got {dest}"
        );
    }

    let attempts = &lines[2..];
    assert_eq!(attempts.len(), targets.len());
    let endpoint = &attempts[0];
    assert_eq!(endpoint["connected"], true, "{stdout}");
    assert_eq!(endpoint["received"], "pong:krbottle-probe\n", "{stdout}");
    assert_eq!(received.recv().unwrap(), b"krbottle-probe\n");
    for a in &attempts[1..] {
        assert_eq!(a["connected"], false, "reached {}: {stdout}", a["target"]);
        assert!(a["error"].is_string());
    }
    drop(other);
}

#[test]
fn no_endpoints_means_nothing_is_reachable() {
    if !should_run(namespaces_unavailable()) {
        return;
    }
    let (port, _rx) = pong_server();
    let (out, stdout, stderr) =
        run(krbottle().args(["debug", "net-probe", "--try", &format!("127.0.0.1:{port}")]));
    assert!(out.status.success(), "{stderr}");
    let lines = lines(&stdout);
    assert_eq!(lines[2]["connected"], false, "{stdout}");
}

#[test]
fn an_unreachable_endpoint_upstream_is_a_clear_error() {
    // Bind then drop to get a loopback port with nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (out, _, stderr) = run(krbottle().args([
        "debug",
        "net-probe",
        "--endpoint",
        &format!("8888=127.0.0.1:{port}"),
        "--try",
        "127.0.0.1:8888",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.starts_with("error: Endpoint upstream 127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("not reachable; start the service"),
        "{stderr}"
    );
}
