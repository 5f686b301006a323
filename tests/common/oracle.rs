//! The oracle: Docker's own flattening of an image (a created container's export, read through
//! the `tar` crate here) compared entry by entry with a directory krbottle unpacked.
//!
//! Compared per path: type, uid, gid, permission bits (incl. setuid/setgid/sticky), size, content
//! hash, link target, xattrs. Paths that Docker adds to every container (its init layer) are left
//! out. Hard links in the export are resolved to the content of their target.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Paths Docker's init layer puts into every container; they are not part of the image.
const INIT_LAYER: &[&str] = &[
    ".dockerenv",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/mtab",
    "dev",
    "dev/console",
    "dev/pts",
    "dev/shm",
    "proc",
    "sys",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
    pub size: u64,
    pub hash: String,
    pub link: String,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

fn hash(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn relevant_xattr(name: &str) -> bool {
    // What an image can carry and a rootfs must keep; selinux labels are the host's business.
    name.starts_with("user.") && name != "user.containers.override_stat"
        || name.starts_with("security.capability")
        || name.starts_with("trusted.")
}

/// Reads an export tar into path → node.
pub fn from_export(reader: impl Read) -> BTreeMap<String, Node> {
    let mut archive = tar::Archive::new(reader);
    let mut out: BTreeMap<String, Node> = BTreeMap::new();
    let mut links = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let path = path.trim_start_matches("./").to_string();
        if path.is_empty() || path == "." || INIT_LAYER.contains(&path.as_str()) {
            continue;
        }
        let header = entry.header().clone();
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = entry.pax_extensions().unwrap() {
            for ext in exts {
                let ext = ext.unwrap();
                if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.")
                    && relevant_xattr(name)
                {
                    xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                }
            }
        }
        let et = header.entry_type();
        let (kind, mut data) = match et {
            tar::EntryType::Directory => ('d', Vec::new()),
            tar::EntryType::Symlink => ('l', Vec::new()),
            tar::EntryType::Link => ('h', Vec::new()),
            tar::EntryType::Fifo => ('p', Vec::new()),
            tar::EntryType::Char => ('c', Vec::new()),
            tar::EntryType::Block => ('b', Vec::new()),
            _ => ('f', Vec::new()),
        };
        if kind == 'f' {
            entry.read_to_end(&mut data).unwrap();
        }
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().to_string())
            .unwrap_or_default();
        let node = Node {
            kind,
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            mode: header.mode().unwrap() & 0o7777,
            size: data.len() as u64,
            hash: if kind == 'f' {
                hash(&data)
            } else {
                String::new()
            },
            link: if kind == 'l' {
                link.clone()
            } else {
                String::new()
            },
            xattrs,
        };
        if kind == 'h' {
            links.push((
                path,
                link.trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_string(),
            ));
        } else {
            out.insert(path, node);
        }
    }
    for (path, target) in links {
        let node = out
            .get(&target)
            .unwrap_or_else(|| panic!("export: hard link {path} to missing {target}"))
            .clone();
        out.insert(path, node);
    }
    out
}

/// Reads an unpacked tree into path → node. `map_uid`/`map_gid` turn on-disk ids into image ids
/// (identity for `root` mode; the inverse of the user namespace map for `userns`).
pub fn from_dir(
    root: &Path,
    map_uid: &dyn Fn(u64) -> u64,
    map_gid: &dyn Fn(u64) -> u64,
) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let item = item.unwrap();
            let path = item.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_fifo() {
                'p'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else {
                'f'
            };
            let data = if kind == 'f' {
                std::fs::read(&path).unwrap()
            } else {
                Vec::new()
            };
            let mut xattrs = BTreeMap::new();
            if let Ok(names) = xattr_names(&path) {
                for name in names.into_iter().filter(|n| relevant_xattr(n)) {
                    let mut buf = vec![0u8; 4096];
                    let n = rustix::fs::lgetxattr(&path, name.as_str(), &mut buf).unwrap();
                    xattrs.insert(name, buf[..n].to_vec());
                }
            }
            if ft.is_dir() {
                stack.push(path.clone());
            }
            // Docker's init-layer paths are left out, but directories among them are still
            // walked: `dev/` holds the image's own device nodes.
            if INIT_LAYER.contains(&rel.as_str()) {
                continue;
            }
            out.insert(
                rel,
                Node {
                    kind,
                    uid: map_uid(meta.uid() as u64),
                    gid: map_gid(meta.gid() as u64),
                    mode: meta.mode() & 0o7777,
                    size: data.len() as u64,
                    hash: if kind == 'f' {
                        hash(&data)
                    } else {
                        String::new()
                    },
                    link: if kind == 'l' {
                        std::fs::read_link(&path)
                            .unwrap()
                            .to_string_lossy()
                            .to_string()
                    } else {
                        String::new()
                    },
                    xattrs,
                },
            );
        }
    }
    out
}

fn xattr_names(path: &Path) -> std::io::Result<Vec<String>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut buf)?;
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| std::ffi::OsStr::from_bytes(n).to_string_lossy().to_string())
        .collect())
}

/// Every difference, one line each; empty when the trees agree.
pub fn diff(expected: &BTreeMap<String, Node>, actual: &BTreeMap<String, Node>) -> Vec<String> {
    let mut out = Vec::new();
    for (path, e) in expected {
        match actual.get(path) {
            None => out.push(format!("missing {path}: {e:?}")),
            Some(a) if a != e => {
                // Symlink permission bits mean nothing on Linux; compare the rest.
                if e.kind == 'l'
                    && a.kind == 'l'
                    && (Node {
                        mode: e.mode,
                        ..a.clone()
                    }) == *e
                {
                    continue;
                }
                out.push(format!(
                    "differs {path}:\n  docker:   {e:?}\n  krbottle: {a:?}"
                ))
            }
            Some(_) => {}
        }
    }
    for path in actual.keys() {
        if !expected.contains_key(path) {
            out.push(format!("extra {path}"));
        }
    }
    out
}

/// Panics listing the first differences, unless the trees agree.
pub fn assert_same(expected: &BTreeMap<String, Node>, actual: &BTreeMap<String, Node>, what: &str) {
    let diffs = diff(expected, actual);
    assert!(
        diffs.is_empty(),
        "{} differences between docker export and {what}:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
