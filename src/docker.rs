//! The Docker engine, through its API (bollard): inspect, build, save, and a container's export.
//!
//! krbottle's image pipeline is synchronous (the unpacker is a pair of threads), so [`Engine`]
//! owns a small tokio runtime and exposes blocking calls. Streams from the engine (`docker save`,
//! container export) are bridged into [`std::io::Read`] through a bounded channel: the unpacker
//! reads the save stream as it arrives, with no temporary tarball, and back-pressure reaches the
//! engine's socket.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use indicatif::ProgressBar;
use tokio::sync::mpsc;

/// Chunks buffered between the engine's socket and a blocking reader.
const STREAM_BUFFER_CHUNKS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("Cannot start the async runtime for the Docker client")]
    Runtime(#[source] io::Error),
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
    #[error("Building {context} failed: {message}")]
    Build { context: PathBuf, message: String },
    #[error("Building {context} failed")]
    BuildRequest {
        context: PathBuf,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Cannot create a container from `{image}` to export it")]
    CreateContainer {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Cannot remove image `{image}`")]
    RemoveImage {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
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
    pub size: Option<i64>,
}

impl ImageInfo {
    /// The hex part of the ID: a safe directory name for the cache.
    pub fn id_hex(&self) -> &str {
        self.id.strip_prefix("sha256:").unwrap_or(&self.id)
    }
}

struct Inner {
    docker: Docker,
    rt: tokio::runtime::Runtime,
}

/// A connection to the local Docker engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Connects with the usual defaults (`DOCKER_HOST`, else the local socket) and negotiates the
    /// API version, so older engines (this project's CI runs 20.10, API 1.41) work.
    pub fn connect() -> Result<Self, DockerError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("krbottle-docker")
            .enable_all()
            .build()
            .map_err(DockerError::Runtime)?;
        let endpoint = std::env::var(crate::env_vars::DOCKER_HOST)
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
        let connect_err = |source| DockerError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let docker = Docker::connect_with_defaults().map_err(connect_err)?;
        let docker = rt
            .block_on(async {
                let docker = docker.negotiate_version().await?;
                docker.ping().await?;
                Ok(docker)
            })
            .map_err(connect_err)?;
        Ok(Engine {
            inner: Arc::new(Inner { docker, rt }),
        })
    }

    /// ID, layer digests and tags of a local image.
    pub fn inspect(&self, image: &str) -> Result<ImageInfo, DockerError> {
        let res = self
            .inner
            .rt
            .block_on(self.inner.docker.inspect_image(image));
        let info = match res {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
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
        Ok(ImageInfo {
            id,
            diff_ids: info.root_fs.and_then(|r| r.layers).unwrap_or_default(),
            tags: info.repo_tags.unwrap_or_default(),
            size: info.size,
        })
    }

    /// `docker save IMAGE` as a blocking reader over the engine's stream.
    pub fn save(&self, image: &str) -> StreamReader {
        let docker = self.inner.docker.clone();
        let image = image.to_string();
        self.reader(move || docker.export_image(&image))
    }

    /// The flattened filesystem of an image, as Docker itself sees it: a container is created (not
    /// started) and exported; it is removed when the returned reader is dropped.
    pub fn export_filesystem(&self, image: &str) -> Result<ExportReader, DockerError> {
        let opts = CreateContainerOptionsBuilder::default().build();
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["true".to_string()]),
            labels: Some(HashMap::from([(
                crate::image::LABEL_TOOL.to_string(),
                "export".to_string(),
            )])),
            ..Default::default()
        };
        let created = self
            .inner
            .rt
            .block_on(self.inner.docker.create_container(Some(opts), body))
            .map_err(|source| DockerError::CreateContainer {
                image: image.to_string(),
                source,
            })?;
        let docker = self.inner.docker.clone();
        let id = created.id.clone();
        let reader = self.reader(move || docker.export_container(&id));
        Ok(ExportReader {
            reader,
            engine: self.clone(),
            container: created.id,
        })
    }

    /// Builds `context` (a directory with a Dockerfile) and tags the result `tag`. Build output
    /// goes to `log` line by line; returns the new image's ID.
    pub fn build(
        &self,
        context: &Path,
        dockerfile: Option<&str>,
        tag: &str,
        progress: &ProgressBar,
        mut log: impl FnMut(&str),
    ) -> Result<String, DockerError> {
        let body = tar_context(context).map_err(|source| DockerError::Context {
            path: context.to_path_buf(),
            source,
        })?;
        let opts = BuildImageOptionsBuilder::default()
            .dockerfile(dockerfile.unwrap_or("Dockerfile"))
            .t(tag)
            .rm(true)
            .forcerm(true)
            .build();
        let docker = &self.inner.docker;
        let mut image_id = None;
        self.inner.rt.block_on(async {
            let mut stream = docker.build_image(opts, None, Some(bollard::body_full(body.into())));
            while let Some(item) = stream.next().await {
                let info = item.map_err(|source| match source {
                    bollard::errors::Error::DockerStreamError { error } => DockerError::Build {
                        context: context.to_path_buf(),
                        message: error,
                    },
                    source => DockerError::BuildRequest {
                        context: context.to_path_buf(),
                        source,
                    },
                })?;
                if let Some(detail) = info.error_detail {
                    return Err(DockerError::Build {
                        context: context.to_path_buf(),
                        message: detail.message.unwrap_or_else(|| "unknown error".into()),
                    });
                }
                if let Some(line) = info.stream.as_deref() {
                    for l in line.lines().filter(|l| !l.trim().is_empty()) {
                        progress.set_message(l.trim().chars().take(70).collect::<String>());
                        log(l);
                    }
                }
                if let Some(id) = info.aux.and_then(|a| a.id) {
                    image_id = Some(id);
                }
            }
            Ok(())
        })?;
        match image_id {
            Some(id) => Ok(id),
            None => Ok(self.inspect(tag)?.id),
        }
    }

    /// Removes an image (used by tests and `image prune` of build leftovers).
    pub fn remove_image(&self, image: &str) -> Result<(), DockerError> {
        let opts = RemoveImageOptionsBuilder::default().force(true).build();
        self.inner
            .rt
            .block_on(self.inner.docker.remove_image(image, Some(opts), None))
            .map(|_| ())
            .map_err(|source| DockerError::RemoveImage {
                image: image.to_string(),
                source,
            })
    }

    fn reader<S, F>(&self, make: F) -> StreamReader
    where
        F: FnOnce() -> S + Send + 'static,
        S: Stream<Item = Result<Bytes, bollard::errors::Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        self.inner.rt.spawn(pump(make(), tx));
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

/// A blocking [`Read`] over a byte stream from the engine. Must be read from a plain thread,
/// never from inside an async task.
pub struct StreamReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
    done: bool,
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

/// A container's exported filesystem; the container is removed on drop.
pub struct ExportReader {
    reader: StreamReader,
    engine: Engine,
    container: String,
}

impl Read for ExportReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Drop for ExportReader {
    fn drop(&mut self) {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        let inner = &self.engine.inner;
        if let Err(e) = inner
            .rt
            .block_on(inner.docker.remove_container(&self.container, Some(opts)))
        {
            tracing::warn!("could not remove export container {}: {e}", self.container);
        }
    }
}

/// The build context as an in-memory tar (contexts are small: a Dockerfile and a few files).
/// `.git` and `target` directories are left out.
fn tar_context(dir: &Path) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    append_dir(&mut builder, dir, Path::new(""))?;
    builder.into_inner()
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
