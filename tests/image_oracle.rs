//! The unpacker against an oracle nobody here wrote: Docker's own flattening of the same image.
//!
//! Each test builds an image from the local Debian base with a Dockerfile that exercises one
//! family of layer features, unpacks it with `krbottle image unpack`, exports a container of it
//! through Docker, and requires zero differences entry by entry (see `common/oracle.rs`).

mod common;

use std::process::Command;

use common::oracle;
use common::{BASE_IMAGE, docker_build, require_docker, require_test_user, run_krbottle};

/// Unpacks `image` in `mode` and compares it with Docker's export; returns the unpacked dir.
fn unpack_and_compare(image: &str, mode: &str) -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("rootfs");
    let (code, stdout, stderr) = run_krbottle(
        &work.path().join("cache"),
        &[
            "image",
            "unpack",
            image,
            dest.to_str().unwrap(),
            "--ownership",
            mode,
            "--json",
        ],
    );
    assert_eq!(code, 0, "unpack {image} failed:\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert!(summary["entries"].as_u64().unwrap() > 100, "{summary}");

    let expected = oracle::from_export(common::docker_export(image));
    let actual = oracle::from_dir(&dest, &|id| id, &|id| id);
    oracle::assert_same(&expected, &actual, &format!("krbottle unpack of {image}"));
    work
}

/// A tar (for `ADD`, which Docker extracts with xattrs) holding a file with a file capability and
/// a user xattr: no tool in the base image can set them.
fn caps_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    // VFS_CAP_REVISION_2 with the effective bit; permitted = CAP_NET_RAW (13).
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    builder
        .append_pax_extensions([
            ("SCHILY.xattr.security.capability", &cap[..]),
            ("SCHILY.xattr.user.krbottle", &b"kept"[..]),
        ])
        .unwrap();
    let data = b"#!/bin/sh\necho capable\n";
    let mut header = tar::Header::new_gnu();
    header.set_path("opt/cap-bin").unwrap();
    header.set_size(data.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, &data[..]).unwrap();
    builder.into_inner().unwrap()
}

fn layers_dockerfile() -> String {
    format!(
        r#"FROM {BASE_IMAGE}
RUN mkdir -p /opt/a /opt/b /opt/c /opt/keep /opt/sticky \
 && echo x > /opt/a/x && echo y > /opt/a/y && echo z > /opt/b/z && echo c > /opt/c/f \
 && echo f > /opt/file-to-dir \
 && useradd -u 1234 -M other && echo mine > /opt/owned && chown 1234:4321 /opt/owned && chmod 0640 /opt/owned \
 && cp /bin/true /opt/suid && chmod 4755 /opt/suid && cp /bin/true /opt/sgid && chmod 2711 /opt/sgid \
 && chmod 2755 /opt/keep && chmod 1777 /opt/sticky \
 && ln /opt/a/x /opt/hard-within && mkfifo /opt/fifo \
 && ln -s /etc/passwd /opt/abs-link && ln -s ../a/x /opt/b/rel-link && ln -s /nowhere /opt/dangling
RUN rm -rf /opt/a && mkdir /opt/a && echo new > /opt/a/new \
 && rm /opt/b/z \
 && rm -rf /opt/c && echo now-a-file > /opt/c \
 && rm /opt/file-to-dir && mkdir /opt/file-to-dir && echo inside > /opt/file-to-dir/f \
 && ln /opt/owned /opt/hard-across \
 && rm -f /usr/bin/which /usr/bin/which.debianutils \
 && chmod 0700 /opt/keep && chown 1234 /opt/keep
RUN d=/opt/long/$(printf 'd%.0s' $(seq 1 120))/$(printf 'e%.0s' $(seq 1 120)) && mkdir -p $d \
 && echo deep > $d/file-$(printf 'n%.0s' $(seq 1 150)) \
 && echo uni > '/opt/ünïcødé name' && touch -d '2001-02-03 04:05:06' /opt/old
ADD caps.tar /
"#
    )
}

#[test]
fn layer_features_match_docker_in_root_mode() {
    if !require_docker("layer_features_match_docker_in_root_mode") {
        return;
    }
    let tag = docker_build(
        "krbottle-test/oracle-layers:latest",
        &layers_dockerfile(),
        &[("caps.tar", &caps_tar())],
    );
    let work = unpack_and_compare(&tag, "root");
    let root = work.path().join("rootfs");
    // Spot checks that the oracle itself saw what the Dockerfile meant (a vacuous oracle would
    // pass anything): the whiteouts took effect and the capability is there.
    assert!(!root.join("opt/a/x").exists() && root.join("opt/a/new").exists());
    assert!(!root.join("usr/bin/which").exists());
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(root.join("opt/cap-bin"), "security.capability", &mut buf)
        .expect("security.capability kept");
    assert_eq!(n, 20);
}

/// Builds the shipped example agent image (`examples/agent`) with `krbottle image build`
/// (through the API); returns its tag.
fn build_example_agent() -> &'static str {
    let ctx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent");
    let tag = "krbottle-test/example-agent:latest";
    let cache = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_krbottle(
        cache.path(),
        &["image", "build", ctx.to_str().unwrap(), "--tag", tag],
    );
    assert_eq!(code, 0, "image build failed:\n{stderr}");
    tag
}

#[test]
fn example_agent_image_matches_docker_and_uid_1000_can_work() {
    if !require_docker("example_agent_image_matches_docker_and_uid_1000_can_work") {
        return;
    }
    let tag = build_example_agent();
    let work = unpack_and_compare(tag, "root");
    let root = work.path().join("rootfs");
    // What the replaced system had to `chown -R` after boot: the agent user can write its home
    // and /tmp is root-owned 1777, straight from the unpacked tree.
    let out = Command::new("chroot")
        .args([
            "--userspec=1000:1000",
            root.to_str().unwrap(),
            "/bin/sh",
            "-c",
        ])
        .arg("touch /home/agent/.claude.json && touch /tmp/x && stat -c '%a %u' /tmp && id -u")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1777 0\n1000\n");
    let denied = Command::new("chroot")
        .args([
            "--userspec=1000:1000",
            root.to_str().unwrap(),
            "/bin/sh",
            "-c",
            "touch /etc/passwd",
        ])
        .output()
        .unwrap();
    assert!(
        !denied.status.success(),
        "uid 1000 must not write root's files"
    );
}

/// The first subordinate id of `user` in `file` (/etc/subuid or /etc/subgid).
fn subid_start(file: &str, user: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(user)).then(|| f.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{user} has no range in {file}: run scripts/test-user.sh"))
}

#[test]
fn rootless_userns_mode_matches_docker_and_uid_1000_can_work() {
    let test = "rootless_userns_mode_matches_docker_and_uid_1000_can_work";
    if !require_docker(test) {
        return;
    }
    let Some((user, uid)) = require_test_user(test) else {
        return;
    };
    let tag = build_example_agent();
    // The unprivileged user gets a save file (it has no access to Docker) and a dir of its own.
    let work = tempfile::tempdir().unwrap();
    let save = work.path().join("image.tar");
    let status = Command::new("docker")
        .args(["save", "-o", save.to_str().unwrap(), tag])
        .status()
        .unwrap();
    assert!(status.success());
    let home = work.path().join("home");
    std::fs::create_dir(&home).unwrap();
    for p in [work.path(), &home, &save] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(p).unwrap().permissions(),
            mode,
        );
        Command::new("chmod")
            .arg(format!("{mode:o}"))
            .arg(p)
            .status()
            .unwrap();
    }
    Command::new("chown")
        .arg(&user)
        .arg(&home)
        .status()
        .unwrap();
    let dest = home.join("rootfs");
    let out = Command::new("setpriv")
        .args(["--reuid", &user, "--regid", &user, "--init-groups"])
        .arg(common::krbottle().get_program())
        .args([
            "image",
            "unpack",
            save.to_str().unwrap(),
            dest.to_str().unwrap(),
            "--json",
        ])
        .env("KRBOTTLE_CACHE_DIR", home.join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rootless unpack failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["ownership"], "userns",
        "the default for a user is userns"
    );

    // On disk: namespace id 0 is the user, k >= 1 is subordinate start + k - 1.
    let gid: u64 = String::from_utf8_lossy(
        &Command::new("id")
            .args(["-g", &user])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    let (sub_u, sub_g) = (
        subid_start("/etc/subuid", &user),
        subid_start("/etc/subgid", &user),
    );
    let unmap = |own: u64, sub: u64| {
        move |id: u64| {
            if id == own {
                0
            } else if id >= sub && id < sub + 65536 {
                id - sub + 1
            } else {
                u64::MAX // not in the mapping at all: always a difference
            }
        }
    };
    let mut expected = oracle::from_export(common::docker_export(tag));
    // No device nodes can be made in a user namespace: they are skipped and counted (the guest's
    // init mounts devtmpfs). Every one of them, and nothing else, must be accounted for.
    // Docker's init layer masks some of the image's devices (dev/console) in the export, so they
    // are counted in a root-mode unpack of the same file.
    expected.retain(|_, n| n.kind != 'c' && n.kind != 'b');
    let as_root = work.path().join("as-root");
    let (code, _, stderr) = run_krbottle(
        &work.path().join("cache"),
        &[
            "image",
            "unpack",
            save.to_str().unwrap(),
            as_root.to_str().unwrap(),
            "--ownership",
            "root",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let find = Command::new("find")
        .arg(&as_root)
        .args(["(", "-type", "c", "-o", "-type", "b", ")", "-print"])
        .output()
        .unwrap();
    let devices = String::from_utf8_lossy(&find.stdout).lines().count();
    assert!(
        devices > 0,
        "the base image has /dev nodes; the count must see them"
    );
    assert_eq!(summary["skipped_devices"], devices as u64, "{summary}");
    let actual = oracle::from_dir(&dest, &unmap(uid as u64, sub_u), &unmap(gid, sub_g));
    oracle::assert_same(&expected, &actual, "krbottle unpack in userns mode");

    // In the same mapping (made here by util-linux, not by krbottle), uid 1000 can work.
    let run_as_1000 = |script: &str| {
        Command::new("setpriv")
            .args(["--reuid", &user, "--regid", &user, "--init-groups"])
            .args(["unshare", "--map-auto", "--map-root-user", "--root"])
            .arg(&dest)
            .args([
                "/usr/bin/setpriv",
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
            ])
            .args(["/bin/sh", "-c", script])
            .output()
            .unwrap()
    };
    let out = run_as_1000(
        "touch /home/agent/.claude.json && touch /tmp/x && stat -c '%a %u' /tmp && id -u",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1777 0\n1000\n");
    assert!(
        !run_as_1000("touch /etc/passwd").status.success(),
        "uid 1000 must not write root's files"
    );

    // The user cannot delete such a tree itself (uid 1000's home belongs to a subordinate id)...
    let as_user = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid", &user, "--regid", &user, "--init-groups"])
            .args(args)
            .env("KRBOTTLE_CACHE_DIR", home.join("cache"))
            .output()
            .unwrap()
    };
    let rm = as_user(&["rm", "-rf", dest.to_str().unwrap()]);
    assert!(
        !rm.status.success(),
        "the user deleted subordinate-owned files"
    );
    // ...but `image prune` deletes it from the cache: here as the leftover of an interrupted
    // fill (the cache's `.tmp-<key>-` name), from a child in the user's id mapping.
    let leftover = home.join(format!("cache/images/.tmp-{}.userns-test", "ab".repeat(32)));
    assert!(
        as_user(&["mkdir", "-p", leftover.to_str().unwrap()])
            .status
            .success()
    );
    let bin = common::krbottle().get_program().to_owned();
    let unpack = as_user(&[
        bin.to_str().unwrap(),
        "image",
        "unpack",
        save.to_str().unwrap(),
        leftover.join("rootfs").to_str().unwrap(),
    ]);
    assert!(
        unpack.status.success(),
        "{}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    let prune = as_user(&[bin.to_str().unwrap(), "image", "prune", "--all", "--json"]);
    assert!(
        prune.status.success(),
        "rootless prune failed:\n{}",
        String::from_utf8_lossy(&prune.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&prune.stdout).unwrap();
    assert_eq!(report["leftovers"], 1, "{report}");
    assert!(!leftover.exists(), "{} is still there", leftover.display());
}

/// `krbottle image prepare` of `image` in root mode into `cache`; its JSON.
fn prepare_root(cache: &std::path::Path, image: &str) -> serde_json::Value {
    let (code, stdout, stderr) = run_krbottle(
        cache,
        &["image", "prepare", image, "--ownership", "root", "--json"],
    );
    assert_eq!(code, 0, "prepare {image} failed:\n{stderr}");
    serde_json::from_str(&stdout).expect("--json prints JSON")
}

/// Compares a prepared entry's root filesystem with Docker's export of `image`.
fn compare_prepared(prepared: &serde_json::Value, image: &str) -> std::path::PathBuf {
    let rootfs = std::path::PathBuf::from(prepared["rootfs"].as_str().unwrap());
    let expected = oracle::from_export(common::docker_export(image));
    let actual = oracle::from_dir(&rootfs, &|id| id, &|id| id);
    oracle::assert_same(
        &expected,
        &actual,
        &format!("krbottle image prepare of {image}"),
    );
    rootfs
}

/// The layer features again, through `image prepare`: as root, with an overlay-style engine, the
/// layers come from the engine's own layer directories into the layer cache and the root is
/// assembled from there.
#[test]
fn layer_features_match_docker_through_the_layer_cache() {
    if !require_docker("layer_features_match_docker_through_the_layer_cache") {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        common::skip_or_fail(&common::current_test(), "the engine's layer dirs need root");
        return;
    }
    let tag = docker_build(
        "krbottle-test/oracle-layers:latest",
        &layers_dockerfile(),
        &[("caps.tar", &caps_tar())],
    );
    // Linked: a cache beside the engine's storage (same mount), every entry a hard link to the
    // engine's own file. Copied: the same with links turned off.
    let docker_root = common::run(std::process::Command::new("docker").args([
        "info",
        "-f",
        "{{.DockerRootDir}}",
    ]))
    .1;
    let beside = tempfile::Builder::new()
        .prefix("krbottle-test-cache-")
        .tempdir_in(docker_root.trim())
        .unwrap();
    let copied = tempfile::tempdir().unwrap();
    for (cache, copy) in [(beside.path(), false), (copied.path(), true)] {
        let mut cmd = common::krbottle();
        cmd.args(["image", "prepare", &tag, "--ownership", "root", "--json"])
            .env("KRBOTTLE_CACHE_DIR", cache);
        if copy {
            cmd.env("KRBOTTLE_NO_ENGINE_LINKS", "1");
        }
        let (out, stdout, stderr) = common::run(&mut cmd);
        assert!(out.status.success(), "prepare {tag} failed:\n{stderr}");
        let prepared: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let summary = &prepared["meta"]["summary"];
        assert!(
            summary["layer_entries"]
                .as_array()
                .is_some_and(|l| !l.is_empty()),
            "the layer cache was not used: {prepared}"
        );
        let links = summary["engine_links"].as_u64().unwrap();
        assert_eq!(links == 0, copy, "engine links with copy={copy}: {summary}");
        let root = compare_prepared(&prepared, &tag);
        assert!(!root.join("opt/a/x").exists() && root.join("opt/a/new").exists());
        let mut buf = [0u8; 64];
        let n = rustix::fs::lgetxattr(root.join("opt/cap-bin"), "security.capability", &mut buf)
            .expect("security.capability kept");
        assert_eq!(n, 20);
        // A linked file is the engine's inode (names: the engine's, the snapshot's, the root's);
        // a copy is only ours (the snapshot's and the root's).
        use std::os::unix::fs::MetadataExt;
        let nlink = std::fs::metadata(root.join("opt/a/new")).unwrap().nlink();
        assert_eq!(nlink > 2, !copy, "link count {nlink} with copy={copy}");
    }
}

/// The agent-shaped fixture of `bench prepare`, small, built with the docker CLI.
fn agent_fixture(stamp: u32) -> String {
    let dockerfile = include_str!("../src/bench/agent-fixture.Dockerfile")
        .replace("ARG FILES=2000", "ARG FILES=300")
        .replace("ARG KB=4", "ARG KB=1")
        .replace("ARG STAMP=1", &format!("ARG STAMP={stamp}"));
    docker_build(
        &format!("krbottle-test/agent-fixture:{stamp}"),
        &dockerfile,
        &[],
    )
}

/// A rebuild whose last layer changed reuses every other layer from the layer cache (the two
/// roots share those files on disk), sees the new layer's change and not the old file, matches
/// Docker both times, and `image prune --all` removes the roots and their cached layers.
#[test]
fn rebuilt_image_reuses_cached_layers_and_matches_docker() {
    if !require_docker("rebuilt_image_reuses_cached_layers_and_matches_docker") {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        common::skip_or_fail(&common::current_test(), "the engine's layer dirs need root");
        return;
    }
    let (first, rebuilt) = (agent_fixture(1), agent_fixture(2));
    let work = tempfile::tempdir().unwrap();
    let a = prepare_root(work.path(), &first);
    let b = prepare_root(work.path(), &rebuilt);
    let layers = |v: &serde_json::Value| -> Vec<String> {
        v["meta"]["summary"]["layer_entries"]
            .as_array()
            .expect("assembled from the layer cache")
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    };
    // Each root names the snapshot of its stack without the top layer: the same one, only the
    // top layer differs. (The whole stack is the image's root itself.)
    let (la, lb) = (layers(&a), layers(&b));
    assert_eq!((la.len(), lb.len()), (1, 1), "{la:?} {lb:?}");
    assert_eq!(la[0], lb[0], "the unchanged layers are shared");
    let ra = compare_prepared(&a, &first);
    let rb = compare_prepared(&b, &rebuilt);
    assert_eq!(
        std::fs::read_to_string(rb.join("opt/agent/VERSION")).unwrap(),
        "2\n"
    );
    assert_eq!(
        std::fs::read_to_string(ra.join("opt/agent/VERSION")).unwrap(),
        "1\n"
    );
    use std::os::unix::fs::MetadataExt;
    let ino = |root: &std::path::Path| {
        std::fs::symlink_metadata(root.join("opt/agent/node_modules/pkg0/lib/m0.js"))
            .unwrap()
            .ino()
    };
    assert_eq!(
        ino(&ra),
        ino(&rb),
        "shared layers share their files on disk"
    );
    // The deletions of the fixture took effect (the oracle would also see it).
    assert!(!ra.join("opt/agent/node_modules/pkg1").exists());
    assert!(!ra.join("opt/agent/cache/old").exists());

    // An image built on the first: its whole stack is linked from the first's root, the two
    // layers above it imported, deletions in them applied to the linked files.
    let derived = docker_build(
        "krbottle-test/agent-fixture:derived",
        &format!(
            "FROM {first}\nRUN rm -rf /opt/agent/node_modules/pkg2 /etc/motd && echo d > /opt/d\n\
             RUN echo top > /opt/agent/VERSION && mkdir -p /opt/agent/node_modules/pkg2\n"
        ),
        &[],
    );
    let d = prepare_root(work.path(), &derived);
    let rd = compare_prepared(&d, &derived);
    assert_eq!(ino(&ra), ino(&rd));
    assert!(!rd.join("opt/agent/node_modules/pkg2/lib").exists());

    let (code, stdout, stderr) = run_krbottle(work.path(), &["image", "prune", "--all", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let pruned: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(pruned["removed"].as_array().unwrap().len(), 3, "{pruned}");
    // The stack below the top (shared by the first and the rebuilt) and the derived's below
    // its top (linked from the first's root).
    assert_eq!(pruned["layers"], 2, "{pruned}");
    let left: Vec<_> = std::fs::read_dir(work.path().join("layers"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "layers left: {left:?}");
}
