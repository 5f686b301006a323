//! The gateway: the agent-facing HTTP proxy in the bundle, the bottle's only way out.
//!
//! Invariants:
//! - Deny by default. The policy decides on the canonical host *before* any DNS lookup, so a
//!   denied host is never resolved. Names that resolve to non-public addresses are refused
//!   unless pinned in the config.
//! - An allowed, non-route CONNECT is spliced only after the TLS ClientHello's SNI matched the
//!   CONNECT host (no domain fronting). Only TLS is carried.
//! - A route CONNECT is intercepted (`intercept`): the client's credentials are dropped, the
//!   route's token injected, and the token's forms scrubbed from responses. Plain HTTP to a
//!   route host is refused: a token never travels in clear text.
//! - Every request whose content the gateway can read is scanned for the bundle's secrets.
//! - One decision line per connection or request (`log`), never a secret in it.
//!
//! `GET /healthz` on the proxy itself answers `200` (the bundle's readiness probe).

pub mod config;
pub mod log;
pub mod resolve;
pub mod sni;

mod body;
mod decode;
mod headers;
mod intercept;
mod plain;
mod splice;
mod upstream;

use self::headers::strip_hop_headers;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::config::{GatewayConfig, Limits};
use self::log::{Action, Decision, DecisionLog};
use self::resolve::Resolver;
use crate::ca::{BottleCa, CaError};
use crate::manifest::Route;
use crate::net::host::{Host, HostError, parse_authority};
use crate::net::policy::{Policy, Verdict};
use crate::secrets::{SecretError, SecretSet};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the gateway sends to a client.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid host in the gateway config")]
    ParseHost(#[source] HostError),
    #[error(
        "route {host}: the environment variable {env} is not set in the gateway's environment; pass it to the bundle"
    )]
    ReadToken { host: String, env: String },
    #[error("route {host}: the value of {env} cannot be sent in a header")]
    TokenHeader { host: String, env: String },
    #[error("cannot use the route tokens")]
    Secrets(#[source] SecretError),
    #[error("routes need the bottle CA: set `ca_cert` and `ca_key` in the gateway config")]
    FindCa,
    #[error("cannot load the bottle CA")]
    LoadCa(#[source] CaError),
    #[error("cannot mint a certificate for route {host}")]
    MintLeaf {
        host: String,
        #[source]
        source: CaError,
    },
    #[error("cannot build the TLS config for route {host}")]
    ServerTls {
        host: String,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot load upstream CA file {}", path.display())]
    LoadUpstreamCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A route ready to intercept: its token header and its TLS server config (leaf minted once).
struct RouteState {
    route: Route,
    host: Host,
    header: HeaderName,
    value: HeaderValue,
    tls: Arc<rustls::ServerConfig>,
}

/// State shared by all connections.
struct Shared {
    policy: Policy,
    routes: Vec<RouteState>,
    pinned: HashMap<String, IpAddr>,
    /// Canonical names allowed to resolve to private addresses.
    internal: Vec<String>,
    secrets: SecretSet,
    resolver: Arc<dyn Resolver>,
    upstream_tls: Arc<rustls::ClientConfig>,
    limits: Limits,
    log: DecisionLog,
}

/// The gateway, ready to serve.
pub struct Gateway {
    shared: Arc<Shared>,
    listen: SocketAddr,
}

impl Gateway {
    /// Builds the gateway from its config. `env` reads the gateway's own environment (the route
    /// tokens); `resolver` resolves allowed names that are not pinned.
    pub fn new(
        config: &GatewayConfig,
        env: impl Fn(&str) -> Option<String>,
        resolver: Arc<dyn Resolver>,
        log: DecisionLog,
    ) -> Result<Gateway, GatewayError> {
        let route_hosts: Vec<String> = config.routes.iter().map(|r| r.host.clone()).collect();
        let policy =
            Policy::from_strings(&config.allow, &route_hosts).map_err(GatewayError::ParseHost)?;
        let mut pinned = HashMap::new();
        for (name, ip) in &config.pinned {
            let host = Host::parse(name).map_err(GatewayError::ParseHost)?;
            pinned.insert(host.to_string(), *ip);
        }
        let internal = config
            .internal_hosts
            .iter()
            .map(|n| Host::parse(n).map(|h| h.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(GatewayError::ParseHost)?;
        let ca = match (&config.ca_cert, &config.ca_key) {
            _ if config.routes.is_empty() => None,
            (Some(cert), Some(key)) => {
                Some(BottleCa::load(&config.bottle, cert, key).map_err(GatewayError::LoadCa)?)
            }
            _ => return Err(GatewayError::FindCa),
        };
        let mut tokens = Vec::new();
        let mut routes = Vec::new();
        for route in &config.routes {
            let token = env(&route.token_env).ok_or_else(|| GatewayError::ReadToken {
                host: route.host.clone(),
                env: route.token_env.clone(),
            })?;
            let value = match &route.scheme {
                Some(scheme) => format!("{scheme} {token}"),
                None => token.clone(),
            };
            let token_header = || GatewayError::TokenHeader {
                host: route.host.clone(),
                env: route.token_env.clone(),
            };
            let mut value = HeaderValue::from_str(&value).map_err(|_| token_header())?;
            value.set_sensitive(true);
            let header =
                HeaderName::from_bytes(route.header.as_bytes()).map_err(|_| token_header())?;
            let host = Host::parse(&route.host).map_err(GatewayError::ParseHost)?;
            let tls = route_server_config(ca.as_ref(), &route.host)?;
            tokens.push((route.token_env.clone(), token));
            routes.push(RouteState {
                route: route.clone(),
                host,
                header,
                value,
                tls,
            });
        }
        let secrets = SecretSet::new(tokens.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
            .map_err(GatewayError::Secrets)?;
        let upstream_tls = upstream::upstream_tls_config(config.upstream_ca_file.as_deref())
            .map_err(|source| GatewayError::LoadUpstreamCa {
                path: config.upstream_ca_file.clone().unwrap_or_default(),
                source,
            })?;
        Ok(Gateway {
            shared: Arc::new(Shared {
                policy,
                routes,
                pinned,
                internal,
                resolver,
                upstream_tls,
                limits: config.limits.clone(),
                log: log.scrubbing(secrets.clone()),
                secrets,
            }),
            listen: config.listen,
        })
    }

    /// Binds the configured address.
    pub async fn bind(&self) -> Result<TcpListener, GatewayError> {
        TcpListener::bind(self.listen)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: self.listen,
                source,
            })
    }

    /// Serves clients from `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(self.shared.limits.max_connections.max(1)));
        loop {
            // Waiting for a slot before accepting leaves extra clients in the kernel backlog.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let shared = self.shared.clone();
                    tokio::spawn(serve_client(shared, stream, peer, permit));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

fn route_server_config(
    ca: Option<&BottleCa>,
    host: &str,
) -> Result<Arc<rustls::ServerConfig>, GatewayError> {
    let ca = ca.ok_or(GatewayError::FindCa)?;
    let (chain, key) = ca
        .mint_leaf(host)
        .map_err(|source| GatewayError::MintLeaf {
            host: host.to_string(),
            source,
        })?;
    let tls_err = |source| GatewayError::ServerTls {
        host: host.to_string(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn serve_client(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let permit = Arc::new(permit);
    let limits = shared.limits.clone();
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let permit = permit.clone();
            async move { Ok::<_, Infallible>(shared.handle(peer, req, permit).await) }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle())
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    let _ = tokio::time::timeout(limits.total(), conn).await;
}

/// The `host[:port]` a proxy request names in its URI (CONNECT or absolute form), or "".
fn uri_authority<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default()
}

/// A short plain-text response from the gateway itself.
fn text(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("krbottle gateway: {msg}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync()
}

impl Shared {
    fn decision(&self, peer: SocketAddr, host: &str, port: u16, action: Action) -> Decision {
        Decision {
            client: peer,
            host: host.to_string(),
            port,
            decision: action,
            rule: None,
            reason: None,
            method: None,
            status: None,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    fn deny(
        &self,
        peer: SocketAddr,
        host: &str,
        port: u16,
        status: StatusCode,
        reason: &str,
    ) -> Response<ProxyBody> {
        let mut d = self.decision(peer, host, port, Action::Deny);
        d.reason = Some(reason.to_string());
        d.status = Some(status.as_u16());
        self.log.record(&d);
        text(status, reason)
    }

    async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
        permit: Arc<OwnedSemaphorePermit>,
    ) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return self.connect(peer, req, permit).await;
        }
        if req.uri().scheme().is_some() {
            return self.forward_plain(peer, req).await;
        }
        if req.method() == Method::GET && req.uri().path() == "/healthz" {
            return text(StatusCode::OK, "ok");
        }
        text(
            StatusCode::BAD_REQUEST,
            "this is a proxy: send CONNECT or absolute-URI requests",
        )
    }

    async fn connect(
        self: Arc<Self>,
        peer: SocketAddr,
        mut req: Request<Incoming>,
        permit: Arc<OwnedSemaphorePermit>,
    ) -> Response<ProxyBody> {
        let authority = uri_authority(&req);
        let (host, port) = match parse_authority(&authority, None) {
            Ok(hp) => hp,
            Err(e) => {
                return self.deny(peer, &authority, 0, StatusCode::BAD_REQUEST, &e.to_string());
            }
        };
        let host_str = host.to_string();
        match self.policy.decide(&host) {
            Verdict::Deny(reason) => self.deny(
                peer,
                &host_str,
                port,
                StatusCode::FORBIDDEN,
                reason.as_str(),
            ),
            Verdict::Route(i) => {
                let on_upgrade = hyper::upgrade::on(&mut req);
                let shared = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Ok(upgraded) = on_upgrade.await {
                        let total = shared.limits.total();
                        let work = intercept::serve(shared, i, TokioIo::new(upgraded), port, peer);
                        let _ = tokio::time::timeout(total, work).await;
                    }
                });
                Response::new(empty())
            }
            Verdict::Allow { rule } => {
                let upstream = match self.dial(&host, port).await {
                    Ok(s) => s,
                    Err(e @ upstream::DialError::NotPublic { .. }) => {
                        return self.deny(
                            peer,
                            &host_str,
                            port,
                            StatusCode::FORBIDDEN,
                            &e.to_string(),
                        );
                    }
                    Err(e) => {
                        return self.deny(
                            peer,
                            &host_str,
                            port,
                            StatusCode::BAD_GATEWAY,
                            &e.to_string(),
                        );
                    }
                };
                let on_upgrade = hyper::upgrade::on(&mut req);
                let shared = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let total = shared.limits.total();
                    let work = shared
                        .clone()
                        .splice(peer, host, port, rule, upgraded, upstream);
                    let _ = tokio::time::timeout(total, work).await;
                });
                Response::new(empty())
            }
        }
    }

    /// Checks the ClientHello against the CONNECT host, then splices.
    async fn splice(
        self: Arc<Self>,
        peer: SocketAddr,
        host: Host,
        port: u16,
        rule: String,
        upgraded: hyper::upgrade::Upgraded,
        mut upstream: TcpStream,
    ) {
        let host_str = host.to_string();
        let mut client = TokioIo::new(upgraded);
        let idle = self.limits.idle();
        let refuse = |reason: &str| {
            let mut d = self.decision(peer, &host_str, port, Action::Deny);
            d.rule = Some(rule.clone());
            d.reason = Some(reason.to_string());
            self.log.record(&d);
        };
        let (hello, sni) = match splice::read_client_hello(&mut client, idle).await {
            Ok(h) => h,
            Err(splice::HelloError::NotTls) => return refuse("tunnel does not start with TLS"),
            Err(splice::HelloError::Closed) => return refuse("client closed before TLS"),
            Err(splice::HelloError::Encrypted) => {
                return refuse("encrypted ClientHello (ECH) hides the server name");
            }
        };
        let sni_ok = match (&host, sni.as_deref().map(Host::parse)) {
            (Host::Domain(_), Some(Ok(s))) => s == host,
            // An IP target has no name to ask for; a name would be fronting.
            (Host::Ip(_), None) => true,
            _ => false,
        };
        if !sni_ok {
            return refuse("TLS SNI does not match the CONNECT host");
        }
        use tokio::io::AsyncWriteExt;
        if upstream.write_all(&hello).await.is_err() {
            return refuse("upstream closed");
        }
        let (up, down) = splice::pump(client, upstream, idle).await;
        let mut d = self.decision(peer, &host_str, port, Action::Allow);
        d.rule = Some(rule);
        d.bytes_up = up + hello.len() as u64;
        d.bytes_down = down;
        self.log.record(&d);
    }

    /// Reads a request body up to the configured limit.
    async fn read_body(&self, body: Incoming) -> Result<Bytes, StatusCode> {
        match Limited::new(body, self.limits.max_body_bytes)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(StatusCode::PAYLOAD_TOO_LARGE)
            }
            Err(_) => Err(StatusCode::BAD_REQUEST),
        }
    }

    /// The name of a bundle secret carried anywhere in the request, except `own`'s. A body
    /// whose encoding cannot be read is an error: it is refused rather than passed unscanned.
    fn find_secret(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
        own: Option<&str>,
    ) -> Result<Option<String>, decode::DecodeError> {
        if self.secrets.is_empty() {
            return Ok(None);
        }
        let uri = parts.uri.to_string();
        let encoding = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let decoded = decode::decode_body(encoding.as_deref(), body, self.limits.max_body_bytes)?;
        let found = self
            .secrets
            .find_in(uri.as_bytes(), own)
            .or_else(|| {
                parts
                    .headers
                    .values()
                    .find_map(|v| self.secrets.find_in(v.as_bytes(), own))
            })
            .or_else(|| self.secrets.find_in(body, own))
            .or_else(|| decoded.and_then(|d| self.secrets.find_in(&d, own)));
        Ok(found.map(str::to_string))
    }

    /// Scans a request; the response to send instead of forwarding it, if any.
    fn refuse_secrets(
        &self,
        peer: SocketAddr,
        host: &str,
        port: u16,
        parts: &http::request::Parts,
        body: &[u8],
        own: Option<&str>,
    ) -> Option<Response<ProxyBody>> {
        match self.find_secret(parts, body, own) {
            Ok(None) => None,
            Ok(Some(secret)) => Some(self.block(peer, host, port, &secret)),
            Err(e) => Some(self.deny(
                peer,
                host,
                port,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &e.to_string(),
            )),
        }
    }

    fn block(&self, peer: SocketAddr, host: &str, port: u16, secret: &str) -> Response<ProxyBody> {
        let reason = format!("request carries the bundle secret {secret}");
        let mut d = self.decision(peer, host, port, Action::Block);
        d.reason = Some(reason.clone());
        d.status = Some(StatusCode::FORBIDDEN.as_u16());
        self.log.record(&d);
        text(StatusCode::FORBIDDEN, &reason)
    }
}

/// What the gateway prints on stderr before the address it listens on (orchestration and
/// tests read the bound address: the port may be 0 in the config).
pub const LISTENING: &str = "krbottle gateway listening on ";

/// The gateway's line in the daemon table.
pub const DAEMON: crate::daemon::DaemonSpec = crate::daemon::DaemonSpec {
    name: "gateway",
    about: "the bottle's HTTP(S) proxy: allowlist, token-injecting routes, secret scanning",
    port: crate::ports::GATEWAY,
    config_file: "gateway.json",
    mcp_path: None,
    mounts: &[],
    enabled: |_| true,
    config: |bottle, place| {
        let mut config = GatewayConfig::for_bottle(bottle);
        config.listen = place.listen;
        let in_dir =
            |p: Option<PathBuf>| p.and_then(|p| p.file_name().map(|n| place.config_dir.join(n)));
        config.ca_cert = in_dir(config.ca_cert);
        config.ca_key = in_dir(config.ca_key);
        config.upstream_ca_file = in_dir(config.upstream_ca_file);
        serde_json::to_vec_pretty(&config).map_err(|e| crate::daemon::DaemonError {
            daemon: "gateway",
            source: Box::new(e),
        })
    },
    run: |config| Box::pin(run(config)),
};

/// Runs the gateway with the config at `path` until SIGTERM or SIGINT: one JSON decision line
/// per decision on stdout; route tokens from this process's environment, under the names the
/// config gives.
async fn run(path: PathBuf) -> Result<(), crate::daemon::DaemonError> {
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| crate::daemon::DaemonError {
        daemon: "gateway",
        source: e,
    };
    let config = GatewayConfig::load(&path).map_err(|e| fail(Box::new(e)))?;
    let log = DecisionLog::new(&config.bottle, Box::new(std::io::stdout()));
    let gateway = Gateway::new(
        &config,
        |name| std::env::var(name).ok(),
        Arc::new(resolve::SystemResolver),
        log,
    )
    .map_err(|e| fail(Box::new(e)))?;
    let listener = gateway.bind().await.map_err(|e| fail(Box::new(e)))?;
    let addr = listener.local_addr().map_err(|e| fail(Box::new(e)))?;
    eprintln!("{LISTENING}{addr}");
    let mut stop = crate::sys::signals::Termination::listen().map_err(|e| fail(Box::new(e)))?;
    tokio::select! {
        () = gateway.serve(listener) => {}
        _ = stop.recv() => {}
    }
    Ok(())
}
