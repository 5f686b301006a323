//! `krbottle debug …`: diagnostics.

use crate::cli::DebugCommand;
use crate::output::Reporter;
use crate::sys::userns::IdMapping;
use crate::vm::config::{ChildMode, GuestProcess, VmConfig};
use crate::vm::launch::{self, Outcome};

pub fn run(cmd: DebugCommand, _reporter: &Reporter) -> anyhow::Result<u8> {
    match cmd {
        DebugCommand::NetProbe(args) => {
            let endpoints = super::run::resolve(&args.vm)?;
            // The same child as `run`, told to probe instead of booting; the root and process
            // are never used.
            let config = VmConfig {
                cpus: 1,
                memory_mib: 64,
                root: "/".into(),
                overlay: None,
                shares: Vec::new(),
                process: GuestProcess {
                    argv: vec!["true".into()],
                    env: Vec::new(),
                    workdir: "/".into(),
                    uid: 0,
                    gid: 0,
                },
                endpoints,
                libkrunfw: None,
                mode: ChildMode::NetProbe {
                    targets: args.targets,
                },
            };
            match launch::launch(&config, &IdMapping::for_current_user()?)? {
                Outcome::Exited(code) => Ok(u8::try_from(code).unwrap_or(crate::exit::FAILURE)),
                Outcome::VmmFailed(why) => anyhow::bail!("The probe child failed: {why}"),
            }
        }
    }
}
