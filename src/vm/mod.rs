//! The VMM: a re-executed, confined child of krbottle that configures libkrun and boots the guest.
//!
//! - `prepare`: a typed request (from `run`, `bench run`, `start`) checked and made the child's
//!   config;
//! - `config`: what the child is asked to do, and the guest's `/.krun_config.json`;
//! - `krun`: the one safe wrapper around libkrun (all of its `unsafe` lives there);
//! - `launch` (parent) and `child` (`__vmm`), talking over `control`;
//! - `relay`: the endpoint relays, run by the parent in the host's network namespace;
//! - `probe`: `krbottle debug net-probe`, run by the child instead of booting;
//! - `doctor`: can this machine boot a guest, and why not;
//! - `guest_command`: finding the command in the rootfs before booting;
//! - `seatbelt`: the macOS confinement profile (generated and tested everywhere, applied on macOS).

#[cfg(target_os = "linux")]
pub mod child;
pub mod config;
pub mod control;
#[cfg(target_os = "linux")]
pub mod doctor;
pub mod guest_command;
pub mod krun;
#[cfg(target_os = "linux")]
pub mod launch;
#[cfg(target_os = "linux")]
pub mod prepare;
#[cfg(target_os = "linux")]
pub mod probe;
pub mod relay;
pub mod seatbelt;
