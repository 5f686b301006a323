//! Header and query rules: hop-by-hop headers are never forwarded (nor any the `Connection`
//! header names); on a route, every credential-shaped header and query parameter of the client
//! is dropped before the route's token is set, so the agent cannot use an account of its own
//! there; and every response head is scrubbed before it reaches the client.

use std::sync::OnceLock;

use aho_corasick::AhoCorasick;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::response;

use crate::secrets::{SecretSet, normalise};

/// Headers that belong to one hop, or to the proxy, and are never forwarded.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A header or query parameter whose name contains one of these (any case) is taken for a
/// credential.
const CREDENTIAL_WORDS: &[&str] = &[
    "auth",
    "key",
    "token",
    "secret",
    "session",
    "cookie",
    "password",
    "passwd",
    "credential",
];

pub fn strip_hop_headers(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_HEADERS {
        headers.remove(*name);
    }
}

/// Whether a header or parameter name looks like it carries a credential. Escapes in the
/// name are undone first (`%6Bey` is `key`).
pub fn is_credential_name(name: &[u8]) -> bool {
    static WORDS: OnceLock<Option<AhoCorasick>> = OnceLock::new();
    let words = WORDS.get_or_init(|| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(CREDENTIAL_WORDS)
            .ok()
    });
    let name = normalise(name);
    match words {
        Some(words) => words.is_match(&name[..]),
        // Only past size limits a few words cannot reach; then a slower search.
        None => {
            let name = name.to_ascii_lowercase();
            CREDENTIAL_WORDS
                .iter()
                .any(|w| memchr::memmem::find(&name, w.as_bytes()).is_some())
        }
    }
}

/// Drops every credential-shaped header and every header in `extra` (lowercase names).
pub fn drop_credentials(headers: &mut HeaderMap, extra: &[String]) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            is_credential_name(k.as_str().as_bytes()) || extra.iter().any(|e| e == k.as_str())
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// `path?query` without its credential-shaped parameters (kept in order, as written).
pub fn drop_credential_params(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            !is_credential_name(name.replace('+', " ").as_bytes())
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Scrubs a header map: a header whose name carries a secret is dropped, values are scrubbed.
pub fn scrub_headers(secrets: &SecretSet, headers: &mut HeaderMap) {
    if secrets.is_empty() {
        return;
    }
    // Most heads hold nothing to change: then the map is left as it is.
    let dirty = headers.iter().any(|(k, v)| {
        secrets.find_in(k.as_str().as_bytes(), None).is_some()
            || secrets.find_in(v.as_bytes(), None).is_some()
    });
    if !dirty {
        return;
    }
    let old = std::mem::take(headers);
    let mut name = None;
    for (k, value) in old {
        if let Some(k) = k {
            name = Some(k);
        }
        let Some(k) = &name else { continue };
        if secrets.find_in(k.as_str().as_bytes(), None).is_some() {
            continue;
        }
        let scrubbed = secrets.scrub_cow(value.as_bytes());
        let value = if scrubbed.as_ref() == value.as_bytes() {
            value
        } else {
            HeaderValue::from_bytes(&scrubbed)
                .unwrap_or_else(|_| HeaderValue::from_static("[REDACTED]"))
        };
        headers.append(k.clone(), value);
    }
}

/// Scrubs everything of a response head that reaches the client: the reason phrase of the
/// status line, header names and values. Extensions other than the (scrubbed) reason phrase
/// are dropped: the client's connection writes some of them out.
pub fn scrub_response_head(secrets: &SecretSet, parts: &mut response::Parts) {
    let phrase = parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    parts.extensions = http::Extensions::new();
    if let Some(phrase) = phrase {
        let scrubbed = secrets.scrub_cow(phrase.as_bytes());
        if let Ok(p) = hyper::ext::ReasonPhrase::try_from(scrubbed.into_owned()) {
            parts.extensions.insert(p);
        }
    }
    scrub_headers(secrets, &mut parts.headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic abc"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_headers(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn credential_headers_table() {
        let cases: &[(&str, bool)] = &[
            ("authorization", true),
            ("proxy-authorization", true),
            ("x-api-key", true),
            ("api-key", true),
            ("apikey", true),
            ("x-goog-api-key", true),
            ("private-token", true),
            ("x-auth-token", true),
            ("X-Amz-Security-Token", true),
            ("cookie", true),
            ("x-session-id", true),
            ("x-client-secret", true),
            ("x-password", true),
            ("x-credential", true),
            ("content-type", false),
            ("accept", false),
            ("user-agent", false),
            ("anthropic-version", false),
            ("x-request-id", false),
        ];
        for (name, want) in cases {
            assert_eq!(is_credential_name(name.as_bytes()), *want, "{name}");
        }
        let mut h = headers(&[
            ("authorization", "Bearer x"),
            ("x-goog-api-key", "k"),
            ("private-token", "t"),
            ("x-custom-account", "me"),
            ("accept", "*/*"),
        ]);
        drop_credentials(&mut h, &["x-custom-account".to_string()]);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn credential_params_table() {
        let cases: &[(&str, &str)] = &[
            ("/v1/x", "/v1/x"),
            ("/v1/x?a=1", "/v1/x?a=1"),
            ("/v1/x?key=abc", "/v1/x"),
            ("/v1/x?a=1&access_token=t&b=2", "/v1/x?a=1&b=2"),
            ("/v1/x?API_KEY=t&Session=s&q=ok", "/v1/x?q=ok"),
            ("/v1/x?%6Bey=t&q=ok", "/v1/x?q=ok"),
            ("/v1/x?private+token=t", "/v1/x"),
            ("/v1/x?password", "/v1/x"),
            ("/v1/x?q=key", "/v1/x?q=key"),
        ];
        for (input, want) in cases {
            assert_eq!(drop_credential_params(input), *want, "{input}");
        }
    }

    #[test]
    fn response_heads_are_scrubbed() {
        let token = "sk-head-token-0123456789";
        let secrets = SecretSet::new([("T", token.as_bytes())]).unwrap();
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.extensions.insert(
            hyper::ext::ReasonPhrase::try_from(format!("OK {token}").into_bytes()).unwrap(),
        );
        parts.extensions.insert(42u32);
        parts.headers.append(
            HeaderName::from_bytes(format!("x-{token}").as_bytes()).unwrap(),
            HeaderValue::from_static("1"),
        );
        parts.headers.append(
            "x-echo",
            HeaderValue::from_str(&hex::encode(token)).unwrap(),
        );
        parts
            .headers
            .append("x-echo", HeaderValue::from_static("clean"));
        scrub_response_head(&secrets, &mut parts);
        let phrase = parts.extensions.get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(phrase.as_bytes(), b"OK [REDACTED]");
        assert!(parts.extensions.get::<u32>().is_none());
        let names: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-echo"]);
        let values: Vec<&[u8]> = parts
            .headers
            .get_all("x-echo")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(values, vec![&b"[REDACTED]"[..], b"clean"]);
    }
}
