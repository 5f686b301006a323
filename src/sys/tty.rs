//! The user's terminal in raw mode, restored when the guard is dropped.
//!
//! The guest gets the terminal raw (its own line discipline does the editing and turns ^C into
//! SIGINT inside the guest). The guard restores the saved settings on every path out of the
//! parent, including panics; signals do not kill the parent while a child runs: they are
//! forwarded (see `signals`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::termios::{OptionalActions, Termios};

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    rustix::termios::isatty(fd)
}

#[derive(Debug)]
pub struct RawModeGuard {
    fd: OwnedFd,
    saved: Termios,
}

impl RawModeGuard {
    /// Puts the terminal on `fd` in raw mode.
    pub fn enter(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let fd = fd.try_clone_to_owned()?;
        let saved = rustix::termios::tcgetattr(&fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&fd, OptionalActions::Flush, &raw)?;
        Ok(Self { fd, saved })
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(self.fd.as_fd(), OptionalActions::Now, &self.saved);
    }
}
