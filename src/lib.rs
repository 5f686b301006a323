//! krbottle: run AI coding agents in libkrun microVMs whose only way out is a sidecar bundle.
//!
//! The binary (`src/main.rs`) is a thin shell over these modules; each module owns one concern
//! and one error type. See `ARCHITECTURE.md` in the shared docs for the flow of `krbottle start`.

pub mod bench;
pub mod bundle;
pub mod ca;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod docker;
pub mod env_vars;
pub mod exit;
pub mod image;
pub mod lockfile;
pub mod manifest;
pub mod net;
pub mod output;
pub mod secrets;
pub mod state;
pub mod sys;
pub mod vm;
