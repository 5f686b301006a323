//! The guest-facing ports, defined once. Each bundle daemon listens on its port inside the
//! bundle container (published on a random `127.0.0.1` port of the host), and the guest reaches
//! it on `127.0.0.1:<port>` through the VMM's relay: the only addresses a guest can reach.

/// The gateway, the guest's HTTP(S) proxy (`HTTPS_PROXY=http://127.0.0.1:8888`).
pub const GATEWAY: u16 = 8888;
/// git-gate, the guest's git remote over smart HTTP (`http://127.0.0.1:9418/NAME.git`; git's
/// own port number, though the protocol is HTTP).
pub const GIT_GATE: u16 = 9418;
/// supervise, the guest's MCP approval queue (`http://127.0.0.1:9100/mcp`).
pub const SUPERVISE: u16 = 9100;
