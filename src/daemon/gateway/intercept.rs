//! Route interception: TLS termination with the route's leaf certificate, credential swap,
//! forwarding over verified TLS, and scrubbing of the token from everything that comes back.
//!
//! Only the route's own host is ever dialled from here, so the token cannot follow a redirect
//! to another host: a redirected client makes a new CONNECT, which is not this route.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Mutex;

use super::log::Action;
use super::upstream::Sender;
use super::{BoxError, ProxyBody, Shared, body::ObservedBody, strip_hop_headers, text};
use crate::net::host::{Host, parse_authority};

/// Credentials a client may send; all are dropped before the route's own header is set.
const CLIENT_CREDENTIALS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
];

/// Serves one intercepted CONNECT tunnel for route `index`.
pub(super) async fn serve(
    shared: Arc<Shared>,
    index: usize,
    client: TokioIo<Upgraded>,
    port: u16,
    peer: SocketAddr,
) {
    let route = &shared.routes[index];
    let host = route.route.host.clone();
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
    let start = match tokio::time::timeout(shared.limits.idle(), acceptor).await {
        Ok(Ok(start)) => start,
        _ => return refuse(&shared, peer, &host, port, "tunnel does not start with TLS"),
    };
    let sni = start.client_hello().server_name().map(Host::parse);
    if !matches!(sni, Some(Ok(ref h)) if *h == route.host) {
        return refuse(
            &shared,
            peer,
            &host,
            port,
            "TLS SNI does not match the CONNECT host",
        );
    }
    let Ok(tls) = start.into_stream(route.tls.clone()).await else {
        return refuse(
            &shared,
            peer,
            &host,
            port,
            "TLS handshake with the client failed",
        );
    };
    let upstream: Arc<Mutex<Option<Sender>>> = Arc::new(Mutex::new(None));
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let upstream = upstream.clone();
            async move { Ok::<_, Infallible>(forward(shared, index, port, peer, upstream, req).await) }
        })
    };
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.idle())
        .max_buf_size(shared.limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

fn refuse(shared: &Shared, peer: SocketAddr, host: &str, port: u16, reason: &str) {
    let mut d = shared.decision(peer, host, port, Action::Deny);
    d.rule = Some(host.to_string());
    d.reason = Some(reason.to_string());
    shared.log.record(&d);
}

/// One request inside the route's tunnel.
async fn forward(
    shared: Arc<Shared>,
    index: usize,
    port: u16,
    peer: SocketAddr,
    upstream: Arc<Mutex<Option<Sender>>>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let route = &shared.routes[index];
    let host = route.route.host.as_str();
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
                return shared.deny(
                    peer,
                    host,
                    port,
                    StatusCode::MISDIRECTED_REQUEST,
                    "request names another host than the route's",
                );
            }
        }
    }
    let (mut parts, body) = req.into_parts();
    let body = match shared.read_body(body).await {
        Ok(b) => b,
        Err(status) => {
            return shared.deny(peer, host, port, status, "request body too large or broken");
        }
    };
    let own = Some(route.route.token_env.as_str());
    if let Some(refusal) = shared.refuse_secrets(peer, host, port, &parts, &body, own) {
        return refusal;
    }
    strip_hop_headers(&mut parts.headers);
    for name in CLIENT_CREDENTIALS {
        parts.headers.remove(*name);
    }
    parts.headers.remove(&route.header);
    parts
        .headers
        .insert(route.header.clone(), route.value.clone());
    // Compressed responses could hide the token from the scrubber.
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let method = parts.method.to_string();
    let bytes_up = body.len() as u64;

    let mut guard = upstream.lock().await;
    if guard.as_ref().is_none_or(Sender::is_closed) {
        match shared.connect_tls(host, port).await {
            Ok(s) => *guard = Some(s),
            Err(e) => {
                drop(guard);
                return shared.deny(peer, host, port, StatusCode::BAD_GATEWAY, &e.to_string());
            }
        }
    }
    let Some(sender) = guard.as_mut() else {
        return text(StatusCode::BAD_GATEWAY, "no upstream connection");
    };
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    if sender.is_h2() {
        parts.headers.remove(header::HOST);
        parts.version = Version::HTTP_2;
        parts.uri = match format!("https://{authority}{path}").parse() {
            Ok(u) => u,
            Err(_) => return text(StatusCode::BAD_REQUEST, "invalid request path"),
        };
    } else {
        parts.version = Version::HTTP_11;
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
        parts.uri = match path.parse() {
            Ok(u) => u,
            Err(_) => return text(StatusCode::BAD_REQUEST, "invalid request path"),
        };
    }
    let result: Result<Response<Incoming>, BoxError> = sender
        .send(Request::from_parts(parts, Full::new(body)))
        .await;
    drop(guard);
    let resp = match result {
        Ok(r) => r,
        Err(_) => {
            return shared.deny(
                peer,
                host,
                port,
                StatusCode::BAD_GATEWAY,
                "upstream request failed",
            );
        }
    };
    let (mut rparts, rbody) = resp.into_parts();
    // The scrubber reads bytes as sent: an encoded body could carry the token past it.
    let encoded = rparts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return shared.deny(
            peer,
            host,
            port,
            StatusCode::BAD_GATEWAY,
            "upstream sent an encoded body despite accept-encoding: identity",
        );
    }
    strip_hop_headers(&mut rparts.headers);
    // The scrubbed body may change length; hyper frames it again.
    rparts.headers.remove(header::CONTENT_LENGTH);
    for value in rparts.headers.values_mut() {
        let scrubbed = shared.secrets.scrub(value.as_bytes());
        if scrubbed != value.as_bytes() {
            *value = HeaderValue::from_bytes(&scrubbed)
                .unwrap_or_else(|_| HeaderValue::from_static("[REDACTED]"));
        }
    }
    rparts.version = Version::HTTP_11;
    let mut d = shared.decision(peer, host, port, Action::Route);
    d.rule = Some(host.to_string());
    d.method = Some(method);
    d.status = Some(rparts.status.as_u16());
    d.bytes_up = bytes_up;
    let log = shared.log.clone();
    let body = ObservedBody::new(
        rbody.map_err(BoxError::from).boxed_unsync(),
        Some(shared.secrets.scrubber()),
        move |n| {
            d.bytes_down = n;
            log.record(&d);
        },
    );
    Response::from_parts(rparts, body.boxed())
}
