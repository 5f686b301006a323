//! Forwarding termination signals from the parent to its VMM child.
//!
//! While a child runs, SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the parent are re-sent to the
//! child instead of killing the parent, so the parent always lives to wait for the child,
//! restore the terminal and report. SIGWINCH needs no forwarding: the child stays in the
//! terminal's foreground process group, so the kernel sends it there directly.

use std::sync::atomic::{AtomicI32, Ordering};

/// The pid signals are forwarded to; 0 when there is none.
static CHILD_PID: AtomicI32 = AtomicI32::new(0);

const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; pid is a child we spawned and have not reaped
        // (the guard clears it before reaping).
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forwards the signals to `pid` until dropped; the previous dispositions are then restored.
#[derive(Debug)]
pub struct ForwardGuard {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl ForwardGuard {
    pub fn install(pid: u32) -> std::io::Result<Self> {
        CHILD_PID.store(pid as i32, Ordering::SeqCst);
        let mut previous = Vec::new();
        for sig in FORWARDED {
            // SAFETY: an all-zero sigaction is valid (no flags, empty mask); we set the handler
            // to an `extern "C" fn(c_int)` that only does async-signal-safe work.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = forward as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: see above; `old` is valid for writing.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are valid for the call.
            if unsafe { libc::sigaction(sig, &action, &mut old) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            previous.push((sig, old));
        }
        Ok(Self { previous })
    }
}

impl Drop for ForwardGuard {
    fn drop(&mut self) {
        CHILD_PID.store(0, Ordering::SeqCst);
        for (sig, old) in &self.previous {
            // SAFETY: `old` is the disposition the kernel gave us for `sig`.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}
