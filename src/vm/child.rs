//! The `__vmm` child: confine itself, then configure libkrun and hand over to the guest.
//!
//! Order matters and is the security argument (`vm::confine` has each OS's part):
//! - Linux: the first thing the child does is enter its own user and network namespaces
//!   (`sys::userns`), before reading any config; the network namespace has only `lo`, no
//!   route, and one listener per endpoint whose socket goes to the parent for relaying
//!   (`vm::relay`).
//! - macOS: the child reads its config, writes the provisioned files into the bottle's root (a
//!   copy the bottle owns), then applies its Seatbelt profile: outbound TCP only to the bundle's
//!   published loopback ports, no listening, files only where the VMM needs them.
//!
//! Only then is libkrun configured; with TSI the VMM opens the guest's sockets itself, so the
//! guest reaches exactly the endpoints.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use crate::env_vars;
use crate::vm::config::{ChildMode, KRUN_CONFIG_MODE, KRUN_CONFIG_PATH, VmConfig};
use crate::vm::confine::{self, ConfineError, Entered};
use crate::vm::krun::{self, KrunContext, Libkrunfw};
use crate::vm::{control, probe};

/// The virtio-fs tag of the guest's root filesystem.
const ROOT_FS_TAG: &str = "/dev/root";

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("This is krbottle's internal VMM child; run `krbottle run` instead")]
    NotSpawnedByKrbottle,
    #[error(transparent)]
    Confine(#[from] ConfineError),
    #[error("Could not read the VM config from the parent")]
    ReadConfig(#[source] std::io::Error),
    #[error(
        "The VMM child has no mount namespace of its own; refusing to mount the overlay or the shared directory"
    )]
    NoMountNamespace,
    #[error("Could not mount the overlay of {lower} on {target}; {hint}")]
    MountOverlay {
        hint: &'static str,
        lower: String,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Could not make the VMM's mounts private")]
    Private(#[source] std::io::Error),
    #[error("Could not open the root filesystem in the VMM")]
    OpenRoot(#[source] std::io::Error),
    #[error("Could not share {host} with the guest")]
    Bind {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
    #[error("Could not load libkrunfw from {0}; check {var} or install libkrunfw", var = env_vars::KRBOTTLE_LIBKRUNFW)]
    LoadLibkrunfw(String, #[source] std::io::Error),
    #[error("Configuring libkrun failed")]
    Configure(#[source] std::io::Error),
    #[error("Network probe failed")]
    Probe(#[source] std::io::Error),
}

/// Runs the child. Returns its exit code when it does not boot (probe, or a setup failure
/// already reported to the parent); on a boot, libkrun exits the process with the guest's code.
pub fn main() -> u8 {
    let entered = match confine::enter() {
        Ok(Some(entered)) => entered,
        Ok(None) => {
            eprintln!("error: {}", ChildError::NotSpawnedByKrbottle);
            return crate::exit::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return crate::exit::FAILURE;
        }
    };
    let Some(mut control) = control_socket() else {
        eprintln!("error: {}", ChildError::NotSpawnedByKrbottle);
        return crate::exit::FAILURE;
    };
    match setup_and_run(&mut control, entered) {
        Ok(code) => code,
        Err(err) => {
            // The parent turns this into the user's one-line error.
            let _ = control.write_all(&[control::FAILED]);
            let _ = control.write_all(crate::output::error_chain(&err).as_bytes());
            crate::exit::FAILURE
        }
    }
}

fn control_socket() -> Option<UnixStream> {
    let fd: i32 = std::env::var(env_vars::KRBOTTLE_VMM_FD)
        .ok()?
        .parse()
        .ok()?;
    crate::sys::inherit::take_inherited_fd(fd)
}

fn setup_and_run(control: &mut UnixStream, entered: Entered) -> Result<u8, ChildError> {
    let frame = control::read_frame(&mut *control).map_err(ChildError::ReadConfig)?;
    let config: VmConfig = serde_json::from_slice(&frame)
        .map_err(|e| ChildError::ReadConfig(std::io::Error::other(e)))?;

    let root = mount_root(&config, entered)?;
    crate::provision::apply(root.as_fd(), &config.provision, PROVISION_IDS)?;
    drop(root);
    confine::lock_down(&config)?;
    confine::hand_over_listeners(control, &config)?;

    match &config.mode {
        ChildMode::NetProbe { targets } => {
            probe::run(targets).map_err(ChildError::Probe)?;
            Ok(crate::exit::OK)
        }
        ChildMode::Boot => {
            // The parent says go once every endpoint's upstream is there (the bundle is up);
            // an end of stream instead means it gave up.
            let mut go = [0u8; 1];
            match std::io::Read::read(&mut *control, &mut go) {
                Ok(1) if go[0] == control::GO => {}
                _ => return Ok(crate::exit::FAILURE),
            }
            let ctx = configure(&config)?;
            if config.stop_before_enter.is_some() {
                control
                    .write_all(&[control::NOT_ENTERING])
                    .map_err(ChildError::Configure)?;
                return Ok(crate::exit::OK);
            }
            let log = control.try_clone().map_err(ChildError::Configure)?;
            krun::init_log(log.into(), krun::LogLevel::Warn).map_err(ChildError::Configure)?;
            control
                .write_all(&[control::ENTERING])
                .map_err(ChildError::Configure)?;
            let err = ctx.start_enter();
            // libkrun's log goes to the same socket; this line joins it there.
            let _ = writeln!(control, "[krbottle ERROR] {err}");
            Ok(crate::exit::FAILURE)
        }
    }
}

/// How provisioned files get the guest's ids: Linux `fchown`s them (the child is root of its
/// user namespace, mapped); macOS records them in the `user.containers.override_stat` xattr
/// that libkrun's virtio-fs reads, as the unpacker does.
#[cfg(target_os = "linux")]
const PROVISION_IDS: crate::provision::Ids = crate::provision::Ids::Chown;
#[cfg(target_os = "macos")]
const PROVISION_IDS: crate::provision::Ids = crate::provision::Ids::Xattr;

/// The root the guest gets, open: on Linux with the overlay and the binds mounted in the child's
/// own mount namespace; on macOS the bottle's own copy as it is (no mount namespace: `prepare`
/// refuses overlays and binds there).
fn mount_root(config: &VmConfig, entered: Entered) -> Result<std::os::fd::OwnedFd, ChildError> {
    if (config.overlay.is_some() || !config.binds.is_empty()) && !entered.mount_namespace {
        return Err(ChildError::NoMountNamespace);
    }
    #[cfg(target_os = "linux")]
    if config.overlay.is_some() || !config.binds.is_empty() {
        // Nothing mounted here may propagate back to the host's mount namespace.
        rustix::mount::mount_change(
            "/",
            rustix::mount::MountPropagationFlags::PRIVATE
                | rustix::mount::MountPropagationFlags::REC,
        )
        .map_err(|e| ChildError::Private(e.into()))?;
        if let Some(overlay) = &config.overlay {
            mount_overlay(overlay, &config.root)?;
        }
    }
    let root = rustix::fs::open(
        &config.root,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| ChildError::OpenRoot(e.into()))?;
    #[cfg(target_os = "linux")]
    for host in &config.binds {
        bind_into_root(root.as_fd(), host)?;
    }
    Ok(root)
}

/// Mounts `overlay` on `target`, visible only in this process's mount namespace (made private
/// before).
#[cfg(target_os = "linux")]
fn mount_overlay(
    overlay: &crate::vm::config::Overlay,
    target: &std::path::Path,
) -> Result<(), ChildError> {
    let err = |source: rustix::io::Errno| ChildError::MountOverlay {
        hint: if source == rustix::io::Errno::NODEV {
            "this kernel has no overlayfs: load its module (`modprobe overlay`)"
        } else {
            "overlayfs in a user namespace needs Linux 5.11 or later"
        },
        lower: overlay.lower.display().to_string(),
        target: target.display().to_string(),
        source: source.into(),
    };
    let options = std::ffi::CString::new(overlay.mount_options())
        .map_err(|_| err(rustix::io::Errno::INVAL))?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        options.as_c_str(),
    )
    .map_err(err)
}

/// Bind-mounts the host directory `host` onto the same path inside the root (creating the
/// mount point there link-safely, owned by root), so the guest sees it through the root's
/// virtio-fs.
#[cfg(target_os = "linux")]
fn bind_into_root(
    root: std::os::fd::BorrowedFd<'_>,
    host: &std::path::Path,
) -> Result<(), ChildError> {
    let err = |source: std::io::Error| ChildError::Bind {
        host: host.display().to_string(),
        source,
    };
    let guest = host
        .to_str()
        .ok_or_else(|| err(std::io::ErrorKind::InvalidInput.into()))?;
    let dir = crate::provision::make_dir(root, guest).map_err(|e| err(std::io::Error::other(e)))?;
    // The mount point is named by the descriptor just made (never by a path through the root,
    // which the image could redirect).
    let target = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir));
    rustix::mount::mount_bind(host, target.as_str()).map_err(|e| err(e.into()))
}

/// Makes every libkrun configuration call for `config`, in the order libkrun expects.
fn configure(config: &VmConfig) -> Result<KrunContext, ChildError> {
    let _krunfw = match &config.libkrunfw {
        Some(path) => Some(
            Libkrunfw::load(Some(path))
                .map_err(|e| ChildError::LoadLibkrunfw(path.display().to_string(), e))?,
        ),
        None => None,
    };
    let file = config
        .process
        .krun_config_file()
        .map_err(|e| ChildError::Configure(std::io::Error::other(e)))?;
    // libkrun serves these bytes to the guest for the VM's whole life.
    let data: &'static [u8] = Vec::leak(file.to_json());

    let c = ChildError::Configure;
    let ctx = KrunContext::new().map_err(c)?;
    ctx.set_vm_config(config.cpus, config.memory_mib)
        .map_err(c)?;
    ctx.set_root(&config.root).map_err(c)?;
    for share in &config.shares {
        ctx.add_virtiofs(share.tag(), &share.host, share.read_only)
            .map_err(c)?;
    }
    // Explicit and empty: everything the guest needs is in the config file. NULL would copy
    // this process's environment into the guest.
    ctx.set_env(&[]).map_err(c)?;
    ctx.add_overlay_file(ROOT_FS_TAG, KRUN_CONFIG_PATH, data, KRUN_CONFIG_MODE)
        .map_err(c)?;
    ctx.enable_tsi_inet_only().map_err(c)?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    ctx.set_console(stdin.as_fd(), stdout.as_fd(), stderr.as_fd())
        .map_err(c)?;
    Ok(ctx)
}
