//! The response pipeline: everything of an upstream response that reaches the client passes
//! the scrubber. The head (status line reason phrase, header names and values) is scrubbed
//! whole; the body is decoded from every coding it declares and scrubbed as it streams,
//! forwarded as identity; trailers are scrubbed like headers. A body that declares no coding
//! but starts like a compressed stream is read whole (within the limit and the budget), opened
//! and scanned, and withheld if it carries a secret: compressed bytes cannot be scrubbed in
//! place. Protocol switches and informational answers are not relayed. The decision line is
//! written when the body ends, however it ends.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::decode::{self, Coding, Decoder};
use super::headers::{scrub_headers, scrub_response_head, strip_hop_headers};
use super::idle::Activity;
use super::log::{Action, Decision, DecisionLog, codes};
use super::refusal::{Ctx, Inflight, Refusal};
use super::request::decode_refusal;
use super::{BoxError, ProxyBody, Shared};
use crate::secrets::{Scrubber, SecretSet};

impl Shared {
    /// Turns an upstream response into what the client receives, and logs it.
    pub(super) async fn respond(
        &self,
        ctx: &Ctx,
        mut inflight: Inflight,
        resp: Response<Incoming>,
        bytes_up: u64,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        if parts.status.is_informational() {
            inflight.disarm();
            return self.refuse(
                ctx.clone(),
                Refusal::fail(
                    StatusCode::BAD_GATEWAY,
                    codes::UPSTREAM_PROTOCOL,
                    format!(
                        "the upstream answered {}: the gateway relays HTTP requests and responses only, no protocol switch",
                        parts.status.as_u16()
                    ),
                ),
            );
        }
        let codings = match decode::codings(&parts.headers) {
            Ok(c) => c,
            Err(e) => {
                inflight.disarm();
                return self.refuse(ctx.clone(), decode_refusal(&e, "response"));
            }
        };
        strip_hop_headers(&mut parts.headers);
        // The body is forwarded decoded and scrubbed: its coding and length change.
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        scrub_response_head(&self.secrets, &mut parts);
        parts.version = Version::HTTP_11;
        let mut line = ctx.success();
        line.status = Some(parts.status.as_u16());
        line.bytes_up = bytes_up;

        let mut stream = Decoded::new(body, &codings);
        inflight.stage("reading the upstream's response body");
        // The first bytes decide whether the body is an undeclared compressed stream.
        let mut first: VecDeque<Bytes> = VecDeque::new();
        let mut head = Vec::with_capacity(4);
        while head.len() < 4 && decode::may_become_compressed(&head) {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    head.extend(chunk.iter().take(4 - head.len()));
                    first.push_back(chunk);
                }
                Some(Err(e)) => {
                    inflight.disarm();
                    return self.refuse(ctx.clone(), Refusal::response_cut(e));
                }
                None => break,
            }
        }
        if let Some(coding) = decode::sniff(&head) {
            inflight.disarm();
            return self
                .respond_sniffed(ctx, line, parts, first, stream, coding)
                .await;
        }
        inflight.disarm();
        let body = ScrubBody {
            first,
            stream,
            scrubber: self.secrets.scrubber(),
            secrets: self.secrets.clone(),
            bytes: 0,
            state: State::Streaming,
            done: Some(Done {
                log: self.log.clone(),
                line,
                activity: ctx.activity.clone(),
            }),
        };
        Response::from_parts(parts, BodyExt::boxed_unsync(body))
    }

    /// An undeclared compressed body: read whole, opened layer by layer, scanned.
    async fn respond_sniffed(
        &self,
        ctx: &Ctx,
        mut line: Decision,
        parts: http::response::Parts,
        first: VecDeque<Bytes>,
        mut stream: Decoded,
        coding: Coding,
    ) -> Response<ProxyBody> {
        let limit = self.limits.max_body_bytes;
        let mut held = self.budget.reserve();
        let mut buf = Vec::new();
        let mut next = first;
        loop {
            let chunk = match next.pop_front() {
                Some(c) => c,
                None => match stream.next().await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        return self.refuse(ctx.clone(), Refusal::response_cut(e));
                    }
                    None => break,
                },
            };
            if buf.len() + chunk.len() > limit {
                return self.refuse(
                    ctx.clone(),
                    decode_refusal(&decode::DecodeError::TooLarge, "response"),
                );
            }
            if !held.grow(chunk.len()) {
                return self.refuse(
                    ctx.clone(),
                    decode_refusal(&decode::DecodeError::Busy, "response"),
                );
            }
            buf.extend_from_slice(&chunk);
        }
        let mut layers: Vec<Vec<u8>> = Vec::new();
        let mut coding = Some(coding);
        let mut grow = |n: usize| held.grow(n);
        for _ in 0..decode::MAX_SNIFF_DEPTH {
            let Some(c) = coding else { break };
            let last = layers.last().map_or(&buf[..], Vec::as_slice);
            match decode::decode_lenient(c, last, limit, &mut grow) {
                Ok(layer) => {
                    coding = decode::sniff(&layer);
                    layers.push(layer);
                }
                Err(e) => return self.refuse(ctx.clone(), decode_refusal(&e, "response")),
            }
        }
        for view in std::iter::once(&buf[..]).chain(layers.iter().map(Vec::as_slice)) {
            if let Some(secret) = self.secrets.find_in(view, None) {
                return self.refuse(
                    ctx.clone(),
                    Refusal {
                        action: Action::Block,
                        status: StatusCode::BAD_GATEWAY,
                        code: codes::SECRET_IN_RESPONSE,
                        reason: format!(
                            "the upstream's response carries the bundle secret {secret} inside a compressed body that declares no encoding; it cannot be scrubbed there, so it is withheld"
                        ),
                        allow_with: None,
                    },
                );
            }
        }
        let body = Bytes::from(self.secrets.scrub(&buf));
        line.bytes_down = body.len() as u64;
        self.log.record(&line);
        let body = Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync();
        Response::from_parts(parts, body)
    }
}

/// An upstream body with its codings undone, one bounded piece at a time.
pub(super) struct Decoded {
    inner: Incoming,
    decoder: Option<Decoder>,
    ended: bool,
    trailers: Option<HeaderMap>,
}

impl Decoded {
    fn new(inner: Incoming, codings: &[Coding]) -> Decoded {
        Decoded {
            inner,
            decoder: (!codings.is_empty()).then(|| Decoder::new(codings)),
            ended: false,
            trailers: None,
        }
    }

    async fn next(&mut self) -> Option<Result<Bytes, BoxError>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            if let Some(d) = &mut self.decoder {
                match d.pull() {
                    Ok(Some(piece)) => return Poll::Ready(Some(Ok(Bytes::from(piece)))),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                }
            }
            if self.ended {
                if let Some(d) = self.decoder.take()
                    && let Err(e) = d.end()
                {
                    return Poll::Ready(Some(Err(e.into())));
                }
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match &mut self.decoder {
                        Some(d) => d.push(&data),
                        None if data.is_empty() => {}
                        None => return Poll::Ready(Some(Ok(data))),
                    },
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers = Some(t);
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.ended = true,
            }
        }
    }
}

/// The decision line of a streamed response, written once when the body ends.
struct Done {
    log: DecisionLog,
    line: Decision,
    activity: Arc<Activity>,
}

impl Done {
    fn record(mut self, bytes: u64, cut: Option<(&'static str, String)>) {
        self.line.bytes_down = bytes;
        if let Some((code, reason)) = cut {
            self.line.decision = Action::Fail;
            self.line.reason_code = Some(code);
            self.line.reason = Some(reason);
        }
        self.log.record(&self.line);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    Trailers,
    Done,
}

/// The body the client receives: decoded, scrubbed, counted.
struct ScrubBody {
    first: VecDeque<Bytes>,
    stream: Decoded,
    scrubber: Scrubber,
    secrets: SecretSet,
    bytes: u64,
    state: State,
    done: Option<Done>,
}

impl ScrubBody {
    fn finish(&mut self, cut: Option<(&'static str, String)>) {
        if let Some(done) = self.done.take() {
            done.record(self.bytes, cut);
        }
    }
}

impl Body for ScrubBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Trailers => {
                    this.state = State::Done;
                    let trailers = this.stream.trailers.take();
                    this.finish(None);
                    if let Some(mut t) = trailers {
                        scrub_headers(&this.secrets, &mut t);
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
                State::Streaming => {
                    let next = match this.first.pop_front() {
                        Some(chunk) => Some(Ok(chunk)),
                        None => ready!(this.stream.poll_next(cx)),
                    };
                    match next {
                        Some(Ok(data)) => match this.scrubber.push_bytes(data) {
                            Ok(out) if out.is_empty() => {}
                            Ok(out) => {
                                this.bytes += out.len() as u64;
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                            Err(e) => {
                                this.state = State::Done;
                                this.finish(Some((codes::RESPONSE_CUT, e.to_string())));
                                return Poll::Ready(Some(Err(e.into())));
                            }
                        },
                        Some(Err(e)) => {
                            this.state = State::Done;
                            let reason = format!("the upstream's response body broke off: {e}");
                            this.finish(Some((codes::RESPONSE_CUT, reason)));
                            return Poll::Ready(Some(Err(e)));
                        }
                        None => {
                            this.state = State::Trailers;
                            let rest = this.scrubber.finish();
                            if !rest.is_empty() {
                                this.bytes += rest.len() as u64;
                                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for ScrubBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let cut = if done.activity.timed_out() {
                (
                    codes::IDLE_TIMEOUT,
                    "idle timeout while sending the response body".to_string(),
                )
            } else {
                (
                    codes::CLIENT_GONE,
                    "the client closed before the response body ended".to_string(),
                )
            };
            done.record(self.bytes, Some(cut));
        }
    }
}
