//! Who owns unpacked files, and how the image's ids, modes, times and xattrs are applied.
//!
//! Order matters and is fixed here: content is written first, then `chown` (which clears
//! setuid/setgid bits and `security.capability`), then xattrs, then `chmod`, then times.
//! Directory modes and times are applied by the caller in a final pass (see `merge`), because
//! later renames into a directory change its mtime and a 0555 directory could not be filled.
//!
//! In [`Ownership::Xattr`] mode files belong to the current user with permissive real modes and
//! the image's `uid:gid:mode` goes into [`OVERRIDE_STAT_XATTR`], the format libkrun's macOS
//! virtio-fs reads. Linux refuses `user.*` xattrs on symlinks, FIFOs and device nodes, so FIFOs
//! and devices become empty regular files carrying their type bits in the xattr, and symlinks get
//! no xattr at all (counted in `skipped_xattrs`); on Linux this mode is a test vehicle.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use clap::ValueEnum;
use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::tree::proc_path;

/// How the image's ownership is represented on disk: the one ownership type of the crate (the
/// `--ownership` flag, the cache key, the unpacker's writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    /// Real `lchown` to the image's uid/gid (needs root).
    #[default]
    Root,
    /// Unpacked inside a user namespace mapped from /etc/subuid and /etc/subgid, where the
    /// `lchown`s are real: the guest later runs in the same mapping and sees the image's ids.
    Userns,
    /// Files owned by you; the image's uid:gid:mode in the `user.containers.override_stat` xattr.
    Xattr,
}

impl Ownership {
    /// The mode when none is given: real ids as root, a mapped user namespace otherwise
    /// (Linux); the override xattr on macOS, where ownership cannot be given away.
    pub fn default_here() -> Self {
        if cfg!(target_os = "macos") {
            Ownership::Xattr
        } else if rustix::process::geteuid().is_root() {
            Ownership::Root
        } else {
            Ownership::Userns
        }
    }

    /// The name used on the command line, in JSON and in cache keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Ownership::Root => "root",
            Ownership::Userns => "userns",
            Ownership::Xattr => "xattr",
        }
    }

    /// Whether the writer records ids in the override xattr (else it `lchown`s: as root, or as
    /// the namespace's root in `userns` mode).
    fn in_xattr(self) -> bool {
        self == Ownership::Xattr
    }
}

impl std::fmt::Display for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The xattr libkrun's macOS virtio-fs reads ownership and mode from.
pub const OVERRIDE_STAT_XATTR: &str = "user.containers.override_stat";

/// `S_IFMT` and friends, as the tar header and the xattr need them.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;

/// Metadata of one archive entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryMeta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setuid/setgid/sticky (`0o7777`), no type bits.
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// `SCHILY.xattr.*` PAX records, name without the prefix.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// The xattr names `list` reads (into a buffer: the names' length), UTF-8 ones only; a
/// filesystem without xattrs has none.
pub fn xattr_names(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> std::io::Result<Vec<String>> {
    let mut names = vec![0u8; 4096];
    let n = match list(&mut names) {
        Ok(n) => n,
        Err(Errno::RANGE) => {
            names = vec![0u8; 1 << 16];
            list(&mut names)?
        }
        Err(Errno::NOTSUP) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok(names[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|raw| std::str::from_utf8(raw).ok())
        .map(str::to_string)
        .collect())
}

impl EntryMeta {
    /// What a tree's entry holds: ids, permission bits and mtime from `st`, and the xattrs that
    /// `list` (into a buffer: the names' length) and `get` (of a name into a buffer: the value's
    /// length) read, those `keep` accepts. A filesystem without xattrs gives none.
    pub fn read(
        st: &rustix::fs::Stat,
        list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
        get: impl Fn(&str, &mut [u8]) -> rustix::io::Result<usize>,
        keep: impl Fn(&str) -> bool,
    ) -> std::io::Result<EntryMeta> {
        let mut xattrs = Vec::new();
        for key in xattr_names(list)? {
            if !keep(&key) {
                continue;
            }
            let mut value = vec![0u8; 1 << 16];
            match get(&key, &mut value) {
                Ok(len) => {
                    value.truncate(len);
                    xattrs.push((key, value));
                }
                Err(Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            }
        }
        #[allow(
            clippy::unnecessary_cast,
            reason = "mode_t and time_t are other types on other systems"
        )]
        Ok(EntryMeta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode as u32 & 0o7777,
            mtime: st.st_mtime as i64,
            xattrs,
        })
    }
}

/// The value of [`OVERRIDE_STAT_XATTR`]: decimal ids, octal mode with a leading 0; `type_bits`
/// is 0 for regular files (libkrun then keeps the real type) and `S_IF*` for everything else.
pub fn override_stat_value(uid: u32, gid: u32, type_bits: u32, mode: u32) -> String {
    format!("{uid}:{gid}:0{:o}", type_bits | (mode & 0o7777))
}

/// Counters of things the current privileges did not allow.
#[derive(Debug, Default, Clone, Copy)]
pub struct Skipped {
    pub xattrs: u64,
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn ids(meta: &EntryMeta) -> (Option<Uid>, Option<Gid>) {
    (
        Some(Uid::from_raw_unchecked(meta.uid)),
        Some(Gid::from_raw_unchecked(meta.gid)),
    )
}

/// An xattr the kernel refused for lack of privilege or support is skipped and counted; `user.*`
/// in xattr mode and everything in root mode that fails otherwise is an error.
fn xattr_result(res: Result<(), Errno>, skipped: &mut Skipped) -> Result<(), Errno> {
    match res {
        Ok(()) => Ok(()),
        Err(Errno::PERM | Errno::ACCESS | Errno::NOTSUP) => {
            skipped.xattrs += 1;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Applies ownership, xattrs, mode and mtime to a freshly written regular file.
pub fn finish_file(
    fd: BorrowedFd<'_>,
    meta: &EntryMeta,
    ownership: Ownership,
    skipped: &mut Skipped,
) -> Result<(), Errno> {
    set_owner(fd, meta, ownership, 0, skipped)?;
    let mode = if ownership.in_xattr() {
        (meta.mode & 0o777) | 0o600
    } else {
        meta.mode
    };
    rustix::fs::fchmod(fd, crate::sys::fs::mode(mode))?;
    rustix::fs::futimens(fd, &timestamps(meta.mtime))
}

/// Ownership and xattrs of an open entry: a real `fchown` (root mode), or the
/// [`OVERRIDE_STAT_XATTR`] with the entry's `type_bits` (xattr mode); the image's xattrs either
/// way, after the `fchown` (which clears capabilities).
fn set_owner(
    fd: BorrowedFd<'_>,
    meta: &EntryMeta,
    ownership: Ownership,
    type_bits: u32,
    skipped: &mut Skipped,
) -> Result<(), Errno> {
    if ownership.in_xattr() {
        set_fd_xattrs(fd, &meta.xattrs, skipped)?;
        set_override_stat(fd, meta, type_bits)
    } else {
        let (u, g) = ids(meta);
        rustix::fs::fchown(fd, u, g)?;
        set_fd_xattrs(fd, &meta.xattrs, skipped)
    }
}

/// Writes the [`OVERRIDE_STAT_XATTR`] of an open entry: its ids, `type_bits` and mode.
fn set_override_stat(fd: BorrowedFd<'_>, meta: &EntryMeta, type_bits: u32) -> Result<(), Errno> {
    let value = override_stat_value(meta.uid, meta.gid, type_bits, meta.mode);
    rustix::fs::fsetxattr(
        fd,
        OVERRIDE_STAT_XATTR,
        value.as_bytes(),
        XattrFlags::empty(),
    )
}

/// Applies what can be applied to a directory at creation: ownership and xattrs. Mode and mtime
/// come in the final pass ([`finish_dir_late`]).
pub fn finish_dir_early(
    fd: BorrowedFd<'_>,
    meta: &EntryMeta,
    ownership: Ownership,
    skipped: &mut Skipped,
) -> Result<(), Errno> {
    set_owner(fd, meta, ownership, S_IFDIR, skipped)
}

/// The final mode and mtime of a directory, once nothing more is renamed into it. In xattr mode
/// the owner keeps `rwx` so the tree stays manageable by its user.
pub fn finish_dir_late(
    fd: BorrowedFd<'_>,
    meta: &EntryMeta,
    ownership: Ownership,
) -> Result<(), Errno> {
    let mode = if ownership.in_xattr() {
        (meta.mode & 0o777) | 0o700
    } else {
        meta.mode & 0o7777
    };
    rustix::fs::fchmod(fd, crate::sys::fs::mode(mode))?;
    rustix::fs::futimens(fd, &timestamps(meta.mtime))
}

/// Xattr mode's stand-in for a FIFO or device node: an empty regular file (already created as
/// `fd`) whose [`OVERRIDE_STAT_XATTR`] carries the node's type bits, ids and mode.
pub fn finish_node_as_file(
    fd: BorrowedFd<'_>,
    meta: &EntryMeta,
    type_bits: u32,
) -> Result<(), Errno> {
    set_override_stat(fd, meta, type_bits)?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(0o600))?;
    rustix::fs::futimens(fd, &timestamps(meta.mtime))
}

/// Ownership, xattrs, mode and mtime for an entry that cannot be opened for writing (symlink,
/// FIFO, device node): acted on by name in `dirfd`, never followed.
pub fn finish_special(
    dirfd: BorrowedFd<'_>,
    name: &OsStr,
    meta: &EntryMeta,
    is_symlink: bool,
    ownership: Ownership,
    skipped: &mut Skipped,
) -> Result<(), Errno> {
    let path = proc_path(dirfd, name);
    if !ownership.in_xattr() {
        let (u, g) = ids(meta);
        rustix::fs::chownat(dirfd, name, u, g, AtFlags::SYMLINK_NOFOLLOW)?;
    }
    for (key, value) in &meta.xattrs {
        let res = rustix::fs::lsetxattr(&path, key.as_str(), value, XattrFlags::empty());
        xattr_result(res, skipped)?;
    }
    if is_symlink {
        if ownership.in_xattr() {
            // Linux refuses user.* xattrs on symlinks (EPERM, counted); macOS accepts them.
            let value = override_stat_value(meta.uid, meta.gid, S_IFLNK, meta.mode);
            let res = rustix::fs::lsetxattr(
                &path,
                OVERRIDE_STAT_XATTR,
                value.as_bytes(),
                XattrFlags::empty(),
            );
            xattr_result(res, skipped)?;
        }
    } else {
        // mknod applies the umask, so set the mode explicitly. Not a symlink: chmodat follows
        // nothing here.
        rustix::fs::chmodat(
            dirfd,
            name,
            crate::sys::fs::mode(meta.mode),
            AtFlags::empty(),
        )?;
    }
    rustix::fs::utimensat(
        dirfd,
        name,
        &timestamps(meta.mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

fn set_fd_xattrs(
    fd: BorrowedFd<'_>,
    xattrs: &[(String, Vec<u8>)],
    skipped: &mut Skipped,
) -> Result<(), Errno> {
    for (key, value) in xattrs {
        let res = rustix::fs::fsetxattr(fd, key.as_str(), value, XattrFlags::empty());
        xattr_result(res, skipped)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_stat_values() {
        let table = [
            (0, 0, 0, 0o755, "0:0:0755"),
            (1000, 100, 0, 0o4755, "1000:100:04755"),
            (0, 0, S_IFDIR, 0o1777, "0:0:041777"),
            (0, 0, S_IFLNK, 0o777, "0:0:0120777"),
            (0, 0, S_IFCHR, 0o666, "0:0:020666"),
            (0, 6, S_IFBLK, 0o660, "0:6:060660"),
            (0, 0, S_IFIFO, 0o644, "0:0:010644"),
        ];
        for (uid, gid, ty, mode, want) in table {
            assert_eq!(override_stat_value(uid, gid, ty, mode), want);
        }
    }
}
