//! Plain HTTP through the proxy (`GET http://host/path`): the target name scanned for secrets,
//! the allowlist (port 80 unless `host:port` is listed), the whole request scanned, then
//! forwarding over a fresh connection and the response through the scrubbing pipeline. Never
//! to a route host: a token is never injected on plain HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::idle::{Activity, IdleIo};
use super::log::{Action, codes};
use super::refusal::{Ctx, Inflight, Refusal};
use super::{ProxyBody, Shared, strip_hop_headers, upstream};
use crate::net::host::parse_authority;
use crate::net::policy::{Access, Verdict};
use crate::output::error_chain;

impl Shared {
    /// Plain HTTP through the proxy (`GET http://host/path`): policy, scan, forward.
    pub(super) async fn forward_plain(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
        activity: Arc<Activity>,
    ) -> Response<ProxyBody> {
        let authority = super::uri_authority(&req);
        let ctx = Ctx::new(peer, &authority, 0, Action::Allow, activity)
            .with_method(req.method().to_string())
            .with_what(format!("{} {}", req.method(), req.uri()));
        if req.uri().scheme_str() != Some("http") {
            return self.refuse(
                ctx,
                Refusal::bad_request("only http:// URIs are proxied; use CONNECT for https"),
            );
        }
        if let Some(secret) = self.secret_in_name(&authority) {
            return self.refuse(ctx, Refusal::secret(&secret, "in the host name"));
        }
        let (host, port) = match parse_authority(&authority, Some(80)) {
            Ok(hp) => hp,
            Err(e) => {
                return self.refuse(ctx, Refusal::bad_request(e.to_string()));
            }
        };
        let host_str = host.to_string();
        let ctx = ctx.at(&host_str, port);
        let rule = match self.policy.decide(&host, port, Access::PlainHttp) {
            Verdict::Allow { rule } => rule,
            Verdict::Deny(reason) => {
                let refusal =
                    Refusal::policy(&reason, &self.bottle, &host, port, Access::PlainHttp);
                return self.refuse(ctx, refusal);
            }
            // The policy never routes plain HTTP; refuse should that ever change.
            Verdict::Route(_) => {
                let reason = crate::net::policy::DenyReason::RouteOverPlainHttp;
                let refusal =
                    Refusal::policy(&reason, &self.bottle, &host, port, Access::PlainHttp);
                return self.refuse(ctx, refusal);
            }
        };
        let ctx = ctx.with_rule(rule);
        let mut inflight = Inflight::new(&self, &ctx);
        let refuse = |mut inflight: Inflight, refusal| {
            inflight.disarm();
            self.refuse(ctx.clone(), refusal)
        };
        let (mut parts, body) = req.into_parts();
        let scanned = match self.read_and_scan(&parts, body, None).await {
            Ok(s) => s,
            Err(refusal) => return refuse(inflight, refusal),
        };
        strip_hop_headers(&mut parts.headers);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
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
            Err(_) => {
                return refuse(inflight, Refusal::bad_request("invalid request path"));
            }
        };
        parts.version = http::Version::HTTP_11;
        let bytes_up = scanned.body.len() as u64;
        inflight.stage("connecting to the upstream");
        let upstream = match self.dial(&host, port).await {
            Ok(s) => s,
            Err(e @ upstream::DialError::NotPublic { .. }) => {
                return refuse(
                    inflight,
                    Refusal::deny(StatusCode::FORBIDDEN, codes::NOT_PUBLIC, e.to_string())
                        .with_allow(format!(
                            "list {host_str} in the gateway config's `internal_hosts` or `pinned` if it is meant to be private"
                        )),
                );
            }
            Err(e) => {
                return refuse(inflight, Refusal::upstream_failed(error_chain(&e)));
            }
        };
        let io = TokioIo::new(IdleIo::new(upstream, ctx.activity.clone()));
        let (mut sender, conn) = match hyper::client::conn::http1::handshake(io).await {
            Ok(pair) => pair,
            Err(e) => {
                return refuse(
                    inflight,
                    Refusal::upstream_failed(format!(
                        "upstream HTTP handshake failed: {}",
                        error_chain(&e)
                    )),
                );
            }
        };
        tokio::spawn(conn);
        inflight.stage("waiting for the upstream's response head");
        let result = sender
            .send_request(Request::from_parts(parts, Full::new(scanned.body.clone())))
            .await;
        drop(scanned);
        match result {
            Ok(resp) => self.respond(&ctx, inflight, resp, bytes_up).await,
            Err(e) => refuse(
                inflight,
                Refusal::upstream_failed(format!("upstream request failed: {}", error_chain(&e))),
            ),
        }
    }
}
