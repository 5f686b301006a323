//! Advisory locks on lock files (`flock`), held for as long as the returned file lives.
//!
//! Used where two krbottle processes must not do the same thing at once: filling one cache
//! entry, running one bottle. The kernel drops the lock when the process dies, so a crash never
//! leaves a stale lock behind.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// Opens (creating it if needed) `path` and takes an exclusive lock, waiting for it if another
/// process holds it.
pub fn lock_exclusive(path: &Path) -> io::Result<File> {
    let file = open(path)?;
    flock(&file, FlockOperation::LockExclusive)?;
    Ok(file)
}

/// Like [`lock_exclusive`], but `Ok(None)` at once when another process holds the lock.
pub fn try_lock_exclusive(path: &Path) -> io::Result<Option<File>> {
    let file = open(path)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The path of the lock file `NAME.lock` in `dir`, made (private to the user) if needed.
pub fn path_in(dir: &Path, name: &str) -> io::Result<PathBuf> {
    crate::sys::fs::create_private_dir(dir)?;
    Ok(dir.join(format!("{name}.lock")))
}

fn open(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_refused_without_waiting_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = lock_exclusive(&path).unwrap();
        assert!(try_lock_exclusive(&path).unwrap().is_none());
        drop(held);
        assert!(try_lock_exclusive(&path).unwrap().is_some());
    }
}
