//! Host names as the gateway sees them: one canonical form, parsed once.
//!
//! Every host that reaches a policy decision goes through [`Host::parse`]: lowercase, no
//! trailing dot, IDNA (UTS #46, STD3 rules) for names, and the WHATWG URL rules for IPv4 so that
//! `127.1`, `0x7f.0.0.1` and `2130706433` are all recognised as the address they are rather than
//! as names. IPv4-mapped IPv6 addresses become IPv4. Userinfo (`a@b`), ports, paths, percent
//! escapes and zone ids are refused, never stripped: a host that needs repair is an attack.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a host or authority was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("empty host name")]
    Empty,
    #[error("host {0:?} carries userinfo (`user@host`); give the host alone")]
    UserInfo(String),
    #[error("host {0:?} contains a character not allowed in a host name")]
    ForbiddenChar(String),
    #[error("host {0:?} looks like an IPv4 address but is not a valid one")]
    InvalidIpv4(String),
    #[error("host {0:?} is not a valid IPv6 literal")]
    InvalidIpv6(String),
    #[error("host {0:?} is not a valid domain name (IDNA)")]
    InvalidDomain(String),
    #[error("authority {0:?} needs a port (`host:port`)")]
    MissingPort(String),
    #[error("authority {0:?} has an invalid port")]
    InvalidPort(String),
    #[error("host rule {0:?}: a wildcard is only allowed as a whole first label (`*.example.com`)")]
    InvalidWildcard(String),
}

/// A canonical host: an ASCII domain name (lowercase, no trailing dot) or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Domain(String),
    Ip(IpAddr),
}

impl Host {
    /// Parses and canonicalises a host as written in a URL authority, a CONNECT line, a SNI
    /// extension or a manifest (no port, no userinfo). IPv6 literals must be bracketed.
    pub fn parse(input: &str) -> Result<Host, HostError> {
        if input.is_empty() {
            return Err(HostError::Empty);
        }
        if let Some(inner) = input.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| HostError::InvalidIpv6(input.to_string()))?;
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_| HostError::InvalidIpv6(input.to_string()))?;
            return Ok(Host::Ip(IpAddr::V6(ip).to_canonical()));
        }
        if input.contains('@') {
            return Err(HostError::UserInfo(input.to_string()));
        }
        if input.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, ':' | '/' | '\\' | '?' | '#' | '%' | '[' | ']' | '*')
        }) {
            return Err(HostError::ForbiddenChar(input.to_string()));
        }
        // One trailing dot is the DNS root and means the same host; two is malformed.
        let trimmed = input.strip_suffix('.').unwrap_or(input);
        if trimmed.is_empty() || trimmed.ends_with('.') {
            return Err(HostError::InvalidDomain(input.to_string()));
        }
        if ends_in_number(trimmed) {
            return parse_whatwg_ipv4(trimmed)
                .map(|ip| Host::Ip(IpAddr::V4(ip)))
                .ok_or_else(|| HostError::InvalidIpv4(input.to_string()));
        }
        let ascii = idna::domain_to_ascii_strict(trimmed)
            .map_err(|_| HostError::InvalidDomain(input.to_string()))?;
        // IDNA can map full-width digits and dots to ASCII: check the number rule again.
        if ascii.is_empty() || ascii.ends_with('.') || ends_in_number(&ascii) {
            return Err(HostError::InvalidDomain(input.to_string()));
        }
        Ok(Host::Domain(ascii))
    }

    pub fn domain(&self) -> Option<&str> {
        match self {
            Host::Domain(d) => Some(d),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// WHATWG "ends in a number": the last label is all digits or a `0x` hex number.
fn ends_in_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or("");
    if last.is_empty() {
        return false;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    parse_ipv4_number(last).is_some()
}

/// One part of a WHATWG IPv4 address: decimal, `0x` hex or leading-zero octal.
fn parse_ipv4_number(part: &str) -> Option<u64> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // More than 10 significant digits cannot fit an address; avoid overflow.
    let significant = digits.trim_start_matches('0');
    if significant.len() > 12 {
        return Some(u64::MAX);
    }
    u64::from_str_radix(digits, radix).ok()
}

/// The WHATWG IPv4 parser: 1 to 4 parts, the last one fills the remaining bytes.
fn parse_whatwg_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let numbers: Vec<u64> = parts
        .iter()
        .map(|p| parse_ipv4_number(p))
        .collect::<Option<_>>()?;
    let (last, init) = numbers.split_last()?;
    if init.iter().any(|&n| n > 255) {
        return None;
    }
    let last_bits = 8 * (5 - numbers.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut addr = *last;
    for (i, &n) in init.iter().enumerate() {
        addr += n << (8 * (3 - i as u32));
    }
    Some(Ipv4Addr::from(u32::try_from(addr).ok()?))
}

/// Parses `host:port` (CONNECT) or `host[:port]` (an absolute URI's authority, with
/// `default_port`). Userinfo is refused, never stripped.
pub fn parse_authority(input: &str, default_port: Option<u16>) -> Result<(Host, u16), HostError> {
    let (host, port) = split_port(input)?;
    let port = match port {
        Some(p) => p,
        None => default_port.ok_or_else(|| HostError::MissingPort(input.to_string()))?,
    };
    Ok((Host::parse(host)?, port))
}

/// Splits `host[:port]` (IPv6 bracketed) into the host as written and the port, if any. The
/// host is not checked: give it to [`Host::parse`] or [`HostRule::parse`].
pub fn split_port(input: &str) -> Result<(&str, Option<u16>), HostError> {
    if input.contains('@') {
        return Err(HostError::UserInfo(input.to_string()));
    }
    let (host, port) = if input.starts_with('[') {
        let end = input
            .find(']')
            .ok_or_else(|| HostError::InvalidIpv6(input.to_string()))?;
        let rest = &input[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p),
            None if rest.is_empty() => None,
            None => return Err(HostError::InvalidPort(input.to_string())),
        };
        (&input[..=end], port)
    } else {
        match input.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(HostError::InvalidIpv6(input.to_string()));
            }
            Some((h, p)) => (h, Some(p)),
            None => (input, None),
        }
    };
    let port = port
        .map(|p| parse_port(p).ok_or_else(|| HostError::InvalidPort(input.to_string())))
        .transpose()?;
    Ok((host, port))
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

/// One allowlist entry: an exact host, or `*.suffix` matching any name strictly below `suffix`
/// (never `suffix` itself: list it too if it is wanted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRule {
    Exact(Host),
    Wildcard(String),
}

impl HostRule {
    pub fn parse(input: &str) -> Result<HostRule, HostError> {
        if let Some(suffix) = input.strip_prefix("*.") {
            return match Host::parse(suffix) {
                Ok(Host::Domain(d)) if d.contains('.') => Ok(HostRule::Wildcard(d)),
                Ok(_) => Err(HostError::InvalidWildcard(input.to_string())),
                Err(HostError::ForbiddenChar(_)) => {
                    Err(HostError::InvalidWildcard(input.to_string()))
                }
                Err(e) => Err(e),
            };
        }
        if input.contains('*') {
            return Err(HostError::InvalidWildcard(input.to_string()));
        }
        Host::parse(input).map(HostRule::Exact)
    }

    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostRule::Exact(h), _) => h == host,
            (HostRule::Wildcard(suffix), Host::Domain(d)) => d
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (HostRule::Wildcard(_), Host::Ip(_)) => false,
        }
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostRule::Exact(h) => write!(f, "{h}"),
            HostRule::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// True for addresses a bottle may reach through DNS: not loopback, private, link-local (cloud
/// metadata lives there), carrier-grade NAT, unique-local, multicast, documentation or
/// unspecified. Listed IP literals bypass this; names never do.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0xdb8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<Host, HostError> {
        Ok(Host::Domain(s.to_string()))
    }
    fn v4(a: u8, b: u8, c: u8, e: u8) -> Result<Host, HostError> {
        Ok(Host::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, e))))
    }

    #[test]
    fn host_parse_table() {
        let cases: &[(&str, Result<Host, HostError>)] = &[
            ("example.com", d("example.com")),
            ("Example.COM", d("example.com")),
            ("example.com.", d("example.com")),
            (
                "example.com..",
                Err(HostError::InvalidDomain("example.com..".into())),
            ),
            (".", Err(HostError::InvalidDomain(".".into()))),
            ("bücher.example", d("xn--bcher-kva.example")),
            ("xn--bcher-kva.example", d("xn--bcher-kva.example")),
            ("ＥＸＡＭＰＬＥ.com", d("example.com")),
            ("127.0.0.1", v4(127, 0, 0, 1)),
            ("127.1", v4(127, 0, 0, 1)),
            ("0x7f.0.0.1", v4(127, 0, 0, 1)),
            ("0177.0.0.1", v4(127, 0, 0, 1)),
            ("2130706433", v4(127, 0, 0, 1)),
            ("0x7f000001", v4(127, 0, 0, 1)),
            ("127.0.0.1.", v4(127, 0, 0, 1)),
            ("169.254.169.254", v4(169, 254, 169, 254)),
            ("256.0.0.1", Err(HostError::InvalidIpv4("256.0.0.1".into()))),
            ("1.2.3.4.5", Err(HostError::InvalidIpv4("1.2.3.4.5".into()))),
            (
                "4294967296",
                Err(HostError::InvalidIpv4("4294967296".into())),
            ),
            (
                "99999999999999999999",
                Err(HostError::InvalidIpv4("99999999999999999999".into())),
            ),
            ("foo.0x", Err(HostError::InvalidIpv4("foo.0x".into()))),
            ("foo.09", Err(HostError::InvalidIpv4("foo.09".into()))),
            ("[::ffff:127.0.0.1]", v4(127, 0, 0, 1)),
            ("[::1]", Ok(Host::Ip("::1".parse().unwrap()))),
            (
                "[fe80::1%eth0]",
                Err(HostError::InvalidIpv6("[fe80::1%eth0]".into())),
            ),
            ("[::1", Err(HostError::InvalidIpv6("[::1".into()))),
            ("::1", Err(HostError::ForbiddenChar("::1".into()))),
            (
                "allowed.com@evil.test",
                Err(HostError::UserInfo("allowed.com@evil.test".into())),
            ),
            (
                "evil.test/allowed.com",
                Err(HostError::ForbiddenChar("evil.test/allowed.com".into())),
            ),
            (
                "evil%2ecom",
                Err(HostError::ForbiddenChar("evil%2ecom".into())),
            ),
            ("a b.com", Err(HostError::ForbiddenChar("a b.com".into()))),
            (
                "under_score.com",
                Err(HostError::InvalidDomain("under_score.com".into())),
            ),
            ("", Err(HostError::Empty)),
            ("localhost", d("localhost")),
            ("1.2.3.com", d("1.2.3.com")),
        ];
        for (input, want) in cases {
            assert_eq!(&Host::parse(input), want, "input {input:?}");
        }
    }

    #[test]
    fn authority_table() {
        let ok = |h: &str, p: u16| Ok((Host::parse(h).unwrap(), p));
        let err = |kind: fn(String) -> HostError, input: &str| Err(kind(input.into()));
        let no_port = |input: &str| err(HostError::MissingPort, input);
        let bad_port = |input: &str| err(HostError::InvalidPort, input);
        let bad_ipv6 = |input: &str| err(HostError::InvalidIpv6, input);
        let user_info = |input: &str| err(HostError::UserInfo, input);
        type Case = (&'static str, Option<u16>, Result<(Host, u16), HostError>);
        let cases: &[Case] = &[
            ("example.com:443", None, ok("example.com", 443)),
            ("EXAMPLE.com.:8443", None, ok("example.com", 8443)),
            ("example.com", Some(80), ok("example.com", 80)),
            ("example.com", None, no_port("example.com")),
            ("example.com:", None, bad_port("example.com:")),
            ("example.com:0", None, bad_port("example.com:0")),
            ("example.com:65536", None, bad_port("example.com:65536")),
            ("example.com:+443", None, bad_port("example.com:+443")),
            ("[::1]:443", None, ok("[::1]", 443)),
            ("[::ffff:127.0.0.1]:443", None, ok("127.0.0.1", 443)),
            ("[::1]x:443", None, bad_port("[::1]x:443")),
            ("::1:443", None, bad_ipv6("::1:443")),
            (
                "allowed.com@evil.test:443",
                None,
                user_info("allowed.com@evil.test:443"),
            ),
            ("127.1:443", None, ok("127.0.0.1", 443)),
        ];
        for (input, default, want) in cases {
            assert_eq!(&parse_authority(input, *default), want, "input {input:?}");
        }
    }

    #[test]
    fn rule_matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("example.com", "example.com", true),
            ("example.com", "EXAMPLE.com.", true),
            ("example.com", "api.example.com", false),
            ("*.example.com", "api.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("*.example.com", "example.com.evil.test", false),
            ("127.0.0.1", "127.1", true),
            ("[::1]", "[::1]", true),
        ];
        for (rule, host, want) in cases {
            let r = HostRule::parse(rule).unwrap();
            let h = Host::parse(host).unwrap();
            assert_eq!(r.matches(&h), *want, "rule {rule:?} host {host:?}");
        }
    }

    #[test]
    fn bad_rules_are_refused() {
        for rule in [
            "*",
            "*.com",
            "a.*.com",
            "*example.com",
            "**.example.com",
            "*.127.0.0.1",
        ] {
            assert!(
                HostRule::parse(rule).is_err(),
                "rule {rule:?} should be refused"
            );
        }
    }

    /// The fuzz targets' invariants (`fuzz/`), checked on generated inputs in every test run:
    /// canonical forms are fixed points, and accepted authorities round-trip.
    #[test]
    fn canonical_forms_are_fixed_points() {
        const ALPHABET: &[&str] = &[
            "a",
            "Z",
            "0",
            "1",
            "7",
            "9",
            "x",
            "0x",
            ".",
            "-",
            "_",
            "@",
            ":",
            "[",
            "]",
            "::",
            "ffff",
            "%",
            "/",
            "*",
            "ü",
            "ß",
            "xn--",
            "127",
            "255",
            "256",
            "１",
            "．",
            "localhost",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = next() % 8;
            let input: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            if let Ok(host) = Host::parse(&input) {
                let printed = host.to_string();
                assert_eq!(Host::parse(&printed), Ok(host.clone()), "input {input:?}");
                if let Host::Domain(d) = &host {
                    assert!(d.is_ascii() && !d.ends_with('.') && d.to_lowercase() == *d);
                }
                let authority = format!("{printed}:443");
                assert_eq!(parse_authority(&authority, None), Ok((host, 443)));
            }
            if let Ok((host, port)) = parse_authority(&input, Some(80)) {
                let again = parse_authority(&format!("{host}:{port}"), None);
                assert_eq!(again, Ok((host, port)), "input {input:?}");
            }
            if let Ok(rule) = HostRule::parse(&input) {
                assert_eq!(
                    HostRule::parse(&rule.to_string()),
                    Ok(rule),
                    "input {input:?}"
                );
            }
        }
    }

    #[test]
    fn public_address_table() {
        let cases: &[(&str, bool)] = &[
            ("93.184.216.34", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("::1", false),
            ("::ffff:10.0.0.1", false),
            ("fd00::1", false),
            ("fe80::1", false),
            ("2606:4700::1111", true),
        ];
        for (ip, want) in cases {
            assert_eq!(is_public(ip.parse().unwrap()), *want, "ip {ip}");
        }
    }
}
