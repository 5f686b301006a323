//! `krbottle start` and `krbottle resume`: an agent in its bottle, attached to this terminal.

use crate::bottle::{self, CwdChoice, Finished, StartRequest};
use crate::cli::{ResumeArgs, StartArgs};
use crate::exit;
use crate::output::{Reporter, print_json};
use crate::vm::launch::Outcome;

pub async fn start(args: StartArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let request = StartRequest {
        agent: args.agent,
        manifest: args.manifest,
        name: args.name,
        cwd: match (args.share_cwd, args.copy_cwd) {
            (true, _) => CwdChoice::Share,
            (_, true) => CwdChoice::Copy,
            _ => CwdChoice::None,
        },
        dry_run: args.dry_run,
        argv: args.command,
    };
    finish(bottle::start(request, reporter).await, args.json, reporter)
}

pub async fn resume(args: ResumeArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    finish(bottle::resume(&args.name, reporter).await, false, reporter)
}

fn finish(
    result: Result<Finished, bottle::BottleError>,
    json: bool,
    reporter: &Reporter,
) -> anyhow::Result<u8> {
    match result {
        Ok(Finished::Planned(plan)) if json => {
            print_json(&plan)?;
            Ok(exit::OK)
        }
        Ok(Finished::Planned(plan)) => {
            print!("{}", crate::plan::describe(&plan));
            Ok(exit::OK)
        }
        Ok(Finished::Ran { name, outcome, .. }) => match outcome {
            Outcome::Exited(code) => {
                reporter.status(format!(
                    "bottle {name} stopped (guest exited with {code}); `krbottle resume {name}` boots it again"
                ));
                Ok(u8::try_from(code).unwrap_or(exit::FAILURE))
            }
            Outcome::VmmFailed(why) => {
                eprintln!("error: VMM failed: {why}");
                reporter.status(format!(
                    "bottle {name} is kept; `krbottle resume {name}` tries again"
                ));
                Ok(exit::VMM_FAILED)
            }
            Outcome::NotBooted(why) => {
                eprintln!(
                    "error: this machine cannot boot the guest: {why}\n  Everything up to the hypervisor ran: the image, bottle {name}'s root and files, its bundle (now removed). The bottle is kept (`krbottle resume {name}` on a machine that can boot). To see a real boot here, run scripts/vm-harness.sh (an emulated machine with a capable hypervisor)."
                );
                Ok(exit::VMM_FAILED)
            }
        },
        Err(bottle::BottleError::Interrupted(sig)) => {
            eprintln!(
                "error: interrupted by {}; everything it started was removed",
                sig.name()
            );
            Ok(sig.exit_code())
        }
        Err(e) => Err(e.into()),
    }
}
