//! From a `docker save` stream to a root filesystem directory, in one pass over the stream.
//!
//! `docker save` writes layers in lexical order of their names, so the stack order is only known
//! once `manifest.json`/`index.json` has been read, at the end. Each layer therefore streams into
//! its own directory (`<tmp>/layers/<n>`) as it arrives, while its blob digest and diff_id are
//! computed; small JSON documents are kept in memory. At the end the layout gives the order, every
//! layer is verified against its digests, and the layers are merged by renames (see `merge`).
//!
//! Two threads: this one reads the stream (hashing, decompressing, parsing tar headers) and a
//! writer creates the files, joined by a bounded channel of owned ops and data chunks.
//!
//! Invariant: everything is written under a temp sibling of `dest` (`.<name>.tmp-XXXX`), renamed
//! to `dest` only when complete and verified; on any error the temp dir is removed and `dest` is
//! never created.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{Mode, RenameFlags};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::layer::{self, HeaderGuard, LayerError, LayerWriter, Op, WriterError, read_full};
use super::layout::{self, LayoutError};
use super::merge::{self, MergeError, Merger};
pub use super::ownership::Ownership;
use super::tree::{self, RelPath};

/// Failures of [`unpack_save`]. Layer-level failures name the layer by its name in the stream.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{path} already exists; remove it or choose another destination")]
    DestExists { path: PathBuf },
    #[error("{path} is not a usable destination path")]
    BadDest { path: PathBuf },
    #[error("Cannot create a temp directory next to {path}")]
    CreateTemp {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot read the save stream; it is truncated or not a tar archive")]
    ReadSave(#[source] io::Error),
    #[error("Entry {name:?} of the save stream has unexpected type {kind}")]
    UnexpectedSaveEntry { name: String, kind: String },
    #[error("Entry {name:?} of the save stream has a bad path")]
    BadSaveEntryPath { name: String },
    #[error("{name} is neither a layer (tar, gzip, zstd) nor a JSON document")]
    UnknownBlob { name: String },
    #[error("JSON documents of the save stream exceed {limit} bytes at {name}")]
    JsonTooLarge { name: String, limit: u64 },
    #[error("More than {limit} entries in the save stream")]
    TooManySaveEntries { limit: u64 },
    #[error("Cannot unpack layer {layer}")]
    Layer {
        layer: String,
        #[source]
        source: LayerError,
    },
    #[error("Cannot read the image layout")]
    Layout(#[from] LayoutError),
    #[error("Layer {layer} is referenced by the manifest but missing from the save stream")]
    MissingLayer { layer: String },
    #[error("Layer {layer} has {what} {actual}, expected {expected}; the image is corrupt")]
    DigestMismatch {
        layer: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("Cannot stack layer {layer}")]
    Merge {
        layer: String,
        #[source]
        source: MergeError,
    },
    #[error("Cannot finish the root filesystem")]
    Finish(#[source] MergeError),
    #[error("Cannot move the finished root filesystem to {path}")]
    Publish {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Knobs of [`unpack_save`]; the limits guard against hostile images.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub ownership: Ownership,
    /// Most entries (over all layers and the save stream itself).
    pub max_entries: u64,
    /// Most bytes of JSON documents kept in memory.
    pub max_json_bytes: u64,
    /// Ops buffered between the reading and the writing thread.
    pub channel_depth: usize,
    /// `syncfs` the tree before it is renamed into place, so a crash cannot leave a published
    /// tree with missing data (costs the time to write everything to disk).
    pub sync: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            ownership: Ownership::Root,
            max_entries: 10_000_000,
            max_json_bytes: 64 << 20,
            channel_depth: 64,
            sync: false,
        }
    }
}

/// What was unpacked.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UnpackSummary {
    pub layers: usize,
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Device nodes not created because `mknod` is not permitted here.
    pub skipped_devices: u64,
    /// Xattrs not set because not permitted here (e.g. `trusted.*` unprivileged, `user.*` on
    /// symlinks in xattr mode).
    pub skipped_xattrs: u64,
    /// Entries hard-linked to the engine's own layer files instead of written (the layer route
    /// where the cache and the engine's storage share a mount; see `image::import`).
    #[serde(default)]
    pub engine_links: u64,
    pub seconds: f64,
    pub image_id: Option<String>,
    pub diff_ids: Vec<String>,
    /// The image's process config (USER, WORKDIR, ENTRYPOINT, CMD, ENV) from the save stream.
    #[serde(default)]
    pub config: crate::docker::ImageConfig,
    /// The layer cache entries the root filesystem was assembled from (`<chain>.<ownership>`),
    /// bottom first; empty when it was unpacked from a stream in one piece.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_entries: Vec<String>,
}

/// Reads a whole `docker save` stream and creates `dest` (which must not exist) atomically:
/// everything is written under a temp sibling of `dest` and renamed into place at the end; on any
/// error nothing is left behind. `progress` counts bytes read from `reader`.
pub fn unpack_save<R: Read + Send>(
    reader: R,
    dest: &Path,
    opts: &UnpackOptions,
    progress: &indicatif::ProgressBar,
) -> Result<UnpackSummary, UnpackError> {
    let started = Instant::now();
    match std::fs::symlink_metadata(dest) {
        Ok(_) => {
            return Err(UnpackError::DestExists {
                path: dest.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(UnpackError::CreateTemp {
                path: dest.to_owned(),
                source,
            });
        }
    }
    let name = dest.file_name().ok_or_else(|| UnpackError::BadDest {
        path: dest.to_owned(),
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp_err = |source| UnpackError::CreateTemp {
        path: dest.to_owned(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.tmp-", name.to_string_lossy()))
        .tempdir_in(parent)
        .map_err(temp_err)?
        .keep();
    let guard = TempGuard(tmp.clone());

    let layers_path = tmp.join("layers");
    let rootfs_path = tmp.join("rootfs");
    std::fs::create_dir(&layers_path).map_err(temp_err)?;
    std::fs::create_dir(&rootfs_path).map_err(temp_err)?;
    let open = |p: &Path| super::tree::open_dir_path(p).map_err(temp_err);
    let layers_fd = open(&layers_path)?;
    let rootfs_fd = open(&rootfs_path)?;

    // Stream: this thread reads, the writer thread creates files.
    let (tx, rx) = crossbeam_channel::bounded::<Op>(opts.channel_depth.max(1));
    let writer_fd = rustix::io::dup(&layers_fd).map_err(|e| temp_err(e.into()))?;
    let ownership = opts.ownership;
    let (read_result, write_result) = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let mut w = LayerWriter::new(writer_fd, ownership);
            for op in rx {
                w.apply(op)?;
            }
            Ok::<_, WriterError>(w.into_records())
        });
        let read_result = read_save(reader, &tx, opts, progress);
        drop(tx);
        let write_result = match writer.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (read_result, write_result)
    });
    // The writer's error is the cause when both failed (the reader then saw it stop).
    let mut records = write_result.map_err(|e| UnpackError::Layer {
        layer: e.layer.unwrap_or_default(),
        source: e.error,
    })?;
    let contents = read_result?;

    // Order, verify, merge.
    let image = layout::resolve(&contents.json)?;
    let mut stack = Vec::with_capacity(image.layers.len());
    let mut used = HashMap::new();
    for l in &image.layers {
        let blob = contents
            .find(&l.name)
            .ok_or_else(|| UnpackError::MissingLayer {
                layer: l.name.clone(),
            })?;
        if let Some(expected) = &l.blob_digest
            && *expected != blob.blob_digest
        {
            return Err(UnpackError::DigestMismatch {
                layer: l.name.clone(),
                what: "blob digest",
                expected: expected.clone(),
                actual: blob.blob_digest.clone(),
            });
        }
        if l.diff_id != blob.diff_id {
            return Err(UnpackError::DigestMismatch {
                layer: l.name.clone(),
                what: "diff_id",
                expected: l.diff_id.clone(),
                actual: blob.diff_id.clone(),
            });
        }
        let uses = used.entry(blob.index).or_insert(0u32);
        *uses += 1;
        records.entry(blob.index).or_default();
        // The merge consumes a layer's tree: a repeated layer gets its own copy.
        let dir = if *uses == 1 {
            blob.index.to_string()
        } else {
            format!("{}-{}", blob.index, uses)
        };
        // Past verification, a layer is named by its name in the stream and its diff_id.
        stack.push((format!("{} ({})", l.name, l.diff_id), blob.index, dir));
    }
    let mut clone_skipped = super::ownership::Skipped::default();
    for (name, index, dir) in &stack {
        if *dir == index.to_string() {
            continue;
        }
        let clone_err = |source| UnpackError::Merge {
            layer: name.clone(),
            source,
        };
        let io_err = |source| {
            clone_err(MergeError::Clone {
                path: RelPath::root(),
                source,
            })
        };
        let src =
            tree::open_dir_at(layers_fd.as_fd(), OsStr::new(&index.to_string())).map_err(io_err)?;
        rustix::fs::mkdirat(&layers_fd, dir.as_str(), Mode::from_raw_mode(0o700))
            .map_err(|e| io_err(e.into()))?;
        let dst = tree::open_dir_at(layers_fd.as_fd(), OsStr::new(dir)).map_err(io_err)?;
        merge::clone_layer(
            src.as_fd(),
            dst.as_fd(),
            &RelPath::root(),
            &records[index],
            opts.ownership,
            &mut clone_skipped,
        )
        .map_err(clone_err)?;
    }

    let mut merger = Merger::new(rootfs_fd, opts.ownership);
    let mut summary = UnpackSummary {
        layers: stack.len(),
        entries: 0,
        bytes: 0,
        skipped_devices: 0,
        skipped_xattrs: 0,
        engine_links: 0,
        seconds: 0.0,
        image_id: Some(image.image_id.clone()),
        diff_ids: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
        config: image.config.clone(),
        layer_entries: Vec::new(),
    };
    for (name, index, dir) in &stack {
        let record = &records[index];
        let merge_err = |source| UnpackError::Merge {
            layer: name.clone(),
            source,
        };
        let layer_fd = tree::open_dir_at(layers_fd.as_fd(), OsStr::new(dir)).map_err(|source| {
            merge_err(MergeError::Move {
                path: RelPath::root(),
                source,
            })
        })?;
        merger.apply(layer_fd.as_fd(), record).map_err(merge_err)?;
        summary.entries += record.entries;
        summary.bytes += record.bytes;
        summary.skipped_devices += record.skipped_devices;
        summary.skipped_xattrs += record.skipped.xattrs;
    }
    summary.skipped_xattrs += merger.skipped.xattrs + clone_skipped.xattrs;
    summary.skipped_devices += merger.skipped_device_links;
    merger.finish().map_err(UnpackError::Finish)?;

    // Publish: the rename is the commit point.
    let publish_err = |source| UnpackError::Publish {
        path: dest.to_owned(),
        source,
    };
    drop(layers_fd);
    tree::remove_tree(&layers_path).map_err(publish_err)?;
    if opts.sync {
        let rootfs = open(&rootfs_path)?;
        crate::sys::fs::sync_fs(&rootfs).map_err(publish_err)?;
    }
    let parent_fd = open(parent)?;
    let tmp_fd = open(&tmp)?;
    rustix::fs::renameat_with(&tmp_fd, "rootfs", &parent_fd, name, RenameFlags::NOREPLACE)
        .map_err(|e| publish_err(e.into()))?;
    drop(guard);
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Removes the temp dir when dropped (on success it only holds empty leftovers).
struct TempGuard(PathBuf);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Err(e) = tree::remove_tree(&self.0) {
            tracing::warn!("cannot remove temp dir {}: {e}", self.0.display());
        }
    }
}

/// A layer blob seen in the stream.
#[derive(Debug)]
struct BlobInfo {
    index: usize,
    blob_digest: String,
    diff_id: String,
}

/// What the stream held besides the layer trees.
#[derive(Debug, Default)]
struct SaveContents {
    json: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, BlobInfo>,
    /// Symlinks in the stream (Docker's legacy layout links repeated layers): name → target.
    aliases: HashMap<String, String>,
}

impl SaveContents {
    fn find(&self, name: &str) -> Option<&BlobInfo> {
        let mut name = name;
        // Bounded: a cycle of aliases must not loop forever.
        for _ in 0..8 {
            if let Some(b) = self.blobs.get(name) {
                return Some(b);
            }
            name = self.aliases.get(name)?;
        }
        None
    }
}

/// How a blob's first bytes identify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobKind {
    Gzip,
    Zstd,
    Tar,
    Json,
    Unknown,
}

fn sniff(head: &[u8]) -> BlobKind {
    if head.starts_with(&[0x1f, 0x8b]) {
        BlobKind::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        BlobKind::Zstd
    } else if head.len() == 512 && (&head[257..262] == b"ustar" || head.iter().all(|b| *b == 0)) {
        BlobKind::Tar
    } else if matches!(
        head.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    ) {
        BlobKind::Json
    } else {
        BlobKind::Unknown
    }
}

/// Counts bytes read into the progress bar.
struct Counting<'a, R> {
    inner: R,
    progress: &'a indicatif::ProgressBar,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Hashes everything read through it.
struct Hashing<'h, R> {
    inner: R,
    hasher: &'h mut Sha256,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The normalised name of a save-stream entry (`a/b`, no leading `./`).
fn save_name(raw: &[u8]) -> Result<String, UnpackError> {
    let bad = || UnpackError::BadSaveEntryPath {
        name: String::from_utf8_lossy(raw).into_owned(),
    };
    let p = RelPath::parse_named(raw).map_err(|_| bad())?;
    let parts: Option<Vec<&str>> = p.components().iter().map(|c| c.to_str()).collect();
    Ok(parts.ok_or_else(bad)?.join("/"))
}

/// Resolves a symlink of the stream relative to its own directory; `None` if it leaves the
/// stream's root.
fn resolve_alias(name: &str, target: &[u8]) -> Option<String> {
    let target = std::str::from_utf8(target).ok()?;
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn read_save<R: Read>(
    reader: R,
    tx: &crossbeam_channel::Sender<Op>,
    opts: &UnpackOptions,
    progress: &indicatif::ProgressBar,
) -> Result<SaveContents, UnpackError> {
    let mut contents = SaveContents::default();
    let mut json_bytes = 0u64;
    let mut entries_left = opts.max_entries;
    let mut next_index = 0usize;
    // Buffered: the tar parser reads headers 512 bytes at a time.
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: reader,
            progress,
        },
    ));
    for entry in archive.entries().map_err(UnpackError::ReadSave)? {
        let mut entry = entry.map_err(UnpackError::ReadSave)?;
        if entries_left == 0 {
            return Err(UnpackError::TooManySaveEntries {
                limit: opts.max_entries,
            });
        }
        entries_left -= 1;
        let ty = entry.header().entry_type();
        if matches!(
            ty,
            tar::EntryType::Directory | tar::EntryType::XGlobalHeader
        ) {
            continue;
        }
        let name = save_name(&entry.path_bytes())?;
        match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default();
                if let Some(t) = resolve_alias(&name, &target) {
                    contents.aliases.insert(name, t);
                }
                continue;
            }
            other => {
                return Err(UnpackError::UnexpectedSaveEntry {
                    name,
                    kind: format!("{other:?}"),
                });
            }
        }
        // The legacy layout's `<v1id>/VERSION` holds "1.0": nothing to read.
        if name == "VERSION" || name.ends_with("/VERSION") {
            continue;
        }
        let mut head = [0u8; 512];
        let n = read_full(&mut entry, &mut head).map_err(UnpackError::ReadSave)?;
        let head = &head[..n];
        let kind = sniff(head);
        match kind {
            BlobKind::Unknown => return Err(UnpackError::UnknownBlob { name }),
            BlobKind::Json => {
                let size = entry.header().size().map_err(UnpackError::ReadSave)?;
                json_bytes = json_bytes.saturating_add(size.max(n as u64));
                if json_bytes > opts.max_json_bytes {
                    return Err(UnpackError::JsonTooLarge {
                        name,
                        limit: opts.max_json_bytes,
                    });
                }
                let mut bytes = head.to_vec();
                entry
                    .read_to_end(&mut bytes)
                    .map_err(UnpackError::ReadSave)?;
                contents.json.insert(name, bytes);
            }
            BlobKind::Gzip | BlobKind::Zstd | BlobKind::Tar => {
                let index = next_index;
                next_index += 1;
                let layer_err = |source| UnpackError::Layer {
                    layer: name.clone(),
                    source,
                };
                let stopped = || layer_err(LayerError::WriterStopped);
                tx.send(Op::BeginLayer {
                    index,
                    name: name.clone(),
                })
                .map_err(|_| stopped())?;
                let (blob_digest, diff_id) = stream_layer(
                    io::Cursor::new(head).chain(&mut entry),
                    kind,
                    tx,
                    &mut entries_left,
                    opts.max_entries,
                )
                .map_err(layer_err)?;
                tx.send(Op::EndLayer).map_err(|_| stopped())?;
                contents.blobs.insert(
                    name,
                    BlobInfo {
                        index,
                        blob_digest,
                        diff_id,
                    },
                );
            }
        }
    }
    Ok(contents)
}

/// Streams one layer blob to the writer; returns its blob digest and diff_id.
fn stream_layer<R: Read>(
    blob: R,
    kind: BlobKind,
    tx: &crossbeam_channel::Sender<Op>,
    entries_left: &mut u64,
    entries_limit: u64,
) -> Result<(String, String), LayerError> {
    let mut blob_hasher = Sha256::new();
    let mut diff_hasher = Sha256::new();
    let mut raw = Hashing {
        inner: blob,
        hasher: &mut blob_hasher,
    };
    {
        let decompressed: Box<dyn Read + '_> = match kind {
            BlobKind::Gzip => Box::new(flate2::read::GzDecoder::new(&mut raw)),
            BlobKind::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut raw).map_err(LayerError::ReadTar)?)
            }
            _ => Box::new(&mut raw),
        };
        let mut diff = Hashing {
            inner: decompressed,
            hasher: &mut diff_hasher,
        };
        {
            let tripped = std::cell::Cell::new(None);
            let mut archive = tar::Archive::new(HeaderGuard::new(&mut diff, &tripped));
            let mut sink = |op| tx.send(op).is_ok();
            let read = layer::read_layer(&mut archive, &mut sink, entries_left, entries_limit);
            if let Some(size) = tripped.get() {
                return Err(LayerError::MetadataTooLarge {
                    size,
                    limit: layer::MAX_METADATA_HEADER_BYTES,
                });
            }
            read?;
        }
        // The digests cover the whole streams, past the tar end marker.
        io::copy(&mut diff, &mut io::sink()).map_err(LayerError::ReadTar)?;
    }
    io::copy(&mut raw, &mut io::sink()).map_err(LayerError::ReadTar)?;
    drop(raw);
    Ok((
        format!("sha256:{}", hex::encode(blob_hasher.finalize())),
        format!("sha256:{}", hex::encode(diff_hasher.finalize())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<UnpackError>();
    }

    #[test]
    fn sniffing() {
        let mut tar_head = [0u8; 512];
        tar_head[257..262].copy_from_slice(b"ustar");
        let table: [(&[u8], BlobKind); 7] = [
            (&[0x1f, 0x8b, 8, 0], BlobKind::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0], BlobKind::Zstd),
            (&tar_head, BlobKind::Tar),
            (&[0u8; 512], BlobKind::Tar),
            (b"  {\"a\":1}", BlobKind::Json),
            (b"1.0", BlobKind::Unknown),
            (b"", BlobKind::Unknown),
        ];
        for (head, want) in table {
            assert_eq!(sniff(head), want);
        }
    }

    #[test]
    fn aliases_resolve_within_the_stream() {
        assert_eq!(
            resolve_alias("b/layer.tar", b"../a/layer.tar").as_deref(),
            Some("a/layer.tar")
        );
        assert_eq!(resolve_alias("b/layer.tar", b"../../x"), None);
    }
}
