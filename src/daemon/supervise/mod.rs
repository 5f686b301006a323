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
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::config::{ConfigError, SuperviseConfig};
use self::tools::Tools;
use super::server::{self, ListenError};
use super::{DaemonError, config_file};
use crate::queue::{Queue, QueueError};

/// The path of the MCP endpoint (in the guest: `http://127.0.0.1:<SUPERVISE>/mcp`).
pub const MCP_PATH: &str = "/mcp";
/// What the daemon prints on stderr before the address it listens on (tests and the harness
/// read the bound address: the port may be 0 in the config).
pub const LISTENING: &str = "krbottle supervise listening on ";
/// The daemon's name (its table line, messages).
const NAME: &str = "supervise";

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Cannot open the queue; check that the queue directory is mounted read-write")]
    Queue(#[source] QueueError),
    #[error(transparent)]
    Listen(#[from] ListenError),
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
        let handler = server.clone();
        server::serve(listener, server.max_connections, stop, move |req, _| {
            let server = handler.clone();
            async move { server.handle(req).await }
        })
        .await;
        server.cancel.cancel();
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(answer) = server::healthz(NAME, &req) {
            return answer;
        }
        match req.uri().path() {
            MCP_PATH => self.mcp.handle(req).await,
            _ => server::text(NAME, StatusCode::NOT_FOUND, "the MCP endpoint is /mcp"),
        }
    }
}

/// supervise's line in the daemon table.
pub const DAEMON: crate::daemon::DaemonSpec = crate::daemon::DaemonSpec {
    name: NAME,
    about: "the agent's MCP approval queue, answered on the host with `krbottle approve`/`deny`",
    port: crate::ports::SUPERVISE,
    config_file: "supervise.json",
    mcp_path: Some(MCP_PATH),
    mounts: &[config::QUEUE_MOUNT],
    files: |_| Vec::new(),
    enabled: |bottle| bottle.supervise.is_some(),
    config: |bottle, place| {
        Ok(config_file::to_json(
            NAME,
            &SuperviseConfig::for_bottle(bottle, place),
        )?)
    },
    run: |config| Box::pin(run(config)),
};

/// Runs the daemon with the config at `path` until SIGTERM or SIGINT (in the bundle, or as a
/// plain process: `krbottle bundle supervise --config FILE`).
async fn run(path: PathBuf) -> Result<(), DaemonError> {
    use super::InDaemon;
    let config = SuperviseConfig::load(&path).in_daemon(NAME)?;
    let server = Server::new(&config).in_daemon(NAME)?;
    let (listener, stop) = server::listen(config.listen, LISTENING)
        .await
        .in_daemon(NAME)?;
    server.serve(listener, stop).await;
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
