//! The supervise daemon's configuration file (JSON, written by `krbottle bundle up` from the
//! manifest, or by hand for a daemon run as a plain process).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::daemon::{Placement, StateMount};
use crate::manifest::{Bottle, Supervise};
use crate::ports::SUPERVISE as SUPERVISE_PORT;

/// Where the bottle's queue directory is mounted in the bundle container.
pub const QUEUE_DIR: &str = "/var/lib/krbottle/queue";

/// The bottle's queue directory, the one state dir the daemon uses.
pub const QUEUE_MOUNT: StateMount = StateMount {
    host: crate::state::BottleDirs::queue_dir,
    container: QUEUE_DIR,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperviseConfig {
    /// The bottle's name, in every record.
    pub bottle: String,
    /// Address the MCP server listens on.
    pub listen: SocketAddr,
    /// The bottle's queue directory (`crate::queue`).
    pub queue_dir: PathBuf,
    /// The `Host` header values accepted (`host` for any port, or `host:port`): rmcp's
    /// DNS-rebinding check. Never empty: an empty list would turn the check off.
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// How long one tool call waits for a decision before answering `pending`.
    pub wait_secs: u64,
    /// How long a request stays answerable.
    pub expire_secs: u64,
    /// Requests that may be pending at once.
    pub max_pending: u32,
    /// The largest MCP request body read; larger ones get `413`.
    pub max_request_bytes: usize,
    /// The interval between progress notifications while a call waits.
    pub progress_secs: u64,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(&Supervise::default())
    }
}

impl From<&Supervise> for Limits {
    fn from(s: &Supervise) -> Limits {
        Limits {
            wait_secs: u64::from(s.wait_secs),
            expire_secs: s.expire_secs,
            max_pending: s.max_pending,
            max_request_bytes: s.max_request_bytes as usize,
            progress_secs: 10,
            max_connections: 64,
        }
    }
}

impl Limits {
    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.wait_secs)
    }
    pub fn progress_every(&self) -> Duration {
        Duration::from_secs(self.progress_secs.max(1))
    }
    pub fn queue(&self) -> crate::queue::Limits {
        crate::queue::Limits {
            max_pending: self.max_pending,
            expire_after: Duration::from_secs(self.expire_secs),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] crate::daemon::config_file::ConfigFileError),
    #[error(
        "The supervise config {} allows no Host; list the hosts the agent uses in `allowed_hosts`",
        path.display()
    )]
    NoAllowedHosts { path: PathBuf },
}

/// The `Host` values the bundle's server accepts. The guest reaches it as
/// `127.0.0.1:<SUPERVISE>` (or `localhost:<SUPERVISE>`) through its relay; the host reaches it
/// on a random published port of `127.0.0.1`, unknown when this is written, hence the bare
/// address (any port). An IP literal cannot be rebound: DNS rebinding needs a name, and the
/// only name accepted is `localhost` on the guest's port.
pub fn bundle_allowed_hosts() -> Vec<String> {
    vec![
        "127.0.0.1".to_string(),
        format!("localhost:{SUPERVISE_PORT}"),
    ]
}

impl SuperviseConfig {
    /// The config of a bottle's supervise daemon where `place` says it runs.
    pub fn for_bottle(bottle: &Bottle, place: &Placement) -> SuperviseConfig {
        SuperviseConfig {
            bottle: bottle.name.clone(),
            listen: place.listen,
            queue_dir: place.state_dir(&QUEUE_MOUNT),
            allowed_hosts: bundle_allowed_hosts(),
            limits: Limits::from(&bottle.supervise.unwrap_or_default()),
        }
    }

    pub fn load(path: &Path) -> Result<SuperviseConfig, ConfigError> {
        let config: SuperviseConfig = crate::daemon::config_file::load("supervise", path)?;
        if config.allowed_hosts.iter().all(|h| h.trim().is_empty()) {
            return Err(ConfigError::NoAllowedHosts {
                path: path.to_path_buf(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    #[test]
    fn bottle_config_carries_the_manifest_limits_and_round_trips() {
        let m = Manifest::parse(
            Path::new("krbottle.toml"),
            "[bottles.b.supervise]\nwait_secs = 7\nmax_pending = 3\n",
        )
        .unwrap();
        let b = &m.bottles["b"];
        let config = SuperviseConfig::for_bottle(b, &Placement::container(SUPERVISE_PORT));
        assert_eq!(
            config.listen,
            SocketAddr::from(([0, 0, 0, 0], SUPERVISE_PORT))
        );
        assert_eq!(config.queue_dir, Path::new(QUEUE_DIR));
        // As a host process: the host's own queue dir, on the port it was given.
        let dirs = crate::state::StateRoot::at("/s").bottle("b").unwrap();
        let host = Placement {
            listen: SocketAddr::from(([127, 0, 0, 1], 4567)),
            config_dir: dirs.bundle_dir(),
            state: Some(dirs.clone()),
        };
        let on_host = SuperviseConfig::for_bottle(b, &host);
        assert_eq!(
            (on_host.listen.port(), &on_host.queue_dir),
            (4567, &dirs.queue_dir())
        );
        assert_eq!((config.limits.wait_secs, config.limits.max_pending), (7, 3));
        assert_eq!(
            config.allowed_hosts,
            [
                "127.0.0.1".to_string(),
                format!("localhost:{SUPERVISE_PORT}")
            ]
        );
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<SuperviseConfig>(&text).unwrap(),
            config
        );
    }

    #[test]
    fn a_config_that_allows_no_host_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervise.json");
        std::fs::write(
            &path,
            r#"{"bottle":"b","listen":"127.0.0.1:0","queue_dir":"/q","allowed_hosts":[]}"#,
        )
        .unwrap();
        assert!(matches!(
            SuperviseConfig::load(&path),
            Err(ConfigError::NoAllowedHosts { .. })
        ));
    }
}
