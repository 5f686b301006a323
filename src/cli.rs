//! Command-line interface: clap structs only. Help text is the doc comment of each field; value
//! parsers turn strings into the library's typed values at the edge. Each verb is a thin
//! `commands/<verb>.rs` over one library call.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::exit::HELP_TABLE;
use crate::hidden;
use crate::image::Ownership;
use crate::resources::{DEFAULT_CPUS, DEFAULT_MEMORY_MIB, MAX_CPUS, MIN_MEMORY_MIB};
use crate::vm::config::{Endpoint, EnvVar, GuestUser, Overlay, Share};

/// The parser, with the bundle's daemons (from their table, `daemon::DAEMONS`) listed in
/// `krbottle bundle --help`.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("bundle", |c| c.after_help(crate::daemon::help()))
}

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
    /// Put an agent in a new bottle and run it, attached to this terminal.
    ///
    /// Exits with the guest command's exit code (125 when the VMM itself failed).
    Start(StartArgs),
    /// Boot a stopped bottle again on its kept root, with a fresh bundle.
    Resume(ResumeArgs),
    /// List this user's bottles.
    List(ListArgs),
    /// End a running bottle's guest and tear its bundle down; returns when done.
    Stop(NameArgs),
    /// Remove a stopped bottle: its root, record, CA and logs.
    Rm(RmArgs),
    /// Print a bottle's bundle logs (the running bundle's, or its last run's).
    Logs(LogsArgs),
    /// Remove what crashed or killed runs left: bundles, half-made bottle dirs (and with
    /// --cache, cached root filesystems no bottle uses).
    Gc(GcArgs),
    /// Turn Docker images into root filesystems, and manage the cache of them.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Measure performance against named peers in the same run (ratios, not absolute claims).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Boot ROOTFS in a confined microVM and run CMD in it; exits with CMD's exit code.
    Run(RunArgs),
    /// Check that this machine can boot a guest: KVM, libkrunfw, user namespaces, Docker.
    Doctor(DoctorArgs),
    /// Diagnostics.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// The sidecar bundle: the daemons that run inside its container.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// What agents ask a human (through the supervise daemon): pending requests and notices of
    /// BOTTLE or of every bottle, oldest first.
    Queue(QueueArgs),
    /// Approve a pending request; the agent waiting for it gets the answer at once.
    Approve(AnswerArgs),
    /// Deny a pending request; the agent waiting for it gets the answer at once.
    Deny(AnswerArgs),
    /// Internal: the unpacker child of `--ownership userns`. Not for direct use.
    #[command(name = hidden::UNPACK_CHILD, hide = true)]
    UnpackChild { dest: PathBuf },
    /// Internal: deletes a tree unpacked with `--ownership userns`, from its user namespace.
    #[command(name = hidden::REMOVE_TREE_CHILD, hide = true)]
    RemoveTreeChild { path: PathBuf },
    /// Internal: the VMM child that `run` starts. Not for direct use.
    #[command(name = hidden::VMM_CHILD, hide = true)]
    Vmm,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The agent, an `[agents.NAME]` table of the manifest.
    pub agent: String,
    /// The manifest (default: krbottle.toml here or in the nearest parent directory).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// The bottle's name (default: AGENT-xxxx); names are unique among your bottles.
    #[arg(long, value_parser = parse_bottle_name)]
    pub name: Option<String>,
    /// Share the current directory read-write with the guest, at the same path, as its workdir.
    #[arg(long, conflicts_with = "copy_cwd")]
    pub share_cwd: bool,
    /// Copy the current directory into the bottle's root at the same path (first start only),
    /// as the guest's workdir; the guest's changes stay in the bottle.
    #[arg(long)]
    pub copy_cwd: bool,
    /// Print the plan (image, resources, guest user, workdir, argv, env, endpoints, files,
    /// daemons) and start nothing. The image is still built and its root prepared.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the plan as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The guest command, replacing the agent's and the image's.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A bottle name as the state dir takes it.
fn parse_bottle_name(s: &str) -> Result<String, String> {
    if crate::manifest::is_valid_name(s) {
        Ok(s.to_string())
    } else {
        Err(
            "names are 1-63 characters of a-z, 0-9, `-` and `_`, starting with a letter or digit"
                .into(),
        )
    }
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The bottle.
    #[arg(value_parser = parse_bottle_name)]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The bottle.
    #[arg(value_parser = parse_bottle_name)]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The bottle.
    #[arg(value_parser = parse_bottle_name)]
    pub name: String,
    /// Stop it first if it runs.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The bottle.
    #[arg(value_parser = parse_bottle_name)]
    pub name: String,
    /// Only this daemon's lines (see `krbottle bundle --help`).
    #[arg(long)]
    pub daemon: Option<String>,
    /// Only the gateway's denials: what was refused, why, and which manifest key allows it.
    #[arg(long)]
    pub denied: bool,
    /// Keep printing new lines while the bottle runs.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Also remove cached root filesystems that no bottle uses.
    #[arg(long)]
    pub cache: bool,
    /// Print what was removed as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Image → root filesystem end to end (cold and rebuilt) vs the export path, save + GNU tar
    /// and cp -a; peak RSS; cache hit.
    ///
    /// Every contender starts from the image in the engine and ends with a finished tree, the
    /// engine's time included. Without IMAGE an agent-shaped fixture is built (not timed).
    Prepare(BenchPrepareArgs),
    /// Unpack throughput vs GNU tar and vs docker export; cache hit; bottle copy vs cp -a.
    Unpack(BenchUnpackArgs),
    /// `krbottle run` setup up to `krun_start_enter`, by phase, vs `docker run --rm IMAGE true`.
    ///
    /// The guest's boot itself is not included: the time is what krbottle adds before the
    /// hypervisor takes over.
    Run(BenchRunArgs),
    /// A warm `krbottle start` by phase, vs `bundle up` alone and `docker run --rm IMAGE true`.
    Start(BenchStartArgs),
    /// Gateway: added latency of a spliced CONNECT, and route throughput vs mitmproxy.
    ///
    /// Everything runs on 127.0.0.1: an in-process HTTPS upstream, the gateway, and mitmproxy
    /// (`mitmdump`, found on PATH or in KRBOTTLE_MITMDUMP) doing the same interception.
    Gateway(BenchGatewayArgs),
    /// git-gate: a push of a large history and a fetch of an up-to-date repository, through
    /// the gate vs straight to the same SSH upstream (an openssh-server container).
    Git(BenchGitArgs),
}

#[derive(Debug, Args)]
pub struct BenchGitArgs {
    /// MiB of incompressible files in the pushed history.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub mib: u32,
    /// Commits the history is made of.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub commits: u32,
    /// Rounds per contender (they alternate; the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchRunArgs {
    /// A Docker image reference in the local engine; unpacked once (not timed) and booted.
    #[arg(default_value = crate::image::BASE_IMAGE)]
    pub image: String,
    /// Timed runs per contender (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchStartArgs {
    /// The agent, an `[agents.NAME]` table of the manifest.
    pub agent: String,
    /// The manifest (default: krbottle.toml here or in the nearest parent directory).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Timed runs per contender (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchGatewayArgs {
    /// Requests per contender for the latency rows.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub requests: u32,
    /// Throughput rounds (contenders alternate in each; the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Milliseconds each contender requests in a loop, per round and response size.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub window_ms: u64,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchPrepareArgs {
    /// A Docker image reference in the local engine (default: build the agent-shaped fixture).
    pub image: Option<String>,
    /// Files in the fixture's node_modules-like tree.
    #[arg(long, default_value_t = 40_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub files: u32,
    /// KiB per fixture file.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub kb: u32,
    /// Timed runs per contender (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Where to write scratch trees and caches (default: the temp dir). Use the filesystem the
    /// cache is on.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
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

/// The guest's resources, process and network, shared by `run` and `debug net-probe`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// Guest-facing endpoint: a listener on 127.0.0.1:GUESTPORT, the only address the guest can
    /// reach, relayed to HOST:PORT. Repeatable.
    #[arg(long = "endpoint", value_name = "GUESTPORT=HOST:PORT", value_parser = Endpoint::parse)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = DEFAULT_CPUS,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_CPUS)))]
    pub cpus: u8,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = DEFAULT_MEMORY_MIB,
          value_parser = clap::value_parser!(u32).range(i64::from(MIN_MEMORY_MIB)..))]
    pub memory: u32,
    /// Environment variable for CMD, NAME=VALUE. Repeatable; wins over --env-file.
    #[arg(short, long = "env", value_name = "NAME=VALUE", value_parser = EnvVar::parse)]
    pub env: Vec<EnvVar>,
    /// File of NAME=VALUE lines (blank lines and # comments skipped).
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Working directory of CMD in the guest.
    #[arg(short, long, default_value = "/")]
    pub workdir: String,
    /// Numeric UID:GID CMD runs as in the guest.
    #[arg(short, long, default_value = "0:0", value_parser = GuestUser::parse)]
    pub user: GuestUser,
    /// Share a host directory with the guest as virtio-fs tag GUESTDIR. Repeatable.
    #[arg(long = "share", value_name = "HOSTDIR:GUESTDIR[:ro]", value_parser = Share::parse)]
    pub shares: Vec<Share>,
    /// Boot an overlay of LOWER (read-only, e.g. the cached rootfs) and the writable state dir
    /// UPPER (`diff/` and `work/` in it), mounted on ROOTFS in the VMM's own mount namespace.
    /// LOWER is never written; ROOTFS must be an existing directory.
    #[arg(long, value_name = "LOWER:UPPER", value_parser = Overlay::parse)]
    pub overlay: Option<Overlay>,
    #[command(flatten)]
    pub vm: VmArgs,
    /// Root filesystem directory to boot (e.g. from `krbottle image unpack`).
    pub rootfs: PathBuf,
    /// The command to run in the guest, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the facts and the verdict as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// From inside the same confinement as `run`'s VMM, try TCP connections and print one JSON
    /// line per attempt, plus the interfaces and routes visible there.
    NetProbe(NetProbeArgs),
}

#[derive(Debug, Args)]
pub struct NetProbeArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Address to try to connect to, IP:PORT. Repeatable.
    #[arg(long = "try", value_name = "ADDR:PORT", required = true)]
    pub targets: Vec<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
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
    /// git-gate's pre-receive hook (git runs it in a gate repository; not for users).
    #[command(name = hidden::GIT_HOOK, hide = true)]
    GitHook(GitHookArgs),
    /// One daemon, `krbottle bundle DAEMON --config FILE` (inside the bundle container; see
    /// the list below).
    #[command(external_subcommand)]
    Daemon(Vec<OsString>),
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
    /// Only the gateway's denials: what was refused, why, and which manifest key allows it.
    #[arg(long)]
    pub denied: bool,
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
    /// Comma-separated daemons to run (see `krbottle bundle --help`).
    #[arg(long, value_delimiter = ',', default_value = "gateway",
          value_parser = crate::daemon::parse_name)]
    pub daemons: Vec<&'static crate::daemon::DaemonSpec>,
    /// Directory holding the daemons' configuration.
    #[arg(long, default_value = crate::daemon::CONFIG_DIR)]
    pub config_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct GitHookArgs {
    /// git-gate's JSON config.
    #[arg(long)]
    pub config: PathBuf,
    /// The gate repository's name.
    #[arg(long)]
    pub repo: String,
}

/// The arguments every daemon takes (`krbottle bundle DAEMON …`).
#[derive(Debug, Parser)]
pub struct DaemonArgs {
    /// The daemon's JSON config (written by `krbottle bundle up`).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Only this bottle's queue.
    pub bottle: Option<String>,
    /// Print JSON on stdout (with --watch, one JSON object per line).
    #[arg(long)]
    pub json: bool,
    /// Keep watching and announce each new request or notice (a desktop notification through
    /// notify-send where it exists, else the terminal bell) until interrupted.
    #[arg(short, long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct AnswerArgs {
    /// The request's id, as `krbottle queue` shows it.
    #[arg(value_parser = parse_request_id)]
    pub id: crate::queue::Id,
    /// A comment for the agent: why, or on what terms.
    #[arg(short, long)]
    pub comment: Option<String>,
    /// The bottle whose queue holds ID (needed only when two bottles have that id).
    #[arg(long)]
    pub bottle: Option<String>,
    /// Print the answered request as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_request_id(s: &str) -> Result<crate::queue::Id, String> {
    crate::queue::Id::parse(s).map_err(|e| e.to_string())
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
    pub ownership: Option<Ownership>,
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

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// A Docker image reference (read from the local engine) or the path of a `docker save` tar.
    pub image: String,
    /// Directory to create; must not exist yet.
    pub dest: PathBuf,
    /// Ownership mode. Default: `root` when run as root, `userns` otherwise.
    #[arg(long, value_enum)]
    pub ownership: Option<Ownership>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}
