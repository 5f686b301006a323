//! The unpacker against an oracle nobody here wrote: Docker's own flattening of the same image.
//!
//! Each test builds an image from the local Debian base with a Dockerfile that exercises one
//! family of layer features, unpacks it with `krbottle image unpack`, exports a container of it
//! through Docker, and requires zero differences entry by entry (see `common/oracle.rs`).

mod common;

use std::process::Command;

use common::oracle;
use common::{BASE_IMAGE, docker_build, require_docker, run_krbottle};
use krbottle::image::docker::Engine;

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

    let engine = Engine::connect().unwrap();
    let expected = oracle::from_export(engine.export_filesystem(image).unwrap());
    let actual = oracle::from_dir(&dest, &|id| id);
    let diffs = oracle::diff(&expected, &actual);
    assert!(
        diffs.is_empty(),
        "{} differences between docker export and krbottle unpack of {image}:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
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

#[test]
fn example_agent_image_matches_docker_and_uid_1000_can_work() {
    if !require_docker("example_agent_image_matches_docker_and_uid_1000_can_work") {
        return;
    }
    let engine = Engine::connect().unwrap();
    let ctx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent");
    let tag = "krbottle-test/example-agent:latest";
    engine
        .build(&ctx, None, tag, &indicatif::ProgressBar::hidden(), |_| {})
        .unwrap();
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
