//! Two jobs, both for the installed binary to be self-sufficient:
//!
//! - Lets the dynamic loader find a `libkrunfw` shipped beside the binary. libkrun (linked into
//!   this binary) `dlopen`s `libkrunfw.so.5` at VM start. `dlopen` honours the calling object's
//!   RUNPATH, so the binary carries two: `$ORIGIN/../lib` for an installed layout
//!   (`bin/krbottle` + `lib/libkrunfw.so.5`) and `$ORIGIN/../../lib` for a build tree
//!   (`target/<profile>/krbottle` + the `lib/` that `scripts/setup.sh` fills in the checkout).
//! - Packs the crate's own source (`$OUT_DIR/source.tar.gz`, embedded by `bundle::image`), so a
//!   krbottle whose binary cannot run in the Linux bundle container (macOS, another
//!   architecture) can have the bundle image compile the very same version from it. The tar is
//!   deterministic (sorted names, zero times and owners), so its hash names the source.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What `cargo build --bin krbottle` needs, relative to the crate root.
const SOURCE_FILES: &[&str] = &["Cargo.toml", "Cargo.lock", "build.rs", "bundle/Dockerfile"];
const SOURCE_DIRS: &[&str] = &["src"];

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo::rustc-link-arg-bins=-Wl,-rpath,$ORIGIN/../lib:$ORIGIN/../../lib");
    } else if os == "macos" {
        println!("cargo::rustc-link-arg-bins=-Wl,-rpath,@executable_path/../lib");
        println!("cargo::rustc-link-arg-bins=-Wl,-rpath,@executable_path/../../lib");
    }
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let mut files: Vec<PathBuf> = SOURCE_FILES.iter().map(PathBuf::from).collect();
    for dir in SOURCE_DIRS {
        collect(&root, Path::new(dir), &mut files);
        println!("cargo::rerun-if-changed={dir}");
    }
    files.sort();
    for file in SOURCE_FILES {
        println!("cargo::rerun-if-changed={file}");
    }
    let tar_gz = pack(&root, &files).expect("cannot pack the crate source");
    write_if_changed(&out.join("source.tar.gz"), &tar_gz);
}

/// Every file under `root/dir`, as paths relative to `root`.
fn collect(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(root.join(dir)).expect("cannot list the crate source");
    for entry in entries {
        let entry = entry.expect("cannot list the crate source");
        let rel = dir.join(entry.file_name());
        let kind = entry.file_type().expect("cannot stat the crate source");
        if kind.is_dir() {
            collect(root, &rel, files);
        } else if kind.is_file() {
            files.push(rel);
        }
    }
}

fn pack(root: &Path, files: &[PathBuf]) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for rel in files {
        let data = fs::read(root.join(rel))?;
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        tar.append_data(&mut header, rel, data.as_slice())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

/// Leaves an unchanged file alone, so its timestamp does not trigger rebuilds.
fn write_if_changed(path: &Path, data: &[u8]) {
    if fs::read(path).is_ok_and(|old| old == data) {
        return;
    }
    fs::write(path, data).expect("cannot write the packed source");
}
