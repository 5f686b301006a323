//! Descriptors handed to a re-executed child of this binary (the VMM child's control socket,
//! the namespace handshake): kept close-on-exec in this process, open in that one child.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `fd` survive into the program `cmd` executes, under the same number (returned), while it
/// stays close-on-exec in this process: the flag is cleared only in the forked child, so a
/// concurrent spawn from another thread of this process can never inherit it. The caller keeps
/// `fd` open until `cmd` has been spawned.
pub fn inherit_fd(cmd: &mut Command, fd: &OwnedFd) -> RawFd {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before `execve` and only calls `fcntl`
    // (async-signal-safe, no allocation, no lock). `raw` is open there: the child's descriptor
    // table is a copy of ours taken while the caller still holds `fd`, and it is >= 3 because
    // the standard streams occupy 0..=2, so the child's stdio set-up does not replace it.
    unsafe {
        cmd.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(raw);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(Into::into)
        });
    }
    raw
}

/// Takes ownership of a descriptor number inherited from the parent, if it is open and a socket.
pub fn take_inherited_fd(fd: i32) -> Option<UnixStream> {
    if fd < 3 {
        return None;
    }
    // SAFETY: `fd` is a number, not yet owned: borrow it only to ask the kernel whether it is
    // open. A closed number makes fcntl fail with EBADF, with no other effect.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = rustix::io::fcntl_getfd(borrowed).ok()?;
    // The descriptor was passed to us for this purpose and nothing else in this process
    // refers to it; close-on-exec keeps it from leaking further.
    rustix::io::fcntl_setfd(borrowed, flags | rustix::io::FdFlags::CLOEXEC).ok()?;
    // SAFETY: the descriptor is open (fcntl succeeded) and was handed to this process by the
    // parent for exclusive use through the environment variable; nothing else owns it.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let stat = rustix::fs::fstat(&owned).ok()?;
    (rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Socket)
        .then(|| owned.into())
}
