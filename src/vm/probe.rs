//! `krbottle debug net-probe`: what the VMM could reach on the guest's behalf.
//!
//! Run inside the confined child (same code path as a boot, up to libkrun): each target is
//! dialled as TSI would dial it for the guest, and (Linux) the namespace's interfaces and routes
//! are listed. One JSON line per fact on stdout. On macOS the child is under its Seatbelt
//! profile instead, and the endpoints are dialled directly (`vm::confine`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use serde::Serialize;

/// Bytes a probe sends on a connection that succeeds.
pub const PROBE_PAYLOAD: &[u8] = b"krbottle-probe\n";
/// How long one connection attempt, and the wait for a reply, may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of one connection attempt.
#[derive(Debug, Serialize)]
pub struct Attempt {
    pub target: SocketAddr,
    pub connected: bool,
    pub error: Option<String>,
    /// What the peer answered to [`PROBE_PAYLOAD`] (lossy UTF-8), when connected.
    pub received: Option<String>,
}

/// Dials `target`, sends the payload, half-closes and reads the answer.
pub fn attempt(target: SocketAddr) -> Attempt {
    match TcpStream::connect_timeout(&target, PROBE_TIMEOUT) {
        Err(e) => Attempt {
            target,
            connected: false,
            error: Some(e.to_string()),
            received: None,
        },
        Ok(mut s) => {
            let mut received = Vec::new();
            let result = (|| {
                s.set_read_timeout(Some(PROBE_TIMEOUT))?;
                s.write_all(PROBE_PAYLOAD)?;
                s.shutdown(Shutdown::Write)?;
                s.read_to_end(&mut received)
            })();
            Attempt {
                target,
                connected: true,
                error: result.err().map(|e| e.to_string()),
                received: Some(String::from_utf8_lossy(&received).into_owned()),
            }
        }
    }
}

#[cfg(target_os = "linux")]
#[derive(Debug, Serialize)]
struct Interfaces {
    interfaces: Vec<String>,
}

#[cfg(target_os = "linux")]
#[derive(Debug, Serialize)]
struct Routes {
    routes: Vec<crate::sys::netif::Route>,
}

/// Prints the interfaces, the routes, then one line per target.
pub fn run(targets: &[SocketAddr]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut line = |v: &dyn erased::Json| -> std::io::Result<()> {
        writeln!(out, "{}", v.json())?;
        out.flush()
    };
    #[cfg(target_os = "linux")]
    {
        line(&Interfaces {
            interfaces: crate::sys::netif::interfaces()?,
        })?;
        line(&Routes {
            routes: crate::sys::netif::routes()?,
        })?;
    }
    for t in targets {
        line(&attempt(*t))?;
    }
    Ok(())
}

mod erased {
    /// Serialises any of the probe's line types.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("probe lines always serialise")
        }
    }
}

/// `krbottle debug net-probe`: the same confined child as a boot, told to try `targets` instead
/// of booting (its root and process are never used). Returns the child's exit code.
pub async fn probe(
    endpoints: &[crate::vm::config::Endpoint],
    targets: Vec<SocketAddr>,
) -> Result<i32, ProbeError> {
    use crate::vm::config::{ChildMode, GuestProcess, VmConfig};
    let resolved = crate::vm::relay::resolve_endpoints(endpoints)?;
    let (guest_ports, direct_ports, upstreams) = if crate::vm::confine::GUEST_DIALS_PUBLISHED_PORTS
    {
        let direct = crate::vm::config::direct_ports(endpoints)?;
        (Vec::new(), direct, Vec::new())
    } else {
        let ports = resolved.iter().map(|r| r.guest_port).collect();
        (
            ports,
            Vec::new(),
            resolved.iter().map(|r| r.upstream).collect(),
        )
    };
    // The root is never booted, only opened: an empty dir, so the macOS profile made from the
    // config grants no file beyond it.
    let root = tempfile::tempdir().map_err(ProbeError::Root)?;
    let root_path = root.path().canonicalize().map_err(ProbeError::Root)?;
    let config = VmConfig {
        cpus: 1,
        memory_mib: crate::resources::MIN_MEMORY_MIB,
        root: root_path,
        overlay: None,
        shares: Vec::new(),
        binds: Vec::new(),
        provision: Vec::new(),
        process: GuestProcess {
            argv: vec!["true".into()],
            env: Vec::new(),
            workdir: "/".into(),
            uid: 0,
            gid: 0,
        },
        guest_ports,
        direct_ports,
        libkrunfw: None,
        mode: ChildMode::NetProbe { targets },
        stop_before_enter: None,
    };
    let mapping = crate::vm::confine::mapping_for_current_user()?;
    match crate::vm::launch::run_attached(config, mapping, upstreams).await? {
        crate::vm::launch::Outcome::Exited(code) => Ok(code),
        crate::vm::launch::Outcome::VmmFailed(why) | crate::vm::launch::Outcome::NotBooted(why) => {
            Err(ProbeError::ChildFailed(why))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Endpoint(#[from] crate::vm::relay::RelayError),
    #[error(transparent)]
    Confine(#[from] crate::vm::confine::ConfineError),
    #[error(transparent)]
    Endpoints(#[from] crate::vm::config::ConfigError),
    #[error(transparent)]
    Launch(#[from] crate::vm::launch::LaunchError),
    #[error("The probe child failed: {0}")]
    ChildFailed(String),
    #[error("Cannot create the probe's empty root dir in the temp dir; check TMPDIR")]
    Root(#[source] std::io::Error),
}
