//! The layer cache: snapshots of layer stacks, keyed by the chain ID of their top layer (a chain
//! ID names the whole stack below it) and ownership mode, shared by every image whose stack
//! starts with that chain; and [`assemble`], which builds a tree from a stack of sources.
//!
//! Layout under the cache root: `layers/<chain hex>.<ownership>/` holds `tree/` (the stack's
//! merged root filesystem) and `layer.json`. An entry is filled under a temp name and renamed
//! into place after its `layer.json` is written: a directory without the `.tmp-` prefix is
//! complete, and only such a directory is ever used.
//!
//! [`assemble`] works top-down: the topmost source first, each lower one then adding only what
//! no upper source replaced, whited out or hid under an opaque directory, so nothing is written
//! twice. A cache tree is linked (every non-directory a hard link to its inode); an engine layer
//! directory is imported ([`import`](super::import): linked to the engine's inodes where it can,
//! copied otherwise). Directories are made fresh with the metadata
//! of the topmost source that has them. Sharing inodes is sound because nothing ever writes into
//! a cache tree: a bottle's writes go to its own overlay upper layer (or its own copy). Roots
//! built on the same snapshot share its files on disk.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ownership::{self, EntryMeta, Ownership, Skipped};
use super::tree::{self, RelPath};
use crate::lockfile;

/// Name of the marker that makes a directory of a layer tree opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of a whiteout marker in a layer tree.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";

const LAYERS_DIR: &str = "layers";
const LOCKS_DIR: &str = "locks";
const TREE_DIR: &str = "tree";
const META_FILE: &str = "layer.json";
const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    #[error("Layer digest {0} is not a sha256 digest; the image's config is malformed")]
    BadDiffId(String),
    #[error("Cannot create the layer cache directory {}", path.display())]
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
    #[error("Cannot write the layer cache entry {}", path.display())]
    WriteEntry {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot fill layer {chain_id}")]
    Fill {
        chain_id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Cannot read the layer cache entry {}; remove it with `krbottle image prune --all`", path.display())]
    ReadEntry {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot assemble {path} of the root filesystem from the layer cache")]
    Assemble {
        path: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("Cannot remove the unused layer {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The chain IDs (hex) of a stack of layers given bottom first by their diff_ids: the first is
/// its diff_id, each next one `sha256(<chain below> + " " + <diff_id>)` (the OCI image spec).
pub fn chain_ids(diff_ids: &[String]) -> Result<Vec<String>, LayersError> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let hex = diff_id
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| LayersError::BadDiffId(diff_id.clone()))?;
        let chain = match out.last() {
            None => hex.to_string(),
            Some(below) => hex::encode(Sha256::digest(format!("sha256:{below} {diff_id}"))),
        };
        out.push(chain);
    }
    Ok(out)
}

/// What a layer entry's `layer.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerRecord {
    pub chain_id: String,
    pub diff_id: String,
    pub ownership: Ownership,
    pub entries: u64,
    pub bytes: u64,
    /// What it is (`snapshot`: a stack's merged tree).
    pub source: String,
}

/// A complete layer entry.
#[derive(Clone, Debug)]
pub struct Layer {
    pub dir: PathBuf,
    pub tree: PathBuf,
    pub record: LayerRecord,
}

/// The layer cache under one cache root.
#[derive(Clone, Debug)]
pub struct LayerStore {
    root: PathBuf,
}

impl LayerStore {
    /// The layer cache of the image cache at `cache_root`.
    pub fn at(cache_root: &Path) -> Self {
        LayerStore {
            root: cache_root.to_path_buf(),
        }
    }

    fn name(chain_hex: &str, ownership: Ownership) -> String {
        format!("{chain_hex}.{ownership}")
    }

    /// The complete entry of layer `chain_hex`, if there is one.
    pub fn lookup(
        &self,
        chain_hex: &str,
        ownership: Ownership,
    ) -> Result<Option<Layer>, LayersError> {
        read_layer(
            &self
                .root
                .join(LAYERS_DIR)
                .join(Self::name(chain_hex, ownership)),
        )
    }

    /// The entry of layer `chain_hex`, filled by `fill` first if missing. `fill` gets an empty
    /// directory (the layer tree) and returns its entry and byte counts. Returns the entry and
    /// whether it was there already.
    pub fn get_or_fill<E>(
        &self,
        chain_hex: &str,
        diff_id: &str,
        ownership: Ownership,
        source: &str,
        fill: impl FnOnce(BorrowedFd<'_>) -> Result<(u64, u64), E>,
    ) -> Result<(Layer, bool), LayersError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        if let Some(layer) = self.lookup(chain_hex, ownership)? {
            return Ok((layer, true));
        }
        let layers = self.ensure_dir(LAYERS_DIR)?;
        let name = Self::name(chain_hex, ownership);
        let _lock = self.lock(&format!("layer-{name}"))?;
        if let Some(layer) = self.lookup(chain_hex, ownership)? {
            return Ok((layer, true));
        }
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LayersError::WriteEntry { path, source }
        };
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{name}-"))
            .tempdir_in(&layers)
            .map_err(write_err(&layers))?;
        let tree_path = tmp.path().join(TREE_DIR);
        fs::create_dir(&tree_path).map_err(write_err(&tree_path))?;
        let tree_fd = tree::open_dir_path(&tree_path).map_err(write_err(&tree_path))?;
        let (entries, bytes) = fill(tree_fd.as_fd()).map_err(|e| LayersError::Fill {
            chain_id: format!("sha256:{chain_hex}"),
            source: Box::new(e),
        })?;
        drop(tree_fd);
        let record = LayerRecord {
            chain_id: format!("sha256:{chain_hex}"),
            diff_id: diff_id.to_string(),
            ownership,
            entries,
            bytes,
            source: source.to_string(),
        };
        let meta_path = tmp.path().join(META_FILE);
        let text = serde_json::to_vec_pretty(&record).map_err(io::Error::other);
        text.and_then(|t| crate::sys::fs::write_atomic(&meta_path, &t, 0o644))
            .map_err(write_err(&meta_path))?;
        let final_dir = layers.join(&name);
        let tmp_path = tmp.keep();
        fs::rename(&tmp_path, &final_dir).map_err(|source| {
            let _ = crate::image::remove_tree_any_owner(&tmp_path);
            LayersError::WriteEntry {
                path: final_dir.clone(),
                source,
            }
        })?;
        Ok((
            Layer {
                tree: final_dir.join(TREE_DIR),
                dir: final_dir,
                record,
            },
            false,
        ))
    }

    /// Removes the complete layers whose `<chain hex>.<ownership>` name is not in `used`, and
    /// leftovers of interrupted fills nobody is writing; returns how many were removed. The
    /// caller holds the [`LayerStore::gc_lock`], so no image is being assembled meanwhile.
    pub fn remove_unused(&self, used: &HashSet<String>) -> Result<usize, LayersError> {
        let layers = self.root.join(LAYERS_DIR);
        let Ok(rd) = fs::read_dir(&layers) else {
            return Ok(0);
        };
        let mut removed = 0;
        for item in rd.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let doomed = match name.strip_prefix(TMP_PREFIX) {
                Some(rest) => {
                    let Some((layer, _)) = rest.rsplit_once('-') else {
                        continue;
                    };
                    // A fill in progress holds its layer's lock; a temp dir whose lock is
                    // free is the leftover of a fill that died (a new fill makes a new one).
                    let lock = self.lock_path(&format!("layer-{layer}"))?;
                    matches!(lockfile::try_lock_exclusive(&lock), Ok(Some(_)))
                }
                None => !used.contains(&name),
            };
            if doomed {
                crate::image::remove_tree_any_owner(&item.path()).map_err(|source| {
                    LayersError::Remove {
                        path: item.path(),
                        source,
                    }
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The lock that image fills take while they use layers and `remove_unused` callers take
    /// to delete them.
    pub fn gc_lock(&self) -> Result<fs::File, LayersError> {
        let path = self.lock_path("layers-gc")?;
        lockfile::lock_exclusive(&path).map_err(|source| LayersError::Lock { path, source })
    }

    /// The name a layer has in image entries' records (and in `remove_unused`'s `used`).
    pub fn entry_name(chain_hex: &str, ownership: Ownership) -> String {
        Self::name(chain_hex, ownership)
    }

    fn ensure_dir(&self, name: &str) -> Result<PathBuf, LayersError> {
        let path = self.root.join(name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|source| LayersError::CreateDir {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }

    fn lock_path(&self, name: &str) -> Result<PathBuf, LayersError> {
        Ok(self.ensure_dir(LOCKS_DIR)?.join(format!("{name}.lock")))
    }

    fn lock(&self, name: &str) -> Result<fs::File, LayersError> {
        let path = self.lock_path(name)?;
        lockfile::lock_exclusive(&path).map_err(|source| LayersError::Lock { path, source })
    }
}

fn read_layer(dir: &Path) -> Result<Option<Layer>, LayersError> {
    let meta_path = dir.join(META_FILE);
    let text = match fs::read(&meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LayersError::ReadEntry {
                path: meta_path,
                source,
            });
        }
    };
    let record = serde_json::from_slice(&text).map_err(|e| LayersError::ReadEntry {
        path: meta_path.clone(),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })?;
    Ok(Some(Layer {
        dir: dir.to_path_buf(),
        tree: dir.join(TREE_DIR),
        record,
    }))
}

/// What [`assemble`] made.
#[derive(Debug, Default, Clone, Copy)]
pub struct Assembled {
    /// Entries of the result (directories included).
    pub entries: u64,
    /// Bytes of file content taken from engine layer directories (linked or copied; files
    /// linked from the cache's own trees are not counted).
    pub bytes: u64,
    /// Entries hard-linked to the engine's own layer files.
    pub engine_links: u64,
    pub skipped: Skipped,
}

/// One level of a stack [`assemble`] builds a tree from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A tree of the cache (a snapshot, or a layer tree with `.wh.` markers): linked.
    Linked(PathBuf),
    /// An engine layer directory (the driver's deletion forms): imported.
    #[cfg(target_os = "linux")]
    Engine(PathBuf),
}

/// Builds the tree `dest` (an empty directory) from a stack of sources given bottom first.
pub fn assemble(
    sources: &[Source],
    dest: BorrowedFd<'_>,
    ownership: Ownership,
) -> Result<Assembled, LayersError> {
    let mut asm = Assembler {
        #[cfg(target_os = "linux")]
        import: super::import::Import::new(dest),
        #[cfg(not(target_os = "linux"))]
        _dest: std::marker::PhantomData,
        ownership,
        whiteouts: HashSet::new(),
        opaques: HashSet::new(),
        new_whiteouts: Vec::new(),
        new_opaques: Vec::new(),
        dirs: HashMap::new(),
        out: Assembled::default(),
    };
    let root = RelPath::root();
    let err = |path: &RelPath| {
        let path = path.clone();
        move |source: io::Error| LayersError::Assemble { path, source }
    };
    for source in sources.iter().rev() {
        let (tree, engine) = match source {
            Source::Linked(tree) => (tree, false),
            #[cfg(target_os = "linux")]
            Source::Engine(dir) => (dir, true),
        };
        let layer = tree::open_dir_path(tree).map_err(err(&root))?;
        // The topmost source fills an empty tree: nothing of an upper one is in its way.
        let fresh = asm.dirs.is_empty();
        if fresh {
            asm.take_dir(layer.as_fd(), dest, &root, engine)
                .map_err(err(&root))?;
        }
        asm.merge_dir(layer.as_fd(), dest, &root, engine, fresh)?;
        // A layer's deletions apply to the layers below it only.
        asm.whiteouts.extend(asm.new_whiteouts.drain(..));
        asm.opaques.extend(asm.new_opaques.drain(..));
    }
    // Directory modes and mtimes last, deepest first: nothing is created in them any more.
    let mut dirs: Vec<_> = asm.dirs.into_iter().collect();
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
    for (path, meta) in dirs {
        let fd = tree::open_dir(dest, &path).map_err(err(&path))?;
        ownership::finish_dir_late(fd.as_fd(), &meta, ownership)
            .map_err(|e| err(&path)(e.into()))?;
    }
    #[cfg(target_os = "linux")]
    {
        asm.out.bytes = asm.import.stats.bytes;
        asm.out.engine_links = asm.import.stats.linked;
        asm.out.skipped.xattrs += asm.import.stats.skipped.xattrs;
    }
    Ok(asm.out)
}

struct Assembler<'a> {
    #[cfg(target_os = "linux")]
    import: super::import::Import<'a>,
    #[cfg(not(target_os = "linux"))]
    _dest: std::marker::PhantomData<&'a ()>,
    ownership: Ownership,
    /// Paths deleted by the layers above the current one.
    whiteouts: HashSet<RelPath>,
    /// Directories whose lower contents the layers above the current one hide.
    opaques: HashSet<RelPath>,
    new_whiteouts: Vec<RelPath>,
    new_opaques: Vec<RelPath>,
    /// Directories of the result and the metadata of the topmost layer that has them.
    dirs: HashMap<RelPath, EntryMeta>,
    out: Assembled,
}

impl Assembler<'_> {
    /// Adds what layer directory `layer` (at `path`) contributes to result directory `dest`;
    /// `engine`: `layer` is an engine layer directory, whose entries are imported. `fresh`:
    /// `dest` was made by this layer, so no upper layer put anything in it (nothing to look up).
    fn merge_dir(
        &mut self,
        layer: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        path: &RelPath,
        engine: bool,
        fresh: bool,
    ) -> Result<(), LayersError> {
        let err = |path: &RelPath| {
            let path = path.clone();
            move |source: io::Error| LayersError::Assemble { path, source }
        };
        #[cfg(target_os = "linux")]
        if engine && super::import::is_opaque(layer).map_err(err(path))? {
            self.new_opaques.push(path.clone());
        }
        let mut names = tree::list_dir_typed(layer).map_err(err(path))?;
        // Sorted: which name of a hard-linked inode is taken first is the same every time.
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut markers = Vec::new();
        for (name, listed) in names {
            let bytes = name.as_bytes();
            if let Some(rest) = bytes.strip_prefix(WHITEOUT_PREFIX) {
                markers.push(rest.to_vec());
                continue;
            }
            let child = path.join(&name);
            if self.whiteouts.contains(&child) {
                continue;
            }
            let stat = || {
                rustix::fs::statat(layer, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| err(&child)(e.into()))
            };
            // An engine entry's whole stat is needed (device numbers, link count); a cache
            // tree's type comes with its directory listing.
            let st = match engine || listed == FileType::Unknown {
                true => Some(stat()?),
                false => None,
            };
            let ltype = Some(st.map_or(listed, |st| FileType::from_raw_mode(st.st_mode)));
            if engine
                && ltype == Some(FileType::CharacterDevice)
                && st.is_some_and(|st| st.st_rdev == 0)
            {
                // overlay2's whiteout.
                self.new_whiteouts.push(child);
                continue;
            }
            let dtype = match fresh {
                true => None,
                false => tree::file_type_at(dest, &name).map_err(err(&child))?,
            };
            match (ltype, dtype) {
                (Some(FileType::Directory), None) => {
                    rustix::fs::mkdirat(dest, &name, Mode::from_raw_mode(0o700))
                        .map_err(|e| err(&child)(e.into()))?;
                    let l = tree::open_dir_at(layer, &name).map_err(err(&child))?;
                    let d = tree::open_dir_at(dest, &name).map_err(err(&child))?;
                    self.take_dir(l.as_fd(), d.as_fd(), &child, engine)
                        .map_err(err(&child))?;
                    self.out.entries += 1;
                    self.merge_dir(l.as_fd(), d.as_fd(), &child, engine, true)?;
                }
                (Some(FileType::Directory), Some(FileType::Directory)) => {
                    if self.opaques.contains(&child) {
                        continue;
                    }
                    let l = tree::open_dir_at(layer, &name).map_err(err(&child))?;
                    let d = tree::open_dir_at(dest, &name).map_err(err(&child))?;
                    self.merge_dir(l.as_fd(), d.as_fd(), &child, engine, false)?;
                }
                // An upper layer put something else here: it wins.
                (_, Some(_)) | (None, None) => {}
                #[cfg(target_os = "linux")]
                (Some(_), None) if engine => {
                    let st = match st {
                        Some(st) => st,
                        None => stat()?,
                    };
                    self.import
                        .copy_leaf(layer, dest, &name, &child, &st)
                        .map_err(|e| err(&child)(io::Error::other(e)))?;
                    self.out.entries += 1;
                }
                (Some(_), None) => {
                    rustix::fs::linkat(layer, &name, dest, &name, AtFlags::empty())
                        .map_err(|e| err(&child)(e.into()))?;
                    self.out.entries += 1;
                }
            }
        }
        for rest in markers {
            if rest == OPAQUE_MARKER.as_bytes()[WHITEOUT_PREFIX.len()..] {
                self.new_opaques.push(path.clone());
            } else if rest.starts_with(WHITEOUT_PREFIX) {
                // Other `.wh..wh.` names are aufs bookkeeping.
            } else if !rest.is_empty() && !rest.contains(&b'/') {
                self.new_whiteouts
                    .push(path.join(&OsString::from(OsStr::from_bytes(&rest))));
            }
        }
        Ok(())
    }

    /// A result directory takes the owner and xattrs of the layer's (its mode and mtime come
    /// last).
    fn take_dir(
        &mut self,
        layer: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        path: &RelPath,
        engine: bool,
    ) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        let meta = match engine {
            true => super::import::read_meta(layer, None)?,
            false => dir_meta(layer)?,
        };
        #[cfg(not(target_os = "linux"))]
        let meta = {
            let _ = engine;
            dir_meta(layer)?
        };
        ownership::finish_dir_early(dest, &meta, self.ownership, &mut self.out.skipped)?;
        self.dirs.insert(path.clone(), meta);
        Ok(())
    }
}

/// A layer tree directory's metadata, to give the result's directory.
fn dir_meta(fd: BorrowedFd<'_>) -> io::Result<EntryMeta> {
    EntryMeta::read(
        &rustix::fs::fstat(fd)?,
        |buf| rustix::fs::flistxattr(fd, buf),
        |key, buf| rustix::fs::fgetxattr(fd, key, buf),
        |_| true,
    )
}
