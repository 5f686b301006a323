//! File-tree operations relative to a directory fd that never follow a symlink.
//!
//! Every path handed to these functions is a [`RelPath`]: validated, relative, without `.`/`..`
//! components. Intermediate components are opened one at a time with
//! `O_NOFOLLOW | O_DIRECTORY`, so a symlink (or a file) planted by hostile input where a directory
//! is expected makes the operation fail with `ENOTDIR`/`ELOOP` instead of escaping the tree.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Longest path accepted in a layer, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest path component accepted, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Deepest path accepted, in components. The merge and the removal of trees hold one or two
/// fds per level while they recurse; this keeps them far below the usual 1024-fd limit (so a
/// hostile image cannot make them, or the cleanup after its failure, run out of fds).
pub const MAX_DEPTH: usize = 256;

/// Why a path from an archive was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    Empty,
    Nul,
    DotDot,
    TooLong,
    NameTooLong,
    TooDeep,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathProblem::Empty => "empty path",
            PathProblem::Nul => "NUL byte in path",
            PathProblem::DotDot => "'..' component",
            PathProblem::TooLong => "path longer than 4096 bytes",
            PathProblem::NameTooLong => "path component longer than 255 bytes",
            PathProblem::TooDeep => "path deeper than 256 components",
        })
    }
}

/// A validated path inside a tree: relative, no `.`/`..`/empty components; may be the root
/// (no components).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelPath(Vec<OsString>);

impl RelPath {
    /// The tree's root.
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    /// Parses an archive path the way Docker does: leading `/` and `./` are stripped, `.`
    /// components dropped, a trailing `/` ignored; `..`, NUL and over-long names are refused.
    pub fn parse(raw: &[u8]) -> Result<Self, PathProblem> {
        if raw.contains(&0) {
            return Err(PathProblem::Nul);
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathProblem::TooLong);
        }
        let mut parts = Vec::new();
        for comp in raw.split(|b| *b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => return Err(PathProblem::DotDot),
                c if c.len() > MAX_NAME_BYTES => return Err(PathProblem::NameTooLong),
                c => parts.push(OsString::from_vec(c.to_vec())),
            }
            if parts.len() > MAX_DEPTH {
                return Err(PathProblem::TooDeep);
            }
        }
        Ok(RelPath(parts))
    }

    /// Like [`RelPath::parse`], but the root itself is refused (entries other than the root dir
    /// need a name).
    pub fn parse_named(raw: &[u8]) -> Result<Self, PathProblem> {
        let p = Self::parse(raw)?;
        if p.is_root() {
            return Err(PathProblem::Empty);
        }
        Ok(p)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn components(&self) -> &[OsString] {
        &self.0
    }

    pub fn depth(&self) -> usize {
        self.0.len()
    }

    /// The parent and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &OsStr)> {
        let (last, parent) = self.0.split_last()?;
        Some((RelPath(parent.to_vec()), last.as_os_str()))
    }

    pub fn join(&self, name: &OsStr) -> RelPath {
        let mut v = self.0.clone();
        v.push(name.to_owned());
        RelPath(v)
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0.starts_with(&other.0)
    }

    pub fn to_path_buf(&self) -> PathBuf {
        self.0.iter().collect()
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        write!(f, "{}", self.to_path_buf().display())
    }
}

/// Opens a directory below `dirfd` without following any symlink.
pub fn open_dir_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dirfd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `path` (a directory) below `root`, component by component, never following a symlink.
pub fn open_dir(root: BorrowedFd<'_>, path: &RelPath) -> io::Result<OwnedFd> {
    let mut cur = rustix::io::dup(root)?;
    for comp in path.components() {
        cur = open_dir_at(cur.as_fd(), comp)?;
    }
    Ok(cur)
}

/// What `walk_create` found where a directory was needed.
#[derive(Debug)]
pub enum WalkError {
    /// The component at this path exists and is not a directory (a symlink, file, device…).
    NotADirectory(RelPath),
    Io(io::Error),
}

/// Opens directory `path` below `root`, creating missing components with `mode` (chmod'ed
/// explicitly, so the umask does not matter). Returns the fd and the list of created dirs.
pub fn walk_create(
    root: BorrowedFd<'_>,
    path: &RelPath,
    mode: u32,
    created: &mut Vec<RelPath>,
) -> Result<OwnedFd, WalkError> {
    let mut cur = rustix::io::dup(root).map_err(|e| WalkError::Io(e.into()))?;
    let mut here = RelPath::root();
    for comp in path.components() {
        here = here.join(comp);
        cur = match open_dir_at(cur.as_fd(), comp) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                rustix::fs::mkdirat(cur.as_fd(), comp.as_bytes(), Mode::from_raw_mode(0o700))
                    .map_err(|e| WalkError::Io(e.into()))?;
                let fd = open_dir_at(cur.as_fd(), comp).map_err(WalkError::Io)?;
                rustix::fs::fchmod(&fd, crate::sys::fs::mode(mode))
                    .map_err(|e| WalkError::Io(e.into()))?;
                created.push(here.clone());
                fd
            }
            Err(e)
                if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error())
                    || e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) =>
            {
                return Err(WalkError::NotADirectory(here));
            }
            Err(e) => return Err(WalkError::Io(e)),
        };
    }
    Ok(cur)
}

/// Creates a new regular file `name` in `dirfd` for writing, mode 0600 until its metadata is
/// set: never through a link, never over an existing entry.
pub fn create_file(dirfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dirfd,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?)
}

/// The file type of `name` in `dirfd` without following it; `None` if absent.
pub fn file_type_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` in `dirfd`, recursively if it is a directory; symlinks are removed, never
/// followed. Absent is fine.
pub fn remove_at(dirfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match file_type_at(dirfd, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = open_dir_at(dirfd, name)?;
            clear_dir(sub.as_fd())?;
            Ok(rustix::fs::unlinkat(dirfd, name, AtFlags::REMOVEDIR)?)
        }
        Some(_) => Ok(rustix::fs::unlinkat(dirfd, name, AtFlags::empty())?),
    }
}

/// Removes everything inside directory `dirfd`, keeping the directory itself.
pub fn clear_dir(dirfd: BorrowedFd<'_>) -> io::Result<()> {
    for name in list_dir(dirfd)? {
        // A dir emptied by a 0555 mode (or 0000) must still be removable: as its owner or with
        // CAP_FOWNER we may chmod it. Failing that, the unlink below reports the real error.
        if let Ok(Some(FileType::Directory)) = file_type_at(dirfd, &name)
            && let Ok(sub) = open_dir_at(dirfd, &name)
        {
            let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
        }
        remove_at(dirfd, &name)?;
    }
    Ok(())
}

/// Names in a directory, without `.` and `..`.
pub fn list_dir(dirfd: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    Ok(list_dir_typed(dirfd)?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// Opens a directory of krbottle's own (a cache or scratch dir, not a path inside an image) by
/// its path.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The names in a directory with the type its listing gives (`FileType::Unknown` where the
/// filesystem does not say), without `.` and `..`.
///
/// On Linux the listing reads `dirfd` itself from its start (`getdents64`, no second descriptor:
/// a tree of small files lists thousands of directories, and reopening each one cost three
/// syscalls); the descriptor's offset is left at the end, which `*at` calls do not mind.
#[cfg(target_os = "linux")]
pub fn list_dir_typed(dirfd: BorrowedFd<'_>) -> io::Result<Vec<(OsString, FileType)>> {
    use std::mem::MaybeUninit;
    rustix::fs::seek(dirfd, rustix::fs::SeekFrom::Start(0))?;
    // Room for at least 100 entries of the longest name: `EINVAL` (one entry does not fit)
    // cannot happen.
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut dir = rustix::fs::RawDir::new(dirfd, &mut buf);
    let mut out = Vec::new();
    while let Some(entry) = dir.next() {
        let entry = entry?;
        push_listed(&mut out, entry.file_name().to_bytes(), entry.file_type());
    }
    Ok(out)
}

/// The names in a directory with the type its listing gives (`FileType::Unknown` where the
/// filesystem does not say), without `.` and `..`.
#[cfg(not(target_os = "linux"))]
pub fn list_dir_typed(dirfd: BorrowedFd<'_>) -> io::Result<Vec<(OsString, FileType)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dirfd)? {
        let entry = entry?;
        push_listed(&mut out, entry.file_name().to_bytes(), entry.file_type());
    }
    Ok(out)
}

/// Adds a listed name to `out`, unless it is `.` or `..`.
fn push_listed(out: &mut Vec<(OsString, FileType)>, name: &[u8], ty: FileType) {
    if name != b"." && name != b".." {
        out.push((OsString::from_vec(name.to_vec()), ty));
    }
}

/// `/proc/self/fd/N/name`: lets path-only syscalls (`lsetxattr` on symlinks and device nodes,
/// which cannot be opened for writing) act on `name` inside an open directory without
/// resolving any path component we have not already opened safely.
pub fn proc_path(dirfd: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    use std::os::fd::AsRawFd;
    Path::new("/proc/self/fd")
        .join(dirfd.as_raw_fd().to_string())
        .join(name)
}

/// Removes a whole directory tree given by path (used for the temp dir on failure).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no file name"));
    };
    let dirfd = rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if let Ok(sub) = open_dir_at(dirfd.as_fd(), name) {
        let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
    }
    remove_at(dirfd.as_fd(), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_paths() {
        let ok: &[(&[u8], &[&str])] = &[
            (b"a/b", &["a", "b"]),
            (b"/a/b/", &["a", "b"]),
            (b"./a//./b", &["a", "b"]),
            (b"./", &[]),
            (b"/", &[]),
        ];
        for (raw, want) in ok {
            let p = RelPath::parse(raw).unwrap();
            let got: Vec<_> = p.components().iter().map(|c| c.to_str().unwrap()).collect();
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(raw));
        }
        let long_name = vec![b'x'; 256];
        let long_path = [b"a/".repeat(2100)].concat();
        let deep_path = b"a/".repeat(MAX_DEPTH + 1);
        let bad: &[(&[u8], PathProblem)] = &[
            (b"a/../b", PathProblem::DotDot),
            (b"..", PathProblem::DotDot),
            (b"a/\0b", PathProblem::Nul),
            (&long_name, PathProblem::NameTooLong),
            (&long_path, PathProblem::TooLong),
            (&deep_path, PathProblem::TooDeep),
        ];
        for (raw, want) in bad {
            assert_eq!(RelPath::parse(raw).unwrap_err(), *want);
        }
        assert_eq!(RelPath::parse_named(b"./").unwrap_err(), PathProblem::Empty);
    }
}
