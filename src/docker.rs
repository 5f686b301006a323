//! The one Docker engine client (bollard), shared by the image pipeline, the bundle, doctor and
//! `start`. Nothing else in the crate constructs a `bollard::Docker`.
//!
//! The client is async and lives on the process's one tokio runtime (see `commands::dispatch`).
//! Byte streams from the engine (`docker save`, a container's export) are bridged into a
//! blocking [`std::io::Read`] through a bounded channel, for the unpacker, which runs on a
//! blocking thread (`tokio::task::spawn_blocking`): it reads the stream as it arrives, with no
//! temporary tarball, and back-pressure reaches the engine's socket. Those readers must never be
//! read from an async task.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

/// Chunks buffered between the engine's socket and a blocking reader.
const STREAM_BUFFER_CHUNKS: usize = 32;

/// Docker label put on every container and image krbottle creates, so leftovers can be found.
pub const LABEL_TOOL: &str = "dev.krbottle.tool";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "Cannot reach the Docker engine ({endpoint}): start it (e.g. `systemctl start docker`) or point DOCKER_HOST at it"
    )]
    Connect {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("No image `{image}` in the local Docker engine: build it first, or check the name")]
    ImageNotFound { image: String },
    #[error("Cannot inspect image `{image}`")]
    Inspect {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("The engine returned no ID for image `{image}`")]
    MissingId { image: String },
    #[error("Cannot read the build context {path}")]
    Context {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Building {what} failed: {message}")]
    Build { what: String, message: String },
    #[error("Building {what} failed")]
    BuildRequest {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Cannot create a container from `{image}` to export it")]
    CreateContainer {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// The parts of an image's own config that decide how its process runs (`docker inspect`'s
/// `Config`): what a bottle's plan starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `USER`: a name or `uid[:gid]`; empty means root.
    #[serde(default)]
    pub user: String,
    /// `WORKDIR`; empty means `/`.
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `ENV`, as `NAME=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
}

/// What krbottle needs to know about an image.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageInfo {
    /// Content-addressed ID, `sha256:<hex>`.
    pub id: String,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<String>,
    pub tags: Vec<String>,
    /// Uncompressed size in bytes, as the engine reports it.
    pub size: Option<u64>,
    pub config: ImageConfig,
    /// The engine's own directory of each layer, bottom first, when its storage driver keeps
    /// layers as plain directories of their changes (`overlay2`, `fuse-overlayfs`) and reports
    /// one per layer. Whether they are readable from here is the caller's to find out.
    #[serde(skip)]
    pub layer_dirs: Option<Vec<std::path::PathBuf>>,
    /// The image's labels (`LABEL`, and those a build was given).
    #[serde(skip)]
    pub labels: HashMap<String, String>,
}

/// One image build: the context as a tar, and what to ask the engine for.
#[derive(Debug, Default)]
pub struct BuildRequest {
    /// What is built, for messages (a directory, or "the bundle image").
    pub what: String,
    pub context_tar: Vec<u8>,
    /// Relative to the context; `Dockerfile` when empty.
    pub dockerfile: String,
    pub tag: String,
    /// The stage to build (`--target`), if any.
    pub target: Option<String>,
    pub build_args: HashMap<String, String>,
    pub labels: HashMap<String, String>,
}

/// A connection to the local Docker engine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    client: Docker,
}

impl Engine {
    /// Connects with the usual defaults (`DOCKER_HOST`, else the local socket), negotiates the
    /// API version, so older engines (this project's CI runs 20.10, API 1.41) work, and pings.
    pub async fn connect() -> Result<Self, DockerError> {
        let endpoint = std::env::var(crate::env_vars::DOCKER_HOST)
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
        let connect_err = |source| DockerError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let client = Docker::connect_with_defaults()
            .map_err(connect_err)?
            .negotiate_version()
            .await
            .map_err(connect_err)?;
        client.ping().await.map_err(connect_err)?;
        Ok(Engine { client })
    }

    /// The bollard client, for the bundle's container and network calls.
    pub fn client(&self) -> &Docker {
        &self.client
    }

    /// ID, layer digests, tags and config of a local image.
    pub async fn inspect(&self, image: &str) -> Result<ImageInfo, DockerError> {
        let info = match self.client.inspect_image(image).await {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => {
                return Err(DockerError::ImageNotFound {
                    image: image.to_string(),
                });
            }
            Err(source) => {
                return Err(DockerError::Inspect {
                    image: image.to_string(),
                    source,
                });
            }
        };
        let id = info.id.ok_or_else(|| DockerError::MissingId {
            image: image.to_string(),
        })?;
        let mut config = info.config.unwrap_or_default();
        let labels = config.labels.take().unwrap_or_default();
        let diff_ids = info.root_fs.and_then(|r| r.layers).unwrap_or_default();
        Ok(ImageInfo {
            id,
            layer_dirs: info
                .graph_driver
                .and_then(|d| layer_dirs(&d.name, &d.data, diff_ids.len())),
            diff_ids,
            labels,
            tags: info.repo_tags.unwrap_or_default(),
            size: info.size.and_then(|s| u64::try_from(s).ok()),
            config: ImageConfig {
                user: config.user.unwrap_or_default(),
                working_dir: config.working_dir.unwrap_or_default(),
                entrypoint: config.entrypoint.unwrap_or_default(),
                cmd: config.cmd.unwrap_or_default(),
                env: config.env.unwrap_or_default(),
            },
        })
    }

    /// Whether the engine has `image` (`Ok(false)` only for a definite "no such image").
    pub async fn has_image(&self, image: &str) -> Result<bool, DockerError> {
        match self.inspect(image).await {
            Ok(_) => Ok(true),
            Err(DockerError::ImageNotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `docker save IMAGE` as a blocking reader over the engine's stream. Must be called from
    /// within the runtime (an async task or a `spawn_blocking` thread); the reader must be read
    /// from a blocking thread.
    pub fn save(&self, image: &str) -> StreamReader {
        let client = self.client.clone();
        let image = image.to_string();
        StreamReader::spawn(async move { client.export_image(&image) })
    }

    /// The flattened filesystem of an image, as Docker itself sees it: a container is created (not
    /// started) and exported. Remove it with [`Export::remove`] once read.
    pub async fn export_filesystem(&self, image: &str) -> Result<Export, DockerError> {
        let opts = CreateContainerOptionsBuilder::default().build();
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["true".to_string()]),
            labels: Some(HashMap::from([(
                LABEL_TOOL.to_string(),
                "export".to_string(),
            )])),
            ..Default::default()
        };
        let created = self
            .client
            .create_container(Some(opts), body)
            .await
            .map_err(|source| DockerError::CreateContainer {
                image: image.to_string(),
                source,
            })?;
        let client = self.client.clone();
        let id = created.id.clone();
        let reader = StreamReader::spawn(async move { client.export_container(&id) });
        Ok(Export {
            reader: Some(reader),
            engine: self.clone(),
            container: created.id,
        })
    }

    /// Builds `request` and returns the new image's ID. Build output goes to `on_line` line by
    /// line (the caller shows it as progress or with `-v`).
    pub async fn build(
        &self,
        request: BuildRequest,
        mut on_line: impl FnMut(&str),
    ) -> Result<String, DockerError> {
        let options = BuildImageOptions {
            dockerfile: if request.dockerfile.is_empty() {
                "Dockerfile".into()
            } else {
                request.dockerfile.clone()
            },
            t: Some(request.tag.clone()),
            target: request.target.clone().unwrap_or_default(),
            rm: true,
            forcerm: true,
            buildargs: Some(request.build_args.clone()),
            labels: Some(request.labels.clone()),
            ..Default::default()
        };
        let what = request.what.clone();
        let mut stream = self.client.build_image(
            options,
            None,
            Some(bollard::body_full(Bytes::from(request.context_tar))),
        );
        let mut image_id = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|source| match source {
                bollard::errors::Error::DockerStreamError { error } => DockerError::Build {
                    what: what.clone(),
                    message: error,
                },
                source => DockerError::BuildRequest {
                    what: what.clone(),
                    source,
                },
            })?;
            if let Some(detail) = info.error_detail {
                return Err(DockerError::Build {
                    what,
                    message: detail.message.unwrap_or_else(|| "unknown error".into()),
                });
            }
            if let Some(text) = info.stream.as_deref() {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    on_line(line);
                }
            }
            if let Some(id) = info.aux.and_then(|a| a.id) {
                image_id = Some(id);
            }
        }
        match image_id {
            Some(id) => Ok(id),
            None => Ok(self.inspect(&request.tag).await?.id),
        }
    }
}

/// Whether a bollard error is the engine's "404 no such object".
/// The layer directories (bottom first) an overlay-style graph driver reports: `UpperDir` is the
/// top layer's, `LowerDir` the others' (top first, `:`-separated). `None` for other drivers, or
/// when the count does not match the image's layers.
fn layer_dirs(
    driver: &str,
    data: &HashMap<String, String>,
    layers: usize,
) -> Option<Vec<std::path::PathBuf>> {
    if !matches!(driver, "overlay2" | "fuse-overlayfs" | "overlay") {
        return None;
    }
    let mut dirs = vec![std::path::PathBuf::from(data.get("UpperDir")?)];
    if let Some(lower) = data.get("LowerDir").filter(|l| !l.is_empty()) {
        dirs.extend(lower.split(':').map(std::path::PathBuf::from));
    }
    dirs.reverse();
    (dirs.len() == layers && dirs.iter().all(|d| d.is_absolute())).then_some(dirs)
}

pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A blocking [`Read`] over a byte stream from the engine. Must be read from a plain or blocking
/// thread, never from inside an async task.
pub struct StreamReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
    done: bool,
}

impl StreamReader {
    /// Starts pumping the stream `make` opens on the current runtime.
    fn spawn<S, F>(make: F) -> StreamReader
    where
        F: std::future::Future<Output = S> + Send + 'static,
        S: Stream<Item = Result<Bytes, bollard::errors::Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        tokio::runtime::Handle::current().spawn(async move { pump(make.await, tx).await });
        StreamReader {
            rx,
            chunk: Bytes::new(),
            done: false,
        }
    }
}

async fn pump<S>(stream: S, tx: mpsc::Sender<io::Result<Bytes>>)
where
    S: Stream<Item = Result<Bytes, bollard::errors::Error>> + Send,
{
    futures_util::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        let item = item.map_err(io::Error::other);
        let failed = item.is_err();
        // `send` waits while the reader is behind: that is the back-pressure. It fails only when
        // the reader is gone, and then the stream is dropped, which closes the socket.
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// A container's exported filesystem. The container is removed by [`Export::remove`]; one
/// dropped without it is removed in the background.
pub struct Export {
    reader: Option<StreamReader>,
    engine: Engine,
    container: String,
}

impl Export {
    /// The export stream (once).
    pub fn take_reader(&mut self) -> Option<StreamReader> {
        self.reader.take()
    }

    /// Removes the container.
    pub async fn remove(mut self) {
        let container = std::mem::take(&mut self.container);
        remove_export_container(&self.engine, &container).await;
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if self.container.is_empty() {
            return;
        }
        let (engine, container) = (self.engine.clone(), std::mem::take(&mut self.container));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { remove_export_container(&engine, &container).await });
        }
    }
}

async fn remove_export_container(engine: &Engine, container: &str) {
    let opts = RemoveContainerOptionsBuilder::default().force(true).build();
    if let Err(e) = engine.client.remove_container(container, Some(opts)).await {
        tracing::warn!("could not remove export container {container}: {e}");
    }
}

/// The hash of a build's inputs; each part is length-prefixed, so no two lists of parts hash
/// alike.
pub fn inputs_hash(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// The images a Dockerfile builds `FROM`, in order, leaving out `scratch` and earlier stages;
/// `None` when a `FROM` line names its image through a build argument (`$`), which only the
/// build can resolve.
pub fn base_images(dockerfile: &str) -> Option<Vec<String>> {
    let mut stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let mut words = words.skip_while(|w| w.starts_with("--"));
        let image = words.next()?;
        if image.contains('$') || image == "\\" {
            return None;
        }
        let lower = image.to_ascii_lowercase();
        if lower != "scratch" && !stages.contains(&lower) {
            images.push(image.to_string());
        }
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("AS"))
            && let Some(stage) = words.next()
        {
            stages.push(stage.to_ascii_lowercase());
        }
    }
    Some(images)
}

/// A build context directory as an in-memory tar (contexts are small: a Dockerfile and a few
/// files). `.git` and `target` directories are left out; symlinks are stored, not followed.
pub fn tar_context(dir: &Path) -> Result<Vec<u8>, DockerError> {
    let err = |source| DockerError::Context {
        path: dir.to_path_buf(),
        source,
    };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    append_dir(&mut builder, dir, Path::new("")).map_err(err)?;
    builder.into_inner().map_err(err)
}

fn append_dir(builder: &mut tar::Builder<Vec<u8>>, root: &Path, rel: &Path) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if rel.as_os_str().is_empty() && (name == ".git" || name == "target") {
            continue;
        }
        let rel_path = rel.join(&name);
        let path = root.join(&rel_path);
        builder.append_path_with_name(&path, &rel_path)?;
        if entry.file_type()?.is_dir() {
            append_dir(builder, root, &rel_path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_leave_out_stages_and_scratch_and_give_up_on_arguments() {
        let file = "# syntax\nFROM --platform=linux/amd64 debian:bookworm AS build\nRUN make\n\
                    from build as test\nFROM scratch\nFROM alpine:3\nCOPY --from=build /a /a\n";
        assert_eq!(
            base_images(file),
            Some(vec!["debian:bookworm".to_string(), "alpine:3".to_string()])
        );
        assert_eq!(base_images("ARG BASE=x\nFROM ${BASE}\n"), None);
        assert_eq!(base_images("FROM\n"), None);
        assert_eq!(base_images("FROM \\\n  debian\n"), None);
        assert_eq!(base_images("RUN true\n"), Some(vec![]));
    }

    #[test]
    fn context_tar_skips_git_and_keeps_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir_all(dir.path().join(".git/objects")).unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/file"), "x").unwrap();
        let data = tar_context(dir.path()).unwrap();
        let mut archive = tar::Archive::new(&data[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["Dockerfile", "sub", "sub/file"]);
    }
}
