//! Entries of the engine's own storage: the layer directories of an overlay-style graph driver
//! (`overlay2`, `fuse-overlayfs`: `GraphDriver` in `docker image inspect`), taken into a tree of
//! the [`layers`](super::layers) cache by its top-down assembly: hard-linked where the engine's
//! storage and the cache share a filesystem, copied otherwise.
//!
//! The engine keeps each layer as a plain directory of that layer's changes, the same content
//! its save stream would serialise as that layer's tar, without the engine having to produce (and
//! us to parse) the stream. Deletions come in the driver's own forms, which the assembly reads: a
//! `0:0` character device (overlay2) or a `.wh.` file (fuse-overlayfs) for a whiteout, an opaque
//! xattr ([`is_opaque`]) or a `.wh..wh..opq` file for an opaque directory. The driver's own xattrs
//! are not copied.
//!
//! A committed layer directory is immutable: the engine never writes into it again (a container's
//! changes go to its own upper directory, `docker commit` makes a new layer), and removing the
//! image only unlinks the engine's names. The cache never writes into its trees either (a
//! bottle's writes go to its own overlay upper layer). So a non-directory is taken by a hard link
//! to the engine's inode, which writes no data and allocates no inode: the same content, ids,
//! mode, mtime and xattrs a copy would have, and once the engine drops the image our names keep
//! the data. An entry is copied instead when it carries the driver's own xattrs (they are the
//! driver's bookkeeping, and a copy leaves them out), when the link is refused (the cache on
//! another filesystem, `EXDEV`, or a link count at its limit), or with
//! `KRBOTTLE_NO_ENGINE_LINKS=1`.
//!
//! The source is read descriptor-relative and never followed (its names and links are the
//! image's): `linkat` without `AT_SYMLINK_FOLLOW` links a symlink itself, and copies are created
//! `O_EXCL | O_NOFOLLOW` in a fresh tree. Hard links within the layer stay hard links. Only the
//! `root` ownership mode uses this route: the ids are taken as they are.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::ownership::{self, EntryMeta, Ownership, Skipped};
use super::tree::{self, RelPath};

/// Xattr names with which overlay drivers mark an opaque directory.
const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];

/// Failures while copying one engine layer directory; the caller adds which layer.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("Cannot read {path} in the engine's layer directory")]
    Read {
        path: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write {path} into the layer cache")]
    Write {
        path: RelPath,
        #[source]
        source: io::Error,
    },
}

/// What one imported layer holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct ImportStats {
    pub entries: u64,
    /// Bytes of file content taken from the engine, linked or copied.
    pub bytes: u64,
    /// Of those, bytes copied (the rest are hard links to the engine's inodes).
    pub copied_bytes: u64,
    /// Non-directories taken by a hard link to the engine's inode.
    pub linked: u64,
    pub skipped: Skipped,
}

/// Takes entries of engine layer directories into one destination tree, by hard links to the
/// engine's inodes where it can, by copies otherwise, keeping hard links within the source as
/// hard links.
pub struct Import<'a> {
    dst_root: BorrowedFd<'a>,
    /// Source inodes with more than one link → where their first copy went.
    links: HashMap<(u64, u64), RelPath>,
    /// Whether entries are still hard-linked to the engine's (off after the first refusal that
    /// would refuse every other entry too, e.g. `EXDEV`).
    link_engine: bool,
    pub stats: ImportStats,
}

impl<'a> Import<'a> {
    /// Takes entries into the tree at `dst_root`.
    pub fn new(dst_root: BorrowedFd<'a>) -> Self {
        Import {
            dst_root,
            links: HashMap::new(),
            link_engine: std::env::var_os(crate::env_vars::KRBOTTLE_NO_ENGINE_LINKS).is_none(),
            stats: ImportStats::default(),
        }
    }

    /// Takes the non-directory `name` of source directory `src` into `dst` (`path` in the
    /// tree): a hard link to the engine's inode, or a copy of its content, ids, mode, mtime and
    /// xattrs; a second name of an inode already taken becomes a hard link to the first. Sockets
    /// are skipped (the tar format has none).
    pub fn copy_leaf(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        path: &RelPath,
        st: &rustix::fs::Stat,
    ) -> Result<(), ImportError> {
        self.stats.entries += 1;
        let read_err = |source: io::Error| ImportError::Read {
            path: path.clone(),
            source,
        };
        let write_err = |source: io::Error| ImportError::Write {
            path: path.clone(),
            source,
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        if matches!(
            kind,
            FileType::Socket | FileType::Directory | FileType::Unknown
        ) {
            // Sockets are not part of an image (the tar format has none); directories are the
            // caller's.
            return Ok(());
        }
        if self.link_engine && self.link(src, dst, name, kind, st).map_err(read_err)? {
            return Ok(());
        }
        match kind {
            FileType::RegularFile => {
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                        let (parent, first_name) = first.split_last().expect("a named file");
                        let parent = tree::open_dir(self.dst_root, &parent).map_err(write_err)?;
                        return rustix::fs::linkat(
                            &parent,
                            first_name,
                            dst,
                            name,
                            AtFlags::empty(),
                        )
                        .map_err(|e| write_err(e.into()));
                    }
                    self.links.insert((st.st_dev, st.st_ino), path.clone());
                }
                let from = File::from(
                    rustix::fs::openat(
                        src,
                        name,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| read_err(e.into()))?,
                );
                let meta = read_meta(from.as_fd(), None).map_err(read_err)?;
                let mut to = File::from(tree::create_file(dst, name).map_err(write_err)?);
                // std copies file to file with copy_file_range where the kernel offers it.
                let mut from_ref = &from;
                let n = io::copy(&mut from_ref, &mut to).map_err(write_err)?;
                self.stats.bytes += n;
                self.stats.copied_bytes += n;
                ownership::finish_file(to.as_fd(), &meta, Ownership::Root, &mut self.stats.skipped)
                    .map_err(|e| write_err(e.into()))
            }
            FileType::Symlink
            | FileType::Fifo
            | FileType::CharacterDevice
            | FileType::BlockDevice => {
                let symlink = kind == FileType::Symlink;
                if symlink {
                    let target = rustix::fs::readlinkat(src, name, Vec::new())
                        .map_err(|e| read_err(e.into()))?;
                    rustix::fs::symlinkat(target.as_bytes(), dst, name)
                } else {
                    crate::sys::fs::mknod(dst, name, kind, Mode::from_raw_mode(0o600), st.st_rdev)
                }
                .map_err(|e| write_err(e.into()))?;
                let meta = read_meta(src, Some(name)).map_err(read_err)?;
                ownership::finish_special(
                    dst,
                    name,
                    &meta,
                    symlink,
                    Ownership::Root,
                    &mut self.stats.skipped,
                )
                .map_err(|e| write_err(e.into()))
            }
            _ => Ok(()),
        }
    }

    /// Hard-links `name` of `src` to `dst` when it carries none of the driver's xattrs: whether
    /// it did. A refusal that would meet every entry turns linking off for the rest.
    fn link(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        kind: FileType,
        st: &rustix::fs::Stat,
    ) -> io::Result<bool> {
        if has_driver_xattrs(src, name)? {
            return Ok(false);
        }
        match rustix::fs::linkat(src, name, dst, name, AtFlags::empty()) {
            Ok(()) => {
                self.stats.linked += 1;
                if kind == FileType::RegularFile {
                    self.stats.bytes += st.st_size as u64;
                }
                Ok(true)
            }
            // This inode's link count is at the filesystem's limit: copy it.
            Err(rustix::io::Errno::MLINK) => Ok(false),
            // Another filesystem, or links refused (`fs.protected_hardlinks`, a filesystem
            // without them): no entry will link.
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::PERM
                | rustix::io::Errno::ACCESS
                | rustix::io::Errno::NOTSUP,
            ) => {
                self.link_engine = false;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether `name` in `dir` (not followed) carries xattrs of the overlay driver or an SELinux
/// label: both stay out of a copy, so such an entry is copied rather than linked.
fn has_driver_xattrs(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    let path = tree::proc_path(dir, name);
    let names = ownership::xattr_names(|buf| rustix::fs::llistxattr(&path, buf))?;
    Ok(names.iter().any(|key| !copied_xattr(key)))
}

pub fn is_opaque(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let mut buf = [0u8; 4];
    for name in OPAQUE_XATTRS {
        match rustix::fs::fgetxattr(dir, name, &mut buf) {
            Ok(n) if buf[..n] == *b"y" => return Ok(true),
            Ok(_) => {}
            Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => {}
            // An unprivileged reader may not see trusted.*: that is not this layer's mark.
            Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// Whether a copy keeps an xattr: not the overlay driver's bookkeeping, nor an SELinux label
/// (the host's, not the image's).
fn copied_xattr(name: &str) -> bool {
    !(name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name.starts_with("user.fuseoverlayfs.")
        || name == "security.selinux")
}

/// The metadata of an entry: of the open `fd` itself, or of `name` in directory `fd` (a symlink
/// or node, read by name without following it).
pub fn read_meta(fd: BorrowedFd<'_>, name: Option<&OsStr>) -> io::Result<EntryMeta> {
    let st = match name {
        None => rustix::fs::fstat(fd)?,
        Some(name) => rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)?,
    };
    let proc = name.map(|n| tree::proc_path(fd, n));
    EntryMeta::read(
        &st,
        |buf| match &proc {
            None => rustix::fs::flistxattr(fd, buf),
            Some(p) => rustix::fs::llistxattr(p, buf),
        },
        |key, buf| match &proc {
            None => rustix::fs::fgetxattr(fd, key, buf),
            Some(p) => rustix::fs::lgetxattr(p, key, buf),
        },
        copied_xattr,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Takes every entry of `src` into a fresh tree; (the tree's dir, the stats).
    fn take_all(src: &std::path::Path, link: bool) -> (tempfile::TempDir, ImportStats) {
        let out = tempfile::tempdir().unwrap();
        let (s, d) = (
            tree::open_dir_path(src).unwrap(),
            tree::open_dir_path(out.path()).unwrap(),
        );
        let mut import = Import::new(d.as_fd());
        import.link_engine = link;
        let mut names = tree::list_dir(s.as_fd()).unwrap();
        names.sort();
        for name in names {
            let st = rustix::fs::statat(&s, &name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
            let path = RelPath::root().join(&name);
            import
                .copy_leaf(s.as_fd(), d.as_fd(), &name, &path, &st)
                .unwrap();
        }
        let stats = import.stats;
        (out, stats)
    }

    /// A layer directory as an engine leaves it: a plain file, a second name of it, a symlink
    /// and a file the driver marked with its own xattr. `None` (saying why) where the temp dir's
    /// filesystem has no user xattrs; under `CI` that fails instead.
    fn engine_layer(test: &str) -> Option<tempfile::TempDir> {
        let src = tempfile::tempdir().unwrap();
        let p = src.path();
        std::fs::write(p.join("plain"), b"data").unwrap();
        std::fs::hard_link(p.join("plain"), p.join("second")).unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", p.join("link")).unwrap();
        std::fs::write(p.join("marked"), b"marked").unwrap();
        match rustix::fs::setxattr(
            p.join("marked"),
            "user.fuseoverlayfs.origin",
            b"x",
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => Some(src),
            // A temp dir without user xattrs cannot hold the driver's mark.
            Err(rustix::io::Errno::NOTSUP) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{test} needs user xattrs in the temp dir in CI"
                );
                eprintln!("skipping {test}: the temp dir's filesystem has no user xattrs");
                None
            }
            Err(e) => panic!("setxattr: {e}"),
        }
    }

    #[test]
    fn engine_entries_are_linked_unless_the_driver_marked_them() {
        let Some(src) = engine_layer("engine_entries_are_linked_unless_the_driver_marked_them")
        else {
            return;
        };
        let (out, stats) = take_all(src.path(), true);
        let ino = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().ino();
        for name in ["plain", "second", "link"] {
            assert_eq!(
                ino(&src.path().join(name)),
                ino(&out.path().join(name)),
                "{name} is a link to the engine's inode"
            );
        }
        assert_eq!(
            std::fs::read_link(out.path().join("link")).unwrap(),
            std::path::Path::new("../../etc/passwd"),
            "the symlink itself was linked, not what it points at"
        );
        assert_ne!(
            ino(&src.path().join("marked")),
            ino(&out.path().join("marked")),
            "a file with the driver's xattr is copied"
        );
        assert_eq!(std::fs::read(out.path().join("marked")).unwrap(), b"marked");
        let mut buf = [0u8; 8];
        assert!(
            rustix::fs::getxattr(
                out.path().join("marked"),
                "user.fuseoverlayfs.origin",
                &mut buf
            )
            .is_err(),
            "the driver's xattr stays out of the copy"
        );
        assert_eq!(stats.linked, 3);
        assert_eq!((stats.bytes, stats.copied_bytes), (4 + 4 + 6, 6));
    }

    #[test]
    fn with_links_off_every_entry_is_a_copy_and_hard_links_stay_hard_links() {
        let Some(src) =
            engine_layer("with_links_off_every_entry_is_a_copy_and_hard_links_stay_hard_links")
        else {
            return;
        };
        let (out, stats) = take_all(src.path(), false);
        let meta = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap();
        for name in ["plain", "second", "link", "marked"] {
            assert_ne!(
                meta(&src.path().join(name)).ino(),
                meta(&out.path().join(name)).ino(),
                "{name} is a copy"
            );
        }
        assert_eq!(
            meta(&out.path().join("plain")).ino(),
            meta(&out.path().join("second")).ino(),
            "the two names of one inode are one inode in the copy"
        );
        assert_eq!(stats.linked, 0);
        assert_eq!(stats.copied_bytes, stats.bytes);
    }
}
