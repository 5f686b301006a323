//! `krbottle queue --watch`: follows the queues and tells the human about each new request or
//! notice, with a desktop notification where `notify-send` exists, else a terminal bell.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::{Id, QueueError, Record, printable, waiting};
use crate::state::StateRoot;

/// How often the queues are read again.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// The program that shows desktop notifications (libnotify's), looked up on `PATH`.
const NOTIFY_SEND: &str = "notify-send";

/// What `watch` reports to its caller.
pub enum Seen<'a> {
    /// Waiting already when the watch began.
    Before(&'a Record),
    /// Came while watching (the human was alerted).
    New(&'a Record),
}

/// Reports what is waiting in the queues of `bottle` (or every bottle), then every new request
/// or notice as it comes, alerting the human for each, until the process is stopped.
pub async fn watch(
    state: StateRoot,
    bottle: Option<String>,
    mut report: impl FnMut(Seen<'_>) -> std::io::Result<()>,
) -> Result<(), QueueError> {
    let notifier = find_on_path(NOTIFY_SEND);
    let mut seen: HashSet<(String, Id)> = HashSet::new();
    let mut first = true;
    loop {
        let records = list(&state, bottle.as_deref()).await?;
        for r in &records {
            if !seen.insert((r.bottle.clone(), r.id.clone())) {
                continue;
            }
            let shown = if first {
                report(Seen::Before(r))
            } else {
                alert(notifier.as_ref(), r).await;
                report(Seen::New(r))
            };
            // The reader went away (a closed pipe): nothing left to watch for.
            if shown.is_err() {
                return Ok(());
            }
        }
        first = false;
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn list(state: &StateRoot, bottle: Option<&str>) -> Result<Vec<Record>, QueueError> {
    let (state, bottle) = (state.clone(), bottle.map(str::to_string));
    super::blocking(move || waiting(&state, bottle.as_deref(), chrono::Utc::now())).await
}

/// Tells the human that `r` came: a desktop notification, or the terminal's bell.
async fn alert(notifier: Option<&PathBuf>, r: &Record) {
    if let Some(program) = notifier {
        let summary = match r.state {
            super::State::Notice => format!("krbottle: a notice from bottle {}", r.bottle),
            _ => format!("krbottle: bottle {} asks for approval", r.bottle),
        };
        // notify-send reads a little markup in the body: keep the agent's text literal.
        let body = printable(&r.title, false)
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let body = format!("{body} ({})", r.id);
        let status = tokio::process::Command::new(program)
            .args(["--app-name=krbottle", &summary, &body])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        // A notification daemon that does not answer must not hold up the watch.
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), status).await
            && s.success()
        {
            return;
        }
    }
    let mut err = std::io::stderr();
    let _ = err.write_all(b"\x07");
    let _ = err.flush();
}

/// The executable `name` in a directory of `PATH`, if any.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os(crate::env_vars::PATH)?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
