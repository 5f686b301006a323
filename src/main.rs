//! The `krbottle` binary: parse, set up logging, dispatch, print the error chain, exit.

use std::process::ExitCode;

use clap::FromArgMatches;
use krbottle::{cli, commands, env_vars, exit};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let matches = cli::command().get_matches();
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The VMM child leaves the process-wide logger to libkrun, which installs its own.
    if !matches!(cli.command, cli::Command::Vmm) {
        init_logging(cli.global.verbose);
    }
    match commands::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "krbottle=debug,info",
        _ => "krbottle=trace,debug",
    };
    let filter =
        EnvFilter::try_from_env(env_vars::KRBOTTLE_LOG).unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
