//! One module per verb; each parses, calls one library function and prints. No verb imports
//! another. The process's one tokio runtime is made here, for the verbs that need it; the
//! hidden children (`__vmm`, `__unpack`, `__remove-tree`) run without one (the VMM child must
//! stay single-threaded).

mod approve;
mod bench;
mod bottles;
mod bundle;
#[cfg(target_os = "linux")]
mod debug;
#[cfg(target_os = "linux")]
mod doctor;
mod image;
mod queue;
#[cfg(target_os = "linux")]
mod run;
#[cfg(target_os = "linux")]
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
            #[cfg(target_os = "linux")]
            Command::Start(args) => start::start(args, &reporter).await,
            #[cfg(target_os = "linux")]
            Command::Resume(args) => start::resume(args, &reporter).await,
            #[cfg(not(target_os = "linux"))]
            Command::Start(_) | Command::Resume(_) => not_on_this_os("a bottle's VM"),
            Command::List(args) => bottles::list(args),
            Command::Stop(args) => bottles::stop(args, &reporter).await,
            Command::Rm(args) => bottles::rm(args, &reporter).await,
            Command::Logs(args) => bottles::logs(args).await,
            Command::Gc(args) => bottles::gc(args, &reporter).await,
            Command::Image(cmd) => image::run(cmd, &reporter).await,
            #[cfg(target_os = "linux")]
            Command::Run(args) => run::run(args, &reporter).await,
            #[cfg(target_os = "linux")]
            Command::Doctor(args) => doctor::run(args).await,
            #[cfg(target_os = "linux")]
            Command::Debug(cmd) => debug::run(cmd).await,
            #[cfg(not(target_os = "linux"))]
            Command::Run(_) | Command::Doctor(_) | Command::Debug(_) => not_on_this_os("the VM"),
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

#[cfg(target_os = "linux")]
fn vmm_child() -> u8 {
    crate::vm::child::main()
}

#[cfg(not(target_os = "linux"))]
fn vmm_child() -> u8 {
    eprintln!("error: the VMM child is only implemented on Linux so far");
    crate::exit::FAILURE
}

/// The answer of a verb whose platform code exists only for Linux so far (the macOS VMM child
/// under Seatbelt is still to be written; see README "macOS").
#[cfg(not(target_os = "linux"))]
pub(crate) fn not_on_this_os(what: &str) -> anyhow::Result<u8> {
    anyhow::bail!(
        "{what} is only implemented on Linux so far; on {} krbottle can build images, unpack them (--ownership xattr) and run bundles",
        std::env::consts::OS
    )
}
