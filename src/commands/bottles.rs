//! `krbottle list`, `stop`, `rm`, `logs`, `gc`: the bottles' lifecycle around `start`.

use crate::bottle;
use crate::cli::{GcArgs, ListArgs, LogsArgs, NameArgs, RmArgs};
use crate::exit;
use crate::output::{Reporter, print_json};

pub fn list(args: ListArgs) -> anyhow::Result<u8> {
    let bottles = bottle::list()?;
    if args.json {
        print_json(&bottles)?;
        return Ok(exit::OK);
    }
    if bottles.is_empty() {
        eprintln!("no bottles; `krbottle start AGENT` makes one");
        return Ok(exit::OK);
    }
    println!(
        "{:<24} {:<14} {:<8} {:<12} {:<32} ENDPOINTS",
        "NAME", "AGENT", "STATE", "STARTED", "IMAGE"
    );
    for b in bottles {
        let endpoints: Vec<String> = b
            .endpoints
            .iter()
            .map(|(d, a)| format!("{d}={a}"))
            .collect();
        println!(
            "{:<24} {:<14} {:<8} {:<12} {:<32} {}",
            b.name,
            b.agent,
            b.state,
            crate::output::ago(b.started),
            b.image,
            endpoints.join(" ")
        );
    }
    Ok(exit::OK)
}

pub async fn stop(args: NameArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    bottle::stop(&args.name).await?;
    reporter.status(format!("bottle {} stopped", args.name));
    Ok(exit::OK)
}

pub async fn rm(args: RmArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    bottle::rm(&args.name, args.force).await?;
    reporter.status(format!("bottle {} removed", args.name));
    Ok(exit::OK)
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    let filter = bottle::LogFilter {
        daemon: args.daemon.as_deref(),
        denied: args.denied,
    };
    bottle::logs(
        &args.name,
        filter,
        args.follow,
        std::io::stdout(),
        std::io::stderr(),
    )
    .await?;
    Ok(exit::OK)
}

pub async fn gc(args: GcArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let collected = bottle::gc(args.cache).await?;
    if args.json {
        print_json(&collected)?;
    } else {
        reporter.status(format!(
            "removed {} bundle container(s), {} network(s), {} image(s), {} half-made bottle dir(s), {} cached root filesystem(s)",
            collected.bundles.containers.len(),
            collected.bundles.networks.len(),
            collected.bundles.images.len(),
            collected.half_made.len(),
            collected.cache_entries.len()
        ));
    }
    Ok(exit::OK)
}
