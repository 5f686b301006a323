//! The bundle's daemons as plain child processes of krbottle on the host, for machines without
//! a Docker engine (the emulated-hypervisor harness): `KRBOTTLE_BUNDLE_RUNTIME=process`.
//!
//! The same `krbottle bundle init` supervises the same daemons with the same config files
//! (written to the bottle's bundle dir, which is their config dir), each on a free
//! `127.0.0.1` port, with the route tokens as their only environment besides `PATH`. What is
//! lost against the container is the daemons' own isolation from the host; the guest's side is
//! unchanged: it still reaches only the relayed guest ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::bundle::container::{BundleRecord, BundleRequest, ContainerError, health_ok};
use crate::daemon::Placement;
use crate::state::StateRoot;

/// How long the daemons get to answer after init started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long init gets to stop its daemons before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Setup(#[from] ContainerError),
    #[error("Cannot start the bundle's daemons (krbottle bundle init)")]
    Spawn(#[source] std::io::Error),
    #[error(
        "The {daemon} daemon of bottle {bottle} did not answer on {addr} within {READY_TIMEOUT:?}; see `krbottle logs {bottle}`"
    )]
    WaitReady {
        bottle: String,
        daemon: &'static str,
        addr: SocketAddr,
    },
    #[error("The bundle's daemons of bottle {0} exited while starting; see `krbottle logs {0}`")]
    Exited(String),
}

/// A bundle whose daemons run as a child process tree of this krbottle.
#[derive(Debug)]
pub struct ProcessBundle {
    pub record: BundleRecord,
    init: tokio::process::Child,
}

/// Starts `request`'s daemons as host processes and waits until they answer.
pub async fn up(
    request: &BundleRequest<'_>,
    state: &StateRoot,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ProcessBundle, ProcessError> {
    let bottle = request.bottle;
    let bottle_dirs = state.bottle(&bottle.name).map_err(ContainerError::from)?;
    let dir = bottle_dirs.bundle_dir();
    let secrets = crate::bundle::container::secrets(request, &env)?;
    let mut files = Vec::new();
    let mut endpoints = BTreeMap::new();
    let unchosen: Vec<_> = request
        .daemons
        .iter()
        .map(|(d, _)| *d)
        .filter(|d| !request.host_ports.contains_key(d.name))
        .collect();
    let random = crate::bundle::container::free_host_ports(&unchosen)?;
    for (d, _) in &request.daemons {
        let port = request
            .host_ports
            .get(d.name)
            .or_else(|| random.get(d.name))
            .copied()
            .ok_or(ContainerError::FindPort {
                name: "krbottle bundle init".into(),
                daemon: d.name,
            })?;
        let place = Placement {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            config_dir: dir.clone(),
            state: Some(bottle_dirs.clone()),
        };
        let config = (d.config)(bottle, &place).map_err(ContainerError::from)?;
        files.push((d.config_file.to_string(), config));
        endpoints.insert(d.name.to_string(), place.listen);
    }
    files.extend(request.files.iter().cloned());
    crate::bundle::container::write_bundle_dir(&dir, &bottle.name, &files)?;

    // The daemons' lines go to the bottle's logs (`krbottle logs`), not to the terminal the
    // guest's console is on.
    let logs = state
        .bottle(&bottle.name)
        .map_err(ContainerError::from)?
        .logs_dir();
    std::fs::create_dir_all(&logs).map_err(ProcessError::Spawn)?;
    let stamp = crate::state::now_secs();
    let log_file = |ext: &str| std::fs::File::create(logs.join(format!("{stamp}.{ext}")));
    let (out, err) = (
        log_file("out").map_err(ProcessError::Spawn)?,
        log_file("err").map_err(ProcessError::Spawn)?,
    );
    let binary = std::env::current_exe().map_err(ProcessError::Spawn)?;
    let names: Vec<&str> = request.daemons.iter().map(|(d, _)| d.name).collect();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args([
        "bundle",
        "init",
        "--daemons",
        &names.join(","),
        "--config-dir",
    ])
    .arg(&dir)
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .envs(secrets.iter().map(|s| s.split_once('=').unwrap_or((s, ""))))
    .stdin(std::process::Stdio::null())
    .stdout(out)
    .stderr(err)
    .kill_on_drop(true);
    let mut init = cmd.spawn().map_err(ProcessError::Spawn)?;
    let pid = init.id().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    for (d, _) in &request.daemons {
        let addr = endpoints[d.name];
        while !health_ok(addr).await {
            if let Ok(Some(_)) = init.try_wait() {
                return Err(ProcessError::Exited(bottle.name.clone()));
            }
            if tokio::time::Instant::now() > deadline {
                let _ = init.kill().await;
                return Err(ProcessError::WaitReady {
                    bottle: bottle.name.clone(),
                    daemon: d.name,
                    addr,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    Ok(ProcessBundle {
        record: BundleRecord {
            bottle: bottle.name.clone(),
            container_id: format!("pid:{pid}"),
            container: format!("krbottle bundle init (pid {pid})"),
            network: "host loopback".into(),
            image: String::new(),
            git: crate::daemon::git_gate::remotes(bottle, &endpoints),
            endpoints,
        },
        init,
    })
}

impl ProcessBundle {
    /// Stops the daemons: SIGTERM to init, which stops them; killed after a grace period.
    pub async fn down(mut self) {
        if let Some(pid) = self
            .init
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(STOP_GRACE, self.init.wait())
            .await
            .is_err()
        {
            let _ = self.init.kill().await;
        }
    }
}
