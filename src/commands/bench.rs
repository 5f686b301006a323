//! `krbottle bench …`: performance against named peers in the same run (`crate::bench`).

use std::time::Duration;

use crate::bench::{self, Report};
use crate::cli::BenchCommand;
use crate::exit;
use crate::output::{Reporter, print_json};

pub async fn run(cmd: BenchCommand, reporter: &Reporter) -> anyhow::Result<u8> {
    match cmd {
        BenchCommand::Prepare(args) => {
            let opts = bench::prepare::PrepareBench {
                image: args.image,
                files: args.files,
                kb: args.kb,
                runs: args.runs as usize,
                scratch: args.scratch,
            };
            emit(&bench::prepare::run(&opts, reporter).await?, args.json)?;
        }
        BenchCommand::Unpack(args) => {
            let opts = bench::unpack::UnpackBench {
                image: args.image,
                runs: args.runs,
                scratch: args.scratch,
            };
            emit(&bench::unpack::run(&opts, reporter).await?, args.json)?;
        }
        BenchCommand::Run(args) => {
            let opts = bench::run::RunBench {
                image: args.image,
                runs: args.runs,
            };
            emit(&bench::run::run(&opts, reporter).await?, args.json)?;
        }
        BenchCommand::Start(args) => {
            let opts = bench::start::StartBench {
                agent: args.agent,
                manifest: args.manifest,
                runs: args.runs,
            };
            emit(&bench::start::run(&opts, reporter).await?, args.json)?;
        }
        BenchCommand::Gateway(args) => {
            let opts = bench::gateway::GatewayBench {
                requests: args.requests,
                rounds: args.rounds,
                window: Duration::from_millis(args.window_ms),
            };
            emit(&bench::gateway::run(&opts, reporter).await?, args.json)?;
        }
        BenchCommand::Git(args) => {
            let opts = bench::git::GitBench {
                mib: args.mib,
                commits: args.commits,
                rounds: args.rounds,
            };
            emit(&bench::git::run(&opts, reporter).await?, args.json)?;
        }
    }
    Ok(exit::OK)
}

/// Prints a bench's report for a person, or as JSON.
fn emit(report: &impl Report, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(report)?;
    } else {
        report.print();
    }
    Ok(())
}
