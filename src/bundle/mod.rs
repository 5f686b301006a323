//! The sidecar bundle, host side: its image ([`image`]), one container per bottle on its own
//! network ([`container`]), and the names and labels that tie Docker objects to a bottle
//! ([`layout`]). The daemons that run inside the container are `crate::daemon`.
//!
//! The flows here are what the `bundle` verbs and `start` call: make sure the image exists, bring
//! a bottle's bundle up (taking down what was created when interrupted), down, gc, logs.

pub mod container;
pub mod image;
pub mod layout;
pub mod process;

use std::path::Path;

use futures_util::StreamExt;

pub use container::{BundleRecord, BundleRequest, ContainerError, Removed};

use crate::docker::{DockerError, Engine};
use crate::manifest::{Bottle, Manifest, ManifestError};
use crate::output::Reporter;
use crate::state::StateRoot;
use crate::sys::signals::Termination;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("No bottle `{bottle}` in {}; it has: {known}", manifest.display())]
    NoBottle {
        bottle: String,
        manifest: std::path::PathBuf,
        known: String,
    },
    #[error("Cannot find the krbottle binary to put in the bundle image")]
    CurrentExe(#[source] std::io::Error),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("Cannot handle termination signals")]
    Signals(#[source] std::io::Error),
    #[error("Interrupted by {0}; what was started for bottle {1} has been removed")]
    Interrupted(&'static str, String),
    #[error("Cannot write the logs")]
    WriteLogs(#[source] std::io::Error),
}

/// Makes sure the bundle image for this krbottle binary exists (built on first use); returns its
/// tag. A spinner says so while it builds.
pub async fn ensure_image(engine: &Engine, reporter: &Reporter) -> Result<String, BundleError> {
    let binary = std::env::current_exe().map_err(BundleError::CurrentExe)?;
    let origin = image::choose_origin(engine, &binary).await?;
    let spinner = reporter.spinner(match origin {
        image::Origin::Host(_) => "building the bundle image",
        image::Origin::Source { .. } => {
            "building the bundle image, compiling krbottle in it (minutes, the first time only)"
        }
    });
    let tag = image::ensure(engine, origin).await;
    spinner.finish_and_clear();
    Ok(tag?)
}

/// The bottle `name` of the manifest at `path`.
pub fn find_bottle(manifest: &Manifest, name: &str) -> Result<Bottle, BundleError> {
    manifest
        .bottles
        .get(name)
        .cloned()
        .ok_or_else(|| BundleError::NoBottle {
            bottle: name.to_string(),
            manifest: manifest.path.clone(),
            known: manifest
                .bottles
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// `krbottle bundle up`: builds the bundle image if needed and starts `bottle`'s bundle from the
/// manifest at `manifest`, route tokens read from this process's environment. Interrupted
/// (SIGINT, SIGTERM, SIGHUP), it removes what it created before returning.
pub async fn up(
    manifest: &Path,
    bottle: &str,
    reporter: &Reporter,
) -> Result<BundleRecord, BundleError> {
    let manifest = Manifest::load(manifest)?;
    let bottle = find_bottle(&manifest, bottle)?;
    let engine = Engine::connect().await?;
    let tag = ensure_image(&engine, reporter).await?;
    let state = StateRoot::open_default();
    let request = BundleRequest::for_bottle(&bottle, &tag).map_err(BundleError::Container)?;
    let mut stop = Termination::listen().map_err(BundleError::Signals)?;
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let up = container::up(
        &engine,
        &request,
        &state,
        |n| std::env::var(n).ok(),
        &cancel,
    );
    tokio::pin!(up);
    let signal = tokio::select! {
        record = &mut up => return Ok(record?),
        sig = stop.recv() => sig,
    };
    // Let `up` end (it stops waiting for the daemons at once) so that everything it created
    // exists when `down` looks for it.
    cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = up.await;
    container::down(&engine, &state, &bottle.name).await?;
    Err(BundleError::Interrupted(signal.name(), bottle.name.clone()))
}

/// `krbottle bundle down`: removes `bottle`'s bundle container and network.
pub async fn down(bottle: &str) -> Result<Removed, BundleError> {
    let engine = Engine::connect().await?;
    Ok(container::down(&engine, &StateRoot::open_default(), bottle).await?)
}

/// `krbottle bundle gc`: removes bundle containers and networks whose creator is gone and no up
/// record accounts for, and bundle images of other krbottle binaries that no container uses.
pub async fn gc() -> Result<Removed, BundleError> {
    let engine = Engine::connect().await?;
    let mut removed = container::gc(&engine, &StateRoot::open_default()).await?;
    // Old bundle images pile up with every new binary; keep only this binary's.
    let binary = std::env::current_exe().map_err(BundleError::CurrentExe)?;
    let origin = image::choose_origin(&engine, &binary).await?;
    match image::current_tag(&engine, origin).await {
        Ok(tag) => removed.images = image::prune_stale(&engine, &tag).await?,
        Err(e) => tracing::debug!("not pruning bundle images: {e}"),
    }
    Ok(removed)
}

/// `krbottle bundle logs`: copies `bottle`'s bundle logs to `stdout` (the daemons' decision
/// lines) and `stderr` (their messages) until the end, or for as long as it runs with `follow`;
/// with `denied`, only the gateway's denials.
pub async fn logs(
    bottle: &str,
    follow: bool,
    denied: bool,
    mut stdout: impl std::io::Write,
    mut stderr: impl std::io::Write,
) -> Result<(), BundleError> {
    let engine = Engine::connect().await?;
    let mut stream = std::pin::pin!(container::logs(&engine, bottle, follow));
    while let Some(item) = stream.next().await {
        let written = match item? {
            bollard::container::LogOutput::StdErr { .. } if denied => Ok(()),
            bollard::container::LogOutput::StdErr { message } => stderr.write_all(&message),
            other => {
                let data = other.into_bytes();
                data.split_inclusive(|&b| b == b'\n')
                    .filter(|line| !denied || crate::daemon::gateway::log::is_denial(line))
                    .try_for_each(|line| stdout.write_all(line))
            }
        };
        written.map_err(BundleError::WriteLogs)?;
    }
    Ok(())
}
