//! From a Docker image to a root filesystem libkrun can boot.
//!
//! - `docker`: the engine's API (bollard): inspect, build, streamed `docker save`, export.
//! - `cache`: one unpacked rootfs per image ID and ownership mode, filled atomically.
//! - `clone`: a bottle's own writable root without copying the image where the platform allows.

pub mod cache;
pub mod clone;
pub mod docker;

/// Docker label put on every container and image krbottle creates, so leftovers can be found.
pub const LABEL_TOOL: &str = "dev.krbottle.tool";
