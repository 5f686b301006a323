//! How the VMM child is confined: each difference between Linux and macOS is one function here,
//! with the `cfg` inside it, so `launch` and `child` read the same on both.
//!
//! - Linux: the child enters new user, network and mount namespaces before it reads anything
//!   (`sys::userns`, mapped by the parent). Its network has only `lo` and one listener per guest
//!   port, handed to the parent, which relays each to the bundle (`vm::relay`).
//! - macOS: no namespaces and no relay. The child is a plain re-execution; once it has read its
//!   config and written the provisioned files into the bottle's root, and before libkrun is
//!   configured, it applies the Seatbelt profile made from that config ([`policy`],
//!   `vm::seatbelt`, `sys::seatbelt`): outbound TCP only to the bundle's published loopback ports
//!   ([`VmConfig::direct_ports`], which the guest dials directly), no listening, files only where
//!   the VMM needs them. Never run on a Mac by this project: see README "macOS".

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::vm::config::VmConfig;
use crate::vm::seatbelt::{self, Policy};

/// Whether the guest dials the bundle's published host ports itself (macOS, where TSI opens the
/// guest's sockets on the host and no network namespace exists to relay from), rather than its
/// own ports relayed by krbottle (Linux).
pub const GUEST_DIALS_PUBLISHED_PORTS: bool = cfg!(target_os = "macos");

/// What the parent needs to confine the child: the id mapping of its user namespace on Linux.
#[cfg(target_os = "linux")]
pub use crate::sys::userns::IdMapping as Mapping;

/// What the parent needs to confine the child: nothing on macOS (the profile comes from the
/// config the child is sent).
#[cfg(target_os = "macos")]
#[derive(Clone, Debug, Default)]
pub struct Mapping;

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Namespaces(#[from] crate::sys::userns::UsernsError),
    #[cfg(target_os = "macos")]
    #[error(transparent)]
    Seatbelt(#[from] crate::sys::seatbelt::SeatbeltError),
    #[error(transparent)]
    Profile(#[from] seatbelt::SeatbeltError),
    #[cfg(target_os = "macos")]
    #[error("Could not start the VMM child {0}")]
    Spawn(String, #[source] io::Error),
    #[error("Could not bring up loopback in the VMM's network namespace")]
    LoopbackUp(#[source] io::Error),
    #[error("Could not listen on guest port {0} in the VMM's network namespace")]
    Listen(u16, #[source] io::Error),
    #[error("Could not hand the endpoint listeners to the parent")]
    SendListeners(#[source] io::Error),
    #[cfg(target_os = "macos")]
    #[error("This system gives the VMM no network namespace to listen in; this is a krbottle bug")]
    NoListeners,
}

/// The mapping for a child run by the current user.
pub fn mapping_for_current_user() -> Result<Mapping, ConfineError> {
    #[cfg(target_os = "linux")]
    return Ok(Mapping::for_current_user()?);
    #[cfg(target_os = "macos")]
    Ok(Mapping)
}

/// Parent: spawns `cmd` (the `__vmm` child) for `config`: in new namespaces mapped with
/// `mapping` (Linux), or as it is with the loader pointed at libkrunfw (macOS).
pub fn spawn(
    cmd: &mut Command,
    config: &VmConfig,
    mapping: &Mapping,
) -> Result<Child, ConfineError> {
    #[cfg(target_os = "linux")]
    {
        let _ = config;
        let ns = crate::sys::userns::Namespaces {
            net: true,
            mount: true,
        };
        Ok(crate::sys::userns::spawn(cmd, ns, mapping)?)
    }
    #[cfg(target_os = "macos")]
    {
        let _ = mapping;
        // libkrun `dlopen`s libkrunfw by its bare name when the context is made; the child
        // preloads it by path too (`vm::child`), and this covers a loader that does not match
        // the two.
        if let Some(dir) = config.libkrunfw.as_deref().and_then(Path::parent) {
            cmd.env(
                crate::env_vars::DYLD_FALLBACK_LIBRARY_PATH,
                dyld_fallback_path(dir),
            );
        }
        let program = format!("{:?}", cmd.get_program());
        cmd.spawn().map_err(|e| ConfineError::Spawn(program, e))
    }
}

/// dyld's fallback library path with `dir` first, then its defaults (`man dyld`).
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
fn dyld_fallback_path(dir: &Path) -> String {
    format!("{}:/usr/local/lib:/usr/lib", dir.display())
}

/// Child: how it entered its confinement, first thing. `None` when this process was not
/// spawned by [`spawn`].
#[derive(Clone, Copy, Debug)]
pub struct Entered {
    /// The child has a mount namespace of its own (Linux), where overlays and binds may go.
    pub mount_namespace: bool,
}

/// Child: enters the confinement that comes before reading anything (Linux: the namespaces;
/// macOS: nothing yet, see [`lock_down`]).
pub fn enter() -> Result<Option<Entered>, ConfineError> {
    #[cfg(target_os = "linux")]
    return Ok(match crate::sys::userns::enter_from_env()? {
        Some(ns) if ns.net => Some(Entered {
            mount_namespace: ns.mount,
        }),
        _ => None,
    });
    #[cfg(target_os = "macos")]
    Ok(
        std::env::var_os(crate::env_vars::KRBOTTLE_VMM_FD).map(|_| Entered {
            mount_namespace: false,
        }),
    )
}

/// Child: the endpoint listeners, one per guest port, handed to the parent on `control` (Linux).
/// macOS has none to make (the guest dials the published ports); the parent still gets the
/// message, empty, so the protocol is the same.
pub fn hand_over_listeners(control: &UnixStream, config: &VmConfig) -> Result<(), ConfineError> {
    #[cfg(target_os = "linux")]
    {
        use std::net::{Ipv4Addr, SocketAddr, TcpListener};
        use std::os::fd::AsFd;
        crate::sys::netif::loopback_up().map_err(ConfineError::LoopbackUp)?;
        let fds = config
            .guest_ports
            .iter()
            .map(|&port| {
                TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
                    .map(OwnedFd::from)
                    .map_err(|err| ConfineError::Listen(port, err))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        crate::sys::fdpass::send_fds(control, crate::vm::control::LISTENERS, &borrowed)
            .map_err(ConfineError::SendListeners)?;
        // The parent owns the listeners now; our copies (dropped here) would only keep ports
        // open after it stops.
        Ok(())
    }
    #[cfg(target_os = "macos")]
    {
        use std::io::Write;
        if !config.guest_ports.is_empty() {
            return Err(ConfineError::NoListeners);
        }
        (&*control)
            .write_all(&[crate::vm::control::LISTENERS])
            .map_err(ConfineError::SendListeners)
    }
}

/// Parent: receives what [`hand_over_listeners`] sent: the tag byte and the listeners.
/// `None` at end of stream.
pub fn receive_listeners(control: &UnixStream) -> io::Result<Option<(u8, Vec<OwnedFd>)>> {
    #[cfg(target_os = "linux")]
    return crate::sys::fdpass::recv_fds(control);
    #[cfg(target_os = "macos")]
    {
        use std::io::Read;
        let mut tag = [0u8; 1];
        match (&*control).read(&mut tag)? {
            0 => Ok(None),
            _ => Ok(Some((tag[0], Vec::new()))),
        }
    }
}

/// Child: the confinement that needs the config, after the root is provisioned and before
/// libkrun is configured (macOS: the Seatbelt profile; Linux: nothing more, the namespaces
/// were entered first).
pub fn lock_down(config: &VmConfig) -> Result<(), ConfineError> {
    #[cfg(target_os = "linux")]
    {
        let _ = config;
        Ok(())
    }
    #[cfg(target_os = "macos")]
    {
        // Seatbelt matches resolved paths: the binary may be reached through a link.
        let exe = std::env::current_exe().and_then(|p| p.canonicalize()).ok();
        let text = seatbelt::profile(&policy(config, exe.as_deref()))?;
        crate::sys::seatbelt::apply(&text)?;
        Ok(())
    }
}

/// What the macOS VMM for `config` may reach: the direct ports; the root (the bottle's own
/// clone, read and written through virtio-fs) and the read-write shares; libkrunfw, this
/// executable `exe` and the read-only shares, for reading. Nothing else of the bottle's state
/// dir: its bundle dir holds the bottle CA's key and its queue the approvals, which the VMM has
/// no use for.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub fn policy(config: &VmConfig, exe: Option<&Path>) -> Policy {
    let mut read_write: Vec<PathBuf> = vec![config.root.clone()];
    let mut read_only: Vec<PathBuf> = Vec::new();
    for share in &config.shares {
        if share.read_only {
            read_only.push(share.host.clone());
        } else {
            read_write.push(share.host.clone());
        }
    }
    read_only.extend(config.libkrunfw.iter().cloned());
    read_only.extend(exe.map(Path::to_path_buf));
    Policy {
        ports: config.direct_ports.clone(),
        read_write,
        read_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::config::{ChildMode, GuestProcess, Share};

    fn config() -> VmConfig {
        VmConfig {
            cpus: 2,
            memory_mib: 1024,
            root: "/Users/me/Library/Application Support/krbottle/bottles/a-x1y2/rootfs".into(),
            overlay: None,
            shares: vec![
                Share {
                    host: "/Users/me/data".into(),
                    guest: "/data".into(),
                    read_only: true,
                },
                Share {
                    host: "/Users/me/out".into(),
                    guest: "/out".into(),
                    read_only: false,
                },
            ],
            binds: Vec::new(),
            provision: Vec::new(),
            process: GuestProcess {
                argv: vec!["claude".into()],
                env: Vec::new(),
                workdir: "/".into(),
                uid: 1000,
                gid: 1000,
            },
            guest_ports: Vec::new(),
            direct_ports: vec![52003, 52001, 52002],
            libkrunfw: Some("/opt/homebrew/lib/libkrunfw.5.dylib".into()),
            mode: ChildMode::Boot,
            stop_before_enter: None,
        }
    }

    #[test]
    fn the_profile_of_a_bottle_allows_its_ports_and_its_files_only() {
        let exe = Path::new("/Applications/krbottle/bin/krbottle");
        let p = seatbelt::profile(&policy(&config(), Some(exe))).unwrap();
        for port in [52001, 52002, 52003] {
            assert!(
                p.contains(&format!("(remote tcp \"localhost:{port}\")")),
                "{p}"
            );
        }
        assert_eq!(p.matches("(remote ").count(), 3, "{p}");
        for word in ["network-bind", "network-inbound", "(local "] {
            assert!(!p.contains(word), "{word} in {p}");
        }
        let (read_part, write_part) = p
            .split_once("(allow file-read* file-write*")
            .expect("a read-write rule");
        for rw in [
            "/Users/me/Library/Application Support/krbottle/bottles/a-x1y2/rootfs",
            "/Users/me/out",
        ] {
            assert!(write_part.contains(&format!("(subpath \"{rw}\")")), "{rw}");
        }
        for ro in [
            "/Users/me/data",
            "/opt/homebrew/lib/libkrunfw.5.dylib",
            "/Applications/krbottle/bin/krbottle",
        ] {
            assert!(read_part.contains(&format!("(subpath \"{ro}\")")), "{ro}");
            assert!(!write_part.contains(ro), "{ro} writable");
        }
        // The bottle's state dir itself (its CA key, its queue) is not reachable.
        assert!(!p.contains("bottles/a-x1y2\")"), "{p}");
    }

    #[test]
    fn the_loader_looks_beside_libkrunfw_first() {
        assert_eq!(
            dyld_fallback_path(Path::new("/opt/krbottle/lib")),
            "/opt/krbottle/lib:/usr/local/lib:/usr/lib"
        );
    }
}
