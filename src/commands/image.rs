//! `krbottle image …`: build, unpack, prepare, list and prune root filesystems.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::ProgressBar;

use crate::cli::{
    BuildArgs, ImageCommand, LsArgs, OwnershipMode, PrepareArgs, PruneArgs, UnpackArgs,
};
use crate::docker::{DockerError, Engine};
use crate::exit;
use crate::image::cache::{Cache, CacheKey};
#[cfg(target_os = "linux")]
use crate::image::rootless::{self, unpack_in_userns};
use crate::image::{Ownership, UnpackOptions, UnpackSummary, unpack_save};
use crate::output::{Reporter, Verbosity, print_json};
#[cfg(target_os = "linux")]
use crate::sys::userns::{self, IdMapping};

pub fn run(cmd: ImageCommand, reporter: &Reporter) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::Build(args) => build(args, reporter),
        ImageCommand::Unpack(args) => unpack(args, reporter),
        ImageCommand::Prepare(args) => prepare(args, reporter),
        ImageCommand::Ls(args) => ls(args),
        ImageCommand::Prune(args) => prune(args, reporter),
    }
}

/// The ownership mode when none is given: real ids as root, a mapped user namespace otherwise
/// (Linux); the override xattr on macOS, where ownership cannot be given away.
pub fn default_ownership() -> OwnershipMode {
    if cfg!(target_os = "macos") {
        OwnershipMode::Xattr
    } else if rustix::process::geteuid().is_root() {
        OwnershipMode::Root
    } else {
        OwnershipMode::Userns
    }
}

fn mode_name(mode: OwnershipMode) -> &'static str {
    match mode {
        OwnershipMode::Root => "root",
        OwnershipMode::Userns => "userns",
        OwnershipMode::Xattr => "xattr",
    }
}

/// Where the save stream comes from.
enum Source {
    /// A `docker save` tar file.
    File(PathBuf),
    /// An image in the local Docker engine.
    Image(String),
}

impl Source {
    /// An existing file is a save tar; anything else is an image reference.
    fn parse(arg: &str) -> Source {
        let path = Path::new(arg);
        if path.is_file() {
            Source::File(path.to_path_buf())
        } else {
            Source::Image(arg.to_string())
        }
    }
}

/// Unpacks `reader` into `dest` with `mode`.
pub(crate) fn unpack_stream(
    reader: impl Read + Send,
    dest: &Path,
    mode: OwnershipMode,
    bar: &ProgressBar,
) -> anyhow::Result<UnpackSummary> {
    let summary = match mode {
        #[cfg(target_os = "linux")]
        OwnershipMode::Userns => {
            let mapping = IdMapping::for_current_user()?;
            unpack_in_userns(reader, dest, &mapping, bar)?
        }
        #[cfg(not(target_os = "linux"))]
        OwnershipMode::Userns => {
            anyhow::bail!("--ownership userns needs Linux user namespaces; use --ownership xattr")
        }
        OwnershipMode::Root | OwnershipMode::Xattr => {
            let ownership = match mode {
                OwnershipMode::Xattr => Ownership::Xattr,
                _ => Ownership::Root,
            };
            if ownership == Ownership::Root && !rustix::process::geteuid().is_root() {
                anyhow::bail!(
                    "--ownership root needs root; as a user, use --ownership userns (the image's ids in a user namespace)"
                );
            }
            let opts = UnpackOptions {
                ownership,
                ..Default::default()
            };
            unpack_save(reader, dest, &opts, bar)?
        }
    };
    Ok(summary)
}

fn unpack(args: UnpackArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let mode = args.ownership.unwrap_or_else(default_ownership);
    let summary = match Source::parse(&args.image) {
        Source::File(path) => {
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let bar = reporter.bytes_bar("unpacking", file.metadata().ok().map(|m| m.len()));
            let summary = unpack_stream(file, &args.dest, mode, &bar);
            bar.finish_and_clear();
            summary?
        }
        Source::Image(image) => {
            let engine = Engine::connect()?;
            let info = engine.inspect(&image)?;
            let bar =
                reporter.bytes_bar("unpacking", info.size.and_then(|s| u64::try_from(s).ok()));
            let summary = unpack_stream(engine.save(&image), &args.dest, mode, &bar);
            bar.finish_and_clear();
            summary?
        }
    };
    report_summary(&summary, &args.dest, mode, args.json, reporter)
}

fn report_summary(
    summary: &UnpackSummary,
    dest: &Path,
    mode: OwnershipMode,
    json: bool,
    reporter: &Reporter,
) -> anyhow::Result<u8> {
    if json {
        let mut value = serde_json::to_value(summary)?;
        value["dest"] = serde_json::json!(dest);
        value["ownership"] = serde_json::json!(mode_name(mode));
        print_json(&value)?;
    } else {
        reporter.status(format!(
            "unpacked {} layers, {} entries, {} into {} in {:.2}s ({} ownership{})",
            summary.layers,
            summary.entries,
            indicatif::HumanBytes(summary.bytes),
            dest.display(),
            summary.seconds,
            mode_name(mode),
            if summary.skipped_devices > 0 {
                format!(", {} device nodes skipped", summary.skipped_devices)
            } else {
                String::new()
            },
        ));
    }
    Ok(exit::OK)
}

/// The `__remove-tree` child: enter the user namespace, delete `path` (a tree unpacked in
/// `userns` mode, whose files are the namespace's own).
#[cfg(target_os = "linux")]
pub fn remove_tree_child(path: &Path) -> anyhow::Result<u8> {
    if userns::enter_from_env()?.is_none() {
        anyhow::bail!(
            "{} is internal: `krbottle image prune` uses it",
            rootless::REMOVE_SUBCOMMAND
        );
    }
    crate::image::cache::remove_tree(path)
        .with_context(|| format!("cannot delete {}", path.display()))?;
    Ok(exit::OK)
}

#[cfg(not(target_os = "linux"))]
pub fn remove_tree_child(_path: &Path) -> anyhow::Result<u8> {
    super::not_on_this_os("the user-namespace remover")
}

#[cfg(not(target_os = "linux"))]
pub fn unpack_child(_dest: &Path) -> anyhow::Result<u8> {
    super::not_on_this_os("the user-namespace unpacker")
}

/// The `__unpack` child of the `userns` mode: enter the namespace, unpack stdin into `dest`
/// with real `lchown`s, print the summary as JSON on stdout.
#[cfg(target_os = "linux")]
pub fn unpack_child(dest: &Path) -> anyhow::Result<u8> {
    if userns::enter_from_env()?.is_none() {
        anyhow::bail!(
            "{} is internal: use `krbottle image unpack --ownership userns`",
            rootless::CHILD_SUBCOMMAND
        );
    }
    let opts = UnpackOptions {
        ownership: Ownership::Root,
        ..Default::default()
    };
    let summary = unpack_save(std::io::stdin(), dest, &opts, &ProgressBar::hidden())?;
    serde_json::to_writer(std::io::stdout().lock(), &summary)?;
    Ok(exit::OK)
}

fn prepare(args: PrepareArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let mode = args.ownership.unwrap_or_else(default_ownership);
    let cache = Cache::open_default()?;
    let engine = Engine::connect()?;
    let info = engine.inspect(&args.image)?;
    let key = CacheKey::new(&info.id, mode_name(mode))
        .with_context(|| format!("image ID {} is not a sha256 digest", info.id))?;
    let (entry, hit) = cache.get_or_fill(&key, |dest| {
        let bar = reporter.bytes_bar("unpacking", info.size.and_then(|s| u64::try_from(s).ok()));
        let summary = unpack_stream(engine.save(&args.image), dest, mode, &bar);
        bar.finish_and_clear();
        let summary = summary.map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        Ok::<_, std::io::Error>((
            info.tags.clone(),
            serde_json::to_value(summary).unwrap_or_default(),
        ))
    })?;
    if args.json {
        let mut value = serde_json::to_value(&entry)?;
        value["cache_hit"] = serde_json::json!(hit);
        print_json(&value)?;
    } else {
        if !hit {
            reporter.status(format!("cached {} ({})", args.image, mode_name(mode)));
        }
        println!("{}", entry.rootfs.display());
    }
    Ok(exit::OK)
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
