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
//! copied otherwise). Directories are made fresh with the metadata of the topmost source that
//! has them; a directory's mode and mtime are set once no source below adds to it. A cache tree
//! at the bottom of the stack (the unchanged stack under a rebuilt image's new layer) is linked
//! on every core, a directory per job. Sharing inodes is sound because nothing ever writes into
//! a cache tree: a bottle's writes go to its own overlay upper layer (or its own copy). Roots
//! built on the same snapshot share its files on disk.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rustix::fs::{AtFlags, FileType, Mode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ownership::{self, EntryMeta, Ownership, Skipped};
use super::store::{Dir, Store, StoreError};
use super::tree::{self, RelPath};

/// Name of the marker that makes a directory of a layer tree opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of a whiteout marker in a layer tree.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";

const LAYERS_DIR: &str = "layers";
const TREE_DIR: &str = "tree";
const META_FILE: &str = "layer.json";

#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    #[error("Layer digest {0} is not a sha256 digest; the image's config is malformed")]
    BadDiffId(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Cannot assemble {path} of the root filesystem from the layer cache")]
    Assemble {
        path: RelPath,
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
    store: Store,
}

impl LayerStore {
    /// The layer cache of the image cache at `cache_root`.
    pub fn at(cache_root: &Path) -> Self {
        LayerStore {
            store: Store::new(cache_root, LAYERS_DIR, META_FILE, "layer-"),
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
        let dir = self.store.path(&Self::name(chain_hex, ownership));
        Ok(self.store.read_at(&dir)?.map(|record| layer(dir, record)))
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
        let name = Self::name(chain_hex, ownership);
        let short = &chain_hex[..chain_hex.len().min(12)];
        let label = format!("layer sha256:{short} ({ownership})");
        let (record, hit) = self.store.get_or_fill(&name, &label, |tmp| {
            let tree_path = tmp.join(TREE_DIR);
            fs::create_dir(&tree_path)?;
            let tree_fd = tree::open_dir_path(&tree_path)?;
            let (entries, bytes) = fill(tree_fd.as_fd())?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(LayerRecord {
                chain_id: format!("sha256:{chain_hex}"),
                diff_id: diff_id.to_string(),
                ownership,
                entries,
                bytes,
                source: source.to_string(),
            })
        })?;
        Ok((layer(self.store.path(&name), record), hit))
    }

    /// Removes the complete layers whose `<chain hex>.<ownership>` name is not in `used`, and
    /// leftovers of interrupted fills nobody is writing; returns how many were removed. The
    /// caller holds the [`LayerStore::gc_lock`], so no image is being assembled meanwhile.
    pub fn remove_unused(&self, used: &HashSet<String>) -> Result<usize, LayersError> {
        Ok(self.store.remove_where(|dir| match dir {
            Dir::Entry(name) => !used.contains(name),
            Dir::Temp(name) => self.store.leftover(name),
        })?)
    }

    /// The lock that image fills take while they use layers and `remove_unused` callers take
    /// to delete them.
    pub fn gc_lock(&self) -> Result<fs::File, LayersError> {
        Ok(self.store.lock("gc")?)
    }

    /// The name a layer has in image entries' records (and in `remove_unused`'s `used`).
    pub fn entry_name(chain_hex: &str, ownership: Ownership) -> String {
        Self::name(chain_hex, ownership)
    }
}

fn layer(dir: PathBuf, record: LayerRecord) -> Layer {
    Layer {
        tree: dir.join(TREE_DIR),
        dir,
        record,
    }
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
        last: false,
        out: Assembled::default(),
    };
    let root = RelPath::root();
    let err = |path: &RelPath| {
        let path = path.clone();
        move |source: io::Error| LayersError::Assemble { path, source }
    };
    for (i, source) in sources.iter().enumerate().rev() {
        asm.last = i == 0;
        let (tree, engine) = match source {
            Source::Linked(tree) => (tree, false),
            #[cfg(target_os = "linux")]
            Source::Engine(dir) => (dir, true),
        };
        let layer = tree::open_dir_path(tree).map_err(err(&root))?;
        // The topmost source fills an empty tree: nothing of an upper one is in its way.
        let fresh = asm.dirs.is_empty();
        if asm.last && !engine {
            // A cache tree at the bottom (a rebuild's unchanged stack): linked on every core.
            asm.link_bottom(layer, dest, fresh)?;
            continue;
        }
        if fresh {
            asm.take_dir(layer.as_fd(), dest, &root, engine)
                .map_err(err(&root))?;
        }
        asm.merge_dir(layer.as_fd(), dest, &root, engine, fresh)?;
        // A layer's deletions apply to the layers below it only.
        asm.whiteouts.extend(asm.new_whiteouts.drain(..));
        asm.opaques.extend(asm.new_opaques.drain(..));
    }
    // The modes and mtimes of the directories the bottom source did not visit, deepest first:
    // nothing is created in them any more.
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
    /// Directories of the result not finished yet, and the metadata of the topmost layer that
    /// has them.
    dirs: HashMap<RelPath, EntryMeta>,
    /// The source being merged is the bottom one: a directory it has visited is complete.
    last: bool,
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
            let ltype = st.map_or(listed, |st| FileType::from_raw_mode(st.st_mode));
            if engine && ltype == FileType::CharacterDevice && st.is_some_and(|st| st.st_rdev == 0)
            {
                // overlay2's whiteout.
                self.new_whiteouts.push(child);
                continue;
            }
            match place(ltype, dest, &name, fresh).map_err(err(&child))? {
                Place::NewDir => {
                    rustix::fs::mkdirat(dest, &name, Mode::from_raw_mode(0o700))
                        .map_err(|e| err(&child)(e.into()))?;
                    let l = tree::open_dir_at(layer, &name).map_err(err(&child))?;
                    let d = tree::open_dir_at(dest, &name).map_err(err(&child))?;
                    self.take_dir(l.as_fd(), d.as_fd(), &child, engine)
                        .map_err(err(&child))?;
                    self.out.entries += 1;
                    self.merge_dir(l.as_fd(), d.as_fd(), &child, engine, true)?;
                }
                Place::MergeDir => {
                    if self.opaques.contains(&child) {
                        continue;
                    }
                    let l = tree::open_dir_at(layer, &name).map_err(err(&child))?;
                    let d = tree::open_dir_at(dest, &name).map_err(err(&child))?;
                    self.merge_dir(l.as_fd(), d.as_fd(), &child, engine, false)?;
                }
                Place::Taken => {}
                #[cfg(target_os = "linux")]
                Place::Leaf if engine => {
                    let st = match st {
                        Some(st) => st,
                        None => stat()?,
                    };
                    self.import
                        .copy_leaf(layer, dest, &name, &child, &st)
                        .map_err(|e| err(&child)(io::Error::other(e)))?;
                    self.out.entries += 1;
                }
                Place::Leaf => {
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
        // No source below this one adds anything to `dest`: its mode and mtime are final now,
        // set through the descriptor at hand (no walk from the root later).
        if self.last
            && let Some(meta) = self.dirs.remove(path)
        {
            ownership::finish_dir_late(dest, &meta, self.ownership)
                .map_err(|e| err(path)(e.into()))?;
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

/// One directory of [`Assembler::link_bottom`]'s walk: `name` in the `(layer, result)`
/// directories `parents` (`None`: those directories themselves, the roots).
struct LinkJob {
    parents: (Arc<OwnedFd>, Arc<OwnedFd>),
    name: Option<OsString>,
    path: RelPath,
    /// Made by the pass itself (it takes this layer's metadata; nothing is in it yet).
    made: bool,
}

/// The shared state of [`Assembler::link_bottom`]'s workers.
struct LinkWalk<'s> {
    queue: Mutex<(Vec<LinkJob>, usize)>,
    more: Condvar,
    failed: Mutex<Option<LayersError>>,
    stop: AtomicBool,
    /// The result's directories made by upper sources, not finished yet.
    dirs: Mutex<HashMap<RelPath, EntryMeta>>,
    whiteouts: &'s HashSet<RelPath>,
    opaques: &'s HashSet<RelPath>,
    ownership: Ownership,
}

/// What one worker of [`Assembler::link_bottom`] did.
#[derive(Default)]
struct LinkCounts {
    entries: u64,
    skipped: Skipped,
}

impl Assembler<'_> {
    /// Adds the bottom source, a cache tree, to `dest`: every non-directory a hard link, on as
    /// many threads as there are cores (at most four). Each directory is a job; its new
    /// subdirectories are made by the job and filled by their own, and its mode and mtime are set
    /// once its own entries are in (what happens inside a subdirectory does not change it).
    /// Workers hold only the descriptors of the directories they are in and of the parents of
    /// queued jobs.
    fn link_bottom(
        &mut self,
        layer: OwnedFd,
        dest: BorrowedFd<'_>,
        fresh: bool,
    ) -> Result<(), LayersError> {
        let root = RelPath::root();
        let dest = rustix::io::dup(dest).map_err(|e| LayersError::Assemble {
            path: root.clone(),
            source: e.into(),
        })?;
        let walk = LinkWalk {
            queue: Mutex::new((vec![], 0)),
            more: Condvar::new(),
            failed: Mutex::new(None),
            stop: AtomicBool::new(false),
            dirs: Mutex::new(std::mem::take(&mut self.dirs)),
            whiteouts: &self.whiteouts,
            opaques: &self.opaques,
            ownership: self.ownership,
        };
        walk.queue.lock().expect("not poisoned").0.push(LinkJob {
            parents: (Arc::new(layer), Arc::new(dest)),
            name: None,
            path: root,
            made: fresh,
        });
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let counts: Vec<LinkCounts> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers).map(|_| scope.spawn(|| walk.work())).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for c in counts {
            self.out.entries += c.entries;
            self.out.skipped.xattrs += c.skipped.xattrs;
        }
        if let Some(e) = walk.failed.into_inner().expect("not poisoned") {
            return Err(e);
        }
        // What the pass did not visit (under opaque directories) is finished by the late pass.
        self.dirs = walk.dirs.into_inner().expect("not poisoned");
        Ok(())
    }
}

impl LinkWalk<'_> {
    /// One worker: jobs until none is queued and none is running, or one failed.
    fn work(&self) -> LinkCounts {
        let mut counts = LinkCounts::default();
        loop {
            let job = {
                let mut q = self.queue.lock().expect("not poisoned");
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return counts;
                    }
                    if let Some(job) = q.0.pop() {
                        q.1 += 1;
                        break job;
                    }
                    if q.1 == 0 {
                        return counts;
                    }
                    q = self.more.wait(q).expect("not poisoned");
                }
            };
            let path = job.path.clone();
            let result = self.dir(job, &mut counts);
            let mut q = self.queue.lock().expect("not poisoned");
            q.1 -= 1;
            match result {
                Ok(children) => q.0.extend(children),
                Err(source) => {
                    let mut failed = self.failed.lock().expect("not poisoned");
                    failed.get_or_insert(LayersError::Assemble { path, source });
                    self.stop.store(true, Ordering::Relaxed);
                }
            }
            self.more.notify_all();
        }
    }

    /// Links the entries of one directory, makes its new subdirectories and returns them (and
    /// the existing ones to merge) as jobs.
    fn dir(&self, job: LinkJob, counts: &mut LinkCounts) -> io::Result<Vec<LinkJob>> {
        let (layer, dest) = match &job.name {
            None => job.parents,
            Some(name) => (
                Arc::new(tree::open_dir_at(job.parents.0.as_fd(), name)?),
                Arc::new(tree::open_dir_at(job.parents.1.as_fd(), name)?),
            ),
        };
        let meta = if job.made {
            let meta = dir_meta(layer.as_fd())?;
            ownership::finish_dir_early(dest.as_fd(), &meta, self.ownership, &mut counts.skipped)?;
            Some(meta)
        } else {
            self.dirs.lock().expect("not poisoned").remove(&job.path)
        };
        let mut children = Vec::new();
        for (name, listed) in tree::list_dir_typed(layer.as_fd())? {
            // Deletion markers apply to the sources below, and this one is the bottom.
            if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
                continue;
            }
            let child = job.path.join(&name);
            if self.whiteouts.contains(&child) {
                continue;
            }
            let ltype = match listed {
                FileType::Unknown => FileType::from_raw_mode(
                    rustix::fs::statat(layer.as_fd(), &name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
                ),
                t => t,
            };
            let parents = || (layer.clone(), dest.clone());
            match place(ltype, dest.as_fd(), &name, job.made)? {
                Place::NewDir => {
                    rustix::fs::mkdirat(dest.as_fd(), &name, Mode::from_raw_mode(0o700))?;
                    counts.entries += 1;
                    children.push(LinkJob {
                        parents: parents(),
                        name: Some(name),
                        path: child,
                        made: true,
                    });
                }
                Place::MergeDir => {
                    if !self.opaques.contains(&child) {
                        children.push(LinkJob {
                            parents: parents(),
                            name: Some(name),
                            path: child,
                            made: false,
                        });
                    }
                }
                Place::Taken => {}
                Place::Leaf => {
                    rustix::fs::linkat(
                        layer.as_fd(),
                        &name,
                        dest.as_fd(),
                        &name,
                        AtFlags::empty(),
                    )?;
                    counts.entries += 1;
                }
            }
        }
        // Every entry of this directory is in: its mode and mtime are final.
        if let Some(meta) = meta {
            ownership::finish_dir_late(dest.as_fd(), &meta, self.ownership)?;
        }
        Ok(children)
    }
}

/// Where an entry of a source directory goes in the result, by what the result already holds
/// under its name.
enum Place {
    /// A directory the result lacks: made, then filled from this source.
    NewDir,
    /// A directory over one the result has (unless an upper source made that opaque).
    MergeDir,
    /// An upper source put something here: it wins.
    Taken,
    /// A non-directory the result lacks: linked or copied in.
    Leaf,
}

/// Classifies an entry of type `ltype` named `name` against the result directory `dest`
/// (`made`: just created, so it holds nothing yet and is not looked at).
fn place(ltype: FileType, dest: BorrowedFd<'_>, name: &OsStr, made: bool) -> io::Result<Place> {
    let dtype = match made {
        true => None,
        false => tree::file_type_at(dest, name)?,
    };
    Ok(match (ltype, dtype) {
        (FileType::Directory, None) => Place::NewDir,
        (FileType::Directory, Some(FileType::Directory)) => Place::MergeDir,
        (_, Some(_)) => Place::Taken,
        (_, None) => Place::Leaf,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::time::{Duration, SystemTime};

    fn mkdirs(root: &Path, dirs: &[&str]) {
        for d in dirs {
            fs::create_dir_all(root.join(d)).unwrap();
        }
    }

    fn put(root: &Path, files: &[&str]) {
        for f in files {
            let p = root.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, f).unwrap();
        }
    }

    /// Mode and mtime of a directory, set last (after its entries are in).
    fn stamp(root: &Path, dir: &str, mode: u32, secs: u64) {
        let p = root.join(dir);
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        fs::File::open(&p).unwrap().set_modified(when).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Directories only the lower tree has (deepest first), with their modes and mtimes.
    const LOWER_DIRS: [(&str, u32, u64); 6] = [
        ("mods/p7/lib/deep", 0o751, 1_000_000),
        ("mods/p7/lib", 0o711, 1_000_001),
        ("mods/p7", 0o751, 1_000_002),
        ("mods", 0o711, 1_000_003),
        ("keep", 0o751, 1_000_004),
        ("emptydir", 0o711, 1_000_005),
    ];

    fn ino(p: &Path) -> u64 {
        fs::symlink_metadata(p).unwrap().ino()
    }

    /// Two cache trees, the upper with deletion markers and an opaque directory, the lower a
    /// wide and deep tree (so that both of the bottom pass's workers have directories): the
    /// result holds what the stack shows, files are the sources' inodes, and every directory has
    /// the mode and mtime of the topmost source that has it.
    #[test]
    fn a_stack_of_cache_trees_is_linked_with_the_upper_trees_winning() {
        let t = tempfile::tempdir().unwrap();
        let (lower, upper, out) = (
            t.path().join("lower"),
            t.path().join("upper"),
            t.path().join("out"),
        );
        let mut wide = Vec::new();
        for i in 0..60 {
            wide.push(format!("mods/p{i}/lib/deep/index.js"));
            wide.push(format!("mods/p{i}/package.json"));
        }
        put(&lower, &wide.iter().map(String::as_str).collect::<Vec<_>>());
        put(
            &lower,
            &[
                "etc/shared",
                "etc/gone",
                "old/sub/f",
                "opq/hidden",
                "keep/lower-only",
            ],
        );
        mkdirs(&lower, &["emptydir"]);
        put(&upper, &["etc/shared", "opq/visible", "new/only-upper"]);
        put(&upper, &["etc/.wh.gone", ".wh.old", "opq/.wh..wh..opq"]);
        for (d, mode, mtime) in LOWER_DIRS {
            stamp(&lower, d, mode, mtime);
        }
        stamp(&lower, "etc", 0o700, 5);
        stamp(&upper, "etc", 0o755, 777);
        stamp(&upper, "new", 0o705, 888);

        fs::create_dir(&out).unwrap();
        let dest = tree::open_dir_path(&out).unwrap();
        let sources = [Source::Linked(lower.clone()), Source::Linked(upper.clone())];
        let a = assemble(&sources, dest.as_fd(), Ownership::Xattr).unwrap();

        for f in &wide {
            assert_eq!(
                ino(&out.join(f)),
                ino(&lower.join(f)),
                "{f} is the lower's inode"
            );
        }
        assert_eq!(ino(&out.join("etc/shared")), ino(&upper.join("etc/shared")));
        assert_eq!(
            ino(&out.join("keep/lower-only")),
            ino(&lower.join("keep/lower-only"))
        );
        assert_eq!(
            ino(&out.join("opq/visible")),
            ino(&upper.join("opq/visible"))
        );
        for gone in [
            "etc/gone",
            "old",
            "opq/hidden",
            "etc/.wh.gone",
            ".wh.old",
            "opq/.wh..wh..opq",
        ] {
            assert!(
                fs::symlink_metadata(out.join(gone)).is_err(),
                "{gone} is not in the result"
            );
        }
        assert!(out.join("emptydir").is_dir() && out.join("new/only-upper").is_file());
        let dir = |d: &str| fs::metadata(out.join(d)).unwrap();
        for (d, mode, mtime) in LOWER_DIRS {
            assert_eq!(dir(d).mtime(), mtime as i64, "{d}'s mtime");
            // Xattr mode keeps the owner's rwx.
            assert_eq!(dir(d).mode() & 0o777, mode | 0o700, "{d}'s mode");
        }
        assert_eq!(
            (dir("etc").mtime(), dir("etc").mode() & 0o777),
            (777, 0o755),
            "upper's etc"
        );
        assert_eq!(
            (dir("new").mtime(), dir("new").mode() & 0o777),
            (888, 0o705)
        );
        // 60 × (p, lib, deep, index.js, package.json) + mods, and etc/shared, keep,
        // keep/lower-only, opq, opq/visible, new, new/only-upper, emptydir, etc.
        assert_eq!(a.entries, 60 * 5 + 1 + 9, "{a:?}");
    }
}
