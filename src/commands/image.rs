//! `krbottle image …`: build, unpack, prepare, list and prune root filesystems.

use std::path::Path;

use crate::cli::{BuildArgs, ImageCommand, LsArgs, PrepareArgs, PruneArgs, UnpackArgs};
use crate::docker::Engine;
use crate::exit;
use crate::image::prepare::{self, Source};
use crate::image::{Ownership, UnpackSummary};
use crate::output::{Reporter, print_json};

pub async fn run(cmd: ImageCommand, reporter: &Reporter) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::Build(args) => build(args, reporter).await,
        ImageCommand::Unpack(args) => unpack(args, reporter).await,
        ImageCommand::Prepare(args) => prepare(args, reporter).await,
        ImageCommand::Ls(args) => ls(args),
        ImageCommand::Prune(args) => prune(args, reporter).await,
    }
}

/// The engine, when the source needs one.
async fn engine_for(source: &Source) -> anyhow::Result<Option<Engine>> {
    Ok(match source.needs_engine() {
        true => Some(Engine::connect().await?),
        false => None,
    })
}

async fn unpack(args: UnpackArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let ownership = args.ownership.unwrap_or_else(Ownership::default_here);
    let source = Source::parse(&args.image);
    let engine = engine_for(&source).await?;
    let summary =
        prepare::unpack(engine.as_ref(), &source, &args.dest, ownership, reporter).await?;
    print_summary(&summary, &args.dest, ownership, args.json, reporter)?;
    Ok(exit::OK)
}

fn print_summary(
    s: &UnpackSummary,
    dest: &Path,
    ownership: Ownership,
    json: bool,
    reporter: &Reporter,
) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(s)?;
        value["dest"] = serde_json::json!(dest);
        value["ownership"] = serde_json::json!(ownership);
        print_json(&value)?;
        return Ok(());
    }
    let devices = match s.skipped_devices {
        0 => String::new(),
        n => format!(", {n} device nodes skipped"),
    };
    reporter.status(format!(
        "unpacked {} layers, {} entries, {} into {} in {:.2}s ({ownership} ownership{devices})",
        s.layers,
        s.entries,
        indicatif::HumanBytes(s.bytes),
        dest.display(),
        s.seconds,
    ));
    Ok(())
}

async fn prepare(args: PrepareArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let ownership = args.ownership.unwrap_or_else(Ownership::default_here);
    let source = Source::parse(&args.image);
    let engine = engine_for(&source).await?;
    let prepared = prepare::prepare(engine.as_ref(), &source, ownership, reporter).await?;
    if args.json {
        let mut value = serde_json::to_value(&prepared.entry)?;
        value["cache_hit"] = serde_json::json!(prepared.cache_hit);
        value["peak_rss_bytes"] = serde_json::json!(crate::sys::peak_rss_bytes());
        print_json(&value)?;
    } else {
        if !prepared.cache_hit {
            reporter.status(format!("cached {} ({ownership})", args.image));
        }
        println!("{}", prepared.entry.rootfs.display());
    }
    Ok(exit::OK)
}

async fn build(args: BuildArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let engine = Engine::connect().await?;
    let id = prepare::build(
        &engine,
        &args.context,
        args.file.as_deref(),
        &args.tag,
        reporter,
    )
    .await?;
    if args.json {
        print_json(&serde_json::json!({ "tag": args.tag, "id": id }))?;
    } else {
        reporter.status(format!("built {} ({id})", args.tag));
    }
    Ok(exit::OK)
}

fn ls(args: LsArgs) -> anyhow::Result<u8> {
    let (root, entries) = prepare::list()?;
    if args.json {
        print_json(&entries)?;
        return Ok(exit::OK);
    }
    if entries.is_empty() {
        eprintln!("no cached root filesystems in {}", root.display());
        return Ok(exit::OK);
    }
    println!("{:<20} {:<8} {:>10}  TAGS", "IMAGE ID", "MODE", "SIZE");
    for e in entries {
        let id = e.meta.image_id.trim_start_matches("sha256:");
        println!(
            "{:<20} {:<8} {:>10}  {}",
            &id[..id.len().min(12)],
            e.meta.ownership,
            indicatif::HumanBytes(e.meta.summary.bytes).to_string(),
            e.meta.tags.join(",")
        );
    }
    Ok(exit::OK)
}

async fn prune(args: PruneArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let engine = match args.all {
        true => None,
        false => Some(Engine::connect().await?),
    };
    let pruned = prepare::prune(engine.as_ref()).await?;
    if args.json {
        print_json(&pruned)?;
    } else {
        reporter.status(format!(
            "removed {} cached root filesystem(s), {} unused layer(s) and {} leftover(s)",
            pruned.removed.len(),
            pruned.layers,
            pruned.leftovers
        ));
    }
    Ok(exit::OK)
}

/// The `__unpack` child of the `userns` ownership mode.
#[cfg(target_os = "linux")]
pub fn unpack_child(dest: &Path) -> anyhow::Result<u8> {
    crate::image::rootless::unpack_child_main(dest)?;
    Ok(exit::OK)
}

/// The `__remove-tree` child of `image prune` and `rm` as a user.
#[cfg(target_os = "linux")]
pub fn remove_tree_child(path: &Path) -> anyhow::Result<u8> {
    crate::image::rootless::remove_child_main(path)?;
    Ok(exit::OK)
}

#[cfg(not(target_os = "linux"))]
pub fn unpack_child(_dest: &Path) -> anyhow::Result<u8> {
    super::not_on_this_os("the user-namespace unpacker")
}

#[cfg(not(target_os = "linux"))]
pub fn remove_tree_child(_path: &Path) -> anyhow::Result<u8> {
    super::not_on_this_os("the user-namespace remover")
}
