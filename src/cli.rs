//! Command-line interface: clap structs only. Help text is the doc comment of each field.
//! The work behind each verb lives in `commands/<verb>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit::HELP_TABLE;

/// Run AI coding agents in libkrun microVMs whose only way out is a sidecar bundle.
#[derive(Debug, Parser)]
#[command(name = "krbottle", version, after_help = HELP_TABLE, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More output: -v shows debug logs, -vv trace logs.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr; no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Turn Docker images into root filesystems, and manage the cache of them.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Measure performance against named peers in the same run (ratios, not absolute claims).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Unpack throughput vs GNU tar and vs docker export; cache hit; bottle copy vs cp -a.
    Unpack(BenchUnpackArgs),
}

#[derive(Debug, Args)]
pub struct BenchUnpackArgs {
    /// A Docker image reference in the local engine.
    pub image: String,
    /// Timed runs per contender (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where to write scratch trees (default: the temp dir). Use the filesystem the cache is on.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from a directory with a Dockerfile, through the Docker API.
    Build(BuildArgs),
    /// Unpack an image (a Docker image reference or a `docker save` tar file) into DEST.
    Unpack(UnpackArgs),
    /// Make sure the cache holds IMAGE's root filesystem; print its path.
    Prepare(PrepareArgs),
    /// List cached root filesystems.
    Ls(LsArgs),
    /// Remove cached root filesystems whose image is gone from Docker (or all of them).
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build context: a directory holding the Dockerfile.
    pub context: PathBuf,
    /// Tag for the built image.
    #[arg(short, long)]
    pub tag: String,
    /// Dockerfile name, relative to the context.
    #[arg(short = 'f', long)]
    pub file: Option<String>,
    /// Print the image ID as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// A Docker image reference in the local engine.
    pub image: String,
    /// Ownership mode. Default: `root` when run as root, `userns` otherwise.
    #[arg(long, value_enum)]
    pub ownership: Option<OwnershipMode>,
    /// Print the cache entry as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove every cached root filesystem, not only those of images Docker no longer has.
    #[arg(long)]
    pub all: bool,
    /// Print what was removed as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Who owns the unpacked files, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnershipMode {
    /// Real `lchown` to the image's uid/gid (needs root).
    Root,
    /// Unpack inside a user namespace mapped from /etc/subuid and /etc/subgid.
    Userns,
    /// Files owned by you; the image's uid:gid:mode in the `user.containers.override_stat` xattr.
    Xattr,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// A Docker image reference (read from the local engine) or the path of a `docker save` tar.
    pub image: String,
    /// Directory to create; must not exist yet.
    pub dest: PathBuf,
    /// Ownership mode. Default: `root` when run as root, `userns` otherwise.
    #[arg(long, value_enum)]
    pub ownership: Option<OwnershipMode>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}
