//! The bundle image, built through the Docker API from `bundle/Dockerfile` and this very
//! binary, only when its inputs changed: the tag and a label carry the hash of the Dockerfile,
//! the binary and the base image's ID.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, ListImagesOptions, RemoveImageOptions};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::bundle::layout::LABEL_IMAGE_INPUTS;

/// The Dockerfile, carried in the binary so an installed krbottle can build its bundle.
pub const DOCKERFILE: &str = include_str!("../../bundle/Dockerfile");
pub use crate::image::BASE_IMAGE;
/// Repository of bundle images; the tag is a prefix of the inputs' hash.
pub const IMAGE_REPO: &str = "krbottle/bundle";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read the krbottle binary {} to put in the bundle image", path.display())]
    ReadBinary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("base image {image} is missing: run scripts/build-base-image.sh (no registry is used)")]
    FindBase {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot build the bundle image {tag}")]
    Build {
        tag: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("building the bundle image {tag} failed: {message}")]
    BuildStep { tag: String, message: String },
    #[error("cannot remove stale bundle images")]
    Prune {
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot pack the bundle image's build context")]
    PackContext(#[source] std::io::Error),
}

/// The hash of the bundle image's inputs.
pub fn inputs_hash(dockerfile: &str, binary: &[u8], base_id: &str) -> String {
    let mut h = Sha256::new();
    for part in [dockerfile.as_bytes(), binary, base_id.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// The tag the bundle image of `binary` has, its inputs' hash, and the binary's bytes.
async fn plan(docker: &Docker, binary: &Path) -> Result<(String, String, Vec<u8>), ImageError> {
    let bytes = std::fs::read(binary).map_err(|source| ImageError::ReadBinary {
        path: binary.to_path_buf(),
        source,
    })?;
    let base = docker
        .inspect_image(BASE_IMAGE)
        .await
        .map_err(|source| ImageError::FindBase {
            image: BASE_IMAGE.to_string(),
            source,
        })?;
    let hash = inputs_hash(DOCKERFILE, &bytes, base.id.as_deref().unwrap_or_default());
    let tag = format!("{IMAGE_REPO}:{}", &hash[..16]);
    Ok((tag, hash, bytes))
}

/// The tag of the bundle image for `binary` (built or not).
pub async fn current_tag(docker: &Docker, binary: &Path) -> Result<String, ImageError> {
    Ok(plan(docker, binary).await?.0)
}

/// Removes the bundle image tags other than `keep` whose image no container uses; returns
/// the removed tags. Untagging by name leaves images that other repositories share.
pub async fn prune_stale(docker: &Docker, keep: &str) -> Result<Vec<String>, ImageError> {
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

/// Makes sure the bundle image for `binary` exists; returns its tag.
pub async fn ensure(docker: &Docker, binary: &Path) -> Result<String, ImageError> {
    let (tag, hash, bytes) = plan(docker, binary).await?;
    if let Ok(existing) = docker.inspect_image(&tag).await {
        let label = existing
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(LABEL_IMAGE_INPUTS).cloned());
        if label.as_deref() == Some(hash.as_str()) {
            return Ok(tag);
        }
    }
    let context = pack_context(&bytes).map_err(ImageError::PackContext)?;
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.clone()),
        rm: true,
        forcerm: true,
        labels: Some(HashMap::from([(
            LABEL_IMAGE_INPUTS.to_string(),
            hash.clone(),
        )])),
        buildargs: Some(HashMap::from([(
            "BASE".to_string(),
            BASE_IMAGE.to_string(),
        )])),
        ..Default::default()
    };
    let mut stream = docker.build_image(
        options,
        None,
        Some(bollard::body_full(bytes::Bytes::from(context))),
    );
    while let Some(item) = stream.next().await {
        let info = item.map_err(|source| ImageError::Build {
            tag: tag.clone(),
            source,
        })?;
        if let Some(detail) = info.error_detail {
            return Err(ImageError::BuildStep {
                tag,
                message: detail.message.unwrap_or_default(),
            });
        }
        if let Some(line) = info.stream {
            tracing::debug!("bundle build: {}", line.trim_end());
        }
    }
    Ok(tag)
}

/// A tar of the Dockerfile and the binary.
fn pack_context(binary: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("Dockerfile", DOCKERFILE.as_bytes(), 0o644),
        ("krbottle", binary, 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, data)?;
    }
    tar.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_each_input() {
        let base = inputs_hash("FROM x", b"bin", "sha256:1");
        assert_ne!(base, inputs_hash("FROM y", b"bin", "sha256:1"));
        assert_ne!(base, inputs_hash("FROM x", b"bin2", "sha256:1"));
        assert_ne!(base, inputs_hash("FROM x", b"bin", "sha256:2"));
        // Length prefixes keep boundaries: moving bytes between inputs changes the hash.
        assert_ne!(inputs_hash("ab", b"c", ""), inputs_hash("a", b"bc", ""));
        assert_eq!(base, inputs_hash("FROM x", b"bin", "sha256:1"));
    }

    #[test]
    fn dockerfile_copies_the_binary_where_layout_says() {
        assert!(DOCKERFILE.contains(&format!("COPY krbottle {}", crate::bundle::layout::BINARY)));
        assert!(DOCKERFILE.contains(BASE_IMAGE));
    }
}
