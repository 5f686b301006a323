//! From a Docker image to a root filesystem libkrun can boot.
//!
//! [`unpack::unpack_save`] reads a `docker save` stream in one pass: [`layout`] finds the layer
//! order in Docker's `manifest.json` or OCI's `index.json`, [`layer`] streams each layer into its
//! own directory as it arrives (the order is only known at the end of the stream), [`merge`]
//! stacks the verified layers by renames, [`ownership`] applies the image's ids, modes and xattrs,
//! and [`tree`] holds the fd-relative file operations, which never follow a symlink, they all use.
//!
//! Archive paths are taken the way Docker takes them: a leading `/` or `./` is stripped, any
//! `..` component is refused. Nothing here talks to Docker; callers hand in the stream.

pub mod layer;
pub mod layout;
pub mod merge;
pub mod ownership;
pub mod tree;
pub mod unpack;

#[cfg(test)]
mod test_save;
#[cfg(test)]
mod unpack_tests;

pub use ownership::Ownership;
pub use unpack::{UnpackError, UnpackOptions, UnpackSummary, unpack_save};
