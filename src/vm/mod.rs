//! The VMM: a re-executed, confined child of krbottle that configures libkrun and boots the guest.
//!
//! - `config`: what the child is asked to do, and the guest's `/.krun_config.json`;
//! - `krun`: the one safe wrapper around libkrun (all of its `unsafe` lives there).

pub mod config;
pub mod krun;
