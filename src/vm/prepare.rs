//! Everything before the VMM child starts: a typed [`VmRequest`] (what `run`, `bench run` and
//! `start` ask for) becomes the child's [`VmConfig`] and id mapping, after checking the input,
//! the root filesystem, the command, the endpoints' upstreams and this machine.
//!
//! Syntax was checked at the edge (clap's value parsers build the typed values); here come the
//! file system, then the network, then the machine, so the first error is the cheapest to fix.

use std::path::{Path, PathBuf};

use crate::output::Reporter;
use crate::provision::ProvisionFile;
use crate::vm::config::{
    self, ChildMode, ConfigError, Endpoint, EnvVar, GuestProcess, GuestUser, Overlay, Share,
    VmConfig,
};
use crate::vm::confine::{self, ConfineError, GUEST_DIALS_PUBLISHED_PORTS, Mapping};
use crate::vm::guest_command::{self, GuestCommandError};
use crate::vm::relay::{self, RelayError};

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Cannot read env file {}", path.display())]
    ReadEnvFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Env file {}", path.display())]
    EnvFile {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("Shared directory {} does not exist; create it or fix --share", path.display())]
    Share {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Overlay mount point {} is not a directory; create it first", path.display())]
    MountPoint { path: PathBuf },
    #[error("Overlay lower dir {} does not exist; unpack the image first", path.display())]
    OverlayLower {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot create the overlay's state dir {}", path.display())]
    OverlayUpper {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Path {} is not UTF-8; the VMM config carries paths as text: rename it", path.display())]
    NotUtf8 { path: PathBuf },
    #[error(transparent)]
    Command(#[from] GuestCommandError),
    #[error("Cannot resolve the root filesystem {}", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Endpoint(#[from] RelayError),
    #[error("No libkrunfw found at {source_path} ({why}); {hint}", hint = LIBKRUNFW_HINT)]
    Libkrunfw { source_path: String, why: String },
    #[error(
        "Cannot use /dev/kvm ({0}); enable KVM, or add yourself to the `kvm` group and log in again"
    )]
    Kvm(String),
    #[error(transparent)]
    Confine(#[from] ConfineError),
    #[error(
        "An overlay root needs the VMM's own mount namespace, which only Linux has; on macOS give the bottle's own copy of the root (`krbottle start` clones it)"
    )]
    OverlayNotHere,
    #[error(
        "Sharing {} at the same path needs a bind mount in the VMM's own mount namespace, which only Linux has; use --copy-cwd on macOS", path.display()
    )]
    BindNotHere { path: PathBuf },
    #[error("Published ports are dialled directly only on macOS; this is a krbottle bug")]
    PublishedNotHere,
    #[error(
        "{} is or holds krbottle's image cache ({}), whose files are shared with other images and with Docker's own layers: a guest booted on it would write into them. Boot it under an overlay (--overlay {}:STATE_DIR MOUNT_POINT) or on a copy (cp -a)",
        path.display(), cache.display(), path.display()
    )]
    CacheTree { path: PathBuf, cache: PathBuf },
}

/// Refuses a root directory inside the image cache, or holding it: the cache's trees share
/// inodes with one another and, where prepare linked them, with the engine's layer files, so
/// nothing may write in them. A cache that cannot be located or does not exist holds nothing to
/// protect.
fn refuse_cache_tree(dir: &Path, cache: Option<&Path>) -> Result<(), PrepareError> {
    match cache {
        Some(cache) if cache.exists() && crate::sys::fs::nested(dir, cache) => {
            Err(PrepareError::CacheTree {
                path: dir.to_path_buf(),
                cache: cache.to_path_buf(),
            })
        }
        _ => Ok(()),
    }
}

/// How to get libkrunfw on this OS.
#[cfg(target_os = "linux")]
const LIBKRUNFW_HINT: &str = crate::vm::doctor::LIBKRUNFW_HINT;
#[cfg(target_os = "macos")]
const LIBKRUNFW_HINT: &str = crate::vm::doctor_macos::LIBKRUNFW_HINT;

/// The guest's root: a directory booted as is, or an overlay of a read-only lower (the cached
/// image) under the bottle's writable upper state, mounted on `mount_point` by the child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    Dir(PathBuf),
    Overlay {
        mount_point: PathBuf,
        overlay: Overlay,
    },
}

/// What a caller asks the VMM for, as typed values.
#[derive(Clone, Debug)]
pub struct VmRequest {
    pub cpus: u8,
    pub memory_mib: u32,
    pub root: Root,
    pub shares: Vec<Share>,
    /// The guest's command; `argv[0]` is looked up in the root with the guest's `PATH`.
    pub argv: Vec<String>,
    /// Read first, in order; `env` entries come after and win.
    pub env_files: Vec<PathBuf>,
    pub env: Vec<EnvVar>,
    pub workdir: String,
    pub user: GuestUser,
    pub endpoints: Endpoints,
    /// Host directories bind-mounted at the same path in the root.
    pub binds: Vec<PathBuf>,
    /// Files written into the root before boot.
    pub provision: Vec<ProvisionFile>,
    /// Where doctor says this machine cannot boot the guest, do everything but
    /// `krun_start_enter` (`Outcome::NotBooted`) instead of letting the hypervisor fail.
    pub only_if_bootable: bool,
}

/// The guest-facing endpoints: listeners on `127.0.0.1:GUESTPORT` in the VMM's network (Linux),
/// or host loopback ports the guest dials itself (macOS).
#[derive(Clone, Debug)]
pub enum Endpoints {
    /// Each relayed to its upstream, resolved and checked now (`run`); on macOS each must be a
    /// loopback port given as its own guest port, dialled directly.
    Now(Vec<Endpoint>),
    /// Guest ports whose upstreams come later, when the bundle is up (`start` on Linux).
    Later(Vec<u16>),
    /// The bundle's host ports, chosen before it starts, that the guest dials directly (`start`
    /// on macOS); nothing is relayed.
    Published(Vec<u16>),
}

/// A request checked and turned into what the VMM child gets.
#[derive(Debug)]
pub struct PreparedVm {
    pub config: VmConfig,
    pub mapping: Mapping,
    /// Each guest port's upstream, for [`Endpoints::Now`] relayed; empty otherwise.
    pub upstreams: Vec<std::net::SocketAddr>,
}

/// Checks `request` against the file system, the network and this machine, and returns the
/// child's config. A hypervisor known not to boot the kernel is a warning (on `reporter`), since
/// everything up to the boot still runs.
pub fn prepare(request: VmRequest, reporter: &Reporter) -> Result<PreparedVm, PrepareError> {
    let (guest_ports, direct_ports): (Vec<u16>, Vec<u16>) = match &request.endpoints {
        Endpoints::Now(e) if GUEST_DIALS_PUBLISHED_PORTS => (Vec::new(), config::direct_ports(e)?),
        Endpoints::Now(e) => (e.iter().map(|e| e.guest_port).collect(), Vec::new()),
        Endpoints::Later(ports) => (ports.clone(), Vec::new()),
        Endpoints::Published(_) if !GUEST_DIALS_PUBLISHED_PORTS => {
            return Err(PrepareError::PublishedNotHere);
        }
        Endpoints::Published(ports) => (Vec::new(), ports.clone()),
    };
    config::check_unique_guest_ports(&guest_ports)?;
    config::check_unique_guest_ports(&direct_ports)?;
    if GUEST_DIALS_PUBLISHED_PORTS && let Some(path) = request.binds.first() {
        return Err(PrepareError::BindNotHere { path: path.clone() });
    }
    let mut env = Vec::new();
    for path in &request.env_files {
        let text = std::fs::read_to_string(path).map_err(|source| PrepareError::ReadEnvFile {
            path: path.clone(),
            source,
        })?;
        env.extend(
            config::parse_env_file(&text).map_err(|source| PrepareError::EnvFile {
                path: path.clone(),
                source,
            })?,
        );
    }
    env.extend(request.env);
    let process = GuestProcess {
        argv: request.argv,
        env: env.into_iter().map(|e| (e.name, e.value)).collect(),
        workdir: request.workdir,
        uid: request.user.uid,
        gid: request.user.gid,
    };
    process.validate()?;
    let shares = request
        .shares
        .into_iter()
        .map(|mut share| {
            share.host = share
                .host
                .canonicalize()
                .map_err(|source| PrepareError::Share {
                    path: share.host.clone(),
                    source,
                })?;
            utf8(&share.host)?;
            Ok(share)
        })
        .collect::<Result<Vec<_>, PrepareError>>()?;
    let (mount_point, overlay) = match request.root {
        Root::Dir(dir) => {
            let cache = crate::image::cache::Cache::open_default().ok();
            refuse_cache_tree(&dir, cache.as_ref().map(|c| c.root()))?;
            (dir, None)
        }
        Root::Overlay { .. } if GUEST_DIALS_PUBLISHED_PORTS => {
            return Err(PrepareError::OverlayNotHere);
        }
        Root::Overlay {
            mount_point,
            overlay,
        } => {
            let overlay = prepare_overlay(overlay, &mount_point)?;
            (mount_point, Some(overlay))
        }
    };
    find_command(&process, &mount_point, overlay.as_ref())?;
    let root = mount_point
        .canonicalize()
        .map_err(|source| PrepareError::Root {
            path: mount_point.clone(),
            source,
        })?;
    utf8(&root)?;
    let upstreams = match &request.endpoints {
        Endpoints::Now(e) => {
            let resolved = relay::resolve_endpoints(e)?;
            if guest_ports.is_empty() {
                // Dialled directly: checked to answer, nothing to relay.
                Vec::new()
            } else {
                resolved.into_iter().map(|r| r.upstream).collect()
            }
        }
        Endpoints::Later(_) | Endpoints::Published(_) => Vec::new(),
    };
    for bind in &request.binds {
        utf8(bind)?;
    }
    let (cannot_boot, libkrunfw) = preflight(reporter, request.only_if_bootable)?;
    Ok(PreparedVm {
        config: VmConfig {
            cpus: request.cpus,
            memory_mib: request.memory_mib,
            root,
            overlay,
            shares,
            binds: request.binds,
            provision: request.provision,
            process,
            guest_ports,
            direct_ports,
            libkrunfw,
            mode: ChildMode::Boot,
            stop_before_enter: cannot_boot,
        },
        mapping: confine::mapping_for_current_user()?,
        upstreams,
    })
}

/// The command must exist in the root the guest will see: with an overlay it comes from the
/// upper (bottle) or the lower (image) layer.
fn find_command(
    process: &GuestProcess,
    root: &Path,
    overlay: Option<&Overlay>,
) -> Result<(), GuestCommandError> {
    let lookup_roots = match overlay {
        Some(o) => vec![o.diff_dir(), o.lower.clone()],
        None => vec![root.to_path_buf()],
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
    found.map(|_| ())
}

/// The config travels to the child as JSON text.
fn utf8(path: &Path) -> Result<(), PrepareError> {
    match path.to_str() {
        Some(_) => Ok(()),
        None => Err(PrepareError::NotUtf8 {
            path: path.to_path_buf(),
        }),
    }
}

/// Checks the overlay's directories and creates the upper layer's `diff/` and `work/`.
fn prepare_overlay(o: Overlay, mount_point: &Path) -> Result<Overlay, PrepareError> {
    if !mount_point.is_dir() {
        return Err(PrepareError::MountPoint {
            path: mount_point.to_path_buf(),
        });
    }
    let lower = o
        .lower
        .canonicalize()
        .map_err(|source| PrepareError::OverlayLower {
            path: o.lower.clone(),
            source,
        })?;
    let upper_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PrepareError::OverlayUpper { path, source }
    };
    std::fs::create_dir_all(&o.upper).map_err(upper_err(&o.upper))?;
    let upper = o.upper.canonicalize().map_err(upper_err(&o.upper))?;
    let o = Overlay::new(lower, upper)?;
    for d in [o.diff_dir(), o.work_dir()] {
        std::fs::create_dir_all(&d).map_err(upper_err(&d))?;
    }
    utf8(&o.lower)?;
    utf8(&o.upper)?;
    Ok(o)
}

/// The checks doctor makes that a boot cannot do without, and the libkrunfw the child is to
/// load (`None`: the loader's own search). What stops a boot here: on Linux a missing libkrunfw
/// or an unusable `/dev/kvm`, on macOS a missing libkrunfw, or a Mac or signature that cannot
/// run Hypervisor.framework. A hypervisor known not to boot the kernel is a warning, or, with
/// `only_if_bootable`, the reason returned (the boot is then not attempted).
fn preflight(
    reporter: &Reporter,
    only_if_bootable: bool,
) -> Result<(Option<String>, Option<PathBuf>), PrepareError> {
    #[cfg(target_os = "linux")]
    {
        use crate::vm::doctor::{self, BootVerdict};
        let (libkrunfw, source) = doctor::libkrunfw_fact();
        if let Err(why) = libkrunfw {
            return Err(PrepareError::Libkrunfw {
                source_path: source,
                why,
            });
        }
        let path = doctor::libkrunfw_override();
        let (kvm, modules) = doctor::kvm_facts();
        if let Err(e) = &kvm {
            // The VMM opens /dev/kvm only in krun_start_enter: everything before it can still
            // run.
            if only_if_bootable {
                return Ok((Some(PrepareError::Kvm(e.clone()).to_string()), path));
            }
            return Err(PrepareError::Kvm(e.clone()));
        }
        match doctor::hypervisor_verdict(&kvm, &modules) {
            BootVerdict::CannotBoot(why) if only_if_bootable => Ok((Some(why), path)),
            BootVerdict::CannotBoot(why) => {
                reporter.status(format!("warning: the guest will probably not boot: {why}"));
                Ok((None, path))
            }
            BootVerdict::CanBoot => Ok((None, path)),
        }
    }
    #[cfg(target_os = "macos")]
    {
        use crate::vm::doctor_macos as doctor;
        // The Seatbelt profile names libkrunfw by its real path: it must be found now.
        let path = doctor::find_libkrunfw().map_err(|why| PrepareError::Libkrunfw {
            source_path: doctor::LIBKRUNFW_DYLIB.to_string(),
            why,
        })?;
        let machine = rustix::system::uname()
            .machine()
            .to_string_lossy()
            .into_owned();
        let why = if machine != "arm64" {
            Some(format!(
                "this Mac is {machine}, not Apple Silicon; libkrun needs Hypervisor.framework on arm64"
            ))
        } else {
            None
        };
        match why {
            Some(why) if only_if_bootable => Ok((Some(why), Some(path))),
            Some(why) => {
                reporter.status(format!("warning: the guest will probably not boot: {why}"));
                Ok((None, Some(path)))
            }
            None => Ok((None, Some(path))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root inside the image cache, or holding it, is refused (by any path that resolves
    /// there); one beside it, or with no cache at all, is not.
    #[test]
    fn a_root_inside_the_image_cache_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("cache");
        let root = cache.join("images/abc.root");
        std::fs::create_dir_all(&root).unwrap();
        let beside = t.path().join("cache-other/root");
        std::fs::create_dir_all(&beside).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        let dotted = cache.join("images/../images/abc.root");
        let holder = t.path().to_path_buf();
        for refused in [&root, &link, &dotted, &cache, &holder] {
            let e = refuse_cache_tree(refused, Some(&cache)).unwrap_err();
            assert!(
                matches!(e, PrepareError::CacheTree { .. }),
                "{refused:?}: {e}"
            );
            assert!(e.to_string().contains("--overlay"), "{e}");
        }
        refuse_cache_tree(&beside, Some(&cache)).unwrap();
        refuse_cache_tree(&root, None).unwrap();
        refuse_cache_tree(&root, Some(&t.path().join("no-such-cache"))).unwrap();
    }
}
