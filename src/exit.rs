//! Process exit codes, defined once and documented in `--help`.
//!
//! `run` and `start` exit with the guest command's own code, whatever it is. krbottle's own
//! failures before the guest runs exit with [`FAILURE`] (1), like most tools; once the guest
//! was started, the one code a guest cannot be told apart from is [`VMM_FAILED`] (125, the code
//! `docker run` uses for the same case), so a script that must know checks for it.

/// Success.
pub const OK: u8 = 0;
/// krbottle itself failed (bad input, Docker error, unpack error…); the message says why.
pub const FAILURE: u8 = 1;
/// The command line could not be parsed (clap's convention).
pub const USAGE: u8 = 2;

/// The VMM failed after setup: the hypervisor could not run the guest, libkrun reported an
/// error, or the VMM was killed. The guest command's own exit code is unknown.
pub const VMM_FAILED: u8 = 125;

/// The exit-code table printed at the end of `krbottle --help`.
pub const HELP_TABLE: &str = "\
Exit codes:
  0    success
  1    krbottle failed; the message says what to do next
  2    the command line could not be parsed
  125  run: the VMM failed (hypervisor error, libkrun error, VMM killed)
  other  run: the exit code of the guest command";
