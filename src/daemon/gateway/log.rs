//! One JSON line per gateway decision. Lines carry names, addresses, counts and rule names;
//! never header values, bodies or tokens (a secret found by the scanner is named by its
//! environment variable). Hosts and reasons can echo what a client sent, so each line is also
//! scrubbed of the bundle's secrets before it is written.
//!
//! The fields tools may rely on:
//! - `decision`: `allow` (spliced or forwarded), `route` (token injected), `deny` (refused by
//!   the policy or a protocol check), `block` (refused: it carried a bundle secret) or `fail`
//!   (allowed, but the upstream or the transfer failed). `deny` and `block` are the denials
//!   ([`is_denial`]).
//! - `reason_code`: a stable snake_case code on every line that is not a plain success (the
//!   codes are listed in [`codes`]); `reason`: the same in words, as the client was told;
//!   `allow_with`: the manifest change that would allow a denied request, when one would.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::secrets::SecretSet;

/// What the gateway did with a connection or request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Allowed, but the upstream could not be reached or the transfer broke off.
    Fail,
}

/// The stable `reason_code` values, one per kind of refusal or failure.
pub mod codes {
    pub const NOT_ALLOWED: &str = "not_allowed";
    pub const IP_NOT_ALLOWED: &str = "ip_not_allowed";
    pub const LOCALHOST_NOT_ALLOWED: &str = "localhost_not_allowed";
    pub const PORT_NOT_ALLOWED: &str = "port_not_allowed";
    pub const ROUTE_OVER_PLAIN_HTTP: &str = "route_over_plain_http";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const NOT_A_PROXY_REQUEST: &str = "not_a_proxy_request";
    pub const MISDIRECTED: &str = "misdirected_request";
    pub const NOT_TLS: &str = "not_tls";
    pub const ECH: &str = "encrypted_client_hello";
    pub const SNI_MISMATCH: &str = "sni_mismatch";
    pub const CLIENT_TLS_FAILED: &str = "client_tls_failed";
    pub const SECRET_IN_REQUEST: &str = "secret_in_request";
    pub const SECRET_IN_RESPONSE: &str = "secret_in_response";
    pub const ENCODING_NOT_READABLE: &str = "encoding_not_readable";
    pub const BODY_NOT_READABLE: &str = "body_not_readable";
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const BUSY: &str = "gateway_memory_busy";
    pub const NOT_PUBLIC: &str = "resolves_to_non_public_address";
    pub const UPSTREAM_FAILED: &str = "upstream_failed";
    pub const UPSTREAM_PROTOCOL: &str = "upstream_protocol";
    pub const RESPONSE_CUT: &str = "response_cut";
    pub const IDLE_TIMEOUT: &str = "idle_timeout";
    pub const CLIENT_GONE: &str = "client_gone";
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
    /// Why a connection was denied, blocked or failed: a stable code from [`codes`]...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<&'static str>,
    /// ...and the same in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The manifest change that would allow what was denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_with: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Whether a decision line (as written by [`DecisionLog`]) records a denial: a `deny` or a
/// `block`. Lines that are not decision lines are not denials. For `logs --denied`.
pub fn is_denial(line: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        decision: Action,
    }
    matches!(
        serde_json::from_slice::<Probe>(line.trim_ascii()),
        Ok(Probe {
            decision: Action::Deny | Action::Block
        })
    )
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

    fn line(decision: Action, code: Option<&'static str>) -> Vec<u8> {
        let out = SharedOut::default();
        let log = DecisionLog::new("b", Box::new(out.clone()));
        log.record(&Decision {
            client: "127.0.0.1:1".parse().unwrap(),
            host: "h.example".into(),
            port: 443,
            decision,
            rule: None,
            reason_code: code,
            reason: code.map(str::to_string),
            allow_with: None,
            method: None,
            status: None,
            bytes_up: 0,
            bytes_down: 0,
        });
        out.0.lock().unwrap().clone()
    }

    #[derive(Clone, Default)]
    struct SharedOut(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedOut {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn denials_are_recognised() {
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (line(Action::Deny, Some(codes::NOT_ALLOWED)), true),
            (line(Action::Block, Some(codes::SECRET_IN_REQUEST)), true),
            (line(Action::Allow, None), false),
            (line(Action::Route, None), false),
            (line(Action::Fail, Some(codes::UPSTREAM_FAILED)), false),
            (b"{\"decision\":\"deny\"}".to_vec(), true),
            (b"{\"decision\":\"denied\"}".to_vec(), false),
            (b"krbottle gateway listening on 1.2.3.4:5".to_vec(), false),
            (b"".to_vec(), false),
            (b"{\"reason\":\"decision deny\"}".to_vec(), false),
        ];
        for (text, want) in cases {
            assert_eq!(is_denial(&text), want, "{}", String::from_utf8_lossy(&text));
        }
        let text = line(Action::Deny, Some(codes::PORT_NOT_ALLOWED));
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["reason_code"], "port_not_allowed");
        assert!(text.ends_with(b"\n"));
    }

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
