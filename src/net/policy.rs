//! The gateway's allowlist decision, made on a canonical [`Host`] and port before any DNS
//! lookup.
//!
//! Deny by default. Every rule is bound to ports: a rule without one opens 443 for CONNECT and
//! 80 for plain HTTP; `host:port` opens that port (for both). A route is intercepted on its
//! own port only (443 unless its host says `host:port`), and never over plain HTTP. IP
//! literals and `localhost` names pass only through an exact rule that names them: a wildcard
//! never does.

use std::fmt;

use crate::net::host::{Host, HostError, HostRule, split_port};

/// The port a rule without one opens for CONNECT.
pub const DEFAULT_TLS_PORT: u16 = 443;
/// The port a rule without one opens for plain HTTP.
pub const DEFAULT_HTTP_PORT: u16 = 80;

/// How the client asks to reach a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A CONNECT tunnel (TLS is checked inside).
    Connect,
    /// A plain `http://` request through the proxy.
    PlainHttp,
}

impl Access {
    pub fn default_port(self) -> u16 {
        match self {
            Access::Connect => DEFAULT_TLS_PORT,
            Access::PlainHttp => DEFAULT_HTTP_PORT,
        }
    }
}

/// One allowlist entry: a [`HostRule`], optionally bound to one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    pub host: HostRule,
    pub port: Option<u16>,
}

impl AllowRule {
    /// Parses `host`, `*.suffix` or an IP literal, each optionally followed by `:port`.
    pub fn parse(input: &str) -> Result<AllowRule, HostError> {
        let (host, port) = split_port(input)?;
        Ok(AllowRule {
            host: HostRule::parse(host)?,
            port,
        })
    }

    pub fn matches(&self, host: &Host, port: u16, access: Access) -> bool {
        self.port.unwrap_or(access.default_port()) == port && self.host.matches(host)
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// A route's host and port, from `host` or `host:port` (a domain name: its token goes over TLS
/// verified for that name).
pub fn parse_route_host(input: &str) -> Result<(String, u16), HostError> {
    let (host, port) = split_port(input)?;
    match Host::parse(host)? {
        Host::Domain(d) => Ok((d, port.unwrap_or(DEFAULT_TLS_PORT))),
        Host::Ip(_) => Err(HostError::InvalidDomain(input.to_string())),
    }
}

/// The canonical spelling of a route target: `host`, or `host:port` off the default port.
pub fn route_host_string(host: &str, port: u16) -> String {
    if port == DEFAULT_TLS_PORT {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// What to do with a connection to one host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Intercept: terminate TLS and inject the route's token (index into the route list).
    Route(usize),
    /// Splice bytes after checking the TLS SNI (or forward plain HTTP); `rule` is the
    /// allowlist entry that matched.
    Allow {
        rule: String,
    },
    Deny(DenyReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // each says what was not listed
pub enum DenyReason {
    NotListed,
    IpLiteralNotListed,
    LocalhostNotListed,
    /// The host is listed, but not for this port.
    PortNotListed,
    /// Plain HTTP to a route host: its token never travels in clear text.
    RouteOverPlainHttp,
}

impl DenyReason {
    /// A stable code for logs and tools (`reason_code` in decision lines).
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::NotListed => "not_allowed",
            DenyReason::IpLiteralNotListed => "ip_not_allowed",
            DenyReason::LocalhostNotListed => "localhost_not_allowed",
            DenyReason::PortNotListed => "port_not_allowed",
            DenyReason::RouteOverPlainHttp => "route_over_plain_http",
        }
    }

    /// The short reason sent in a `403` body and logged.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenyReason::NotListed => "host not in the bottle's allowlist",
            DenyReason::IpLiteralNotListed => "IP address targets are denied unless listed",
            DenyReason::LocalhostNotListed => "localhost is denied unless listed",
            DenyReason::PortNotListed => {
                "the host is allowed, but not on this port (rules without a port open 443 for CONNECT and 80 for plain HTTP)"
            }
            DenyReason::RouteOverPlainHttp => {
                "route hosts are only reached over https: their token never travels in clear text"
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    allow: Vec<AllowRule>,
    /// Route hosts and their ports, in route order.
    routes: Vec<(Host, u16)>,
}

impl Policy {
    /// `routes` are the route hosts and ports in route order; they are implicitly allowed.
    pub fn new(allow: Vec<AllowRule>, routes: Vec<(Host, u16)>) -> Policy {
        Policy { allow, routes }
    }

    /// Parses rule strings (as in the manifest's `allow`) and route hosts (`host[:port]`).
    pub fn from_strings(allow: &[String], routes: &[String]) -> Result<Policy, HostError> {
        let allow = allow
            .iter()
            .map(|r| AllowRule::parse(r))
            .collect::<Result<_, _>>()?;
        let routes = routes
            .iter()
            .map(|r| parse_route_host(r).map(|(h, p)| (Host::Domain(h), p)))
            .collect::<Result<_, _>>()?;
        Ok(Policy::new(allow, routes))
    }

    pub fn decide(&self, host: &Host, port: u16, access: Access) -> Verdict {
        let route = self.routes.iter().position(|(r, _)| r == host);
        if let Some(i) = route {
            if access == Access::PlainHttp {
                return Verdict::Deny(DenyReason::RouteOverPlainHttp);
            }
            if self.routes[i].1 == port {
                return Verdict::Route(i);
            }
        }
        let special = match host {
            Host::Ip(_) => Some(DenyReason::IpLiteralNotListed),
            Host::Domain(d) if d == "localhost" || d.ends_with(".localhost") => {
                Some(DenyReason::LocalhostNotListed)
            }
            Host::Domain(_) => None,
        };
        let mut other_port = route.is_some();
        for rule in &self.allow {
            let usable = match (&special, &rule.host) {
                (None, _) => true,
                // Special hosts need a rule that names them exactly.
                (Some(_), HostRule::Exact(_)) => true,
                (Some(_), HostRule::Wildcard(_)) => false,
            };
            if !usable || !rule.host.matches(host) {
                continue;
            }
            if rule.matches(host, port, access) {
                return Verdict::Allow {
                    rule: rule.to_string(),
                };
            }
            other_port = true;
        }
        if other_port {
            return Verdict::Deny(DenyReason::PortNotListed);
        }
        Verdict::Deny(special.unwrap_or(DenyReason::NotListed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Access::{Connect, PlainHttp};

    #[test]
    fn decision_table() {
        let policy = Policy::from_strings(
            &[
                "github.com".into(),
                "*.githubusercontent.com".into(),
                "10.0.0.5".into(),
                "*.localhost.example".into(),
                "git.example:8443".into(),
                "*.ports.example:9000".into(),
                "[::1]:8080".into(),
                "api.anthropic.com:8443".into(),
            ],
            &["api.anthropic.com".into(), "api.other.example:4443".into()],
        )
        .unwrap();
        let allow = |r: &str| Verdict::Allow { rule: r.into() };
        use DenyReason::{IpLiteralNotListed as Ip, NotListed, PortNotListed as Port};
        let deny = Verdict::Deny;
        let cases: &[(&str, u16, Access, Verdict)] = &[
            ("api.anthropic.com", 443, Connect, Verdict::Route(0)),
            ("API.Anthropic.com.", 443, Connect, Verdict::Route(0)),
            // Another port of a route host: never the token; spliced only if listed.
            (
                "api.anthropic.com",
                8443,
                Connect,
                allow("api.anthropic.com:8443"),
            ),
            ("api.anthropic.com", 444, Connect, deny(Port)),
            (
                "api.anthropic.com",
                80,
                PlainHttp,
                deny(DenyReason::RouteOverPlainHttp),
            ),
            ("api.other.example", 4443, Connect, Verdict::Route(1)),
            ("api.other.example", 443, Connect, deny(Port)),
            ("github.com", 443, Connect, allow("github.com")),
            ("GitHub.com.", 443, Connect, allow("github.com")),
            ("github.com", 80, PlainHttp, allow("github.com")),
            ("github.com", 22, Connect, deny(Port)),
            ("github.com", 443, PlainHttp, deny(Port)),
            ("github.com", 8080, PlainHttp, deny(Port)),
            ("git.example", 8443, Connect, allow("git.example:8443")),
            ("git.example", 8443, PlainHttp, allow("git.example:8443")),
            ("git.example", 443, Connect, deny(Port)),
            (
                "a.ports.example",
                9000,
                Connect,
                allow("*.ports.example:9000"),
            ),
            ("a.ports.example", 443, Connect, deny(Port)),
            ("api.github.com", 443, Connect, deny(NotListed)),
            (
                "raw.githubusercontent.com",
                443,
                Connect,
                allow("*.githubusercontent.com"),
            ),
            ("githubusercontent.com", 443, Connect, deny(NotListed)),
            ("evil.test", 443, Connect, deny(NotListed)),
            ("10.0.0.5", 443, Connect, allow("10.0.0.5")),
            ("10.0.0.5", 80, PlainHttp, allow("10.0.0.5")),
            ("10.0.0.5", 22, Connect, deny(Port)),
            ("[::1]", 8080, PlainHttp, allow("[::1]:8080")),
            ("[::1]", 443, Connect, deny(Port)),
            ("10.0.0.6", 443, Connect, deny(Ip)),
            ("127.1", 443, Connect, deny(Ip)),
            ("[::ffff:127.0.0.1]", 443, Connect, deny(Ip)),
            ("169.254.169.254", 80, PlainHttp, deny(Ip)),
            (
                "localhost",
                443,
                Connect,
                deny(DenyReason::LocalhostNotListed),
            ),
            (
                "a.localhost",
                443,
                Connect,
                deny(DenyReason::LocalhostNotListed),
            ),
            (
                "x.localhost.example",
                443,
                Connect,
                allow("*.localhost.example"),
            ),
        ];
        for (host, port, access, want) in cases {
            let h = Host::parse(host).unwrap();
            assert_eq!(
                &policy.decide(&h, *port, *access),
                want,
                "host {host:?} port {port} {access:?}"
            );
        }
    }

    #[test]
    fn listed_localhost_is_allowed() {
        let policy = Policy::from_strings(&["localhost".into(), "127.0.0.1".into()], &[]).unwrap();
        for host in ["localhost", "127.1", "2130706433"] {
            let h = Host::parse(host).unwrap();
            assert!(
                matches!(policy.decide(&h, 443, Connect), Verdict::Allow { .. }),
                "{host}"
            );
        }
    }

    #[test]
    fn rule_parse_table() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("example.com", Ok("example.com")),
            ("Example.com.:8443", Ok("example.com:8443")),
            ("*.Example.com:9000", Ok("*.example.com:9000")),
            ("[::1]:80", Ok("[::1]:80")),
            ("127.1:8080", Ok("127.0.0.1:8080")),
            ("example.com:0", Err(())),
            ("example.com:", Err(())),
            ("example.com:99999", Err(())),
            ("a@example.com:443", Err(())),
            ("*.com:443", Err(())),
            ("::1:80", Err(())),
        ];
        for (input, want) in cases {
            let got = AllowRule::parse(input)
                .map(|r| r.to_string())
                .map_err(|_| ());
            assert_eq!(got.as_deref(), want.as_ref().map(|s| *s), "rule {input:?}");
            if let Ok(text) = want {
                assert_eq!(
                    AllowRule::parse(text).map(|r| r.to_string()).as_deref(),
                    Ok(*text),
                    "canonical {text:?}"
                );
            }
        }
        type RouteCase = (&'static str, Result<(&'static str, u16), ()>);
        let routes: &[RouteCase] = &[
            ("api.example.com", Ok(("api.example.com", 443))),
            ("API.example.com.:8443", Ok(("api.example.com", 8443))),
            ("10.0.0.1", Err(())),
            ("api.example.com:0", Err(())),
        ];
        for (input, want) in routes {
            let got = parse_route_host(input).map_err(|_| ());
            let want = want.map(|(h, p)| (h.to_string(), p));
            assert_eq!(got, want, "route {input:?}");
        }
        assert_eq!(route_host_string("a.example", 443), "a.example");
        assert_eq!(route_host_string("a.example", 8443), "a.example:8443");
    }
}
