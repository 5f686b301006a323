//! Test helper: synthetic layers and `docker save` streams in both layouts.
//!
//! Layers are written header by header so tests can put anything in them, hostile names
//! included (paths go in PAX records, never through `tar`'s own path checks). Saves list their
//! layer blobs in reverse stack order, so the unpacker must not rely on arrival order.

use std::io::Write;

use super::layout::sha256_digest;

/// The mtime of test entries unless a test sets another.
pub const MTIME: u64 = 1_600_000_000;

/// Builds one layer tar.
pub struct Layer {
    out: Vec<u8>,
}

/// Ownership and mode of one test entry.
#[derive(Clone)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Attrs {
    pub fn mode(mode: u32) -> Self {
        Attrs {
            mode,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            xattrs: Vec::new(),
        }
    }
}

fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    // "LEN key=value\n" where LEN counts itself.
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len += 1;
    }
    let mut rec = format!("{len} ").into_bytes();
    rec.extend_from_slice(key);
    rec.push(b'=');
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Layer { out: Vec::new() }
    }

    /// Appends one entry: path and link name are raw bytes carried in a PAX header.
    pub fn raw(
        &mut self,
        ty: tar::EntryType,
        path: &[u8],
        link: Option<&[u8]>,
        attrs: &Attrs,
        data: &[u8],
        dev: (u32, u32),
    ) -> &mut Self {
        let mut pax = pax_record(b"path", path);
        if let Some(link) = link {
            pax.extend(pax_record(b"linkpath", link));
        }
        for (k, v) in &attrs.xattrs {
            pax.extend(pax_record(format!("SCHILY.xattr.{k}").as_bytes(), v));
        }
        let mut xh = tar::Header::new_ustar();
        xh.set_entry_type(tar::EntryType::XHeader);
        xh.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
        xh.set_size(pax.len() as u64);
        xh.set_mode(0o644);
        xh.set_cksum();
        self.block(&xh, &pax);

        let mut h = tar::Header::new_ustar();
        h.set_entry_type(ty);
        // A short placeholder name; the PAX record above carries the real one.
        h.as_old_mut().name[..1].copy_from_slice(b"x");
        h.set_mode(attrs.mode);
        h.set_uid(attrs.uid);
        h.set_gid(attrs.gid);
        h.set_mtime(attrs.mtime);
        h.set_size(data.len() as u64);
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
        h.set_cksum();
        self.block(&h, data);
        self
    }

    fn block(&mut self, h: &tar::Header, data: &[u8]) {
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_with(path, data, &Attrs::mode(0o644))
    }

    pub fn file_with(&mut self, path: &str, data: &[u8], attrs: &Attrs) -> &mut Self {
        self.raw(
            tar::EntryType::Regular,
            path.as_bytes(),
            None,
            attrs,
            data,
            (0, 0),
        )
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.dir_with(path, &Attrs::mode(0o755))
    }

    pub fn dir_with(&mut self, path: &str, attrs: &Attrs) -> &mut Self {
        self.raw(
            tar::EntryType::Directory,
            path.as_bytes(),
            None,
            attrs,
            b"",
            (0, 0),
        )
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.node(tar::EntryType::Symlink, path, Some(target), 0o777, (0, 0))
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.node(tar::EntryType::Link, path, Some(target), 0o644, (0, 0))
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        self.node(tar::EntryType::Fifo, path, None, 0o644, (0, 0))
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        self.node(tar::EntryType::Char, path, None, 0o666, (major, minor))
    }

    /// An entry without data, owned by root: a link, a FIFO or a device.
    fn node(
        &mut self,
        ty: tar::EntryType,
        path: &str,
        link: Option<&str>,
        mode: u32,
        dev: (u32, u32),
    ) -> &mut Self {
        let link = link.map(str::as_bytes);
        self.raw(ty, path.as_bytes(), link, &Attrs::mode(mode), b"", dev)
    }

    pub fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&path, b"")
    }

    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    /// The finished, uncompressed layer tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = self.out.clone();
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Plain,
    Gzip,
    Zstd,
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::Plain => tar.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(tar).unwrap();
            enc.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 1).unwrap(),
    }
}

/// A save stream under construction: named files, written in the order given by `finish`.
#[derive(Default)]
pub struct Save {
    pub files: Vec<(String, Vec<u8>)>,
}

impl Save {
    pub fn add(&mut self, name: &str, data: Vec<u8>) {
        self.files.push((name.to_owned(), data));
    }

    /// The tar stream, files in the order they were added.
    pub fn finish(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in &self.files {
            let mut h = tar::Header::new_ustar();
            h.set_path(name).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            b.append(&h, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }
}

pub fn config_json(diff_ids: &[String]) -> Vec<u8> {
    format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(",")
    )
    .into_bytes()
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// Docker's legacy layout (Docker ≤ 24): `<v1id>/layer.tar`, `<hex>.json`, `manifest.json`,
/// entries sorted by name as Docker writes them; v1 ids are chosen so that lexical order is the
/// reverse of the stack order.
pub fn docker_save(layers: &[Vec<u8>]) -> Save {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let config = config_json(&diff_ids);
    let config_name = format!("{}.json", hex_of(&sha256_digest(&config)));
    let mut save = Save::default();
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let v1id = format!("{:064x}", layers.len() - i);
        save.add(&format!("{v1id}/VERSION"), b"1.0".to_vec());
        save.add(
            &format!("{v1id}/json"),
            format!("{{\"id\":\"{v1id}\"}}").into_bytes(),
        );
        save.add(&format!("{v1id}/layer.tar"), l.clone());
        names.push(format!("\"{v1id}/layer.tar\""));
    }
    save.add(&config_name, config);
    let manifest = format!(
        r#"[{{"Config":"{config_name}","RepoTags":["test:latest"],"Layers":[{}]}}]"#,
        names.join(",")
    );
    save.add("manifest.json", manifest.into_bytes());
    save.add("repositories", br#"{"test":{"latest":"x"}}"#.to_vec());
    save.files.sort_by(|a, b| a.0.cmp(&b.0));
    save
}

/// The OCI layout (Docker ≥ 25 without its compat `manifest.json`): blobs by digest, layer
/// blobs in reverse stack order, then `index.json` and `oci-layout`.
pub fn oci_save(layers: &[Vec<u8>], c: Compression) -> Save {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let blobs: Vec<Vec<u8>> = layers.iter().map(|l| compress(l, c)).collect();
    let config = config_json(&diff_ids);
    let media = match c {
        Compression::Plain => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    let descs: Vec<String> = blobs
        .iter()
        .map(|b| {
            format!(
                r#"{{"mediaType":"{media}","digest":"{}","size":{}}}"#,
                sha256_digest(b),
                b.len()
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
        sha256_digest(&config),
        config.len(),
        descs.join(",")
    )
    .into_bytes();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{}}}]}}"#,
        sha256_digest(&manifest),
        manifest.len()
    )
    .into_bytes();
    let mut save = Save::default();
    for b in blobs.iter().rev() {
        save.add(
            &format!("blobs/sha256/{}", hex_of(&sha256_digest(b))),
            b.clone(),
        );
    }
    save.add(
        &format!("blobs/sha256/{}", hex_of(&sha256_digest(&config))),
        config,
    );
    save.add(
        &format!("blobs/sha256/{}", hex_of(&sha256_digest(&manifest))),
        manifest,
    );
    save.add("index.json", index);
    save.add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    save
}
