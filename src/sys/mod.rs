//! Small wrappers over the operating system that the rest of the crate builds on.
//!
//! The `unsafe` the crate needs outside libkrun lives here, each block with its reason:
//! - `userns`: re-executed children in new user/net/mount namespaces with an id mapping;
//! - `netif`: loopback up, and what interfaces and routes a network namespace has;
//! - `fdpass`: passing descriptors over a unix socket (`SCM_RIGHTS`);
//! - `signals`: the one owner of the termination signals, and forwarding them to a child;
//! - `kvm`: probing `/dev/kvm`;
//! - `tty`: raw mode with guaranteed restore;
//! - `fs`: file-system calls that differ between Linux and macOS (nodes, clones, sync), and
//!   `write_atomic`, the one temp-file-then-rename writer.

#[cfg(target_os = "linux")]
pub mod fdpass;
pub mod fs;
#[cfg(target_os = "linux")]
pub mod kvm;
#[cfg(target_os = "linux")]
pub mod netif;
pub mod signals;
pub mod tty;
#[cfg(target_os = "linux")]
pub mod userns;
