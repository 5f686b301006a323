//! The daemons that run inside the bundle container, apart from the host side (`crate::bundle`)
//! that starts them. `init` supervises them; each daemon is one module and one line of
//! [`DAEMONS`], which is all the host side, `init` and the command line know about it.
//!
//! The contract every daemon keeps: it reads one JSON config file (written on the host by the
//! daemon's `config` function, mounted read-only at [`CONFIG_DIR`]), listens on its port of
//! `crate::ports`, and answers `GET /healthz` with `200` there once it serves (the readiness
//! probe). Secrets reach it only through its environment.

pub mod config_file;
pub mod gateway;
pub mod git_gate;
pub mod init;
pub mod server;
pub mod supervise;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use crate::manifest::Bottle;
use crate::state::BottleDirs;

/// Directory of the bundle's read-only configuration inside the container (mounted from the
/// bottle's bundle directory on the host).
pub const CONFIG_DIR: &str = "/etc/krbottle";
/// The bottle CA's certificate and key, in [`CONFIG_DIR`] (and in the host-side bundle dir).
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// The bottle's extra upstream CAs (`upstream_ca_file` in the manifest), copied there.
pub const UPSTREAM_CA_FILE: &str = "upstream-ca.pem";

/// A daemon failed to configure or to run.
#[derive(Debug, thiserror::Error)]
#[error("The {daemon} daemon failed")]
pub struct DaemonError {
    pub daemon: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// `result.in_daemon(NAME)?` in a daemon's `run`: its failure as the daemon's.
pub trait InDaemon<T> {
    fn in_daemon(self, daemon: &'static str) -> Result<T, DaemonError>;
}

impl<T, E> InDaemon<T> for Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn in_daemon(self, daemon: &'static str) -> Result<T, DaemonError> {
        self.map_err(|e| DaemonError {
            daemon,
            source: Box::new(e),
        })
    }
}

impl From<config_file::ConfigFileError> for DaemonError {
    fn from(e: config_file::ConfigFileError) -> DaemonError {
        DaemonError {
            daemon: e.daemon(),
            source: Box::new(e),
        }
    }
}

/// Where a daemon runs: what its config must say about the place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The address it listens on.
    pub listen: std::net::SocketAddr,
    /// Where it finds its config dir (the CA, extra files): [`CONFIG_DIR`] in the container,
    /// the bottle's bundle dir when the daemons run as host processes.
    pub config_dir: PathBuf,
    /// The bottle's state dirs when the daemons run as host processes; `None` in the
    /// container, where they are mounted ([`DaemonSpec::mounts`]).
    pub state: Option<BottleDirs>,
}

impl Placement {
    /// In the bundle container: every address of the container, on the daemon's own port.
    pub fn container(port: u16) -> Placement {
        Placement {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], port)),
            config_dir: PathBuf::from(CONFIG_DIR),
            state: None,
        }
    }

    /// Where the daemon finds the state dir of `mount`: its mount point in the container, the
    /// host dir itself for a host process.
    pub fn state_dir(&self, mount: &StateMount) -> PathBuf {
        match &self.state {
            Some(dirs) => (mount.host)(dirs),
            None => PathBuf::from(mount.container),
        }
    }
}

/// The future a daemon's `run` returns.
pub type DaemonFuture = Pin<Box<dyn Future<Output = Result<(), DaemonError>> + Send>>;

/// One daemon: what the host, `init` and the command line need to know about it.
pub struct DaemonSpec {
    /// Its name: `krbottle bundle NAME`, `--daemons NAME`, labels and logs.
    pub name: &'static str,
    /// One line for `krbottle bundle --help`.
    pub about: &'static str,
    /// Its port inside the container and in the guest (`crate::ports`).
    pub port: u16,
    /// Its config file's name in [`CONFIG_DIR`].
    pub config_file: &'static str,
    /// The path of its MCP endpoint, for a daemon the agent uses as an MCP server (written
    /// into the guest's `~/.claude.json`).
    pub mcp_path: Option<&'static str>,
    /// Directories of the bottle's state it reads and writes, bind-mounted read-write into the
    /// bundle container (created on the host first). Nothing of them reaches the guest.
    pub mounts: &'static [StateMount],
    /// Host files of the bottle bind-mounted read-only into the bundle container only (e.g.
    /// git-gate's SSH keys), at the container paths its config names. A host process reads
    /// them where they are.
    pub files: fn(&Bottle) -> Vec<FileMount>,
    /// Whether a bottle runs it.
    pub enabled: fn(&Bottle) -> bool,
    /// Its config file for a bottle (names, never secrets), where it runs.
    pub config: fn(&Bottle, &Placement) -> Result<Vec<u8>, DaemonError>,
    /// Runs it with its config file until SIGTERM or SIGINT.
    pub run: fn(PathBuf) -> DaemonFuture,
}

/// A host file mounted read-only into the bundle container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMount {
    pub host: PathBuf,
    pub container: String,
}

/// A directory of a bottle's state that a daemon uses (e.g. supervise's queue).
pub struct StateMount {
    /// The directory on the host.
    pub host: fn(&BottleDirs) -> PathBuf,
    /// Where the daemon sees it in the container.
    pub container: &'static str,
}

impl std::fmt::Debug for DaemonSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for DaemonSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// Every daemon a bundle can run.
pub static DAEMONS: &[DaemonSpec] = &[gateway::DAEMON, git_gate::DAEMON, supervise::DAEMON];

/// The daemon called `name`.
pub fn find(name: &str) -> Option<&'static DaemonSpec> {
    DAEMONS.iter().find(|d| d.name == name)
}

/// `find` as a clap value parser (`--daemons`).
pub fn parse_name(name: &str) -> Result<&'static DaemonSpec, String> {
    find(name).ok_or_else(|| format!("unknown daemon {name:?}; known: {}", names().join(", ")))
}

/// The daemons a bottle runs, in table order.
pub fn enabled_for(bottle: &Bottle) -> Vec<&'static DaemonSpec> {
    DAEMONS.iter().filter(|d| (d.enabled)(bottle)).collect()
}

fn names() -> Vec<&'static str> {
    DAEMONS.iter().map(|d| d.name).collect()
}

/// The daemons' section of `krbottle bundle --help`.
pub fn help() -> String {
    let mut text = String::from(
        "Daemons (inside the bundle container: `krbottle bundle DAEMON --config FILE`):\n",
    );
    for d in DAEMONS {
        text.push_str(&format!("  {:<10} {} (port {})\n", d.name, d.about, d.port));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for d in DAEMONS {
            assert!(seen.insert(d.name), "{} twice", d.name);
            assert_eq!(find(d.name), Some(d));
            assert!(d.config_file.ends_with(".json"), "{}", d.config_file);
            assert!(
                !d.name.starts_with('_') && crate::manifest::is_valid_name(d.name),
                "{}",
                d.name
            );
        }
        let ports: std::collections::HashSet<_> = DAEMONS.iter().map(|d| d.port).collect();
        assert_eq!(ports.len(), DAEMONS.len(), "a port given to two daemons");
        assert!(parse_name("nope").unwrap_err().contains("gateway"));
    }
}
