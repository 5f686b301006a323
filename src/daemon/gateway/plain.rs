//! Plain HTTP through the proxy (`GET http://host/path`): the allowlist, the secret scan of
//! the whole request, then forwarding over a fresh connection. Never to a route host: a token
//! is never injected on plain HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::log::Action;
use super::{BoxError, ProxyBody, Shared, body, strip_hop_headers, text, upstream};
use crate::net::host::parse_authority;
use crate::net::policy::Verdict;

impl Shared {
    /// Plain HTTP through the proxy (`GET http://host/path`): policy, scan, forward.
    pub(super) async fn forward_plain(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let authority = super::uri_authority(&req);
        if req.uri().scheme_str() != Some("http") {
            return self.deny(
                peer,
                &authority,
                0,
                StatusCode::BAD_REQUEST,
                "only http:// URIs are proxied; use CONNECT for https",
            );
        }
        let (host, port) = match parse_authority(&authority, Some(80)) {
            Ok(hp) => hp,
            Err(e) => {
                return self.deny(peer, &authority, 0, StatusCode::BAD_REQUEST, &e.to_string());
            }
        };
        let host_str = host.to_string();
        let rule = match self.policy.decide(&host) {
            Verdict::Deny(reason) => {
                return self.deny(
                    peer,
                    &host_str,
                    port,
                    StatusCode::FORBIDDEN,
                    reason.as_str(),
                );
            }
            Verdict::Route(_) => {
                return self.deny(
                    peer,
                    &host_str,
                    port,
                    StatusCode::FORBIDDEN,
                    "route hosts are only reached over https",
                );
            }
            Verdict::Allow { rule } => rule,
        };
        let (mut parts, body) = req.into_parts();
        let body = match self.read_body(body).await {
            Ok(b) => b,
            Err(status) => {
                return self.deny(
                    peer,
                    &host_str,
                    port,
                    status,
                    "request body too large or broken",
                );
            }
        };
        if let Some(refusal) = self.refuse_secrets(peer, &host_str, port, &parts, &body, None) {
            return refusal;
        }
        strip_hop_headers(&mut parts.headers);
        let host_header = if port == 80 {
            host_str.clone()
        } else {
            format!("{host_str}:{port}")
        };
        if let Ok(v) = HeaderValue::from_str(&host_header) {
            parts.headers.insert(header::HOST, v);
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = match path.parse() {
            Ok(u) => u,
            Err(_) => return text(StatusCode::BAD_REQUEST, "invalid request path"),
        };
        parts.version = http::Version::HTTP_11;
        let bytes_up = body.len() as u64;
        let upstream = match self.dial(&host, port).await {
            Ok(s) => s,
            Err(e @ upstream::DialError::NotPublic { .. }) => {
                return self.deny(peer, &host_str, port, StatusCode::FORBIDDEN, &e.to_string());
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
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
                Ok(pair) => pair,
                Err(_) => return text(StatusCode::BAD_GATEWAY, "upstream HTTP handshake failed"),
            };
        tokio::spawn(conn);
        let method = parts.method.to_string();
        let resp = match sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await
        {
            Ok(r) => r,
            Err(_) => {
                return self.deny(
                    peer,
                    &host_str,
                    port,
                    StatusCode::BAD_GATEWAY,
                    "upstream request failed",
                );
            }
        };
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_headers(&mut rparts.headers);
        let mut d = self.decision(peer, &host_str, port, Action::Allow);
        d.rule = Some(rule);
        d.method = Some(method);
        d.status = Some(rparts.status.as_u16());
        d.bytes_up = bytes_up;
        let log = self.log.clone();
        let body = body::ObservedBody::new(
            rbody.map_err(BoxError::from).boxed_unsync(),
            None,
            move |n| {
                d.bytes_down = n;
                log.record(&d);
            },
        );
        Response::from_parts(rparts, body.boxed())
    }
}
