//! Reading a request whole before it is forwarded: the body into memory (within the request
//! limit and the process-wide budget), every declared coding undone, undeclared compression
//! sniffed, and everything scanned for the bundle's secrets: method, target, every header name
//! and value, the body as sent and each decoded form of it.

use bytes::Bytes;
use http::StatusCode;
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Shared;
use super::budget::Reservation;
use super::decode::{self, DecodeError};
use super::log::codes;
use super::refusal::Refusal;

/// A request body that passed the scan, ready to forward, and the memory it holds.
pub(super) struct Scanned {
    pub body: Bytes,
    pub _held: Reservation,
}

impl Shared {
    /// Reads and scans a request. `own`: the secret allowed here (a route's own token).
    /// Transfer codings are undone in the body returned (they are hop by hop); content codings
    /// are kept as the client sent them, after their decoded form was scanned.
    pub(super) async fn read_and_scan(
        &self,
        parts: &Parts,
        body: Incoming,
        own: Option<&str>,
    ) -> Result<Scanned, Refusal> {
        if let Some(r) = self.scan_head(parts, own) {
            return Err(r);
        }
        let unreadable = |e: DecodeError| decode_refusal(&e, "request");
        let content = decode::content_codings(&parts.headers).map_err(unreadable)?;
        let transfer = decode::transfer_codings(&parts.headers).map_err(unreadable)?;
        let mut held = self.budget.reserve();
        let raw = self.read_body(body, &mut held).await?;
        let limit = self.limits.max_body_bytes;
        let scanning = !self.secrets.is_empty();
        let mut grow = |n: usize| held.grow(n);
        let body = if transfer.is_empty() {
            raw.clone()
        } else {
            Bytes::from(decode::decode_all(&transfer, &raw, limit, &mut grow).map_err(unreadable)?)
        };
        if scanning {
            let decoded = if content.is_empty() {
                None
            } else {
                Some(decode::decode_all(&content, &body, limit, &mut grow).map_err(unreadable)?)
            };
            let mut layers: Vec<Vec<u8>> = Vec::new();
            let base: &[u8] = decoded.as_deref().unwrap_or(&body);
            for _ in 0..decode::MAX_SNIFF_DEPTH {
                let last = layers.last().map_or(base, Vec::as_slice);
                let Some(coding) = decode::sniff(last) else {
                    break;
                };
                let layer =
                    decode::decode_lenient(coding, last, limit, &mut grow).map_err(unreadable)?;
                layers.push(layer);
            }
            let views = [&raw[..], &body[..]]
                .into_iter()
                .chain(decoded.as_deref())
                .chain(layers.iter().map(Vec::as_slice));
            for view in views {
                if let Some(secret) = self.secrets.find_in(view, own) {
                    return Err(Refusal::secret(secret, "in the body"));
                }
            }
        }
        Ok(Scanned { body, _held: held })
    }

    /// The refusal for a secret in the method, the target or a header, if any.
    fn scan_head(&self, parts: &Parts, own: Option<&str>) -> Option<Refusal> {
        if self.secrets.is_empty() {
            return None;
        }
        let find = |data: &[u8]| self.secrets.find_in(data, own);
        if let Some(s) = find(parts.method.as_str().as_bytes()) {
            return Some(Refusal::secret(s, "in the method"));
        }
        if let Some(s) = find(parts.uri.to_string().as_bytes()) {
            return Some(Refusal::secret(s, "in the request target"));
        }
        for (name, value) in &parts.headers {
            if let Some(s) = find(name.as_str().as_bytes()) {
                return Some(Refusal::secret(s, "in a header name"));
            }
            if let Some(s) = find(value.as_bytes()) {
                return Some(Refusal::secret(s, &format!("in the header {name}")));
            }
        }
        None
    }

    /// Reads a request body up to the configured limit, reserving its memory as it arrives.
    async fn read_body(
        &self,
        mut body: Incoming,
        held: &mut Reservation,
    ) -> Result<Bytes, Refusal> {
        let limit = self.limits.max_body_bytes;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Refusal::deny(
                    StatusCode::BAD_REQUEST,
                    codes::BODY_NOT_READABLE,
                    format!("the request body broke off: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if out.len() + data.len() > limit {
                return Err(Refusal::deny(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    codes::BODY_TOO_LARGE,
                    format!(
                        "the request body is larger than the gateway scans ({limit} bytes); send it in smaller requests"
                    ),
                ));
            }
            if !held.grow(data.len()) {
                return Err(busy());
            }
            if out.is_empty() {
                out = data.to_vec();
            } else {
                out.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(out))
    }
}

fn busy() -> Refusal {
    Refusal::fail(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::BUSY,
        DecodeError::Busy.to_string(),
    )
}

/// The refusal for a body that cannot be decoded; `side` is "request" or "response".
pub(super) fn decode_refusal(e: &DecodeError, side: &str) -> Refusal {
    let (status, code) = match (e, side) {
        (DecodeError::Busy, _) => return busy(),
        (DecodeError::TooLarge, "request") => {
            (StatusCode::PAYLOAD_TOO_LARGE, codes::BODY_TOO_LARGE)
        }
        (DecodeError::TooLarge, _) => (StatusCode::BAD_GATEWAY, codes::BODY_TOO_LARGE),
        (DecodeError::Unsupported(_), "request") => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::ENCODING_NOT_READABLE,
        ),
        (DecodeError::Unsupported(_), _) => (StatusCode::BAD_GATEWAY, codes::ENCODING_NOT_READABLE),
        (_, "request") => (StatusCode::BAD_REQUEST, codes::BODY_NOT_READABLE),
        _ => (StatusCode::BAD_GATEWAY, codes::BODY_NOT_READABLE),
    };
    let reason = format!("{side} not forwarded: {e}");
    if side == "request" {
        Refusal::deny(status, code, reason)
    } else {
        Refusal::fail(status, code, reason)
    }
}
