//! One JSON line per gateway decision. Lines carry names, addresses, counts and rule names;
//! never header values, bodies or tokens (a secret found by the scanner is named by its
//! environment variable). Hosts and reasons can echo what a client sent, so each line is also
//! scrubbed of the bundle's secrets before it is written.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::secrets::SecretSet;

/// What the gateway did with a connection or request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Spliced or forwarded without interception.
    Allow,
    /// Refused by the allowlist or a protocol check.
    Deny,
    /// Intercepted for a route; the token was injected.
    Route,
    /// Refused because it carried one of the bundle's secrets.
    Block,
}

#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub client: SocketAddr,
    pub host: String,
    pub port: u16,
    pub decision: Action,
    /// The allowlist rule or route host that matched, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why a connection was denied or blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    bottle: &'a str,
    #[serde(flatten)]
    decision: &'a Decision,
}

/// Where decision lines go: stdout in the bundle, a buffer in tests.
#[derive(Clone)]
pub struct DecisionLog {
    bottle: Arc<str>,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    secrets: Arc<SecretSet>,
}

impl DecisionLog {
    pub fn new(bottle: &str, out: Box<dyn Write + Send>) -> DecisionLog {
        DecisionLog {
            bottle: bottle.into(),
            out: Arc::new(Mutex::new(out)),
            secrets: Arc::default(),
        }
    }

    /// This log, scrubbing `secrets` from every line.
    pub fn scrubbing(self, secrets: SecretSet) -> DecisionLog {
        DecisionLog {
            secrets: Arc::new(secrets),
            ..self
        }
    }

    pub fn record(&self, decision: &Decision) {
        let line = Line {
            time: rfc3339_now(),
            bottle: &self.bottle,
            decision,
        };
        let Ok(text) = serde_json::to_vec(&line) else {
            return;
        };
        let mut text = self.secrets.scrub(&text);
        text.push(b'\n');
        // A poisoned lock only means another thread panicked mid-write; keep logging.
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // Logging must never take the proxy down; a full disk loses lines, not connections.
        let _ = out.write_all(&text).and_then(|()| out.flush());
    }
}

/// UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let cases = [
            (0, (1970, 1, 1)),
            (59, (1970, 3, 1)),
            (11_016, (2000, 2, 29)),
            (19_723, (2024, 1, 1)),
            (-1, (1969, 12, 31)),
        ];
        for (days, want) in cases {
            assert_eq!(civil_from_days(days), want, "day {days}");
        }
    }
}
