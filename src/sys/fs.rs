//! File-system helpers: the calls whose names, types or existence differ between Linux and
//! macOS, one function each, so the image modules above stay free of `cfg`; and the few
//! record-file steps every module does the same way (atomic writes, JSON records, private dirs).
//!
//! Only the Linux side is built and tested on this project's CI; the macOS side is type-checked
//! there (`cargo check --target aarch64-apple-darwin`, see `scripts/test.sh`).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{FileType, Mode, RawMode};

/// Writes `data` to a temporary file next to `path` with `mode` (set before any byte is
/// written, so a key is never readable by others), syncs it, then renames it into place: a
/// reader sees the old file or the new one, never a half-written one.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let mut tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Reads the JSON record at `path`: `None` when there is no such file; one that does not parse
/// as a `T` is an `InvalidData` error carrying why.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(text) => serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `path` and any missing parents, each new one private to the user (mode 0700); an
/// existing directory is left as it is.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Whether one of `a` and `b` is inside the other (or they are the same), compared after
/// resolving links; a path that does not exist yet is resolved through its longest existing
/// ancestor.
pub fn nested(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| {
        let mut existing = p.to_path_buf();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (existing.file_name(), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name.to_owned());
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut resolved = std::fs::canonicalize(&existing).unwrap_or(existing);
        resolved.extend(rest.iter().rev());
        resolved
    };
    let (a, b) = (resolve(a), resolve(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// Permission bits as rustix's [`Mode`], whose raw type is `u32` on Linux and `u16` on macOS.
/// Bits above `0o7777` are dropped (they are the file type, never a permission).
pub fn mode(bits: u32) -> Mode {
    // The same type on Linux, a narrowing on macOS: `0o7777` always fits.
    #[allow(clippy::useless_conversion)]
    let raw = RawMode::try_from(bits & 0o7777).unwrap_or(0);
    Mode::from_raw_mode(raw)
}

/// A device number from its major and minor parts, as `std`'s `rdev()` reports it (`u64`;
/// rustix's `Dev` is `u64` on Linux and `i32` on macOS).
pub fn dev(major: u32, minor: u32) -> u64 {
    #[cfg(target_os = "linux")]
    let dev = rustix::fs::makedev(major, minor);
    // `dev_t` is a 32-bit signed number on macOS; `rdev()` widens it the same way.
    #[cfg(target_os = "macos")]
    let dev = rustix::fs::makedev(major, minor) as u32 as u64;
    dev
}

/// `mknodat`: a FIFO or device node `name` in `dir` (rustix has no wrapper on Apple targets).
pub fn mknod(
    dir: impl AsFd,
    name: impl AsRef<Path>,
    kind: FileType,
    mode: Mode,
    dev: u64,
) -> rustix::io::Result<()> {
    #[cfg(target_os = "linux")]
    return rustix::fs::mknodat(dir, name.as_ref(), kind, mode, dev);
    #[cfg(target_os = "macos")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::CString::new(name.as_ref().as_os_str().as_bytes())
            .map_err(|_| rustix::io::Errno::INVAL)?;
        let bits = libc::mode_t::from(kind.as_raw_mode()) | libc::mode_t::from(mode.bits());
        let dev = u32::try_from(dev).map_err(|_| rustix::io::Errno::INVAL)? as libc::dev_t;
        // SAFETY: `name` is a NUL-terminated string that outlives the call, and the descriptor
        // is borrowed from a live `AsFd` for the duration of the call.
        let rc = unsafe { libc::mknodat(dir.as_fd().as_raw_fd(), name.as_ptr(), bits, dev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(
                rustix::io::Errno::from_io_error(&io::Error::last_os_error())
                    .unwrap_or(rustix::io::Errno::IO),
            )
        }
    }
}

/// Flushes the file system holding `fd` to disk (macOS has no per-file-system `syncfs`: there,
/// all of them).
pub fn sync_fs(fd: impl AsFd) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return rustix::fs::syncfs(fd).map_err(Into::into);
    #[cfg(target_os = "macos")]
    {
        let _ = fd;
        // SAFETY: `sync` takes no arguments and has no preconditions.
        unsafe { libc::sync() };
        Ok(())
    }
}

/// Creates `to` (mode 0600, which must not exist) with the data of the regular file `from`
/// (opened, at path `from_path`), sharing its blocks when the file system can: `FICLONE` on
/// Linux, `clonefile` on macOS; a copy otherwise. Returns whether blocks were shared.
#[cfg(target_os = "linux")]
pub fn copy_file(from: &File, _from_path: &Path, to: &Path, len: u64) -> io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let dest = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    if rustix::fs::ioctl_ficlone(&dest, from).is_ok() {
        return Ok(true);
    }
    let mut left = len;
    while left > 0 {
        let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        match rustix::fs::copy_file_range(from, None, &dest, None, chunk) {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            Err(rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL) => {
                io::copy(&mut &*from, &mut &dest)?;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// Creates `to` (which must not exist) with the data of the regular file `from` (opened, at
/// path `from_path`), sharing its blocks when the file system can: `FICLONE` on Linux,
/// `clonefile` on macOS; a copy otherwise. Returns whether blocks were shared.
#[cfg(target_os = "macos")]
pub fn copy_file(from: &File, from_path: &Path, to: &Path, _len: u64) -> io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    if clonefile(from_path, to)? {
        return Ok(true);
    }
    let mut dest = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    io::copy(&mut &*from, &mut dest)?;
    Ok(false)
}

/// Makes `to` (which must not exist) a copy of the whole tree `from` in one call where the file
/// system can: `clonefile(2)` of the directory on macOS (APFS clones the hierarchy, sharing
/// every file's blocks, keeping modes, times and xattrs; the owner becomes the caller). Returns
/// `Ok(false)`, with nothing created, where it cannot (another volume, a file system without
/// clones, Linux): the caller copies file by file instead.
pub fn clone_tree(from: &Path, to: &Path) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        let _ = (from, to);
        Ok(false)
    }
    #[cfg(target_os = "macos")]
    clonefile(from, to)
}

/// `clonefile(2)` of `from` (a file, or a whole directory tree) to `to`, which must not exist:
/// `Ok(false)`, nothing created, on another volume or a file system without clones.
#[cfg(target_os = "macos")]
fn clonefile(from: &Path, to: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    /// From `<sys/clonefile.h>`: do not follow a symlink at `src`; do not copy the owner.
    const CLONE_NOFOLLOW: u32 = 0x0001;
    const CLONE_NOOWNERCOPY: u32 = 0x0002;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (src, dst) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::clonefile(
            src.as_ptr(),
            dst.as_ptr(),
            CLONE_NOFOLLOW | CLONE_NOOWNERCOPY,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if matches!(err.raw_os_error(), Some(libc::EXDEV | libc::ENOTSUP)) {
        return Ok(false);
    }
    Err(err)
}
