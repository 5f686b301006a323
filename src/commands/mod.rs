//! One module per verb; each turns parsed arguments into calls on the library.

pub mod bench;
pub mod bundle;
pub mod debug;
pub mod doctor;
pub mod image;
pub mod run;

use crate::cli::{Cli, Command};
use crate::output::{Reporter, Verbosity};

/// Runs the parsed command line and returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let reporter = Reporter::new(Verbosity::from_flags(cli.global.verbose, cli.global.quiet));
    match cli.command {
        Command::Image(cmd) => image::run(cmd, &reporter),
        Command::Run(args) => run::run(args, &reporter),
        Command::Doctor(args) => doctor::run(args),
        Command::Debug(cmd) => debug::run(cmd, &reporter),
        Command::Bench(cmd) => bench::run(cmd, &reporter),
        Command::UnpackChild { dest } => image::unpack_child(&dest),
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
