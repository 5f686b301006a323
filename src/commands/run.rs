//! `krbottle run`: boot a root filesystem in a confined microVM and run one command in it.

use anyhow::Context;

use crate::cli::{RunArgs, VmArgs};
use crate::exit;
use crate::output::Reporter;
use crate::sys::userns::IdMapping;
use crate::vm::config::{
    self, ChildMode, Endpoint, GuestProcess, ResolvedEndpoint, Share, VmConfig,
};
use crate::vm::doctor::{self, BootVerdict};
use crate::vm::launch::{self, Outcome};
use crate::vm::{guest_command, relay};

pub fn run(args: RunArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let (config, mapping) = prepare(args, reporter)?;
    match launch::launch(&config, &mapping)? {
        Outcome::Exited(code) => Ok(u8::try_from(code).unwrap_or(exit::FAILURE)),
        Outcome::VmmFailed(why) => {
            eprintln!("error: VMM failed: {why}");
            Ok(exit::VMM_FAILED)
        }
    }
}

/// Everything `run` does before launching: checks the input, the rootfs, the endpoints'
/// upstreams and this machine, and returns the VMM's config and id mapping.
pub fn prepare(args: RunArgs, reporter: &Reporter) -> anyhow::Result<(VmConfig, IdMapping)> {
    // Syntax first, then the filesystem, then the network.
    let endpoints = parse_endpoints(&args.vm)?;
    let (uid, gid) = config::parse_user(&args.user)?;
    let mut env = Vec::new();
    if let Some(file) = &args.env_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("Could not read env file {}", file.display()))?;
        env.extend(config::parse_env_file(&text)?);
    }
    for entry in &args.env {
        env.push(config::parse_env_entry(entry)?);
    }
    let process = GuestProcess {
        argv: args.command,
        env,
        workdir: args.workdir,
        uid,
        gid,
    };
    process.validate()?;
    let shares = args
        .shares
        .iter()
        .map(|s| {
            let mut share = Share::parse(s)?;
            share.host = share.host.canonicalize().with_context(|| {
                format!(
                    "Shared directory {} does not exist; create it or fix --share",
                    share.host.display()
                )
            })?;
            Ok(share)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let overlay = args
        .overlay
        .as_deref()
        .map(config::Overlay::parse)
        .transpose()?;
    let overlay = match overlay {
        Some(o) => Some(prepare_overlay(o, &args.rootfs)?),
        None => None,
    };
    // With an overlay the command comes from the lower (image) or the upper (bottle) layer.
    let lookup_roots = match &overlay {
        Some(o) => vec![o.diff_dir(), o.lower.clone()],
        None => vec![args.rootfs.clone()],
    };
    let path_var = process.guest_path_var();
    let mut found = Ok(String::new());
    for r in &lookup_roots {
        // The last layer's error is reported: the image, which is what the user would fix.
        found = guest_command::find(r, &process.argv[0], &path_var, &process.workdir);
        if found.is_ok() {
            break;
        }
    }
    found?;
    let root = args
        .rootfs
        .canonicalize()
        .with_context(|| format!("Could not resolve {}", args.rootfs.display()))?;
    let endpoints = relay::resolve_endpoints(&endpoints)?;
    preflight(reporter)?;

    let config = VmConfig {
        cpus: args.cpus,
        memory_mib: args.memory,
        root,
        overlay,
        shares,
        process,
        endpoints,
        libkrunfw: doctor::libkrunfw_override(),
        mode: ChildMode::Boot,
    };
    let mapping = IdMapping::for_current_user()?;
    Ok((config, mapping))
}

/// Checks the overlay's directories and creates the upper layer's `diff/` and `work/`.
fn prepare_overlay(
    o: config::Overlay,
    mount_point: &std::path::Path,
) -> anyhow::Result<config::Overlay> {
    anyhow::ensure!(
        mount_point.is_dir(),
        "Overlay mount point {} is not a directory; create it first",
        mount_point.display()
    );
    let lower = o.lower.canonicalize().with_context(|| {
        format!(
            "Overlay lower dir {} does not exist; unpack the image first",
            o.lower.display()
        )
    })?;
    std::fs::create_dir_all(&o.upper).with_context(|| {
        format!(
            "Could not create the overlay upper dir {}",
            o.upper.display()
        )
    })?;
    let upper = o.upper.canonicalize()?;
    let o = config::Overlay::parse(&format!("{}:{}", lower.display(), upper.display()))?;
    for d in [o.diff_dir(), o.work_dir()] {
        std::fs::create_dir_all(&d).with_context(|| format!("Could not create {}", d.display()))?;
    }
    Ok(o)
}

/// Parses the endpoints and rejects a guest port given twice.
fn parse_endpoints(vm: &VmArgs) -> anyhow::Result<Vec<Endpoint>> {
    let endpoints = vm
        .endpoints
        .iter()
        .map(|s| Endpoint::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    config::check_unique_guest_ports(&endpoints)?;
    Ok(endpoints)
}

/// Parses, resolves and checks the endpoints.
pub fn resolve(vm: &VmArgs) -> anyhow::Result<Vec<ResolvedEndpoint>> {
    Ok(relay::resolve_endpoints(&parse_endpoints(vm)?)?)
}

/// The checks doctor makes that a boot cannot do without: a missing libkrunfw or an unusable
/// `/dev/kvm` stop here; a hypervisor known not to boot the kernel is a warning, since
/// everything up to the boot still runs.
fn preflight(reporter: &Reporter) -> anyhow::Result<()> {
    let (libkrunfw, source) = doctor::libkrunfw_fact();
    if let Err(e) = libkrunfw {
        anyhow::bail!(
            "libkrunfw not found at {source} ({e}); {}",
            doctor::LIBKRUNFW_HINT
        );
    }
    let (kvm, modules) = doctor::kvm_facts();
    if let Err(e) = &kvm {
        anyhow::bail!(
            "Cannot use /dev/kvm ({e}); enable KVM, or add yourself to the `kvm` group and log in again"
        );
    }
    let facts = doctor::Facts {
        kvm,
        kvm_modules: modules,
        libkrunfw,
        libkrunfw_source: source,
        user_namespaces: Ok(()),
        id_mapping: Ok(String::new()),
        docker: Ok(()),
    };
    if let BootVerdict::CannotBoot(why) = doctor::verdict(&facts) {
        reporter.status(format!("warning: the guest will probably not boot: {why}"));
    }
    Ok(())
}
