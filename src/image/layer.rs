//! One layer: its tar stream parsed into [`Op`]s, and those ops applied into a layer directory.
//!
//! Parsing ([`read_layer`]) and writing ([`LayerWriter`]) are separate so they can run on two
//! threads joined by a bounded channel. Parsing validates every path ([`RelPath`]) and turns
//! whiteouts into records; nothing that parsing emits can name a path outside the layer.
//!
//! Writing never follows a symlink: parents are opened component by component with
//! `O_NOFOLLOW`, files are created with `O_EXCL | O_NOFOLLOW`, and an entry replacing an existing
//! one (tar's last-wins rule) removes it first. Whiteouts, opaque markers and hard links whose
//! target is not in this layer yet are not written but recorded in the [`LayerRecord`], which the
//! merge applies against the lower layers.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;

use super::ownership::{self, EntryMeta, Ownership, S_IFBLK, S_IFCHR, S_IFIFO, Skipped};
use super::tree::{self, PathProblem, RelPath, WalkError};

/// Size of the data chunks handed from the parser to the writer.
pub const CHUNK_BYTES: usize = 256 * 1024;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// aufs bookkeeping names (`.wh..wh.plnk`, `.wh..wh.aufs`): meaningless outside aufs.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Failures while reading or writing one layer; the caller adds which layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("Cannot read the layer's tar stream; the archive is truncated or corrupt")]
    ReadTar(#[source] io::Error),
    #[error("Entry {path:?} has a bad path ({problem}); the image is malformed or hostile")]
    BadPath { path: String, problem: PathProblem },
    #[error("Hard link {path} has a bad target {target:?} ({problem})")]
    BadLinkTarget {
        path: RelPath,
        target: String,
        problem: PathProblem,
    },
    #[error("Whiteout {path:?} names no valid file")]
    BadWhiteout { path: String },
    #[error("Entry {path} ends after {read} of its {size} bytes; the archive is truncated")]
    Truncated { path: RelPath, read: u64, size: u64 },
    #[error("A tar metadata header of {size} bytes exceeds the limit of {limit}")]
    MetadataTooLarge { size: u64, limit: u64 },
    #[error("Entry {path} has unsupported tar type {kind}")]
    UnsupportedType { path: RelPath, kind: String },
    #[error("Entry {path} has a bad header field; the archive is corrupt")]
    BadHeader {
        path: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("More than {limit} entries in the image; raise the limit if this image is genuine")]
    TooManyEntries { limit: u64 },
    #[error("Entry {path} would be written through {through}, which is not a directory")]
    ThroughNonDirectory { path: RelPath, through: RelPath },
    #[error("Hard link {path} points at directory {target}")]
    HardLinkToDirectory { path: RelPath, target: RelPath },
    #[error("Cannot create {path}")]
    Create {
        path: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write the content of {path}")]
    WriteContent {
        path: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("Cannot set ownership, mode or xattrs of {path}")]
    SetMetadata {
        path: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("Cannot create the layer directory {index}")]
    CreateLayerDir {
        index: usize,
        #[source]
        source: io::Error,
    },
    /// The writer stopped (its own error is the one to report).
    #[error("The layer writer stopped")]
    WriterStopped,
}

/// What one archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// Target stored verbatim, never followed.
    Symlink(Vec<u8>),
    HardLink(RelPath),
    Fifo,
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
}

/// One unit of work from the parser to the writer.
#[derive(Debug)]
pub enum Op {
    /// `name` is the blob's name in the save stream, for error messages.
    BeginLayer {
        index: usize,
        name: String,
    },
    /// For `EntryKind::File`, followed by `Data`* and `EndFile`.
    Entry {
        path: RelPath,
        kind: EntryKind,
        meta: EntryMeta,
    },
    Data(Vec<u8>),
    EndFile,
    Whiteout(RelPath),
    Opaque(RelPath),
    EndLayer,
}

/// What a layer changes besides its tree, kept in memory for the merge.
#[derive(Debug, Default)]
pub struct LayerRecord {
    /// Paths this layer deletes from the layers below it.
    pub whiteouts: Vec<RelPath>,
    /// Directories whose lower contents this layer hides.
    pub opaques: Vec<RelPath>,
    /// `(link, target)` hard links whose target comes from a lower layer.
    pub deferred_links: Vec<(RelPath, RelPath)>,
    /// Directories with an explicit entry in this layer and their metadata (mode and mtime are
    /// applied after the merge).
    pub dirs: BTreeMap<RelPath, EntryMeta>,
    pub entries: u64,
    pub bytes: u64,
    pub skipped_devices: u64,
    /// Device nodes not created (no `CAP_MKNOD`): hard links to them are skipped too.
    pub skipped_nodes: Vec<RelPath>,
    pub skipped: Skipped,
}

/// Receives parsed ops; `false` means the writer is gone.
pub trait OpSink {
    fn send(&mut self, op: Op) -> bool;
}

impl<F: FnMut(Op) -> bool> OpSink for F {
    fn send(&mut self, op: Op) -> bool {
        self(op)
    }
}

/// Parses one layer tar (already decompressed) and emits its ops. `entries_left` is the
/// remaining entry budget of the whole image. Reads the archive up to its end marker only; the
/// caller drains the rest for hashing.
pub fn read_layer<R: Read>(
    archive: &mut tar::Archive<R>,
    sink: &mut dyn OpSink,
    entries_left: &mut u64,
    entries_limit: u64,
) -> Result<(), LayerError> {
    let mut send = |op: Op| {
        if sink.send(op) {
            Ok(())
        } else {
            Err(LayerError::WriterStopped)
        }
    };
    for entry in archive.entries().map_err(LayerError::ReadTar)? {
        let mut entry = entry.map_err(LayerError::ReadTar)?;
        let ty = entry.header().entry_type();
        if matches!(ty, tar::EntryType::XGlobalHeader) {
            continue;
        }
        if *entries_left == 0 {
            return Err(LayerError::TooManyEntries {
                limit: entries_limit,
            });
        }
        *entries_left -= 1;

        let raw_path = entry.path_bytes().into_owned();
        let bad_path = |problem| LayerError::BadPath {
            path: String::from_utf8_lossy(&raw_path).into_owned(),
            problem,
        };
        let path = RelPath::parse(&raw_path).map_err(bad_path)?;

        // Whiteouts are recorded, never written.
        if let Some((parent, name)) = path.split_last() {
            let name = name.as_bytes();
            if name == OPAQUE_MARKER {
                send(Op::Opaque(parent))?;
                continue;
            }
            if name.starts_with(AUFS_META_PREFIX) {
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let hidden = RelPath::parse_named(hidden)
                    .ok()
                    .filter(|p| p.depth() == 1)
                    .ok_or_else(|| LayerError::BadWhiteout {
                        path: String::from_utf8_lossy(&raw_path).into_owned(),
                    })?;
                send(Op::Whiteout(parent.join(&hidden.components()[0])))?;
                continue;
            }
        }

        let meta = read_meta(&mut entry, &path)?;
        let kind = match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                EntryKind::File
            }
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => {
                EntryKind::Symlink(entry.link_name_bytes().unwrap_or_default().into_owned())
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let target =
                    RelPath::parse_named(&target).map_err(|problem| LayerError::BadLinkTarget {
                        path: path.clone(),
                        target: String::from_utf8_lossy(&target).into_owned(),
                        problem,
                    })?;
                EntryKind::HardLink(target)
            }
            tar::EntryType::Fifo => EntryKind::Fifo,
            tar::EntryType::Char | tar::EntryType::Block => {
                let h = entry.header();
                let dev = |v: io::Result<Option<u32>>| {
                    v.map(|d| d.unwrap_or(0))
                        .map_err(|source| LayerError::BadHeader {
                            path: path.clone(),
                            source,
                        })
                };
                let (major, minor) = (dev(h.device_major())?, dev(h.device_minor())?);
                if ty == tar::EntryType::Char {
                    EntryKind::CharDevice(major, minor)
                } else {
                    EntryKind::BlockDevice(major, minor)
                }
            }
            other => {
                return Err(LayerError::UnsupportedType {
                    path,
                    kind: format!("{other:?}"),
                });
            }
        };
        if path.is_root() && kind != EntryKind::Dir {
            return Err(bad_path(PathProblem::Empty));
        }
        let is_file = kind == EntryKind::File;
        // tar's entry reader ends quietly at a short archive: count to notice.
        let size = (ty != tar::EntryType::GNUSparse).then(|| entry.size());
        let mut read = 0u64;
        let entry_path = path.clone();
        send(Op::Entry { path, kind, meta })?;
        if is_file {
            loop {
                // Sized to what is left: most files are small, and a chunk is allocated per send.
                let want = size.map_or(CHUNK_BYTES as u64, |s| s.saturating_sub(read));
                let want = want.clamp(1, CHUNK_BYTES as u64);
                let mut buf = Vec::with_capacity(want as usize);
                let n = (&mut entry)
                    .take(want)
                    .read_to_end(&mut buf)
                    .map_err(LayerError::ReadTar)?;
                if n == 0 {
                    break;
                }
                read += n as u64;
                send(Op::Data(buf))?;
            }
            if let Some(size) = size
                && read != size
            {
                return Err(LayerError::Truncated {
                    path: entry_path,
                    read,
                    size,
                });
            }
            send(Op::EndFile)?;
        }
    }
    Ok(())
}

/// Largest PAX or GNU long-name header accepted. The `tar` crate buffers these whole, so a
/// hostile (and highly compressible) header could otherwise exhaust memory.
pub const MAX_METADATA_HEADER_BYTES: u64 = 1 << 20;

/// Watches the tar stream on its way to the `tar` parser and stops it (with an I/O error, and
/// the size recorded in `tripped`) before the parser buffers an oversized metadata header.
///
/// It follows entry boundaries itself (header size fields, PAX `size` overrides); where it
/// cannot (GNU sparse extension headers, unparsable sizes) it stops watching and leaves the
/// stream to the parser, which then reports any corruption.
pub struct HeaderGuard<'t, R> {
    inner: R,
    tripped: &'t std::cell::Cell<Option<u64>>,
    state: GuardState,
    header: Vec<u8>,
    /// Bytes of the current PAX header kept to find a `size` record.
    pax: Vec<u8>,
    pax_size: Option<u64>,
}

enum GuardState {
    Header,
    Skip { remaining: u64 },
    Pax { remaining: u64, padding: u64 },
    Off,
}

fn padded(size: u64) -> u64 {
    size.div_ceil(512) * 512
}

/// A tar numeric field: octal text, or base-256 when the high bit is set.
fn tar_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|b| *b != 0)
        .filter(|b| *b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

/// The `size` record of PAX extension data, if any.
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut rest = data;
    let mut found = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        if let Some(v) = record.strip_prefix(b"size=") {
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            found = Some(std::str::from_utf8(v).ok()?.parse().ok()?);
        }
        rest = &rest[len..];
    }
    found
}

impl<'t, R> HeaderGuard<'t, R> {
    pub fn new(inner: R, tripped: &'t std::cell::Cell<Option<u64>>) -> Self {
        HeaderGuard {
            inner,
            tripped,
            state: GuardState::Header,
            header: Vec::with_capacity(512),
            pax: Vec::new(),
            pax_size: None,
        }
    }

    fn observe(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                GuardState::Off => return Ok(()),
                GuardState::Skip { remaining } => {
                    let n = (*remaining).min(data.len() as u64);
                    *remaining -= n;
                    data = &data[n as usize..];
                    if *remaining == 0 {
                        self.state = GuardState::Header;
                    }
                }
                GuardState::Pax { remaining, padding } => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    self.pax.extend_from_slice(&data[..n]);
                    *remaining -= n as u64;
                    data = &data[n..];
                    if *remaining == 0 {
                        self.pax_size = pax_size(&self.pax);
                        self.pax.clear();
                        self.state = if *padding == 0 {
                            GuardState::Header
                        } else {
                            GuardState::Skip {
                                remaining: *padding,
                            }
                        };
                    }
                }
                GuardState::Header => {
                    let n = (512 - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.header.len() == 512 {
                        self.state = self.next_state()?;
                        self.header.clear();
                    }
                }
            }
        }
        Ok(())
    }

    fn next_state(&mut self) -> io::Result<GuardState> {
        let h = &self.header;
        if h.iter().all(|b| *b == 0) {
            // End-of-archive marker (or padding before it): nothing more to watch.
            return Ok(GuardState::Off);
        }
        let Some(size) = tar_number(&h[124..136]) else {
            return Ok(GuardState::Off);
        };
        match h[156] {
            b'x' | b'g' | b'L' | b'K' => {
                if size > MAX_METADATA_HEADER_BYTES {
                    self.tripped.set(Some(size));
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "tar metadata header too large",
                    ));
                }
                if h[156] == b'x' {
                    return Ok(GuardState::Pax {
                        remaining: size,
                        padding: padded(size) - size,
                    });
                }
                Ok(skip(padded(size)))
            }
            // GNU sparse with extension blocks: layout this guard does not follow.
            b'S' if h[482] != 0 => Ok(GuardState::Off),
            _ => Ok(skip(padded(self.pax_size.take().unwrap_or(size)))),
        }
    }
}

fn skip(n: u64) -> GuardState {
    if n == 0 {
        GuardState::Header
    } else {
        GuardState::Skip { remaining: n }
    }
}

impl<R: Read> Read for HeaderGuard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

/// Reads until `buf` is full or EOF.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &RelPath,
) -> Result<EntryMeta, LayerError> {
    let bad = |source| LayerError::BadHeader {
        path: path.clone(),
        source,
    };
    let h = entry.header();
    let mut meta = EntryMeta {
        uid: h.uid().map_err(bad)? as u32,
        gid: h.gid().map_err(bad)? as u32,
        mode: h.mode().map_err(bad)? & 0o7777,
        mtime: h.mtime().map_err(bad)? as i64,
        xattrs: Vec::new(),
    };
    let invalid = |what: &str| {
        bad(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad PAX {what} record"),
        ))
    };
    if let Some(exts) = entry.pax_extensions().map_err(bad)? {
        for ext in exts {
            let ext = ext.map_err(bad)?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let number = || std::str::from_utf8(value).ok();
            match key {
                b"uid" => {
                    meta.uid = number()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| invalid("uid"))?
                }
                b"gid" => {
                    meta.gid = number()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| invalid("gid"))?
                }
                b"mtime" => {
                    // PAX mtimes may carry a fraction; whole seconds are what we keep.
                    let s = number().ok_or_else(|| invalid("mtime"))?;
                    let whole = s.split('.').next().unwrap_or(s);
                    meta.mtime = whole.parse().map_err(|_| invalid("mtime"))?;
                }
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        let name = std::str::from_utf8(name).map_err(|_| invalid("xattr"))?;
                        meta.xattrs.push((name.to_owned(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

/// Applies [`Op`]s into per-layer directories under one parent (`layers/<index>`).
pub struct LayerWriter {
    layers_dir: OwnedFd,
    ownership: Ownership,
    /// Whether `mknod` of devices is still worth trying (it is refused once, then skipped).
    mknod_allowed: std::cell::Cell<bool>,
    current: Option<Current>,
    records: BTreeMap<usize, LayerRecord>,
}

struct Current {
    index: usize,
    name: String,
    root: OwnedFd,
    record: LayerRecord,
    /// The last parent directory opened, reused by the next entries of the same directory.
    parent_cache: Option<(RelPath, OwnedFd)>,
    file: Option<(File, RelPath, EntryMeta)>,
}

/// A writer failure and the layer it happened in.
#[derive(Debug)]
pub struct WriterError {
    /// The layer's name in the save stream, when inside a layer.
    pub layer: Option<String>,
    pub error: LayerError,
}

impl LayerWriter {
    pub fn new(layers_dir: OwnedFd, ownership: Ownership) -> Self {
        LayerWriter {
            layers_dir,
            ownership,
            mknod_allowed: std::cell::Cell::new(true),
            current: None,
            records: BTreeMap::new(),
        }
    }

    /// The records of all finished layers, by arrival index.
    pub fn into_records(self) -> BTreeMap<usize, LayerRecord> {
        self.records
    }

    pub fn apply(&mut self, op: Op) -> Result<(), WriterError> {
        self.apply_inner(op).map_err(|error| WriterError {
            layer: self.current.as_ref().map(|c| c.name.clone()),
            error,
        })
    }

    fn apply_inner(&mut self, op: Op) -> Result<(), LayerError> {
        match op {
            Op::BeginLayer {
                index,
                name: layer_name,
            } => {
                let name = index.to_string();
                let create = |e: Errno| LayerError::CreateLayerDir {
                    index,
                    source: e.into(),
                };
                rustix::fs::mkdirat(&self.layers_dir, name.as_str(), Mode::from_raw_mode(0o700))
                    .map_err(create)?;
                let root = tree::open_dir_at(self.layers_dir.as_fd(), OsStr::new(&name))
                    .map_err(|source| LayerError::CreateLayerDir { index, source })?;
                self.current = Some(Current {
                    index,
                    name: layer_name,
                    root,
                    record: LayerRecord::default(),
                    parent_cache: None,
                    file: None,
                });
                Ok(())
            }
            Op::EndLayer => {
                if let Some(cur) = self.current.take() {
                    self.records.insert(cur.index, cur.record);
                }
                Ok(())
            }
            Op::Whiteout(p) => {
                let cur = self.cur();
                cur.record.entries += 1;
                cur.record.whiteouts.push(p);
                Ok(())
            }
            Op::Opaque(p) => {
                let cur = self.cur();
                cur.record.entries += 1;
                cur.record.opaques.push(p);
                Ok(())
            }
            Op::Data(buf) => {
                let cur = self.cur();
                if let Some((file, path, _)) = cur.file.as_mut() {
                    file.write_all(&buf)
                        .map_err(|source| LayerError::WriteContent {
                            path: path.clone(),
                            source,
                        })?;
                    cur.record.bytes += buf.len() as u64;
                }
                Ok(())
            }
            Op::EndFile => {
                let ownership = self.ownership;
                let cur = self.cur();
                if let Some((file, path, meta)) = cur.file.take() {
                    ownership::finish_file(file.as_fd(), &meta, ownership, &mut cur.record.skipped)
                        .map_err(|e| LayerError::SetMetadata {
                            path,
                            source: e.into(),
                        })?;
                }
                Ok(())
            }
            Op::Entry { path, kind, meta } => self.entry(path, kind, meta),
        }
    }

    fn cur(&mut self) -> &mut Current {
        self.current
            .as_mut()
            .expect("ops arrive between BeginLayer and EndLayer")
    }

    fn entry(&mut self, path: RelPath, kind: EntryKind, meta: EntryMeta) -> Result<(), LayerError> {
        let ownership = self.ownership;
        let mknod_allowed = &self.mknod_allowed;
        let cur = self
            .current
            .as_mut()
            .expect("ops arrive between BeginLayer and EndLayer");
        cur.record.entries += 1;
        let create_err = |path: &RelPath| {
            let path = path.clone();
            move |e: io::Error| LayerError::Create { path, source: e }
        };
        let meta_err = |path: &RelPath| {
            let path = path.clone();
            move |e: Errno| LayerError::SetMetadata {
                path,
                source: e.into(),
            }
        };

        let Some((parent_path, name)) = path.split_last() else {
            // The root directory's own entry: only its metadata matters.
            ownership::finish_dir_early(
                cur.root.as_fd(),
                &meta,
                ownership,
                &mut cur.record.skipped,
            )
            .map_err(meta_err(&path))?;
            cur.record.dirs.insert(path, meta);
            return Ok(());
        };
        let name = name.to_owned();
        let (parent_path, parent_fd) = cur.take_parent(parent_path, ownership, &path)?;
        let parent = parent_fd.as_fd();

        // An entry replaces whatever this layer wrote at its path before (tar's last-wins),
        // except that a directory over a directory keeps the contents.
        let existing = tree::file_type_at(parent, &name).map_err(create_err(&path))?;
        let keep_dir = kind == EntryKind::Dir && existing == Some(FileType::Directory);
        if existing.is_some() && !keep_dir {
            if existing == Some(FileType::Directory) {
                let prefix = path.clone();
                cur.record.dirs.retain(|p, _| !p.starts_with(&prefix));
            }
            tree::remove_at(parent, &name).map_err(create_err(&path))?;
        }
        cur.record.deferred_links.retain(|(link, _)| *link != path);

        match kind {
            EntryKind::File => {
                let fd = tree::create_file(parent, &name).map_err(create_err(&path))?;
                cur.file = Some((File::from(fd), path, meta));
            }
            EntryKind::Dir => {
                if !keep_dir {
                    rustix::fs::mkdirat(parent, name.as_os_str(), Mode::from_raw_mode(0o700))
                        .map_err(|e| create_err(&path)(e.into()))?;
                }
                let fd = tree::open_dir_at(parent, &name).map_err(create_err(&path))?;
                ownership::finish_dir_early(fd.as_fd(), &meta, ownership, &mut cur.record.skipped)
                    .map_err(meta_err(&path))?;
                cur.record.dirs.insert(path, meta);
            }
            EntryKind::Symlink(target) => {
                rustix::fs::symlinkat(target.as_slice(), parent, name.as_os_str())
                    .map_err(|e| create_err(&path)(e.into()))?;
                ownership::finish_special(
                    parent,
                    &name,
                    &meta,
                    true,
                    ownership,
                    &mut cur.record.skipped,
                )
                .map_err(meta_err(&path))?;
            }
            EntryKind::HardLink(target) => {
                match find_in_layer(cur.root.as_fd(), &target).map_err(create_err(&path))? {
                    Some((_, FileType::Directory)) => {
                        return Err(LayerError::HardLinkToDirectory { path, target });
                    }
                    Some((tparent, _)) => {
                        let (_, tname) = target.split_last().expect("named target");
                        rustix::fs::linkat(
                            &tparent,
                            tname,
                            parent,
                            name.as_os_str(),
                            AtFlags::empty(),
                        )
                        .map_err(|e| create_err(&path)(e.into()))?;
                    }
                    None => cur.record.deferred_links.push((path, target)),
                }
            }
            EntryKind::Fifo | EntryKind::CharDevice(..) | EntryKind::BlockDevice(..) => {
                let (file_type, type_bits, dev) = match kind {
                    EntryKind::Fifo => (FileType::Fifo, S_IFIFO, 0),
                    EntryKind::CharDevice(ma, mi) => (
                        FileType::CharacterDevice,
                        S_IFCHR,
                        crate::sys::fs::dev(ma, mi),
                    ),
                    EntryKind::BlockDevice(ma, mi) => {
                        (FileType::BlockDevice, S_IFBLK, crate::sys::fs::dev(ma, mi))
                    }
                    _ => unreachable!(),
                };
                if ownership == Ownership::Xattr {
                    let fd = tree::create_file(parent, &name).map_err(create_err(&path))?;
                    ownership::finish_node_as_file(fd.as_fd(), &meta, type_bits)
                        .map_err(meta_err(&path))?;
                    cur.parent_cache = Some((parent_path, parent_fd));
                    return Ok(());
                }
                let is_device = file_type != FileType::Fifo;
                if is_device && !mknod_allowed.get() {
                    cur.record.skipped_devices += 1;
                    cur.record.skipped_nodes.push(path);
                    return Ok(());
                }
                match crate::sys::fs::mknod(
                    parent,
                    name.as_os_str(),
                    file_type,
                    Mode::from_raw_mode(0o600),
                    dev,
                ) {
                    Ok(()) => {}
                    Err(Errno::PERM | Errno::ACCESS) if is_device => {
                        mknod_allowed.set(false);
                        cur.record.skipped_devices += 1;
                        cur.record.skipped_nodes.push(path);
                        cur.parent_cache = Some((parent_path, parent_fd));
                        return Ok(());
                    }
                    Err(e) => return Err(create_err(&path)(e.into())),
                }
                ownership::finish_special(
                    parent,
                    &name,
                    &meta,
                    false,
                    ownership,
                    &mut cur.record.skipped,
                )
                .map_err(meta_err(&path))?;
            }
        }
        cur.parent_cache = Some((parent_path, parent_fd));
        Ok(())
    }
}

impl Current {
    /// Opens (creating implicit components) the parent directory of an entry; the caller puts
    /// it back in the cache when done. Removing entries never removes the cached directory
    /// itself: only an entry naming it (whose parent differs) could.
    fn take_parent(
        &mut self,
        parent: RelPath,
        ownership: Ownership,
        entry: &RelPath,
    ) -> Result<(RelPath, OwnedFd), LayerError> {
        if let Some((p, fd)) = self.parent_cache.take()
            && p == parent
        {
            return Ok((p, fd));
        }
        {
            let mut created = Vec::new();
            let fd = tree::walk_create(self.root.as_fd(), &parent, 0o755, &mut created)
                .map_err(|e| walk_error(e, entry))?;
            for dir in created {
                mark_implicit_dir(self.root.as_fd(), &dir, ownership, &mut self.record.skipped)
                    .map_err(|e| LayerError::SetMetadata {
                        path: dir.clone(),
                        source: e,
                    })?;
            }
            Ok((parent, fd))
        }
    }
}

/// Implicit directories (a layer has `a/b` without `a/`) are root's, 0755, like Docker's.
pub fn mark_implicit_dir(
    root: BorrowedFd<'_>,
    dir: &RelPath,
    ownership: Ownership,
    skipped: &mut Skipped,
) -> io::Result<()> {
    let fd = tree::open_dir(root, dir)?;
    let meta = EntryMeta {
        mode: 0o755,
        ..EntryMeta::default()
    };
    ownership::finish_dir_early(fd.as_fd(), &meta, ownership, skipped)?;
    Ok(())
}

pub fn walk_error(e: WalkError, entry: &RelPath) -> LayerError {
    match e {
        WalkError::NotADirectory(through) => LayerError::ThroughNonDirectory {
            path: entry.clone(),
            through,
        },
        WalkError::Io(source) => LayerError::Create {
            path: entry.clone(),
            source,
        },
    }
}

/// The parent fd and type of `path` if it exists in the tree at `root` (reached without
/// following symlinks); `None` if absent or not reachable through real directories.
pub fn find_in_layer(
    root: BorrowedFd<'_>,
    path: &RelPath,
) -> io::Result<Option<(OwnedFd, FileType)>> {
    let (parent, name) = path.split_last().expect("named path");
    let parent = match tree::open_dir(root, &parent) {
        Ok(fd) => fd,
        Err(e)
            if [Errno::NOENT, Errno::NOTDIR, Errno::LOOP]
                .iter()
                .any(|x| e.raw_os_error() == Some(x.raw_os_error())) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    Ok(tree::file_type_at(parent.as_fd(), name)?.map(|t| (parent, t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_numbers() {
        let table: [(&[u8], Option<u64>); 5] = [
            (b"00000001750\0", Some(1000)),
            (b"      1750 \0", Some(1000)),
            (b"\0\0\0\0", Some(0)),
            (&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], Some(1 << 32)),
            (b"9999", None),
        ];
        for (field, want) in table {
            assert_eq!(tar_number(field), want, "{field:?}");
        }
    }

    #[test]
    fn pax_size_records() {
        assert_eq!(pax_size(b"12 size=123\n19 path=some/where\n"), Some(123));
        assert_eq!(pax_size(b"19 path=some/where\n"), None);
        assert_eq!(pax_size(b"99 size=1\n"), None);
    }
}
