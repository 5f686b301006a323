//! `krbottle bench start AGENT`: a warm start by phase (the image built and cached, the bundle
//! image built: what a second start of a bottle pays), against `bundle up` alone and against
//! `docker run --rm IMAGE true` of the agent's image, timed in the same run.
//!
//! Each run starts a fresh bottle with `-- true` through the same library call as
//! `krbottle start` and removes it afterwards (not timed). The phases are the start's own
//! timestamps since its beginning. On a machine whose hypervisor cannot boot the guest the run
//! ends right after `krun_start_enter`, which is where the comparison stops anyway: the
//! target is that a warm start reaches `krun_start_enter` in at most 1.2× the time of the
//! bundle's own start (everything else hidden behind it), with at most 50 ms of host work on
//! the critical path outside the bundle.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::{median, ms, time_docker};
use crate::bottle::{self, Finished, StartRequest, Timings};
use crate::bundle::{BundleRequest, container};
use crate::docker::Engine;
use crate::manifest::Manifest;
use crate::output::Reporter;
use crate::state::StateRoot;

/// The targets the figures are judged against.
const TARGET_RATIO: f64 = 1.2;
const TARGET_HOST_WORK_MS: f64 = 50.0;

/// What to measure.
#[derive(Clone, Debug)]
pub struct StartBench {
    pub agent: String,
    pub manifest: Option<PathBuf>,
    pub runs: u32,
}

#[derive(Debug, Serialize)]
pub struct PhaseReport {
    name: &'static str,
    what: &'static str,
    /// Median over the runs, since the start began.
    at_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct StartReport {
    agent: String,
    image: String,
    runs: u32,
    phases: Vec<PhaseReport>,
    /// How long the bundle took to come up inside the starts (median).
    bundle_up_in_start_ms: f64,
    /// `bundle up` of the same bottle alone, nothing else running (median).
    bundle_up_alone_ms: f64,
    /// Start → `krun_start_enter` (median).
    to_krun_start_enter_ms: f64,
    /// to_krun_start_enter ÷ bundle_up_alone (target ≤ 1.2).
    ratio_vs_bundle_up: f64,
    target_ratio: f64,
    /// Critical-path time of the start outside the bundle's own start: to_krun_start_enter −
    /// bundle_up_in_start (target ≤ 50 ms).
    host_work_ms: f64,
    target_host_work_ms: f64,
    docker_run_true_ms: f64,
    /// How the last run's VMM ended (on a machine that cannot boot: right after
    /// `krun_start_enter`).
    vmm_outcome: String,
}

pub async fn run(opts: &StartBench, reporter: &Reporter) -> anyhow::Result<StartReport> {
    let request = |name: Option<String>, dry_run| StartRequest {
        agent: opts.agent.clone(),
        manifest: opts.manifest.clone(),
        name,
        dry_run,
        argv: vec!["true".into()],
        ..Default::default()
    };
    // Warm up (not timed): the image built and cached, the bundle image built.
    reporter.status("warming up: the agent's image and the bundle image (not timed)");
    let plan = match bottle::start(request(None, true), &Reporter::silent()).await? {
        Finished::Planned(plan) => plan,
        Finished::Ran { .. } => anyhow::bail!("a dry run ran"),
    };
    let engine = Engine::connect().await?;
    let tag = crate::bundle::ensure_image(&engine, reporter).await?;
    let state = StateRoot::open_default();

    let mut timings: Vec<Timings> = Vec::new();
    let mut outcome = String::new();
    for i in 0..=opts.runs {
        let name = format!("bench-start-{}-{i}", std::process::id());
        if i > 0 {
            reporter.status(format!("start {i}/{}", opts.runs));
        }
        let finished = bottle::start(request(Some(name.clone()), false), &Reporter::silent()).await;
        bottle::rm(&name, true).await.ok();
        match finished? {
            Finished::Ran {
                timings: t,
                outcome: o,
                ..
            } => {
                outcome = format!("{o:?}");
                // The first is a warm-up too: the page cache, the bundle image's layers.
                if i > 0 {
                    timings.push(*t);
                }
            }
            Finished::Planned(_) => anyhow::bail!("a start only planned"),
        }
    }

    // The bundle alone: the same bottle's bundle up and down, nothing else running.
    let manifest_path = match &opts.manifest {
        Some(p) => p.clone(),
        None => Manifest::find_upward(&std::env::current_dir()?)
            .context("no krbottle.toml here or above; pass --manifest")?,
    };
    let manifest = Manifest::load(&manifest_path)?;
    let agent = &manifest.agents[&opts.agent];
    let mut bottle_def = crate::bundle::find_bottle(&manifest, &agent.bottle)?;
    bottle_def.name = format!("bench-bundle-{}", std::process::id());
    let bundle_request = BundleRequest::for_bottle(&bottle_def, &tag)?;
    let never = AtomicBool::new(false);
    let mut alone = Vec::new();
    for _ in 0..=opts.runs {
        let t = Instant::now();
        container::up(
            &engine,
            &bundle_request,
            &state,
            |n| std::env::var(n).ok(),
            &never,
        )
        .await
        .context("bundle up of the bench bottle")?;
        alone.push(t.elapsed());
        container::down(&engine, &state, &bottle_def.name).await?;
    }
    alone.remove(0);
    let _ = std::fs::remove_dir_all(state.bottle(&bottle_def.name)?.dir());

    let mut peer = Vec::new();
    for _ in 0..=opts.runs {
        peer.push(time_docker(&["run", "--rm", &plan.image, "true"])?);
    }
    peer.remove(0);

    let at = |f: &dyn Fn(&Timings) -> Option<Duration>| -> f64 {
        let v: Vec<Duration> = timings.iter().filter_map(f).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            ms(median(v))
        }
    };
    let entered = |t: &Timings| Some(t.vmm_started_at? + t.vmm?.entered?);
    let to_enter = at(&entered);
    let bundle_in_start = at(&|t| t.bundle_up_alone);
    let bundle_alone = ms(median(alone));
    let phases = vec![
        PhaseReport {
            name: "image",
            what: "manifest, engine, image cache hit",
            at_ms: at(&|t| Some(t.image)),
        },
        PhaseReport {
            name: "plan",
            what: "the image's users, the CA, prompt and skills: the plan",
            at_ms: at(&|t| Some(t.plan)),
        },
        PhaseReport {
            name: "root",
            what: "the writable root and the VMM's checks",
            at_ms: at(&|t| Some(t.root)),
        },
        PhaseReport {
            name: "vmm_spawned",
            what: "the VMM child in its namespaces",
            at_ms: at(&|t| Some(t.vmm_started_at? + t.vmm?.spawned)),
        },
        PhaseReport {
            name: "vmm_ready",
            what: "overlay mounted, files provisioned, listeners made (in the child)",
            at_ms: at(&|t| Some(t.vmm_started_at? + t.vmm?.ready)),
        },
        PhaseReport {
            name: "bundle_up",
            what: "the bundle answers (started together with the VMM child)",
            at_ms: at(&|t| t.bundle_up),
        },
        PhaseReport {
            name: "krun_start_enter",
            what: "relays up, libkrun configured, krun_start_enter called",
            at_ms: to_enter,
        },
        PhaseReport {
            name: "exited",
            what: "the VMM ended",
            at_ms: at(&|t| t.exited),
        },
        PhaseReport {
            name: "teardown",
            what: "bundle logs saved, container and network removed (duration)",
            at_ms: at(&|t| t.teardown),
        },
    ];
    Ok(StartReport {
        agent: opts.agent.clone(),
        image: plan.image.clone(),
        runs: opts.runs,
        phases,
        bundle_up_in_start_ms: bundle_in_start,
        bundle_up_alone_ms: bundle_alone,
        to_krun_start_enter_ms: to_enter,
        ratio_vs_bundle_up: to_enter / bundle_alone,
        target_ratio: TARGET_RATIO,
        host_work_ms: to_enter - bundle_in_start,
        target_host_work_ms: TARGET_HOST_WORK_MS,
        docker_run_true_ms: ms(median(peer)),
        vmm_outcome: outcome,
    })
}

impl StartReport {
    pub fn print(&self) {
        println!(
            "bench start {} ({}, warm: image cached, bundle image built; median of {} runs)",
            self.agent, self.image, self.runs
        );
        for p in &self.phases {
            println!("  {:<18} {:>9.1} ms  {}", p.name, p.at_ms, p.what);
        }
        println!(
            "  bundle up alone            {:>9.1} ms (in the start: {:.1} ms)",
            self.bundle_up_alone_ms, self.bundle_up_in_start_ms
        );
        println!(
            "  docker run --rm IMAGE true {:>9.1} ms",
            self.docker_run_true_ms
        );
        println!(
            "  to krun_start_enter / bundle up alone: {:.2}x (target <= {})",
            self.ratio_vs_bundle_up, self.target_ratio
        );
        println!(
            "  host work on the critical path outside the bundle: {:.1} ms (target <= {} ms)",
            self.host_work_ms, self.target_host_work_ms
        );
        println!("  the VMM ended: {}", self.vmm_outcome);
    }
}
