//! The bundle's secrets as byte patterns: finding them in requests and scrubbing them from
//! responses.
//!
//! Each secret is searched for raw and in the encodings an agent could use to smuggle it:
//! lower/upper hex, standard and URL-safe base64 at each of the three byte alignments (so a
//! token inside a larger base64 blob is found too), and percent-encoding. Secrets shorter than
//! [`MIN_SECRET_LEN`] are refused: they would match ordinary text. Only secret *names* ever
//! leave this module, never values.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Shortest secret the gateway accepts.
pub const MIN_SECRET_LEN: usize = 8;

/// What replaces a secret in scrubbed output.
pub const REDACTED: &[u8] = b"[REDACTED]";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret in {name} is shorter than {MIN_SECRET_LEN} bytes; use the real token")]
    TooShort { name: String },
}

#[derive(Clone, Debug)]
struct Secret {
    name: String,
    patterns: Vec<Vec<u8>>,
}

/// All secrets of one bundle, with their encoded forms.
#[derive(Clone, Debug, Default)]
pub struct SecretSet {
    secrets: Vec<Secret>,
}

impl SecretSet {
    /// `secrets` are (name, value) pairs; the name (an environment variable) is what gets
    /// reported when a value is found.
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<SecretSet, SecretError> {
        let mut out = Vec::new();
        for (name, value) in secrets {
            if value.len() < MIN_SECRET_LEN {
                return Err(SecretError::TooShort {
                    name: name.to_string(),
                });
            }
            out.push(Secret {
                name: name.to_string(),
                patterns: encodings(value),
            });
        }
        Ok(SecretSet { secrets: out })
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The name of the first secret found in `data`, skipping the secret named `except`.
    /// Percent-escapes are also decoded before searching, since any byte may be escaped.
    pub fn find_in(&self, data: &[u8], except: Option<&str>) -> Option<&str> {
        let decoded = percent_decode(data);
        let views = std::iter::once(data).chain(decoded.as_deref());
        for view in views {
            let found = self
                .secrets
                .iter()
                .filter(|s| Some(s.name.as_str()) != except)
                .find(|s| s.patterns.iter().any(|p| contains(view, p)));
            if let Some(s) = found {
                return Some(&s.name);
            }
        }
        None
    }

    /// A streaming scrubber for all the secrets' patterns.
    pub fn scrubber(&self) -> Scrubber {
        let mut patterns: Vec<Vec<u8>> = self
            .secrets
            .iter()
            .flat_map(|s| s.patterns.iter().cloned())
            .collect();
        // Longest first, so a raw token is not half-replaced by a shorter encoding's match.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        patterns.dedup();
        let mut first = [false; 256];
        for p in &patterns {
            first[usize::from(p[0])] = true;
        }
        Scrubber {
            patterns,
            first,
            carry: Vec::new(),
        }
    }

    /// Replaces every secret in `data` (one complete buffer, e.g. a header value).
    pub fn scrub(&self, data: &[u8]) -> Vec<u8> {
        let mut s = self.scrubber();
        let mut out = s.push(data);
        out.extend(s.finish());
        out
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// The forms in which `value` is searched for.
fn encodings(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![
        value.to_vec(),
        hex::encode(value).into_bytes(),
        hex::encode_upper(value).into_bytes(),
    ];
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for align in 0..3usize {
            let mut padded = vec![0u8; align];
            padded.extend_from_slice(value);
            let encoded = engine.encode(&padded);
            // Characters that mix bits of the alignment bytes or of what follows are dropped.
            let start = (align * 8).div_ceil(6);
            let end = padded.len() * 8 / 6;
            if end > start {
                out.push(encoded.as_bytes()[start..end].to_vec());
            }
        }
    }
    for upper in [true, false] {
        out.push(percent_encode(value, upper));
    }
    out.retain(|p| p.len() >= MIN_SECRET_LEN.min(value.len()));
    out.sort();
    out.dedup();
    out
}

/// `data` with `%XX` escapes decoded and `+` as space (form encoding); `None` if it has none.
fn percent_decode(data: &[u8]) -> Option<Vec<u8>> {
    if !data.iter().any(|&b| b == b'%' || b == b'+') {
        return None;
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'%' if i + 2 < data.len() => match (hex(data[i + 1]), hex(data[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

fn percent_encode(value: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend([
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 15)],
            ]);
        }
    }
    out
}

/// Replaces secrets in a stream of chunks. Bytes that could be the start of a secret split
/// across chunks are held back until the next chunk (or [`Scrubber::finish`]) decides.
#[derive(Clone, Debug)]
pub struct Scrubber {
    patterns: Vec<Vec<u8>>,
    first: [bool; 256],
    carry: Vec<u8>,
}

impl Scrubber {
    /// Scrubs the next chunk; returns the bytes that are safe to send now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.patterns.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let (out, held) = self.replace(&buf, false);
        self.carry = buf[held..].to_vec();
        out
    }

    /// Flushes what was held back at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.carry);
        self.replace(&buf, true).0
    }

    /// Returns the scrubbed output and the offset from which input is held back.
    fn replace(&self, buf: &[u8], at_end: bool) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            if self.first[usize::from(buf[i])] {
                let rest = &buf[i..];
                if let Some(p) = self.patterns.iter().find(|p| rest.starts_with(p)) {
                    out.extend_from_slice(REDACTED);
                    i += p.len();
                    continue;
                }
                if !at_end && self.patterns.iter().any(|p| p.starts_with(rest)) {
                    return (out, i);
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        (out, buf.len())
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    use super::*;

    const TOKEN: &[u8] = b"sk-live-0123456789abcdef/+=?";

    fn set() -> SecretSet {
        SecretSet::new([
            ("API_TOKEN", TOKEN),
            ("OTHER_TOKEN", &b"zz-other-secret-42"[..]),
        ])
        .unwrap()
    }

    /// Every smuggling form, embedded in other text, must be found.
    #[test]
    fn finds_encoded_forms() {
        let mut cases: Vec<Vec<u8>> = vec![
            TOKEN.to_vec(),
            hex::encode(TOKEN).into_bytes(),
            hex::encode_upper(TOKEN).into_bytes(),
            percent_encode(TOKEN, true),
            percent_encode(TOKEN, false),
        ];
        for prefix in ["", "a", "ab", "abc"] {
            let mut blob = prefix.as_bytes().to_vec();
            blob.extend_from_slice(TOKEN);
            blob.extend_from_slice(b"trailing");
            cases.push(STANDARD.encode(&blob).into_bytes());
            cases.push(URL_SAFE.encode(&blob).into_bytes());
        }
        let s = set();
        for case in cases {
            let mut text = b"q=1&x=".to_vec();
            text.extend(&case);
            text.extend(b"&y=2");
            assert_eq!(
                s.find_in(&text, None),
                Some("API_TOKEN"),
                "{}",
                String::from_utf8_lossy(&case)
            );
            assert_eq!(s.find_in(&text, Some("API_TOKEN")), None);
        }
        assert_eq!(s.find_in(b"nothing secret here", None), None);
        // Escaping bytes that need no escaping still decodes to the token.
        let escaped: String = TOKEN.iter().map(|b| format!("%{b:02x}")).collect();
        assert_eq!(s.find_in(escaped.as_bytes(), None), Some("API_TOKEN"));
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(SecretSet::new([("T", &b"short"[..])]).is_err());
    }

    /// However the stream is cut, no secret form survives and other bytes are unchanged.
    #[test]
    fn scrubber_handles_every_split() {
        let s = set();
        let mut text = b"before ".to_vec();
        text.extend(TOKEN);
        text.extend(b" mid ");
        text.extend(hex::encode(TOKEN).as_bytes());
        text.extend(b" sk-live-0 not a token ");
        text.extend(b"zz-other-secret-42 end");
        let want =
            b"before [REDACTED] mid [REDACTED] sk-live-0 not a token [REDACTED] end".to_vec();
        assert_eq!(s.scrub(&text), want);
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let mut sc = s.scrubber();
                let mut out = sc.push(&text[..cut]);
                out.extend(sc.push(&text[cut..cut2]));
                out.extend(sc.push(&text[cut2..]));
                out.extend(sc.finish());
                assert_eq!(out, want, "cuts {cut} {cut2}");
            }
        }
    }

    #[test]
    fn scrubber_only_holds_possible_prefixes() {
        let mut sc = set().scrubber();
        assert_eq!(sc.push(b"hello world"), b"hello world");
        assert_eq!(sc.push(b"data: sk-li"), b"data: ");
        assert_eq!(sc.finish(), b"sk-li");
    }
}
