//! A bottle's own writable root from a cached rootfs, without copying the image where possible.
//!
//! - Linux: nothing is copied here. The bottle gets an empty `upper/` and `work/` dir, and the VMM
//!   child mounts an overlay (cached rootfs as the read-only lower layer) in its own mount
//!   namespace. [`WritableRoot::Overlay`] describes that.
//! - macOS: one `clonefile(2)` of the whole tree where APFS allows it (`sys::fs::clone_tree`,
//!   called by `state::BottleDirs::writable_root`); across volumes or on a file system without
//!   clones, [`copy_tree`].
//! - [`copy_tree`]: a parallel copy that shares file data where the filesystem can (`FICLONE` on
//!   Linux, a per-file `clonefile(2)` on macOS) and preserves ownership (when permitted), modes
//!   incl. setuid, mtimes, xattrs (so the `user.containers.override_stat` ownership of an
//!   `xattr`-mode tree), symlinks, FIFOs, devices (when permitted) and hard links.
//!
//! The source tree may hold hostile symlinks: nothing here follows a link in the source, and every
//! destination entry is created fresh under a directory this module created.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;
use rustix::fs::{AtFlags, CWD, Mode, Timespec, Timestamps, XattrFlags};

#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("The copy destination {path} already exists; remove it or pick another")]
    DestinationExists { path: PathBuf },
    #[error("Cannot read {path} while copying")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write {path} while copying")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How a bottle's writable root is provided.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WritableRoot {
    /// Mount `overlay` with `lower` read-only and the upper layer in `upper/diff` (scratch dir
    /// `upper/work`); done by the VMM child in its own mount namespace (`run --overlay`).
    Overlay { lower: PathBuf, upper: PathBuf },
    /// A private copy (clonefile or [`copy_tree`]) at this path.
    Copy { root: PathBuf },
}

/// What [`copy_tree`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CopyStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub bytes: u64,
    /// Files whose data was shared with `FICLONE` instead of copied.
    pub reflinked: u64,
    /// Device nodes not created (no `CAP_MKNOD`).
    pub skipped_devices: u64,
}

/// Copies `src` to `dst` (which must not exist) preserving everything an image rootfs needs.
/// Ownership is preserved when the process may `chown` (root, or root in a user namespace);
/// otherwise files belong to the caller. On error, `dst` is removed.
pub fn copy_tree(src: &Path, dst: &Path, progress: &ProgressBar) -> Result<CopyStats, CloneError> {
    if fs::symlink_metadata(dst).is_ok() {
        return Err(CloneError::DestinationExists {
            path: dst.to_path_buf(),
        });
    }
    let result = copy_tree_inner(src, dst, progress);
    if result.is_err() {
        let _ = crate::image::tree::remove_tree(dst);
    }
    result
}

/// Whether this process can give files away (and so preserve ownership).
fn can_chown() -> bool {
    rustix::process::geteuid().is_root()
}

struct CopyPlan {
    /// Directories, parents before children, with their source metadata.
    dirs: Vec<(PathBuf, PathBuf, fs::Metadata)>,
    /// Regular files and other non-directories, in walk order.
    leaves: Vec<(PathBuf, PathBuf, fs::Metadata)>,
    /// (destination, first destination of the same inode) for second and later hard links.
    links: Vec<(PathBuf, PathBuf)>,
}

fn copy_tree_inner(
    src: &Path,
    dst: &Path,
    progress: &ProgressBar,
) -> Result<CopyStats, CloneError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CloneError::Read { path, source }
    };
    let root_meta = fs::symlink_metadata(src).map_err(read_err(src))?;
    let mut plan = CopyPlan {
        dirs: vec![(src.to_path_buf(), dst.to_path_buf(), root_meta)],
        leaves: Vec::new(),
        links: Vec::new(),
    };
    let mut seen_inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut i = 0;
    while i < plan.dirs.len() {
        let (dir_src, dir_dst) = (plan.dirs[i].0.clone(), plan.dirs[i].1.clone());
        let mut names: Vec<OsString> = fs::read_dir(&dir_src)
            .map_err(read_err(&dir_src))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err(&dir_src))?;
        names.sort();
        for name in names {
            let s = dir_src.join(&name);
            let d = dir_dst.join(&name);
            let meta = fs::symlink_metadata(&s).map_err(read_err(&s))?;
            if meta.is_dir() {
                plan.dirs.push((s, d, meta));
            } else if meta.nlink() > 1 && !meta.is_symlink() {
                match seen_inodes.get(&(meta.dev(), meta.ino())) {
                    Some(first) => plan.links.push((d, first.clone())),
                    None => {
                        seen_inodes.insert((meta.dev(), meta.ino()), d.clone());
                        plan.leaves.push((s, d, meta));
                    }
                }
            } else {
                plan.leaves.push((s, d, meta));
            }
        }
        i += 1;
    }

    let stats = Counters::default();
    for (_, d, _) in &plan.dirs {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(d)
            .map_err(|source| CloneError::Write {
                path: d.clone(),
                source,
            })?;
    }
    stats.dirs.store(plan.dirs.len() as u64, Ordering::Relaxed);
    progress.set_length(plan.leaves.iter().map(|l| l.2.len()).sum());

    let chown = can_chown();
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<CloneError>> = Mutex::new(None);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get().clamp(2, 8))
        .unwrap_or(2);
    let leaves = Arc::new(plan.leaves);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((s, d, meta)) = leaves.get(i) else {
                        return;
                    };
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    if let Err(e) = copy_leaf(s, d, meta, chown, &stats) {
                        let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e);
                        return;
                    }
                    progress.inc(meta.len());
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    for (d, first) in &plan.links {
        fs::hard_link(first, d).map_err(|source| CloneError::Write {
            path: d.clone(),
            source,
        })?;
        stats.hard_links.fetch_add(1, Ordering::Relaxed);
    }
    // Directory metadata last, deepest first: creating entries changes a directory's mtime, and a
    // read-only mode would stop us from creating them.
    for (s, d, meta) in plan.dirs.iter().rev() {
        finish_metadata(s, d, meta, chown).map_err(|source| CloneError::Write {
            path: d.clone(),
            source,
        })?;
    }
    Ok(stats.into_stats())
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    hard_links: AtomicU64,
    bytes: AtomicU64,
    reflinked: AtomicU64,
    skipped_devices: AtomicU64,
}

impl Counters {
    fn into_stats(self) -> CopyStats {
        CopyStats {
            files: self.files.into_inner(),
            dirs: self.dirs.into_inner(),
            symlinks: self.symlinks.into_inner(),
            hard_links: self.hard_links.into_inner(),
            bytes: self.bytes.into_inner(),
            reflinked: self.reflinked.into_inner(),
            skipped_devices: self.skipped_devices.into_inner(),
        }
    }
}

fn copy_leaf(
    s: &Path,
    d: &Path,
    meta: &fs::Metadata,
    chown: bool,
    stats: &Counters,
) -> Result<(), CloneError> {
    let write_err = |source| CloneError::Write {
        path: d.to_path_buf(),
        source,
    };
    let ft = meta.file_type();
    if ft.is_file() {
        let from = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(s)
            .map_err(|source| CloneError::Read {
                path: s.to_path_buf(),
                source,
            })?;
        if crate::sys::fs::copy_file(&from, s, d, meta.len()).map_err(write_err)? {
            stats.reflinked.fetch_add(1, Ordering::Relaxed);
        }
        stats.files.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(meta.len(), Ordering::Relaxed);
    } else if ft.is_symlink() {
        let target = fs::read_link(s).map_err(|source| CloneError::Read {
            path: s.to_path_buf(),
            source,
        })?;
        std::os::unix::fs::symlink(&target, d).map_err(write_err)?;
        stats.symlinks.fetch_add(1, Ordering::Relaxed);
    } else {
        let kind = if ft.is_fifo() {
            rustix::fs::FileType::Fifo
        } else if ft.is_char_device() {
            rustix::fs::FileType::CharacterDevice
        } else if ft.is_block_device() {
            rustix::fs::FileType::BlockDevice
        } else {
            // Sockets are not part of an image; nothing to copy.
            return Ok(());
        };
        let made = crate::sys::fs::mknod(CWD, d, kind, Mode::from_raw_mode(0o600), meta.rdev());
        match made {
            Ok(()) => {}
            Err(rustix::io::Errno::PERM) if kind != rustix::fs::FileType::Fifo => {
                stats.skipped_devices.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => return Err(write_err(e.into())),
        }
        stats.files.fetch_add(1, Ordering::Relaxed);
    }
    finish_metadata(s, d, meta, chown).map_err(write_err)
}

/// Ownership, then mode (chown clears setuid), then xattrs, then times; never following links.
fn finish_metadata(s: &Path, d: &Path, meta: &fs::Metadata, chown: bool) -> io::Result<()> {
    if chown {
        rustix::fs::chownat(
            CWD,
            d,
            Some(rustix::fs::Uid::from_raw(meta.uid())),
            Some(rustix::fs::Gid::from_raw(meta.gid())),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    copy_xattrs(s, d, meta.is_symlink())?;
    if !meta.is_symlink() {
        rustix::fs::chmodat(CWD, d, crate::sys::fs::mode(meta.mode()), AtFlags::empty())?;
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(CWD, d, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn copy_xattrs(s: &Path, d: &Path, is_symlink: bool) -> io::Result<()> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(s, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(s, name, &mut value[..]) {
                Ok(len) => break len,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(e) => return Err(e.into()),
            }
        };
        match rustix::fs::lsetxattr(d, name, &value[..len], XattrFlags::empty()) {
            Ok(()) => {}
            // Linux refuses user.* xattrs on symlinks, and unprivileged callers cannot set
            // trusted.* ones: the source could not have had what we cannot express either.
            Err(rustix::io::Errno::PERM)
                if is_symlink || name.as_bytes().starts_with(b"trusted.") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn snapshot(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).unwrap();
            let kind = if meta.is_dir() {
                "d"
            } else if meta.is_symlink() {
                "l"
            } else if meta.file_type().is_fifo() {
                "p"
            } else {
                "f"
            };
            let extra = if meta.is_symlink() {
                fs::read_link(&path).unwrap().display().to_string()
            } else if meta.is_file() {
                format!(
                    "{}:{}",
                    meta.len(),
                    fs::read_to_string(&path).unwrap_or_default()
                )
            } else {
                String::new()
            };
            let mtime = if meta.is_symlink() { 0 } else { meta.mtime() };
            out.push(format!(
                "{} {kind} {:o} {}:{} {mtime} {extra}",
                rel.display(),
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ));
            if meta.is_dir() {
                for item in fs::read_dir(&path).unwrap() {
                    stack.push(rel.join(item.unwrap().file_name()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn copy_preserves_modes_links_times_and_hard_links() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("usr/bin")).unwrap();
        fs::create_dir_all(src.join("tmp")).unwrap();
        fs::write(src.join("usr/bin/su"), "setuid binary").unwrap();
        fs::set_permissions(src.join("usr/bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::hard_link(src.join("usr/bin/su"), src.join("usr/bin/su2")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("escape")).unwrap();
        crate::sys::fs::mknod(
            CWD,
            src.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        fs::create_dir(src.join("ro")).unwrap();
        fs::write(src.join("ro/f"), "x").unwrap();
        fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        if can_chown() {
            fs::write(src.join("owned"), "by 1000").unwrap();
            for (path, uid, gid) in [("usr/bin/su2", 0, 0), ("owned", 1000, 1001)] {
                rustix::fs::chownat(
                    CWD,
                    src.join(path),
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    AtFlags::empty(),
                )
                .unwrap();
            }
        }
        rustix::fs::lsetxattr(
            src.join("usr/bin/su"),
            "user.krbottle.test",
            b"v",
            XattrFlags::empty(),
        )
        .unwrap();

        let dst = tmp.path().join("dst");
        let stats = copy_tree(&src, &dst, &ProgressBar::hidden()).unwrap();
        assert_eq!(snapshot(&src), snapshot(&dst));
        assert_eq!(stats.hard_links, 1);
        let a = fs::metadata(dst.join("usr/bin/su")).unwrap();
        let b = fs::metadata(dst.join("usr/bin/su2")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hard link preserved");
        let mut v = [0u8; 8];
        let n =
            rustix::fs::lgetxattr(dst.join("usr/bin/su"), "user.krbottle.test", &mut v).unwrap();
        assert_eq!(&v[..n], b"v");
        // The copy's symlink was not followed: /etc/passwd is untouched and the link is a link.
        assert!(
            fs::symlink_metadata(dst.join("escape"))
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn refuses_an_existing_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let err = copy_tree(tmp.path(), tmp.path(), &ProgressBar::hidden()).unwrap_err();
        assert!(matches!(err, CloneError::DestinationExists { .. }));
    }
}
