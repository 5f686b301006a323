//! Route interception: TLS termination with the route's leaf certificate (after the SNI was
//! checked), the whole request scanned, the client's credentials dropped and the route's token
//! set, forwarding over verified TLS (HTTP/2 or HTTP/1.1), and the response through the
//! scrubbing pipeline (`body`).
//!
//! Only the route's own host and port are ever dialled from here, so the token cannot follow a
//! redirect to another host: a redirected client makes a new CONNECT, which is not this route.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Mutex;

use super::headers::{drop_credential_params, drop_credentials};
use super::idle::Activity;
use super::log::{Action, codes};
use super::refusal::{Ctx, Inflight, Refusal};
use super::upstream::Sender;
use super::{BoxError, ProxyBody, Shared, strip_hop_headers};
use crate::net::host::{Host, parse_authority};
use crate::output::error_chain;

/// Serves one intercepted CONNECT tunnel for route `index`.
pub(super) async fn serve(
    shared: Arc<Shared>,
    index: usize,
    client: TokioIo<Upgraded>,
    port: u16,
    peer: SocketAddr,
    activity: Arc<Activity>,
) {
    let route = &shared.routes[index];
    let ctx = Ctx::new(peer, &route.domain, port, Action::Route, activity.clone())
        .with_rule(route.route.host.clone())
        .with_what(format!("CONNECT {}:{port}", route.domain));
    let deny = |code, reason: &str| {
        let mut d = ctx.decision(&shared, Action::Deny);
        d.reason_code = Some(code);
        d.reason = Some(reason.to_string());
        shared.log.record(&d);
    };
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
    let start = match tokio::time::timeout(shared.limits.idle(), acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(_)) => return deny(codes::NOT_TLS, "tunnel does not start with TLS"),
        Err(_) => {
            return deny(
                codes::IDLE_TIMEOUT,
                "idle timeout before the TLS ClientHello",
            );
        }
    };
    let sni = start.client_hello().server_name().map(str::to_string);
    if !matches!(sni.as_deref().map(Host::parse), Some(Ok(ref h)) if *h == route.host) {
        let asked = sni.as_deref().unwrap_or("no name");
        return deny(
            codes::SNI_MISMATCH,
            &format!(
                "TLS SNI ({asked}) does not match the CONNECT host ({}); ask for the host you connect to",
                route.domain
            ),
        );
    }
    let tls = match start.into_stream(route.tls.clone()).await {
        Ok(tls) => tls,
        Err(e) => {
            return deny(
                codes::CLIENT_TLS_FAILED,
                &format!("TLS handshake with the client failed: {e}"),
            );
        }
    };
    let upstream: Arc<Mutex<Option<Sender>>> = Arc::new(Mutex::new(None));
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let upstream = upstream.clone();
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(forward(shared, index, ctx, upstream, req).await) }
        })
    };
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.idle())
        .max_buf_size(shared.limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

/// One request inside the route's tunnel.
async fn forward(
    shared: Arc<Shared>,
    index: usize,
    ctx: Ctx,
    upstream: Arc<Mutex<Option<Sender>>>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let route = &shared.routes[index];
    let host = route.domain.as_str();
    let port = route.port;
    let ctx = ctx.with_method(req.method().to_string()).with_what(format!(
        "{} https://{}{}",
        req.method(),
        route.route.host,
        req.uri()
    ));
    let mut inflight = Inflight::new(&shared, &ctx);
    let refuse = |mut inflight: Inflight, refusal| {
        inflight.disarm();
        shared.refuse(ctx.clone(), refusal)
    };
    // The request must be for the route's host: nothing else may receive its token.
    let named = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let Some(named) = named {
        match parse_authority(&named, Some(port)) {
            Ok((h, p)) if h == route.host && p == port => {}
            _ => {
                return refuse(
                    inflight,
                    Refusal::deny(
                        StatusCode::MISDIRECTED_REQUEST,
                        codes::MISDIRECTED,
                        format!(
                            "the request names another host than the route's ({}); send it through its own CONNECT",
                            route.route.host
                        ),
                    ),
                );
            }
        }
    }
    let (mut parts, body) = req.into_parts();
    let own = Some(route.route.token_env.as_str());
    let scanned = match shared.read_and_scan(&parts, body, own).await {
        Ok(s) => s,
        Err(refusal) => return refuse(inflight, refusal),
    };
    strip_hop_headers(&mut parts.headers);
    drop_credentials(&mut parts.headers, &route.route.drop_headers);
    parts.headers.remove(&route.header);
    parts
        .headers
        .insert(route.header.clone(), route.value.clone());
    // The body is forwarded as read: hyper frames it again.
    parts.headers.remove(header::CONTENT_LENGTH);
    // Encoded responses are decoded anyway; asking for none saves the work.
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let path = drop_credential_params(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let bytes_up = scanned.body.len() as u64;

    inflight.stage("connecting to the upstream");
    let mut guard = upstream.lock().await;
    if guard.as_ref().is_none_or(Sender::is_closed) {
        match shared.connect_tls(host, port, ctx.activity.clone()).await {
            Ok(s) => *guard = Some(s),
            Err(e) => {
                drop(guard);
                return refuse(inflight, Refusal::upstream_failed(error_chain(&e)));
            }
        }
    }
    let Some(sender) = guard.as_mut() else {
        drop(guard);
        return refuse(inflight, Refusal::upstream_failed("no upstream connection"));
    };
    let authority = crate::net::policy::route_host_string(host, port);
    let uri = if sender.is_h2() {
        parts.headers.remove(header::HOST);
        parts.version = Version::HTTP_2;
        format!("https://{authority}{path}").parse()
    } else {
        parts.version = Version::HTTP_11;
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
        path.parse()
    };
    parts.uri = match uri {
        Ok(u) => u,
        Err(_) => {
            drop(guard);
            return refuse(inflight, Refusal::bad_request("invalid request path"));
        }
    };
    inflight.stage("waiting for the upstream's response head");
    let body: Bytes = scanned.body.clone();
    let result: Result<Response<Incoming>, BoxError> = sender
        .send(Request::from_parts(parts, Full::new(body)))
        .await;
    drop(guard);
    drop(scanned);
    match result {
        Ok(resp) => shared.respond(&ctx, inflight, resp, bytes_up).await,
        Err(e) => refuse(
            inflight,
            Refusal::upstream_failed(format!(
                "upstream request failed: {}",
                error_chain(e.as_ref())
            )),
        ),
    }
}
