//! `krbottle bench …`: performance measured against named peers in the same run, as ratios.
//!
//! Every bench times krbottle and its peer on the same machine, in the same run, under the same
//! conditions, and prints the ratio with the target it is judged against. Absolute numbers are
//! printed too, but only the ratios are claims.
//!
//! - `prepare`: image in the engine → finished rootfs, cold and rebuilt, against the export
//!   path, save + GNU tar and `cp -a`, every side timed end to end;
//! - `unpack`: the unpacker alone on a saved image, against GNU tar and docker export;
//! - `run`: `krbottle run` setup up to `krun_start_enter` against `docker run --rm IMAGE true`;
//! - `gateway`: splice latency and route throughput against a direct connection and mitmproxy;
//! - `git`: a push and a fetch through git-gate against the same git straight to the same SSH
//!   upstream.

pub mod gateway;
pub mod git;
pub mod prepare;
pub mod run;
pub mod start;
pub mod unpack;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A bench's result: printed for a person, or as JSON.
pub trait Report: serde::Serialize {
    fn print(&self);
}

/// The median of `v` (the lower one for an even count). `v` must not be empty.
fn median(v: Vec<Duration>) -> Duration {
    percentile(v, 50)
}

/// The `p`th percentile of `v` by the nearest-rank method. `v` must not be empty.
fn percentile(mut v: Vec<Duration>, p: usize) -> Duration {
    v.sort();
    // Nearest rank: the smallest value with at least p% of the values at or below it; for the
    // median of an odd count that is the middle value.
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

/// Wall time of the docker CLI running `args` (e.g. `run --rm IMAGE true`), the way a user would
/// run it: the peer several benches measure against.
fn time_docker(args: &[&str]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    output(
        Command::new("docker").args(args),
        &format!("docker {}", args.join(" ")),
    )?;
    Ok(t.elapsed())
}

/// Runs a peer or helper command (`what` names it in errors) with no input and returns its
/// standard output; a failure is an error carrying its standard error.
fn output(cmd: &mut Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("Could not run {what}; is it installed?"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Milliseconds, for printing and JSON.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect();
        let table: &[(&[u64], usize, u64)] = &[
            (&[7], 50, 7),
            (&[7], 99, 7),
            (&[3, 1, 2], 50, 2),
            (&[4, 1, 3, 2], 50, 2),
            (&[5, 1, 4, 2, 3], 99, 5),
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, 9),
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99, 10),
        ];
        for &(values, p, want) in table {
            assert_eq!(
                percentile(ms(values), p),
                Duration::from_millis(want),
                "p{p} of {values:?}"
            );
        }
    }
}
