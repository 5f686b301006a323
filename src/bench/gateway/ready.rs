//! The bundle-ready figure: how long `bundle::container::up` takes, from nothing running to the
//! gateway answering `GET /healthz`, with the bundle image already built, against
//! `docker run --rm --entrypoint true IMAGE` of the same image timed in the same run.
//!
//! `up` creates the bottle's network, creates and starts the container and probes the gateway
//! (the way `krbottle bundle up` does); `down` after each run is not timed. Without a Docker
//! engine or the base image the figure is left out with the reason, and the rest of
//! `bench gateway` goes on.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::bench::{median, ms, time_docker};
use crate::bundle::{BundleRequest, container};
use crate::docker::Engine;
use crate::manifest::Bottle;
use crate::output::Reporter;
use crate::state::StateRoot;

/// Timed rounds per contender (after one untimed round each); the median is reported.
const RUNS: usize = 5;
/// The target the bundle's readiness is judged against.
pub(super) const TARGET_READY_MS: f64 = 1000.0;

#[derive(Debug, Serialize)]
pub(super) struct BundleReady {
    pub(super) runs: usize,
    /// Median of `up`: network, container create and start, gateway answering `/healthz`.
    pub(super) bundle_up_ms: f64,
    /// Median of `docker run --rm --entrypoint true` of the same image, through the CLI.
    pub(super) docker_run_true_ms: f64,
    pub(super) target_ms: f64,
}

/// Measures the figure; `Err` carries why it could not be (no engine, no base image…).
pub(super) async fn measure(scratch: &Path, reporter: &Reporter) -> anyhow::Result<BundleReady> {
    let engine = Engine::connect().await?;
    reporter.status("bundle ready: building the bundle image if absent (not timed)");
    let tag = crate::bundle::ensure_image(&engine, &Reporter::silent()).await?;
    let bottle = Bottle {
        name: format!("bench-ready-{}", std::process::id()),
        cpus: 1,
        memory_mib: 256,
        env: Default::default(),
        allow: Vec::new(),
        routes: Vec::new(),
        git_user: None,
        resolve: Default::default(),
        upstream_ca_file: None,
        supervise: None,
        git: Vec::new(),
    };
    let request = BundleRequest::for_bottle(&bottle, &tag)?;
    let state = StateRoot::at(scratch.join("bundle-state"));
    let up_once = || async {
        let t = Instant::now();
        let never = std::sync::atomic::AtomicBool::new(false);
        let up = container::up(&engine, &request, &state, |_| None, &never).await;
        let took = t.elapsed();
        // `up` cleans up after itself on error; after success the bundle is taken down here.
        let record = up.context("Could not start the bench bundle")?;
        container::down(&engine, &state, &record.bottle)
            .await
            .context("Could not remove the bench bundle")?;
        anyhow::Ok(took)
    };
    reporter.status(format!(
        "bundle ready: {RUNS} runs each of bundle up and docker run true"
    ));
    // One untimed round each: the image and the binary are in the page cache for both.
    up_once().await?;
    time_docker(&["run", "--rm", "--entrypoint", "true", &tag])?;
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        ours.push(up_once().await?);
        peer.push(time_docker(&["run", "--rm", "--entrypoint", "true", &tag])?);
    }
    Ok(BundleReady {
        runs: RUNS,
        bundle_up_ms: ms(median(ours)),
        docker_run_true_ms: ms(median(peer)),
        target_ms: TARGET_READY_MS,
    })
}
