//! The image cache: one unpacked root filesystem per (image ID, ownership mode).
//!
//! Layout under the cache root (`KRBOTTLE_CACHE_DIR`, default the user cache dir + `krbottle`):
//! ```text
//! images/<id-hex>.<mode>/rootfs/      the unpacked tree (never written after creation)
//! images/<id-hex>.<mode>/meta.json    what it is (image ID, tags, summary)
//! images/.tmp-…                       entries being filled; renamed into place when complete
//! locks/<id-hex>.<mode>.lock          flock held while an entry is filled or removed
//! ```
//! Entries are filled once, under their lock, and renamed into place when complete
//! ([`super::store`]), so a hit is a single small read.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::store::{Dir, Store, StoreError};
use crate::env_vars;
use crate::image::{Ownership, UnpackSummary};

const IMAGES_DIR: &str = "images";
const META_FILE: &str = "meta.json";
const ROOTFS_DIR: &str = "rootfs";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("No cache directory: set {var} or HOME", var = env_vars::KRBOTTLE_CACHE_DIR)]
    NoCacheDir,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which entry: an image ID and the ownership mode its files were written with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    id_hex: String,
    ownership: Ownership,
}

impl CacheKey {
    /// `image_id` is `sha256:<hex>` or bare hex. Anything but lowercase hex in the ID is refused
    /// (it becomes a directory name).
    pub fn new(image_id: &str, ownership: Ownership) -> Option<Self> {
        let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
        let hex_ok = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        hex_ok.then(|| CacheKey {
            id_hex: hex.to_string(),
            ownership,
        })
    }

    /// The key of a directory name made by [`CacheKey::name`].
    fn from_name(name: &str) -> Option<Self> {
        let (hex, mode) = name.split_once('.')?;
        let ownership = <Ownership as clap::ValueEnum>::from_str(mode, false).ok()?;
        CacheKey::new(hex, ownership)
    }

    fn name(&self) -> String {
        format!("{}.{}", self.id_hex, self.ownership)
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{} ({})", &self.id_hex[..12], self.ownership)
    }
}

/// What an entry's `meta.json` records about it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntryRecord {
    pub image_id: String,
    pub ownership: Ownership,
    pub tags: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// The unpacker's summary (entries, bytes, layers, the image's process config).
    pub summary: UnpackSummary,
}

/// A complete cache entry.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub meta: EntryRecord,
}

/// The cache at one root directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
    store: Store,
}

impl Cache {
    /// The cache at `KRBOTTLE_CACHE_DIR`, else `<user cache dir>/krbottle`.
    pub fn open_default() -> Result<Self, CacheError> {
        let root = match std::env::var_os(env_vars::KRBOTTLE_CACHE_DIR) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => dirs::cache_dir()
                .ok_or(CacheError::NoCacheDir)?
                .join("krbottle"),
        };
        Ok(Cache::at(root))
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let store = Store::new(&root, IMAGES_DIR, META_FILE, "");
        Cache { root, store }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entry for `key`, if complete. Costs one small file read.
    pub fn lookup(&self, key: &CacheKey) -> Result<Option<Entry>, CacheError> {
        let dir = self.store.path(&key.name());
        Ok(self.store.read_at(&dir)?.map(|meta| entry(dir, meta)))
    }

    /// The entry for `key`, filling it first if needed. `fill` gets a path that does not exist
    /// yet and must create the root filesystem there; it returns the tags and the summary to
    /// record. Returns the entry and whether it was already there.
    pub fn get_or_fill<E>(
        &self,
        key: &CacheKey,
        fill: impl FnOnce(&Path) -> Result<(Vec<String>, UnpackSummary), E>,
    ) -> Result<(Entry, bool), CacheError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let name = key.name();
        let label = format!("root of image {key}");
        let (meta, hit) = self.store.get_or_fill(&name, &label, |tmp| {
            let (tags, summary) = fill(&tmp.join(ROOTFS_DIR))?;
            Ok::<_, E>(EntryRecord {
                image_id: format!("sha256:{}", key.id_hex),
                ownership: key.ownership,
                tags,
                created: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                summary,
            })
        })?;
        Ok((entry(self.store.path(&name), meta), hit))
    }

    /// Every complete entry, newest first.
    pub fn list(&self) -> Result<Vec<Entry>, CacheError> {
        let mut entries = Vec::new();
        for dir in self.store.entries()? {
            if let Some(meta) = self.store.read_at(&dir)? {
                entries.push(entry(dir, meta));
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.meta.created));
        Ok(entries)
    }

    /// Removes an entry (under its lock, so a concurrent fill is not cut short); whether there
    /// was one.
    pub fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
        Ok(self.store.remove(&key.name())?)
    }

    /// Removes leftovers of interrupted fills (temp dirs whose lock nobody holds).
    pub fn remove_leftovers(&self) -> Result<usize, CacheError> {
        Ok(self.store.remove_where(|dir| match dir {
            Dir::Temp(name) => CacheKey::from_name(name).is_some() && self.store.leftover(name),
            Dir::Entry(_) => false,
        })?)
    }

    pub fn key_of(&self, entry: &Entry) -> Option<CacheKey> {
        CacheKey::new(&entry.meta.image_id, entry.meta.ownership)
    }
}

fn entry(dir: PathBuf, meta: EntryRecord) -> Entry {
    Entry {
        rootfs: dir.join(ROOTFS_DIR),
        dir,
        meta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::{fs, io};

    const ID: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn summary() -> UnpackSummary {
        serde_json::from_value(serde_json::json!({"layers": 1, "entries": 1, "bytes": 5,
            "skipped_devices": 0, "skipped_xattrs": 0, "seconds": 0.0, "image_id": null,
            "diff_ids": []}))
        .unwrap()
    }

    fn fill_ok(dest: &Path) -> Result<(Vec<String>, UnpackSummary), io::Error> {
        fs::create_dir(dest)?;
        fs::write(dest.join("hello"), "world")?;
        Ok((vec!["t:1".into()], summary()))
    }

    #[test]
    fn keys_accept_only_hex_ids_and_plain_modes() {
        assert!(CacheKey::new(ID, Ownership::Root).is_some());
        assert!(CacheKey::new(&ID[7..], Ownership::Xattr).is_some());
        assert!(CacheKey::new("sha256:../../etc", Ownership::Root).is_none());
        assert!(CacheKey::new(&ID.to_uppercase()[7..], Ownership::Root).is_none());
        let key = CacheKey::new(ID, Ownership::Userns).unwrap();
        assert_eq!(CacheKey::from_name(&key.name()), Some(key));
        for bad in [
            "",
            "x",
            &format!("{}.ro/ot", &ID[7..]),
            &format!("{}.", &ID[7..]),
        ] {
            assert_eq!(CacheKey::from_name(bad), None, "{bad}");
        }
    }

    /// An empty cache in a temp dir, and the key of [`ID`] with `ownership`.
    fn fresh(ownership: Ownership) -> (tempfile::TempDir, Cache, CacheKey) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        (dir, cache, CacheKey::new(ID, ownership).unwrap())
    }

    #[test]
    fn miss_fills_then_hit_returns_the_same_entry() {
        let (_dir, cache, key) = fresh(Ownership::Root);
        assert!(cache.lookup(&key).unwrap().is_none());
        let (entry, hit) = cache.get_or_fill(&key, fill_ok).unwrap();
        assert!(!hit);
        assert_eq!(
            fs::read_to_string(entry.rootfs.join("hello")).unwrap(),
            "world"
        );
        assert_eq!(entry.meta.tags, ["t:1"]);
        let (again, hit) = cache
            .get_or_fill(&key, |_| -> Result<_, io::Error> {
                panic!("must not refill")
            })
            .unwrap();
        assert!(hit);
        assert_eq!(again.rootfs, entry.rootfs);
        assert_eq!(cache.list().unwrap().len(), 1);
    }

    #[test]
    fn a_failed_fill_leaves_nothing() {
        let (dir, cache, key) = fresh(Ownership::Root);
        let err = cache
            .get_or_fill(&key, |dest| -> Result<_, io::Error> {
                fs::create_dir(dest)?;
                fs::write(dest.join("partial"), "x")?;
                Err(io::Error::other("corrupt layer"))
            })
            .unwrap_err();
        assert!(
            matches!(err, CacheError::Store(StoreError::Fill { .. })),
            "{err}"
        );
        assert!(cache.lookup(&key).unwrap().is_none());
        let left: Vec<_> = fs::read_dir(dir.path().join(IMAGES_DIR)).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn concurrent_fills_of_one_key_fill_once() {
        let (_dir, cache, key) = fresh(Ownership::Root);
        let fills = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (cache, key, fills, barrier) =
                    (cache.clone(), key.clone(), fills.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    cache
                        .get_or_fill(&key, |dest| {
                            fills.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            fill_ok(dest)
                        })
                        .unwrap()
                        .0
                        .rootfs
                })
            })
            .collect();
        let roots: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(fills.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(roots.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn remove_deletes_even_read_only_trees() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, cache, key) = fresh(Ownership::Xattr);
        let (entry, _) = cache
            .get_or_fill(&key, |dest| {
                fill_ok(dest)?;
                fs::create_dir(dest.join("ro"))?;
                fs::write(dest.join("ro/f"), "x")?;
                fs::set_permissions(dest.join("ro"), fs::Permissions::from_mode(0o555))?;
                Ok::<_, io::Error>((vec![], summary()))
            })
            .unwrap();
        assert!(cache.remove(&key).unwrap());
        assert!(!entry.dir.exists());
        assert!(!cache.remove(&key).unwrap());
        assert!(cache.list().unwrap().is_empty());
    }

    #[test]
    fn leftovers_of_interrupted_fills_are_removed() {
        let (dir, cache, key) = fresh(Ownership::Root);
        let stale = dir
            .path()
            .join(IMAGES_DIR)
            .join(format!(".tmp-{}-abc123", key.name()));
        fs::create_dir_all(stale.join("rootfs/etc")).unwrap();
        assert_eq!(cache.remove_leftovers().unwrap(), 1);
        assert!(!stale.exists());
    }
}
