//! `krbottle bench run [IMAGE]`: what `krbottle run` costs before the guest boots, by phase,
//! against `docker run --rm IMAGE true` of the same image, timed in the same run.
//!
//! The image is unpacked once (not timed). Each krbottle run is made in-process through the
//! same library calls as `krbottle run` (`vm::prepare::prepare`, then
//! `vm::launch::launch_timed`, which reports its phases as durations, not log lines), plus the
//! start of a fresh krbottle process (`krbottle --version`) for the exec that an invocation
//! pays. A run boots the cached rootfs as a bottle does (an overlay on Linux, a clone on macOS,
//! made by `state::BottleDirs::writable_root` and timed with the checks) with one endpoint to a
//! throwaway listener (relayed on Linux, dialled directly on macOS), and is timed up to
//! `krun_start_enter`: what follows is the
//! hypervisor's boot, which some machines (nested PVM) refuse. Docker's time includes its
//! container's whole life, so the ratio says how much krbottle adds before the hypervisor takes
//! over, relative to a container start; it is not a boot-to-boot comparison.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use serde::Serialize;

use super::{median, ms, time_docker};
use crate::docker::Engine;
use crate::image::Ownership;
use crate::image::clone::WritableRoot;
use crate::image::prepare::unpack_stream;
use crate::image::tree::remove_tree;
use crate::output::Reporter;
use crate::vm::config::{Endpoint, GuestUser, Overlay};
use crate::vm::launch::{Outcome, launch_timed};
use crate::vm::prepare::{Endpoints, Root, VmRequest, prepare};

/// What to measure.
#[derive(Clone, Debug)]
pub struct RunBench {
    /// An image reference in the local engine; unpacked once (not timed) and booted.
    pub image: String,
    /// Timed runs per contender (the median is reported).
    pub runs: u32,
}

/// The ratio this bench is judged against: krbottle's setup ≤ a tenth of `docker run … true`.
const TARGET_RATIO: f64 = 0.1;

/// One krbottle run's phases, each the time since the previous one ended.
#[derive(Clone, Copy, Debug, Default)]
struct RunPhases {
    process_start: Duration,
    prepare: Duration,
    namespaces: Duration,
    config_and_relays: Duration,
    libkrun_config: Duration,
}

impl RunPhases {
    fn total(&self) -> Duration {
        self.process_start
            + self.prepare
            + self.namespaces
            + self.config_and_relays
            + self.libkrun_config
    }
}

#[derive(Debug, Serialize)]
struct PhaseReport {
    name: &'static str,
    what: &'static str,
    median_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct RunReport {
    image: String,
    runs: u32,
    /// krbottle's phases, medians of each phase over the runs.
    phases: Vec<PhaseReport>,
    /// Median of the runs' totals (not the sum of the phase medians).
    krbottle_total_ms: f64,
    docker_run_ms: f64,
    /// krbottle_total_ms ÷ docker_run_ms (target ≤ 0.1).
    ratio: f64,
    target_ratio: f64,
    /// Always false: the guest's boot is not part of krbottle's time.
    boot_included: bool,
    /// How the VMM ended after `krun_start_enter` on this machine (the last run).
    vmm_outcome: String,
}

/// Runs the bench; the timed runs are blocking and run on a blocking thread.
pub async fn run(args: &RunBench, reporter: &Reporter) -> anyhow::Result<RunReport> {
    let engine = Engine::connect().await?;
    engine.inspect(&args.image).await.with_context(|| {
        format!(
            "Image {} is not in the local Docker engine; build it (scripts/build-base-image.sh for the default) or name another",
            args.image
        )
    })?;
    let (args, reporter) = (args.clone(), reporter.clone());
    tokio::task::spawn_blocking(move || measure(&engine, &args, &reporter)).await?
}

fn measure(engine: &Engine, args: &RunBench, reporter: &Reporter) -> anyhow::Result<RunReport> {
    let work = tempfile::Builder::new()
        .prefix("krbottle-bench-run-")
        .tempdir()
        .context("Could not create a scratch dir in the temp dir")?;
    let lower = work.path().join("lower");
    reporter.status(format!("unpacking {} (not timed)", args.image));
    unpack_stream(
        engine.save(&args.image),
        &lower,
        Ownership::default_here(),
        &ProgressBar::hidden(),
    )
    .with_context(|| format!("Could not unpack {}", args.image))?;

    // The endpoint's upstream: `run` checks it accepts connections before launching.
    let upstream = TcpListener::bind("127.0.0.1:0").context("Could not listen on 127.0.0.1")?;
    let port = upstream.local_addr()?.port();
    let endpoint = Endpoint {
        // Where the guest dials the upstream itself, it does so on the upstream's own port.
        guest_port: if crate::vm::confine::GUEST_DIALS_PUBLISHED_PORTS {
            port
        } else {
            crate::ports::GATEWAY
        },
        host: "127.0.0.1".into(),
        port,
    };
    std::thread::spawn(move || {
        for conn in upstream.incoming() {
            drop(conn);
        }
    });

    let exe = std::env::current_exe().context("Could not find krbottle's own binary")?;
    let ours_once = |i: u32| -> anyhow::Result<(RunPhases, Outcome)> {
        let dir = work.path().join(format!("run-{i}"));
        let r = time_krbottle_run(&exe, &lower, &dir, &endpoint);
        remove_tree(&dir).with_context(|| format!("Could not clean {}", dir.display()))?;
        r
    };
    let docker_once = || time_docker(&["run", "--rm", &args.image, "true"]);

    // One untimed round each: the binary, the rootfs and the image are in the page cache for
    // both contenders alike.
    reporter.status("warming up (not timed)");
    let (_, warm) = ours_once(0)?;
    if let Outcome::VmmFailed(why) = &warm {
        reporter.status(format!(
            "note: the hypervisor here refuses the guest after krun_start_enter ({why}); the \
             timing stops at krun_start_enter, so the bench goes on and libkrun's error line \
             after each run is expected"
        ));
    }
    docker_once()?;
    let mut ours = Vec::new();
    let mut docker = Vec::new();
    let mut outcome = String::new();
    for i in 1..=args.runs {
        reporter.status(format!("run {i}/{}", args.runs));
        let (phases, end) = ours_once(i)?;
        outcome = describe(&end);
        ours.push(phases);
        docker.push(docker_once()?);
    }

    let phase = |f: PhaseOf| ms(median(ours.iter().map(f).collect()));
    let krbottle_total = median(ours.iter().map(RunPhases::total).collect());
    let docker_run = median(docker);
    Ok(RunReport {
        image: args.image.clone(),
        runs: args.runs,
        phases: PHASES
            .iter()
            .map(|&(name, what, of)| PhaseReport {
                name,
                what,
                median_ms: phase(of),
            })
            .collect(),
        krbottle_total_ms: ms(krbottle_total),
        docker_run_ms: ms(docker_run),
        ratio: krbottle_total.as_secs_f64() / docker_run.as_secs_f64(),
        target_ratio: TARGET_RATIO,
        boot_included: false,
        vmm_outcome: outcome,
    })
}

/// One phase's time in a run.
type PhaseOf = fn(&RunPhases) -> Duration;

/// The phases of a run, as reported: name, what it covers, its time in a run.
const PHASES: [(&str, &str, PhaseOf); 5] = [
    (
        "process_start",
        "a fresh krbottle process (krbottle --version)",
        |p: &RunPhases| p.process_start,
    ),
    (
        "prepare",
        "the writable root (overlay dirs, or a clone on macOS), then run's checks: rootfs, command, endpoint upstream, the hypervisor, libkrunfw",
        |p: &RunPhases| p.prepare,
    ),
    (
        "namespaces",
        "VMM child spawned in its user, network and mount namespaces",
        |p: &RunPhases| p.namespaces,
    ),
    (
        "config_and_relays",
        "config sent, overlay mounted, lo up, endpoint relayed",
        |p: &RunPhases| p.config_and_relays,
    ),
    (
        "libkrun_config",
        "libkrun configured, krun_start_enter called",
        |p: &RunPhases| p.libkrun_config,
    ),
];

/// One krbottle run of `true` in a bottle's writable root over `lower`, the bottle's state
/// under `dir`.
fn time_krbottle_run(
    exe: &Path,
    lower: &Path,
    dir: &Path,
    endpoint: &Endpoint,
) -> anyhow::Result<(RunPhases, Outcome)> {
    let t = Instant::now();
    let status = Command::new(exe)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .context("Could not start krbottle --version")?;
    if !status.success() {
        bail!("krbottle --version failed ({status})");
    }
    let process_start = t.elapsed();

    let t = Instant::now();
    let dirs = crate::state::StateRoot::at(dir).bottle("bench")?;
    let root = match dirs.writable_root(lower, &ProgressBar::hidden())? {
        WritableRoot::Overlay { lower, upper } => {
            let mount_point = dirs.dir().join("mnt");
            std::fs::create_dir_all(&mount_point)
                .with_context(|| format!("Could not create {}", mount_point.display()))?;
            Root::Overlay {
                mount_point,
                overlay: Overlay::new(lower, upper)?,
            }
        }
        WritableRoot::Copy { root } => Root::Dir(root),
    };
    let request = VmRequest {
        cpus: 1,
        memory_mib: 512,
        root,
        shares: Vec::new(),
        argv: vec!["true".into()],
        env_files: Vec::new(),
        env: Vec::new(),
        workdir: "/".into(),
        user: GuestUser::ROOT,
        endpoints: Endpoints::Now(vec![endpoint.clone()]),
        binds: Vec::new(),
        provision: Vec::new(),
        only_if_bootable: false,
    };
    let prepared = prepare(request, &Reporter::silent())?;
    let prepared_in = t.elapsed();
    let upstreams = prepared.upstreams.clone();
    let (outcome, phases) = launch_timed(
        &prepared.config,
        &prepared.mapping,
        move || Ok(upstreams),
        |_| {},
    )?;
    let Some(entered) = phases.entered else {
        bail!(
            "The VMM child ended before krun_start_enter ({}); rerun `krbottle run` with -v to see why",
            describe(&outcome)
        );
    };
    Ok((
        RunPhases {
            process_start,
            prepare: prepared_in,
            namespaces: phases.spawned,
            config_and_relays: phases.configured.saturating_sub(phases.spawned),
            libkrun_config: entered.saturating_sub(phases.configured),
        },
        outcome,
    ))
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited(code) => format!("the guest booted and exited with {code}"),
        Outcome::VmmFailed(why) => format!("the hypervisor did not boot the guest: {why}"),
        Outcome::NotBooted(why) => format!("not booted: {why}"),
    }
}

impl crate::bench::Report for RunReport {
    fn print(&self) {
        let r = self;
        println!("bench run {} (median of {} runs)", r.image, r.runs);
        println!(
            "  krbottle run, from invocation to krun_start_enter (overlay root, 1 endpoint relayed):"
        );
        for p in &r.phases {
            println!("    {:<18} {:>9.2} ms  {}", p.name, p.median_ms, p.what);
        }
        println!("    {:<18} {:>9.2} ms", "total", r.krbottle_total_ms);
        println!(
            "  docker run --rm IMAGE true  {:>9.2} ms  create, start, run `true`, remove",
            r.docker_run_ms
        );
        println!(
            "  ratio krbottle / docker: {:.3}x (target <= {})",
            r.ratio, r.target_ratio
        );
        println!(
            "  Meaning: krbottle's work before the hypervisor takes over costs {:.1}% of a whole \
         `docker run … true`. The guest's boot is NOT included (docker's time includes its \
         container's start and `true`).",
            r.ratio * 100.0
        );
        println!("  After krun_start_enter here: {}", r.vmm_outcome);
    }
}
