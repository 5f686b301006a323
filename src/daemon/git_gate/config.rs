//! git-gate's configuration file (JSON, written by `krbottle bundle up` from the manifest, or
//! by hand for a daemon run as a plain process). Names and paths only: the route tokens it
//! scans for are named by their environment variables, and the SSH key is a path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::daemon::{FileMount, Placement, StateMount};
use crate::manifest::{Bottle, GitRepo};
use crate::refs::PushRules;

/// Where the bottle's gate repositories are mounted in the bundle container.
pub const REPOS_DIR: &str = "/var/lib/krbottle/git";
/// Where each repository's SSH key and known hosts are mounted (read-only) in the container:
/// `KEYS_DIR/NAME/identity`, `KEYS_DIR/NAME/known_hosts`. Outside [`REPOS_DIR`], which is all
/// git serves.
pub const KEYS_DIR: &str = "/run/krbottle/git-keys";

/// The bottle's gate repositories, the one state dir the daemon uses.
pub const REPOS_MOUNT: StateMount = StateMount {
    host: crate::state::BottleDirs::git_dir,
    container: REPOS_DIR,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitGateConfig {
    /// The bottle's name, in every decision line.
    pub bottle: String,
    /// Address the smart-HTTP server listens on.
    pub listen: SocketAddr,
    /// The directory of the bare repositories (`NAME.git`), the only one git serves.
    pub repos_dir: PathBuf,
    /// Environment variables holding the bundle's secrets (the routes' tokens): no pushed
    /// object may contain one, in any encoding the shared scanner knows.
    #[serde(default)]
    pub secret_envs: Vec<String>,
    /// The daemon may run under a uid with no passwd entry (the container runs as the host
    /// user's id), which ssh refuses: it then gives ssh one through nss_wrapper.
    #[serde(default)]
    pub in_container: bool,
    pub repos: Vec<RepoConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub name: String,
    /// The upstream's SSH URL as the manifest gives it.
    pub upstream: String,
    pub identity_file: PathBuf,
    pub known_hosts: PathBuf,
    pub rules: PushRules,
    pub max_push_bytes: u64,
    pub fetch_interval_secs: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] crate::daemon::config_file::ConfigFileError),
    #[error("The git-gate config {} has no repository {repo}", path.display())]
    NoRepo { path: PathBuf, repo: String },
}

/// The read-only mounts of a bottle's keys in the container.
pub fn key_mounts(bottle: &Bottle) -> Vec<FileMount> {
    bottle
        .git
        .iter()
        .flat_map(|r| {
            let (id, kh) = container_keys(r);
            [
                FileMount {
                    host: r.identity_file.clone(),
                    container: id.to_string_lossy().into_owned(),
                },
                FileMount {
                    host: r.known_hosts.clone(),
                    container: kh.to_string_lossy().into_owned(),
                },
            ]
        })
        .collect()
}

fn container_keys(repo: &GitRepo) -> (PathBuf, PathBuf) {
    let dir = Path::new(KEYS_DIR).join(&repo.name);
    (dir.join("identity"), dir.join("known_hosts"))
}

impl GitGateConfig {
    /// The config of a bottle's git-gate where `place` says it runs.
    pub fn for_bottle(bottle: &Bottle, place: &Placement) -> GitGateConfig {
        let in_container = place.state.is_none();
        let repos = bottle
            .git
            .iter()
            .map(|r| {
                let (identity_file, known_hosts) = if in_container {
                    container_keys(r)
                } else {
                    (r.identity_file.clone(), r.known_hosts.clone())
                };
                RepoConfig {
                    name: r.name.clone(),
                    upstream: r.upstream.url.clone(),
                    identity_file,
                    known_hosts,
                    rules: r.rules.clone(),
                    max_push_bytes: u64::from(r.max_push_mib) * 1024 * 1024,
                    fetch_interval_secs: r.fetch_interval_secs,
                }
            })
            .collect();
        GitGateConfig {
            bottle: bottle.name.clone(),
            listen: place.listen,
            repos_dir: place.state_dir(&REPOS_MOUNT),
            secret_envs: bottle.routes.iter().map(|r| r.token_env.clone()).collect(),
            in_container,
            repos,
        }
    }

    pub fn load(path: &Path) -> Result<GitGateConfig, ConfigError> {
        Ok(crate::daemon::config_file::load("git-gate", path)?)
    }

    pub fn repo(&self, name: &str) -> Option<&RepoConfig> {
        self.repos.iter().find(|r| r.name == name)
    }

    /// The bare repository of `repo`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.repos_dir.join(format!("{repo}.git"))
    }
}
