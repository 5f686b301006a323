//! `krbottle run`: boot a root filesystem in a confined microVM and run one command in it.

use crate::cli::RunArgs;
use crate::exit;
use crate::output::Reporter;
use crate::vm::launch::{self, Outcome};
use crate::vm::prepare::{self, Endpoints, Root, VmRequest};

pub async fn run(args: RunArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let root = match args.overlay {
        Some(overlay) => Root::Overlay {
            mount_point: args.rootfs,
            overlay,
        },
        None => Root::Dir(args.rootfs),
    };
    let request = VmRequest {
        cpus: args.cpus,
        memory_mib: args.memory,
        root,
        shares: args.shares,
        argv: args.command,
        env_files: args.env_file.into_iter().collect(),
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        endpoints: Endpoints::Now(args.vm.endpoints),
        binds: Vec::new(),
        provision: Vec::new(),
        only_if_bootable: false,
    };
    let prepared = prepare::prepare(request, reporter)?;
    match launch::run_attached(prepared.config, prepared.mapping, prepared.upstreams).await? {
        Outcome::Exited(code) => Ok(u8::try_from(code).unwrap_or(exit::FAILURE)),
        Outcome::VmmFailed(why) | Outcome::NotBooted(why) => {
            eprintln!("error: VMM failed: {why}");
            Ok(exit::VMM_FAILED)
        }
    }
}
