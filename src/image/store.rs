//! The fill-once protocol both stores of the cache keep: image roots (`images/`, see
//! [`super::cache`]) and layer stack snapshots (`layers/`, see [`super::layers`]).
//!
//! An entry `<store>/<name>/` holds a JSON record file and the entry's tree. It is filled under
//! its lock (`locks/<lock prefix><name>.lock`) in a temp dir `<store>/.tmp-<name>-…` and renamed
//! into place once its record is written, so a directory without the `.tmp-` prefix is complete
//! and a reader never sees half an entry. Two processes filling one entry serialise on the
//! lock, and the second finds the first one's result. A fill that died leaves its temp dir
//! behind with its lock free; [`Store::leftover`] tells such a dir from one still being filled.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::lockfile;

/// The prefix of an entry being filled (or left by a fill that died).
const TMP_PREFIX: &str = ".tmp-";
/// Locks of both stores, beside them under the cache root.
const LOCKS_DIR: &str = "locks";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Cannot create the cache directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot read cache entry {}; remove it with `krbottle image prune --all`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write cache entry {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot remove cache entry {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Filling the cache's {entry} failed")]
    Fill {
        entry: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One store of fill-once entries under a cache root.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    locks: PathBuf,
    /// The record file's name in an entry.
    record: &'static str,
    /// Put before an entry's name to name its lock (the stores share one locks dir).
    lock_prefix: &'static str,
}

impl Store {
    pub fn new(
        cache_root: &Path,
        dir: &str,
        record: &'static str,
        lock_prefix: &'static str,
    ) -> Store {
        Store {
            dir: cache_root.join(dir),
            locks: cache_root.join(LOCKS_DIR),
            record,
            lock_prefix,
        }
    }

    /// Where the complete entry `name` is (or would be).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The record of the complete entry `name`, if there is one. Costs one small file read.
    pub fn read<R: DeserializeOwned>(&self, name: &str) -> Result<Option<R>, StoreError> {
        self.read_at(&self.path(name))
    }

    /// The record of the entry directory `dir` (complete, or `None` when it has none).
    pub fn read_at<R: DeserializeOwned>(&self, dir: &Path) -> Result<Option<R>, StoreError> {
        let path = dir.join(self.record);
        crate::sys::fs::read_json(&path).map_err(|source| StoreError::Read { path, source })
    }

    /// The record of entry `name`, filling it first if needed. `fill` gets the temp dir of the
    /// entry (it exists and is empty) and puts the tree there; the record it returns is written
    /// beside the tree, then the whole dir is renamed into place. Returns the record and whether
    /// the entry was there already. `label` names the entry in a fill's error.
    pub fn get_or_fill<R, E>(
        &self,
        name: &str,
        label: &str,
        fill: impl FnOnce(&Path) -> Result<R, E>,
    ) -> Result<(R, bool), StoreError>
    where
        R: Serialize + DeserializeOwned,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(record) = self.read(name)? {
            return Ok((record, true));
        }
        crate::sys::fs::create_private_dir(&self.dir).map_err(|source| StoreError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        let _lock = self.lock(name)?;
        // Someone else may have filled it while we waited for the lock.
        if let Some(record) = self.read(name)? {
            return Ok((record, true));
        }
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Write { path, source }
        };
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{name}-"))
            .tempdir_in(&self.dir)
            .map_err(write_err(&self.dir))?;
        let record = fill(tmp.path()).map_err(|e| StoreError::Fill {
            entry: label.to_string(),
            source: e.into(),
        })?;
        let record_path = tmp.path().join(self.record);
        let text = serde_json::to_vec_pretty(&record).map_err(io::Error::other);
        text.and_then(|t| crate::sys::fs::write_atomic(&record_path, &t, 0o644))
            .map_err(write_err(&record_path))?;
        // Kept from here on: a tree from the engine may hold what `TempDir`'s own removal
        // cannot delete (read-only dirs, other owners).
        let tmp_path = tmp.keep();
        let final_dir = self.path(name);
        if let Err(source) = fs::rename(&tmp_path, &final_dir) {
            let _ = crate::image::remove_tree_any_owner(&tmp_path);
            return Err(write_err(&final_dir)(source));
        }
        Ok((record, false))
    }

    /// Every complete entry's directory (temp dirs left out), in no particular order.
    pub fn entries(&self) -> Result<Vec<PathBuf>, StoreError> {
        let read_err = |source| StoreError::Read {
            path: self.dir.clone(),
            source,
        };
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_err(e)),
        };
        let mut out = Vec::new();
        for item in rd {
            let item = item.map_err(read_err)?;
            if !item.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                out.push(item.path());
            }
        }
        Ok(out)
    }

    /// Removes entry `name` (under its lock, so a concurrent fill is not cut short). Its dir is
    /// first renamed out of the way, so it disappears at once even if deleting takes a while.
    /// Whether there was one.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let _lock = self.lock(name)?;
        let dir = self.path(name);
        if !dir.exists() {
            return Ok(false);
        }
        let doomed = self.dir.join(format!("{TMP_PREFIX}{name}-removing"));
        let remove_err = |source| StoreError::Remove {
            path: dir.clone(),
            source,
        };
        fs::rename(&dir, &doomed).map_err(remove_err)?;
        crate::image::remove_tree_any_owner(&doomed).map_err(remove_err)?;
        Ok(true)
    }

    /// Removes what `doomed` picks among the store's dirs, by name: a complete entry's name, or
    /// for a temp dir, the name of the entry it was filling (`Temp`). Returns how many went.
    pub fn remove_where(&self, doomed: impl Fn(Dir<'_>) -> bool) -> Result<usize, StoreError> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        let mut removed = 0;
        for item in rd.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let dir = match name.strip_prefix(TMP_PREFIX) {
                Some(rest) => match rest.rsplit_once('-') {
                    Some((entry, _)) => Dir::Temp(entry),
                    None => continue,
                },
                None => Dir::Entry(&name),
            };
            if doomed(dir) {
                crate::image::remove_tree_any_owner(&item.path()).map_err(|source| {
                    StoreError::Remove {
                        path: item.path(),
                        source,
                    }
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Whether a temp dir filling `entry` is the leftover of a fill that died: a fill in
    /// progress holds the entry's lock (a new fill makes a new temp dir).
    pub fn leftover(&self, entry: &str) -> bool {
        matches!(self.try_lock(entry), Ok(Some(_)))
    }

    /// The exclusive lock named `name` (an entry's, or another of the store's), waiting for it.
    pub fn lock(&self, name: &str) -> Result<File, StoreError> {
        let path = self.lock_path(name)?;
        lockfile::lock_exclusive(&path).map_err(|source| StoreError::Lock { path, source })
    }

    fn try_lock(&self, name: &str) -> Result<Option<File>, StoreError> {
        let path = self.lock_path(name)?;
        lockfile::try_lock_exclusive(&path).map_err(|source| StoreError::Lock { path, source })
    }

    fn lock_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        let name = format!("{}{name}", self.lock_prefix);
        lockfile::path_in(&self.locks, &name).map_err(|source| StoreError::CreateDir {
            path: self.locks.clone(),
            source,
        })
    }
}

/// A dir of a store, as [`Store::remove_where`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir<'a> {
    /// A complete entry, by name.
    Entry(&'a str),
    /// A temp dir, by the name of the entry it fills.
    Temp(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Rec {
        n: u32,
    }

    fn store(root: &Path) -> Store {
        Store::new(root, "things", "rec.json", "thing-")
    }

    #[test]
    fn a_fill_is_renamed_into_place_with_its_record_and_found_after() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        assert_eq!(s.read::<Rec>("a").unwrap(), None);
        let (rec, hit) = s
            .get_or_fill("a", "a", |dir| {
                fs::write(dir.join("tree"), "x")?;
                Ok::<_, io::Error>(Rec { n: 1 })
            })
            .unwrap();
        assert_eq!((rec, hit), (Rec { n: 1 }, false));
        assert_eq!(fs::read_to_string(s.path("a").join("tree")).unwrap(), "x");
        let (rec, hit) = s
            .get_or_fill("a", "a", |_| -> Result<Rec, io::Error> {
                panic!("filled twice")
            })
            .unwrap();
        assert_eq!((rec, hit), (Rec { n: 1 }, true));
        assert_eq!(s.entries().unwrap(), [s.path("a")]);
        assert!(t.path().join("locks/thing-a.lock").exists());
    }

    #[test]
    fn a_failed_fill_leaves_no_entry_and_no_temp_dir() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let err = s
            .get_or_fill("a", "thing A", |dir| -> Result<Rec, io::Error> {
                fs::write(dir.join("partial"), "x")?;
                Err(io::Error::other("corrupt layer"))
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Fill { .. }), "{err}");
        assert_eq!(err.to_string(), "Filling the cache's thing A failed");
        assert_eq!(fs::read_dir(t.path().join("things")).unwrap().count(), 0);
    }

    #[test]
    fn remove_where_sees_entries_and_temp_dirs_by_entry_name() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        for name in ["keep", "drop"] {
            s.get_or_fill(name, name, |_| Ok::<_, io::Error>(Rec { n: 0 }))
                .unwrap();
        }
        fs::create_dir_all(t.path().join("things").join(".tmp-dead-x1/tree/ro")).unwrap();
        fs::create_dir_all(t.path().join("things").join(".tmp-live-x2")).unwrap();
        let _live = s.lock("live").unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let removed = s
            .remove_where(|d| {
                seen.lock().unwrap().push(format!("{d:?}"));
                match d {
                    Dir::Entry(name) => name == "drop",
                    Dir::Temp(entry) => s.leftover(entry),
                }
            })
            .unwrap();
        assert_eq!(removed, 2);
        let mut left: Vec<_> = fs::read_dir(t.path().join("things"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".tmp-live-x2", "keep"]);
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(
            seen,
            [
                "Entry(\"drop\")",
                "Entry(\"keep\")",
                "Temp(\"dead\")",
                "Temp(\"live\")"
            ]
        );
        assert!(s.remove("keep").unwrap());
        assert!(!s.remove("keep").unwrap());
    }
}
