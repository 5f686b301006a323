//! How krbottle talks to the user: verbosity, progress bars, machine-readable output.
//!
//! User-facing messages go to stderr through [`Reporter`]; debug logs go through `tracing` and
//! are only shown with `-v` or `KRBOTTLE_LOG`. `--json` output goes to stdout, one document.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How much krbottle says on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: errors only.
    Quiet,
    /// Default: progress and short status lines.
    Normal,
    /// `-v` and more: also debug logs.
    Verbose(u8),
}

impl Verbosity {
    /// From the counts of `-v` and `-q` flags.
    pub fn from_flags(verbose: u8, quiet: bool) -> Self {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, n) => Verbosity::Verbose(n),
        }
    }
}

/// Status lines and progress bars for one command.
#[derive(Clone, Debug)]
pub struct Reporter {
    verbosity: Verbosity,
    /// Progress bars are drawn only on a terminal.
    interactive: bool,
}

impl Reporter {
    pub fn new(verbosity: Verbosity) -> Self {
        Reporter {
            verbosity,
            interactive: std::io::stderr().is_terminal(),
        }
    }

    /// A reporter that prints nothing (for library callers and tests).
    pub fn silent() -> Self {
        Reporter {
            verbosity: Verbosity::Quiet,
            interactive: false,
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// A one-line status message on stderr, unless quiet.
    pub fn status(&self, msg: impl AsRef<str>) {
        if self.verbosity > Verbosity::Quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// A byte-counting progress bar (hidden when quiet or not on a terminal).
    /// `total` is the expected byte count when known.
    pub fn bytes_bar(&self, what: &str, total: Option<u64>) -> ProgressBar {
        if self.verbosity == Verbosity::Quiet || !self.interactive {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{msg:>12} {spinner} {bytes} {bytes_per_sec}")
                    .expect("valid template"),
            ),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// A spinner for work of unknown length (e.g. an image build).
    pub fn spinner(&self, what: &str) -> ProgressBar {
        if self.verbosity == Verbosity::Quiet || !self.interactive {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner()
            .with_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}

/// Prints a value as pretty JSON on stdout (the `--json` contract: one document per command).
/// A reader that stops early (`krbottle … --json | grep -q x`) is not an error.
pub fn print_json<T: serde::Serialize>(value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// An error and its sources on one line, `: `-separated (for messages passed on as text, e.g.
/// from the VMM child to its parent).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// How long ago `secs` (since the epoch) was, for tables: `42s`, `5m`, `3h`, `2d`.
pub fn ago(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let d = now.saturating_sub(secs);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}
