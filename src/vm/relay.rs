//! Parent side of the guest-facing endpoints: accept on listeners that live in the VMM's
//! network namespace, dial the upstream from the host's.
//!
//! The child creates each listener inside its empty network namespace and hands the socket to
//! the parent (see `vm::control`). The parent, still in the host namespace, accepts on it and
//! connects to the endpoint's upstream. So the only path from the VMM's namespace to the host
//! network is this relay, and only to the upstreams the parent was given: nothing in the child
//! can open a host socket.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

/// Relays every connection accepted on `listener` to `upstream`, on background threads, for
/// the life of the process.
pub fn serve(listener: TcpListener, upstream: SocketAddr) {
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            thread::spawn(move || {
                if let Err(err) = relay(conn, upstream) {
                    tracing::debug!("endpoint relay to {upstream}: {err}");
                }
            });
        }
    });
}

fn relay(inside: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let outside = TcpStream::connect(upstream)?;
    let (inside2, outside2) = (inside.try_clone()?, outside.try_clone()?);
    let up = thread::spawn(move || pump(inside2, outside2));
    pump(outside, inside);
    let _ = up.join();
    Ok(())
}

/// Copies until end of stream, then half-closes the destination so the other side sees EOF.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("Endpoint upstream {0} does not resolve to an address; check the host name")]
    Resolve(String, #[source] Option<io::Error>),
    #[error(
        "Endpoint upstream {0} is not reachable; start the service behind it (the bundle) first"
    )]
    Unreachable(String, #[source] io::Error),
}

/// How long the reachability check of an upstream may take.
const UPSTREAM_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Resolves each endpoint's upstream (in the host's namespace, where names resolve) and checks
/// that it accepts connections, so an unreachable upstream is an error before the guest boots.
pub fn resolve_endpoints(
    endpoints: &[crate::vm::config::Endpoint],
) -> Result<Vec<crate::vm::config::ResolvedEndpoint>, RelayError> {
    use std::net::ToSocketAddrs;
    endpoints
        .iter()
        .map(|e| {
            let name = e.upstream();
            let addr = (e.host.as_str(), e.port)
                .to_socket_addrs()
                .map_err(|err| RelayError::Resolve(name.clone(), Some(err)))?
                .next()
                .ok_or_else(|| RelayError::Resolve(name.clone(), None))?;
            TcpStream::connect_timeout(&addr, UPSTREAM_CHECK_TIMEOUT)
                .map_err(|err| RelayError::Unreachable(name.clone(), err))?;
            Ok(crate::vm::config::ResolvedEndpoint {
                guest_port: e.guest_port,
                upstream: addr,
            })
        })
        .collect()
}
