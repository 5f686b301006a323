//! krbottle: run AI coding agents in libkrun microVMs whose only way out is a sidecar bundle.
//!
//! The binary (`src/main.rs`) is a thin shell over these modules; each owns one concern and one
//! error type. They follow the flow of `krbottle start`:
//!
//! ```text
//! manifest → plan → image → rootfs → provision → bundle → vmm → teardown
//! ```
//!
//! - verbs: `cli` (clap structs, typed values), `commands` (one thin file per verb);
//! - flows: `image` (build, unpack, cache), `bundle` (its host side: image, container),
//!   `daemon` (what runs inside the bundle: init, gateway), `vm` (prepare, the confined VMM
//!   child, libkrun), `bench` (the benchmarks behind `krbottle bench`);
//! - shared below them: `manifest`, `docker` (the one Docker client), `net` (host names,
//!   policy), `secrets`, `ca`, `state`, `lockfile`, `output`;
//! - each name and number once: `env_vars`, `ports`, `resources`, `exit`, `hidden`;
//! - `sys`: the operating system, where the `unsafe` outside libkrun lives.
//!
//! Modules are public where the binary or the integration tests use them; the rest is private
//! to the crate, so the compiler reports what nothing uses. The VM side (`vm`, `plan`,
//! `provision`, the start flow) is built on macOS too, where its Linux-only parts (KVM checks,
//! overlays, user namespaces) are compiled but unused; so there only, they may look unused.

pub(crate) mod bench;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) mod bottle;
pub mod bundle;
pub mod ca;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod docker;
pub mod env_vars;
pub mod exit;
pub(crate) mod hidden;
pub mod image;
pub(crate) mod lockfile;
pub mod manifest;
pub(crate) mod net;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) mod output;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) mod plan;
pub(crate) mod ports;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) mod provision;
pub mod queue;
pub mod refs;
pub(crate) mod resources;
pub mod secrets;
pub mod state;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) mod sys;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) mod vm;
