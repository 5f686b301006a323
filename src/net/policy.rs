//! The gateway's allowlist decision, made on a canonical [`Host`] before any DNS lookup.
//!
//! Deny by default. Route hosts are intercepted; other listed hosts are spliced. IP literals and
//! `localhost` names pass only through an exact rule that names them: a wildcard never does.

use crate::net::host::{Host, HostError, HostRule};

/// What to do with a connection to one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Intercept: terminate TLS and inject the route's token (index into the route list).
    Route(usize),
    /// Splice bytes after checking the TLS SNI; `rule` is the allowlist entry that matched.
    Allow {
        rule: String,
    },
    Deny(DenyReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // each says what was not listed
pub enum DenyReason {
    NotListed,
    IpLiteralNotListed,
    LocalhostNotListed,
}

impl DenyReason {
    /// The short reason sent in a `403` body and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NotListed => "host not in the bottle's allowlist",
            DenyReason::IpLiteralNotListed => "IP address targets are denied unless listed",
            DenyReason::LocalhostNotListed => "localhost is denied unless listed",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    allow: Vec<HostRule>,
    routes: Vec<Host>,
}

impl Policy {
    /// `routes` are the route hosts in route order; they are implicitly allowed.
    pub fn new(allow: Vec<HostRule>, routes: Vec<Host>) -> Policy {
        Policy { allow, routes }
    }

    /// Parses rule strings (as in the manifest's `allow`) and route host names.
    pub fn from_strings(allow: &[String], routes: &[String]) -> Result<Policy, HostError> {
        let allow = allow
            .iter()
            .map(|r| HostRule::parse(r))
            .collect::<Result<_, _>>()?;
        let routes = routes
            .iter()
            .map(|r| Host::parse(r))
            .collect::<Result<_, _>>()?;
        Ok(Policy::new(allow, routes))
    }

    pub fn decide(&self, host: &Host) -> Verdict {
        if let Some(i) = self.routes.iter().position(|r| r == host) {
            return Verdict::Route(i);
        }
        let special = match host {
            Host::Ip(_) => Some(DenyReason::IpLiteralNotListed),
            Host::Domain(d) if d == "localhost" || d.ends_with(".localhost") => {
                Some(DenyReason::LocalhostNotListed)
            }
            Host::Domain(_) => None,
        };
        for rule in &self.allow {
            let usable = match (special, rule) {
                (None, _) => true,
                // Special hosts need a rule that names them exactly.
                (Some(_), HostRule::Exact(_)) => true,
                (Some(_), HostRule::Wildcard(_)) => false,
            };
            if usable && rule.matches(host) {
                return Verdict::Allow {
                    rule: rule.to_string(),
                };
            }
        }
        Verdict::Deny(special.unwrap_or(DenyReason::NotListed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_table() {
        let policy = Policy::from_strings(
            &[
                "github.com".into(),
                "*.githubusercontent.com".into(),
                "10.0.0.5".into(),
                "*.localhost.example".into(),
            ],
            &["api.anthropic.com".into()],
        )
        .unwrap();
        let allow = |r: &str| Verdict::Allow { rule: r.into() };
        let cases: &[(&str, Verdict)] = &[
            ("api.anthropic.com", Verdict::Route(0)),
            ("API.Anthropic.com.", Verdict::Route(0)),
            ("github.com", allow("github.com")),
            ("GitHub.com.", allow("github.com")),
            ("api.github.com", Verdict::Deny(DenyReason::NotListed)),
            (
                "raw.githubusercontent.com",
                allow("*.githubusercontent.com"),
            ),
            (
                "githubusercontent.com",
                Verdict::Deny(DenyReason::NotListed),
            ),
            ("evil.test", Verdict::Deny(DenyReason::NotListed)),
            ("10.0.0.5", allow("10.0.0.5")),
            ("10.0.0.6", Verdict::Deny(DenyReason::IpLiteralNotListed)),
            ("127.1", Verdict::Deny(DenyReason::IpLiteralNotListed)),
            (
                "[::ffff:127.0.0.1]",
                Verdict::Deny(DenyReason::IpLiteralNotListed),
            ),
            (
                "169.254.169.254",
                Verdict::Deny(DenyReason::IpLiteralNotListed),
            ),
            ("localhost", Verdict::Deny(DenyReason::LocalhostNotListed)),
            ("a.localhost", Verdict::Deny(DenyReason::LocalhostNotListed)),
            ("x.localhost.example", allow("*.localhost.example")),
        ];
        for (host, want) in cases {
            let h = Host::parse(host).unwrap();
            assert_eq!(&policy.decide(&h), want, "host {host:?}");
        }
    }

    #[test]
    fn listed_localhost_is_allowed() {
        let policy = Policy::from_strings(&["localhost".into(), "127.0.0.1".into()], &[]).unwrap();
        for host in ["localhost", "127.1", "2130706433"] {
            let h = Host::parse(host).unwrap();
            assert!(matches!(policy.decide(&h), Verdict::Allow { .. }), "{host}");
        }
    }
}
