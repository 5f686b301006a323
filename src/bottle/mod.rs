//! A bottle's life: `start`, `resume`, `stop`, `list`, `rm`, `logs`, `gc`.
//!
//! `start` is the product's flow, each step a library call:
//! manifest → [`plan`](crate::plan) (pure) → image (build, cached rootfs) → the bottle's
//! writable root (an overlay over the cache, kept under the state dir) → the VMM child, which
//! mounts it and writes the planned files into it (`crate::provision`) while the bundle comes
//! up → the guest boots once the bundle answers, its console on the user's terminal → teardown.
//!
//! Teardown runs on every path (the guest's exit, a signal, a failing step): the bundle's
//! container and network are removed (its logs saved first), the terminal restored, the lock
//! released, the bottle's root and record kept for `resume`. Termination signals are owned by
//! `sys::signals`: before boot they cancel what is under way; once the VMM runs they are
//! forwarded to it, and it is killed if it has not ended [`STOP_TIMEOUT`] later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

mod start;
pub use start::{CwdChoice, Finished, StartRequest, Timings, resume, start};

use crate::bundle::process::ProcessError;
use crate::bundle::{self, BundleError, ContainerError};
use crate::docker::{DockerError, Engine};
use crate::image::prepare::PrepareError;
use crate::image::remove_tree_any_owner;
use crate::manifest::ManifestError;
use crate::plan::PlanError;
use crate::state::{StateError, StateRoot};
use crate::sys::signals::Signal;

/// How long the guest gets to end after a forwarded signal before the VMM is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits for the bottle's process to finish its teardown.
const STOP_WAIT: Duration = Duration::from_secs(60);
/// The most bytes of skill files read for one agent.
const MAX_SKILL_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BottleError {
    #[error(
        "No {file} in {} or any parent directory; run krbottle in your project, or pass --manifest",
        dir.display(),
        file = crate::manifest::MANIFEST_FILE
    )]
    NoManifest { dir: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("No agent `{agent}` in {}; it has: {known}", manifest.display())]
    NoAgent {
        agent: String,
        manifest: PathBuf,
        known: String,
    },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Image(#[from] PrepareError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Vm(#[from] crate::vm::prepare::PrepareError),
    #[error(transparent)]
    Launch(#[from] crate::vm::launch::LaunchError),
    #[error(
        "Bottle `{0}` exists and is stopped; continue it with `krbottle resume {0}`, or remove it with `krbottle rm {0}`"
    )]
    Exists(String),
    #[error("Bottle `{0}` is running; stop it first with `krbottle stop {0}`")]
    Running(String),
    #[error("No bottle `{0}`; `krbottle list` shows them")]
    NoBottle(String),
    #[error("Bottle `{0}` is not running")]
    NotRunning(String),
    #[error("Bottle `{0}` did not stop within {STOP_WAIT:?}; its process is {1}")]
    StopTimeout(String, u32),
    #[error("Cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Skill directory {} holds more than {} MiB", path.display(), MAX_SKILL_BYTES >> 20)]
    SkillTooLarge { path: PathBuf },
    #[error("Cannot find the current directory")]
    Cwd(#[source] std::io::Error),
    #[error("{var}={value:?} is not a bundle runtime: use `docker` or `process`", var = crate::env_vars::KRBOTTLE_BUNDLE_RUNTIME)]
    BadRuntime { value: String },
    #[error("Cannot handle termination signals")]
    Signals(#[source] std::io::Error),
    #[error("Interrupted by {}", .0.name())]
    Interrupted(Signal),
    #[error("A task of the start stopped unexpectedly")]
    Join(#[source] Option<tokio::task::JoinError>),
    #[error("Cannot remove bottle `{name}`'s directory {}", path.display())]
    Remove {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the bundle runs.
#[derive(Clone, Debug)]
enum Runtime {
    Docker,
    Process,
}

impl Runtime {
    fn from_env() -> Result<Runtime, BottleError> {
        match std::env::var(crate::env_vars::KRBOTTLE_BUNDLE_RUNTIME).as_deref() {
            Err(_) | Ok("docker") => Ok(Runtime::Docker),
            Ok("process") => Ok(Runtime::Process),
            Ok(other) => Err(BottleError::BadRuntime {
                value: other.to_string(),
            }),
        }
    }
}

/// A bottle as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub agent: String,
    pub state: &'static str,
    pub image: String,
    /// Seconds since the epoch of the last start.
    pub started: u64,
    /// The bundle's published endpoints, while it runs.
    pub endpoints: std::collections::BTreeMap<String, SocketAddr>,
}

/// `krbottle list`: every bottle of this state dir.
pub fn list() -> Result<Vec<Status>, BottleError> {
    let state = StateRoot::open_default();
    let mut out = Vec::new();
    for name in state.names()? {
        let dirs = state.bottle(&name)?;
        let Some(record) = dirs.read_record()? else {
            continue;
        };
        let running = dirs.is_running();
        out.push(Status {
            name,
            agent: record.agent,
            state: if running { "running" } else { "stopped" },
            image: record.image,
            started: record.started,
            endpoints: if running {
                record.endpoints
            } else {
                Default::default()
            },
        });
    }
    Ok(out)
}

/// `krbottle stop NAME`: asks the bottle's krbottle process to end the guest and tear down
/// (SIGTERM, forwarded to the VMM, which is killed after [`STOP_TIMEOUT`]); returns once it has.
pub async fn stop(name: &str) -> Result<(), BottleError> {
    let state = StateRoot::open_default();
    let dirs = state.bottle(name)?;
    let record = dirs
        .read_record()?
        .ok_or_else(|| BottleError::NoBottle(name.to_string()))?;
    if !dirs.is_running() {
        return Err(BottleError::NotRunning(name.to_string()));
    }
    let Some(pid) = record.pid else {
        return Err(BottleError::NotRunning(name.to_string()));
    };
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + STOP_WAIT;
    while dirs.is_running() {
        if Instant::now() > deadline {
            return Err(BottleError::StopTimeout(name.to_string(), pid));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `krbottle rm NAME`: removes a stopped bottle (its root, record, CA and logs); a running one
/// only with `force`, which stops it first.
pub async fn rm(name: &str, force: bool) -> Result<(), BottleError> {
    let state = StateRoot::open_default();
    let dirs = state.bottle(name)?;
    if !dirs.dir().exists() {
        return Err(BottleError::NoBottle(name.to_string()));
    }
    if dirs.is_running() {
        if !force {
            return Err(BottleError::Running(name.to_string()));
        }
        stop(name).await?;
    }
    let _lock = dirs.lock()?;
    remove_tree_any_owner(dirs.dir()).map_err(|source| BottleError::Remove {
        name: name.to_string(),
        path: dirs.dir().to_path_buf(),
        source,
    })
}

/// Which of a bundle's log lines `logs` prints.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogFilter<'a> {
    /// Only this daemon's lines.
    pub daemon: Option<&'a str>,
    /// Only the gateway's denials (deny and block decision lines).
    pub denied: bool,
}

impl LogFilter<'_> {
    fn keeps(&self, line: &[u8]) -> bool {
        self.daemon
            .is_none_or(|d| crate::daemon::init::line_is_from(line, d))
            && (!self.denied || crate::daemon::gateway::log::is_denial(line))
    }
}

/// `krbottle logs NAME`: the bundle's logs, of the running bundle or (stopped) of its last run,
/// as `filter` keeps them; `follow` keeps printing while it runs.
pub async fn logs(
    name: &str,
    filter: LogFilter<'_>,
    follow: bool,
    mut stdout: impl std::io::Write,
    mut stderr: impl std::io::Write,
) -> Result<(), BottleError> {
    let state = StateRoot::open_default();
    let dirs = state.bottle(name)?;
    if dirs.read_record()?.is_none() {
        return Err(BottleError::NoBottle(name.to_string()));
    }
    let keep = |line: &[u8]| filter.keeps(line);
    if dirs.is_running() && Runtime::from_env().is_ok_and(|r| matches!(r, Runtime::Docker)) {
        let engine = Engine::connect().await?;
        let filter = |data: &[u8], out: &mut dyn std::io::Write| -> std::io::Result<()> {
            for line in data.split_inclusive(|&b| b == b'\n') {
                if keep(line) {
                    out.write_all(line)?;
                }
            }
            Ok(())
        };
        use futures_util::StreamExt;
        let mut stream = std::pin::pin!(bundle::container::logs(&engine, name, follow));
        while let Some(item) = stream.next().await {
            let written = match item.map_err(BundleError::from)? {
                bollard::container::LogOutput::StdErr { message } => filter(&message, &mut stderr),
                other => filter(&other.into_bytes(), &mut stdout),
            };
            written.map_err(BundleError::WriteLogs)?;
        }
        return Ok(());
    }
    // Stopped: the last run's saved logs.
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dirs.logs_dir())
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    runs.sort();
    let last = runs
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_os_string()))
        .max();
    let Some(last) = last else {
        return Ok(());
    };
    for (ext, out) in [
        ("out", &mut stdout as &mut dyn std::io::Write),
        ("err", &mut stderr),
    ] {
        let path = dirs.logs_dir().join(&last).with_extension(ext);
        if let Ok(data) = std::fs::read(&path) {
            for line in data.split_inclusive(|&b| b == b'\n') {
                if keep(line) {
                    out.write_all(line).map_err(BundleError::WriteLogs)?;
                }
            }
        }
    }
    Ok(())
}

/// What `gc` removed.
#[derive(Debug, Default, Serialize)]
pub struct Collected {
    pub bundles: bundle::Removed,
    /// Bottle directories that a start left before it recorded the bottle.
    pub half_made: Vec<String>,
    /// Cached root filesystems no bottle uses (`--cache`).
    pub cache_entries: Vec<String>,
}

/// `krbottle gc [--cache]`: bundle containers and networks whose krbottle is gone, stale bundle
/// images, half-made bottle dirs; with `cache`, cached root filesystems no bottle uses.
pub async fn gc(cache: bool) -> Result<Collected, BottleError> {
    let state = StateRoot::open_default();
    let mut out = Collected::default();
    match bundle::gc().await {
        Ok(removed) => out.bundles = removed,
        Err(BundleError::Docker(e)) => tracing::info!("no bundles collected: {e}"),
        Err(e) => return Err(e.into()),
    }
    let engine = Engine::connect().await.ok();
    let mut used = Vec::new();
    for name in state.names()? {
        let dirs = state.bottle(&name)?;
        match dirs.read_record()? {
            Some(r) => {
                // A stopped bottle has no bundle: one left is a killed start's.
                if !dirs.is_running()
                    && let Some(engine) = &engine
                {
                    let removed = bundle::container::down(engine, &state, &name).await?;
                    out.bundles.containers.extend(removed.containers);
                    out.bundles.networks.extend(removed.networks);
                }
                used.push((r.image_id, r.ownership));
            }
            None if !dirs.is_running() => {
                remove_tree_any_owner(dirs.dir()).map_err(|source| BottleError::Remove {
                    name: name.clone(),
                    path: dirs.dir().to_path_buf(),
                    source,
                })?;
                out.half_made.push(name);
            }
            None => {}
        }
    }
    if cache {
        out.cache_entries = crate::image::prepare::prune_unused(&used).await?;
    }
    Ok(out)
}
