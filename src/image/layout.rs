//! The `docker save` layouts: which blobs are the image's layers, in which order, with which
//! digests.
//!
//! Two layouts exist. Docker's own (`manifest.json` → `Config` + `Layers`, legacy
//! `<v1id>/layer.tar` names up to Docker 24, `blobs/sha256/<hex>` since Docker 25) and OCI's
//! (`index.json` → manifest → config + layer descriptors). `manifest.json` is preferred when both
//! are present (Docker ≥ 25 writes both). Both give the config's `rootfs.diff_ids`, the digest of
//! each uncompressed layer; OCI (and Docker ≥ 25) also give each blob's digest in its name.
//! This module only reads the small JSON documents kept in memory; it touches no file.

use std::collections::HashMap;

use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::docker::ImageConfig;

/// Failures reading the save layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "The stream has neither manifest.json nor index.json; is it the output of `docker save`?"
    )]
    NoManifest,
    #[error("Cannot parse {name}; the save stream is corrupt")]
    ParseJson {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("Cannot parse OCI document {name}; the save stream is corrupt")]
    ParseOci {
        name: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("The save stream holds {count} images; save exactly one")]
    ImageCount { count: usize },
    #[error("{name} is referenced but missing from the save stream")]
    Missing { name: String },
    #[error("The config lists {diff_ids} layer digests but the manifest lists {layers} layers")]
    LayerCountMismatch { layers: usize, diff_ids: usize },
    #[error("Unsupported digest {digest}; only sha256 is supported")]
    UnsupportedDigest { digest: String },
    #[error("{name} has digest {actual}, expected {expected}; the save stream is corrupt")]
    DigestMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("No image manifest found under {name}")]
    NoImageManifest { name: String },
}

/// One layer of the image, bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// Name of the blob in the save stream (`<v1id>/layer.tar`, `blobs/sha256/<hex>`).
    pub name: String,
    /// `sha256:<hex>` of the blob as stored, when the layout states it.
    pub blob_digest: Option<String>,
    /// `sha256:<hex>` of the uncompressed layer tar.
    pub diff_id: String,
}

/// What to stack, in order, the image's id (`sha256:` of its config) and its process config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayout {
    pub image_id: String,
    pub layers: Vec<LayerRef>,
    pub config: ImageConfig,
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The digest a blob name states (`blobs/sha256/<hex>`), if it follows the OCI blob naming.
pub fn digest_from_blob_name(name: &str) -> Option<String> {
    let hex = name.strip_prefix("blobs/sha256/")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| format!("sha256:{hex}"))
}

/// The save-stream name of the blob with `digest`.
fn blob_name(digest: &str) -> Result<String, LayoutError> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 => Ok(format!("blobs/sha256/{hex}")),
        _ => Err(LayoutError::UnsupportedDigest {
            digest: digest.to_owned(),
        }),
    }
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: RootfsDiffIds,
    #[serde(default)]
    config: Option<ProcessConfig>,
}

/// The image config's `config` object (OCI and Docker spell it alike).
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ProcessConfig {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RootfsDiffIds {
    diff_ids: Vec<String>,
}

/// Resolves the plan from the JSON documents of the stream (name → bytes).
pub fn resolve(json: &HashMap<String, Vec<u8>>) -> Result<ImageLayout, LayoutError> {
    if let Some(bytes) = json.get("manifest.json") {
        resolve_docker(json, bytes)
    } else if let Some(bytes) = json.get("index.json") {
        resolve_oci(json, bytes)
    } else {
        Err(LayoutError::NoManifest)
    }
}

fn get<'a>(json: &'a HashMap<String, Vec<u8>>, name: &str) -> Result<&'a [u8], LayoutError> {
    json.get(name)
        .map(Vec::as_slice)
        .ok_or_else(|| LayoutError::Missing {
            name: name.to_owned(),
        })
}

/// Checks a JSON blob against the digest its name or descriptor states.
fn verify(name: &str, bytes: &[u8], expected: Option<&str>) -> Result<String, LayoutError> {
    let actual = sha256_digest(bytes);
    if let Some(expected) = expected
        && expected != actual
    {
        return Err(LayoutError::DigestMismatch {
            name: name.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(actual)
}

/// The layer digests and the process config of an image config document.
fn read_config(name: &str, bytes: &[u8]) -> Result<(Vec<String>, ImageConfig), LayoutError> {
    let config: ConfigRootfs =
        serde_json::from_slice(bytes).map_err(|source| LayoutError::ParseJson {
            name: name.to_owned(),
            source,
        })?;
    let p = config.config.unwrap_or_default();
    let process = ImageConfig {
        user: p.user.unwrap_or_default(),
        working_dir: p.working_dir.unwrap_or_default(),
        entrypoint: p.entrypoint.unwrap_or_default(),
        cmd: p.cmd.unwrap_or_default(),
        env: p.env.unwrap_or_default(),
    };
    Ok((config.rootfs.diff_ids, process))
}

fn resolve_docker(
    json: &HashMap<String, Vec<u8>>,
    manifest: &[u8],
) -> Result<ImageLayout, LayoutError> {
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(manifest).map_err(|source| LayoutError::ParseJson {
            name: "manifest.json".into(),
            source,
        })?;
    let [entry] = entries.as_slice() else {
        return Err(LayoutError::ImageCount {
            count: entries.len(),
        });
    };
    let config = get(json, &entry.config)?;
    // Legacy names are `<hex>.json`; Docker ≥ 25 names are `blobs/sha256/<hex>`.
    let stated = digest_from_blob_name(&entry.config).or_else(|| {
        entry
            .config
            .strip_suffix(".json")
            .filter(|h| h.len() == 64)
            .map(|h| format!("sha256:{h}"))
    });
    let image_id = verify(&entry.config, config, stated.as_deref())?;
    let (diff_ids, process) = read_config(&entry.config, config)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(LayoutError::LayerCountMismatch {
            layers: entry.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(name, diff_id)| LayerRef {
            blob_digest: digest_from_blob_name(name),
            name: name.clone(),
            diff_id,
        })
        .collect();
    Ok(ImageLayout {
        image_id,
        layers,
        config: process,
    })
}

/// How deep nested indexes are followed (an index pointing at an index…).
const MAX_INDEX_DEPTH: usize = 4;

fn resolve_oci(json: &HashMap<String, Vec<u8>>, index: &[u8]) -> Result<ImageLayout, LayoutError> {
    let parse_err = |name: &str| {
        let name = name.to_owned();
        move |source| LayoutError::ParseOci { name, source }
    };
    let mut index = ImageIndex::from_reader(index).map_err(parse_err("index.json"))?;
    let mut index_name = "index.json".to_owned();
    for _ in 0..MAX_INDEX_DEPTH {
        let manifests = index.manifests();
        // An index may list attestations and other platforms next to the image; prefer an
        // entry for this machine's platform, else require exactly one candidate.
        let candidates: Vec<_> = manifests
            .iter()
            .filter(|d| {
                matches!(
                    d.media_type(),
                    MediaType::ImageManifest | MediaType::ImageIndex
                ) || d
                    .media_type()
                    .to_string()
                    .contains("docker.distribution.manifest")
            })
            .filter(|d| !is_attestation(d))
            .collect();
        let native: Vec<_> = candidates
            .iter()
            .copied()
            .filter(|d| {
                d.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == host_oci_arch()
                })
            })
            .collect();
        let chosen = match (native.as_slice(), candidates.as_slice()) {
            ([one], _) | ([], [one]) => *one,
            (_, list) => return Err(LayoutError::ImageCount { count: list.len() }),
        };
        let digest = chosen.digest().to_string();
        let name = blob_name(&digest)?;
        let bytes = get(json, &name)?;
        verify(&name, bytes, Some(&digest))?;
        if matches!(chosen.media_type(), MediaType::ImageIndex)
            || chosen.media_type().to_string().contains("manifest.list")
        {
            index = ImageIndex::from_reader(bytes).map_err(parse_err(&name))?;
            index_name = name;
            continue;
        }
        let manifest = ImageManifest::from_reader(bytes).map_err(parse_err(&name))?;
        let config_digest = manifest.config().digest().to_string();
        let config_name = blob_name(&config_digest)?;
        let config = get(json, &config_name)?;
        let image_id = verify(&config_name, config, Some(&config_digest))?;
        let (diff_ids, process) = read_config(&config_name, config)?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(LayoutError::LayerCountMismatch {
                layers: manifest.layers().len(),
                diff_ids: diff_ids.len(),
            });
        }
        let layers = manifest
            .layers()
            .iter()
            .zip(diff_ids)
            .map(|(d, diff_id)| {
                let digest = d.digest().to_string();
                Ok(LayerRef {
                    name: blob_name(&digest)?,
                    blob_digest: Some(digest),
                    diff_id,
                })
            })
            .collect::<Result<_, LayoutError>>()?;
        return Ok(ImageLayout {
            image_id,
            layers,
            config: process,
        });
    }
    Err(LayoutError::NoImageManifest { name: index_name })
}

/// BuildKit lists provenance/SBOM attestations as manifests for platform `unknown/unknown`.
fn is_attestation(d: &oci_spec::image::Descriptor) -> bool {
    let annotated = d.annotations().as_ref().is_some_and(|a| {
        a.get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
    });
    let unknown = d
        .platform()
        .as_ref()
        .is_some_and(|p| p.os().to_string() == "unknown");
    annotated || unknown
}

/// This machine's architecture as OCI names it.
fn host_oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names() {
        let hex = "a".repeat(64);
        let table = [
            (format!("blobs/sha256/{hex}"), Some(format!("sha256:{hex}"))),
            (format!("blobs/sha256/{}", "A".repeat(64)), None),
            ("blobs/sha256/abc".to_owned(), None),
            (format!("{hex}/layer.tar"), None),
        ];
        for (name, want) in table {
            assert_eq!(digest_from_blob_name(&name), want, "{name}");
        }
    }

    #[test]
    fn no_manifest_is_an_error() {
        let err = resolve(&HashMap::new()).unwrap_err();
        assert!(matches!(err, LayoutError::NoManifest), "{err}");
    }

    #[test]
    fn attestations_are_not_images() {
        let att = r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1,"annotations":{"vnd.docker.reference.type":"attestation-manifest"},"platform":{"os":"unknown","architecture":"unknown"}}"#;
        let img = r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":1}"#;
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{img},{att}]}}"#);
        let index = ImageIndex::from_reader(index.as_bytes()).unwrap();
        let chosen: Vec<_> = index
            .manifests()
            .iter()
            .filter(|d| !is_attestation(d))
            .collect();
        assert_eq!(chosen.len(), 1);
        assert!(chosen[0].digest().to_string().contains("bbbb"));
    }

    #[test]
    fn two_images_are_refused() {
        let mut json = HashMap::new();
        json.insert(
            "manifest.json".to_owned(),
            br#"[{"Config":"a.json","Layers":[]},{"Config":"b.json","Layers":[]}]"#.to_vec(),
        );
        let err = resolve(&json).unwrap_err();
        assert!(matches!(err, LayoutError::ImageCount { count: 2 }), "{err}");
    }
}
