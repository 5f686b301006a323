//! From a Docker image to a root filesystem libkrun can boot.
//!
//! [`prepare`] holds the flows the verbs and `start` call (build, unpack, the cache, prune).
//! Below it, [`unpack::unpack_save`] reads a `docker save` stream in one pass: [`layout`] finds
//! the layer order in Docker's `manifest.json` or OCI's `index.json`, [`layer`] streams each layer
//! into its own directory as it arrives (the order is only known at the end of the stream),
//! [`merge`] stacks the verified layers by renames, [`ownership`] applies the image's ids, modes
//! and xattrs, and [`tree`] holds the fd-relative file operations, which never follow a symlink,
//! they all use.
//!
//! Archive paths are taken the way Docker takes them: a leading `/` or `./` is stripped, any
//! `..` component is refused. Nothing in those modules talks to Docker; callers hand in the
//! stream. Around them:
//! - [`cache`]: one unpacked rootfs per image ID and ownership mode, filled atomically.
//! - [`layers`]: one tree per layer keyed by chain ID, shared by the images that have it; an
//!   image's rootfs is assembled from them by hard links. [`import`] fills a layer from the
//!   engine's own layer directory when it is local and readable.
//! - [`store`]: the fill-once protocol of both (a temp dir under the entry's lock, renamed into
//!   place with its record).
//! - [`rootless`]: the `userns` mode, the unpacker in a child inside a mapped user namespace.
//! - [`clone`]: a bottle's own writable root without copying the image where the platform allows.

pub mod cache;
pub mod clone;
#[cfg(target_os = "linux")]
pub mod import;
pub mod layer;
pub mod layers;
pub mod layout;
pub mod merge;
pub mod ownership;
pub mod prepare;
#[cfg(target_os = "linux")]
pub mod rootless;
pub mod store;
pub mod tree;
pub mod unpack;

#[cfg(test)]
mod test_save;
#[cfg(test)]
mod unpack_tests;

use std::io;
use std::path::Path;

pub use ownership::Ownership;
pub use unpack::{UnpackError, UnpackOptions, UnpackSummary, unpack_save};

/// The local Debian base image that krbottle's own images (bundle, examples, tests) start
/// `FROM`. No registry is assumed: `scripts/build-base-image.sh` makes it with debootstrap.
pub const BASE_IMAGE: &str = "krbottle/debian-base:bookworm";

/// Deletes a tree krbottle made (a cache entry, a bottle's writable root) with [`tree::remove_tree`]:
/// descriptor-relative, never following a link, read-only directories made writable first. A
/// tree holding files owned by subordinate ids (made in `userns` mode), which the user may not
/// delete, is deleted again from a child in the user's id mapping, where they are its own.
pub fn remove_tree_any_owner(path: &Path) -> io::Result<()> {
    match tree::remove_tree(path) {
        #[cfg(target_os = "linux")]
        Err(e)
            if e.kind() == io::ErrorKind::PermissionDenied
                && !rustix::process::geteuid().is_root() =>
        {
            let mapping = crate::sys::userns::IdMapping::for_current_user().map_err(|m| {
                io::Error::new(
                    e.kind(),
                    format!("{e}; deleting it in the user's id mapping is not possible: {m}"),
                )
            })?;
            rootless::remove_in_userns(path, &mapping).map_err(io::Error::other)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
