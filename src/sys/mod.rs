//! Small wrappers over the operating system that the rest of the crate builds on.
//!
//! The `unsafe` the crate needs outside libkrun lives here, each block with its reason:
//! - `userns`: re-executed children in new user/net/mount namespaces with an id mapping;
//! - `netif`: loopback up, and what interfaces and routes a network namespace has;
//! - `fdpass`: passing descriptors over a unix socket (`SCM_RIGHTS`);
//! - `inherit`: a descriptor handed to one re-executed child;
//! - `signals`: the one owner of the termination signals, and forwarding them to a child;
//! - `kvm`: probing `/dev/kvm`;
//! - `tty`: raw mode with guaranteed restore;
//! - `seatbelt`: the macOS sandbox (`sandbox_init`), applied by the VMM child;
//! - `fs`: file-system calls that differ between Linux and macOS (nodes, clones, sync), and
//!   `write_atomic`, the one temp-file-then-rename writer.

#[cfg(target_os = "linux")]
pub mod fdpass;
pub mod fs;
pub mod inherit;
#[cfg(target_os = "linux")]
pub mod kvm;
#[cfg(target_os = "linux")]
pub mod netif;
#[cfg(target_os = "macos")]
pub mod seatbelt;
pub mod signals;
pub mod tty;
#[cfg(target_os = "linux")]
pub mod userns;

/// The largest resident set size this process, or any child it waited for, reached so far, in
/// bytes (`getrusage`: the kernel's own high-water mark, so nothing has to sample).
pub fn peak_rss_bytes() -> u64 {
    let max_rss = |who| {
        // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable `rusage` for the call to fill; `who` is one of the
        // two constants getrusage accepts here.
        let rc = unsafe { libc::getrusage(who, &mut usage) };
        if rc == 0 {
            usage.ru_maxrss.max(0) as u64
        } else {
            0
        }
    };
    let peak = max_rss(libc::RUSAGE_SELF).max(max_rss(libc::RUSAGE_CHILDREN));
    // Linux counts KiB, macOS bytes.
    if cfg!(target_os = "linux") {
        peak * 1024
    } else {
        peak
    }
}

/// Raises this process's open-file limit as far as it may go, for the VMM child to inherit:
/// libkrun's virtio-fs keeps a host descriptor for every guest inode it has looked up, so a guest
/// that walks many files (a Python import, a `node_modules`) would hit a 1024-file soft limit
/// and see `EMFILE`. The soft limit goes to the hard one; as root (in the initial user
/// namespace, where the child cannot do it), the hard one goes up to the kernel's `nr_open`.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let hard = match (current.maximum, nr_open) {
        (Some(h), Some(n)) if rustix::process::geteuid().is_root() => Some(h.max(n)),
        (h, _) => h,
    };
    let wanted = Rlimit {
        current: hard,
        maximum: hard,
    };
    if setrlimit(Resource::Nofile, wanted).is_err() {
        // Not root after all (or a sandbox): the soft limit up to what the hard one allows.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: current.maximum,
                maximum: current.maximum,
            },
        );
    }
}
