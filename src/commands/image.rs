//! `krbottle image …`: build, unpack, prepare, list and prune root filesystems.

use anyhow::Context;

use crate::cli::{BuildArgs, ImageCommand, LsArgs, PruneArgs};
use crate::exit;
use crate::image::cache::Cache;
use crate::image::docker::{DockerError, Engine};
use crate::output::{Reporter, Verbosity, print_json};

pub fn run(cmd: ImageCommand, reporter: &Reporter) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::Build(args) => build(args, reporter),
        ImageCommand::Unpack(_) | ImageCommand::Prepare(_) => {
            anyhow::bail!("not available in this build")
        }
        ImageCommand::Ls(args) => ls(args),
        ImageCommand::Prune(args) => prune(args, reporter),
    }
}

fn build(args: BuildArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let engine = Engine::connect()?;
    let spinner = reporter.spinner(&format!("building {}", args.tag));
    let verbose = reporter.verbosity() >= Verbosity::Verbose(1);
    let id = engine.build(
        &args.context,
        args.file.as_deref(),
        &args.tag,
        &spinner,
        |line| {
            if verbose {
                spinner.suspend(|| eprintln!("  {line}"));
            }
        },
    );
    spinner.finish_and_clear();
    let id = id?;
    if args.json {
        print_json(&serde_json::json!({ "tag": args.tag, "id": id }))?;
    } else {
        reporter.status(format!("built {} ({id})", args.tag));
    }
    Ok(exit::OK)
}

fn ls(args: LsArgs) -> anyhow::Result<u8> {
    let cache = Cache::open_default()?;
    let entries = cache.list()?;
    if args.json {
        print_json(&entries)?;
        return Ok(exit::OK);
    }
    if entries.is_empty() {
        eprintln!("no cached root filesystems in {}", cache.root().display());
        return Ok(exit::OK);
    }
    println!("{:<20} {:<8} {:>10}  TAGS", "IMAGE ID", "MODE", "SIZE");
    for e in entries {
        let id = e.meta.image_id.trim_start_matches("sha256:");
        let bytes = e
            .meta
            .summary
            .get("bytes")
            .and_then(|b| b.as_u64())
            .unwrap_or(0);
        println!(
            "{:<20} {:<8} {:>10}  {}",
            &id[..id.len().min(12)],
            e.meta.ownership,
            indicatif::HumanBytes(bytes).to_string(),
            e.meta.tags.join(",")
        );
    }
    Ok(exit::OK)
}

fn prune(args: PruneArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let cache = Cache::open_default()?;
    let leftovers = cache.remove_leftovers()?;
    let engine = if args.all {
        None
    } else {
        Some(Engine::connect()?)
    };
    let mut removed = Vec::new();
    for entry in cache.list()? {
        let keep = match &engine {
            None => false,
            Some(engine) => match engine.inspect(&entry.meta.image_id) {
                Ok(_) => true,
                Err(DockerError::ImageNotFound { .. }) => false,
                Err(e) => return Err(e).context("cannot tell which images still exist"),
            },
        };
        if keep {
            continue;
        }
        if let Some(key) = cache.key_of(&entry) {
            cache.remove(&key)?;
            removed.push(entry.meta.image_id.clone());
        }
    }
    if args.json {
        print_json(&serde_json::json!({ "removed": removed, "leftovers": leftovers }))?;
    } else {
        reporter.status(format!(
            "removed {} cached root filesystem(s) and {leftovers} leftover(s)",
            removed.len()
        ));
    }
    Ok(exit::OK)
}
