//! Entries of the engine's own storage: the layer directories of an overlay-style graph driver
//! (`overlay2`, `fuse-overlayfs`: `GraphDriver` in `docker image inspect`), copied into a tree
//! of the [`layers`](super::layers) cache by its top-down assembly.
//!
//! The engine keeps each layer as a plain directory of that layer's changes, the same content
//! its save stream would serialise as that layer's tar, without the engine having to produce (and
//! us to parse) the stream. Deletions come in the driver's own forms, which the assembly reads: a
//! `0:0` character device (overlay2) or a `.wh.` file (fuse-overlayfs) for a whiteout, an opaque
//! xattr ([`is_opaque`]) or a `.wh..wh..opq` file for an opaque directory. The driver's own xattrs
//! are not copied.
//!
//! The source is read descriptor-relative and never followed (its names and links are the
//! image's); files are created `O_EXCL | O_NOFOLLOW` in a fresh tree. Hard links within the
//! layer stay hard links. Only the `root` ownership mode uses this route: the ids are copied as
//! they are.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

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
    pub bytes: u64,
    pub skipped: Skipped,
}

/// Copies entries of engine layer directories into one destination tree, keeping hard links
/// within the source as hard links.
pub struct Import<'a> {
    dst_root: BorrowedFd<'a>,
    /// Source inodes with more than one link → where their first copy went.
    links: HashMap<(u64, u64), RelPath>,
    pub stats: ImportStats,
}

impl<'a> Import<'a> {
    /// Copies into the tree at `dst_root`.
    pub fn new(dst_root: BorrowedFd<'a>) -> Self {
        Import {
            dst_root,
            links: HashMap::new(),
            stats: ImportStats::default(),
        }
    }

    /// Copies the non-directory `name` of source directory `src` into `dst` (`path` in the
    /// tree): content, ids, mode, mtime and xattrs; a second name of an inode already copied
    /// becomes a hard link to the copy. Sockets are skipped (the tar format has none).
    pub fn copy_leaf(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        path: &RelPath,
        st: &rustix::fs::Stat,
    ) -> Result<(), ImportError> {
        self.stats.entries += 1;
        self.leaf(src, dst, name, path, st)
    }

    fn leaf(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        path: &RelPath,
        st: &rustix::fs::Stat,
    ) -> Result<(), ImportError> {
        let read_err = |source: io::Error| ImportError::Read {
            path: path.clone(),
            source,
        };
        let write_err = |source: io::Error| ImportError::Write {
            path: path.clone(),
            source,
        };
        let kind = FileType::from_raw_mode(st.st_mode);
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
                let mut to = File::from(create(dst, name).map_err(write_err)?);
                // std copies file to file with copy_file_range where the kernel offers it.
                let mut from_ref = &from;
                self.stats.bytes += io::copy(&mut from_ref, &mut to).map_err(write_err)?;
                ownership::finish_file(to.as_fd(), &meta, Ownership::Root, &mut self.stats.skipped)
                    .map_err(|e| write_err(e.into()))
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src, name, Vec::new())
                    .map_err(|e| read_err(e.into()))?;
                rustix::fs::symlinkat(target.as_bytes(), dst, name)
                    .map_err(|e| write_err(e.into()))?;
                let meta = read_meta(src, Some(name)).map_err(read_err)?;
                ownership::finish_special(
                    dst,
                    name,
                    &meta,
                    true,
                    Ownership::Root,
                    &mut self.stats.skipped,
                )
                .map_err(|e| write_err(e.into()))
            }
            FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {
                crate::sys::fs::mknod(dst, name, kind, Mode::from_raw_mode(0o600), st.st_rdev)
                    .map_err(|e| write_err(e.into()))?;
                let meta = read_meta(src, Some(name)).map_err(read_err)?;
                ownership::finish_special(
                    dst,
                    name,
                    &meta,
                    false,
                    Ownership::Root,
                    &mut self.stats.skipped,
                )
                .map_err(|e| write_err(e.into()))
            }
            // Sockets are not part of an image (the tar format has none); directories are the
            // caller's.
            _ => Ok(()),
        }
    }
}

fn create(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?)
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

/// Whether an xattr is the overlay driver's bookkeeping rather than the image's.
fn is_driver_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name.starts_with("user.fuseoverlayfs.")
}

/// The metadata of an entry: of the open `fd` itself, or of `name` in directory `fd` (a symlink
/// or node, read by name without following it).
pub fn read_meta(fd: BorrowedFd<'_>, name: Option<&OsStr>) -> io::Result<EntryMeta> {
    let st = match name {
        None => rustix::fs::fstat(fd)?,
        Some(name) => rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)?,
    };
    let mut meta = EntryMeta {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode as u32 & 0o7777,
        mtime: st.st_mtime as i64,
        xattrs: Vec::new(),
    };
    let proc = name.map(|n| tree::proc_path(fd, n));
    let list = |buf: &mut Vec<u8>| match &proc {
        None => rustix::fs::flistxattr(fd, buf.as_mut_slice()),
        Some(p) => rustix::fs::llistxattr(p, buf.as_mut_slice()),
    };
    let mut names = vec![0u8; 4096];
    let n = match list(&mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            names = vec![0u8; 1 << 16];
            list(&mut names)?
        }
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => return Err(e.into()),
    };
    for raw in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let Ok(key) = std::str::from_utf8(raw) else {
            continue;
        };
        if is_driver_xattr(key) || key == "security.selinux" {
            continue;
        }
        let mut value = vec![0u8; 1 << 16];
        let len = match &proc {
            None => rustix::fs::fgetxattr(fd, key, &mut value),
            Some(p) => rustix::fs::lgetxattr(p, key, &mut value),
        };
        match len {
            Ok(len) => {
                value.truncate(len);
                meta.xattrs.push((key.to_string(), value));
            }
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(meta)
}
