//! `krbottle debug …`: diagnostics.

use crate::cli::DebugCommand;

pub async fn run(cmd: DebugCommand) -> anyhow::Result<u8> {
    match cmd {
        DebugCommand::NetProbe(args) => {
            let code = crate::vm::probe::probe(&args.vm.endpoints, args.targets).await?;
            Ok(u8::try_from(code).unwrap_or(crate::exit::FAILURE))
        }
    }
}
