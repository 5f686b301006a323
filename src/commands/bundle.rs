//! `krbottle bundle …`: the daemons of the sidecar bundle.

use std::sync::Arc;

use anyhow::Context;

use crate::bundle::gateway::Gateway;
use crate::bundle::gateway::config::GatewayConfig;
use crate::bundle::gateway::log::DecisionLog;
use crate::bundle::gateway::resolve::SystemResolver;
use crate::cli::{BundleCommand, GatewayArgs};
use crate::exit;
use crate::output::Reporter;

pub fn run(cmd: BundleCommand, _reporter: &Reporter) -> anyhow::Result<u8> {
    match cmd {
        BundleCommand::Gateway(args) => gateway(args),
    }
}

fn gateway(args: GatewayArgs) -> anyhow::Result<u8> {
    let config = GatewayConfig::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let log = DecisionLog::new(&config.bottle, Box::new(std::io::stdout()));
        let gateway = Gateway::new(
            &config,
            |name| std::env::var(name).ok(),
            Arc::new(SystemResolver),
            log,
        )?;
        let listener = gateway.bind().await?;
        // Orchestration and tests read the bound address (the port may be 0 in the config).
        eprintln!("krbottle gateway listening on {}", listener.local_addr()?);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot handle SIGTERM")?;
        tokio::select! {
            () = gateway.serve(listener) => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(exit::OK)
    })
}
