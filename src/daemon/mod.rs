//! The daemons that run inside the bundle container: `init` supervises them, `gateway` is the
//! agent-facing HTTP proxy.

pub mod gateway;
pub mod init;
