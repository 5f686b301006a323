//! Tests of the whole engine: synthetic saves in, root filesystems out.
//!
//! These run as root (the ownership tests need `CAP_CHOWN`/`CAP_MKNOD`); a test that needs a
//! capability it lacks says so and fails under `CI`.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::output::error_chain as chain;

use super::Ownership;
use super::layer::LayerError;
use super::layout::{LayoutError, sha256_digest};
use super::merge::MergeError;
use super::ownership::OVERRIDE_STAT_XATTR;
use super::test_save::{Attrs, Compression, Layer, MTIME, Save, docker_save, oci_save};
use super::tree::PathProblem;
use super::unpack::{UnpackError, UnpackOptions, UnpackSummary, unpack_save};

struct Run {
    _tmp: tempfile::TempDir,
    parent: PathBuf,
    dest: PathBuf,
    sentinel: PathBuf,
    result: Result<UnpackSummary, UnpackError>,
}

fn run_save(save: &Save, opts: &UnpackOptions) -> Run {
    run_bytes(save.finish(), opts)
}

fn run_bytes(bytes: Vec<u8>, opts: &UnpackOptions) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("images");
    let sentinel = tmp.path().join("sentinel");
    fs::create_dir(&parent).unwrap();
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("file"), b"sentinel").unwrap();
    let dest = parent.join("rootfs");
    let result = unpack_save(
        bytes.as_slice(),
        &dest,
        opts,
        &indicatif::ProgressBar::hidden(),
    );
    Run {
        _tmp: tmp,
        parent,
        dest,
        sentinel,
        result,
    }
}

fn unpack(layers: &[&Layer]) -> Run {
    let tars: Vec<Vec<u8>> = layers.iter().map(|l| l.tar()).collect();
    let run = run_save(&docker_save(&tars), &UnpackOptions::default());
    if let Err(e) = &run.result {
        panic!("unpack failed: {}", chain(e));
    }
    run
}

impl Run {
    fn path(&self, p: &str) -> PathBuf {
        self.dest.join(p)
    }
    fn read(&self, p: &str) -> String {
        fs::read_to_string(self.path(p)).unwrap()
    }
    fn exists(&self, p: &str) -> bool {
        fs::symlink_metadata(self.path(p)).is_ok()
    }
    fn meta(&self, p: &str) -> fs::Metadata {
        fs::symlink_metadata(self.path(p)).unwrap()
    }
    fn names(&self, p: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
    /// Nothing left behind: no dest, no temp dir, sentinel untouched.
    fn assert_clean(&self) {
        assert!(!self.dest.exists(), "dest left behind");
        let left: Vec<_> = fs::read_dir(&self.parent).unwrap().collect();
        assert!(left.is_empty(), "temp dir left behind: {left:?}");
        assert_sentinel_intact(&self.sentinel);
    }
}

fn assert_sentinel_intact(sentinel: &Path) {
    let names: Vec<_> = fs::read_dir(sentinel)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("file")],
        "sentinel dir changed"
    );
    assert_eq!(fs::read(sentinel.join("file")).unwrap(), b"sentinel");
}

/// Root of the initial user namespace (a user namespace's root lacks `CAP_MKNOD` there).
fn is_root() -> bool {
    let full_map = fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]);
    rustix::process::geteuid().is_root() && full_map
}

/// Skips (saying why) unless root; fails instead under `CI`.
fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test} needs root in CI");
    eprintln!("skipping {test}: needs root (CAP_CHOWN, CAP_MKNOD)");
    false
}

// ---- merge semantics ----

#[test]
fn whiteout_of_file() {
    let mut l1 = Layer::new();
    l1.file("a", b"a").file("b", b"b");
    let mut l2 = Layer::new();
    l2.whiteout("", "a");
    let r = unpack(&[&l1, &l2]);
    assert!(!r.exists("a"));
    assert_eq!(r.read("b"), "b");
    assert!(!r.exists(".wh.a"));
}

#[test]
fn whiteout_of_dir() {
    let mut l1 = Layer::new();
    l1.dir("d")
        .file("d/x", b"x")
        .dir("d/sub")
        .file("d/sub/y", b"y");
    let mut l2 = Layer::new();
    l2.whiteout("", "d");
    let r = unpack(&[&l1, &l2]);
    assert!(!r.exists("d"));
}

#[test]
fn opaque_dir_hides_lower_contents_only() {
    let mut l1 = Layer::new();
    l1.dir("d").file("d/x", b"x").file("d/y", b"y");
    let mut l2 = Layer::new();
    l2.dir("d").opaque("d").file("d/z", b"z");
    let r = unpack(&[&l1, &l2]);
    assert_eq!(r.names("d"), ["z"]);
}

#[test]
fn whiteout_only_affects_lower_layers() {
    let mut l1 = Layer::new();
    l1.file("a", b"old");
    // The same layer deletes the lower `a` and creates its own, in either order.
    let mut l2 = Layer::new();
    l2.file("a", b"new").whiteout("", "a");
    let r = unpack(&[&l1, &l2]);
    assert_eq!(r.read("a"), "new");
}

#[test]
fn recreate_after_whiteout_in_higher_layer() {
    let mut l1 = Layer::new();
    l1.file("a", b"old");
    let mut l2 = Layer::new();
    l2.whiteout("", "a");
    let mut l3 = Layer::new();
    l3.file("a", b"new");
    let r = unpack(&[&l1, &l2, &l3]);
    assert_eq!(r.read("a"), "new");
}

#[test]
fn dir_replaced_by_file_across_layers() {
    let mut l1 = Layer::new();
    l1.dir("d").file("d/x", b"x");
    let mut l2 = Layer::new();
    l2.file("d", b"file");
    let r = unpack(&[&l1, &l2]);
    assert_eq!(r.read("d"), "file");
}

#[test]
fn file_replaced_by_dir_across_layers() {
    let mut l1 = Layer::new();
    l1.file("f", b"file");
    let mut l2 = Layer::new();
    l2.dir("f").file("f/y", b"y");
    let r = unpack(&[&l1, &l2]);
    assert_eq!(r.read("f/y"), "y");
}

#[test]
fn dir_over_dir_merges_and_takes_upper_metadata() {
    let mut l1 = Layer::new();
    l1.dir_with("d", &Attrs::mode(0o700)).file("d/x", b"x");
    let mut l2 = Layer::new();
    l2.dir_with("d", &Attrs::mode(0o751)).file("d/y", b"y");
    let r = unpack(&[&l1, &l2]);
    assert_eq!(r.names("d"), ["x", "y"]);
    assert_eq!(r.meta("d").mode() & 0o7777, 0o751);
}

#[test]
fn dir_over_dir_takes_upper_owner_and_xattrs() {
    let mut l1 = Layer::new();
    l1.dir("d").file("d/x", b"x");
    let mut l2 = Layer::new();
    // Other ids need CAP_CHOWN over them (not there in a user namespace mapping one id).
    let (uid, gid) = if is_root() { (1234, 42) } else { (0, 0) };
    let attrs = Attrs {
        uid,
        gid,
        xattrs: vec![("user.k".into(), b"v".to_vec())],
        ..Attrs::mode(0o700)
    };
    l2.dir_with("d", &attrs);
    let r = unpack(&[&l1, &l2]);
    let mut buf = [0u8; 8];
    let n = rustix::fs::lgetxattr(r.path("d"), "user.k", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"v");
    if is_root() {
        assert_eq!((r.meta("d").uid(), r.meta("d").gid()), (1234, 42));
    }
}

#[test]
fn implicit_dir_keeps_lower_metadata() {
    let mut l1 = Layer::new();
    l1.dir_with("d", &Attrs::mode(0o700)).file("d/x", b"x");
    let mut l2 = Layer::new();
    l2.file("d/y", b"y");
    let r = unpack(&[&l1, &l2]);
    assert_eq!(r.meta("d").mode() & 0o7777, 0o700);
    assert_eq!(r.names("d"), ["x", "y"]);
}

#[test]
fn hard_link_within_a_layer() {
    let mut l1 = Layer::new();
    l1.file("a", b"data").hardlink("b", "a");
    let r = unpack(&[&l1]);
    assert_eq!(r.meta("a").ino(), r.meta("b").ino());
}

#[test]
fn hard_link_across_layers() {
    let mut l1 = Layer::new();
    l1.dir("d").file("d/a", b"data");
    let mut l2 = Layer::new();
    l2.hardlink("e/b", "d/a");
    let r = unpack(&[&l1, &l2]);
    assert_eq!(r.meta("d/a").ino(), r.meta("e/b").ino());
    assert_eq!(r.read("e/b"), "data");
}

#[test]
fn link_to_later_replaced_target_keeps_old_content() {
    let mut l1 = Layer::new();
    l1.file("a", b"old");
    let mut l2 = Layer::new();
    l2.hardlink("b", "a");
    let mut l3 = Layer::new();
    l3.file("a", b"new");
    let r = unpack(&[&l1, &l2, &l3]);
    assert_eq!(r.read("a"), "new");
    assert_eq!(r.read("b"), "old");
}

#[test]
fn link_to_lower_target_replaced_in_same_layer_keeps_old_content() {
    let mut l1 = Layer::new();
    l1.file("a", b"old");
    let mut l2 = Layer::new();
    l2.hardlink("b", "a").file("a", b"new");
    let r = unpack(&[&l1, &l2]);
    assert_eq!(r.read("a"), "new");
    assert_eq!(r.read("b"), "old");
}

#[test]
fn symlinks_are_stored_verbatim() {
    let mut l1 = Layer::new();
    l1.symlink("abs", "/etc/passwd").symlink("rel", "../../x");
    let r = unpack(&[&l1]);
    assert_eq!(
        fs::read_link(r.path("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(fs::read_link(r.path("rel")).unwrap(), Path::new("../../x"));
}

#[test]
fn special_modes_and_ids_under_root() {
    if !need_root("special_modes_and_ids_under_root") {
        return;
    }
    let with = |mode, uid, gid| Attrs {
        uid,
        gid,
        ..Attrs::mode(mode)
    };
    let mut l1 = Layer::new();
    l1.file_with("suid", b"x", &with(0o4755, 0, 0))
        .file_with("sgid", b"x", &with(0o2711, 1000, 50))
        .dir_with("tmp", &with(0o1777, 0, 0))
        .file_with("owned", b"x", &with(0o600, 1234, 5678));
    let r = unpack(&[&l1]);
    assert_eq!(r.meta("suid").mode() & 0o7777, 0o4755);
    let sgid = r.meta("sgid");
    assert_eq!(
        (sgid.mode() & 0o7777, sgid.uid(), sgid.gid()),
        (0o2711, 1000, 50)
    );
    assert_eq!(r.meta("tmp").mode() & 0o7777, 0o1777);
    let owned = r.meta("owned");
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
}

#[test]
fn xattrs_are_applied() {
    // security.capability for cap_net_raw+ep (VFS_CAP_REVISION_2).
    let mut cap = vec![0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    cap[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
    let attrs = Attrs {
        xattrs: vec![
            ("user.note".into(), b"hello".to_vec()),
            ("security.capability".into(), cap.clone()),
        ],
        ..Attrs::mode(0o755)
    };
    let mut l1 = Layer::new();
    l1.file_with("ping", b"x", &attrs);
    let r = unpack(&[&l1]);
    let get = |name| {
        let mut buf = vec![0u8; 64];
        let n = rustix::fs::lgetxattr(r.path("ping"), name, &mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    assert_eq!(get("user.note"), b"hello");
    if is_root() {
        assert_eq!(get("security.capability"), cap);
    }
}

#[test]
fn fifo_is_created() {
    let mut l1 = Layer::new();
    l1.fifo("pipe");
    let r = unpack(&[&l1]);
    let m = r.meta("pipe");
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o777, 0o644);
}

#[test]
fn device_created_as_root() {
    if !need_root("device_created_as_root") {
        return;
    }
    let mut l1 = Layer::new();
    l1.char_dev("dev/null", 1, 3);
    let r = unpack(&[&l1]);
    let m = r.meta("dev/null");
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), crate::sys::fs::dev(1, 3));
    assert_eq!(r.result.as_ref().unwrap().skipped_devices, 0);
}

#[cfg(target_os = "linux")]
#[test]
fn device_skipped_and_counted_without_mknod() {
    if !need_root("device_skipped_and_counted_without_mknod") {
        return;
    }
    // Capabilities are per thread and inherited by threads it spawns: drop CAP_MKNOD in a
    // fresh thread and unpack from there.
    let run = std::thread::spawn(|| {
        use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
        let mut caps = capabilities(None).unwrap();
        caps.effective.remove(CapabilitySet::MKNOD);
        caps.permitted.remove(CapabilitySet::MKNOD);
        set_capabilities(None, caps).unwrap();
        let mut l1 = Layer::new();
        l1.char_dev("dev/null", 1, 3)
            .char_dev("dev/zero", 1, 5)
            .hardlink("dev/zero2", "dev/zero")
            .file("etc/ok", b"ok");
        let mut l2 = Layer::new();
        l2.hardlink("dev/null2", "dev/null");
        run_save(
            &docker_save(&[l1.tar(), l2.tar()]),
            &UnpackOptions::default(),
        )
    })
    .join()
    .unwrap();
    let summary = run.result.as_ref().expect("unpack without mknod succeeds");
    // Two nodes and the two hard links to them.
    assert_eq!(summary.skipped_devices, 4);
    assert!(!run.exists("dev/null") && !run.exists("dev/null2"));
    assert_eq!(run.read("etc/ok"), "ok");
}

#[test]
fn long_pax_names() {
    let deep = format!("{}/{}", "d".repeat(200), "f".repeat(200));
    let mut l1 = Layer::new();
    l1.file(&deep, b"deep").symlink("l", &"t".repeat(300));
    let r = unpack(&[&l1]);
    assert_eq!(r.read(&deep), "deep");
    assert_eq!(fs::read_link(r.path("l")).unwrap().as_os_str().len(), 300);
}

#[test]
fn deepest_accepted_paths_merge() {
    let deep = "d/".repeat(super::tree::MAX_DEPTH - 1);
    let mut l1 = Layer::new();
    l1.file(&format!("{deep}x"), b"x");
    let mut l2 = Layer::new();
    l2.file(&format!("{deep}y"), b"y");
    let r = unpack(&[&l1, &l2]);
    assert_eq!(r.names(&deep), ["x", "y"]);
}

#[test]
fn dir_mtimes_and_modes_are_set_last() {
    let at = |mode, mtime| Attrs {
        mtime,
        ..Attrs::mode(mode)
    };
    let mut l1 = Layer::new();
    l1.dir_with("ro", &at(0o555, 1000))
        .file("ro/x", b"x")
        .dir_with("kept", &at(0o755, 2000));
    let mut l2 = Layer::new();
    // Written into after its 0555 entry, in a higher layer, without an explicit entry.
    l2.file("ro/y", b"y").file("kept/z", b"z");
    let r = unpack(&[&l1, &l2]);
    assert_eq!(r.names("ro"), ["x", "y"]);
    assert_eq!(r.meta("ro").mode() & 0o7777, 0o555);
    assert_eq!(r.meta("ro").mtime(), 1000);
    assert_eq!(r.meta("kept").mtime(), 2000);
    assert_eq!(r.meta("kept/z").mtime(), MTIME as i64);
}

#[test]
fn root_entry_sets_root_metadata() {
    let mut l1 = Layer::new();
    l1.dir_with("./", &Attrs::mode(0o750)).file("a", b"a");
    let r = unpack(&[&l1]);
    assert_eq!(fs::metadata(&r.dest).unwrap().mode() & 0o7777, 0o750);
}

// ---- xattr ownership mode ----

fn override_stat(path: &Path) -> Option<String> {
    let mut buf = vec![0u8; 64];
    let n = rustix::fs::lgetxattr(path, OVERRIDE_STAT_XATTR, &mut buf).ok()?;
    buf.truncate(n);
    Some(String::from_utf8(buf).unwrap())
}

#[test]
fn xattr_mode_records_ownership() {
    let at = |mode, uid, gid| Attrs {
        uid,
        gid,
        ..Attrs::mode(mode)
    };
    let mut l1 = Layer::new();
    l1.dir_with("d", &at(0o755, 0, 0))
        .file_with("d/suid", b"x", &at(0o4755, 0, 0))
        .file_with("d/mine", b"x", &at(0o400, 1000, 100))
        .symlink("link", "d/mine")
        .char_dev("null", 1, 3)
        .fifo("pipe");
    let opts = UnpackOptions {
        ownership: Ownership::Xattr,
        ..UnpackOptions::default()
    };
    let r = run_save(&docker_save(&[l1.tar()]), &opts);
    let summary = r.result.as_ref().unwrap();
    assert_eq!(override_stat(&r.path("d")).as_deref(), Some("0:0:040755"));
    assert_eq!(
        override_stat(&r.path("d/suid")).as_deref(),
        Some("0:0:04755")
    );
    assert_eq!(
        override_stat(&r.path("d/mine")).as_deref(),
        Some("1000:100:0400")
    );
    assert_eq!(
        override_stat(&r.path("null")).as_deref(),
        Some("0:0:020666")
    );
    assert_eq!(
        override_stat(&r.path("pipe")).as_deref(),
        Some("0:0:010644")
    );
    // Linux refuses user.* on symlinks: skipped and counted.
    assert_eq!(override_stat(&r.path("link")), None);
    assert_eq!(summary.skipped_xattrs, 1);
    // Devices and FIFOs become empty regular files; real modes stay usable by the owner.
    assert!(r.meta("null").file_type().is_file());
    assert_eq!(r.meta("null").len(), 0);
    assert_eq!(r.meta("d/mine").mode() & 0o777, 0o600);
    assert_eq!(r.meta("d/suid").mode() & 0o7777, 0o755);
    let me = rustix::process::geteuid().as_raw();
    assert_eq!(r.meta("d/mine").uid(), me);
}

/// Runs `xattr_mode_records_ownership` again as an unprivileged user (nobody), the situation
/// xattr mode exists for: no `CAP_CHOWN`, no `CAP_MKNOD`, no `CAP_DAC_OVERRIDE`.
#[test]
fn xattr_mode_works_unprivileged() {
    let test = "image::unpack_tests::xattr_mode_records_ownership";
    if !is_root() {
        eprintln!("skipping xattr_mode_works_unprivileged: already unprivileged, see {test}");
        return;
    }
    if std::process::Command::new("setpriv")
        .arg("--help")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "setpriv (util-linux) is needed in CI"
        );
        eprintln!("skipping xattr_mode_works_unprivileged: setpriv not found");
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--test-threads=1"])
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- layouts ----

fn two_layers() -> Vec<Vec<u8>> {
    let mut l1 = Layer::new();
    l1.dir("etc").file("etc/os", b"base").file("bin/sh", b"sh");
    let mut l2 = Layer::new();
    l2.file("etc/os", b"top").whiteout("bin", "sh");
    vec![l1.tar(), l2.tar()]
}

fn check_two_layers(r: &Run, tars: &[Vec<u8>]) {
    let s = r.result.as_ref().map_err(|e| chain(e)).unwrap();
    assert_eq!(r.read("etc/os"), "top");
    assert!(!r.exists("bin/sh"));
    assert_eq!(s.layers, 2);
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256_digest(t)).collect();
    assert_eq!(s.diff_ids, diff_ids);
    assert!(s.image_id.as_deref().unwrap().starts_with("sha256:"));
}

#[test]
fn docker_legacy_layout_in_reverse_order() {
    let tars = two_layers();
    let save = docker_save(&tars);
    // The builder's v1 ids put the top layer first in the stream.
    let first = save
        .files
        .iter()
        .position(|(n, _)| n.ends_with("layer.tar"))
        .unwrap();
    assert_eq!(save.files[first].1, tars[1]);
    check_two_layers(&run_save(&save, &UnpackOptions::default()), &tars);
}

#[test]
fn oci_layout_all_compressions() {
    for c in [Compression::Plain, Compression::Gzip, Compression::Zstd] {
        let tars = two_layers();
        let r = run_save(&oci_save(&tars, c), &UnpackOptions::default());
        check_two_layers(&r, &tars);
    }
}

/// Docker ≥ 25 with the containerd store: `index.json` → multi-platform index → manifests, of
/// which only this machine's platform has its blobs in the stream, next to an attestation.
#[test]
fn oci_nested_index_picks_this_platform() {
    let tars = two_layers();
    let mut save = oci_save(&tars, Compression::Gzip);
    let index_pos = save
        .files
        .iter()
        .position(|(n, _)| n == "index.json")
        .unwrap();
    let top: serde_json::Value = serde_json::from_slice(&save.files[index_pos].1).unwrap();
    let mut native = top["manifests"][0].clone();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    native["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
    let mut foreign = native.clone();
    foreign["platform"]["architecture"] = "s390x".into();
    foreign["digest"] = format!("sha256:{}", "c".repeat(64)).into();
    let mut attestation = native.clone();
    attestation["platform"] = serde_json::json!({"os": "unknown", "architecture": "unknown"});
    attestation["digest"] = format!("sha256:{}", "d".repeat(64)).into();
    let inner = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [foreign, native, attestation],
    }))
    .unwrap();
    let inner_digest = sha256_digest(&inner);
    let outer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": inner_digest,
            "size": inner.len(),
        }],
    }))
    .unwrap();
    save.files[index_pos].1 = outer;
    let name = format!(
        "blobs/sha256/{}",
        inner_digest.strip_prefix("sha256:").unwrap()
    );
    save.files.insert(0, (name, inner));
    check_two_layers(&run_save(&save, &UnpackOptions::default()), &tars);
}

#[test]
fn docker_legacy_symlinked_repeated_empty_layer() {
    // Docker links a repeated layer's layer.tar to the first copy.
    let empty = Layer::new().tar();
    let mut l2 = Layer::new();
    l2.file("a", b"a");
    let mut save = docker_save(&[empty.clone(), l2.tar(), empty]);
    let dup = save
        .files
        .iter()
        .position(|(n, _)| n.starts_with(&format!("{:064x}/layer", 1)))
        .unwrap();
    save.files.remove(dup);
    let mut bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut bytes);
        for (name, data) in &save.files {
            let mut h = tar::Header::new_ustar();
            h.set_path(name).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, data.as_slice()).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_path(format!("{:064x}/layer.tar", 1)).unwrap();
        h.set_link_name(format!("../{:064x}/layer.tar", 3)).unwrap();
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        b.finish().unwrap();
    }
    let r = run_bytes(bytes, &UnpackOptions::default());
    assert_eq!(r.result.as_ref().map_err(|e| chain(e)).unwrap().layers, 3);
    assert_eq!(r.read("a"), "a");
}

#[test]
fn repeated_layer_is_applied_twice() {
    let mut same = Layer::new();
    same.dir_with("d", &Attrs::mode(0o750))
        .file("d/x", b"x")
        .file("f", b"same");
    let mut mid = Layer::new();
    mid.file("d/x", b"changed")
        .whiteout("", "f")
        .file("g", b"g");
    let tars = vec![same.tar(), mid.tar(), same.tar()];
    for save in [docker_save(&tars), oci_save(&tars, Compression::Gzip)] {
        let r = run_save(&save, &UnpackOptions::default());
        let s = r.result.as_ref().map_err(|e| chain(e)).unwrap();
        assert_eq!(s.layers, 3);
        assert_eq!(r.read("d/x"), "x");
        assert_eq!(r.read("f"), "same");
        assert_eq!(r.read("g"), "g");
        assert_eq!(r.meta("d").mode() & 0o7777, 0o750);
    }
}

// ---- hostile input ----

/// Stands for the sentinel dir's absolute path in symlink targets of hostile layers.
const SENTINEL_MARKER: &str = "@SENTINEL@";

fn raw_file(l: &mut Layer, path: &[u8]) {
    l.raw(
        tar::EntryType::Regular,
        path,
        None,
        &Attrs::mode(0o644),
        b"x",
        (0, 0),
    );
}

type Check = fn(&UnpackError) -> bool;

fn layer_err(e: &UnpackError) -> Option<&LayerError> {
    match e {
        UnpackError::Layer { source, .. } => Some(source),
        _ => None,
    }
}

fn merge_err(e: &UnpackError) -> Option<&MergeError> {
    match e {
        UnpackError::Merge { source, .. } => Some(source),
        _ => None,
    }
}

#[test]
fn hostile_saves_are_rejected_and_leave_nothing() {
    let one = |f: fn(&mut Layer)| {
        let mut l = Layer::new();
        f(&mut l);
        vec![l]
    };
    let cases: Vec<(&str, Vec<Layer>, Check)> = vec![
        ("dotdot", one(|l| raw_file(l, b"../escape")), |e| {
            matches!(
                layer_err(e),
                Some(LayerError::BadPath {
                    problem: PathProblem::DotDot,
                    ..
                })
            )
        }),
        (
            "inner dotdot",
            one(|l| raw_file(l, b"a/../../escape")),
            |e| {
                matches!(
                    layer_err(e),
                    Some(LayerError::BadPath {
                        problem: PathProblem::DotDot,
                        ..
                    })
                )
            },
        ),
        ("nul", one(|l| raw_file(l, b"a\0b")), |e| {
            matches!(
                layer_err(e),
                Some(LayerError::BadPath {
                    problem: PathProblem::Nul,
                    ..
                })
            )
        }),
        (
            "too deep",
            one(|l| raw_file(l, "a/".repeat(300).as_bytes())),
            |e| {
                matches!(
                    layer_err(e),
                    Some(LayerError::BadPath {
                        problem: PathProblem::TooDeep,
                        ..
                    })
                )
            },
        ),
        (
            "path too long",
            one(|l| raw_file(l, "a/".repeat(2100).as_bytes())),
            |e| {
                matches!(
                    layer_err(e),
                    Some(LayerError::BadPath {
                        problem: PathProblem::TooLong,
                        ..
                    })
                )
            },
        ),
        (
            "name too long",
            one(|l| raw_file(l, "n".repeat(300).as_bytes())),
            |e| {
                matches!(
                    layer_err(e),
                    Some(LayerError::BadPath {
                        problem: PathProblem::NameTooLong,
                        ..
                    })
                )
            },
        ),
        (
            "write through own symlink",
            one(|l| {
                l.symlink("l", SENTINEL_MARKER).file("l/evil", b"x");
            }),
            |e| matches!(layer_err(e), Some(LayerError::ThroughNonDirectory { .. })),
        ),
        (
            "write through lower layer symlink",
            {
                let mut a = Layer::new();
                a.symlink("l", SENTINEL_MARKER);
                let mut b = Layer::new();
                b.file("l/evil", b"x");
                vec![a, b]
            },
            |e| matches!(merge_err(e), Some(MergeError::ThroughNonDirectory { .. })),
        ),
        (
            "hard link out via dotdot",
            one(|l| {
                l.hardlink("h", "../sentinel/file");
            }),
            |e| matches!(layer_err(e), Some(LayerError::BadLinkTarget { .. })),
        ),
        (
            "hard link to absolute path not in image",
            one(|l| {
                l.hardlink("h", "/etc/shadow");
            }),
            |e| matches!(merge_err(e), Some(MergeError::LinkTargetMissing { .. })),
        ),
        (
            "hard link to directory",
            one(|l| {
                l.dir("d").hardlink("h", "d");
            }),
            |e| matches!(layer_err(e), Some(LayerError::HardLinkToDirectory { .. })),
        ),
        (
            "hard link to lower directory",
            {
                let mut a = Layer::new();
                a.dir("d");
                let mut b = Layer::new();
                b.hardlink("h", "d");
                vec![a, b]
            },
            |e| matches!(merge_err(e), Some(MergeError::LinkToDirectory { .. })),
        ),
        (
            "hard link through symlinked dir",
            one(|l| {
                l.symlink("s", SENTINEL_MARKER).hardlink("h", "s/file");
            }),
            |e| matches!(merge_err(e), Some(MergeError::LinkTargetMissing { .. })),
        ),
        (
            "dir replaced by file then written into",
            one(|l| {
                l.dir("d").file("d", b"f").file("d/x", b"x");
            }),
            |e| matches!(layer_err(e), Some(LayerError::ThroughNonDirectory { .. })),
        ),
        (
            "whiteout of dotdot",
            one(|l| raw_file(l, b"a/.wh...")),
            |e| matches!(layer_err(e), Some(LayerError::BadWhiteout { .. })),
        ),
        ("whiteout of dot", one(|l| raw_file(l, b".wh..")), |e| {
            matches!(layer_err(e), Some(LayerError::BadWhiteout { .. }))
        }),
        (
            "unsupported entry type",
            one(|l| {
                l.raw(
                    tar::EntryType::new(b'Z'),
                    b"z",
                    None,
                    &Attrs::mode(0o644),
                    b"",
                    (0, 0),
                );
            }),
            |e| matches!(layer_err(e), Some(LayerError::UnsupportedType { .. })),
        ),
    ];
    for (name, layers, check) in cases {
        let tars: Vec<Vec<u8>> = layers.iter().map(|l| l.tar()).collect();
        let run = run_hostile(&tars, SENTINEL_MARKER);
        let err = run
            .result
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        assert!(check(err), "{name}: wrong error: {}", chain(err));
        run.assert_clean();
    }
}

/// Runs a save whose layers may name the sentinel dir via `marker` (replaced by its absolute
/// path, same length padding not needed: PAX records carry any length).
fn run_hostile(tars: &[Vec<u8>], marker: &str) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let sentinel = tmp.path().join("sentinel");
    let target = sentinel.to_str().unwrap().to_owned();
    let tars: Vec<Vec<u8>> = tars
        .iter()
        .map(|t| replace_in_layer(t, marker, &target))
        .collect();
    let parent = tmp.path().join("images");
    fs::create_dir(&parent).unwrap();
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("file"), b"sentinel").unwrap();
    let dest = parent.join("rootfs");
    let bytes = docker_save(&tars).finish();
    let result = unpack_save(
        bytes.as_slice(),
        &dest,
        &UnpackOptions::default(),
        &indicatif::ProgressBar::hidden(),
    );
    Run {
        _tmp: tmp,
        parent,
        dest,
        sentinel,
        result,
    }
}

/// Rebuilds a layer tar with `marker` in symlink targets replaced by `with`.
fn replace_in_layer(tar_bytes: &[u8], marker: &str, with: &str) -> Vec<u8> {
    let mut out = Layer::new();
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let path = e.path_bytes().into_owned();
        let link = e.link_name_bytes().map(|l| {
            String::from_utf8(l.into_owned())
                .unwrap()
                .replace(marker, with)
                .into_bytes()
        });
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        let attrs = Attrs {
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            xattrs: Vec::new(),
        };
        let dev = (
            h.device_major().unwrap().unwrap_or(0),
            h.device_minor().unwrap().unwrap_or(0),
        );
        out.raw(h.entry_type(), &path, link.as_deref(), &attrs, &data, dev);
    }
    out.tar()
}

#[test]
fn hard_link_to_planted_symlink_does_not_let_writes_escape() {
    let mut l1 = Layer::new();
    l1.symlink("s", "@SENTINEL@/file").hardlink("h", "s");
    let mut l2 = Layer::new();
    l2.file("h", b"pwned").file("s", b"pwned");
    let run = run_hostile(&[l1.tar(), l2.tar()], "@SENTINEL@");
    run.result.as_ref().map_err(|e| chain(e)).unwrap();
    assert_sentinel_intact(&run.sentinel);
    assert_eq!(run.read("h"), "pwned");
}

#[test]
fn absolute_and_dot_paths_land_inside() {
    let mut l1 = Layer::new();
    l1.raw(
        tar::EntryType::Regular,
        b"/abs",
        None,
        &Attrs::mode(0o644),
        b"a",
        (0, 0),
    )
    .raw(
        tar::EntryType::Regular,
        b"./dot/x",
        None,
        &Attrs::mode(0o644),
        b"d",
        (0, 0),
    );
    let r = unpack(&[&l1]);
    assert_eq!(r.read("abs"), "a");
    assert_eq!(r.read("dot/x"), "d");
    assert_sentinel_intact(&r.sentinel);
}

fn expect_err(run: &Run, name: &str, check: impl Fn(&UnpackError) -> bool) {
    let err = run
        .result
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("{name}: accepted"));
    assert!(check(err), "{name}: wrong error: {}", chain(err));
    run.assert_clean();
}

#[test]
fn oversized_metadata_headers_are_rejected() {
    // A few KiB of gzip that would expand into a 4 MiB PAX header or GNU long name.
    for ty in [b'x', b'L'] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::new(ty));
        h.as_old_mut().name[..1].copy_from_slice(b"p");
        h.set_size(4 << 20);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend(std::iter::repeat_n(b'a', 4 << 20));
        tar.extend([0u8; 1024]);
        let save = oci_save(&[tar], Compression::Gzip);
        let run = run_save(&save, &UnpackOptions::default());
        expect_err(
            &run,
            "metadata",
            |e| matches!(layer_err(e), Some(LayerError::MetadataTooLarge { size, .. }) if *size == 4 << 20),
        );
    }
}

#[test]
fn truncated_layer_is_rejected() {
    let mut l1 = Layer::new();
    l1.file("big", &vec![7u8; 100_000]);
    let mut tar = l1.tar();
    tar.truncate(50_000);
    let run = run_save(&docker_save(&[tar]), &UnpackOptions::default());
    expect_err(&run, "truncated", |e| {
        matches!(layer_err(e), Some(LayerError::Truncated { .. }))
    });
}

#[test]
fn corrupt_header_checksum_is_rejected() {
    let mut l1 = Layer::new();
    l1.file("a", b"a").file("b", b"b");
    let mut tar = l1.tar();
    // Second header block of entry `a` (after its PAX header and data): flip a name byte.
    let pos = 512 * 2 + 5;
    tar[pos] ^= 0x55;
    let run = run_save(&docker_save(&[tar]), &UnpackOptions::default());
    expect_err(&run, "checksum", |e| {
        matches!(layer_err(e), Some(LayerError::ReadTar(_)))
    });
}

#[test]
fn truncated_save_stream_is_rejected() {
    let mut bytes = docker_save(&two_layers()).finish();
    bytes.truncate(bytes.len() / 2);
    let run = run_bytes(bytes, &UnpackOptions::default());
    expect_err(&run, "truncated save", |e| {
        matches!(
            e,
            UnpackError::ReadSave(_) | UnpackError::Layer { .. } | UnpackError::Layout(_)
        )
    });
}

#[test]
fn diff_id_mismatch_is_rejected() {
    let tars = two_layers();
    let mut save = docker_save(&tars);
    // Swap the layer contents behind the manifest's back.
    let (a, b) = {
        let idx: Vec<usize> = (0..save.files.len())
            .filter(|i| save.files[*i].0.ends_with("layer.tar"))
            .collect();
        (idx[0], idx[1])
    };
    let tmp = save.files[a].1.clone();
    save.files[a].1 = save.files[b].1.clone();
    save.files[b].1 = tmp;
    let run = run_save(&save, &UnpackOptions::default());
    expect_err(&run, "diff_id", |e| {
        matches!(
            e,
            UnpackError::DigestMismatch {
                what: "diff_id",
                ..
            }
        )
    });
}

#[test]
fn blob_digest_mismatch_is_rejected() {
    let tars = two_layers();
    let mut save = oci_save(&tars, Compression::Gzip);
    // Recompress a layer differently: same diff_id, different blob digest than its name.
    let first = &mut save.files[0];
    let tar = {
        let mut d = flate2::read::GzDecoder::new(first.1.as_slice());
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut v).unwrap();
        v
    };
    first.1 = super::test_save::compress(&tar, Compression::Zstd);
    let run = run_save(&save, &UnpackOptions::default());
    expect_err(&run, "blob digest", |e| {
        matches!(
            e,
            UnpackError::DigestMismatch {
                what: "blob digest",
                ..
            }
        )
    });
}

#[test]
fn missing_layer_is_rejected() {
    let mut save = docker_save(&two_layers());
    save.files
        .retain(|(n, _)| !n.starts_with(&format!("{:064x}/layer", 1)));
    let run = run_save(&save, &UnpackOptions::default());
    expect_err(&run, "missing", |e| {
        matches!(e, UnpackError::MissingLayer { .. })
    });
}

#[test]
fn missing_manifest_is_rejected() {
    let mut save = docker_save(&two_layers());
    save.files.retain(|(n, _)| n != "manifest.json");
    let run = run_save(&save, &UnpackOptions::default());
    expect_err(&run, "no manifest", |e| {
        matches!(e, UnpackError::Layout(LayoutError::NoManifest))
    });
}

#[test]
fn unknown_blob_is_rejected() {
    let mut save = docker_save(&two_layers());
    save.add("junk", b"hello".to_vec());
    let run = run_save(&save, &UnpackOptions::default());
    expect_err(
        &run,
        "junk",
        |e| matches!(e, UnpackError::UnknownBlob { name } if name == "junk"),
    );
}

#[test]
fn too_many_entries_is_rejected() {
    let mut l1 = Layer::new();
    for i in 0..20 {
        l1.file(&format!("f{i}"), b"x");
    }
    let opts = UnpackOptions {
        max_entries: 15,
        ..UnpackOptions::default()
    };
    let run = run_save(&docker_save(&[l1.tar()]), &opts);
    expect_err(&run, "entries", |e| {
        matches!(layer_err(e), Some(LayerError::TooManyEntries { limit: 15 }))
            || matches!(e, UnpackError::TooManySaveEntries { limit: 15 })
    });
}

#[test]
fn too_much_json_is_rejected() {
    let opts = UnpackOptions {
        max_json_bytes: 64,
        ..UnpackOptions::default()
    };
    let run = run_save(&docker_save(&two_layers()), &opts);
    expect_err(&run, "json", |e| {
        matches!(e, UnpackError::JsonTooLarge { limit: 64, .. })
    });
}

#[test]
fn existing_dest_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("rootfs");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("keep"), b"k").unwrap();
    let bytes = docker_save(&two_layers()).finish();
    let err = unpack_save(
        bytes.as_slice(),
        &dest,
        &UnpackOptions::default(),
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::DestExists { .. }), "{err}");
    assert_eq!(fs::read(dest.join("keep")).unwrap(), b"k");
}

#[test]
fn progress_counts_stream_bytes_with_sync() {
    let bytes = docker_save(&two_layers()).finish();
    let tmp = tempfile::tempdir().unwrap();
    let bar = indicatif::ProgressBar::hidden();
    let opts = UnpackOptions {
        sync: true,
        ..UnpackOptions::default()
    };
    unpack_save(bytes.as_slice(), &tmp.path().join("r"), &opts, &bar).unwrap();
    assert!(bar.position() > 0 && bar.position() <= bytes.len() as u64);
}

/// Mutation smoke test of the whole parser stack: corrupted saves (flipped bytes, truncations)
/// must end in `Ok` or a clean error: no panic, nothing outside the destination, no leftovers.
#[test]
fn corrupted_saves_never_panic_or_leave_anything() {
    let mut l1 = Layer::new();
    l1.dir("etc")
        .file("etc/a", b"aaaa")
        .symlink("etc/l", "/etc/a")
        .hardlink("etc/h", "etc/a")
        .fifo("p")
        .file_with(
            "x",
            b"x",
            &Attrs {
                xattrs: vec![("user.a".into(), b"b".to_vec())],
                ..Attrs::mode(0o4755)
            },
        );
    let mut l2 = Layer::new();
    l2.whiteout("etc", "a")
        .opaque("etc")
        .file("etc/b", b"b")
        .hardlink("h2", "x");
    let base = docker_save(&[l1.tar(), l2.tar()]).finish();
    // xorshift64: deterministic, no extra dependency.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200 {
        let mut bytes = base.clone();
        if round % 4 == 3 {
            bytes.truncate((next() % bytes.len() as u64) as usize);
        } else {
            for _ in 0..=(next() % 8) {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (next() % 8);
            }
        }
        let run = run_bytes(bytes, &UnpackOptions::default());
        match &run.result {
            Ok(_) => {
                let left: Vec<_> = fs::read_dir(&run.parent).unwrap().collect();
                assert_eq!(left.len(), 1, "round {round}: temp dir left behind");
                assert_sentinel_intact(&run.sentinel);
            }
            Err(_) => run.assert_clean(),
        }
    }
}
