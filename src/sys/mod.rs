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
/// (256 on macOS) and see `EMFILE`. The soft limit goes to the hard one (on macOS, to
/// `kern.maxfilesperproc`); as root (in the initial user namespace, where the child cannot do
/// it), the hard one goes up to the kernel's `nr_open`.
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
    // Where the kernel caps one process below the hard limit (macOS), the limits go to the cap.
    let capped = |h: Option<u64>| match (h, per_process_file_cap()) {
        (Some(h), Some(cap)) => Some(h.min(cap)),
        (None, Some(cap)) => Some(cap),
        (h, None) => h,
    };
    let wanted = Rlimit {
        current: capped(hard),
        maximum: capped(hard),
    };
    if setrlimit(Resource::Nofile, wanted).is_err() {
        // Not root after all (or a sandbox): the soft limit up to what the hard one allows.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: capped(current.maximum),
                maximum: current.maximum,
            },
        );
    }
}

/// The most descriptors one process may open whatever its limits say: none on Linux (the hard
/// limit is the cap); macOS's `kern.maxfilesperproc`, as `setrlimit` refuses a soft limit above
/// it (the hard limit there is usually "unlimited", the soft one 256).
fn per_process_file_cap() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        None
    }
    #[cfg(target_os = "macos")]
    {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>();
        // SAFETY: the name is a NUL-terminated string; `value` and `len` are a writable `c_int`
        // and its size, the type of `kern.maxfilesperproc`; no new value is given (NULL, 0).
        let rc = unsafe {
            libc::sysctlbyname(
                c"kern.maxfilesperproc".as_ptr(),
                (&raw mut value).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        u64::try_from(value).ok().filter(|v| rc == 0 && *v > 0)
    }
}
