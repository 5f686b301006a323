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
    /// The sidecar bundle: the daemons that run inside its container.
    #[command(subcommand)]
    Bundle(BundleCommand),
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Run the gateway, the bottle's HTTP proxy (inside the bundle container).
    ///
    /// Prints one JSON line per decision on stdout. Route tokens are read from this process's
    /// environment, under the names the config gives.
    Gateway(GatewayArgs),
    /// Build the bundle image if needed, start BOTTLE's bundle and print its endpoints.
    ///
    /// Route tokens are read from this environment under the names the manifest gives and
    /// passed to the container as its environment.
    Up(BundleUpArgs),
    /// Stop and remove BOTTLE's bundle container and network.
    Down(BundleBottleArgs),
    /// Print the logs of BOTTLE's bundle (decision lines on stdout, daemon messages on stderr).
    Logs(BundleLogsArgs),
    /// Remove bundle containers and networks left behind by a crash or an interrupted `up`.
    Gc(BundleGcArgs),
    /// Supervise the selected daemons (the bundle container's entrypoint).
    Init(BundleInitArgs),
}

#[derive(Debug, Args)]
pub struct BundleUpArgs {
    /// The bottle, a `[bottles.NAME]` table of the manifest.
    pub bottle: String,
    /// The manifest file.
    #[arg(long, default_value = crate::manifest::MANIFEST_FILE)]
    pub manifest: PathBuf,
    /// Print the endpoints as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BundleBottleArgs {
    /// The bottle's name.
    pub bottle: String,
    /// Print what was removed as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BundleLogsArgs {
    /// The bottle's name.
    pub bottle: String,
    /// Keep printing new lines until interrupted.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct BundleGcArgs {
    /// Print what was removed as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BundleInitArgs {
    /// Comma-separated daemons to run: gateway.
    #[arg(long, value_delimiter = ',', default_value = "gateway")]
    pub daemons: Vec<String>,
    /// Directory holding the daemons' configuration.
    #[arg(long, default_value = crate::bundle::layout::CONFIG_DIR)]
    pub config_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The gateway's JSON config (written by `krbottle bundle up`).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Unpack an image (a Docker image reference or a `docker save` tar file) into DEST.
    Unpack(UnpackArgs),
}

/// Who owns the unpacked files, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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
