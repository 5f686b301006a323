//! `krbottle bundle init`: the supervisor of the bundle's daemons.
//!
//! It runs under Docker's `--init` (tini reaps orphans as PID 1). Each selected daemon is a
//! child process of this same binary; one that exits is restarted with exponential backoff
//! (reset once it has stayed up a while). SIGTERM and SIGINT are forwarded to every daemon;
//! init then waits for them and exits 0, killing any that outlive the grace period.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::sys::signals::Termination;

use crate::daemon::DaemonSpec;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A daemon that ran this long before dying starts again at [`FIRST_BACKOFF`].
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How long daemons get to exit after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("No daemon selected; pass --daemons (see `krbottle bundle --help`)")]
    NoDaemons,
    #[error("Cannot find the krbottle binary to run the daemons")]
    FindBinary(#[source] std::io::Error),
    #[error("Cannot handle signals")]
    Signals(#[source] std::io::Error),
}

/// The next backoff after a daemon that ran for `ran` died.
pub fn next_backoff(current: Duration, ran: Duration) -> Duration {
    if ran >= HEALTHY_AFTER {
        FIRST_BACKOFF
    } else {
        (current * 2).min(MAX_BACKOFF)
    }
}

/// The arguments to this binary that run `daemon` with its config in `config_dir`.
fn daemon_args(daemon: &DaemonSpec, config_dir: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "bundle".into(),
        daemon.name.into(),
        "--config".into(),
        config_dir.join(daemon.config_file).into(),
    ]
}

/// Runs `daemons` until SIGTERM or SIGINT.
pub async fn run(daemons: &[&'static DaemonSpec], config_dir: &Path) -> Result<(), InitError> {
    if daemons.is_empty() {
        return Err(InitError::NoDaemons);
    }
    let binary = std::env::current_exe().map_err(InitError::FindBinary)?;
    let mut stop = Termination::listen().map_err(InitError::Signals)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = daemons
        .iter()
        .map(|&d| {
            let args = daemon_args(d, config_dir);
            tokio::spawn(supervise(d, binary.clone(), args, stop_rx.clone()))
        })
        .collect();
    stop.recv().await;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Keeps one daemon running until `stop` turns true, then stops it.
async fn supervise(
    daemon: &'static DaemonSpec,
    binary: PathBuf,
    args: Vec<std::ffi::OsString>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let spawned = Command::new(&binary)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(mut c) => {
                if let Some(out) = c.stdout.take() {
                    tokio::spawn(tag_lines(daemon.name, out, false));
                }
                if let Some(err) = c.stderr.take() {
                    tokio::spawn(tag_lines(daemon.name, err, true));
                }
                c
            }
            Err(e) => {
                eprintln!("krbottle init: cannot start {}: {e}", daemon.name);
                if wait_or_stop(&mut stop, backoff).await {
                    return;
                }
                backoff = next_backoff(backoff, Duration::ZERO);
                continue;
            }
        };
        tokio::select! {
            status = child.wait() => {
                let ran = started.elapsed();
                eprintln!(
                    "krbottle init: {} exited ({}) after {:.1}s; restarting in {:?}",
                    daemon.name,
                    status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    ran.as_secs_f64(),
                    next_backoff(backoff, ran),
                );
                backoff = next_backoff(backoff, ran);
                if wait_or_stop(&mut stop, backoff).await {
                    return;
                }
            }
            _ = stop.changed() => {
                stop_child(&mut child).await;
                return;
            }
        }
    }
}

/// Copies a daemon's output to init's, each line tagged with the daemon's name so `logs
/// --daemon` can pick them: a JSON object line (a decision) gets a `"daemon"` field, any other
/// line a `[name] ` prefix.
async fn tag_lines(daemon: &'static str, from: impl tokio::io::AsyncRead + Unpin, stderr: bool) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut lines = tokio::io::BufReader::new(from).lines();
    let mut out: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>> = if stderr {
        Box::pin(tokio::io::stderr())
    } else {
        Box::pin(tokio::io::stdout())
    };
    while let Ok(Some(line)) = lines.next_line().await {
        let tagged = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(serde_json::Value::Object(mut map)) if !stderr => {
                map.entry("daemon")
                    .or_insert_with(|| serde_json::Value::from(daemon));
                serde_json::Value::Object(map).to_string()
            }
            _ => format!("[{daemon}] {line}"),
        };
        if out
            .write_all(format!("{tagged}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        let _ = out.flush().await;
    }
}

/// Whether a bundle log line (as `tag_lines` wrote it) comes from `daemon`.
pub fn line_is_from(line: &[u8], daemon: &str) -> bool {
    if line.starts_with(format!("[{daemon}] ").as_bytes()) {
        return true;
    }
    // Docker's log lines may carry a timestamp prefix when asked; ours are asked without.
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| {
            v.get("daemon")
                .and_then(|d| d.as_str().map(|d| d == daemon))
        })
        .unwrap_or(false)
}

/// Sleeps for `delay`; true if a stop was requested meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_told_apart_by_daemon() {
        assert!(line_is_from(
            br#"{"daemon":"gateway","decision":"deny"}"#,
            "gateway"
        ));
        assert!(!line_is_from(br#"{"daemon":"gateway"}"#, "supervise"));
        assert!(line_is_from(
            b"[gateway] krbottle gateway listening on 0.0.0.0:8888\n",
            "gateway"
        ));
        assert!(!line_is_from(b"krbottle init: gateway exited\n", "gateway"));
        assert!(!line_is_from(b"[gatewayx] x", "gateway"));
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let s = Duration::from_secs;
        let cases = [
            (FIRST_BACKOFF, s(0), FIRST_BACKOFF * 2),
            (s(4), s(1), s(8)),
            (s(8), s(1), MAX_BACKOFF),
            (MAX_BACKOFF, s(1), MAX_BACKOFF),
            (MAX_BACKOFF, HEALTHY_AFTER, FIRST_BACKOFF),
        ];
        for (current, ran, want) in cases {
            assert_eq!(
                next_backoff(current, ran),
                want,
                "{current:?} after {ran:?}"
            );
        }
    }
}
