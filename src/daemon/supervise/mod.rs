//! supervise: the bundle's MCP server through which the agent asks a human before acting.
//!
//! The agent calls its tools (`tools`) over MCP's streamable HTTP transport (rmcp, stateless:
//! a bundle restart loses no session); requests land in the bottle's queue directory
//! (`crate::queue`), which the host's `krbottle approve` / `deny` answer. The guest never sees
//! that directory: it reaches this server only, through its relay.
//!
//! Invariants:
//! - Only the `Host` values of the config are served (rmcp's DNS-rebinding check, never off).
//! - Request bodies above `limits.max_request_bytes` get `413`; request heads are capped too.
//! - At most `limits.max_pending` requests wait at once; a tool call waits at most
//!   `limits.wait_secs` and then answers `pending`, before Claude Code's tool-call timeout.
//! - `GET /healthz` answers `200` (the bundle's readiness probe); every other path but
//!   [`MCP_PATH`] is `404`.

pub mod config;
mod tools;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use self::config::{ConfigError, SuperviseConfig};
use self::tools::Tools;
use crate::queue::{Queue, QueueError};

/// The path of the MCP endpoint (in the guest: `http://127.0.0.1:<SUPERVISE>/mcp`).
pub const MCP_PATH: &str = "/mcp";
/// What the daemon prints on stderr before the address it listens on (tests and the harness
/// read the bound address: the port may be 0 in the config).
pub const LISTENING: &str = "krbottle supervise listening on ";
/// The largest request head read (hyper's minimum is 8192).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A client that sends no complete request head for this long is dropped.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Cannot open the queue; check that the queue directory is mounted read-write")]
    Queue(#[source] QueueError),
    #[error("Cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read the listening address")]
    LocalAddr(#[source] std::io::Error),
    #[error("Cannot handle signals")]
    Signals(#[source] std::io::Error),
}

/// The server, ready to serve.
pub struct Server {
    mcp: StreamableHttpService<Tools, NeverSessionManager>,
    cancel: CancellationToken,
    max_connections: usize,
}

impl Server {
    /// Builds the server of `config`, creating its queue directory if it is missing.
    pub fn new(config: &SuperviseConfig) -> Result<Server, SuperviseError> {
        let queue = Queue::at(&config.queue_dir, &config.bottle);
        queue.create().map_err(SuperviseError::Queue)?;
        let tools = Tools::new(queue, config.limits.clone());
        let cancel = CancellationToken::new();
        let mcp_config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(config.allowed_hosts.clone())
            .with_legacy_session_mode(false)
            .with_max_request_body_bytes(config.limits.max_request_bytes)
            .with_cancellation_token(cancel.clone());
        let mcp = StreamableHttpService::new(
            move || Ok(tools.clone()),
            Arc::new(NeverSessionManager::default()),
            mcp_config,
        );
        Ok(Server {
            mcp,
            cancel,
            max_connections: config.limits.max_connections.max(1),
        })
    }

    /// Serves clients from `listener` until `stop` completes.
    pub async fn serve(self, listener: TcpListener, stop: impl Future<Output = ()>) {
        let server = Arc::new(self);
        let slots = Arc::new(Semaphore::new(server.max_connections));
        let accept = async {
            loop {
                // Waiting for a slot before accepting leaves extra clients in the backlog.
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let server = server.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            server.serve_client(stream).await;
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        };
        tokio::select! {
            () = accept => {}
            () = stop => {}
        }
        server.cancel.cancel();
    }

    async fn serve_client(self: Arc<Self>, stream: tokio::net::TcpStream) {
        let _ = stream.set_nodelay(true);
        let svc = service_fn(move |req| {
            let server = self.clone();
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        });
        let _ = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            MCP_PATH => self.mcp.handle(req).await,
            "/healthz" if req.method() == Method::GET => text(StatusCode::OK, "ok"),
            "/healthz" => text(StatusCode::METHOD_NOT_ALLOWED, "GET only"),
            _ => text(StatusCode::NOT_FOUND, "the MCP endpoint is /mcp"),
        }
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("krbottle supervise: {msg}\n"))).boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// supervise's line in the daemon table.
pub const DAEMON: crate::daemon::DaemonSpec = crate::daemon::DaemonSpec {
    name: "supervise",
    about: "the agent's MCP approval queue, answered on the host with `krbottle approve`/`deny`",
    port: crate::ports::SUPERVISE,
    config_file: "supervise.json",
    mcp_path: Some(MCP_PATH),
    mounts: &[config::QUEUE_MOUNT],
    files: |_| Vec::new(),
    enabled: |bottle| bottle.supervise.is_some(),
    config: |bottle, place| {
        serde_json::to_vec_pretty(&SuperviseConfig::for_bottle(bottle, place)).map_err(|e| {
            crate::daemon::DaemonError {
                daemon: "supervise",
                source: Box::new(e),
            }
        })
    },
    run: |config| Box::pin(run(config)),
};

/// Runs the daemon with the config at `path` until SIGTERM or SIGINT (in the bundle, or as a
/// plain process: `krbottle bundle supervise --config FILE`).
async fn run(path: PathBuf) -> Result<(), crate::daemon::DaemonError> {
    let fail = |e: SuperviseError| crate::daemon::DaemonError {
        daemon: "supervise",
        source: Box::new(e),
    };
    let config = SuperviseConfig::load(&path).map_err(|e| fail(e.into()))?;
    let server = Server::new(&config).map_err(fail)?;
    let listener = TcpListener::bind(config.listen).await.map_err(|source| {
        fail(SuperviseError::Bind {
            addr: config.listen,
            source,
        })
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| fail(SuperviseError::LocalAddr(e)))?;
    eprintln!("{LISTENING}{addr}");
    let mut stop =
        crate::sys::signals::Termination::listen().map_err(|e| fail(SuperviseError::Signals(e)))?;
    server
        .serve(listener, async move {
            stop.recv().await;
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn bottle(text: &str) -> crate::manifest::Bottle {
        let m = Manifest::parse(std::path::Path::new("krbottle.toml"), text).unwrap();
        m.bottles["b"].clone()
    }

    #[test]
    fn the_table_line_runs_it_only_where_asked_and_mounts_only_the_queue() {
        let off = bottle("[bottles.b]\n");
        let on = bottle("[bottles.b]\nsupervise = true\n");
        assert!(!crate::daemon::enabled_for(&off).contains(&&DAEMON));
        assert!(crate::daemon::enabled_for(&on).contains(&&DAEMON));
        assert_eq!(DAEMON.mcp_path, Some(MCP_PATH));
        let dirs = crate::state::StateRoot::at("/s").bottle("b").unwrap();
        let [mount] = DAEMON.mounts else {
            panic!("one mount: the queue")
        };
        assert_eq!((mount.host)(&dirs), dirs.queue_dir());
        assert_eq!(mount.container, config::QUEUE_DIR);
        // Apart from the read-only config dir, and from what the bundle serves.
        assert!(!mount.container.starts_with(crate::daemon::CONFIG_DIR));
        let place = crate::daemon::Placement::container(DAEMON.port);
        let json = (DAEMON.config)(&on, &place).unwrap();
        let config: SuperviseConfig = serde_json::from_slice(&json).unwrap();
        assert_eq!(config, SuperviseConfig::for_bottle(&on, &place));
    }
}
