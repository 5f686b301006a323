//! From a Docker image to a root filesystem libkrun can boot.
//!
//! [`unpack::unpack_save`] reads a `docker save` stream in one pass: [`layout`] finds the layer
//! order in Docker's `manifest.json` or OCI's `index.json`, [`layer`] streams each layer into its
//! own directory as it arrives (the order is only known at the end of the stream), [`merge`]
//! stacks the verified layers by renames, [`ownership`] applies the image's ids, modes and xattrs,
//! and [`tree`] holds the fd-relative file operations, which never follow a symlink, they all use.
//!
//! Archive paths are taken the way Docker takes them: a leading `/` or `./` is stripped, any
//! `..` component is refused. Nothing in those modules talks to Docker; callers hand in the
//! stream. Around them:
//! - [`docker`]: the engine's API (bollard): inspect, build, streamed `docker save`, export.
//! - [`cache`]: one unpacked rootfs per image ID and ownership mode, filled atomically.
//! - [`rootless`]: the `userns` mode, the unpacker in a child inside a mapped user namespace.
//! - [`clone`]: a bottle's own writable root without copying the image where the platform allows.

pub mod cache;
pub mod clone;
pub mod layer;
pub mod layout;
pub mod merge;
pub mod ownership;
#[cfg(target_os = "linux")]
pub mod rootless;
pub mod tree;
pub mod unpack;

#[cfg(test)]
mod test_save;
#[cfg(test)]
mod unpack_tests;

pub use ownership::Ownership;
pub use unpack::{UnpackError, UnpackOptions, UnpackSummary, unpack_save};

/// The local Debian base image that krbottle's own images (bundle, examples, tests) start
/// `FROM`. No registry is assumed: `scripts/build-base-image.sh` makes it with debootstrap.
pub const BASE_IMAGE: &str = "krbottle/debian-base:bookworm";

/// Docker label put on every container and image krbottle creates, so leftovers can be found.
pub const LABEL_TOOL: &str = "dev.krbottle.tool";
