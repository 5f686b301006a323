//! The bundle on the host side: one container per bottle on its own Docker network, driven
//! through the Docker API (bollard, version negotiated with the engine).
//!
//! Invariants:
//! - Secrets reach the container only as environment set through the API: never on a command
//!   line, never in a file in the image or in the bottle's directory.
//! - The bottle's bundle directory (config, CA) is bind-mounted read-only; the CA key is mode
//!   0600 on the host. The state directories a daemon asks for (`DaemonSpec::mounts`, e.g. the
//!   approval queue) are bind-mounted read-write, and nowhere else. The host files a daemon
//!   names (`DaemonSpec::files`, e.g. git-gate's SSH key) are bind-mounted read-only into this
//!   container only.
//! - Agent-facing ports are published on `127.0.0.1` only, on random host ports, or on the
//!   ones the request chose ([`free_host_ports`]: macOS guests dial them directly, so the plan
//!   needs them before the bundle starts).
//! - The daemons run as the host user who owns the bottle's files, with every capability
//!   dropped and no new privileges.
//! - Every object carries the bottle, role, state-directory and owner-pid labels, so `down`
//!   and `gc` find them after a crash. A bundle is "up" only once its record (`up.json`) is
//!   written, after every daemon answered; `up` removes what it created if it fails.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions, LogsOptions,
    RemoveContainerOptions,
};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bundle::layout::{
    LABEL_BOTTLE, LABEL_OWNER_PID, LABEL_ROLE, LABEL_STATE_DIR, ROLE_BUNDLE, container_name,
    network_name,
};
use crate::ca::{BottleCa, CaError};
use crate::daemon::{CA_CERT_FILE, CA_KEY_FILE, CONFIG_DIR, DaemonError, DaemonSpec, Placement};
use crate::docker::{Engine, is_not_found};
use crate::manifest::Bottle;
use crate::state::{StateError, StateRoot};
use crate::sys::fs::write_atomic;

/// How long the daemons get to answer after the container started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The interval between readiness probes.
const READY_PROBE_EVERY: Duration = Duration::from_millis(25);
const UP_RECORD_FILE: &str = "up.json";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    DaemonConfig(#[from] DaemonError),
    #[error("Cannot read the bottle's upstream_ca_file {}; fix the path in the manifest", path.display())]
    ReadUpstreamCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "route {host} of bottle {bottle}: the environment variable {env} is not set; export the token under that name"
    )]
    ReadToken {
        bottle: String,
        host: String,
        env: String,
    },
    #[error("Cannot create the bundle directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot prepare the CA of bottle {bottle}")]
    Ca {
        bottle: String,
        #[source]
        source: CaError,
    },
    #[error("Cannot write {} for bottle {bottle}", path.display())]
    WriteConfig {
        bottle: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the bundle of bottle {bottle} is already up; run `krbottle bundle down {bottle}` first"
    )]
    AlreadyUp { bottle: String },
    #[error("Cannot create the network {name}")]
    CreateNetwork {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// `step`: what the engine was asked to do (`create`, `start`, `inspect`).
    #[error("Cannot {step} the bundle container {name}")]
    Container {
        step: &'static str,
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("The bundle container {name} publishes no host port for {daemon}")]
    FindPort { name: String, daemon: &'static str },
    #[error("Cannot find a free port on 127.0.0.1 for the {0} daemon")]
    FreePort(&'static str, #[source] std::io::Error),
    #[error(
        "The {daemon} of bottle {bottle} did not answer on {addr} within {READY_TIMEOUT:?}; see `krbottle bundle logs {bottle}`"
    )]
    WaitReady {
        bottle: String,
        daemon: &'static str,
        addr: SocketAddr,
    },
    #[error("Stopped while the bundle of bottle {bottle} was starting")]
    Cancelled { bottle: String },
    #[error("The {daemon} of bottle {bottle} cannot start: {message}")]
    DaemonFailed {
        bottle: String,
        daemon: &'static str,
        message: String,
    },
    #[error(
        "Route {host} of bottle {bottle}: the token in {env} is shorter than {} bytes, too short to be a real token (and to be told apart from ordinary text); export the real one",
        crate::secrets::MIN_SECRET_LEN
    )]
    ShortToken {
        bottle: String,
        host: String,
        env: String,
    },
    #[error(
        "the bundle container of bottle {bottle} stopped while starting; see `krbottle bundle logs {bottle}`"
    )]
    Exited { bottle: String },
    #[error("Cannot list the Docker objects of bottle {bottle}")]
    List {
        bottle: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Cannot remove {what}")]
    Remove {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Cannot write the up record {}", path.display())]
    WriteRecord {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot encode the up record of bottle {bottle}")]
    EncodeRecord {
        bottle: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("Cannot read the logs of bottle {bottle}")]
    Logs {
        bottle: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// A bundle that is up: what `bundle up --json` prints and `up.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    pub bottle: String,
    pub container_id: String,
    pub container: String,
    pub network: String,
    pub image: String,
    /// Daemon name → published address on the host.
    pub endpoints: BTreeMap<String, SocketAddr>,
    /// git-gate's repositories: name → the URL a git client on the host clones and pushes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub git: BTreeMap<String, String>,
}

/// What `down` or `gc` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    /// Stale bundle images (`gc` only).
    pub images: Vec<String>,
}

/// What to start for a bottle: its bundle image, its daemons with their config files, and any
/// extra files for the config dir (e.g. an upstream CA a test or an operator adds).
#[derive(Clone, Debug)]
pub struct BundleRequest<'a> {
    pub bottle: &'a Bottle,
    pub image: String,
    /// The daemons to run and each one's config file contents.
    pub daemons: Vec<(&'static DaemonSpec, Vec<u8>)>,
    /// Extra `(file name, contents)` in the config dir.
    pub files: Vec<(String, Vec<u8>)>,
    /// Extra `(variable, value)` secrets in the container's environment, besides the routes'
    /// tokens (tests use it with their own gateway config).
    pub extra_secrets: Vec<(String, String)>,
    /// Daemon name → the host port to publish it on (from [`free_host_ports`]); a daemon not
    /// named gets a random one.
    pub host_ports: BTreeMap<String, u16>,
}

/// A free port on the host's `127.0.0.1` for each of `daemons`, all different: each is bound
/// (port 0) until all are found, then released for the bundle to publish. Another process may
/// take one in between; the bundle's start then fails naming the port, and a new start picks
/// again.
pub fn free_host_ports(
    daemons: &[&'static DaemonSpec],
) -> Result<BTreeMap<String, u16>, ContainerError> {
    let mut held = Vec::new();
    let mut ports = BTreeMap::new();
    for d in daemons {
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| ContainerError::FreePort(d.name, e))?;
        let port = listener
            .local_addr()
            .map_err(|e| ContainerError::FreePort(d.name, e))?
            .port();
        ports.insert(d.name.to_string(), port);
        held.push(listener);
    }
    Ok(ports)
}

impl<'a> BundleRequest<'a> {
    /// The bottle's daemons (`daemon::enabled_for`), each with the config its table line makes.
    pub fn for_bottle(bottle: &'a Bottle, image: &str) -> Result<Self, ContainerError> {
        let daemons = crate::daemon::enabled_for(bottle)
            .into_iter()
            .map(|d| Ok((d, (d.config)(bottle, &Placement::container(d.port))?)))
            .collect::<Result<Vec<_>, DaemonError>>()?;
        let mut files = Vec::new();
        if let Some(path) = &bottle.upstream_ca_file {
            let pem = std::fs::read(path).map_err(|source| ContainerError::ReadUpstreamCa {
                path: path.clone(),
                source,
            })?;
            files.push((crate::daemon::UPSTREAM_CA_FILE.to_string(), pem));
        }
        Ok(BundleRequest {
            bottle,
            image: image.to_string(),
            daemons,
            files,
            extra_secrets: Vec::new(),
            host_ports: BTreeMap::new(),
        })
    }
}

fn labels(state_root: &Path, bottle: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_BOTTLE.to_string(), bottle.to_string()),
        (LABEL_ROLE.to_string(), ROLE_BUNDLE.to_string()),
        (
            LABEL_STATE_DIR.to_string(),
            state_root.to_string_lossy().into_owned(),
        ),
        (LABEL_OWNER_PID.to_string(), std::process::id().to_string()),
    ])
}

/// Label filters for this state root's bundles, of one bottle or all.
fn filters(state_root: &Path, bottle: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut label = vec![
        format!("{LABEL_ROLE}={ROLE_BUNDLE}"),
        format!("{LABEL_STATE_DIR}={}", state_root.to_string_lossy()),
    ];
    if let Some(b) = bottle {
        label.push(format!("{LABEL_BOTTLE}={b}"));
    }
    HashMap::from([("label".to_string(), label)])
}

/// Starts the bundle `request` describes and waits until its daemons answer. `env` reads the
/// host environment (the route tokens). The daemons' config files and the bottle's CA go in the
/// bottle's bundle directory, visible to them under [`CONFIG_DIR`].
///
/// `cancel` stops it while it waits for the daemons (the long part); the engine's calls before
/// that run to their end, so what they create is known and removed with the error.
pub async fn up(
    engine: &Engine,
    request: &BundleRequest<'_>,
    state: &StateRoot,
    env: impl Fn(&str) -> Option<String>,
    cancel: &AtomicBool,
) -> Result<BundleRecord, ContainerError> {
    let docker = engine.client();
    let bottle = request.bottle;
    let name = &bottle.name;
    let secrets = secrets(request, &env)?;
    let dir = state.bottle(name)?.bundle_dir();
    let files: Vec<(String, Vec<u8>)> = request
        .daemons
        .iter()
        .map(|(d, config)| (d.config_file.to_string(), config.clone()))
        .chain(request.files.iter().cloned())
        .collect();
    write_bundle_dir(&dir, name, &files)?;

    let bottle_dirs = state.bottle(name)?;
    let mut mounts = Vec::new();
    for d in &request.daemons {
        for m in d.0.mounts {
            let host = (m.host)(&bottle_dirs);
            create_private_dir(&host)?;
            mounts.push(format!("{}:{}:rw", host.to_string_lossy(), m.container));
        }
        for f in (d.0.files)(bottle) {
            mounts.push(format!("{}:{}:ro", f.host.to_string_lossy(), f.container));
        }
    }

    let container = container_name(name);
    if docker.inspect_container(&container, None).await.is_ok() {
        return Err(ContainerError::AlreadyUp {
            bottle: name.clone(),
        });
    }
    let network = network_name(name);
    let labels = labels(state.path(), name);
    let created = docker
        .create_network(NetworkCreateRequest {
            name: network.clone(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await;
    if let Err(source) = created {
        return Err(ContainerError::CreateNetwork {
            name: network,
            source,
        });
    }
    let daemons: Vec<_> = request.daemons.iter().map(|(d, _)| *d).collect();
    let spec = ContainerSpec {
        bottle: name,
        image: &request.image,
        dir: &dir,
        container: &container,
        network: &network,
        daemons: &daemons,
        host_ports: &request.host_ports,
        mounts,
    };
    let result = create_and_wait(docker, &spec, labels, secrets, cancel).await;
    let removed_on_error = |e| async {
        // Nothing half-done: what this call created goes away with the error.
        let _ = remove_all(docker, state.path(), name).await;
        Err(e)
    };
    let record = match result {
        Ok(mut record) => {
            record.git = crate::daemon::git_gate::remotes(bottle, &record.endpoints);
            record
        }
        Err(e) => return removed_on_error(e).await,
    };
    let path = dir.join(UP_RECORD_FILE);
    let json = match serde_json::to_vec_pretty(&record) {
        Ok(json) => json,
        Err(source) => {
            let e = ContainerError::EncodeRecord {
                bottle: name.clone(),
                source,
            };
            return removed_on_error(e).await;
        }
    };
    if let Err(source) = write_atomic(&path, &json, 0o644) {
        return removed_on_error(ContainerError::WriteRecord { path, source }).await;
    }
    Ok(record)
}

/// The `NAME=VALUE` environment of the bundle's daemons: the routes' tokens read with `env`, and
/// the request's extra secrets.
pub(crate) fn secrets(
    request: &BundleRequest<'_>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ContainerError> {
    let mut secrets = Vec::new();
    for route in &request.bottle.routes {
        let token = env(&route.token_env).ok_or_else(|| ContainerError::ReadToken {
            bottle: request.bottle.name.clone(),
            host: route.host.clone(),
            env: route.token_env.clone(),
        })?;
        if token.len() < crate::secrets::MIN_SECRET_LEN {
            return Err(ContainerError::ShortToken {
                bottle: request.bottle.name.clone(),
                host: route.host.clone(),
                env: route.token_env.clone(),
            });
        }
        secrets.push(format!("{}={token}", route.token_env));
    }
    for (var, token) in &request.extra_secrets {
        secrets.push(format!("{var}={token}"));
    }
    Ok(secrets)
}

/// The bundle dir `dir` with the bottle's CA and `files` (the daemons' configs, extra files).
pub(crate) fn write_bundle_dir(
    dir: &Path,
    bottle: &str,
    files: &[(String, Vec<u8>)],
) -> Result<(), ContainerError> {
    ensure_ca(dir, bottle)?;
    for (file, contents) in files {
        let path = dir.join(file);
        write_atomic(&path, contents, 0o644).map_err(|source| ContainerError::WriteConfig {
            bottle: bottle.to_string(),
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The bottle's CA in its bundle dir `dir`, made once and kept for the bottle's life (the
/// guest trusts it from its provisioned trust store); returns its certificate (PEM).
pub fn ensure_ca(dir: &Path, bottle: &str) -> Result<String, ContainerError> {
    create_private_dir(dir)?;
    let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let ca_err = |source| ContainerError::Ca {
        bottle: bottle.to_string(),
        source,
    };
    if !(cert.exists() && key.exists()) {
        BottleCa::generate(bottle)
            .map_err(ca_err)?
            .write(&cert, &key)
            .map_err(ca_err)?;
    }
    Ok(BottleCa::load(bottle, &cert, &key)
        .map_err(ca_err)?
        .cert_pem()
        .to_string())
}

fn create_private_dir(dir: &Path) -> Result<(), ContainerError> {
    crate::sys::fs::create_private_dir(dir).map_err(|source| ContainerError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// The container to create for one bundle.
struct ContainerSpec<'a> {
    bottle: &'a str,
    image: &'a str,
    dir: &'a Path,
    container: &'a str,
    network: &'a str,
    daemons: &'a [&'static DaemonSpec],
    /// Chosen host ports, by daemon name (the others are random).
    host_ports: &'a BTreeMap<String, u16>,
    /// Binds of the daemons' state dirs (`HOST:CONTAINER:rw`) and files (`…:ro`).
    mounts: Vec<String>,
}

async fn create_and_wait(
    docker: &Docker,
    spec: &ContainerSpec<'_>,
    labels: HashMap<String, String>,
    secrets: Vec<String>,
    cancel: &AtomicBool,
) -> Result<BundleRecord, ContainerError> {
    let port_bindings = spec
        .daemons
        .iter()
        .map(|d| {
            let host_port = spec
                .host_ports
                .get(d.name)
                .map(u16::to_string)
                .unwrap_or_default();
            let binding = PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(host_port),
            };
            (format!("{}/tcp", d.port), Some(vec![binding]))
        })
        .collect();
    let daemon_list = spec
        .daemons
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(",");
    let container = spec.container;
    // The daemons run as the user who owns the bottle's files (its 0700 bundle dir, the 0600 CA
    // key, the queue), not as root: with every capability dropped, root could not read them
    // for another user, and nothing in the bundle needs more than that user.
    let user = format!(
        "{}:{}",
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw()
    );
    let body = ContainerCreateBody {
        image: Some(spec.image.to_string()),
        user: Some(user),
        cmd: Some(vec!["--daemons".into(), daemon_list]),
        env: Some(secrets),
        labels: Some(labels),
        exposed_ports: Some(
            spec.daemons
                .iter()
                .map(|d| format!("{}/tcp", d.port))
                .collect(),
        ),
        host_config: Some(HostConfig {
            binds: Some(
                std::iter::once(format!("{}:{CONFIG_DIR}:ro", spec.dir.to_string_lossy()))
                    .chain(spec.mounts.iter().cloned())
                    .collect(),
            ),
            port_bindings: Some(port_bindings),
            network_mode: Some(spec.network.to_string()),
            init: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(container.to_string()),
        ..Default::default()
    };
    let engine_err = |step| {
        move |source| ContainerError::Container {
            step,
            name: container.to_string(),
            source,
        }
    };
    let created = docker
        .create_container(Some(options), body)
        .await
        .map_err(engine_err("create"))?;
    docker
        .start_container(container, None)
        .await
        .map_err(engine_err("start"))?;
    let inspect = docker
        .inspect_container(container, None)
        .await
        .map_err(engine_err("inspect"))?;
    let ports = inspect
        .network_settings
        .and_then(|n| n.ports)
        .unwrap_or_default();
    let mut endpoints = BTreeMap::new();
    for d in spec.daemons {
        let addr = ports
            .get(&format!("{}/tcp", d.port))
            .and_then(|b| b.as_ref())
            .and_then(|b| b.first())
            .and_then(|b| b.host_port.as_deref())
            .and_then(|p| p.parse::<u16>().ok())
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .ok_or(ContainerError::FindPort {
                name: container.to_string(),
                daemon: d.name,
            })?;
        endpoints.insert(d.name.to_string(), addr);
    }
    for d in spec.daemons {
        wait_ready(docker, spec.bottle, container, d, endpoints[d.name], cancel).await?;
    }
    Ok(BundleRecord {
        bottle: spec.bottle.to_string(),
        container_id: created.id,
        container: container.to_string(),
        network: spec.network.to_string(),
        image: spec.image.to_string(),
        endpoints,
        git: BTreeMap::new(),
    })
}

/// Probes a daemon's health endpoint until it answers `200`, the container stops, or
/// [`READY_TIMEOUT`] passes.
async fn wait_ready(
    docker: &Docker,
    bottle: &str,
    container: &str,
    daemon: &DaemonSpec,
    addr: SocketAddr,
    cancel: &AtomicBool,
) -> Result<(), ContainerError> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut probes = 0u32;
    while tokio::time::Instant::now() < deadline {
        if health_ok(addr).await {
            return Ok(());
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(ContainerError::Cancelled {
                bottle: bottle.to_string(),
            });
        }
        probes += 1;
        // A daemon that fails at start says why on stderr, and init restarts it: read that
        // every 40 probes (~1 s) rather than wait out the timeout.
        if probes.is_multiple_of(40)
            && let Some(message) = daemon_error(docker, container, daemon.name).await
        {
            return Err(ContainerError::DaemonFailed {
                bottle: bottle.to_string(),
                daemon: daemon.name,
                message,
            });
        }
        // Checking the container costs an API call: do it every 20 probes (~0.5 s).
        if probes.is_multiple_of(20) {
            let running = docker
                .inspect_container(container, None)
                .await
                .ok()
                .and_then(|i| i.state)
                .and_then(|s| s.running)
                .unwrap_or(false);
            if !running {
                return Err(ContainerError::Exited {
                    bottle: bottle.to_string(),
                });
            }
        }
        tokio::time::sleep(READY_PROBE_EVERY).await;
    }
    Err(ContainerError::WaitReady {
        bottle: bottle.to_string(),
        daemon: daemon.name,
        addr,
    })
}

/// The last error a daemon printed in the container's log (init tags its lines `[name] `), as
/// one line: `error: …` and its `caused by: …` lines.
async fn daemon_error(docker: &Docker, container: &str, daemon: &str) -> Option<String> {
    let options = LogsOptions {
        stdout: false,
        stderr: true,
        tail: "40".into(),
        ..Default::default()
    };
    let mut text = String::new();
    let mut stream = docker.logs(container, Some(options));
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    last_error(&text, daemon)
}

/// The last `error:` block of `daemon`'s lines in `log`, joined on one line.
fn last_error(log: &str, daemon: &str) -> Option<String> {
    let prefix = format!("[{daemon}] ");
    let lines: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    let start = lines.iter().rposition(|l| l.starts_with("error: "))?;
    let mut message = lines[start].trim_start_matches("error: ").to_string();
    for l in &lines[start + 1..] {
        match l.trim_start().strip_prefix("caused by: ") {
            Some(cause) => {
                message.push_str(": ");
                message.push_str(cause);
            }
            None => break,
        }
    }
    Some(message)
}

/// One `GET /healthz`; true on a `200` answer.
pub async fn health_ok(addr: SocketAddr) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: krbottle\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf[..12]).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Removes the bundle of `bottle` (container, then network) and its up record.
pub async fn down(
    engine: &Engine,
    state: &StateRoot,
    bottle: &str,
) -> Result<Removed, ContainerError> {
    let removed = remove_all(engine.client(), state.path(), bottle).await?;
    let record = state.bottle(bottle)?.bundle_dir().join(UP_RECORD_FILE);
    match std::fs::remove_file(&record) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("could not remove {}: {e}", record.display()),
    }
    Ok(removed)
}

async fn remove_all(
    docker: &Docker,
    state_root: &Path,
    bottle: &str,
) -> Result<Removed, ContainerError> {
    let mut removed = Removed::default();
    let list_err = |source| ContainerError::List {
        bottle: bottle.to_string(),
        source,
    };
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters(state_root, Some(bottle))),
            ..Default::default()
        }))
        .await
        .map_err(list_err)?;
    for c in containers {
        let Some(id) = c.id else { continue };
        remove_container(docker, &id).await?;
        removed.containers.push(id);
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters(state_root, Some(bottle))),
        }))
        .await
        .map_err(list_err)?;
    for n in networks {
        let Some(id) = n.id else { continue };
        remove_network(docker, &id).await?;
        removed.networks.push(id);
    }
    Ok(removed)
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), ContainerError> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        // Already gone (a concurrent down, or auto-removal): the goal is reached.
        Err(e) if is_not_found(&e) => Ok(()),
        Err(source) => Err(ContainerError::Remove {
            what: format!("container {id}"),
            source,
        }),
    }
}

async fn remove_network(docker: &Docker, id: &str) -> Result<(), ContainerError> {
    match docker.remove_network(id).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(source) => Err(ContainerError::Remove {
            what: format!("network {id}"),
            source,
        }),
    }
}

/// Whether the process that created an object is still running (an `up` in progress).
/// The bottle an object of ours is labelled with (`""` for one without the label: no record
/// matches it).
fn bottle_label(labels: Option<&HashMap<String, String>>) -> String {
    labels
        .and_then(|l| l.get(LABEL_BOTTLE))
        .cloned()
        .unwrap_or_default()
}

fn owner_alive(labels: Option<&HashMap<String, String>>) -> bool {
    let pid = labels
        .and_then(|l| l.get(LABEL_OWNER_PID))
        .and_then(|p| p.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw);
    match pid {
        Some(pid) if pid.as_raw_nonzero().get() as u32 == std::process::id() => true,
        Some(pid) => match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            Err(e) => e == rustix::io::Errno::PERM,
        },
        None => false,
    }
}

/// The bundle record of `bottle`, for gc: one that cannot be read counts as none, so gc removes
/// what no readable record keeps.
fn read_record(state: &StateRoot, bottle: &str) -> Option<BundleRecord> {
    let dir = state.bottle(bottle).ok()?.bundle_dir();
    crate::sys::fs::read_json(&dir.join(UP_RECORD_FILE))
        .ok()
        .flatten()
}

/// Removes this state root's bundle objects that no up record accounts for and whose creator
/// is gone: what a crash or a kill in the middle of `up` left behind.
pub async fn gc(engine: &Engine, state: &StateRoot) -> Result<Removed, ContainerError> {
    let (docker, state_root) = (engine.client(), state.path());
    let mut removed = Removed::default();
    let list_err = |source| ContainerError::List {
        bottle: "*".to_string(),
        source,
    };
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters(state_root, None)),
            ..Default::default()
        }))
        .await
        .map_err(list_err)?;
    let mut kept_bottles = Vec::new();
    for c in containers {
        let Some(id) = c.id else { continue };
        let bottle = bottle_label(c.labels.as_ref());
        let recorded = read_record(state, &bottle).is_some_and(|r| r.container_id == id);
        if recorded || owner_alive(c.labels.as_ref()) {
            kept_bottles.push(bottle);
            continue;
        }
        remove_container(docker, &id).await?;
        removed.containers.push(id);
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters(state_root, None)),
        }))
        .await
        .map_err(list_err)?;
    for n in networks {
        let Some(id) = n.id else { continue };
        let bottle = bottle_label(n.labels.as_ref());
        if kept_bottles.contains(&bottle) || owner_alive(n.labels.as_ref()) {
            continue;
        }
        remove_network(docker, &id).await?;
        removed.networks.push(id);
    }
    Ok(removed)
}

/// The bundle's log stream (stdout and stderr of its daemons and init).
pub fn logs<'a>(
    engine: &'a Engine,
    bottle: &str,
    follow: bool,
) -> impl Stream<Item = Result<bollard::container::LogOutput, ContainerError>> + 'a {
    let bottle_name = bottle.to_string();
    engine
        .client()
        .logs(
            &container_name(bottle),
            Some(LogsOptions {
                follow,
                stdout: true,
                stderr: true,
                tail: "all".into(),
                ..Default::default()
            }),
        )
        .map(move |item| {
            item.map_err(|source| ContainerError::Logs {
                bottle: bottle_name.clone(),
                source,
            })
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_daemons_last_error_is_read_from_the_log() {
        let log = "[gateway] error: The gateway daemon failed\n[gateway]   caused by: Cannot use the route tokens\nkrbottle init: gateway exited (exit status: 1)\n[gateway] error: The gateway daemon failed\n[gateway]   caused by: bad CA\n[other] error: no\n";
        assert_eq!(
            super::last_error(log, "gateway").as_deref(),
            Some("The gateway daemon failed: bad CA")
        );
        assert_eq!(super::last_error("[gateway] listening\n", "gateway"), None);
    }

    #[test]
    fn chosen_host_ports_are_free_distinct_and_per_daemon() {
        let daemons = &crate::daemon::DAEMONS.iter().collect::<Vec<_>>();
        let ports = super::free_host_ports(daemons).unwrap();
        let names: Vec<&str> = ports.keys().map(String::as_str).collect();
        assert_eq!(names, ["gateway", "git-gate", "supervise"]);
        let distinct: std::collections::BTreeSet<u16> = ports.values().copied().collect();
        assert_eq!(distinct.len(), 3, "{ports:?}");
        // Released for the bundle: each can be listened on again.
        for port in ports.values() {
            std::net::TcpListener::bind(("127.0.0.1", *port)).unwrap();
        }
    }
}
