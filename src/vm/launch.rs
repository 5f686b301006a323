//! Parent side of a VM run: spawn the confined `__vmm` child, feed it, relay, wait, report.
//!
//! `krun_start_enter` never returns (libkrun `_exit`s with the guest's code), so the parent does
//! everything around it: it re-executes this binary as `__vmm`, confined (`vm::confine`: new
//! namespaces on Linux, Seatbelt on macOS), sends the config on the control socket
//! (`vm::control`), relays the endpoint listeners the child hands back (`vm::relay`; Linux, as
//! macOS guests dial the bundle's published ports directly), keeps the terminal raw while the guest runs and restores it whatever
//! happens, and turns the child's end into an [`Outcome`]. [`run_attached`] also forwards the
//! termination signals (`sys::signals`, their one owner) to the child while it runs, so the
//! parent always lives to wait for it, restore the terminal and report.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::env_vars;
use crate::sys::{signals, tty};
use crate::vm::config::{ChildMode, VmConfig};
use crate::vm::confine::{self, ConfineError, Mapping};
use crate::vm::{control, relay};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("Could not find this program's own binary to start the VMM child")]
    CurrentExe(#[source] std::io::Error),
    #[error("Could not create the control socket for the VMM child")]
    Socket(#[source] std::io::Error),
    #[error(transparent)]
    Confine(#[from] ConfineError),
    #[error("Could not send the VM config to the VMM child")]
    SendConfig(#[source] std::io::Error),
    #[error("Could not receive the endpoint listeners from the VMM child")]
    ReceiveListeners(#[source] std::io::Error),
    #[error("The VMM child sent {got} endpoint listeners for {want} endpoints")]
    ListenerCount { got: usize, want: usize },
    #[error("{0}")]
    ChildSetup(String),
    #[error("The VMM child exited during setup ({0}) without saying why; rerun with -v")]
    ChildDied(String),
    #[error("Could not wait for the VMM child")]
    Wait(#[source] std::io::Error),
    #[error("Could not put the terminal in raw mode")]
    RawMode(#[source] std::io::Error),
    #[error("Could not handle termination signals")]
    Signals(#[source] std::io::Error),
    #[error("Could not encode the VM config for the VMM child")]
    EncodeConfig(#[source] serde_json::Error),
    #[error("The VMM launcher stopped unexpectedly")]
    Join(#[source] tokio::task::JoinError),
    #[error("{0}")]
    Upstreams(String),
}

/// How a run ended, once setup succeeded.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest command (or, for a probe, the child) exited with this code.
    Exited(i32),
    /// The VMM itself failed after starting: the hypervisor refused the guest, libkrun
    /// reported an error, or the VMM was killed. The string says what happened.
    VmmFailed(String),
    /// Everything up to `krun_start_enter` was done, and it was not called because this
    /// machine cannot boot the guest (the string says why; see `VmConfig::stop_before_enter`).
    NotBooted(String),
}

/// How long setup took, each time measured from the start of [`launch_timed`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    /// The child runs in its own namespaces.
    pub spawned: Duration,
    /// The config is sent, the child has mounted and provisioned the root and handed over the
    /// endpoint listeners.
    pub ready: Duration,
    /// The upstreams are known, the relays started and the child told to boot.
    pub configured: Duration,
    /// The child has made every libkrun configuration call and is calling `krun_start_enter`.
    /// `None` when setup failed before that.
    pub entered: Option<Duration>,
}

/// Runs `config` in a confined child (mapped with `mapping` on Linux) and waits for it; each
/// guest port is relayed to its upstream (in the order of `config.guest_ports`). Termination signals sent
/// to krbottle meanwhile are forwarded to the child.
pub async fn run_attached(
    config: VmConfig,
    mapping: Mapping,
    upstreams: Vec<SocketAddr>,
) -> Result<Outcome, LaunchError> {
    let mut signals = signals::Termination::listen().map_err(LaunchError::Signals)?;
    let (spawned_tx, mut spawned_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut launch = tokio::task::spawn_blocking(move || {
        let on_spawn = |child| {
            let _ = spawned_tx.send(child);
        };
        launch_timed(&config, &mapping, move || Ok(upstreams), on_spawn)
    });
    let mut child: Option<signals::ChildSignaller> = None;
    loop {
        tokio::select! {
            done = &mut launch => return done.map_err(LaunchError::Join)?.map(|(o, _)| o),
            Some(c) = spawned_rx.recv() => child = Some(c),
            sig = signals.recv() => {
                if let Some(c) = &child && let Err(e) = c.send(sig) {
                    tracing::warn!("could not forward {} to the VMM: {e}", sig.name());
                }
            }
        }
    }
}

/// Runs `config` in a confined child mapped with `mapping` and waits for it. `on_spawn` gets a
/// handle to signal the child as soon as it exists; `upstreams` is called once the child is set
/// up (root mounted and provisioned, listeners made) and returns each guest port's upstream, in
/// order: it may wait (for the bundle), and the guest boots only once it has returned. Also
/// returns how long each setup phase took (for the benches). Blocking: call it from a blocking
/// thread.
pub fn launch_timed(
    config: &VmConfig,
    mapping: &Mapping,
    upstreams: impl FnOnce() -> Result<Vec<SocketAddr>, LaunchError>,
    on_spawn: impl FnOnce(signals::ChildSignaller),
) -> Result<(Outcome, Phases), LaunchError> {
    let started = Instant::now();
    crate::sys::raise_open_file_limit();
    let exe = std::env::current_exe().map_err(LaunchError::CurrentExe)?;
    let (mut ours, theirs) = UnixStream::pair().map_err(LaunchError::Socket)?;
    let theirs: std::os::fd::OwnedFd = theirs.into();
    let mut cmd = Command::new(exe);
    let fd = crate::sys::inherit::inherit_fd(&mut cmd, &theirs);
    cmd.arg(crate::hidden::VMM_CHILD)
        .env(env_vars::KRBOTTLE_VMM_FD, fd.to_string());
    let streams = StdStreams::detect();
    streams.configure(&mut cmd);
    let mut child = confine::spawn(&mut cmd, config, mapping)?;
    let relays = streams.relay(&mut child);
    let spawned = started.elapsed();
    drop(theirs);
    match signals::ChildSignaller::new(child.id()) {
        Ok(signaller) => on_spawn(signaller),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LaunchError::Signals(e));
        }
    }

    let mut ready = Duration::ZERO;
    let setup = (|| {
        let json = serde_json::to_vec(config).map_err(LaunchError::EncodeConfig)?;
        control::write_frame(&mut ours, &json).map_err(LaunchError::SendConfig)?;
        let fds = match confine::receive_listeners(&ours).map_err(LaunchError::ReceiveListeners)? {
            Some((control::LISTENERS, fds)) => fds,
            Some((control::FAILED, _)) => {
                return Err(LaunchError::ChildSetup(read_rest(&mut ours)));
            }
            _ => return Err(LaunchError::ChildDied(String::new())),
        };
        ready = started.elapsed();
        if fds.len() != config.guest_ports.len() {
            return Err(LaunchError::ListenerCount {
                got: fds.len(),
                want: config.guest_ports.len(),
            });
        }
        let upstreams = upstreams()?;
        if upstreams.len() != fds.len() {
            return Err(LaunchError::ListenerCount {
                got: upstreams.len(),
                want: fds.len(),
            });
        }
        for (fd, upstream) in fds.into_iter().zip(upstreams) {
            relay::serve(TcpListener::from(fd), upstream);
        }
        if let ChildMode::Boot = config.mode {
            ours.write_all(&[control::GO])
                .map_err(LaunchError::SendConfig)?;
        }
        Ok(())
    })();
    if let Err(err) = setup {
        let _ = child.kill();
        let status = child.wait().map_err(LaunchError::Wait)?;
        return Err(match err {
            LaunchError::ChildDied(_) => LaunchError::ChildDied(status.to_string()),
            other => other,
        });
    }

    if let ChildMode::NetProbe { .. } = config.mode {
        let status = child.wait().map_err(LaunchError::Wait)?;
        return match read_status_byte(&mut ours) {
            Some(control::FAILED) => Err(LaunchError::ChildSetup(read_rest(&mut ours))),
            _ => Ok((
                Outcome::Exited(status.code().unwrap_or(crate::exit::FAILURE.into())),
                Phases {
                    spawned,
                    ready,
                    configured: started.elapsed(),
                    entered: None,
                },
            )),
        };
    }

    // The terminal goes raw only once the guest is about to own it.
    let stdin = std::io::stdin();
    let raw = if streams.interactive {
        Some(tty::RawModeGuard::enter(stdin.as_fd()).map_err(LaunchError::RawMode)?)
    } else {
        None
    };
    let configured = started.elapsed();
    let status_byte = read_status_byte(&mut ours);
    let phases = Phases {
        spawned,
        ready,
        configured,
        entered: (status_byte == Some(control::ENTERING)).then(|| started.elapsed()),
    };
    tracing::debug!(
        "phases: child in its namespaces {spawned:.1?}, config sent and relays up {configured:.1?}, krun_start_enter {:.1?} (since launch)",
        phases.entered.unwrap_or_else(|| started.elapsed())
    );
    if status_byte == Some(control::NOT_ENTERING) {
        drop(raw);
        let _ = child.wait();
        for relay in relays {
            let _ = relay.join();
        }
        let why = config.stop_before_enter.clone().unwrap_or_default();
        let phases = Phases {
            entered: Some(started.elapsed()),
            ..phases
        };
        return Ok((Outcome::NotBooted(why), phases));
    }
    let log = match status_byte {
        Some(control::ENTERING) => Some(std::thread::spawn(move || forward_log(ours))),
        Some(control::FAILED) => {
            let msg = read_rest(&mut ours);
            drop(raw);
            let _ = child.wait();
            return Err(LaunchError::ChildSetup(msg));
        }
        _ => None,
    };
    let status = child.wait().map_err(LaunchError::Wait)?;
    drop(raw);
    // The child is gone, so its pipe ends are closed: the relays drain what is left and end.
    for relay in relays {
        let _ = relay.join();
    }
    let errors = log.and_then(|h| h.join().ok()).unwrap_or_default();
    if status_byte != Some(control::ENTERING) {
        return Err(LaunchError::ChildDied(status.to_string()));
    }
    Ok((classify(status.code(), status.signal(), &errors), phases))
}

/// How the guest's standard streams are wired.
///
/// libkrun gives the guest a terminal console when any of the three descriptors it gets is a
/// TTY, and then sends that stream through the console port; when the console's output is not a
/// terminal, libkrun turns it into log lines. So a half-terminal session (say stdout to a file,
/// stderr on the terminal) would lose stderr into libkrun's log. A session is interactive when
/// stdin and stdout are both terminals: then the child inherits all three and the guest gets a
/// real terminal. Otherwise every terminal among the three is replaced by a pipe that the parent
/// relays, so the guest sees plain streams, kept apart. The parent relays (not a thread in the
/// child) because libkrun `_exit`s the child right after the guest ends: only a process that
/// outlives it can drain the last bytes.
struct StdStreams {
    interactive: bool,
    tty: [bool; 3],
}

impl StdStreams {
    fn detect() -> Self {
        let tty = [
            tty::is_terminal(std::io::stdin().as_fd()),
            tty::is_terminal(std::io::stdout().as_fd()),
            tty::is_terminal(std::io::stderr().as_fd()),
        ];
        StdStreams {
            interactive: tty[0] && tty[1],
            tty,
        }
    }

    fn configure(&self, cmd: &mut Command) {
        if self.interactive {
            return;
        }
        if self.tty[0] {
            cmd.stdin(std::process::Stdio::piped());
        }
        if self.tty[1] {
            cmd.stdout(std::process::Stdio::piped());
        }
        if self.tty[2] {
            cmd.stderr(std::process::Stdio::piped());
        }
    }

    /// Starts the relays for the pipes `configure` asked for; returns the ones to join (output).
    fn relay(&self, child: &mut std::process::Child) -> Vec<std::thread::JoinHandle<()>> {
        if let Some(mut pipe) = child.stdin.take() {
            // Never joined: reading the terminal may block until the user types.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut pipe);
            });
        }
        let mut handles = Vec::new();
        if let Some(mut pipe) = child.stdout.take() {
            handles.push(std::thread::spawn(move || {
                let _ = std::io::copy(&mut pipe, &mut std::io::stdout().lock());
            }));
        }
        if let Some(mut pipe) = child.stderr.take() {
            handles.push(std::thread::spawn(move || {
                let _ = std::io::copy(&mut pipe, &mut std::io::stderr().lock());
            }));
        }
        handles
    }
}

fn read_status_byte(sock: &mut UnixStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match sock.read(&mut b) {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

fn read_rest(sock: &mut UnixStream) -> String {
    let mut s = String::new();
    let _ = sock.read_to_string(&mut s);
    s.trim().to_owned()
}

/// Copies libkrun's log lines to stderr as they come and returns the error lines.
fn forward_log(sock: UnixStream) -> Vec<String> {
    use std::io::{BufRead, Write};
    let mut errors = Vec::new();
    for line in std::io::BufReader::new(sock).lines() {
        let Ok(line) = line else { break };
        // In raw mode a bare \n does not return the carriage.
        let _ = write!(std::io::stderr(), "{line}\r\n");
        if is_error_line(&line) {
            errors.push(line);
        }
    }
    errors
}

/// libkrun's log lines look like `[2026-01-01T00:00:00.000000Z ERROR krun_vmm::…] message`.
/// Lines of the `init_or_kernel` target are the guest's console (kernel and init messages) that
/// libkrun logs at ERROR level: they say nothing about the VMM.
fn is_error_line(line: &str) -> bool {
    line.split(']').next().is_some_and(|head| {
        let words: Vec<&str> = head.split_whitespace().collect();
        words.contains(&"ERROR") && !words.contains(&GUEST_CONSOLE_TARGET)
    })
}

/// The log target libkrun uses for the guest's console output.
const GUEST_CONSOLE_TARGET: &str = "init_or_kernel";

/// What the child's end means. libkrun exits with the guest's code when the guest exits; when
/// the VMM itself fails it exits with a generic code after logging an error, so an error in
/// libkrun's log is what tells the two apart.
fn classify(code: Option<i32>, signal: Option<i32>, errors: &[String]) -> Outcome {
    match (code, signal) {
        (_, Some(sig)) => Outcome::VmmFailed(format!("the VMM was killed by signal {sig}")),
        (Some(code), _) if code != 0 && !errors.is_empty() => {
            let first = errors[0]
                .split_once("] ")
                .map_or(errors[0].as_str(), |(_, m)| m);
            Outcome::VmmFailed(first.to_owned())
        }
        (Some(code), _) => Outcome::Exited(code),
        (None, None) => Outcome::VmmFailed("the VMM ended without an exit status".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let err = "[2026-01-01T00:00:00.000000Z ERROR krun_vmm::linux::vstate] Received KVM_EXIT_INTERNAL_ERROR signal".to_owned();
        let warn = "[2026-01-01T00:00:00.000000Z WARN  devices] ERROR in text".to_owned();
        let guest =
            "[2026-01-01T00:00:00.000000Z ERROR init_or_kernel] sh: x: not found".to_owned();
        assert!(is_error_line(&err));
        assert!(!is_error_line(&warn));
        assert!(!is_error_line(&guest));
        let table = [
            (Some(0), None, vec![], Outcome::Exited(0)),
            (Some(3), None, vec![], Outcome::Exited(3)),
            (Some(0), None, vec![err.clone()], Outcome::Exited(0)),
            (
                Some(1),
                None,
                vec![err.clone()],
                Outcome::VmmFailed("Received KVM_EXIT_INTERNAL_ERROR signal".into()),
            ),
            (
                None,
                Some(9),
                vec![],
                Outcome::VmmFailed("the VMM was killed by signal 9".into()),
            ),
        ];
        for (code, sig, errors, want) in table {
            assert_eq!(classify(code, sig, &errors), want, "{code:?} {sig:?}");
        }
    }
}
