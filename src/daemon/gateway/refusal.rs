//! Denials that explain themselves. The client of a bottle is often a model: a refusal says, in
//! a body it can read, what was refused, why, and which manifest setting would allow it (when
//! one would); the decision line carries the same reason and code. Also the per-request
//! context every decision line is built from, and the guard that logs a request the client
//! or the idle timeout cut short.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Response, StatusCode};

use super::idle::Activity;
use super::log::{Action, Decision, DecisionLog, codes};
use super::{ProxyBody, Shared, text};
use crate::net::host::Host;
use crate::net::policy::{Access, DenyReason};

/// What a decision line needs to know about one connection or request.
#[derive(Clone)]
pub(super) struct Ctx {
    pub peer: SocketAddr,
    pub host: String,
    pub port: u16,
    pub rule: Option<String>,
    pub method: Option<String>,
    /// What the client asked for, as the refusal names it (`CONNECT a:443`, `GET http://…`).
    pub what: String,
    /// The decision when all goes well (`allow` or `route`).
    pub success: Action,
    pub activity: Arc<Activity>,
}

impl Ctx {
    pub fn new(
        peer: SocketAddr,
        host: &str,
        port: u16,
        success: Action,
        activity: Arc<Activity>,
    ) -> Ctx {
        Ctx {
            peer,
            host: host.to_string(),
            port,
            rule: None,
            method: None,
            what: String::new(),
            success,
            activity,
        }
    }

    pub fn with_what(mut self, what: String) -> Ctx {
        self.what = what;
        self
    }

    pub fn at(mut self, host: &str, port: u16) -> Ctx {
        self.host = host.to_string();
        self.port = port;
        self
    }

    pub fn with_rule(mut self, rule: String) -> Ctx {
        self.rule = Some(rule);
        self
    }

    pub fn with_method(mut self, method: String) -> Ctx {
        self.method = Some(method);
        self
    }

    pub fn decision(&self, _shared: &Shared, action: Action) -> Decision {
        self.line(action)
    }

    fn line(&self, action: Action) -> Decision {
        Decision {
            client: self.peer,
            host: self.host.clone(),
            port: self.port,
            decision: action,
            rule: self.rule.clone(),
            reason_code: None,
            reason: None,
            allow_with: None,
            method: self.method.clone(),
            status: None,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    /// A `fail` line with its reason.
    pub fn fail(&self, code: &'static str, reason: &str) -> Decision {
        let mut d = self.line(Action::Fail);
        d.reason_code = Some(code);
        d.reason = Some(reason.to_string());
        d
    }

    /// The line of a request that succeeded (status and counts filled in later).
    pub fn success(&self) -> Decision {
        self.line(self.success)
    }
}

/// A request the gateway answers itself, with the reason it gives.
#[derive(Debug)]
pub(super) struct Refusal {
    pub action: Action,
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
    pub allow_with: Option<String>,
}

impl Refusal {
    pub fn deny(status: StatusCode, code: &'static str, reason: String) -> Refusal {
        Refusal {
            action: Action::Deny,
            status,
            code,
            reason,
            allow_with: None,
        }
    }

    /// The upstream or the transfer failed (`502` unless said otherwise).
    pub fn fail(status: StatusCode, code: &'static str, reason: String) -> Refusal {
        Refusal {
            action: Action::Fail,
            status,
            code,
            reason,
            allow_with: None,
        }
    }

    /// The request itself is malformed (`400`).
    pub fn bad_request(reason: impl Into<String>) -> Refusal {
        Refusal::deny(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, reason.into())
    }

    /// The upstream could not be reached or did not answer (`502`).
    pub fn upstream_failed(reason: impl Into<String>) -> Refusal {
        Refusal::fail(
            StatusCode::BAD_GATEWAY,
            codes::UPSTREAM_FAILED,
            reason.into(),
        )
    }

    /// The upstream's response body broke off (`502` if nothing was sent yet).
    pub fn response_cut(error: impl std::fmt::Display) -> Refusal {
        Refusal::fail(
            StatusCode::BAD_GATEWAY,
            codes::RESPONSE_CUT,
            format!("the upstream's response body broke off: {error}"),
        )
    }

    /// A bundle secret found `place` ("in the header x-debug", …).
    pub fn secret(secret: &str, place: &str) -> Refusal {
        Refusal {
            action: Action::Block,
            status: StatusCode::FORBIDDEN,
            code: codes::SECRET_IN_REQUEST,
            reason: format!(
                "the request carries the bundle secret {secret} ({place}); a bundle secret only leaves as its own route's token, which the gateway adds itself"
            ),
            allow_with: None,
        }
    }

    /// A policy denial, with the `allow` entry that would open it.
    pub fn policy(
        reason: &DenyReason,
        bottle: &str,
        host: &Host,
        port: u16,
        access: Access,
    ) -> Refusal {
        let entry = if port == access.default_port() {
            host.to_string()
        } else {
            format!("{host}:{port}")
        };
        let allow_with = match reason {
            DenyReason::RouteOverPlainHttp => None,
            _ => Some(format!(
                "add \"{entry}\" to `allow` of [bottles.{bottle}] in krbottle.toml"
            )),
        };
        let mut why = reason.as_str().to_string();
        if *reason == DenyReason::RouteOverPlainHttp {
            why.push_str(&format!("; use https://{host}/ instead"));
        }
        Refusal {
            action: Action::Deny,
            status: StatusCode::FORBIDDEN,
            code: reason.code(),
            reason: why,
            allow_with,
        }
    }

    pub fn with_allow(mut self, allow_with: String) -> Refusal {
        self.allow_with = Some(allow_with);
        self
    }

    /// The body the client reads. The first line keeps the short form tools grep for.
    fn body(&self, what: &str) -> String {
        let verb = match self.action {
            Action::Fail => "could not complete",
            _ => "refused",
        };
        let mut out = format!(
            "{}\n{verb}: {what}\nreason_code: {}\n",
            self.reason, self.code
        );
        match (&self.allow_with, self.action) {
            (Some(a), _) => out.push_str(&format!("to allow it: {a}\n")),
            (None, Action::Deny | Action::Block) => {
                out.push_str("to allow it: no manifest setting allows this\n");
            }
            (None, _) => {}
        }
        out
    }
}

impl Shared {
    /// Logs `refusal` for `ctx` and answers the client with it.
    pub(super) fn refuse(&self, ctx: Ctx, refusal: Refusal) -> Response<ProxyBody> {
        let mut d = ctx.line(refusal.action);
        d.reason_code = Some(refusal.code);
        d.reason = Some(refusal.reason.clone());
        d.allow_with = refusal.allow_with.clone();
        d.status = Some(refusal.status.as_u16());
        self.log.record(&d);
        let what = if ctx.what.is_empty() {
            format!("{}:{}", ctx.host, ctx.port)
        } else {
            ctx.what.clone()
        };
        // The body echoes what the client sent: scrubbed like everything else it receives.
        let body = self.secrets.scrub(refusal.body(&what).as_bytes());
        text(refusal.status, &String::from_utf8_lossy(&body))
    }
}

/// Logs a request that ends before it was answered: the client left, or nothing moved for the
/// idle time. Disarmed once the request has its own line.
pub(super) struct Inflight {
    log: DecisionLog,
    line: Option<Decision>,
    activity: Arc<Activity>,
    stage: &'static str,
}

impl Inflight {
    pub fn new(shared: &Shared, ctx: &Ctx) -> Inflight {
        Inflight {
            log: shared.log.clone(),
            line: Some(ctx.line(Action::Fail)),
            activity: ctx.activity.clone(),
            stage: "reading the request",
        }
    }

    pub fn stage(&mut self, stage: &'static str) {
        self.stage = stage;
    }

    pub fn disarm(&mut self) {
        self.line = None;
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        if let Some(mut d) = self.line.take() {
            let (code, cause) = if self.activity.timed_out() {
                (codes::IDLE_TIMEOUT, "idle timeout")
            } else {
                (codes::CLIENT_GONE, "the client left")
            };
            d.reason_code = Some(code);
            d.reason = Some(format!("{cause} while {}", self.stage));
            self.log.record(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_bodies_explain_themselves() {
        let host = Host::parse("evil.example").unwrap();
        let cases: Vec<(Refusal, &[&str])> = vec![
            (
                Refusal::policy(&DenyReason::NotListed, "dev", &host, 443, Access::Connect),
                &[
                    "allowlist",
                    "refused: CONNECT x",
                    "reason_code: not_allowed",
                    "add \"evil.example\" to `allow` of [bottles.dev]",
                ],
            ),
            (
                Refusal::policy(
                    &DenyReason::PortNotListed,
                    "dev",
                    &host,
                    8443,
                    Access::Connect,
                ),
                &["port_not_allowed", "\"evil.example:8443\""],
            ),
            (
                Refusal::policy(&DenyReason::NotListed, "dev", &host, 80, Access::PlainHttp),
                &["add \"evil.example\" to"],
            ),
            (
                Refusal::policy(
                    &DenyReason::RouteOverPlainHttp,
                    "dev",
                    &host,
                    80,
                    Access::PlainHttp,
                ),
                &["https://evil.example/", "no manifest setting allows this"],
            ),
            (
                Refusal::secret("API_TOKEN", "in the body"),
                &["bundle secret API_TOKEN (in the body)", "secret_in_request"],
            ),
        ];
        for (refusal, needles) in cases {
            let body = refusal.body("CONNECT x");
            for needle in needles {
                assert!(body.contains(needle), "{needle:?} not in {body}");
            }
        }
    }
}
