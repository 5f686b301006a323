//! One module per verb; each turns parsed arguments into calls on the library.

pub mod bundle;
#[cfg(target_os = "linux")]
pub mod debug;
#[cfg(target_os = "linux")]
pub mod doctor;
pub mod image;
#[cfg(target_os = "linux")]
pub mod run;

use crate::cli::{Cli, Command};
use crate::output::{Reporter, Verbosity};

/// Runs the parsed command line and returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let reporter = Reporter::new(Verbosity::from_flags(cli.global.verbose, cli.global.quiet));
    match cli.command {
        Command::Image(cmd) => image::run(cmd, &reporter),
        #[cfg(target_os = "linux")]
        Command::Run(args) => run::run(args, &reporter),
        #[cfg(target_os = "linux")]
        Command::Doctor(args) => doctor::run(args),
        #[cfg(target_os = "linux")]
        Command::Debug(cmd) => debug::run(cmd, &reporter),
        #[cfg(not(target_os = "linux"))]
        Command::Run(_) | Command::Doctor(_) | Command::Debug(_) => not_on_this_os("the VM"),
        Command::Bench(cmd) => crate::bench::run(cmd, &reporter),
        Command::UnpackChild { dest } => image::unpack_child(&dest),
        Command::RemoveTreeChild { path } => image::remove_tree_child(&path),
        Command::Bundle(cmd) => bundle::run(cmd, &reporter),
        Command::Vmm => Ok(krbottle_vmm_child()),
    }
}

#[cfg(target_os = "linux")]
fn krbottle_vmm_child() -> u8 {
    crate::vm::child::main()
}

#[cfg(not(target_os = "linux"))]
fn krbottle_vmm_child() -> u8 {
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
