//! The VMM: a re-executed, confined child of krbottle that configures libkrun and boots the guest.
//!
//! - `prepare`: a typed request (from `run`, `bench run`, `start`) checked and made the child's
//!   config;
//! - `config`: what the child is asked to do, and the guest's `/.krun_config.json`;
//! - `krun`: the one safe wrapper around libkrun (all of its `unsafe` lives there);
//! - `launch` (parent) and `child` (`__vmm`), talking over `control`;
//! - `relay`: the endpoint relays, run by the parent in the host's network namespace;
//! - `probe`: `krbottle debug net-probe`, run by the child instead of booting;
//! - `doctor`: can this machine boot a guest, and why not (`doctor_macos`: the Mac's facts);
//! - `confine`: the child's confinement, each Linux/macOS difference one function;
//! - `guest_command`: finding the command in the rootfs before booting;
//! - `seatbelt`: the macOS confinement profile (generated and tested everywhere, applied on macOS).

pub mod child;
pub mod config;
pub mod confine;
pub mod control;
pub mod doctor;
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub mod doctor_macos;
pub mod guest_command;
pub mod krun;
pub mod launch;
pub mod prepare;
pub mod probe;
pub mod relay;
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub mod seatbelt;
