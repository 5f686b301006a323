//! The calling thread's network namespace: bring loopback up, list interfaces and routes.
//!
//! Listing reads `/proc/thread-self/net/*`, which always shows the caller's own namespace
//! (unlike `/sys/class/net`, which shows the namespace of whoever mounted sysfs).

use std::fs;
use std::io;
use std::os::fd::AsRawFd;

use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// Sets `IFF_UP` on the loopback interface `lo`.
pub fn loopback_up() -> io::Result<()> {
    let sock = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // SAFETY: an all-zero `ifreq` is a valid value (a name and a union of plain integers).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid, NUL-terminated `ifreq` that outlives the call, and the
    // SIOCGIFFLAGS ioctl writes only into its flags field.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union, which we read and update.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS reads the name and flags from `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Names of the interfaces in this network namespace.
pub fn interfaces() -> io::Result<Vec<String>> {
    Ok(parse_net_dev(&fs::read_to_string(
        "/proc/thread-self/net/dev",
    )?))
}

/// Routes in this network namespace as `destination/prefix dev NAME`, IPv4 main table then
/// every IPv6 table.
pub fn routes() -> io::Result<Vec<Route>> {
    let mut out = parse_ipv4_routes(&fs::read_to_string("/proc/thread-self/net/route")?);
    // Absent when IPv6 is disabled: then there are no IPv6 routes.
    if let Ok(text) = fs::read_to_string("/proc/thread-self/net/ipv6_route") {
        out.extend(parse_ipv6_routes(&text));
    }
    Ok(out)
}

/// One route as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    pub destination: String,
    pub device: String,
}

fn parse_net_dev(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .collect()
}

fn parse_ipv4_routes(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, dest, mask) = (f.first()?, f.get(1)?, f.get(7)?);
            let dest = u32::from_str_radix(dest, 16).ok()?;
            let mask = u32::from_str_radix(mask, 16).ok()?;
            // /proc prints the network-order bytes as a little-endian u32.
            let addr = std::net::Ipv4Addr::from(dest.to_le_bytes());
            Some(Route {
                destination: format!("{addr}/{}", mask.count_ones()),
                device: (*dev).to_owned(),
            })
        })
        .collect()
}

/// `RTF_REJECT` from `<linux/route.h>`.
const RTF_REJECT: u32 = 0x0200;

fn parse_ipv6_routes(text: &str) -> Vec<Route> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, prefix, flags, dev) = (f.first()?, f.get(1)?, f.get(8)?, f.get(9)?);
            // The kernel lists an "unreachable" entry per table: it is the absence of a route.
            if u32::from_str_radix(flags, 16).ok()? & RTF_REJECT != 0 {
                return None;
            }
            let addr = u128::from_str_radix(dest, 16).ok()?;
            let prefix = u8::from_str_radix(prefix, 16).ok()?;
            let addr = std::net::Ipv6Addr::from(addr);
            Some(Route {
                destination: format!("{addr}/{prefix}"),
                device: (*dev).to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_names() {
        let text = "Inter-|   Receive\n face |bytes\n    lo:  0 0\n  eth0: 1 2\n";
        assert_eq!(parse_net_dev(text), vec!["lo", "eth0"]);
    }

    #[test]
    fn ipv4_routes() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_ipv4_routes(text),
            vec![
                Route {
                    destination: "0.0.0.0/0".into(),
                    device: "eth0".into()
                },
                Route {
                    destination: "192.168.2.0/24".into(),
                    device: "eth0".into()
                },
            ]
        );
    }

    #[test]
    fn ipv6_routes() {
        let text = "00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 80200001       lo\n\
                    00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(
            parse_ipv6_routes(text),
            vec![Route {
                destination: "::1/128".into(),
                device: "lo".into()
            }]
        );
    }
}
