//! The bundle image, built through the Docker API from `bundle/Dockerfile`, only when its
//! inputs changed: the tag and a label carry the hash of the Dockerfile, the binary's origin
//! and bytes, and the base image's ID.
//!
//! The krbottle binary in the image comes from one of two [`Origin`]s: this very binary when it
//! can run in the bundle (a Linux host of the engine's architecture), or else compiled in the
//! image's build stage from the crate source that build.rs packs into every binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, ListImagesOptions, LogsOptions, RemoveContainerOptions,
    RemoveImageOptions, StartContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::bundle::layout::{BINARY, LABEL_IMAGE_INPUTS};
use crate::docker::{BuildRequest, DockerError, Engine};
use crate::env_vars;

/// The Dockerfile, carried in the binary so an installed krbottle can build its bundle.
pub const DOCKERFILE: &str = include_str!("../../bundle/Dockerfile");
/// This crate's source (Cargo.toml, Cargo.lock, build.rs, src/, bundle/Dockerfile), packed by
/// build.rs: what the build stage compiles for [`Origin::Source`].
pub const SOURCE_TAR_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/source.tar.gz"));
pub use crate::image::BASE_IMAGE;
/// Repository of bundle images; the tag is a prefix of the inputs' hash.
pub const IMAGE_REPO: &str = "krbottle/bundle";
/// The cargo profile a source build uses unless [`env_vars::KRBOTTLE_BUNDLE_PROFILE`] says.
pub const DEFAULT_PROFILE: &str = "release";

/// Where the bundle image's krbottle binary comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The host's own binary, copied in.
    Host(PathBuf),
    /// Compiled in the image's build stage from [`SOURCE_TAR_GZ`] with this cargo profile.
    Source { profile: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("Cannot read the krbottle binary {} to put in the bundle image", path.display())]
    ReadBinary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Base image {image} is missing: run scripts/build-base-image.sh (no registry is used)")]
    FindBase {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Cannot ask the Docker engine for its version and architecture")]
    EngineVersion(#[source] bollard::errors::Error),
    #[error(
        "{var}={value:?} is not a bundle binary origin: use `host` (copy this binary) or `source` (compile it in the image)",
        var = env_vars::KRBOTTLE_BUNDLE_FROM
    )]
    BadOrigin { value: String },
    #[error(
        "{var}={value:?} is not a cargo profile name",
        var = env_vars::KRBOTTLE_BUNDLE_PROFILE
    )]
    BadProfile { value: String },
    #[error(
        "cannot use {} as the bundle build's extra CA ({var}): {why}",
        path.display(),
        var = env_vars::KRBOTTLE_BUNDLE_BUILD_CA
    )]
    BuildCa { path: PathBuf, why: String },
    #[error("Cannot build the bundle image {tag}")]
    Build {
        tag: String,
        #[source]
        source: DockerError,
    },
    #[error("Building the bundle image {tag} failed: {message}{hint}")]
    BuildStep {
        tag: String,
        message: String,
        hint: &'static str,
    },
    #[error(
        "the krbottle binary in the bundle image {tag} does not run there ({output})\nIf this krbottle was linked against a newer glibc than Debian bookworm's, set KRBOTTLE_BUNDLE_FROM=source to compile it in the image."
    )]
    BinaryDoesNotRun { tag: String, output: String },
    #[error("Cannot remove stale bundle images")]
    Prune {
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Cannot pack the bundle image's build context")]
    PackContext(#[source] std::io::Error),
}

/// What a failed host-origin build most likely needs.
const HOST_BUILD_HINT: &str = "\nCheck that the base image exists (scripts/build-base-image.sh) and the engine has disk space.";
/// What a failed source-origin build most likely needs.
const SOURCE_BUILD_HINT: &str = concat!(
    "\nCompiling krbottle in the image needs static.rust-lang.org and crates.io from the Docker ",
    "engine (behind a TLS-intercepting proxy, point KRBOTTLE_BUNDLE_BUILD_CA at its CA file); ",
    "run `krbottle bundle up -v` for the build's output."
);

use crate::docker::inputs_hash;

/// Engine architecture names (Go's `GOARCH`) of Rust's `target_arch` values.
fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Where the binary comes from: [`env_vars::KRBOTTLE_BUNDLE_FROM`] when set, else the host's
/// `binary` when this is Linux on the engine's OS and architecture, else a source build.
pub async fn choose_origin(engine: &Engine, binary: &Path) -> Result<Origin, ImageError> {
    let profile = match std::env::var(env_vars::KRBOTTLE_BUNDLE_PROFILE) {
        Ok(p) if is_profile_name(&p) => p,
        Ok(value) => return Err(ImageError::BadProfile { value }),
        Err(_) => DEFAULT_PROFILE.to_string(),
    };
    let source = Origin::Source { profile };
    match std::env::var(env_vars::KRBOTTLE_BUNDLE_FROM).as_deref() {
        Ok("host") => return Ok(Origin::Host(binary.to_path_buf())),
        Ok("source") => return Ok(source),
        Ok(other) => {
            return Err(ImageError::BadOrigin {
                value: other.to_string(),
            });
        }
        Err(_) => {}
    }
    let engine = engine
        .client()
        .version()
        .await
        .map_err(ImageError::EngineVersion)?;
    let same_platform = cfg!(target_os = "linux")
        && engine.os.as_deref() == Some("linux")
        && engine.arch.as_deref() == Some(go_arch(std::env::consts::ARCH));
    Ok(if same_platform {
        Origin::Host(binary.to_path_buf())
    } else {
        source
    })
}

fn is_profile_name(p: &str) -> bool {
    !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A planned build: the tag, the inputs' hash, and the build context.
struct BuildPlan {
    tag: String,
    hash: String,
    origin: Origin,
    /// The host binary's bytes ([`Origin::Host`]), read only when the image is built.
    binary: Vec<u8>,
    /// PEM certificates, one each, the build stage trusts for its downloads
    /// ([`env_vars::KRBOTTLE_BUNDLE_BUILD_CA`]). They change no output, so no hash.
    build_cas: Vec<String>,
}

async fn plan(engine: &Engine, origin: Origin) -> Result<BuildPlan, ImageError> {
    let docker = engine.client();
    let base = docker
        .inspect_image(BASE_IMAGE)
        .await
        .map_err(|source| ImageError::FindBase {
            image: BASE_IMAGE.to_string(),
            source,
        })?;
    let base_id = base.id.unwrap_or_default();
    let (binary, hash) = match &origin {
        Origin::Host(path) => {
            let digest = binary_digest(path).map_err(|source| ImageError::ReadBinary {
                path: path.clone(),
                source,
            })?;
            let hash = inputs_hash(&[
                DOCKERFILE.as_bytes(),
                b"host",
                digest.as_bytes(),
                base_id.as_bytes(),
            ]);
            (Vec::new(), hash)
        }
        Origin::Source { profile } => {
            let hash = inputs_hash(&[
                DOCKERFILE.as_bytes(),
                format!("source:{profile}").as_bytes(),
                SOURCE_TAR_GZ,
                base_id.as_bytes(),
            ]);
            (Vec::new(), hash)
        }
    };
    let build_cas = match (
        &origin,
        std::env::var_os(env_vars::KRBOTTLE_BUNDLE_BUILD_CA),
    ) {
        (Origin::Source { .. }, Some(path)) => read_build_cas(Path::new(&path))?,
        _ => Vec::new(),
    };
    Ok(BuildPlan {
        tag: format!("{IMAGE_REPO}:{}", &hash[..16]),
        hash,
        origin,
        binary,
        build_cas,
    })
}

/// The certificates of a PEM file, each re-encoded on its own (update-ca-certificates wants
/// one per file).
fn read_build_cas(path: &Path) -> Result<Vec<String>, ImageError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bad = |why: String| ImageError::BuildCa {
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("it holds no PEM certificate".into()));
    }
    Ok(certs.iter().map(|c| pem("CERTIFICATE", c)).collect())
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The SHA-256 of the binary at `path`, remembered in the cache dir under the file's identity
/// (device, inode, size, modification time), so each start does not read and hash the whole
/// binary again: a rebuilt binary is a new file or a new mtime.
fn binary_digest(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let identity = format!(
        "{}-{}-{}-{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let memo = crate::image::cache::Cache::open_default()
        .ok()
        .map(|c| c.root().join("bundle-binaries").join(identity));
    if let Some(memo) = &memo
        && let Ok(text) = std::fs::read_to_string(memo)
        && text.len() == 64
    {
        return Ok(text);
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    let digest = hex::encode(hasher.finalize());
    if let Some(memo) = memo
        && let Some(dir) = memo.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let _ = crate::sys::fs::write_atomic(&memo, digest.as_bytes(), 0o644);
    }
    Ok(digest)
}

/// The tag of the bundle image for `origin` (built or not).
pub async fn current_tag(engine: &Engine, origin: Origin) -> Result<String, ImageError> {
    Ok(plan(engine, origin).await?.tag)
}

/// Removes the bundle image tags other than `keep` whose image no container uses; returns
/// the removed tags. Untagging by name leaves images that other repositories share.
pub async fn prune_stale(engine: &Engine, keep: &str) -> Result<Vec<String>, ImageError> {
    let docker = engine.client();
    let prune = |source| ImageError::Prune { source };
    let images = docker
        .list_images(Some(ListImagesOptions {
            filters: Some(HashMap::from([(
                "reference".to_string(),
                vec![IMAGE_REPO.to_string()],
            )])),
            ..Default::default()
        }))
        .await
        .map_err(prune)?;
    let mut removed = Vec::new();
    for image in images {
        if image.repo_tags.iter().any(|t| t == keep) {
            continue;
        }
        match docker
            .remove_image(&image.id, None::<RemoveImageOptions>, None)
            .await
        {
            Ok(_) => removed.push(image.id),
            // In use by a container (another state directory's bundle): keep it.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(source) => return Err(prune(source)),
        }
    }
    Ok(removed)
}

/// Makes sure the bundle image with a binary from `origin` exists; returns its tag. A source
/// build takes minutes the first time (`-v` shows its output); later calls find the image.
pub async fn ensure(engine: &Engine, origin: Origin) -> Result<String, ImageError> {
    let docker = engine.client();
    let plan = plan(engine, origin).await?;
    let tag = plan.tag.clone();
    if let Ok(existing) = docker.inspect_image(&tag).await {
        let label = existing
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(LABEL_IMAGE_INPUTS).cloned());
        if label.as_deref() == Some(plan.hash.as_str()) {
            return Ok(tag);
        }
    }
    let mut plan = plan;
    if let Origin::Host(path) = &plan.origin {
        plan.binary = std::fs::read(path).map_err(|source| ImageError::ReadBinary {
            path: path.clone(),
            source,
        })?;
    }
    let context = pack_context(&plan).map_err(ImageError::PackContext)?;
    let mut buildargs = HashMap::from([("BASE".to_string(), BASE_IMAGE.to_string())]);
    let (target, hint) = match &plan.origin {
        Origin::Host(_) => ("from-host", HOST_BUILD_HINT),
        Origin::Source { profile } => {
            tracing::info!(
                "compiling krbottle ({profile} profile) inside the bundle image; the first time takes minutes"
            );
            buildargs.insert("CARGO_PROFILE".into(), profile.clone());
            ("from-source", SOURCE_BUILD_HINT)
        }
    };
    let request = BuildRequest {
        what: format!("the bundle image {tag}"),
        context_tar: context,
        tag: tag.clone(),
        target: Some(target.into()),
        build_args: buildargs,
        labels: HashMap::from([(LABEL_IMAGE_INPUTS.to_string(), plan.hash.clone())]),
        ..Default::default()
    };
    let built = engine
        .build(request, |line| {
            tracing::debug!("bundle build: {}", line.trim_end())
        })
        .await;
    match built {
        Ok(_) => {}
        Err(DockerError::Build { message, .. }) => {
            return Err(ImageError::BuildStep { tag, message, hint });
        }
        Err(source) => return Err(ImageError::Build { tag, source }),
    }
    if let Err(e) = check_runs(engine, &tag).await {
        // Not kept: a later call would take it for a good image.
        let _ = docker
            .remove_image(&tag, None::<RemoveImageOptions>, None)
            .await;
        return Err(e);
    }
    Ok(tag)
}

/// Runs `krbottle --version` in a throwaway container of `tag`, so a binary that cannot run in
/// the base (say, a host binary linked against a newer glibc) fails here, with a hint, rather
/// than as a bundle whose daemons never answer.
async fn check_runs(engine: &Engine, tag: &str) -> Result<(), ImageError> {
    let docker = engine.client();
    let fail = |output: String| ImageError::BinaryDoesNotRun {
        tag: tag.to_string(),
        output,
    };
    let body = ContainerCreateBody {
        image: Some(tag.to_string()),
        entrypoint: Some(vec![BINARY.to_string()]),
        cmd: Some(vec!["--version".to_string()]),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let id = created.id;
    let run = async {
        docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .map_err(|e| e.to_string())?;
        let code = match docker
            .wait_container(&id, None::<WaitContainerOptions>)
            .next()
            .await
        {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the check container vanished".to_string()),
        };
        let mut output = String::new();
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut logs = docker.logs(&id, Some(options));
        while let Some(Ok(chunk)) = logs.next().await {
            output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        if code == 0 && output.starts_with("krbottle ") {
            Ok(())
        } else {
            Err(format!("exit code {code}: {}", output.trim()))
        }
    }
    .await;
    let remove = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    let _ = docker.remove_container(&id, Some(remove)).await;
    run.map_err(fail)
}

/// The build context: the Dockerfile, `bin/` (the host binary, or empty) and `source/` (the
/// packed source, or empty).
fn pack_context(plan: &BuildPlan) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let dir = |tar: &mut tar::Builder<Vec<u8>>, name: &str| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, std::io::empty())
    };
    // `certs/` is copied whether or not it holds any (a COPY needs its source to exist).
    dir(&mut tar, "bin/")?;
    dir(&mut tar, "source/")?;
    dir(&mut tar, "certs/")?;
    let mut files = vec![("Dockerfile".to_string(), DOCKERFILE.as_bytes(), 0o644)];
    match &plan.origin {
        Origin::Host(_) => files.push(("bin/krbottle".into(), &plan.binary, 0o755)),
        Origin::Source { .. } => {
            // The classic builder builds `from-host` too (it precedes the target); it gets an
            // empty placeholder and is thrown away.
            files.push(("bin/krbottle".into(), &[], 0o644));
            files.push(("source/source.tar.gz".into(), SOURCE_TAR_GZ, 0o644));
        }
    }
    for (i, cert) in plan.build_cas.iter().enumerate() {
        files.push((format!("certs/extra-{i}.crt"), cert.as_bytes(), 0o644));
    }
    for (name, data, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, &name, data)?;
    }
    tar.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::BottleCa;

    #[test]
    fn hash_changes_with_each_input() {
        let base = inputs_hash(&[b"FROM x", b"bin", b"sha256:1"]);
        assert_ne!(base, inputs_hash(&[b"FROM y", b"bin", b"sha256:1"]));
        assert_ne!(base, inputs_hash(&[b"FROM x", b"bin2", b"sha256:1"]));
        assert_ne!(base, inputs_hash(&[b"FROM x", b"bin", b"sha256:2"]));
        // Length prefixes keep boundaries: moving bytes between inputs changes the hash.
        assert_ne!(inputs_hash(&[b"ab", b"c"]), inputs_hash(&[b"a", b"bc"]));
        assert_eq!(base, inputs_hash(&[b"FROM x", b"bin", b"sha256:1"]));
    }

    #[test]
    fn dockerfile_installs_the_binary_where_layout_says() {
        let bin = crate::bundle::layout::BINARY;
        let stage = |name: &str| {
            let from = DOCKERFILE
                .find(&format!(" AS {name}\n"))
                .unwrap_or_else(|| panic!("no stage {name}"));
            let rest = &DOCKERFILE[from..];
            let end = rest[1..].find("\nFROM ").map_or(rest.len(), |e| e + 1);
            rest[..end].to_string()
        };
        let host = stage("from-host");
        let source = stage("from-source");
        // Each target ends with its one COPY of the binary (moby/moby#37965).
        assert!(
            host.trim_end()
                .ends_with(&format!("COPY bin/krbottle {bin}")),
            "{host}"
        );
        let copy = format!("COPY --from=build /out/krbottle {bin}");
        assert!(source.trim_end().ends_with(&copy), "{source}");
        assert!(DOCKERFILE.find(" AS from-host").unwrap() < DOCKERFILE.find(" AS build").unwrap());
        assert!(DOCKERFILE.contains(&format!("ENTRYPOINT [\"{bin}\", \"bundle\", \"init\"]")));
        assert!(DOCKERFILE.contains(BASE_IMAGE));
    }

    #[test]
    fn dockerfile_toolchain_is_the_crate_rust_version() {
        let manifest: toml::Table = SOURCE_FILE_CARGO_TOML.parse().unwrap();
        let want = manifest["package"]["rust-version"].as_str().unwrap();
        let arg = DOCKERFILE
            .lines()
            .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
            .expect("the Dockerfile pins RUST_VERSION");
        assert!(
            arg == want || arg.starts_with(&format!("{want}.")),
            "Dockerfile RUST_VERSION {arg} vs Cargo.toml rust-version {want}"
        );
    }

    const SOURCE_FILE_CARGO_TOML: &str = include_str!("../../Cargo.toml");

    /// The packed source holds what `cargo build --locked --bin krbottle` needs, as the files
    /// this crate was built from.
    #[test]
    fn packed_source_is_this_crate() {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(SOURCE_TAR_GZ));
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if name == "Cargo.toml" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
                assert_eq!(text, SOURCE_FILE_CARGO_TOML);
            }
            if name == "bundle/Dockerfile" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
                assert_eq!(text, DOCKERFILE);
            }
            names.push(name);
        }
        for want in [
            "Cargo.toml",
            "Cargo.lock",
            "build.rs",
            "bundle/Dockerfile",
            "src/main.rs",
            "src/lib.rs",
            "src/bundle/image.rs",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "entries are sorted, for a stable hash");
    }

    #[test]
    fn context_holds_one_binary_origin() {
        let list = |origin: Origin, binary: &[u8]| {
            let plan = BuildPlan {
                tag: String::new(),
                hash: String::new(),
                origin,
                binary: binary.to_vec(),
                build_cas: vec!["PEM".into()],
            };
            let tar = pack_context(&plan).unwrap();
            tar::Archive::new(tar.as_slice())
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            list(Origin::Host("/x".into()), b"ELF"),
            [
                "bin/",
                "source/",
                "certs/",
                "Dockerfile",
                "bin/krbottle",
                "certs/extra-0.crt"
            ]
        );
        assert_eq!(
            list(
                Origin::Source {
                    profile: "dev".into()
                },
                b""
            ),
            [
                "bin/",
                "source/",
                "certs/",
                "Dockerfile",
                "bin/krbottle",
                "source/source.tar.gz",
                "certs/extra-0.crt"
            ]
        );
    }

    #[test]
    fn build_cas_are_split_one_per_file_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let two = dir.path().join("two.pem");
        let a = BottleCa::generate("a").unwrap();
        let b = BottleCa::generate("b").unwrap();
        std::fs::write(&two, format!("{}{}", a.cert_pem(), b.cert_pem())).unwrap();
        let cas = read_build_cas(&two).unwrap();
        assert_eq!(cas.len(), 2);
        assert_eq!(cas[0].trim(), a.cert_pem().trim());
        assert_eq!(cas[1].trim(), b.cert_pem().trim());

        let none = dir.path().join("none.pem");
        std::fs::write(&none, "not a certificate\n").unwrap();
        let err = read_build_cas(&none).unwrap_err().to_string();
        assert!(
            err.contains("none.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = read_build_cas(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            err.to_string().contains("KRBOTTLE_BUNDLE_BUILD_CA"),
            "{err}"
        );
    }

    #[test]
    fn engine_arch_names() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert!(is_profile_name("release") && is_profile_name("dev") && is_profile_name("my_p-1"));
        assert!(!is_profile_name("") && !is_profile_name("../x") && !is_profile_name("a b"));
    }
}
