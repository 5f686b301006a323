//! `krbottle bundle …`: the sidecar bundle, from the host (up, down, logs, gc) and from inside
//! its container (init and the daemons).

use clap::Parser;

use crate::bundle::{self, BundleRecord, Removed};
use crate::cli::{BundleCommand, DaemonArgs};
use crate::exit;
use crate::output::{Reporter, print_json};

pub async fn run(cmd: BundleCommand, reporter: &Reporter) -> anyhow::Result<u8> {
    match cmd {
        BundleCommand::Up(args) => {
            let record = bundle::up(&args.manifest, &args.bottle, reporter).await?;
            print_record(&record, args.json, reporter)?;
        }
        BundleCommand::Down(args) => {
            let removed = bundle::down(&args.bottle).await?;
            print_removed(&removed, args.json, reporter)?;
        }
        BundleCommand::Gc(args) => {
            let removed = bundle::gc().await?;
            print_removed(&removed, args.json, reporter)?;
        }
        BundleCommand::Logs(args) => {
            bundle::logs(
                &args.bottle,
                args.follow,
                args.denied,
                std::io::stdout(),
                std::io::stderr(),
            )
            .await?;
        }
        BundleCommand::Init(args) => {
            crate::daemon::init::run(&args.daemons, &args.config_dir).await?;
        }
        BundleCommand::GitHook(args) => {
            return Ok(crate::daemon::git_gate::run_hook(&args.config, &args.repo)?);
        }
        BundleCommand::Daemon(argv) => {
            let name = argv.first().map(|n| n.to_string_lossy().into_owned());
            let daemon = name
                .as_deref()
                .and_then(crate::daemon::find)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "Unknown bundle command {:?}; see `krbottle bundle --help`",
                        name.unwrap_or_default()
                    )
                })?;
            let args = DaemonArgs::try_parse_from(&argv)?;
            (daemon.run)(args.config).await?;
        }
    }
    Ok(exit::OK)
}

fn print_record(record: &BundleRecord, json: bool, reporter: &Reporter) -> anyhow::Result<()> {
    if json {
        print_json(record)?;
    } else {
        reporter.status(format!("bundle of bottle {} is up", record.bottle));
        for (daemon, addr) in &record.endpoints {
            println!("{daemon} {addr}");
        }
        for (repo, url) in &record.git {
            println!("git {repo} {url}");
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
