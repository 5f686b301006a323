//! The files a bottle's root gets before boot: real files in its writable layer, owned by the
//! agent's user as the guest sees it, each written atomically (temp file, then rename).
//!
//! The image is hostile input, and so is the bottle's root it becomes. Every target is reached
//! from a descriptor of the root, one component at a time, never following a link:
//! - a missing parent directory is created (owned like the file); a parent that is a symlink,
//!   or not a directory, stops the start with an error naming the path;
//! - the file itself is never opened for writing: a new file is made beside it and renamed over
//!   it, so a symlink or hard link the image planted there is replaced, not followed (the file
//!   it pointed at is not touched);
//! - what a file already holds (a trust bundle to extend, a JSON document to merge into) is read
//!   only from a regular file, or through a symlink resolved inside the root (an absolute target
//!   restarts at the root, `..` stops there), and never from a FIFO or a device.
//!
//! So no byte is written outside the root whatever the image planted.
//!
//! On Linux this runs in the VMM child, on the bottle's overlay mounted in the child's mount
//! namespace, where the id mapping is: the kernel copies parents up with their metadata, and
//! `fchown` to the guest's ids works in the `root` and `userns` modes alike. Where ownership
//! cannot be given away (macOS), the ids go in the override xattr libkrun reads.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, XattrFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::image::ownership::{OVERRIDE_STAT_XATTR, override_stat_value};

/// The most bytes read from an existing file to merge into (a trust bundle, a JSON document).
const MAX_EXISTING_BYTES: u64 = 16 << 20;
/// The most symlinks followed while resolving a file to read, as the kernel allows.
const MAX_SYMLINKS: usize = 40;
/// Temp files beside their target start with this.
const TMP_PREFIX: &str = ".krbottle-tmp-";

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "Cannot provision {path}: {through} in the bottle's root is a symlink or not a directory; the image must have a real directory there"
    )]
    NotADirectory { path: String, through: String },
    #[error("Cannot provision {path}: it is a directory in the bottle's root")]
    IsADirectory { path: String },
    #[error("Cannot provision {path}: {why}")]
    Existing { path: String, why: String },
    #[error("Cannot provision {path}: the path must be absolute, without `..`")]
    BadPath { path: String },
    #[error("Cannot write {path} into the bottle's root")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("Cannot copy {} into the bottle's root at {path}", host.display())]
    CopyTree {
        host: PathBuf,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// What a file becomes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Content {
    /// Exactly this text.
    Text { text: String },
    /// What the file holds, with krbottle's block (between its begin and end lines, which start
    /// with `comment`) replaced by `text`, or added at the end: a trust bundle, a gitconfig.
    /// Writing it again (resume) changes nothing else.
    Block { text: String, comment: String },
    /// The JSON object the file holds with `patch` merged in, object by object (other keys of
    /// the file are kept); `{}` for an absent file.
    JsonMerge { patch: serde_json::Value },
    /// A copy of the host directory `host` (regular files, directories and symlinks, none
    /// followed), owned like the file; only made when nothing is at the path yet.
    Tree { host: PathBuf },
}

/// One file to put in the bottle's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionFile {
    /// Absolute guest path.
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o644`); directories this creates get `0o755`, or `0o700` under a
    /// parent in [`ProvisionFile::private_dirs`].
    pub mode: u32,
    pub content: Content,
    /// Only written when something is already at the path (e.g. another distribution's trust
    /// bundle); skipped otherwise.
    #[serde(default)]
    pub only_if_present: bool,
    /// Guest directories created with mode `0o700` (e.g. `~/.claude`).
    #[serde(default)]
    pub private_dirs: Vec<String>,
    /// What it is for, for `--dry-run`.
    pub what: String,
}

/// How ids are recorded on what provisioning creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ids {
    /// `fchown` (as root, or as a user namespace's root).
    Chown,
    /// The `user.containers.override_stat` xattr (macOS).
    #[cfg_attr(not(target_os = "macos"), allow(dead_code))] // written by the macOS VMM child
    Xattr,
}

/// What [`apply`] did for one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub path: String,
    /// False when skipped (`only_if_present`, or a tree already there).
    pub written: bool,
}

/// Writes every file into the root directory `root`.
pub fn apply(
    root: BorrowedFd<'_>,
    files: &[ProvisionFile],
    ids: Ids,
) -> Result<Vec<Applied>, ProvisionError> {
    files.iter().map(|f| apply_one(root, f, ids)).collect()
}

fn apply_one(
    root: BorrowedFd<'_>,
    file: &ProvisionFile,
    ids: Ids,
) -> Result<Applied, ProvisionError> {
    let comps = components(&file.path)?;
    let Some((name, parents)) = comps.split_last() else {
        return Err(ProvisionError::BadPath {
            path: file.path.clone(),
        });
    };
    let write_err = |source: io::Error| ProvisionError::Write {
        path: file.path.clone(),
        source,
    };
    let skipped = Applied {
        path: file.path.clone(),
        written: false,
    };
    let Some(parent) = open_parents(root, file, parents, ids)? else {
        return Ok(skipped);
    };
    let existing = rustix::fs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW);
    let existing_type = match existing {
        Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
        Err(Errno::NOENT) => None,
        Err(e) => return Err(write_err(e.into())),
    };
    if existing_type == Some(FileType::Directory) {
        if let Content::Tree { .. } = file.content {
            return Ok(skipped);
        }
        return Err(ProvisionError::IsADirectory {
            path: file.path.clone(),
        });
    }
    if existing_type.is_none() && file.only_if_present {
        return Ok(skipped);
    }
    let text = match &file.content {
        Content::Tree { host } => {
            if existing_type.is_some() {
                return Ok(skipped);
            }
            copy_tree_into(parent.as_fd(), name, host, file, ids).map_err(|source| {
                ProvisionError::CopyTree {
                    host: host.clone(),
                    path: file.path.clone(),
                    source,
                }
            })?;
            return Ok(Applied {
                path: file.path.clone(),
                written: true,
            });
        }
        Content::Text { text } => text.clone().into_bytes(),
        Content::Block { text, comment } => {
            let old = read_existing(root, &comps, existing_type, file)?;
            replace_block(&String::from_utf8_lossy(&old), text, comment).into_bytes()
        }
        Content::JsonMerge { patch } => {
            let old = read_existing(root, &comps, existing_type, file)?;
            let mut doc: serde_json::Value = if old.iter().all(u8::is_ascii_whitespace) {
                serde_json::json!({})
            } else {
                serde_json::from_slice(&old).map_err(|e| ProvisionError::Existing {
                    path: file.path.clone(),
                    why: format!("it holds no JSON document ({e}); fix or remove it in the image"),
                })?
            };
            if !doc.is_object() {
                return Err(ProvisionError::Existing {
                    path: file.path.clone(),
                    why: "it holds JSON that is not an object; fix or remove it in the image"
                        .into(),
                });
            }
            merge_json(&mut doc, patch);
            let mut out = serde_json::to_vec_pretty(&doc).map_err(|e| write_err(e.into()))?;
            out.push(b'\n');
            out
        }
    };
    write_replacing(parent.as_fd(), name, &text, file, ids).map_err(write_err)?;
    Ok(Applied {
        path: file.path.clone(),
        written: true,
    })
}

/// The contents of the regular file at the guest path `path` in the root directory `root` (the
/// host path of an unpacked image), resolved inside the root like [`Content::Block`]'s merge
/// reads it; `None` when nothing is there.
pub fn read_guest_file(root: &std::path::Path, path: &str) -> io::Result<Option<Vec<u8>>> {
    let comps = components(path).map_err(io::Error::other)?;
    let root = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match open_in_root(root.as_fd(), &comps)? {
        Some(fd) => read_regular(fd).map(Some),
        None => Ok(None),
    }
}

/// Opens the directory at the guest path `path`, creating what is missing (owned by root, mode
/// 0755) and never through a link: a mount point for a share.
pub fn make_dir(root: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, ProvisionError> {
    let comps = components(path)?;
    let spec = ProvisionFile {
        path: path.to_string(),
        uid: 0,
        gid: 0,
        mode: 0o755,
        content: Content::Text {
            text: String::new(),
        },
        only_if_present: false,
        private_dirs: Vec::new(),
        what: "a mount point".into(),
    };
    open_parents(root, &spec, &comps, Ids::Chown)?.ok_or(ProvisionError::BadPath {
        path: path.to_string(),
    })
}

/// The components of an absolute guest path; `..` and NUL are refused, `.` and `//` dropped.
fn components(path: &str) -> Result<Vec<OsString>, ProvisionError> {
    let bad = || ProvisionError::BadPath {
        path: path.to_string(),
    };
    if !path.starts_with('/') || path.contains('\0') {
        return Err(bad());
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad()),
            c => out.push(OsString::from(c)),
        }
    }
    Ok(out)
}

/// Opens (creating what is missing) the parent directories, never through a link. `None` when
/// a parent is missing and the file is only written when present.
fn open_parents(
    root: BorrowedFd<'_>,
    file: &ProvisionFile,
    parents: &[OsString],
    ids: Ids,
) -> Result<Option<OwnedFd>, ProvisionError> {
    let write_err = |source: io::Error| ProvisionError::Write {
        path: file.path.clone(),
        source,
    };
    let mut cur = rustix::io::dup(root).map_err(|e| write_err(e.into()))?;
    let mut here = String::new();
    for comp in parents {
        here.push('/');
        here.push_str(&comp.to_string_lossy());
        match open_dir_nofollow(cur.as_fd(), comp) {
            Ok(fd) => cur = fd,
            Err(Errno::NOENT) if file.only_if_present => return Ok(None),
            Err(Errno::NOENT) => {
                let private = file.private_dirs.iter().any(|d| d == &here);
                let mode = if private { 0o700 } else { 0o755 };
                match rustix::fs::mkdirat(&cur, comp.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(write_err(e.into())),
                }
                let fd = open_dir_nofollow(cur.as_fd(), comp).map_err(|_| {
                    ProvisionError::NotADirectory {
                        path: file.path.clone(),
                        through: here.clone(),
                    }
                })?;
                set_ids(fd.as_fd(), file.uid, file.gid, mode, FileKind::Dir, ids)
                    .map_err(write_err)?;
                cur = fd;
            }
            Err(Errno::NOTDIR | Errno::LOOP) => {
                return Err(ProvisionError::NotADirectory {
                    path: file.path.clone(),
                    through: here,
                });
            }
            Err(e) => return Err(write_err(e.into())),
        }
    }
    Ok(Some(cur))
}

fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// What is at the path now, for a merge: empty when absent; the bytes of a regular file; for a
/// symlink, the bytes of what it names resolved inside the root.
fn read_existing(
    root: BorrowedFd<'_>,
    comps: &[OsString],
    existing: Option<FileType>,
    file: &ProvisionFile,
) -> Result<Vec<u8>, ProvisionError> {
    let existing_err = |why: String| ProvisionError::Existing {
        path: file.path.clone(),
        why,
    };
    match existing {
        None => return Ok(Vec::new()),
        Some(FileType::RegularFile | FileType::Symlink) => {}
        Some(_) => {
            return Err(existing_err(
                "it is not a regular file (a FIFO, device or socket); remove it in the image"
                    .into(),
            ));
        }
    }
    match open_in_root(root, comps) {
        Ok(Some(fd)) => read_regular(fd).map_err(|e| existing_err(e.to_string())),
        // A dangling link: nothing to keep, the new file replaces the link.
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(existing_err(e.to_string())),
    }
}

/// Opens the file at `comps` for reading, following symlinks inside the root only (an absolute
/// target restarts at the root, `..` never climbs above it). `None` when it does not exist.
fn open_in_root(root: BorrowedFd<'_>, comps: &[OsString]) -> io::Result<Option<OwnedFd>> {
    let mut todo: Vec<OsString> = comps.iter().rev().cloned().collect();
    let mut stack: Vec<OwnedFd> = vec![rustix::io::dup(root)?];
    let mut hops = 0;
    while let Some(comp) = todo.pop() {
        let cur = stack.last().expect("the root stays on the stack");
        if comp == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        if comp == "." || comp.is_empty() {
            continue;
        }
        let st = match rustix::fs::statat(cur, comp.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(io::Error::other("too many levels of symbolic links"));
                }
                let target = rustix::fs::readlinkat(cur, comp.as_os_str(), Vec::new())?;
                let target = target.as_bytes();
                if target.first() == Some(&b'/') {
                    stack.truncate(1);
                }
                for c in target.split(|&b| b == b'/').rev() {
                    todo.push(OsString::from(OsStr::from_bytes(c)));
                }
            }
            FileType::Directory if !todo.is_empty() => {
                let fd = open_dir_nofollow(cur.as_fd(), &comp)?;
                stack.push(fd);
            }
            _ if !todo.is_empty() => return Ok(None),
            _ => {
                let fd = rustix::fs::openat(
                    cur,
                    comp.as_os_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                return Ok(Some(fd));
            }
        }
    }
    Ok(None)
}

/// Reads an open file that must be a regular file of bounded size.
fn read_regular(fd: OwnedFd) -> io::Result<Vec<u8>> {
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(
            "it resolves to something that is not a regular file",
        ));
    }
    if st.st_size as u64 > MAX_EXISTING_BYTES {
        return Err(io::Error::other(format!(
            "it is larger than {} MiB",
            MAX_EXISTING_BYTES >> 20
        )));
    }
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_EXISTING_BYTES)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Creates a temp file beside `name`, writes `data` with the file's owner and mode, and renames
/// it over `name` (which may be a link: the link is replaced, never followed).
fn write_replacing(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    data: &[u8],
    file: &ProvisionFile,
    ids: Ids,
) -> io::Result<()> {
    let (tmp, fd) = create_temp(dir)?;
    let result = (|| {
        let mut f = std::fs::File::from(fd);
        f.write_all(data)?;
        set_ids(
            f.as_fd(),
            file.uid,
            file.gid,
            file.mode,
            FileKind::File,
            ids,
        )?;
        f.sync_all()?;
        rustix::fs::renameat(dir, &tmp, dir, name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
    }
    result
}

/// A fresh, exclusive temp file in `dir`.
fn create_temp(dir: BorrowedFd<'_>) -> io::Result<(OsString, OwnedFd)> {
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = OsString::from(format!(
            "{TMP_PREFIX}{}-{nanos:x}-{attempt}",
            std::process::id()
        ));
        match rustix::fs::openat(
            dir,
            &name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => return Ok((name, fd)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other("cannot create a unique temp file"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    File,
    Dir,
}

/// Owner and mode of something provisioning created (open as `fd`).
fn set_ids(
    fd: BorrowedFd<'_>,
    uid: u32,
    gid: u32,
    mode: u32,
    kind: FileKind,
    ids: Ids,
) -> io::Result<()> {
    match ids {
        Ids::Chown => {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )?;
            rustix::fs::fchmod(fd, crate::sys::fs::mode(mode))?;
        }
        Ids::Xattr => {
            let type_bits = match kind {
                FileKind::File => 0,
                FileKind::Dir => crate::image::ownership::S_IFDIR,
            };
            let value = override_stat_value(uid, gid, type_bits, mode);
            rustix::fs::fsetxattr(
                fd,
                OVERRIDE_STAT_XATTR,
                value.as_bytes(),
                XattrFlags::empty(),
            )?;
            // The owner (the user) keeps access; the guest sees the xattr's mode.
            let real = if kind == FileKind::Dir { 0o700 } else { 0o600 } | (mode & 0o777);
            rustix::fs::fchmod(fd, crate::sys::fs::mode(real))?;
        }
    }
    Ok(())
}

/// Copies the host directory `host` to `name` in `dir` (which must not exist), owned like
/// `file`: regular files keep their mode bits, symlinks are copied as links, other kinds are
/// skipped. The host side is the user's own directory; the destination side is reached only
/// through descriptors created here.
fn copy_tree_into(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    host: &std::path::Path,
    file: &ProvisionFile,
    ids: Ids,
) -> io::Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
    let top = open_dir_nofollow(dir, name)?;
    set_ids(top.as_fd(), file.uid, file.gid, 0o755, FileKind::Dir, ids)?;
    let mut todo = vec![(host.to_path_buf(), top)];
    while let Some((src, dst)) = todo.pop() {
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let meta = std::fs::symlink_metadata(entry.path())?;
            let n = entry.file_name();
            let ft = meta.file_type();
            if ft.is_dir() {
                rustix::fs::mkdirat(&dst, &n, Mode::from_raw_mode(0o700))?;
                let sub = open_dir_nofollow(dst.as_fd(), &n)?;
                set_ids(sub.as_fd(), file.uid, file.gid, 0o755, FileKind::Dir, ids)?;
                todo.push((entry.path(), sub));
            } else if ft.is_file() {
                use std::os::unix::fs::PermissionsExt;
                let fd = rustix::fs::openat(
                    &dst,
                    &n,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o600),
                )?;
                let mut out = std::fs::File::from(fd);
                std::io::copy(&mut std::fs::File::open(entry.path())?, &mut out)?;
                let mode = meta.permissions().mode() & 0o7777;
                set_ids(out.as_fd(), file.uid, file.gid, mode, FileKind::File, ids)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                rustix::fs::symlinkat(&target, &dst, &n)?;
                if ids == Ids::Chown {
                    rustix::fs::chownat(
                        &dst,
                        &n,
                        Some(rustix::fs::Uid::from_raw(file.uid)),
                        Some(rustix::fs::Gid::from_raw(file.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// `old` with krbottle's block replaced by `text` (or appended).
pub fn replace_block(old: &str, text: &str, comment: &str) -> String {
    let begin = format!("{comment} krbottle: begin (written before each boot; edits are lost)");
    let end = format!("{comment} krbottle: end");
    let mut out = String::new();
    let mut inside = false;
    for line in old.lines() {
        if line == begin {
            inside = true;
        } else if line == end && inside {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&begin);
    out.push('\n');
    out.push_str(text.trim_end_matches('\n'));
    out.push('\n');
    out.push_str(&end);
    out.push('\n');
    out
}

/// Merges `patch` into `doc`: objects key by key, anything else replaced.
pub fn merge_json(doc: &mut serde_json::Value, patch: &serde_json::Value) {
    match (doc, patch) {
        (serde_json::Value::Object(d), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                match d.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_json(existing, v)
                    }
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (d, p) => *d = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    fn root_fd(p: &Path) -> OwnedFd {
        rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    fn file(path: &str, content: Content) -> ProvisionFile {
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        ProvisionFile {
            path: path.into(),
            uid,
            gid,
            mode: 0o600,
            content,
            only_if_present: false,
            private_dirs: vec!["/home/a/.claude".into()],
            what: "test".into(),
        }
    }

    fn text(t: &str) -> Content {
        Content::Text { text: t.into() }
    }

    #[test]
    fn writes_files_creating_parents_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let f = file("/home/a/.claude/skills/x/SKILL.md", text("hi"));
        apply(root_fd(root).as_fd(), &[f], Ids::Chown).unwrap();
        let p = root.join("home/a/.claude/skills/x/SKILL.md");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "hi");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let claude = std::fs::metadata(root.join("home/a/.claude")).unwrap();
        assert_eq!(claude.mode() & 0o777, 0o700);
        let skills = std::fs::metadata(root.join("home/a/.claude/skills")).unwrap();
        assert_eq!(skills.mode() & 0o777, 0o755);
        let leftovers: Vec<_> = std::fs::read_dir(root.join("home/a/.claude/skills/x"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["SKILL.md"]);
    }

    /// Every kind of planted link at a target or its parents: nothing outside the root changes,
    /// and each start either writes in place or names the path.
    #[test]
    fn links_the_image_planted_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), "host file").unwrap();
        std::fs::set_permissions(
            outside.join("victim"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/shadow"), "image secret").unwrap();
        let victim = outside.join("victim");
        let v = victim.to_str().unwrap();
        type Case<'a> = (&'static str, Box<dyn Fn(&Path) + 'a>, bool);
        let cases: Vec<Case> = vec![
            // final component: absolute link out of the root → replaced in place
            (
                "/a",
                Box::new(move |r| std::os::unix::fs::symlink(v, r.join("a")).unwrap()),
                true,
            ),
            // relative link climbing out
            (
                "/b",
                Box::new(move |r| {
                    std::os::unix::fs::symlink("../outside/victim", r.join("b")).unwrap()
                }),
                true,
            ),
            // link to another file of the image → that file stays
            (
                "/c",
                Box::new(move |r| std::os::unix::fs::symlink("/etc/shadow", r.join("c")).unwrap()),
                true,
            ),
            // hard link to another file of the image → that file stays
            (
                "/d",
                Box::new(move |r| std::fs::hard_link(r.join("etc/shadow"), r.join("d")).unwrap()),
                true,
            ),
            // parent is a link out of the root → refused, naming the path
            (
                "/e/file",
                Box::new(move |r| {
                    std::os::unix::fs::symlink(v.trim_end_matches("/victim"), r.join("e")).unwrap()
                }),
                false,
            ),
            // parent is a link to `..`
            (
                "/f/file",
                Box::new(move |r| std::os::unix::fs::symlink("..", r.join("f")).unwrap()),
                false,
            ),
            // parent is a file
            (
                "/g/file",
                Box::new(move |r| std::fs::write(r.join("g"), "x").unwrap()),
                false,
            ),
        ];
        for (path, plant, writes) in cases {
            plant(&root);
            for content in [
                text("new"),
                Content::Block {
                    text: "new".into(),
                    comment: "#".into(),
                },
                Content::JsonMerge {
                    patch: serde_json::json!({"k": 1}),
                },
            ] {
                let res = apply(
                    root_fd(&root).as_fd(),
                    &[file(path, content.clone())],
                    Ids::Chown,
                );
                assert_eq!(
                    std::fs::read_to_string(&victim).unwrap(),
                    "host file",
                    "{path} {content:?}"
                );
                assert_eq!(
                    std::fs::read_to_string(root.join("etc/shadow")).unwrap(),
                    "image secret",
                    "{path} {content:?}"
                );
                match (writes, res) {
                    (true, Ok(_)) => {
                        let written = root.join(path.trim_start_matches('/'));
                        let meta = std::fs::symlink_metadata(&written).unwrap();
                        assert!(meta.file_type().is_file(), "{path}: replaced by a file");
                        assert_eq!(meta.nlink(), 1, "{path}");
                    }
                    // JSON merge into what a link names (the shadow file, not JSON) is refused.
                    (true, Err(ProvisionError::Existing { path: p, .. })) => {
                        assert_eq!(p, path);
                        assert!(matches!(content, Content::JsonMerge { .. }), "{path}");
                    }
                    (false, Err(ProvisionError::NotADirectory { path: p, .. })) => {
                        assert_eq!(p, path)
                    }
                    (w, r) => panic!("{path} {content:?}: writes={w}, got {r:?}"),
                }
            }
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_fifo_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let f = file(
            "/fifo",
            Content::Block {
                text: "x".into(),
                comment: "#".into(),
            },
        );
        let err = apply(root_fd(root).as_fd(), &[f], Ids::Chown).unwrap_err();
        assert!(matches!(err, ProvisionError::Existing { .. }), "{err}");
    }

    #[test]
    fn blocks_and_json_merge_keep_what_was_there_and_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("bundle"), "CERT A\n").unwrap();
        std::fs::write(
            root.join("c.json"),
            r#"{"theme":"dark","projects":{"/old":{"x":1}}}"#,
        )
        .unwrap();
        let files = [
            file(
                "/bundle",
                Content::Block {
                    text: "CERT K".into(),
                    comment: "#".into(),
                },
            ),
            file(
                "/c.json",
                Content::JsonMerge {
                    patch: serde_json::json!({"hasCompletedOnboarding": true,
                        "projects": {"/w": {"hasTrustDialogAccepted": true}}}),
                },
            ),
        ];
        for _ in 0..2 {
            apply(root_fd(root).as_fd(), &files, Ids::Chown).unwrap();
        }
        let bundle = std::fs::read_to_string(root.join("bundle")).unwrap();
        assert!(bundle.starts_with("CERT A\n"), "{bundle}");
        assert_eq!(bundle.matches("CERT K").count(), 1, "{bundle}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("c.json")).unwrap()).unwrap();
        assert_eq!(json["theme"], "dark");
        assert_eq!(json["projects"]["/old"]["x"], 1);
        assert_eq!(json["projects"]["/w"]["hasTrustDialogAccepted"], true);
        assert_eq!(json["hasCompletedOnboarding"], true);
    }

    #[test]
    fn only_if_present_skips_absent_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = file("/etc/pki/tls/certs/ca-bundle.crt", text("x"));
        f.only_if_present = true;
        let done = apply(root_fd(dir.path()).as_fd(), &[f], Ids::Chown).unwrap();
        assert!(!done[0].written);
        assert!(!dir.path().join("etc").exists());
    }

    #[test]
    fn trees_are_copied_once_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("project");
        std::fs::create_dir_all(host.join("src")).unwrap();
        std::fs::write(host.join("src/main.rs"), "fn main() {}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", host.join("link")).unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let f = file("/work/project", Content::Tree { host: host.clone() });
        apply(root_fd(&root).as_fd(), std::slice::from_ref(&f), Ids::Chown).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("work/project/src/main.rs")).unwrap(),
            "fn main() {}"
        );
        assert_eq!(
            std::fs::read_link(root.join("work/project/link")).unwrap(),
            Path::new("/etc/passwd")
        );
        // Again (resume): the guest's changes stay.
        std::fs::write(root.join("work/project/src/main.rs"), "changed").unwrap();
        let done = apply(root_fd(&root).as_fd(), &[f], Ids::Chown).unwrap();
        assert!(!done[0].written);
        assert_eq!(
            std::fs::read_to_string(root.join("work/project/src/main.rs")).unwrap(),
            "changed"
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["relative", "/a/../b", "/", "/a\0b"] {
            let err = apply(
                root_fd(dir.path()).as_fd(),
                &[file(p, text("x"))],
                Ids::Chown,
            )
            .unwrap_err();
            assert!(matches!(err, ProvisionError::BadPath { .. }), "{p}: {err}");
        }
    }
}
