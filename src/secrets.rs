//! The bundle's secrets as byte patterns: finding them in requests and scrubbing them from
//! responses.
//!
//! Each secret is searched for raw and in the encodings an agent could use to smuggle it:
//! lower/upper hex, standard and URL-safe base64 at each of the three byte alignments (so a
//! token inside a larger base64 blob is found too), and percent-encoding. Secrets shorter than
//! [`MIN_SECRET_LEN`] are refused: they would match ordinary text. Only secret *names* ever
//! leave this module, never values.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use bytes::Bytes;

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
    matcher: Arc<Matcher>,
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
        let matcher = Arc::new(Matcher::new(&out));
        Ok(SecretSet {
            secrets: out,
            matcher,
        })
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

    /// A streaming scrubber for all the secrets' patterns. Cheap: the matcher is built once,
    /// in [`SecretSet::new`], and shared.
    pub fn scrubber(&self) -> Scrubber {
        Scrubber {
            matcher: self.matcher.clone(),
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

/// Every pattern of every secret, longest first, with a multi-pattern searcher over them.
///
/// The searcher finds the leftmost match and, among those starting there, the longest: the
/// same choice as trying the patterns longest first at each position, so a raw token is not
/// half-replaced by a shorter encoding's match.
#[derive(Debug, Default)]
struct Matcher {
    patterns: Vec<Vec<u8>>,
    /// `None` when there is no pattern.
    searcher: Option<AhoCorasick>,
    /// Bytes that start some pattern: only there can a held-back prefix begin.
    first: Vec<bool>,
    longest: usize,
}

impl Matcher {
    fn new(secrets: &[Secret]) -> Matcher {
        let mut patterns: Vec<Vec<u8>> = secrets
            .iter()
            .flat_map(|s| s.patterns.iter().cloned())
            .collect();
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        patterns.dedup();
        let mut first = vec![false; 256];
        for p in &patterns {
            first[usize::from(p[0])] = true;
        }
        // Building only fails past size limits that a few dozen short patterns cannot reach;
        // should it ever fail, `replace` falls back to trying each pattern at each byte.
        let searcher = (!patterns.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .ok()
            })
            .flatten();
        let longest = patterns.first().map_or(0, Vec::len);
        Matcher {
            patterns,
            searcher,
            first,
            longest,
        }
    }

    /// The scrubbed form of `buf` up to the returned offset, from which input is held back
    /// (it could be the start of a secret that the next chunk completes). Borrowed when
    /// nothing was replaced, so clean data is not copied.
    fn replace<'a>(&self, buf: &'a [u8], at_end: bool) -> (Cow<'a, [u8]>, usize) {
        if self.patterns.is_empty() {
            return (Cow::Borrowed(buf), buf.len());
        }
        // Only the last `longest - 1` bytes can start a proper prefix of a pattern; before
        // them, every match is complete and the searcher decides alone.
        let tail = buf.len().saturating_sub(self.longest.saturating_sub(1));
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        if let Some(searcher) = &self.searcher {
            for m in searcher.find_iter(buf) {
                if m.start() >= tail {
                    break;
                }
                let out = out.get_or_insert_with(|| Vec::with_capacity(buf.len()));
                out.extend_from_slice(&buf[pos..m.start()]);
                out.extend_from_slice(REDACTED);
                pos = m.end();
            }
        }
        let resume = pos.max(if self.searcher.is_some() { tail } else { 0 });
        let (tail_out, held) = self.replace_bytewise(&buf[resume..], at_end);
        let held = resume + held;
        match out {
            None if tail_out.is_none() => (Cow::Borrowed(&buf[..held]), held),
            out => {
                let mut out = out.unwrap_or_else(|| Vec::with_capacity(buf.len()));
                out.extend_from_slice(&buf[pos..resume]);
                match tail_out {
                    Some(t) => out.extend_from_slice(&t),
                    None => out.extend_from_slice(&buf[resume..held]),
                }
                (Cow::Owned(out), held)
            }
        }
    }

    /// Tries every pattern at every byte of `buf` (a short tail, or everything if there is no
    /// searcher). `None` when nothing was replaced; the offset from which input is held back.
    fn replace_bytewise(&self, buf: &[u8], at_end: bool) -> (Option<Vec<u8>>, usize) {
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut i = 0;
        while i < buf.len() {
            if self.first[usize::from(buf[i])] {
                let rest = &buf[i..];
                if let Some(p) = self.patterns.iter().find(|p| rest.starts_with(p)) {
                    let out = out.get_or_insert_with(|| Vec::with_capacity(buf.len()));
                    out.extend_from_slice(&buf[copied..i]);
                    out.extend_from_slice(REDACTED);
                    i += p.len();
                    copied = i;
                    continue;
                }
                if !at_end && self.patterns.iter().any(|p| p.starts_with(rest)) {
                    break;
                }
            }
            i += 1;
        }
        if let Some(out) = &mut out {
            out.extend_from_slice(&buf[copied..i]);
        }
        (out, i)
    }
}

/// Replaces secrets in a stream of chunks. Bytes that could be the start of a secret split
/// across chunks are held back until the next chunk (or [`Scrubber::finish`]) decides.
#[derive(Clone, Debug)]
pub struct Scrubber {
    matcher: Arc<Matcher>,
    carry: Vec<u8>,
}

impl Scrubber {
    /// Scrubs the next chunk; returns the bytes that are safe to send now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let (out, held) = self.matcher.replace(&buf, false);
        let out = out.into_owned();
        self.carry = buf[held..].to_vec();
        out
    }

    /// [`Scrubber::push`] for a shared buffer: a chunk with nothing to replace or hold back is
    /// returned as a slice of itself, without a copy.
    pub fn push_bytes(&mut self, chunk: Bytes) -> Bytes {
        if !self.carry.is_empty() {
            return Bytes::from(self.push(&chunk));
        }
        let (out, held) = self.matcher.replace(&chunk, false);
        let out = match out {
            Cow::Borrowed(_) => chunk.slice(..held),
            Cow::Owned(v) => Bytes::from(v),
        };
        self.carry = chunk[held..].to_vec();
        out
    }

    /// Flushes what was held back at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.carry);
        self.matcher.replace(&buf, true).0.into_owned()
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

    /// The shared-buffer path gives the same output as `push` however the stream is cut.
    #[test]
    fn push_bytes_handles_every_split() {
        let s = set();
        let mut text = b"x ".to_vec();
        text.extend(TOKEN);
        text.extend(b" y ");
        text.extend(percent_encode(TOKEN, true));
        text.extend(b" zz-other-secret-4 zz-other-secret-42");
        let want = s.scrub(&text);
        assert_eq!(
            want,
            b"x [REDACTED] y [REDACTED] zz-other-secret-4 [REDACTED]"
        );
        let text = Bytes::from(text);
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let mut sc = s.scrubber();
                let mut out = sc.push_bytes(text.slice(..cut)).to_vec();
                out.extend(sc.push_bytes(text.slice(cut..cut2)));
                out.extend(sc.push_bytes(text.slice(cut2..)));
                out.extend(sc.finish());
                assert_eq!(out, want, "cuts {cut} {cut2}");
            }
        }
    }

    /// A chunk with nothing to replace or hold back is passed on without a copy.
    #[test]
    fn push_bytes_does_not_copy_clean_data() {
        let mut sc = set().scrubber();
        let chunk = Bytes::from(vec![b'.'; 64 * 1024]);
        let out = sc.push_bytes(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(out.len(), chunk.len());
        assert!(sc.finish().is_empty());
    }

    /// Long clean runs with secrets far apart: what the searcher skips is still scrubbed.
    #[test]
    fn scrubber_finds_secrets_in_long_data() {
        let s = set();
        let mut text = Vec::new();
        for form in [TOKEN.to_vec(), hex::encode_upper(TOKEN).into_bytes()] {
            text.extend(vec![b'L'; 100_000]);
            text.extend(form);
        }
        text.extend(vec![b'L'; 100_000]);
        for chunk_len in [1, 7, 16 * 1024, text.len()] {
            let mut sc = s.scrubber();
            let mut out = Vec::new();
            for chunk in text.chunks(chunk_len) {
                out.extend(sc.push_bytes(Bytes::copy_from_slice(chunk)));
            }
            out.extend(sc.finish());
            assert_eq!(out.len(), 300_000 + 2 * REDACTED.len(), "{chunk_len}");
            assert_eq!(s.find_in(&out, None), None, "{chunk_len}");
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
