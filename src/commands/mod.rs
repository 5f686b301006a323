//! One module per verb; each turns parsed arguments into calls on the library.

pub mod bundle;
pub mod image;

use crate::cli::{Cli, Command};
use crate::output::{Reporter, Verbosity};

/// Runs the parsed command line and returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let reporter = Reporter::new(Verbosity::from_flags(cli.global.verbose, cli.global.quiet));
    match cli.command {
        Command::Image(cmd) => image::run(cmd, &reporter),
        Command::Bundle(cmd) => bundle::run(cmd, &reporter),
    }
}
