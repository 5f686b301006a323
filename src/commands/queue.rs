//! `krbottle queue [BOTTLE] [--json] [--watch]`: what agents are waiting on a human for.

use std::io::Write;

use chrono::Utc;

use crate::cli::QueueArgs;
use crate::exit;
use crate::output::{Reporter, print_json};
use crate::queue::watch::{Seen, watch};
use crate::queue::{self, Record, age, printable};
use crate::state::StateRoot;

/// Lines of a request's details shown under it (`--json` shows them all).
const DETAIL_LINES: usize = 20;

pub async fn run(args: QueueArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let state = StateRoot::open_default();
    if args.watch {
        let json = args.json;
        let mut header = !json;
        watch(state, args.bottle, |seen| {
            let mut out = std::io::stdout().lock();
            let (r, new) = match seen {
                Seen::Before(r) => (r, false),
                Seen::New(r) => (r, true),
            };
            if json {
                writeln!(out, "{}", as_json(r))?;
            } else {
                if std::mem::take(&mut header) {
                    writeln!(out, "{}", header_line())?;
                }
                write_human(&mut out, r, new)?;
            }
            out.flush()
        })
        .await?;
        return Ok(exit::OK);
    }
    let bottle = args.bottle.clone();
    let records =
        queue::blocking(move || queue::waiting(&state, bottle.as_deref(), Utc::now())).await?;
    if args.json {
        let values: Vec<serde_json::Value> = records.iter().map(as_json).collect();
        print_json(&values)?;
        return Ok(exit::OK);
    }
    if records.is_empty() {
        reporter.status("nothing is waiting for an answer");
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", header_line())?;
    for r in &records {
        write_human(&mut out, r, false)?;
    }
    reporter.status("answer with `krbottle approve ID` or `krbottle deny ID` (--comment TEXT)");
    Ok(exit::OK)
}

/// A record as `--json` shows it: the record, and its age in seconds.
fn as_json(r: &Record) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "age_secs".into(),
            (Utc::now() - r.created_at).num_seconds().max(0).into(),
        );
    }
    v
}

fn header_line() -> String {
    format!(
        "{:<7} {:<16} {:>6}  {:<8} {:<10} TITLE",
        "ID", "BOTTLE", "AGE", "STATE", "KIND"
    )
}

fn write_human(out: &mut impl Write, r: &Record, new: bool) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<7} {:<16} {:>6}  {:<8} {:<10} {}{}",
        r.id,
        r.bottle,
        age(Utc::now() - r.created_at),
        r.state,
        printable(r.kind.as_deref().unwrap_or("-"), false),
        printable(&r.title, false),
        if new { "  (new)" } else { "" }
    )?;
    let details = printable(&r.details, true);
    let lines: Vec<&str> = details.lines().collect();
    // A notice's first line is its title already.
    let skip = usize::from(r.state == queue::State::Notice);
    for line in lines.iter().skip(skip).take(DETAIL_LINES) {
        writeln!(out, "        | {line}")?;
    }
    let more = lines.len().saturating_sub(skip + DETAIL_LINES);
    if more > 0 {
        writeln!(out, "        | … {more} more lines (krbottle queue --json)")?;
    }
    Ok(())
}
