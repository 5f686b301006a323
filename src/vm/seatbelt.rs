//! The macOS Seatbelt profile that confines the VMM child (the macOS counterpart of the Linux
//! network namespace).
//!
//! On macOS the endpoints are the bundle's ports published on the host's loopback, and the guest
//! env points at them. The profile lets the VMM process (which opens the guest's sockets under
//! TSI) connect out over TCP only to those loopback ports, and never listen or bind: everything
//! else stays allowed so the hypervisor and virtio-fs work. The text is generated here and
//! unit-tested on any OS; applying it (`sandbox_init`) is macOS-only.

use std::fmt::Write;

/// Seatbelt profile text allowing outbound TCP only to `127.0.0.1:PORT` for each of `ports`.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))] // applied by the macOS VMM child, still to come
pub fn profile(ports: &[u16]) -> String {
    let mut p = String::from(
        "(version 1)\n\
         (allow default)\n\
         ; No network at all, then exactly the endpoints.\n\
         (deny network*)\n\
         (deny network-bind)\n\
         (deny network-inbound)\n",
    );
    let mut ports = ports.to_vec();
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
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_given_loopback_ports_are_allowed() {
        let p = profile(&[9418, 8888, 8888]);
        assert_eq!(
            p,
            "(version 1)\n(allow default)\n; No network at all, then exactly the endpoints.\n\
             (deny network*)\n(deny network-bind)\n(deny network-inbound)\n\
             (allow network-outbound\n    (remote tcp \"localhost:8888\")\n    (remote tcp \"localhost:9418\")\n)\n"
        );
    }

    #[test]
    fn no_endpoints_means_no_network() {
        let p = profile(&[]);
        assert!(p.contains("(deny network*)"));
        assert!(!p.contains("allow network"));
        assert!(
            !p.contains("unix"),
            "unix sockets are never allowed explicitly"
        );
    }
}
