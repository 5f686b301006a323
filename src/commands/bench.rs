//! `krbottle bench …`: performance against named peers in the same run (`crate::bench`).

use std::time::Duration;

use crate::bench;
use crate::cli::BenchCommand;
use crate::exit;
use crate::output::{Reporter, print_json};

pub async fn run(cmd: BenchCommand, reporter: &Reporter) -> anyhow::Result<u8> {
    match cmd {
        BenchCommand::Unpack(args) => {
            let opts = bench::unpack::UnpackBench {
                image: args.image,
                runs: args.runs,
                scratch: args.scratch,
            };
            let report = bench::unpack::run(&opts, reporter).await?;
            if args.json {
                print_json(&report)?;
            } else {
                report.print();
            }
        }
        #[cfg(target_os = "linux")]
        BenchCommand::Run(args) => {
            let opts = bench::run::RunBench {
                image: args.image,
                runs: args.runs,
            };
            let report = bench::run::run(&opts, reporter).await?;
            if args.json {
                print_json(&report)?;
            } else {
                report.print();
            }
        }
        #[cfg(not(target_os = "linux"))]
        BenchCommand::Run(_) => return super::not_on_this_os("bench run (the VM)"),
        #[cfg(target_os = "linux")]
        BenchCommand::Start(args) => {
            let opts = bench::start::StartBench {
                agent: args.agent,
                manifest: args.manifest,
                runs: args.runs,
            };
            let report = bench::start::run(&opts, reporter).await?;
            if args.json {
                print_json(&report)?;
            } else {
                report.print();
            }
        }
        #[cfg(not(target_os = "linux"))]
        BenchCommand::Start(_) => return super::not_on_this_os("bench start (the VM)"),
        BenchCommand::Gateway(args) => {
            let opts = bench::gateway::GatewayBench {
                requests: args.requests,
                rounds: args.rounds,
                window: Duration::from_millis(args.window_ms),
            };
            let report = bench::gateway::run(&opts, reporter).await?;
            if args.json {
                print_json(&report)?;
            } else {
                report.print();
            }
        }
    }
    Ok(exit::OK)
}
