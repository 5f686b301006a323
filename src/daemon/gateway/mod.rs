//! The gateway: the agent-facing HTTP proxy in the bundle, the bottle's only way out.
//!
//! Invariants:
//! - Deny by default, port by port. The policy decides on the canonical host and port *before*
//!   any DNS lookup, and a CONNECT name is first scanned for the bundle's secrets (a name is
//!   a DNS query: `<hex of a token>.allowed.example` would carry it out). Names that resolve to
//!   non-public addresses are refused unless pinned in the config.
//! - An allowed, non-route CONNECT is answered, then its TLS ClientHello read: only when the
//!   SNI matches the CONNECT host (no domain fronting, only TLS) is the name resolved, dialled
//!   and spliced.
//! - A route CONNECT is intercepted (`intercept`): the client's credential-shaped headers and
//!   query parameters are dropped, the route's token injected, and the token's forms scrubbed
//!   from everything that comes back. Plain HTTP to a route host is refused: a token never
//!   travels in clear text.
//! - Every request the gateway can read is scanned whole for the bundle's secrets (`request`):
//!   method, target, header names and values, the body through every coding. Every response it
//!   can read reaches the client only through the scrubber (`body`). What cannot be decoded is
//!   refused, not passed unread.
//! - No byte moving either way for the idle time ends a connection, whatever it waits for
//!   (`idle`); buffered bodies share one process-wide memory budget (`budget`).
//! - One decision line per connection or request (`log`), on every path, never a secret in it;
//!   every refusal tells the client what was refused, why, and what would allow it (`refusal`).
//!
//! `GET /healthz` on the proxy itself answers `200` (the bundle's readiness probe; not logged).

pub mod config;
pub mod decode;
pub mod log;
pub mod resolve;
pub mod sni;

mod body;
mod budget;
mod headers;
mod idle;
mod intercept;
mod plain;
mod refusal;
mod request;
mod splice;
mod upstream;

use self::headers::strip_hop_headers;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::budget::Budget;
use self::config::{GatewayConfig, Limits};
use self::idle::{Activity, IdleIo, watchdog};
use self::log::{Action, Decision, DecisionLog, codes};
use self::refusal::{Ctx, Refusal};
use self::resolve::Resolver;
use crate::ca::{BottleCa, CaError};
use crate::manifest::Route;
use crate::net::host::{Host, HostError, parse_authority};
use crate::net::policy::{Access, Policy, Verdict, parse_route_host};
use crate::secrets::{SecretError, SecretSet};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the gateway sends to a client.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("Invalid host in the gateway config")]
    ParseHost(#[source] HostError),
    #[error(
        "route {host}: the environment variable {env} is not set in the gateway's environment; pass it to the bundle"
    )]
    ReadToken { host: String, env: String },
    #[error("Route {host}: the value of {env} cannot be sent in a header")]
    TokenHeader { host: String, env: String },
    #[error("Cannot use the route tokens")]
    Secrets(#[source] SecretError),
    #[error("Routes need the bottle CA: set `ca_cert` and `ca_key` in the gateway config")]
    FindCa,
    #[error("Cannot load the bottle CA")]
    LoadCa(#[source] CaError),
    #[error("Cannot mint a certificate for route {host}")]
    MintLeaf {
        host: String,
        #[source]
        source: CaError,
    },
    #[error("Cannot build the TLS config for route {host}")]
    ServerTls {
        host: String,
        #[source]
        source: rustls::Error,
    },
    #[error("Cannot load upstream CA file {}", path.display())]
    LoadUpstreamCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A route ready to intercept: its token header and its TLS server config (leaf minted once).
struct RouteState {
    route: Route,
    /// The route's domain name and port (from `host[:port]`).
    domain: String,
    host: Host,
    port: u16,
    header: HeaderName,
    value: HeaderValue,
    tls: Arc<rustls::ServerConfig>,
}

/// State shared by all connections.
struct Shared {
    bottle: String,
    policy: Policy,
    routes: Vec<RouteState>,
    pinned: HashMap<String, IpAddr>,
    /// Canonical names allowed to resolve to private addresses.
    internal: Vec<String>,
    secrets: SecretSet,
    resolver: Arc<dyn Resolver>,
    upstream_tls: Arc<rustls::ClientConfig>,
    limits: Limits,
    budget: Budget,
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
            let (domain, port) = parse_route_host(&route.host).map_err(GatewayError::ParseHost)?;
            let tls = route_server_config(ca.as_ref(), &domain)?;
            tokens.push((route.token_env.clone(), token));
            let mut route = route.clone();
            route.drop_headers = route
                .drop_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            routes.push(RouteState {
                route,
                host: Host::Domain(domain.clone()),
                domain,
                port,
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
                bottle: config.bottle.clone(),
                policy,
                routes,
                pinned,
                internal,
                resolver,
                upstream_tls,
                limits: config.limits.clone(),
                budget: Budget::new(config.limits.max_buffered_bytes),
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
    let activity = Activity::new();
    let svc = {
        let shared = shared.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let permit = permit.clone();
            let activity = activity.clone();
            async move { Ok::<_, Infallible>(shared.handle(peer, req, permit, activity).await) }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle())
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(IdleIo::new(stream, activity.clone())), svc)
        .with_upgrades();
    let served = tokio::time::timeout(limits.total(), async {
        tokio::select! {
            r = conn => Some(r),
            () = watchdog(activity, limits.idle()) => None,
        }
    })
    .await;
    // Heads hyper refused itself (malformed, too large, too slow) never reach `handle`.
    if let Ok(Some(Err(e))) = served
        && (e.is_parse() || e.is_parse_too_large() || e.is_timeout())
    {
        let mut d = shared.decision(peer, "", 0, Action::Deny);
        d.reason_code = Some(codes::BAD_REQUEST);
        d.reason = Some(format!("unreadable request head: {e}"));
        shared.log.record(&d);
    }
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
    crate::daemon::server::plain(NAME, status, msg)
        .map(|body| body.map_err(|never| match never {}).boxed_unsync())
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
            reason_code: None,
            reason: None,
            allow_with: None,
            method: None,
            status: None,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    /// The bundle secret carried in a host name or authority as written, with or without its
    /// dots and colon (a token's hex split over labels joins up).
    fn secret_in_name(&self, authority: &str) -> Option<String> {
        if self.secrets.is_empty() {
            return None;
        }
        let joined: Vec<u8> = authority
            .bytes()
            .filter(|b| !matches!(b, b'.' | b':'))
            .collect();
        self.secrets
            .find_in(authority.as_bytes(), None)
            .or_else(|| self.secrets.find_in(&joined, None))
            .map(str::to_string)
    }

    async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
        permit: Arc<OwnedSemaphorePermit>,
        activity: Arc<Activity>,
    ) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return self.connect(peer, req, permit, activity).await;
        }
        if req.uri().scheme().is_some() {
            return self.forward_plain(peer, req, activity).await;
        }
        if req.method() == Method::GET && req.uri().path() == "/healthz" {
            return text(StatusCode::OK, "ok");
        }
        let ctx = Ctx::new(peer, "", 0, Action::Deny, activity).with_what(format!(
            "{} {}",
            req.method(),
            req.uri()
        ));
        self.refuse(
            ctx,
            Refusal::deny(
                StatusCode::BAD_REQUEST,
                codes::NOT_A_PROXY_REQUEST,
                "this is a proxy: send CONNECT host:port or an absolute http:// URI".into(),
            ),
        )
    }

    async fn connect(
        self: Arc<Self>,
        peer: SocketAddr,
        mut req: Request<Incoming>,
        permit: Arc<OwnedSemaphorePermit>,
        activity: Arc<Activity>,
    ) -> Response<ProxyBody> {
        let authority = uri_authority(&req);
        let ctx = Ctx::new(peer, &authority, 0, Action::Deny, activity.clone())
            .with_what(format!("CONNECT {authority}"));
        // A name is a DNS query: scanned before it is parsed, matched or resolved.
        if let Some(secret) = self.secret_in_name(&authority) {
            return self.refuse(ctx, Refusal::secret(&secret, "in the CONNECT host name"));
        }
        let (host, port) = match parse_authority(&authority, None) {
            Ok(hp) => hp,
            Err(e) => {
                return self.refuse(ctx, Refusal::bad_request(e.to_string()));
            }
        };
        let host_str = host.to_string();
        let ctx = ctx.at(&host_str, port);
        match self.policy.decide(&host, port, Access::Connect) {
            Verdict::Deny(reason) => {
                let refusal = Refusal::policy(&reason, &self.bottle, &host, port, Access::Connect);
                self.refuse(ctx, refusal)
            }
            Verdict::Route(i) => {
                let on_upgrade = hyper::upgrade::on(&mut req);
                let shared = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(upgraded) = on_upgrade.await else {
                        return shared.log_line(ctx.fail(
                            codes::CLIENT_GONE,
                            "the client left before the tunnel opened",
                        ));
                    };
                    let limits = shared.limits.clone();
                    let work = intercept::serve(
                        shared.clone(),
                        i,
                        TokioIo::new(upgraded),
                        port,
                        peer,
                        activity.clone(),
                    );
                    let _ = tokio::time::timeout(limits.total(), async {
                        tokio::select! {
                            () = work => {}
                            () = watchdog(activity, limits.idle()) => {}
                        }
                    })
                    .await;
                });
                Response::new(empty())
            }
            Verdict::Allow { rule } => {
                let on_upgrade = hyper::upgrade::on(&mut req);
                let shared = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let ctx = ctx.with_rule(rule);
                    let Ok(upgraded) = on_upgrade.await else {
                        return shared.log_line(ctx.fail(
                            codes::CLIENT_GONE,
                            "the client left before the tunnel opened",
                        ));
                    };
                    let limits = shared.limits.clone();
                    let work = shared.clone().splice(ctx, host, upgraded);
                    let _ = tokio::time::timeout(limits.total(), work).await;
                });
                Response::new(empty())
            }
        }
    }

    fn log_line(&self, d: Decision) {
        self.log.record(&d);
    }

    /// Reads the ClientHello, checks its SNI against the CONNECT host, and only then resolves,
    /// dials and splices.
    async fn splice(self: Arc<Self>, ctx: Ctx, host: Host, upgraded: hyper::upgrade::Upgraded) {
        let mut client = TokioIo::new(upgraded);
        let idle = self.limits.idle();
        let activity = ctx.activity.clone();
        let hello = tokio::select! {
            r = splice::read_client_hello(&mut client, idle) => Some(r),
            () = watchdog(activity.clone(), idle) => None,
        };
        let deny = |code, reason: String| {
            let mut d = ctx.decision(&self, Action::Deny);
            d.reason_code = Some(code);
            d.reason = Some(reason);
            self.log.record(&d);
        };
        let (hello, sni) = match hello {
            None => {
                return deny(
                    codes::IDLE_TIMEOUT,
                    "idle timeout before the TLS ClientHello".into(),
                );
            }
            Some(Ok(h)) => h,
            Some(Err(splice::HelloError::NotTls)) => {
                return deny(codes::NOT_TLS, "tunnel does not start with TLS".into());
            }
            Some(Err(splice::HelloError::Closed)) => {
                return deny(codes::CLIENT_GONE, "client closed before TLS".into());
            }
            Some(Err(splice::HelloError::Encrypted)) => {
                return deny(
                    codes::ECH,
                    "encrypted ClientHello (ECH) hides the server name".into(),
                );
            }
        };
        let sni_host = sni.as_deref().map(Host::parse);
        let sni_ok = match (&host, &sni_host) {
            (Host::Domain(_), Some(Ok(s))) => *s == host,
            // An IP target has no name to ask for; a name would be fronting.
            (Host::Ip(_), None) => true,
            _ => false,
        };
        if !sni_ok {
            let asked = sni.as_deref().unwrap_or("no name");
            return deny(
                codes::SNI_MISMATCH,
                format!(
                    "TLS SNI ({asked}) does not match the CONNECT host ({host}); ask for the host you connect to"
                ),
            );
        }
        let upstream = match self.dial(&host, ctx.port).await {
            Ok(s) => s,
            Err(e @ upstream::DialError::NotPublic { .. }) => {
                return deny(codes::NOT_PUBLIC, e.to_string());
            }
            Err(e) => {
                let mut d = ctx.decision(&self, Action::Fail);
                d.reason_code = Some(codes::UPSTREAM_FAILED);
                d.reason = Some(crate::output::error_chain(&e));
                return self.log.record(&d);
            }
        };
        let mut upstream = IdleIo::new(upstream, activity.clone());
        use tokio::io::AsyncWriteExt;
        if let Err(e) = upstream.write_all(&hello).await {
            let mut d = ctx.decision(&self, Action::Fail);
            d.reason_code = Some(codes::UPSTREAM_FAILED);
            d.reason = Some(format!("upstream closed: {e}"));
            return self.log.record(&d);
        }
        let mut counts = (0, 0);
        let timed_out = tokio::select! {
            () = splice::pump(client, upstream, idle, &mut counts) => false,
            () = watchdog(activity, idle) => true,
        };
        let mut d = ctx.decision(&self, Action::Allow);
        if timed_out {
            d.reason_code = Some(codes::IDLE_TIMEOUT);
            d.reason = Some("idle timeout: nothing moved either way".into());
        }
        d.bytes_up = counts.0 + hello.len() as u64;
        d.bytes_down = counts.1;
        self.log.record(&d);
    }
}

/// The daemon's name (its table line, messages).
const NAME: &str = "gateway";

/// What the gateway prints on stderr before the address it listens on (orchestration and
/// tests read the bound address: the port may be 0 in the config).
pub const LISTENING: &str = "krbottle gateway listening on ";

/// The gateway's line in the daemon table.
pub const DAEMON: crate::daemon::DaemonSpec = crate::daemon::DaemonSpec {
    name: NAME,
    about: "the bottle's HTTP(S) proxy: allowlist, token-injecting routes, secret scanning",
    port: crate::ports::GATEWAY,
    config_file: "gateway.json",
    mcp_path: None,
    mounts: &[],
    files: |_| Vec::new(),
    enabled: |_| true,
    config: |bottle, place| {
        let mut config = GatewayConfig::for_bottle(bottle);
        config.listen = place.listen;
        let in_dir =
            |p: Option<PathBuf>| p.and_then(|p| p.file_name().map(|n| place.config_dir.join(n)));
        config.ca_cert = in_dir(config.ca_cert);
        config.ca_key = in_dir(config.ca_key);
        config.upstream_ca_file = in_dir(config.upstream_ca_file);
        Ok(crate::daemon::config_file::to_json(NAME, &config)?)
    },
    run: |config| Box::pin(run(config)),
};

/// Runs the gateway with the config at `path` until SIGTERM or SIGINT: one JSON decision line
/// per decision on stdout; route tokens from this process's environment, under the names the
/// config gives.
async fn run(path: PathBuf) -> Result<(), crate::daemon::DaemonError> {
    use crate::daemon::InDaemon;
    let config = GatewayConfig::load(&path).in_daemon(NAME)?;
    let log = DecisionLog::new(&config.bottle, Box::new(std::io::stdout()));
    let gateway = Gateway::new(
        &config,
        |name| std::env::var(name).ok(),
        Arc::new(resolve::SystemResolver),
        log,
    )
    .in_daemon(NAME)?;
    let (listener, stop) = crate::daemon::server::listen(config.listen, LISTENING)
        .await
        .in_daemon(NAME)?;
    tokio::select! {
        () = gateway.serve(listener) => {}
        () = stop => {}
    }
    Ok(())
}
