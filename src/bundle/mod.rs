//! The sidecar bundle: the container that is a bottle's only way out, and its daemons.
//!
//! `host` canonicalises host names once for every policy decision, `policy` decides, `secrets`
//! finds and scrubs the bundle's tokens, `ca` mints the bottle's certificates, and `gateway` is
//! the agent-facing HTTP proxy that runs inside the bundle container.

pub mod ca;
pub mod container;
pub mod gateway;
pub mod host;
pub mod image;
pub mod init;
pub mod layout;
pub mod policy;
pub mod secrets;
