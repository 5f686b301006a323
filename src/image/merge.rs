//! Stacking layer directories into one root filesystem by renames.
//!
//! Layers are applied bottom to top onto the result directory. For each layer: its whiteouts and
//! opaque markers delete from the result (they only affect lower layers), then its cross-layer
//! hard links are made against the result (their targets are what the lower layers left), then
//! its tree moves in: a path absent from the result moves with one `rename` of the whole subtree,
//! a directory over a directory recurses, anything else replaces. Directory modes and mtimes are
//! applied by [`Merger::finish`], deepest first, once no rename can change them any more.
//!
//! Invariant: nothing here follows a symlink. An implicit directory of an upper layer (it has
//! `a/b` without an `a/` entry) must meet a real directory in the result; meeting a symlink or a
//! file there is an error, as writing through it would be.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

use super::layer::{LayerRecord, find_in_layer, mark_implicit_dir};
use super::ownership::{self, EntryMeta, Ownership, Skipped};
use super::tree::{self, RelPath, WalkError};

/// Failures while stacking one layer onto the result; the caller adds which layer.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{path} would be written through {through}, which a lower layer made a non-directory")]
    ThroughNonDirectory { path: RelPath, through: RelPath },
    #[error("Hard link {link} points at {target}, which does not exist in the lower layers")]
    LinkTargetMissing { link: RelPath, target: RelPath },
    #[error("Hard link {link} points at directory {target}")]
    LinkToDirectory { link: RelPath, target: RelPath },
    #[error("Cannot apply whiteout {path}")]
    Whiteout {
        path: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("Cannot move {path} into the root filesystem")]
    Move {
        path: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("Cannot create hard link {link}")]
    Link {
        link: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("Cannot copy {path} of a layer that appears twice in the stack")]
    Clone {
        path: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("Cannot set the final mode and mtime of directory {path}")]
    FinishDir {
        path: RelPath,
        #[source]
        source: io::Error,
    },
}

/// The result tree being built, and the metadata its directories end up with.
pub struct Merger {
    root: OwnedFd,
    ownership: Ownership,
    /// Explicit directory entries of the topmost layer that provided each directory.
    dirs: BTreeMap<RelPath, EntryMeta>,
    /// Device nodes of any layer so far that were not created for lack of `CAP_MKNOD`.
    skipped_nodes: HashSet<RelPath>,
    pub skipped: Skipped,
    /// Hard links not made because their target is such a device node.
    pub skipped_device_links: u64,
}

impl Merger {
    /// Starts from an empty directory `root`.
    pub fn new(root: OwnedFd, ownership: Ownership) -> Self {
        Merger {
            root,
            ownership,
            dirs: BTreeMap::new(),
            skipped_nodes: HashSet::new(),
            skipped: Skipped::default(),
            skipped_device_links: 0,
        }
    }

    /// Stacks one layer directory (whose tree is consumed) with its record onto the result.
    pub fn apply(&mut self, layer: BorrowedFd<'_>, record: &LayerRecord) -> Result<(), MergeError> {
        for path in &record.whiteouts {
            self.delete(path).map_err(|source| MergeError::Whiteout {
                path: path.clone(),
                source,
            })?;
        }
        for dir in &record.opaques {
            self.clear(dir).map_err(|source| MergeError::Whiteout {
                path: dir.clone(),
                source,
            })?;
        }
        self.skipped_nodes
            .extend(record.skipped_nodes.iter().cloned());
        for (link, target) in &record.deferred_links {
            self.link(link, target)?;
        }
        let root = rustix::io::dup(&self.root).map_err(|e| MergeError::Move {
            path: RelPath::root(),
            source: e.into(),
        })?;
        self.take_dir_owner(root.as_fd(), &RelPath::root(), record)?;
        self.move_dir(layer, root.as_fd(), &RelPath::root(), record)?;
        for (path, meta) in &record.dirs {
            self.dirs.insert(path.clone(), meta.clone());
        }
        Ok(())
    }

    /// A directory kept from a lower layer takes the owner and xattrs of the upper layer's
    /// explicit entry for it (its mode and mtime come in [`Merger::finish`]).
    fn take_dir_owner(
        &mut self,
        lower: BorrowedFd<'_>,
        path: &RelPath,
        record: &LayerRecord,
    ) -> Result<(), MergeError> {
        if let Some(meta) = record.dirs.get(path) {
            ownership::finish_dir_early(lower, meta, self.ownership, &mut self.skipped).map_err(
                |e| MergeError::Move {
                    path: path.clone(),
                    source: e.into(),
                },
            )?;
        }
        Ok(())
    }

    /// Applies directory modes and mtimes, deepest first.
    pub fn finish(self) -> Result<(), MergeError> {
        let mut dirs: Vec<_> = self.dirs.iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
        for (path, meta) in dirs {
            let err = |source: io::Error| MergeError::FinishDir {
                path: path.clone(),
                source,
            };
            let fd = tree::open_dir(self.root.as_fd(), path).map_err(err)?;
            ownership::finish_dir_late(fd.as_fd(), meta, self.ownership)
                .map_err(|e| err(e.into()))?;
        }
        Ok(())
    }

    fn forget_dirs_under(&mut self, path: &RelPath, keep_self: bool) {
        let doomed: Vec<RelPath> = self
            .dirs
            .range(path.clone()..)
            .take_while(|(p, _)| p.starts_with(path))
            .filter(|(p, _)| !(keep_self && *p == path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.dirs.remove(&p);
        }
    }

    /// A whiteout: removes `path` from the result if it is there. A parent that is missing or
    /// not a directory means there is nothing to delete (and nothing is followed).
    fn delete(&mut self, path: &RelPath) -> io::Result<()> {
        let Some((parent, name)) = path.split_last() else {
            return Ok(());
        };
        let Some(parent) = open_existing_dir(self.root.as_fd(), &parent)? else {
            return Ok(());
        };
        tree::remove_at(parent.as_fd(), name)?;
        self.forget_dirs_under(path, false);
        Ok(())
    }

    /// An opaque marker: empties `dir` in the result, keeping the directory.
    fn clear(&mut self, dir: &RelPath) -> io::Result<()> {
        let Some(fd) = open_existing_dir(self.root.as_fd(), dir)? else {
            return Ok(());
        };
        tree::clear_dir(fd.as_fd())?;
        self.forget_dirs_under(dir, true);
        Ok(())
    }

    fn link(&mut self, link: &RelPath, target: &RelPath) -> Result<(), MergeError> {
        let root = self.root.as_fd();
        let io_err = |source: io::Error| MergeError::Link {
            link: link.clone(),
            source,
        };
        let Some((tparent, ttype)) = find_in_layer(root, target).map_err(io_err)? else {
            if self.skipped_nodes.contains(target) {
                self.skipped_device_links += 1;
                return Ok(());
            }
            return Err(MergeError::LinkTargetMissing {
                link: link.clone(),
                target: target.clone(),
            });
        };
        if ttype == FileType::Directory {
            return Err(MergeError::LinkToDirectory {
                link: link.clone(),
                target: target.clone(),
            });
        }
        let (lparent_path, lname) = link.split_last().expect("named link");
        let mut created = Vec::new();
        let lparent =
            tree::walk_create(root, &lparent_path, 0o755, &mut created).map_err(|e| match e {
                WalkError::NotADirectory(through) => MergeError::ThroughNonDirectory {
                    path: link.clone(),
                    through,
                },
                WalkError::Io(source) => io_err(source),
            })?;
        for dir in created {
            mark_implicit_dir(root, &dir, self.ownership, &mut self.skipped).map_err(io_err)?;
        }
        if tree::file_type_at(lparent.as_fd(), lname).map_err(io_err)? == Some(FileType::Directory)
        {
            self.forget_dirs_under(link, false);
        }
        tree::remove_at(lparent.as_fd(), lname).map_err(io_err)?;
        let (_, tname) = target.split_last().expect("named target");
        rustix::fs::linkat(&tparent, tname, &lparent, lname, AtFlags::empty())
            .map_err(|e| io_err(e.into()))
    }

    /// Moves the contents of `upper` (directory `path` of the layer) into `lower` (the same
    /// directory of the result).
    fn move_dir(
        &mut self,
        upper: BorrowedFd<'_>,
        lower: BorrowedFd<'_>,
        path: &RelPath,
        record: &LayerRecord,
    ) -> Result<(), MergeError> {
        let names = tree::list_dir(upper).map_err(|source| MergeError::Move {
            path: path.clone(),
            source,
        })?;
        for name in names {
            let child = path.join(&name);
            let err = |source: io::Error| MergeError::Move {
                path: child.clone(),
                source,
            };
            let utype = tree::file_type_at(upper, &name).map_err(err)?;
            let ltype = tree::file_type_at(lower, &name).map_err(err)?;
            let rename =
                || rustix::fs::renameat(upper, &name, lower, &name).map_err(|e| err(e.into()));
            match (utype, ltype) {
                (_, None) => rename()?,
                (Some(FileType::Directory), Some(FileType::Directory)) => {
                    let u = tree::open_dir_at(upper, &name).map_err(err)?;
                    let l = tree::open_dir_at(lower, &name).map_err(err)?;
                    self.take_dir_owner(l.as_fd(), &child, record)?;
                    self.move_dir(u.as_fd(), l.as_fd(), &child, record)?;
                }
                (Some(FileType::Directory), Some(_)) => {
                    if !record.dirs.contains_key(&child) {
                        return Err(MergeError::ThroughNonDirectory {
                            path: first_entry_below(upper, &name)
                                .map_or(child.clone(), |n| child.join(&n)),
                            through: child,
                        });
                    }
                    tree::remove_at(lower, &name).map_err(err)?;
                    rename()?;
                }
                (_, Some(FileType::Directory)) => {
                    tree::remove_at(lower, &name).map_err(err)?;
                    self.forget_dirs_under(&child, false);
                    rename()?;
                }
                // rename(2) replaces a non-directory atomically.
                (_, Some(_)) => rename()?,
            }
        }
        Ok(())
    }
}

/// Copies a layer directory by hard links (directories are recreated with the same owner,
/// xattrs and mode), so a layer that appears twice in the stack can be applied twice: applying
/// consumes the tree. Sharing inodes is sound because nothing modifies a file in place after
/// the layer pass; later layers replace files by rename.
pub fn clone_layer(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    path: &RelPath,
    record: &LayerRecord,
    ownership: Ownership,
    skipped: &mut Skipped,
) -> Result<(), MergeError> {
    for name in tree::list_dir(src).map_err(|source| MergeError::Clone {
        path: path.clone(),
        source,
    })? {
        let child = path.join(&name);
        let err = |source: io::Error| MergeError::Clone {
            path: child.clone(),
            source,
        };
        if tree::file_type_at(src, &name).map_err(err)? == Some(FileType::Directory) {
            let s = tree::open_dir_at(src, &name).map_err(err)?;
            let mode = rustix::fs::fstat(&s).map_err(|e| err(e.into()))?.st_mode & 0o7777;
            rustix::fs::mkdirat(dst, &name, rustix::fs::Mode::from_raw_mode(0o700))
                .map_err(|e| err(e.into()))?;
            let d = tree::open_dir_at(dst, &name).map_err(err)?;
            let implicit = EntryMeta {
                mode: 0o755,
                ..EntryMeta::default()
            };
            let meta = record.dirs.get(&child).unwrap_or(&implicit);
            ownership::finish_dir_early(d.as_fd(), meta, ownership, skipped)
                .map_err(|e| err(e.into()))?;
            rustix::fs::fchmod(&d, rustix::fs::Mode::from_raw_mode(mode))
                .map_err(|e| err(e.into()))?;
            clone_layer(s.as_fd(), d.as_fd(), &child, record, ownership, skipped)?;
        } else {
            rustix::fs::linkat(src, &name, dst, &name, AtFlags::empty())
                .map_err(|e| err(e.into()))?;
        }
    }
    Ok(())
}

/// Some name inside directory `name` of `dirfd`, to name the entry that would be misplaced.
fn first_entry_below(dirfd: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Option<std::ffi::OsString> {
    let fd = tree::open_dir_at(dirfd, name).ok()?;
    tree::list_dir(fd.as_fd()).ok()?.into_iter().next()
}

/// Opens an existing directory of the result; `None` if it is absent or any component is not a
/// real directory.
fn open_existing_dir(root: BorrowedFd<'_>, path: &RelPath) -> io::Result<Option<OwnedFd>> {
    match tree::open_dir(root, path) {
        Ok(fd) => Ok(Some(fd)),
        Err(e)
            if [Errno::NOENT, Errno::NOTDIR, Errno::LOOP]
                .iter()
                .any(|x| e.raw_os_error() == Some(x.raw_os_error())) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
