//! From a Docker image to a root filesystem libkrun can boot.
//!
//! [`unpack::unpack_save`] reads a `docker save` stream: [`layout`] finds the layer order in
//! Docker's `manifest.json` or OCI's `index.json`, [`layer`] streams each layer into its own
//! directory, [`merge`] stacks them by renames, [`ownership`] applies the image's ids and modes,
//! and [`tree`] holds the fd-relative, never-following file operations they all use.

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
