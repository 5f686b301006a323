//! The sidecar bundle: the container that is a bottle's only way out, and its daemons.
//!
//! `host` canonicalises host names once for every policy decision; `gateway` is the
//! agent-facing HTTP proxy that runs inside the bundle container.

pub mod host;
