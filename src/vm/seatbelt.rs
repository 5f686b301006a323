//! The macOS Seatbelt profile that confines the VMM child (the macOS counterpart of the Linux
//! network and mount namespaces).
//!
//! On macOS there is no relay: the guest dials the bundle's ports published on the host's
//! loopback, and TSI opens those sockets from the VMM process. So the profile lets the VMM
//! connect out over TCP only to those loopback ports, and never bind, listen or accept. Files:
//! nothing is read or written but the trees the VMM serves the guest (the bottle's root and
//! state, the shares), libkrunfw and this executable, the read-only system locations a macOS
//! process loads code and data from, and the terminal and null devices. Reading metadata
//! (`stat`) stays allowed everywhere: it shows no contents, and the loader and path resolution
//! need it.
//!
//! Later SBPL rules win over earlier ones, so each section denies everything of its kind and then
//! allows the exceptions. Everything that is not network or file access stays allowed (`allow
//! default`): Hypervisor.framework, memory, signals, Mach services. That last part is a known
//! gap: which Mach services libkrun and the framework need has not been measured on a Mac, so
//! none are denied.
//!
//! Paths must be canonical (`/private/tmp`, not `/tmp`): Seatbelt matches the resolved path.
//! libkrun's macOS virtio-fs opens the guest's files by volfs path (`/.vol/DEV/INO`); the rules
//! are written for the resolved paths of those files, which is how Seatbelt is documented to
//! evaluate path filters. That has not been checked on a Mac. The text is generated and
//! unit-tested on any OS; applying it (`sys::seatbelt`) is macOS-only.

use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Read-only locations every macOS process may need after start-up (dyld, frameworks, the time
/// zone database): system files, no user data.
const SYSTEM_READ: &[&str] = &[
    "/System",
    "/usr/lib",
    "/usr/share",
    "/Library/Apple",
    "/private/var/db/dyld",
    "/private/var/db/timezone",
    "/private/etc/localtime",
];
/// Devices the VMM may open for reading and writing: the console when it is a terminal, and
/// the null and random devices.
const DEVICE_LITERALS: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];
/// Pseudo-terminals (the user's terminal that the guest's console is on).
const PTY_REGEX: &str = "^/dev/ttys[0-9]+$";

/// What the confined VMM may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Loopback TCP ports the VMM may connect to (the bundle's published ports).
    pub ports: Vec<u16>,
    /// Trees read and written: the bottle's root and state dir, read-write shares.
    pub read_write: Vec<PathBuf>,
    /// Trees or files only read: libkrunfw, this executable, read-only shares.
    pub read_only: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeatbeltError {
    #[error(
        "Cannot confine the VMM to {0}: the Seatbelt profile needs absolute UTF-8 paths without control characters; move it"
    )]
    Path(String),
}

/// The Seatbelt profile text for `policy`.
pub fn profile(policy: &Policy) -> Result<String, SeatbeltError> {
    let mut p = String::from(
        "(version 1)\n\
         (allow default)\n\
         ; Network: none, then outbound TCP to exactly the bundle's loopback ports.\n\
         (deny network*)\n",
    );
    let mut ports = policy.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    if !ports.is_empty() {
        p.push_str("(allow network-outbound\n");
        for port in ports {
            // Seatbelt names loopback `localhost` in remote-address filters.
            let _ = writeln!(p, "    (remote tcp \"localhost:{port}\")");
        }
        p.push_str(")\n");
    }
    p.push_str(
        "; Files: nothing read or written, then what the VMM needs.\n\
         (deny file-read* file-write*)\n\
         (allow file-read-metadata)\n\
         (allow file-read*\n",
    );
    for dir in SYSTEM_READ {
        let _ = writeln!(p, "    (subpath {})", quote(Path::new(dir))?);
    }
    for path in &policy.read_only {
        let _ = writeln!(p, "    (subpath {})", quote(path)?);
    }
    p.push_str(")\n(allow file-read* file-write*\n");
    for dev in DEVICE_LITERALS {
        let _ = writeln!(p, "    (literal {})", quote(Path::new(dev))?);
    }
    let _ = writeln!(p, "    (regex #\"{PTY_REGEX}\")");
    for path in &policy.read_write {
        let _ = writeln!(p, "    (subpath {})", quote(path)?);
    }
    p.push_str(")\n");
    Ok(p)
}

/// `path` as an SBPL string literal.
fn quote(path: &Path) -> Result<String, SeatbeltError> {
    let text = path
        .to_str()
        .filter(|t| t.starts_with('/') && !t.chars().any(char::is_control))
        .ok_or_else(|| SeatbeltError::Path(path.display().to_string()))?;
    let trimmed = if text.len() > 1 {
        text.trim_end_matches('/')
    } else {
        text
    };
    Ok(format!(
        "\"{}\"",
        trimmed.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            ports: vec![52001, 52000, 52001],
            read_write: vec![
                "/Users/me/Library/Application Support/krbottle/bottles/b".into(),
                "/Users/me/project/".into(),
            ],
            read_only: vec!["/opt/homebrew/lib/libkrunfw.5.dylib".into()],
        }
    }

    /// The SBPL rules of `text` that allow something, one string per rule (multi-line rules
    /// joined).
    fn allow_rules(text: &str) -> Vec<String> {
        let mut rules = Vec::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            let line = line.trim();
            if let Some(rule) = current.as_mut() {
                rule.push(' ');
                rule.push_str(line);
                if line == ")" {
                    rules.push(current.take().unwrap_or_default());
                }
            } else if line.starts_with("(allow") {
                if line.ends_with(')') {
                    rules.push(line.to_string());
                } else {
                    current = Some(line.to_string());
                }
            }
        }
        rules
    }

    #[test]
    fn only_the_published_loopback_ports_are_reachable() {
        let p = profile(&policy()).unwrap();
        assert!(p.contains("(deny network*)"));
        let network: Vec<String> = allow_rules(&p)
            .into_iter()
            .filter(|r| r.contains("network"))
            .collect();
        assert_eq!(
            network,
            [
                "(allow network-outbound (remote tcp \"localhost:52000\") (remote tcp \"localhost:52001\") )"
            ]
        );
        // No wildcard: every remote filter names loopback and one numeric port.
        for filter in p.split("(remote ").skip(1) {
            let port = filter
                .strip_prefix("tcp \"localhost:")
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default();
            assert!(port.parse::<u16>().is_ok(), "{filter}");
        }
        assert!(!p.contains("unix-socket"), "{p}");
        // Nothing may listen, bind or accept.
        for word in ["network-bind", "network-inbound", "(local "] {
            assert!(!p.contains(word), "{word} in {p}");
        }
    }

    #[test]
    fn no_endpoints_means_no_network() {
        let p = profile(&Policy::default()).unwrap();
        assert!(p.contains("(deny network*)"));
        assert!(
            !allow_rules(&p).iter().any(|r| r.contains("network")),
            "{p}"
        );
    }

    #[test]
    fn files_are_limited_to_the_bottle_the_system_and_the_devices() {
        let p = profile(&policy()).unwrap();
        assert!(p.contains("(deny file-read* file-write*)"));
        let rules = allow_rules(&p);
        let writable = rules
            .iter()
            .find(|r| r.contains("file-write*"))
            .expect("a write rule");
        let wanted_rw = [
            "(subpath \"/Users/me/Library/Application Support/krbottle/bottles/b\")",
            "(subpath \"/Users/me/project\")",
        ];
        for want in wanted_rw {
            assert!(writable.contains(want), "{want} in {writable}");
        }
        // The only writable trees are the policy's; the rest are single devices.
        assert_eq!(writable.matches("(subpath").count(), wanted_rw.len());
        assert!(writable.contains("(literal \"/dev/null\")"));
        assert!(!writable.contains("(subpath \"/\")") && !writable.contains("\"/dev\""));
        let readable = rules
            .iter()
            .find(|r| r.starts_with("(allow file-read* (subpath"))
            .expect("a read rule");
        assert!(readable.contains("(subpath \"/opt/homebrew/lib/libkrunfw.5.dylib\")"));
        for private in ["/Users", "\"/\"", "/private/var/folders", "/Volumes"] {
            assert!(
                !readable.contains(private),
                "{private} readable: {readable}"
            );
        }
        // Every allow rule but the metadata one is filtered: nothing is allowed everywhere.
        for r in &rules {
            if r.contains("file") && r != "(allow file-read-metadata)" {
                assert!(r.contains("(subpath") || r.contains("(literal"), "{r}");
            }
        }
    }

    #[test]
    fn paths_are_quoted_and_bad_ones_refused() {
        let p = profile(&Policy {
            read_write: vec![r#"/Users/me/a "b"\c"#.into()],
            ..Policy::default()
        })
        .unwrap();
        assert!(p.contains(r#"(subpath "/Users/me/a \"b\"\\c")"#), "{p}");
        for bad in ["relative/dir", "/with\nnewline"] {
            let err = profile(&Policy {
                read_only: vec![bad.into()],
                ..Policy::default()
            });
            assert_eq!(err, Err(SeatbeltError::Path(bad.to_string())));
        }
    }
}
