//! `krbottle bundle …`: the sidecar bundle, from the host (up, down, logs, gc) and from inside
//! its container (init, gateway).

use std::sync::Arc;

use anyhow::Context;
use futures_util::StreamExt;
use tokio::signal::unix::{SignalKind, signal};

use crate::bundle::container::{self, BundleRecord, Removed};
use crate::bundle::image;
use crate::bundle::layout::Daemon;
use crate::cli::{
    BundleBottleArgs, BundleCommand, BundleGcArgs, BundleInitArgs, BundleLogsArgs, BundleUpArgs,
    GatewayArgs,
};
use crate::daemon::gateway::Gateway;
use crate::daemon::gateway::config::GatewayConfig;
use crate::daemon::gateway::log::DecisionLog;
use crate::daemon::gateway::resolve::SystemResolver;
use crate::daemon::init;
use crate::exit;
use crate::manifest::Manifest;
use crate::output::{Reporter, print_json};

pub fn run(cmd: BundleCommand, reporter: &Reporter) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cmd {
            BundleCommand::Gateway(args) => gateway(args).await,
            BundleCommand::Up(args) => up(args, reporter).await,
            BundleCommand::Down(args) => down(args, reporter).await,
            BundleCommand::Logs(args) => logs(args).await,
            BundleCommand::Gc(args) => gc(args, reporter).await,
            BundleCommand::Init(args) => init_daemons(args).await,
        }
    })
}

/// What the gateway prints on stderr before the address it listens on.
pub(crate) const GATEWAY_LISTENING: &str = "krbottle gateway listening on ";

async fn gateway(args: GatewayArgs) -> anyhow::Result<u8> {
    let config = GatewayConfig::load(&args.config)?;
    let log = DecisionLog::new(&config.bottle, Box::new(std::io::stdout()));
    let gateway = Gateway::new(
        &config,
        |name| std::env::var(name).ok(),
        Arc::new(SystemResolver),
        log,
    )?;
    let listener = gateway.bind().await?;
    // Orchestration and tests read the bound address (the port may be 0 in the config).
    eprintln!("{GATEWAY_LISTENING}{}", listener.local_addr()?);
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::select! {
        () = gateway.serve(listener) => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(exit::OK)
}

async fn up(args: BundleUpArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let manifest = Manifest::load(&args.manifest)?;
    let bottle = manifest.bottles.get(&args.bottle).with_context(|| {
        format!(
            "no bottle {:?} in {} (it has: {:?})",
            args.bottle,
            args.manifest.display(),
            manifest.bottles.keys().collect::<Vec<_>>()
        )
    })?;
    let docker = container::connect().await?;
    let binary = std::env::current_exe().context("cannot find the krbottle binary")?;
    let origin = image::choose_origin(&docker, &binary).await?;
    let spinner = reporter.spinner(match origin {
        image::Origin::Host(_) => "building the bundle image",
        image::Origin::Source { .. } => {
            "building the bundle image, compiling krbottle in it (minutes, the first time only)"
        }
    });
    let tag = image::ensure(&docker, origin).await;
    spinner.finish_and_clear();
    let tag = tag?;
    let gateway = GatewayConfig::for_bottle(bottle);
    let state_root = container::state_root();
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let up = container::up(&docker, bottle, &gateway, &tag, &state_root, |name| {
        std::env::var(name).ok()
    });
    let record = tokio::select! {
        record = up => record?,
        // Interrupted mid-way: take down what was created rather than leave it to `gc`.
        _ = term.recv() => return interrupted(&docker, &state_root, &bottle.name).await,
        _ = int.recv() => return interrupted(&docker, &state_root, &bottle.name).await,
    };
    print_record(&record, args.json, reporter)?;
    Ok(exit::OK)
}

async fn interrupted(
    docker: &bollard::Docker,
    state_root: &std::path::Path,
    bottle: &str,
) -> anyhow::Result<u8> {
    container::down(docker, state_root, bottle).await?;
    anyhow::bail!("interrupted; what was started for bottle {bottle} has been removed")
}

fn print_record(record: &BundleRecord, json: bool, reporter: &Reporter) -> anyhow::Result<()> {
    if json {
        print_json(record)?;
    } else {
        reporter.status(format!("bundle of bottle {} is up", record.bottle));
        for (daemon, addr) in &record.endpoints {
            println!("{daemon} {addr}");
        }
    }
    Ok(())
}

fn print_removed(removed: &Removed, json: bool, reporter: &Reporter) -> anyhow::Result<()> {
    if json {
        print_json(removed)?;
    } else {
        reporter.status(format!(
            "removed {} container(s), {} network(s) and {} image(s)",
            removed.containers.len(),
            removed.networks.len(),
            removed.images.len()
        ));
    }
    Ok(())
}

async fn down(args: BundleBottleArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let docker = container::connect().await?;
    let removed = container::down(&docker, &container::state_root(), &args.bottle).await?;
    print_removed(&removed, args.json, reporter)?;
    Ok(exit::OK)
}

async fn gc(args: BundleGcArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let docker = container::connect().await?;
    let mut removed = container::gc(&docker, &container::state_root()).await?;
    // Old bundle images pile up with every new binary; keep only this binary's.
    let binary = std::env::current_exe().context("cannot find the krbottle binary")?;
    let origin = image::choose_origin(&docker, &binary).await?;
    match image::current_tag(&docker, origin).await {
        Ok(tag) => removed.images = image::prune_stale(&docker, &tag).await?,
        Err(e) => tracing::debug!("not pruning bundle images: {e}"),
    }
    print_removed(&removed, args.json, reporter)?;
    Ok(exit::OK)
}

async fn logs(args: BundleLogsArgs) -> anyhow::Result<u8> {
    use std::io::Write;
    let docker = container::connect().await?;
    let mut stream = std::pin::pin!(container::logs(&docker, &args.bottle, args.follow));
    while let Some(item) = stream.next().await {
        match item? {
            bollard::container::LogOutput::StdErr { message } => {
                std::io::stderr().write_all(&message)?;
            }
            other => std::io::stdout().write_all(&other.into_bytes())?,
        }
    }
    Ok(exit::OK)
}

async fn init_daemons(args: BundleInitArgs) -> anyhow::Result<u8> {
    let daemons = args
        .daemons
        .iter()
        .map(|name| {
            Daemon::parse(name).with_context(|| format!("unknown daemon {name:?}; known: gateway"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    init::run(&daemons, &args.config_dir).await?;
    Ok(exit::OK)
}
