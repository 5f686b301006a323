//! One module per verb; each parses, calls one library function and prints. No verb imports
//! another. The process's one tokio runtime is made here, for the verbs that need it; the
//! hidden children (`__vmm`, `__unpack`, `__remove-tree`) run without one (the VMM child must
//! stay single-threaded).

mod approve;
mod bench;
mod bottles;
mod bundle;
mod debug;
mod doctor;
mod image;
mod queue;
mod run;
mod start;

use crate::cli::{Cli, Command};
use crate::output::{Reporter, Verbosity};
use crate::queue::Verdict;

/// Runs the parsed command line and returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let reporter = Reporter::new(Verbosity::from_flags(cli.global.verbose, cli.global.quiet));
    match cli.command {
        Command::UnpackChild { dest } => return image::unpack_child(&dest),
        Command::RemoveTreeChild { path } => return image::remove_tree_child(&path),
        Command::Vmm => return Ok(vmm_child()),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("Cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Start(args) => start::start(args, &reporter).await,
            Command::Resume(args) => start::resume(args, &reporter).await,
            Command::List(args) => bottles::list(args),
            Command::Stop(args) => bottles::stop(args, &reporter).await,
            Command::Rm(args) => bottles::rm(args, &reporter).await,
            Command::Logs(args) => bottles::logs(args).await,
            Command::Gc(args) => bottles::gc(args, &reporter).await,
            Command::Image(cmd) => image::run(cmd, &reporter).await,
            Command::Run(args) => run::run(args, &reporter).await,
            Command::Doctor(args) => doctor::run(args).await,
            Command::Debug(cmd) => debug::run(cmd).await,
            Command::Bench(cmd) => bench::run(cmd, &reporter).await,
            Command::Bundle(cmd) => bundle::run(cmd, &reporter).await,
            Command::Queue(args) => queue::run(args, &reporter).await,
            Command::Approve(args) => approve::run(args, Verdict::Approve, &reporter).await,
            Command::Deny(args) => approve::run(args, Verdict::Deny, &reporter).await,
            Command::UnpackChild { .. } | Command::RemoveTreeChild { .. } | Command::Vmm => {
                unreachable!("handled above")
            }
        }
    })
}

fn vmm_child() -> u8 {
    crate::vm::child::main()
}

/// The answer of a hidden child whose platform code exists only on Linux (the user-namespace
/// unpacker and remover: macOS records ownership in xattrs instead).
#[cfg(not(target_os = "linux"))]
pub(crate) fn not_on_this_os(what: &str) -> anyhow::Result<u8> {
    anyhow::bail!(
        "{what} exists only on Linux; on {} krbottle records ownership with --ownership xattr",
        std::env::consts::OS
    )
}
