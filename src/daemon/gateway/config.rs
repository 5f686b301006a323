//! The gateway's configuration file (JSON, written by `krbottle bundle up` from the manifest).
//!
//! It holds names, never secrets: each route names the environment variable that holds its
//! token, and the gateway reads that variable from its own environment at start.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::daemon::config_file::ConfigFileError;
use crate::daemon::{CA_CERT_FILE, CA_KEY_FILE, CONFIG_DIR};
use crate::manifest::{Bottle, Route};
use crate::ports::GATEWAY as GATEWAY_PORT;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The bottle's name, put in every log line.
    pub bottle: String,
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Allowlist rules (`host`, `*.suffix`, IP literal), each optionally `:port`; without a
    /// port a rule opens 443 for CONNECT and 80 for plain HTTP.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The bottle CA's certificate and key; needed when there are routes.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
    /// Extra PEM CA certificates trusted for upstreams, on top of the webpki roots.
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Fixed addresses for names (like curl's `--resolve`): no DNS lookup, and the address may
    /// be private because the operator chose it (the bundle network's own services, tests).
    #[serde(default)]
    pub pinned: BTreeMap<String, IpAddr>,
    /// Allowed names that may resolve to private addresses: services on the bundle's own
    /// Docker network. Every other name must resolve to public addresses only.
    #[serde(default)]
    pub internal_hosts: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head the proxy reads (hyper's minimum is 8192).
    pub max_header_bytes: usize,
    /// Largest request body read for secret scanning; larger requests get `413`.
    pub max_body_bytes: usize,
    /// A connection with no traffic either way for this long is closed, whatever it waits for
    /// (a request body, an upstream's answer, a client that stopped reading).
    pub idle_timeout_secs: u64,
    /// No connection lives longer than this.
    pub total_timeout_secs: u64,
    /// Connections beyond this wait to be accepted.
    pub max_connections: usize,
    /// Bytes of bodies buffered for scanning, summed over all connections; a request that
    /// would go past it gets `503`.
    pub max_buffered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 32 * 1024 * 1024,
            idle_timeout_secs: 300,
            total_timeout_secs: 4 * 3600,
            max_connections: 512,
            max_buffered_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Limits {
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn total(&self) -> Duration {
        Duration::from_secs(self.total_timeout_secs)
    }
}

impl GatewayConfig {
    /// The config of a bottle's gateway as it runs in the bundle container.
    pub fn for_bottle(bottle: &Bottle) -> GatewayConfig {
        GatewayConfig {
            bottle: bottle.name.clone(),
            listen: SocketAddr::from(([0, 0, 0, 0], GATEWAY_PORT)),
            allow: bottle.allow.iter().map(ToString::to_string).collect(),
            routes: bottle.routes.clone(),
            ca_cert: Some(Path::new(CONFIG_DIR).join(CA_CERT_FILE)),
            ca_key: Some(Path::new(CONFIG_DIR).join(CA_KEY_FILE)),
            upstream_ca_file: bottle
                .upstream_ca_file
                .as_ref()
                .map(|_| Path::new(CONFIG_DIR).join(crate::daemon::UPSTREAM_CA_FILE)),
            pinned: bottle.resolve.clone(),
            internal_hosts: Vec::new(),
            limits: Limits::default(),
        }
    }

    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigFileError> {
        crate::daemon::config_file::load(super::NAME, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    #[test]
    fn bottle_config_round_trips_through_json() {
        let m = Manifest::parse(
            Path::new("krbottle.toml"),
            "[bottles.b]\nallow = [\"*.Example.com\", \"127.1\"]\n[[bottles.b.routes]]\nhost = \"api.example.com\"\nheader = \"authorization\"\nscheme = \"Bearer\"\ntoken_env = \"API_TOKEN\"\n",
        )
        .unwrap();
        let config = GatewayConfig::for_bottle(&m.bottles["b"]);
        assert_eq!(config.allow, vec!["*.example.com", "127.0.0.1"]);
        assert_eq!(config.listen.port(), GATEWAY_PORT);
        let text = serde_json::to_string(&config).unwrap();
        assert!(!text.contains("token\":"), "names only: {text}");
        assert_eq!(
            serde_json::from_str::<GatewayConfig>(&text).unwrap(),
            config
        );
    }
}
