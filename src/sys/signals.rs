//! The one owner of the process's termination signals: tokio's handlers, through [`Termination`].
//!
//! Nothing else in krbottle installs a handler for SIGINT, SIGTERM, SIGHUP or SIGQUIT, so a flow
//! that drives a bundle and a VMM in one process (`start`) sees every signal exactly once. Once a
//! [`Termination`] has been created the signals no longer kill the process: whoever holds it must
//! act on them (stop what runs, tear down, exit). A VMM child gets them forwarded through a
//! [`ChildSignaller`], which addresses the child by a pidfd, so a signal can never reach another
//! process that reused the pid after the child was reaped. SIGWINCH needs no forwarding: the
//! child stays in the terminal's foreground process group, so the kernel sends it there directly.

use std::io;

use tokio::signal::unix::{Signal as Stream, SignalKind, signal};

/// A termination signal krbottle acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    Hangup,
    Quit,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Hangup => "SIGHUP",
            Signal::Quit => "SIGQUIT",
        }
    }

    fn raw(self) -> rustix::process::Signal {
        match self {
            Signal::Interrupt => rustix::process::Signal::INT,
            Signal::Terminate => rustix::process::Signal::TERM,
            Signal::Hangup => rustix::process::Signal::HUP,
            Signal::Quit => rustix::process::Signal::QUIT,
        }
    }

    /// The shell's exit code for a process ended by this signal (128 + its number).
    pub fn exit_code(self) -> u8 {
        128u8.saturating_add(self.raw().as_raw() as u8)
    }
}

/// The termination signals, as a stream. Must be created inside the runtime.
#[derive(Debug)]
pub struct Termination {
    int: Stream,
    term: Stream,
    hup: Stream,
    quit: Stream,
}

impl Termination {
    /// Takes over SIGINT, SIGTERM, SIGHUP and SIGQUIT for the rest of the process's life.
    pub fn listen() -> io::Result<Self> {
        Ok(Termination {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next termination signal.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::Interrupt,
            _ = self.term.recv() => Signal::Terminate,
            _ = self.hup.recv() => Signal::Hangup,
            _ = self.quit.recv() => Signal::Quit,
        }
    }
}

/// Sends signals to one child process for as long as it has not been reaped.
#[derive(Debug)]
pub struct ChildSignaller {
    #[cfg(target_os = "linux")]
    pidfd: std::os::fd::OwnedFd,
    #[cfg(not(target_os = "linux"))]
    pid: rustix::process::Pid,
}

impl ChildSignaller {
    /// For the child `pid`, which the caller spawned and has not reaped yet.
    pub fn new(pid: u32) -> io::Result<Self> {
        let pid = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad pid"))?;
        #[cfg(target_os = "linux")]
        {
            let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
            Ok(ChildSignaller { pidfd })
        }
        #[cfg(not(target_os = "linux"))]
        Ok(ChildSignaller { pid })
    }

    /// Kills the child (SIGKILL); a child that already exited is not an error.
    pub fn kill(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        let res = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
        #[cfg(not(target_os = "linux"))]
        let res = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
        match res {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `sig`; a child that already exited is not an error.
    pub fn send(&self, sig: Signal) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        let res = rustix::process::pidfd_send_signal(&self.pidfd, sig.raw());
        #[cfg(not(target_os = "linux"))]
        let res = rustix::process::kill_process(self.pid, sig.raw());
        match res {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signaller_reaches_its_child_and_not_after_it_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let s = ChildSignaller::new(child.id()).unwrap();
        s.send(Signal::Terminate).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        // Reaped: the pidfd still names that (dead) process, never a new one.
        s.send(Signal::Terminate).unwrap();
        s.kill().unwrap();
    }
}
