//! `start` and `resume`: the flow of a bottle's run (see the module above), the same on Linux
//! and macOS; where they differ (the root, how the guest reaches the bundle) the library below
//! says how (`state::BottleDirs::writable_root`, `vm::confine`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{BottleError, MAX_SKILL_BYTES, Runtime, STOP_TIMEOUT};
use crate::bundle::process::ProcessBundle;
use crate::bundle::{self, BundleRecord, BundleRequest, ContainerError};
use crate::daemon::DaemonSpec;
use crate::docker::{DockerError, Engine};
use crate::image::Ownership;
use crate::image::clone::WritableRoot;
use crate::image::prepare::{PrepareError, Source};
use crate::manifest::{Agent, ImageSource, Manifest};
use crate::output::Reporter;
use crate::plan::{BottlePlan, Cwd, PlanInput, Reach, Skill};
use crate::state::{BottleDirs, BottleRecord, StateRoot, now_secs};
use crate::sys::signals::{ChildSignaller, Signal, Termination};
use crate::vm::config::{GuestUser, Overlay};
use crate::vm::confine::GUEST_DIALS_PUBLISHED_PORTS;
use crate::vm::launch::{self, LaunchError, Outcome, Phases};
use crate::vm::prepare::{Endpoints, Root, VmRequest};

/// How the current directory goes into the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CwdChoice {
    #[default]
    None,
    Share,
    Copy,
}

/// What `krbottle start` asks for.
#[derive(Clone, Debug, Default)]
pub struct StartRequest {
    pub agent: String,
    /// The manifest; `None`: `krbottle.toml` here or in the nearest parent.
    pub manifest: Option<PathBuf>,
    /// The bottle's name; `None`: `<agent>-<4 random characters>`.
    pub name: Option<String>,
    pub cwd: CwdChoice,
    /// Plan only: build the image and prepare its root, print the plan, start nothing.
    pub dry_run: bool,
    /// The guest command, replacing the agent's and the image's.
    pub argv: Vec<String>,
}

/// How a start ended.
#[derive(Debug)]
pub enum Finished {
    /// `--dry-run`: the plan.
    Planned(Box<BottlePlan>),
    /// The guest ran; `outcome` is how it ended.
    Ran {
        name: String,
        outcome: Outcome,
        timings: Box<Timings>,
    },
}

/// When each step of a start finished, since it began (`krbottle bench start`).
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub plan: Duration,
    pub image: Duration,
    pub root: Duration,
    pub bundle_up: Option<Duration>,
    pub bundle_up_alone: Option<Duration>,
    pub vmm: Option<Phases>,
    pub vmm_started_at: Option<Duration>,
    pub exited: Option<Duration>,
    pub teardown: Option<Duration>,
}

/// `krbottle start`.
pub async fn start(req: StartRequest, reporter: &Reporter) -> Result<Finished, BottleError> {
    let cwd = std::env::current_dir().map_err(BottleError::Cwd)?;
    let manifest_path = match &req.manifest {
        Some(p) => p.clone(),
        None => Manifest::find_upward(&cwd).ok_or(BottleError::NoManifest { dir: cwd.clone() })?,
    };
    let state = StateRoot::open_default();
    let name = match &req.name {
        Some(n) => {
            let dirs = state.bottle(n)?;
            if dirs.is_running() {
                return Err(BottleError::Running(n.clone()));
            }
            if dirs.read_record()?.is_some() {
                return Err(BottleError::Exists(n.clone()));
            }
            n.clone()
        }
        None => fresh_name(&state, &req.agent)?,
    };
    let cwd = match req.cwd {
        CwdChoice::None => Cwd::None,
        CwdChoice::Share => Cwd::Share { path: cwd },
        CwdChoice::Copy => Cwd::Copy { path: cwd },
    };
    let spec = RunSpec {
        manifest: manifest_path,
        agent: req.agent,
        name,
        argv: req.argv,
        cwd,
        dry_run: req.dry_run,
        created: None,
    };
    run(spec, &state, reporter).await
}

/// `krbottle resume NAME`: boots the stopped bottle again on its kept root, with a fresh
/// bundle, from the manifest and command it was started with.
pub async fn resume(name: &str, reporter: &Reporter) -> Result<Finished, BottleError> {
    let state = StateRoot::open_default();
    let dirs = state.bottle(name)?;
    let record = dirs
        .read_record()?
        .ok_or_else(|| BottleError::NoBottle(name.to_string()))?;
    if dirs.is_running() {
        return Err(BottleError::Running(name.to_string()));
    }
    let spec = RunSpec {
        manifest: record.manifest.clone(),
        agent: record.agent.clone(),
        name: name.to_string(),
        argv: record.argv.clone(),
        cwd: record.cwd.clone(),
        dry_run: false,
        created: Some(record.created),
    };
    run(spec, &state, reporter).await
}

/// One start or resume.
struct RunSpec {
    manifest: PathBuf,
    agent: String,
    name: String,
    argv: Vec<String>,
    cwd: Cwd,
    dry_run: bool,
    /// When the bottle was first created (resume); `None` for a new bottle.
    created: Option<u64>,
}

/// What teardown needs to know about what was started.
struct Started {
    engine: Option<Engine>,
    runtime: Runtime,
    /// A Docker bundle may exist (its `up` was called).
    docker_bundle: bool,
    process_bundle: Option<ProcessBundle>,
}

async fn run(
    spec: RunSpec,
    state: &StateRoot,
    reporter: &Reporter,
) -> Result<Finished, BottleError> {
    let begun = Instant::now();
    if let Cwd::Share { path } = &spec.cwd {
        // The guest must have no path to the state: the approval queue, the CA keys.
        state.refuse_share(path)?;
    }
    let mut signals = Termination::listen().map_err(BottleError::Signals)?;
    let (cancel_tx, cancel_rx) = watch::channel(None::<Signal>);
    let vmm: Arc<Mutex<Option<ChildSignaller>>> = Arc::default();
    let stopping = Arc::new(AtomicBool::new(false));
    let forwarder = {
        let (vmm, stopping) = (vmm.clone(), stopping.clone());
        tokio::spawn(async move {
            loop {
                let sig = signals.recv().await;
                stopping.store(true, Ordering::SeqCst);
                let _ = cancel_tx.send(Some(sig));
                let child = vmm.lock().ok().and_then(|mut c| c.take());
                if let Some(child) = child {
                    let _ = child.send(sig);
                    tokio::time::sleep(STOP_TIMEOUT).await;
                    let _ = child.kill();
                }
            }
        })
    };
    let dirs = state.bottle(&spec.name)?;
    let _lock = if spec.dry_run {
        None
    } else {
        Some(dirs.lock()?)
    };
    let mut started = Started {
        engine: None,
        runtime: Runtime::from_env()?,
        docker_bundle: false,
        process_bundle: None,
    };
    let ctl = Control {
        cancel: cancel_rx,
        stopping,
        vmm,
    };
    let result = run_locked(&spec, state, &dirs, &mut started, ctl, begun, reporter).await;
    forwarder.abort();
    if spec.dry_run {
        return result;
    }
    let teardown_begun = Instant::now();
    teardown(&spec.name, state, &dirs, started).await;
    match result {
        Ok(Finished::Ran {
            name,
            outcome,
            mut timings,
        }) => {
            timings.teardown = Some(teardown_begun.elapsed());
            Ok(Finished::Ran {
                name,
                outcome,
                timings,
            })
        }
        other => other,
    }
}

/// Runs `fut` unless a termination signal comes first.
async fn cancellable<T>(
    cancel: &mut watch::Receiver<Option<Signal>>,
    fut: impl std::future::Future<Output = Result<T, BottleError>>,
) -> Result<T, BottleError> {
    if let Some(sig) = *cancel.borrow() {
        return Err(BottleError::Interrupted(sig));
    }
    tokio::select! {
        r = fut => r,
        _ = cancel.changed() => Err(BottleError::Interrupted(cancel.borrow().unwrap_or(Signal::Terminate))),
    }
}

/// How a run is stopped from outside: the signal that came, as a watch (steps before boot
/// select on it) and as a flag (the bundle's readiness wait polls it), and the VMM child to
/// forward signals to once it exists.
struct Control {
    cancel: watch::Receiver<Option<Signal>>,
    stopping: Arc<AtomicBool>,
    vmm: Arc<Mutex<Option<ChildSignaller>>>,
}

async fn run_locked(
    spec: &RunSpec,
    state: &StateRoot,
    dirs: &BottleDirs,
    started: &mut Started,
    ctl: Control,
    begun: Instant,
    reporter: &Reporter,
) -> Result<Finished, BottleError> {
    let Control {
        mut cancel,
        stopping,
        vmm,
    } = ctl;
    let mut timings = Timings::default();
    let manifest = Manifest::load(&spec.manifest)?;
    let agent = manifest
        .agents
        .get(&spec.agent)
        .cloned()
        .ok_or_else(|| BottleError::NoAgent {
            agent: spec.agent.clone(),
            manifest: spec.manifest.clone(),
            known: manifest
                .agents
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    // The manifest's bottle, named as this instance: its bundle, CA and logs are this bottle's.
    let mut bottle = bundle::find_bottle(&manifest, &agent.bottle)?;
    bottle.name = spec.name.clone();
    // The tokens first: a start without them would fail later, after the image build.
    if !spec.dry_run {
        let check = BundleRequest {
            bottle: &bottle,
            image: String::new(),
            daemons: Vec::new(),
            files: Vec::new(),
            extra_secrets: Vec::new(),
            host_ports: Default::default(),
        };
        bundle::container::secrets(&check, &|n| std::env::var(n).ok())?;
    }
    let needs_engine = matches!(started.runtime, Runtime::Docker)
        || !matches!(agent.image, ImageSource::Archive(_));
    if needs_engine {
        let engine = cancellable(&mut cancel, async { Ok(Engine::connect().await?) }).await?;
        started.engine = Some(engine);
    }
    let engine = started.engine.clone();
    // Where the guest finds the daemons: their own ports relayed (Linux), or host ports chosen
    // now, before the bundle publishes them, and dialled directly (macOS).
    let reach = if GUEST_DIALS_PUBLISHED_PORTS {
        let daemons = crate::daemon::enabled_for(&bottle);
        Reach::Published(bundle::container::free_host_ports(&daemons)?)
    } else {
        Reach::Relayed
    };
    let host_ports = match &reach {
        Reach::Published(ports) => ports.clone(),
        Reach::Relayed => Default::default(),
    };

    // The bundle comes up while everything else is done: it needs only the bottle and its CA.
    let ca_pem = if spec.dry_run {
        crate::ca::BottleCa::generate(&spec.name)
            .map(|ca| ca.cert_pem().to_string())
            .map_err(|source| ContainerError::Ca {
                bottle: spec.name.clone(),
                source,
            })?
    } else {
        bundle::container::ensure_ca(&dirs.bundle_dir(), &spec.name)?
    };
    let mut bundle = (!spec.dry_run).then(|| {
        if matches!(started.runtime, Runtime::Docker) {
            started.docker_bundle = true;
        }
        BundleStart {
            handle: Some(tokio::spawn(bundle_up(
                started.runtime.clone(),
                engine.clone(),
                bottle.clone(),
                host_ports,
                state.clone(),
                stopping.clone(),
                reporter.clone(),
            ))),
            process: None,
            began: Instant::now(),
        }
    });
    let ctx = BootContext {
        spec,
        dirs,
        manifest: &manifest,
        agent: &agent,
        bottle: &bottle,
        engine: engine.as_ref(),
        ca_pem: &ca_pem,
        reach: &reach,
        vmm: &vmm,
        begun,
        reporter,
    };
    let result = prepare_and_boot(&ctx, &mut cancel, bundle.as_mut(), &mut timings).await;
    // Whatever happened, the bundle's start has ended (it stops waiting when asked) before
    // teardown looks for what it made.
    if let Some(mut bundle) = bundle {
        if bundle.handle.is_some() {
            stopping.store(true, Ordering::SeqCst);
            let _ = bundle.wait().await;
        }
        started.process_bundle = bundle.process;
    }
    match result? {
        Step::Planned(plan) => Ok(Finished::Planned(plan)),
        Step::Ran(outcome) => Ok(Finished::Ran {
            name: spec.name.clone(),
            outcome,
            timings: Box::new(timings),
        }),
    }
}

/// What [`prepare_and_boot`] got to.
enum Step {
    Planned(Box<BottlePlan>),
    Ran(Outcome),
}

/// What the bundle's start ends with: its record, and the daemons' processes when they run on
/// the host.
type BundleStarted = Result<(BundleRecord, Option<ProcessBundle>), BottleError>;

/// The bundle's start, running beside the rest.
struct BundleStart {
    /// Until it has ended.
    handle: Option<tokio::task::JoinHandle<BundleStarted>>,
    /// The daemons' processes, when they run on the host and came up.
    process: Option<ProcessBundle>,
    began: Instant,
}

impl BundleStart {
    /// Waits for the start to end. Cancel-safe: dropped before it ends, the start goes on and
    /// can be waited for again.
    async fn wait(&mut self) -> Result<BundleRecord, BottleError> {
        let Some(handle) = self.handle.as_mut() else {
            return Err(BottleError::Join(None));
        };
        let result = handle.await;
        self.handle = None;
        let (record, process) = result.map_err(|e| BottleError::Join(Some(e)))??;
        self.process = process;
        Ok(record)
    }
}

/// What [`prepare_and_boot`] works from.
struct BootContext<'a> {
    spec: &'a RunSpec,
    dirs: &'a BottleDirs,
    manifest: &'a Manifest,
    agent: &'a Agent,
    bottle: &'a crate::manifest::Bottle,
    engine: Option<&'a Engine>,
    ca_pem: &'a str,
    reach: &'a Reach,
    vmm: &'a Arc<Mutex<Option<ChildSignaller>>>,
    begun: Instant,
    reporter: &'a Reporter,
}

/// Image, plan, root and the VMM; the guest boots once the bundle (its task, started at the
/// given instant; none for a dry run) answers.
async fn prepare_and_boot(
    ctx: &BootContext<'_>,
    cancel: &mut watch::Receiver<Option<Signal>>,
    bundle: Option<&mut BundleStart>,
    timings: &mut Timings,
) -> Result<Step, BottleError> {
    let BootContext {
        spec,
        dirs,
        manifest,
        agent,
        bottle,
        engine,
        ca_pem,
        reach,
        vmm,
        begun,
        reporter,
    } = *ctx;
    // Image: build (Dockerfile agents) and the cached root filesystem.
    let source = cancellable(cancel, image_source(engine, manifest, agent, reporter)).await?;
    let ownership = Ownership::default_here();
    let prepared = cancellable(cancel, async {
        Ok(crate::image::prepare::prepare(engine, &source, ownership, reporter).await?)
    })
    .await?;
    timings.image = begun.elapsed();

    // Plan.
    let lower = prepared.entry.rootfs.clone();
    let upper = dirs.overlay_upper();
    let guest_file = |path: &str| -> String {
        // The bottle's own changes first (the overlay's upper layer, or its private copy).
        for layer in [upper.join("diff"), dirs.private_rootfs(), lower.clone()] {
            if let Ok(Some(bytes)) = crate::provision::read_guest_file(&layer, path) {
                return String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        String::new()
    };
    let (passwd, group) = (guest_file("/etc/passwd"), guest_file("/etc/group"));
    let prompt = match &agent.prompt {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|source| BottleError::Read {
                path: p.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let skills = agent
        .skills
        .iter()
        .map(|d| read_skill(d))
        .collect::<Result<Vec<_>, _>>()?;
    let daemons: Vec<&'static DaemonSpec> = crate::daemon::enabled_for(bottle);
    let image_name = source.to_string();
    let plan = crate::plan::plan(&PlanInput {
        name: &spec.name,
        agent,
        bottle,
        image: &image_name,
        image_id: &prepared.entry.meta.image_id,
        image_config: &prepared.config,
        passwd: &passwd,
        group: &group,
        ca_pem,
        prompt: prompt.as_deref(),
        skills: &skills,
        argv: &spec.argv,
        cwd: &spec.cwd,
        daemons: &daemons,
        reach,
    })?;
    timings.plan = begun.elapsed();
    let Some(bundle) = bundle else {
        return Ok(Step::Planned(Box::new(plan)));
    };

    // The record: the bottle exists from here on.
    let now = now_secs();
    let mut record = BottleRecord {
        name: spec.name.clone(),
        agent: agent.name.clone(),
        bottle: agent.bottle.clone(),
        manifest: std::fs::canonicalize(&spec.manifest).unwrap_or_else(|_| spec.manifest.clone()),
        image: image_name.clone(),
        image_id: prepared.entry.meta.image_id.clone(),
        ownership,
        created: spec.created.unwrap_or(now),
        started: now,
        argv: spec.argv.clone(),
        cwd: spec.cwd.clone(),
        pid: Some(std::process::id()),
        endpoints: Default::default(),
    };
    dirs.write_record(&record)?;

    // The bottle's own root: an overlay over the cache, mounted by the VMM child (Linux), or
    // its own clone of the cache (macOS).
    let spinner = reporter.spinner("making the bottle's own root");
    let writable = dirs.writable_root(&lower, &spinner);
    spinner.finish_and_clear();
    let root = match writable? {
        WritableRoot::Overlay { lower, upper } => {
            let mount_point = dirs.dir().join("mnt");
            std::fs::create_dir_all(&mount_point).map_err(|source| BottleError::Read {
                path: mount_point.clone(),
                source,
            })?;
            Root::Overlay {
                mount_point,
                overlay: Overlay::new(lower, upper)
                    .map_err(crate::vm::prepare::PrepareError::from)?,
            }
        }
        WritableRoot::Copy { root } => Root::Dir(root),
    };
    let ports: Vec<u16> = plan.endpoints.iter().map(|e| e.guest_port).collect();
    let endpoints = match reach {
        Reach::Relayed => Endpoints::Later(ports),
        Reach::Published(_) => Endpoints::Published(ports),
    };
    let binds = match &spec.cwd {
        Cwd::Share { path } => vec![path.clone()],
        _ => Vec::new(),
    };
    let request = VmRequest {
        cpus: plan.cpus,
        memory_mib: plan.memory_mib,
        root,
        shares: Vec::new(),
        argv: plan.argv.clone(),
        env_files: Vec::new(),
        env: plan.env.clone(),
        workdir: plan.workdir.clone(),
        user: GuestUser {
            uid: plan.user.uid,
            gid: plan.user.gid,
        },
        endpoints,
        binds,
        provision: plan.files.clone(),
        only_if_bootable: true,
    };
    let vm = crate::vm::prepare::prepare(request, reporter)?;
    timings.root = begun.elapsed();

    // The VMM child sets up (mounts, provisions, listens) while the bundle comes up; the guest
    // boots once every daemon answers.
    let (up_tx, up_rx) = std::sync::mpsc::channel::<Result<Vec<SocketAddr>, String>>();
    let on_spawn = {
        let vmm = vmm.clone();
        move |child| {
            if let Ok(mut slot) = vmm.lock() {
                *slot = Some(child);
            }
        }
    };
    let upstreams = move || match up_rx.recv() {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(why)) => Err(LaunchError::Upstreams(why)),
        Err(_) => Err(LaunchError::Upstreams("the start was abandoned".into())),
    };
    let (config, mapping) = (vm.config, vm.mapping);
    timings.vmm_started_at = Some(begun.elapsed());
    let mut launch = tokio::task::spawn_blocking(move || {
        launch::launch_timed(&config, &mapping, upstreams, on_spawn)
    });
    let up = tokio::select! {
        r = bundle.wait() => r,
        done = &mut launch => {
            // The VMM ended before the bundle was up: its setup failed (or it was killed).
            return match done.map_err(|e| BottleError::Join(Some(e)))? {
                Err(e) => Err(e.into()),
                Ok((outcome, _)) => Ok(Step::Ran(outcome)),
            };
        }
    };
    let bundle_record = match up {
        Ok(record) => record,
        Err(e) => {
            let _ = up_tx.send(Err(e.to_string()));
            let _ = launch.await;
            return Err(match e {
                BottleError::Container(ContainerError::Cancelled { .. }) => {
                    BottleError::Interrupted(cancel.borrow().unwrap_or(Signal::Terminate))
                }
                e => e,
            });
        }
    };
    timings.bundle_up = Some(begun.elapsed());
    timings.bundle_up_alone = Some(bundle.began.elapsed());
    // The relayed endpoints' upstreams (none where the guest dials the published ports).
    let addrs = plan
        .endpoints
        .iter()
        .filter(|e| e.relayed)
        .map(|e| bundle_record.endpoints.get(&e.daemon).copied())
        .collect::<Option<Vec<_>>>();
    let Some(addrs) = addrs else {
        let _ = up_tx.send(Err("the bundle publishes no endpoint for a daemon".into()));
        let _ = launch.await;
        return Err(ContainerError::FindPort {
            name: bundle_record.container.clone(),
            daemon: "a planned daemon",
        }
        .into());
    };
    record.endpoints = bundle_record.endpoints.clone();
    dirs.write_record(&record)?;
    let _ = up_tx.send(Ok(addrs));
    let (outcome, phases) = launch.await.map_err(|e| BottleError::Join(Some(e)))??;
    timings.vmm = Some(phases);
    timings.exited = Some(begun.elapsed());
    Ok(Step::Ran(outcome))
}

/// Brings the bundle up where the runtime says, with the bundle image built if needed, on the
/// chosen `host_ports` (the others random); stops waiting for its daemons when `stopping` is
/// set.
async fn bundle_up(
    runtime: Runtime,
    engine: Option<Engine>,
    bottle: crate::manifest::Bottle,
    host_ports: std::collections::BTreeMap<String, u16>,
    state: StateRoot,
    stopping: Arc<AtomicBool>,
    reporter: Reporter,
) -> BundleStarted {
    let env = |name: &str| std::env::var(name).ok();
    let mut request = BundleRequest::for_bottle(&bottle, "")?;
    request.host_ports = host_ports;
    match runtime {
        Runtime::Docker => {
            let engine = engine.ok_or(DockerError::Build {
                what: "the bundle".into(),
                message: "no Docker engine".into(),
            })?;
            // The cheap part of gc first: bundles whose krbottle is gone.
            if let Err(e) = bundle::container::gc(&engine, &state).await {
                tracing::debug!("bundle gc before start: {e}");
            }
            request.image = bundle::ensure_image(&engine, &reporter).await?;
            let record = bundle::container::up(&engine, &request, &state, env, &stopping).await?;
            Ok((record, None))
        }
        Runtime::Process => {
            let b = crate::bundle::process::up(&request, &state, env).await?;
            Ok((b.record.clone(), Some(b)))
        }
    }
}

/// Removes what the start made for this run; keeps the bottle's root and record.
async fn teardown(name: &str, state: &StateRoot, dirs: &BottleDirs, started: Started) {
    if let Some(b) = started.process_bundle {
        b.down().await;
    }
    if started.docker_bundle
        && let Some(engine) = &started.engine
    {
        save_logs(engine, name, dirs).await;
        if let Err(e) = bundle::container::down(engine, state, name).await {
            eprintln!("warning: could not remove bottle {name}'s bundle ({e}); `krbottle gc` will");
        }
    }
    if let Ok(Some(mut record)) = dirs.read_record() {
        record.pid = None;
        record.endpoints.clear();
        if let Err(e) = dirs.write_record(&record) {
            tracing::warn!("could not update bottle {name}'s record: {e}");
        }
    }
}

/// Keeps the bundle's logs of this run (its container goes away) under the bottle's logs dir.
async fn save_logs(engine: &Engine, name: &str, dirs: &BottleDirs) {
    let dir = dirs.logs_dir();
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let mut out = Vec::new();
    let mut err = Vec::new();
    use futures_util::StreamExt;
    let mut stream = std::pin::pin!(bundle::container::logs(engine, name, false));
    while let Some(Ok(item)) = stream.next().await {
        match item {
            bollard::container::LogOutput::StdErr { message } => err.extend_from_slice(&message),
            other => out.extend_from_slice(&other.into_bytes()),
        }
    }
    let stamp = now_secs();
    let _ = crate::sys::fs::write_atomic(&dir.join(format!("{stamp}.out")), &out, 0o600);
    let _ = crate::sys::fs::write_atomic(&dir.join(format!("{stamp}.err")), &err, 0o600);
}

/// Where the agent's image comes from; a Dockerfile agent's image is built first.
async fn image_source(
    engine: Option<&Engine>,
    manifest: &Manifest,
    agent: &Agent,
    reporter: &Reporter,
) -> Result<Source, BottleError> {
    Ok(match &agent.image {
        ImageSource::Image(r) => Source::Engine(r.clone()),
        ImageSource::Archive(p) => Source::Archive(p.clone()),
        ImageSource::Dockerfile(file) => {
            let engine = engine.ok_or(PrepareError::NoEngine)?;
            let context = file.parent().unwrap_or(Path::new("."));
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("Dockerfile");
            let tag = agent_tag(manifest, agent);
            crate::image::prepare::build(engine, context, Some(name), &tag, reporter).await?;
            Source::Engine(tag)
        }
    })
}

/// The tag of a Dockerfile agent's image: per agent and project, so two projects' agents of the
/// same name do not share it.
fn agent_tag(manifest: &Manifest, agent: &Agent) -> String {
    use sha2::Digest;
    let dir = manifest
        .path
        .parent()
        .and_then(|d| std::fs::canonicalize(d).ok())
        .unwrap_or_default();
    let hash = hex::encode(sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes()));
    format!("krbottle-agent/{}:{}", agent.name, &hash[..12])
}

/// A skill directory's regular files (links are not followed), for the plan.
fn read_skill(dir: &Path) -> Result<Skill, BottleError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BottleError::Read { path, source }
    };
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let here = dir.join(&rel);
        for entry in std::fs::read_dir(&here).map_err(read_err(&here))? {
            let entry = entry.map_err(read_err(&here))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(read_err(&path))?;
            let rel = rel.join(entry.file_name());
            if meta.is_dir() {
                todo.push(rel);
            } else if meta.is_file() {
                total += meta.len();
                if total > MAX_SKILL_BYTES {
                    return Err(BottleError::SkillTooLarge {
                        path: dir.to_path_buf(),
                    });
                }
                let data = std::fs::read(&path).map_err(read_err(&path))?;
                files.push((rel.to_string_lossy().into_owned(), data));
            }
        }
    }
    files.sort();
    Ok(Skill {
        dir: dir.display().to_string(),
        files,
    })
}

/// `<agent>-<4 random characters>`, not taken yet.
fn fresh_name(state: &StateRoot, agent: &str) -> Result<String, BottleError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 64];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        let seed = now_secs() ^ u64::from(std::process::id()) << 32;
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> (i % 8 * 8)) as u8 ^ i as u8;
        }
    }
    let prefix: String = agent.chars().take(58).collect();
    for chunk in bytes.chunks(4) {
        let suffix: String = chunk
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect();
        let name = format!("{prefix}-{suffix}");
        let dirs = state.bottle(&name)?;
        if !dirs.dir().exists() {
            return Ok(name);
        }
    }
    Err(BottleError::Exists(format!("{prefix}-…")))
}
