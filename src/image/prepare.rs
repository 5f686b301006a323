//! The image flows the verbs and `start` call: build an image, unpack one into a directory,
//! make sure the cache holds its root filesystem, list and prune the cache.
//!
//! Bytes come from one of two [`Source`]s: an image in the Docker engine (`docker save`, streamed)
//! or a `docker save` archive on disk (no engine needed). The unpacker is blocking (a reader and
//! a writer thread) and runs under `spawn_blocking`; in the `userns` mode it runs in a child in
//! the user's id mapping (`rootless`).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use crate::docker::{BuildRequest, DockerError, Engine, ImageConfig};
use crate::image::cache::{Cache, CacheError, CacheKey, Entry};
use crate::image::layout::{self, LayoutError};
use crate::image::{Ownership, UnpackError, UnpackOptions, UnpackSummary, unpack_save};
use crate::output::{Reporter, Verbosity};

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Rootless(#[from] crate::image::rootless::RootlessError),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    IdMapping(#[from] crate::sys::userns::UsernsError),
    #[error(
        "--ownership root needs root; as a user, use --ownership userns (the image's ids in a user namespace)"
    )]
    RootNeedsRoot,
    #[error("--ownership userns needs Linux user namespaces; use --ownership xattr")]
    NoUserNamespaces,
    #[error("Cannot open the saved image {}", path.display())]
    OpenArchive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot read the saved image {}", path.display())]
    ReadArchive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("The saved image {}", path.display())]
    ArchiveLayout {
        path: PathBuf,
        #[source]
        source: LayoutError,
    },
    #[error("Image ID {0} is not a sha256 digest")]
    BadImageId(String),
    #[error("An image in the Docker engine needs the engine; connect to it first")]
    NoEngine,
    #[error("The unpacker stopped unexpectedly")]
    Join(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Layers(#[from] crate::image::layers::LayersError),
    #[error("Cannot create the root filesystem {}", path.display())]
    CreateRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where an image's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An image reference in the local Docker engine.
    Engine(String),
    /// A `docker save` archive (Docker or OCI layout).
    Archive(PathBuf),
}

impl Source {
    /// An existing file is a saved image; anything else is an image reference.
    pub fn parse(arg: &str) -> Source {
        let path = Path::new(arg);
        if path.is_file() {
            Source::Archive(path.to_path_buf())
        } else {
            Source::Engine(arg.to_string())
        }
    }

    pub fn needs_engine(&self) -> bool {
        matches!(self, Source::Engine(_))
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Engine(image) => f.write_str(image),
            Source::Archive(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An image whose root filesystem is in the cache.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prepared {
    pub entry: Entry,
    pub cache_hit: bool,
    /// The image's process config (USER, WORKDIR, ENTRYPOINT, CMD, ENV).
    pub config: ImageConfig,
}

/// What an image is, before anything is unpacked: its ID, tags, size and config.
struct Identity {
    id: String,
    tags: Vec<String>,
    size: Option<u64>,
    config: ImageConfig,
    diff_ids: Vec<String>,
    /// The engine's own layer directories, bottom first, if it reported them.
    layer_dirs: Option<Vec<PathBuf>>,
}

async fn identify(engine: Option<&Engine>, source: &Source) -> Result<Identity, PrepareError> {
    match source {
        Source::Engine(image) => {
            let info = engine.ok_or(PrepareError::NoEngine)?.inspect(image).await?;
            Ok(Identity {
                id: info.id,
                tags: info.tags,
                size: info.size,
                config: info.config,
                diff_ids: info.diff_ids,
                layer_dirs: info.layer_dirs,
            })
        }
        Source::Archive(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || archive_identity(&path))
                .await
                .map_err(PrepareError::Join)?
        }
    }
}

/// Makes sure the cache holds `source`'s root filesystem with `ownership`; a hit costs one
/// small file read. Progress on stderr through `reporter`.
pub async fn prepare(
    engine: Option<&Engine>,
    source: &Source,
    ownership: Ownership,
    reporter: &Reporter,
) -> Result<Prepared, PrepareError> {
    check_ownership(ownership)?;
    let identity = identify(engine, source).await?;
    let key = CacheKey::new(&identity.id, ownership)
        .ok_or_else(|| PrepareError::BadImageId(identity.id.clone()))?;
    let cache = Cache::open_default()?;
    if let Some(entry) = cache.lookup(&key)? {
        return Ok(Prepared {
            entry,
            cache_hit: true,
            config: identity.config,
        });
    }
    let (source, engine, reporter) = (source.clone(), engine.cloned(), reporter.clone());
    let route = LayerRoute::choose(source.needs_engine(), ownership, &identity);
    let (tags, size) = (identity.tags, identity.size);
    let (image_id, diff_ids, config) = (
        identity.id.clone(),
        identity.diff_ids.clone(),
        identity.config.clone(),
    );
    let (entry, cache_hit) = tokio::task::spawn_blocking(move || {
        let cache_root = cache.root().to_path_buf();
        cache.get_or_fill(&key, |dest| {
            if let Some(route) = route {
                let layers = LayerImage {
                    image_id,
                    diff_ids,
                    config,
                };
                return route
                    .fill(&cache_root, &layers, dest, &reporter)
                    .map(|s| (tags, s));
            }
            let bar = reporter.bytes_bar("unpacking", size);
            let summary = unpack_blocking(engine.as_ref(), &source, dest, ownership, &bar);
            bar.finish_and_clear();
            summary.map(|s| (tags, s))
        })
    })
    .await
    .map_err(PrepareError::Join)??;
    Ok(Prepared {
        entry,
        cache_hit,
        config: identity.config,
    })
}

/// Unpacks `source` into `dest` (which must not exist) with `ownership`.
pub async fn unpack(
    engine: Option<&Engine>,
    source: &Source,
    dest: &Path,
    ownership: Ownership,
    reporter: &Reporter,
) -> Result<UnpackSummary, PrepareError> {
    check_ownership(ownership)?;
    let size = match source {
        Source::Engine(image) => {
            engine
                .ok_or(PrepareError::NoEngine)?
                .inspect(image)
                .await?
                .size
        }
        Source::Archive(path) => std::fs::metadata(path).ok().map(|m| m.len()),
    };
    let (source, engine, reporter) = (source.clone(), engine.cloned(), reporter.clone());
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let bar = reporter.bytes_bar("unpacking", size);
        let summary = unpack_blocking(engine.as_ref(), &source, &dest, ownership, &bar);
        bar.finish_and_clear();
        summary
    })
    .await
    .map_err(PrepareError::Join)?
}

/// What the layer route needs to know about the image.
#[cfg_attr(
    not(target_os = "linux"),
    expect(dead_code, reason = "the layer route is Linux's")
)]
struct LayerImage {
    image_id: String,
    diff_ids: Vec<String>,
    config: ImageConfig,
}

/// The fastest route the engine offers to an image's layers: its own layer directories, when
/// they are local and readable (Linux, as root, an overlay-style driver). Layers come from
/// there into the layer cache (those already there are not read again) and the root filesystem
/// is assembled from the cache by hard links. Anything else takes the portable route, the save
/// stream, whose digests are verified.
#[derive(Debug)]
#[cfg_attr(
    not(target_os = "linux"),
    expect(dead_code, reason = "the layer route is Linux's")
)]
struct LayerRoute {
    dirs: Vec<PathBuf>,
}

impl LayerRoute {
    fn choose(from_engine: bool, ownership: Ownership, identity: &Identity) -> Option<LayerRoute> {
        if !cfg!(target_os = "linux") || !from_engine || ownership != Ownership::Root {
            return None;
        }
        let dirs = identity.layer_dirs.clone()?;
        if std::env::var_os(crate::env_vars::KRBOTTLE_NO_ENGINE_LAYER_DIRS).is_some() {
            return None;
        }
        let readable = dirs.iter().all(|d| {
            rustix::fs::open(
                d,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .is_ok()
        });
        (readable && dirs.len() == identity.diff_ids.len() && !dirs.is_empty())
            .then_some(LayerRoute { dirs })
    }

    #[cfg(not(target_os = "linux"))]
    fn fill(
        &self,
        _cache_root: &Path,
        _image: &LayerImage,
        _dest: &Path,
        _reporter: &Reporter,
    ) -> Result<UnpackSummary, PrepareError> {
        unreachable!("the layer route is only chosen on Linux")
    }

    /// Assembles `dest` from the layer cache and the engine's layer directories: the longest
    /// stack prefix the cache holds is linked (a snapshot, or the root of an image whose whole
    /// stack it is), the layers above it are imported top-down from the engine (each final entry
    /// taken once, by a hard link to the engine's inode where the filesystems allow, nothing an
    /// upper layer replaced or deleted). The stack without its top layer (what a rebuild that
    /// changes the last layer starts from) is kept as a snapshot; a rebuild then links it and
    /// imports only its new top layer. The whole stack needs no snapshot of its own: it is this
    /// image's root, which an image built on this one links from.
    #[cfg(target_os = "linux")]
    fn fill(
        &self,
        cache_root: &Path,
        image: &LayerImage,
        dest: &Path,
        reporter: &Reporter,
    ) -> Result<UnpackSummary, PrepareError> {
        use crate::image::layers::{self, LayerStore, Source as Level};
        use std::os::fd::AsFd;

        let started = std::time::Instant::now();
        let ownership = Ownership::Root;
        let store = LayerStore::at(cache_root);
        // Held while other images' roots and snapshots are linked from: removing either takes it.
        let _gc = store.gc_lock()?;
        let chains = layers::chain_ids(&image.diff_ids)?;
        let n = chains.len();
        let spinner = reporter.spinner("layers from the engine's storage");
        let roots = image_roots(cache_root, ownership)?;
        let mut used = Vec::new();
        // The longest prefix the cache holds: `have` layers, linked from `base`.
        let mut have = 0;
        let mut base: Option<PathBuf> = None;
        for k in (1..=n).rev() {
            if let Some(snapshot) = store.lookup(&chains[k - 1], ownership)? {
                used.push(LayerStore::entry_name(&chains[k - 1], ownership));
                (have, base) = (k, Some(snapshot.tree));
                break;
            }
            if let Some(root) = roots.get(&chains[k - 1]) {
                (have, base) = (k, Some(root.clone()));
                break;
            }
        }
        let (mut bytes, mut engine_links) = (0, 0);
        // The stack without its top layer, as a snapshot.
        if n > 1 && have < n - 1 {
            spinner.set_message(format!("importing layers {}..{} of {n}", have + 1, n - 1));
            let mut levels: Vec<Level> = base.iter().cloned().map(Level::Linked).collect();
            levels.extend(self.dirs[have..n - 1].iter().cloned().map(Level::Engine));
            let (snapshot, _) = store.get_or_fill(
                &chains[n - 2],
                &image.diff_ids[n - 2],
                ownership,
                "snapshot",
                |tree| {
                    let a = layers::assemble(&levels, tree, ownership)?;
                    engine_links += a.engine_links;
                    Ok::<_, layers::LayersError>((a.entries, a.bytes))
                },
            )?;
            bytes += snapshot.record.bytes;
            used = vec![LayerStore::entry_name(&chains[n - 2], ownership)];
            have = n - 1;
            base = Some(snapshot.tree);
        }
        let mut levels: Vec<Level> = base.into_iter().map(Level::Linked).collect();
        levels.extend(self.dirs[have..].iter().cloned().map(Level::Engine));
        spinner.set_message("assembling the root filesystem");
        let create_err = |source| PrepareError::CreateRoot {
            path: dest.to_path_buf(),
            source,
        };
        std::fs::create_dir(dest).map_err(create_err)?;
        let root = crate::image::tree::open_dir_path(dest).map_err(create_err)?;
        let assembled = layers::assemble(&levels, root.as_fd(), ownership)?;
        bytes += assembled.bytes;
        engine_links += assembled.engine_links;
        spinner.finish_and_clear();
        Ok(UnpackSummary {
            layers: n,
            entries: assembled.entries,
            bytes,
            skipped_devices: 0,
            skipped_xattrs: assembled.skipped.xattrs,
            engine_links,
            seconds: started.elapsed().as_secs_f64(),
            image_id: Some(image.image_id.clone()),
            diff_ids: image.diff_ids.clone(),
            config: image.config.clone(),
            layer_entries: used,
        })
    }
}

/// The root filesystems of the cached images in `ownership` mode, by the chain ID of their
/// whole stack: an image built on one of them starts from its root.
#[cfg(target_os = "linux")]
fn image_roots(
    cache_root: &Path,
    ownership: Ownership,
) -> Result<std::collections::HashMap<String, PathBuf>, PrepareError> {
    let mut roots = std::collections::HashMap::new();
    for entry in Cache::at(cache_root).list()? {
        if entry.meta.ownership != ownership || entry.meta.summary.diff_ids.is_empty() {
            continue;
        }
        // A record whose layer digests do not make a chain is not a base for anything.
        if let Ok(chains) = crate::image::layers::chain_ids(&entry.meta.summary.diff_ids)
            && let Some(top) = chains.last()
        {
            roots.insert(top.clone(), entry.rootfs);
        }
    }
    Ok(roots)
}

fn check_ownership(ownership: Ownership) -> Result<(), PrepareError> {
    match ownership {
        Ownership::Root if !rustix::process::geteuid().is_root() => {
            Err(PrepareError::RootNeedsRoot)
        }
        Ownership::Userns if !cfg!(target_os = "linux") => Err(PrepareError::NoUserNamespaces),
        _ => Ok(()),
    }
}

/// The blocking unpack of `source` into `dest`: the save stream (from the engine or the file)
/// into the unpacker, in this process or in the `userns` child.
fn unpack_blocking(
    engine: Option<&Engine>,
    source: &Source,
    dest: &Path,
    ownership: Ownership,
    bar: &ProgressBar,
) -> Result<UnpackSummary, PrepareError> {
    match source {
        Source::Engine(image) => {
            let engine = engine.ok_or(PrepareError::NoEngine)?;
            unpack_stream(engine.save(image), dest, ownership, bar)
        }
        Source::Archive(path) => {
            let file = File::open(path).map_err(|source| PrepareError::OpenArchive {
                path: path.clone(),
                source,
            })?;
            unpack_stream(file, dest, ownership, bar)
        }
    }
}

/// Unpacks a save stream into `dest` with `ownership` (the `userns` mode through its child).
pub fn unpack_stream(
    reader: impl Read + Send,
    dest: &Path,
    ownership: Ownership,
    bar: &ProgressBar,
) -> Result<UnpackSummary, PrepareError> {
    match ownership {
        #[cfg(target_os = "linux")]
        Ownership::Userns => {
            let mapping = crate::sys::userns::IdMapping::for_current_user()?;
            Ok(crate::image::rootless::unpack_in_userns(
                reader, dest, &mapping, bar,
            )?)
        }
        #[cfg(not(target_os = "linux"))]
        Ownership::Userns => Err(PrepareError::NoUserNamespaces),
        Ownership::Root | Ownership::Xattr => {
            let opts = UnpackOptions {
                ownership,
                ..Default::default()
            };
            Ok(unpack_save(reader, dest, &opts, bar)?)
        }
    }
}

/// The ID and config of a saved image, read from its `manifest.json`/`index.json` and config
/// blob without unpacking anything (the layer blobs are skipped by seeking).
fn archive_identity(path: &Path) -> Result<Identity, PrepareError> {
    let read_err = |source| PrepareError::ReadArchive {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|source| PrepareError::OpenArchive {
        path: path.to_path_buf(),
        source,
    })?;
    let mut archive = tar::Archive::new(file);
    let mut json = std::collections::HashMap::new();
    for entry in archive.entries_with_seek().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        // JSON documents are small; layer blobs (large) are skipped. A blob of an OCI layout
        // may be JSON (manifests, config): keep the small ones.
        if entry.header().entry_type().is_file() && entry.size() <= JSON_LIMIT {
            let name = entry
                .path()
                .map_err(read_err)?
                .to_string_lossy()
                .into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(read_err)?;
            if data.first() == Some(&b'{') || data.first() == Some(&b'[') {
                json.insert(name, data);
            }
        }
    }
    let image = layout::resolve(&json).map_err(|source| PrepareError::ArchiveLayout {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Identity {
        id: image.image_id,
        tags: Vec::new(),
        size: std::fs::metadata(path).ok().map(|m| m.len()),
        config: image.config,
        diff_ids: Vec::new(),
        layer_dirs: None,
    })
}

/// Largest blob of a saved image read as a possible JSON document by [`archive_identity`].
const JSON_LIMIT: u64 = 4 << 20;

/// The label a Dockerfile build gets: the hash of its inputs (`build_inputs`).
pub const BUILD_INPUTS_LABEL: &str = "dev.krbottle.build-inputs";

/// Builds the image in `context` (a directory with a Dockerfile) and tags it; returns its ID.
/// A spinner shows the current step; `-v` prints every line of the build's output.
///
/// When the image the tag names was built by krbottle from the same inputs (the context's
/// files, the Dockerfile's name, the IDs of the images it builds `FROM`), the engine is not
/// asked again: its cached build would give that same image, at the cost of a build request
/// (a quarter of a second on this project's machines, on every start).
pub async fn build(
    engine: &Engine,
    context: &Path,
    dockerfile: Option<&str>,
    tag: &str,
    reporter: &Reporter,
) -> Result<String, PrepareError> {
    let dockerfile = dockerfile.unwrap_or("Dockerfile");
    let context_tar = crate::docker::tar_context(context)?;
    let inputs = build_inputs(engine, context, dockerfile, &context_tar).await;
    if let Some(hash) = &inputs
        && let Ok(image) = engine.inspect(tag).await
        && image.labels.get(BUILD_INPUTS_LABEL) == Some(hash)
    {
        if reporter.verbosity() >= Verbosity::Verbose(1) {
            eprintln!("{tag} is up to date (same context, Dockerfile and base images)");
        }
        return Ok(image.id);
    }
    let request = BuildRequest {
        what: context.display().to_string(),
        context_tar,
        dockerfile: dockerfile.to_string(),
        tag: tag.to_string(),
        labels: inputs
            .map(|hash| [(BUILD_INPUTS_LABEL.to_string(), hash)].into())
            .unwrap_or_default(),
        ..Default::default()
    };
    let spinner = reporter.spinner(&format!("building {tag}"));
    let verbose = reporter.verbosity() >= Verbosity::Verbose(1);
    let id = engine
        .build(request, |line| {
            spinner.set_message(line.trim().chars().take(70).collect::<String>());
            if verbose {
                spinner.suspend(|| eprintln!("  {line}"));
            }
        })
        .await;
    spinner.finish_and_clear();
    Ok(id?)
}

/// The hash of what decides a build's result, or `None` when it cannot be known without
/// building (the Dockerfile unreadable, a base image named through a build argument, or not in
/// the engine yet).
async fn build_inputs(
    engine: &Engine,
    context: &Path,
    dockerfile: &str,
    context_tar: &[u8],
) -> Option<String> {
    let text = std::fs::read_to_string(context.join(dockerfile)).ok()?;
    let mut ids = Vec::new();
    for image in crate::docker::base_images(&text)? {
        ids.push(engine.inspect(&image).await.ok()?.id);
    }
    let mut parts: Vec<&[u8]> = vec![
        b"krbottle build inputs v1",
        dockerfile.as_bytes(),
        context_tar,
    ];
    parts.extend(ids.iter().map(|id| id.as_bytes()));
    Some(crate::docker::inputs_hash(&parts))
}

/// The cached root filesystems, newest first.
pub fn list() -> Result<(PathBuf, Vec<Entry>), PrepareError> {
    let cache = Cache::open_default()?;
    let entries = cache.list()?;
    Ok((cache.root().to_path_buf(), entries))
}

/// What [`prune`] removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Pruned {
    /// Image IDs whose cached root filesystem was removed.
    pub removed: Vec<String>,
    /// Leftovers of interrupted fills.
    pub leftovers: usize,
    /// Cached layers no remaining root filesystem was assembled from.
    pub layers: usize,
}

/// Removes the cached layers no remaining cache entry names (under the layer cache's lock, so
/// no fill is using them meanwhile); returns how many.
fn remove_unused_layers(cache: &Cache) -> Result<usize, PrepareError> {
    let store = crate::image::layers::LayerStore::at(cache.root());
    let _lock = store.gc_lock()?;
    let used = cache
        .list()?
        .into_iter()
        .flat_map(|e| e.meta.summary.layer_entries)
        .collect();
    Ok(store.remove_unused(&used)?)
}

/// Removes cached root filesystems of images the engine no longer has (all of them with
/// `engine = None`), and leftovers of interrupted fills.
pub async fn prune(engine: Option<&Engine>) -> Result<Pruned, PrepareError> {
    let cache = Cache::open_default()?;
    let c = cache.clone();
    let leftovers = tokio::task::spawn_blocking(move || c.remove_leftovers())
        .await
        .map_err(PrepareError::Join)??;
    let mut pruned = Pruned {
        leftovers,
        ..Default::default()
    };
    for entry in cache.list()? {
        if let Some(engine) = engine
            && engine.has_image(&entry.meta.image_id).await?
        {
            continue;
        }
        pruned.removed.extend(remove_entry(&cache, &entry).await?);
    }
    pruned.layers = tokio::task::spawn_blocking(move || remove_unused_layers(&cache))
        .await
        .map_err(PrepareError::Join)??;
    Ok(pruned)
}

/// Removes one cached root filesystem (off the runtime's threads); its image ID, if it was one.
/// Under the layer cache's lock: a fill may be linking from this root (an image built on it).
async fn remove_entry(cache: &Cache, entry: &Entry) -> Result<Option<String>, PrepareError> {
    let Some(key) = cache.key_of(entry) else {
        return Ok(None);
    };
    let c = cache.clone();
    tokio::task::spawn_blocking(move || {
        let _gc = crate::image::layers::LayerStore::at(c.root()).gc_lock()?;
        c.remove(&key).map_err(PrepareError::from)
    })
    .await
    .map_err(PrepareError::Join)??;
    Ok(Some(entry.meta.image_id.clone()))
}

/// Removes the cached root filesystems that none of `used` (image ID, ownership) names; returns
/// the removed image IDs.
pub async fn prune_unused(used: &[(String, Ownership)]) -> Result<Vec<String>, PrepareError> {
    let cache = Cache::open_default()?;
    let mut removed = Vec::new();
    for entry in cache.list()? {
        let in_use = used
            .iter()
            .any(|(id, o)| *id == entry.meta.image_id && *o == entry.meta.ownership);
        if in_use {
            continue;
        }
        removed.extend(remove_entry(&cache, &entry).await?);
    }
    tokio::task::spawn_blocking(move || remove_unused_layers(&cache))
        .await
        .map_err(PrepareError::Join)??;
    Ok(removed)
}
