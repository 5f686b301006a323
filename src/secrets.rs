//! The bundle's secrets as byte patterns, and the one normaliser through which every byte is
//! looked at: finding secrets in what leaves (the gateway's requests, git-gate's pushed blobs)
//! and scrubbing them from what comes back (the gateway's responses, log lines).
//!
//! Two layers, both one pass:
//! - The **normaliser** ([`normalise`]) undoes the reversible wrappings an encoded secret can
//!   travel in: percent-escapes (partial, double and deeper: decoded bytes are decoded again),
//!   JSON string escapes (`\/`, `\uXXXX`, `\n`…) and line breaks with the indentation after
//!   them (so MIME's 76-column base64 and wrapped hex join up). Bytes between escapes are copied
//!   as runs; data without `%`, `\`, CR or LF is not copied at all.
//! - One **automaton** (Aho-Corasick, ASCII case-insensitive, so hex of any case matches) over
//!   each secret's forms in normalised space: raw, hex, and standard and URL-safe base64 at each
//!   of the three byte alignments, trimmed to the characters the secret alone decides (so
//!   padding, or a token inside a larger blob, makes no difference).
//!
//! Besides the bundle's own secrets, [`find_credential`] knows well-known credential formats
//! (private keys, cloud and forge tokens) by prefix and shape, in the same normalised space.
//!
//! Invariants: a scrubbed stream holds no form of a secret however it is cut into chunks (a
//! possible start of one is held back until the next chunk decides); a match in normalised
//! space redacts the whole original span it came from; secrets shorter than
//! [`MIN_SECRET_LEN`] are refused (they would match ordinary text). Only secret *names* ever
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

/// Most indentation dropped after a line break: enough for any wrapped block, and it bounds
/// what a stream can make the scrubber hold back.
const MAX_INDENT: usize = 64;

/// Most bytes a [`Scrubber`] holds back between chunks. Honest data needs a few hundred at
/// most (a secret's longest form, escaped); only a run of escapes that never completes
/// exceeds it, and that stream is refused rather than passed unread.
pub const MAX_HELD_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret in {name} is shorter than {MIN_SECRET_LEN} bytes; use the real token")]
    TooShort { name: String },
    #[error(
        "a stream held more than {MAX_HELD_BYTES} bytes of unfinished escapes; it cannot be scrubbed as it streams, so it is cut"
    )]
    Unscannable,
}

/// All secrets of one bundle, with their encoded forms.
#[derive(Clone, Debug, Default)]
pub struct SecretSet {
    names: Arc<[String]>,
    matcher: Arc<Matcher>,
}

impl SecretSet {
    /// `secrets` are (name, value) pairs; the name (an environment variable) is what gets
    /// reported when a value is found.
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<SecretSet, SecretError> {
        let mut names = Vec::new();
        let mut patterns = Vec::new();
        for (name, value) in secrets {
            if value.len() < MIN_SECRET_LEN {
                return Err(SecretError::TooShort {
                    name: name.to_string(),
                });
            }
            let owner = names.len();
            names.push(name.to_string());
            patterns.extend(forms(value).into_iter().map(|(bytes, folded)| Pattern {
                bytes,
                owner,
                folded,
            }));
        }
        Ok(SecretSet {
            names: names.into(),
            matcher: Arc::new(Matcher::new(patterns)),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name of the first secret found in `data` (any bytes: a header, a body, a blob) in
    /// any of its forms, skipping the secret named `except`.
    pub fn find_in(&self, data: &[u8], except: Option<&str>) -> Option<&str> {
        let wanted = |owner: usize| Some(self.names[owner].as_str()) != except;
        let found = match normalise(data) {
            Cow::Borrowed(_) => self.matcher.find(data, wanted),
            Cow::Owned(norm) if memchr::memchr2(b'%', b'\\', data).is_none() => {
                self.matcher.find(&norm, wanted)
            }
            // An escape can swallow the start of a form written right after it: the bytes as
            // they are, and with only their line breaks dropped, are looked at too.
            Cow::Owned(norm) => self
                .matcher
                .find(&norm, wanted)
                .or_else(|| self.matcher.find(data, wanted))
                .or_else(|| {
                    let lines = Normalised::new(data, true, false, Mode::Lines).bytes;
                    self.matcher.find(&lines, wanted)
                }),
        }?;
        Some(&self.names[found])
    }

    /// A streaming scrubber for all the secrets' forms. Cheap: the automaton is built once, in
    /// [`SecretSet::new`], and shared.
    pub fn scrubber(&self) -> Scrubber {
        Scrubber {
            matcher: self.matcher.clone(),
            carry: Vec::new(),
            found: false,
        }
    }

    /// Replaces every secret in `data` (one complete buffer, e.g. a header value).
    pub fn scrub(&self, data: &[u8]) -> Vec<u8> {
        let (out, _) = self.matcher.replace(data, true);
        out.scrubbed.into_owned()
    }

    /// [`SecretSet::scrub`] that borrows when nothing was replaced.
    pub fn scrub_cow<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        self.matcher.replace(data, true).0.scrubbed
    }
}

/// The forms in which `value` is searched for, in normalised space, each with whether it
/// matches in any case (hex only: base64 and the raw token are case-sensitive).
fn forms(value: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let mut out = vec![
        (normalise(value).into_owned(), false),
        (hex::encode(value).into_bytes(), true),
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
                out.push((encoded.as_bytes()[start..end].to_vec(), false));
            }
        }
    }
    out.retain(|(p, _)| p.len() >= MIN_SECRET_LEN.min(value.len()));
    out.sort();
    out.dedup();
    out
}

/// The normalised view of `data`, as the scanner sees it (see the module docs). Borrowed when
/// `data` holds nothing to undo.
pub fn normalise(data: &[u8]) -> Cow<'_, [u8]> {
    Normalised::new(data, true, false, Mode::Full).bytes
}

/// Which wrappings a view undoes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Escapes and line breaks.
    Full,
    /// Line breaks only: an escape that swallows the first characters of a wrapped form
    /// (`%8` before base64 that starts with `d`) must not hide it.
    Lines,
}

/// One stretch of normalised output and where it came from. A run maps byte for byte; a
/// decoded stretch (an escape) maps as a whole to its original span.
#[derive(Clone, Copy, Debug)]
struct Seg {
    norm: usize,
    orig: usize,
    orig_len: usize,
    run: bool,
}

/// A normalised view with, on request, the map back to the original bytes.
struct Normalised<'a> {
    bytes: Cow<'a, [u8]>,
    /// Empty when `bytes` is `data` itself.
    segs: Vec<Seg>,
    /// Escapes that decoded to a dropped line break: spans with no output, but not to be cut.
    dropped: Vec<(usize, usize)>,
    /// Input from here on was not decoded: it may start an escape the next chunk completes.
    complete: usize,
}

impl<'a> Normalised<'a> {
    /// `at_end`: no more input follows, so an unfinished escape is taken literally.
    fn new(data: &'a [u8], at_end: bool, map: bool, mode: Mode) -> Normalised<'a> {
        let m3 = memchr::memchr3(b'%', b'\\', b'\n', data).unwrap_or(data.len());
        let cr = memchr::memchr(b'\r', data).unwrap_or(data.len());
        if m3 == data.len() && cr == data.len() {
            return Normalised {
                bytes: Cow::Borrowed(data),
                segs: Vec::new(),
                dropped: Vec::new(),
                complete: data.len(),
            };
        }
        let mut d = Decoder {
            data,
            pos: 0,
            next_m3: m3,
            next_cr: cr,
            back: Vec::new(),
            out: Vec::with_capacity(data.len()),
            segs: Vec::new(),
            dropped: Vec::new(),
            map,
            escapes: mode == Mode::Full,
        };
        let complete = d.run(at_end);
        Normalised {
            bytes: Cow::Owned(d.out),
            segs: d.segs,
            dropped: d.dropped,
            complete,
        }
    }

    fn seg(&self, n: usize) -> Option<&Seg> {
        let i = self.segs.partition_point(|s| s.norm <= n);
        self.segs.get(i.checked_sub(1)?)
    }

    /// `at`, or the start of the decoded escape it falls inside: a place where normalising can
    /// start again and see the same.
    fn align(&self, at: usize) -> usize {
        let i = self.segs.partition_point(|s| s.orig <= at);
        if let Some(s) = i.checked_sub(1).map(|i| &self.segs[i])
            && !s.run
            && at < s.orig + s.orig_len
        {
            return s.orig;
        }
        let i = self.dropped.partition_point(|d| d.0 <= at);
        match i.checked_sub(1).map(|i| self.dropped[i]) {
            Some((start, end)) if at < end => start,
            _ => at,
        }
    }

    /// Where normalised byte `n` starts in the original.
    fn orig_start(&self, n: usize) -> usize {
        match self.seg(n) {
            None => n,
            Some(s) if s.run => s.orig + (n - s.norm),
            Some(s) => s.orig,
        }
    }

    /// Where normalised byte `n` ends in the original (exclusive).
    fn orig_end(&self, n: usize) -> usize {
        match self.seg(n) {
            None => n + 1,
            Some(s) if s.run => s.orig + (n - s.norm) + 1,
            Some(s) => s.orig + s.orig_len,
        }
    }
}

/// An input byte still to be normalised, with its original span (decoded bytes are fed back).
#[derive(Clone, Copy, Debug)]
struct Item {
    byte: u8,
    start: usize,
    end: usize,
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    /// The next `%`, `\` or LF at or after `pos` (or the end), and the next CR.
    next_m3: usize,
    next_cr: usize,
    /// Decoded bytes to read again before `data[pos..]`; the last is next.
    back: Vec<Item>,
    out: Vec<u8>,
    segs: Vec<Seg>,
    dropped: Vec<(usize, usize)>,
    map: bool,
    /// Whether escapes are undone (else only line breaks are dropped).
    escapes: bool,
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

impl Decoder<'_> {
    fn peek(&self, k: usize) -> Option<Item> {
        let nb = self.back.len();
        if k < nb {
            return Some(self.back[nb - 1 - k]);
        }
        let i = self.pos + (k - nb);
        self.data.get(i).map(|&byte| Item {
            byte,
            start: i,
            end: i + 1,
        })
    }

    /// Consumes `k` items (all available); returns the span they cover.
    fn take(&mut self, k: usize) -> (usize, usize) {
        let (mut start, mut end) = (usize::MAX, 0);
        for _ in 0..k {
            let item = match self.back.pop() {
                Some(item) => item,
                None => {
                    let i = self.pos;
                    self.pos += 1;
                    Item {
                        byte: 0,
                        start: i,
                        end: i + 1,
                    }
                }
            };
            start = start.min(item.start);
            end = end.max(item.end);
        }
        (start, end)
    }

    fn emit(&mut self, bytes: &[u8], start: usize, end: usize) {
        let norm = self.out.len();
        self.out.extend_from_slice(bytes);
        if !self.map {
            return;
        }
        let run = bytes.len() == end - start;
        if run
            && let Some(last) = self.segs.last_mut()
            && last.run
            && last.orig + last.orig_len == start
            && last.norm + last.orig_len == norm
        {
            last.orig_len += end - start;
            return;
        }
        self.segs.push(Seg {
            norm,
            orig: start,
            orig_len: end - start,
            run,
        });
    }

    fn next_special(&mut self) -> usize {
        let rest = |from: usize| from..self.data.len();
        if self.next_m3 < self.pos {
            let r = rest(self.pos);
            self.next_m3 = memchr::memchr3(b'%', b'\\', b'\n', &self.data[r.clone()])
                .map_or(self.data.len(), |i| r.start + i);
        }
        if self.next_cr < self.pos {
            let r = rest(self.pos);
            self.next_cr = memchr::memchr(b'\r', &self.data[r.clone()])
                .map_or(self.data.len(), |i| r.start + i);
        }
        self.next_m3.min(self.next_cr)
    }

    /// Moves the next `n` items (as far as there are any) onto the pushback stack.
    fn materialise(&mut self, n: usize) {
        while self.back.len() < n && self.pos < self.data.len() {
            let i = self.pos;
            self.pos += 1;
            self.back.insert(
                0,
                Item {
                    byte: self.data[i],
                    start: i,
                    end: i + 1,
                },
            );
        }
    }

    /// Replaces the `n` items at position `k` by one decoded byte.
    fn collapse(&mut self, k: usize, n: usize, byte: u8) {
        self.materialise(k + n);
        let hi = self.back.len() - k;
        let lo = hi - n;
        let start = self.back[lo..hi].iter().map(|i| i.start).min().unwrap_or(0);
        let end = self.back[lo..hi].iter().map(|i| i.end).max().unwrap_or(0);
        self.back.splice(lo..hi, [Item { byte, start, end }]);
    }

    /// The item at position `k` with percent-escapes there decoded (again and again: a
    /// decoded byte can be `%` once more).
    fn look(&mut self, k: usize, undecided: bool) -> Look {
        loop {
            let Some(item) = self.peek(k) else {
                return if undecided {
                    Look::Incomplete
                } else {
                    Look::End
                };
            };
            if item.byte != b'%' || !self.escapes {
                return Look::Item(item);
            }
            let h = self.peek(k + 1).map(|i| hex_value(i.byte));
            let l = self.peek(k + 2).map(|i| hex_value(i.byte));
            match (h, l) {
                (Some(Some(h)), Some(Some(l))) => self.collapse(k, 3, (h << 4) | l),
                (None, _) | (Some(Some(_)), None) if undecided => return Look::Incomplete,
                _ => return Look::Item(item),
            }
        }
    }

    /// The value of a `\uXXXX` escape at position 0, whose four digits are at 2..6.
    fn unicode_escape(&mut self, undecided: bool) -> Result<Option<char>, ()> {
        let mut value = 0u32;
        for k in 2..6 {
            match self.look(k, undecided) {
                Look::Incomplete => return Err(()),
                Look::End => return Ok(None),
                Look::Item(i) => match hex_value(i.byte) {
                    Some(d) => value = value << 4 | u32::from(d),
                    None => return Ok(None),
                },
            }
        }
        Ok(char::from_u32(value))
    }

    /// Normalises everything it can; returns where undecided input starts.
    fn run(&mut self, at_end: bool) -> usize {
        let undecided = !at_end;
        loop {
            if self.back.is_empty() {
                let special = self.next_special();
                if special > self.pos {
                    let (a, b) = (self.pos, special);
                    self.pos = b;
                    let data = self.data;
                    self.emit(&data[a..b], a, b);
                }
            }
            let c = match self.look(0, undecided) {
                Look::Item(c) => c,
                Look::End => return self.data.len(),
                Look::Incomplete => return self.peek(0).map_or(self.data.len(), |i| i.start),
            };
            match c.byte {
                b'\r' | b'\n' => {
                    let mut k = 1;
                    while let Some(n) = self.peek(k) {
                        match n.byte {
                            b'\r' | b'\n' => {}
                            b' ' | b'\t' if k <= MAX_INDENT => {}
                            _ => break,
                        }
                        k += 1;
                    }
                    if undecided && self.peek(k).is_none() && k <= MAX_INDENT {
                        return c.start;
                    }
                    for _ in 0..k {
                        let (start, end) = self.take(1);
                        if self.map && end - start > 1 {
                            self.dropped.push((start, end));
                        }
                    }
                }
                b'\\' if self.escapes => match self.look(1, undecided) {
                    Look::Incomplete => return c.start,
                    Look::Item(Item { byte: b'u', .. }) => match self.unicode_escape(undecided) {
                        Err(()) => return c.start,
                        Ok(Some(ch)) if ch.is_ascii() => {
                            let (start, end) = self.take(6);
                            // Read again: `\u0025` can start a percent-escape.
                            self.back.push(Item {
                                byte: ch as u8,
                                start,
                                end,
                            });
                        }
                        Ok(Some(ch)) => {
                            let (start, end) = self.take(6);
                            let mut buf = [0u8; 4];
                            self.emit(ch.encode_utf8(&mut buf).as_bytes(), start, end);
                        }
                        // A surrogate or not an escape: the backslash is literal.
                        Ok(None) => {
                            self.take(1);
                            self.emit(b"\\", c.start, c.end);
                        }
                    },
                    Look::Item(Item {
                        byte: next @ (b'/' | b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f'),
                        ..
                    }) => {
                        let (start, end) = self.take(2);
                        let byte = match next {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'f' => 0x0c,
                            other => other,
                        };
                        if matches!(byte, b'\n' | b'\r') {
                            // Read again, so an escaped line break joins lines like a real one.
                            self.back.push(Item { byte, start, end });
                        } else {
                            // An escaped backslash is literal: never the start of another escape.
                            self.emit(&[byte], start, end);
                        }
                    }
                    Look::Item(_) | Look::End => {
                        self.take(1);
                        self.emit(b"\\", c.start, c.end);
                    }
                },
                byte => {
                    self.take(1);
                    self.emit(&[byte], c.start, c.end);
                }
            }
        }
    }
}

/// What is at a position of the input, percent-escapes decoded.
enum Look {
    Item(Item),
    /// No more input, and none will come.
    End,
    /// No more input yet: the next chunk decides.
    Incomplete,
}

/// One form of one secret.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    bytes: Vec<u8>,
    owner: usize,
    /// Matches in any ASCII case (hex); else exactly.
    folded: bool,
}

impl Pattern {
    fn is_prefix_of(&self, hay: &[u8]) -> bool {
        hay.len() >= self.bytes.len() && self.same(&hay[..self.bytes.len()], &self.bytes)
    }

    /// Whether `hay` (shorter than the pattern) could grow into it.
    fn could_start(&self, hay: &[u8]) -> bool {
        hay.len() < self.bytes.len() && self.same(hay, &self.bytes[..hay.len()])
    }

    fn same(&self, a: &[u8], b: &[u8]) -> bool {
        if self.folded {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    }
}

/// Leftmost-longest and overlapping automata over some of the patterns.
#[derive(Debug)]
struct Automata {
    /// For replacing: among matches starting at one place, the longest, so a raw token is
    /// not half-replaced by a shorter form's match.
    leftmost: AhoCorasick,
    /// Every match, for finding a secret other than an excepted one.
    overlapping: AhoCorasick,
    /// Automaton pattern index to [`Matcher::patterns`] index.
    index: Vec<usize>,
}

impl Automata {
    /// `None` without patterns, or should building fail (only past size limits a few dozen
    /// short patterns cannot reach): then the matcher tries each pattern at each byte.
    fn build(patterns: &[Pattern], folded: bool) -> Option<Automata> {
        let index: Vec<usize> = (0..patterns.len())
            .filter(|&i| patterns[i].folded == folded)
            .collect();
        if index.is_empty() {
            return None;
        }
        let build = |kind| {
            AhoCorasick::builder()
                .match_kind(kind)
                // Case-insensitive automata lose the fast prefilter on text unless their
                // patterns start with digits, as hex does: so only hex is folded.
                .ascii_case_insensitive(folded)
                .build(index.iter().map(|&i| &patterns[i].bytes))
                .ok()
        };
        Some(Automata {
            leftmost: build(MatchKind::LeftmostLongest)?,
            overlapping: build(MatchKind::Standard)?,
            index,
        })
    }
}

/// The automata over every form of every secret, and what the streaming tail check needs.
#[derive(Debug, Default)]
struct Matcher {
    /// Longest first.
    patterns: Vec<Pattern>,
    exact: Option<Automata>,
    folded: Option<Automata>,
    /// Whether every pattern kind got its automaton (else the bytewise fallback runs).
    complete: bool,
    /// Bytes that start some pattern: only there can a held-back prefix begin.
    first: Vec<bool>,
    longest: usize,
}

/// The result of one replacement step.
struct Replaced<'a> {
    scrubbed: Cow<'a, [u8]>,
    found: bool,
}

impl Matcher {
    fn new(mut patterns: Vec<Pattern>) -> Matcher {
        patterns.sort_by(|a, b| {
            b.bytes
                .len()
                .cmp(&a.bytes.len())
                .then(a.bytes.cmp(&b.bytes))
        });
        patterns.dedup_by(|a, b| a.bytes == b.bytes);
        let mut first = vec![false; 256];
        for p in &patterns {
            first[usize::from(p.bytes[0])] = true;
            if p.folded {
                first[usize::from(p.bytes[0].to_ascii_lowercase())] = true;
                first[usize::from(p.bytes[0].to_ascii_uppercase())] = true;
            }
        }
        let exact = Automata::build(&patterns, false);
        let folded = Automata::build(&patterns, true);
        let needs = |f: bool| patterns.iter().any(|p| p.folded == f);
        let complete = (exact.is_some() || !needs(false)) && (folded.is_some() || !needs(true));
        let longest = patterns.first().map_or(0, |p| p.bytes.len());
        Matcher {
            exact,
            folded,
            complete,
            first,
            longest,
            patterns,
        }
    }

    fn automata(&self) -> impl Iterator<Item = &Automata> {
        self.exact.iter().chain(self.folded.iter())
    }

    /// The owner of a match in `view` for which `wanted` holds.
    fn find(&self, view: &[u8], wanted: impl Fn(usize) -> bool) -> Option<usize> {
        if !self.complete {
            return (0..view.len()).find_map(|i| {
                self.patterns
                    .iter()
                    .find(|p| p.is_prefix_of(&view[i..]) && wanted(p.owner))
                    .map(|p| p.owner)
            });
        }
        // Clean data, the common case, is settled by fast leftmost passes; only a match of an
        // excepted secret needs every overlapping match looked at.
        let mut skipped = false;
        for a in self.automata() {
            for m in a.leftmost.find_iter(view) {
                let owner = self.patterns[a.index[m.pattern().as_usize()]].owner;
                if wanted(owner) {
                    return Some(owner);
                }
                skipped = true;
            }
        }
        if !skipped {
            return None;
        }
        self.automata().find_map(|a| {
            a.overlapping
                .find_overlapping_iter(view)
                .map(|m| self.patterns[a.index[m.pattern().as_usize()]].owner)
                .find(|&owner| wanted(owner))
        })
    }

    /// The scrubbed form of `buf` up to the returned offset, from which input is held back (it
    /// could be the start of a secret, or of an escape, that the next chunk completes).
    /// Borrowed when nothing was replaced, so clean data is not copied.
    ///
    /// Matches are looked for in the normalised view and, when normalising changed anything,
    /// in the bytes as they are too: an escape can swallow the first characters of a form
    /// written right after it (`%` before a token that starts with two hex digits).
    fn replace<'a>(&self, buf: &'a [u8], at_end: bool) -> (Replaced<'a>, usize) {
        if self.patterns.is_empty() {
            let scrubbed = Cow::Borrowed(buf);
            return (
                Replaced {
                    scrubbed,
                    found: false,
                },
                buf.len(),
            );
        }
        let view = Normalised::new(buf, at_end, true, Mode::Full);
        let (mut spans, mut held) = self.spans(&view, at_end);
        // Dropped line breaks cannot hide a form; a decoded escape can swallow the start of
        // one written right after it. So with escapes around, the bytes as they are, and with
        // only their line breaks dropped, are looked at too.
        if !view.segs.is_empty() && memchr::memchr2(b'%', b'\\', buf).is_some() {
            let (raw, held_raw) = self.matches(buf, at_end);
            spans.extend(raw);
            held = held.min(held_raw);
            if memchr::memchr2(b'\n', b'\r', buf).is_some() {
                let lines = Normalised::new(buf, at_end, true, Mode::Lines);
                let (more, held_lines) = self.spans(&lines, at_end);
                spans.extend(more);
                held = held.min(held_lines);
            }
            spans.sort_unstable();
        }
        // Merge overlaps (two forms, or two matches sharing a decoded multi-byte character).
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (s, e) in spans {
            match merged.last_mut() {
                Some(last) if s < last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        // A match reaching past the hold point is decided with the next chunk, and the next
        // chunk starts where normalising sees the same as now (not inside an escape).
        loop {
            held = view.align(held);
            match merged.last() {
                Some(&(s, e)) if e > held => {
                    held = held.min(s);
                    merged.pop();
                }
                _ => break,
            }
        }
        if merged.is_empty() {
            let scrubbed = Cow::Borrowed(&buf[..held]);
            return (
                Replaced {
                    scrubbed,
                    found: false,
                },
                held,
            );
        }
        let mut out = Vec::with_capacity(held);
        let mut copied = 0;
        for (s, e) in merged {
            out.extend_from_slice(&buf[copied..s]);
            out.extend_from_slice(REDACTED);
            copied = e;
        }
        out.extend_from_slice(&buf[copied..held]);
        (
            Replaced {
                scrubbed: Cow::Owned(out),
                found: true,
            },
            held,
        )
    }

    /// The complete matches in a view, as original spans, and the original offset where input
    /// must be held back.
    fn spans(&self, view: &Normalised<'_>, at_end: bool) -> (Vec<(usize, usize)>, usize) {
        let (matches, held_norm) = self.matches(&view.bytes, at_end);
        let held = if held_norm < view.bytes.len() {
            view.orig_start(held_norm)
        } else {
            view.complete
        };
        let spans = matches
            .into_iter()
            .map(|(s, e)| (view.orig_start(s), view.orig_end(e - 1)))
            .collect();
        (spans, held)
    }

    /// The complete matches in `hay`, and where input must be held back.
    fn matches(&self, hay: &[u8], at_end: bool) -> (Vec<(usize, usize)>, usize) {
        // Only the last `longest - 1` bytes can start a proper prefix of a pattern; before
        // them, every match is complete and the automata decide alone.
        let tail = if at_end {
            hay.len()
        } else {
            hay.len().saturating_sub(self.longest.saturating_sub(1))
        };
        let mut matches: Vec<(usize, usize)> = Vec::new();
        let mut resume = 0;
        if self.complete {
            for a in self.automata() {
                for m in a.leftmost.find_iter(hay) {
                    if m.start() >= tail {
                        break;
                    }
                    matches.push((m.start(), m.end()));
                    resume = resume.max(m.end());
                }
            }
            matches.sort_unstable();
            resume = resume.max(tail);
        }
        let held = self.replace_bytewise(hay, resume, at_end, &mut matches);
        (matches, held)
    }

    /// Tries every pattern at every byte of `hay[from..]` (a short tail, or everything if an
    /// automaton is missing), adding full matches; returns where input must be held back.
    fn replace_bytewise(
        &self,
        hay: &[u8],
        from: usize,
        at_end: bool,
        matches: &mut Vec<(usize, usize)>,
    ) -> usize {
        let mut i = from;
        while i < hay.len() {
            if self.first[usize::from(hay[i])] {
                let rest = &hay[i..];
                if !at_end && self.patterns.iter().any(|p| p.could_start(rest)) {
                    return i;
                }
                if let Some(p) = self.patterns.iter().find(|p| p.is_prefix_of(rest)) {
                    matches.push((i, i + p.bytes.len()));
                    i += p.bytes.len();
                    continue;
                }
            }
            i += 1;
        }
        hay.len()
    }
}

/// Replaces secrets in a stream of chunks. Bytes that could be the start of a secret (or of an
/// escape) split across chunks are held back until the next chunk or [`Scrubber::finish`]
/// decides.
#[derive(Clone, Debug)]
pub struct Scrubber {
    matcher: Arc<Matcher>,
    carry: Vec<u8>,
    found: bool,
}

impl Scrubber {
    /// Scrubs the next chunk; returns the bytes that are safe to send now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, SecretError> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let (out, held) = self.matcher.replace(&buf, false);
        self.found |= out.found;
        let out = out.scrubbed.into_owned();
        self.hold(&buf[held..])?;
        Ok(out)
    }

    /// [`Scrubber::push`] for a shared buffer: a chunk with nothing to replace or hold back is
    /// returned as a slice of itself, without a copy.
    pub fn push_bytes(&mut self, chunk: Bytes) -> Result<Bytes, SecretError> {
        if !self.carry.is_empty() {
            return self.push(&chunk).map(Bytes::from);
        }
        let (out, held) = self.matcher.replace(&chunk, false);
        self.found |= out.found;
        let out = match out.scrubbed {
            Cow::Borrowed(_) => chunk.slice(..held),
            Cow::Owned(v) => Bytes::from(v),
        };
        self.hold(&chunk[held..])?;
        Ok(out)
    }

    fn hold(&mut self, rest: &[u8]) -> Result<(), SecretError> {
        if rest.len() > MAX_HELD_BYTES {
            return Err(SecretError::Unscannable);
        }
        self.carry = rest.to_vec();
        Ok(())
    }

    /// Flushes what was held back at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.carry);
        let (out, _) = self.matcher.replace(&buf, true);
        self.found |= out.found;
        out.scrubbed.into_owned()
    }

    /// Whether some secret was replaced so far.
    pub fn found(&self) -> bool {
        self.found
    }
}

/// Well-known credential formats, looked for in what leaves besides the bundle's own secrets
/// (git-gate's pushed objects): each is a fixed prefix, found by one automaton, and a shape of
/// what follows it, checked by hand. Returns the kind found (a name, never the value).
pub fn find_credential(data: &[u8]) -> Option<&'static str> {
    let view = normalise(data);
    let hay: &[u8] = &view;
    for m in credential_prefixes().find_overlapping_iter(hay) {
        let (kind, _, shape) = CREDENTIALS[m.pattern().as_usize()];
        let before = m.start().checked_sub(1).map(|i| hay[i]);
        if shape.matches(before, &hay[m.end()..]) {
            return Some(kind);
        }
    }
    None
}

/// What must follow a credential's prefix.
#[derive(Clone, Copy)]
enum Shape {
    /// A PEM armour header: upper-case words then `PRIVATE KEY-----` (or `… KEY BLOCK-----`).
    PemPrivateKey,
    /// Exactly `n` characters of `class`, then no more of them; the prefix starts a word.
    Exactly(usize, fn(u8) -> bool),
    /// At least `n` characters of `class`; the prefix starts a word.
    AtLeast(usize, fn(u8) -> bool),
}

fn is_upper_alnum(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}
fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl Shape {
    fn matches(self, before: Option<u8>, rest: &[u8]) -> bool {
        let starts_word = !before.is_some_and(is_word);
        let run = |class: fn(u8) -> bool| rest.iter().take_while(|&&b| class(b)).count();
        match self {
            Shape::PemPrivateKey => {
                let line = &rest[..rest.len().min(64)];
                let words = line
                    .iter()
                    .take_while(|&&b| b.is_ascii_uppercase() || b == b' ')
                    .count();
                let tail = &line[words..];
                let head = &line[..words];
                (head.ends_with(b"PRIVATE KEY") && tail.starts_with(b"-----"))
                    || (head.ends_with(b"PRIVATE KEY BLOCK") && tail.starts_with(b"-----"))
            }
            Shape::Exactly(n, class) => starts_word && run(class) == n,
            Shape::AtLeast(n, class) => starts_word && run(class) >= n,
        }
    }
}

/// The credential formats: (kind, prefix, what follows the prefix).
const CREDENTIALS: &[(&str, &str, Shape)] = &[
    (
        "PEM or OpenSSH private key",
        "-----BEGIN ",
        Shape::PemPrivateKey,
    ),
    (
        "AWS access key ID",
        "AKIA",
        Shape::Exactly(16, is_upper_alnum),
    ),
    (
        "AWS temporary access key ID",
        "ASIA",
        Shape::Exactly(16, is_upper_alnum),
    ),
    (
        "GitHub personal access token",
        "ghp_",
        Shape::Exactly(36, is_alnum),
    ),
    ("GitHub OAuth token", "gho_", Shape::Exactly(36, is_alnum)),
    (
        "GitHub user-to-server token",
        "ghu_",
        Shape::Exactly(36, is_alnum),
    ),
    (
        "GitHub server-to-server token",
        "ghs_",
        Shape::Exactly(36, is_alnum),
    ),
    ("GitHub refresh token", "ghr_", Shape::Exactly(36, is_alnum)),
    (
        "GitHub fine-grained token",
        "github_pat_",
        Shape::AtLeast(70, is_word),
    ),
    (
        "Anthropic API key",
        "sk-ant-",
        Shape::AtLeast(32, is_token_char),
    ),
    (
        "OpenAI API key",
        "sk-proj-",
        Shape::AtLeast(32, is_token_char),
    ),
    ("Slack token", "xoxb-", Shape::AtLeast(20, is_token_char)),
    ("Google API key", "AIza", Shape::Exactly(35, is_token_char)),
];

fn credential_prefixes() -> &'static AhoCorasick {
    static AUTOMATON: std::sync::OnceLock<AhoCorasick> = std::sync::OnceLock::new();
    AUTOMATON.get_or_init(|| {
        AhoCorasick::new(CREDENTIALS.iter().map(|c| c.1)).expect("fixed credential prefixes build")
    })
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    use super::*;

    const TOKEN: &[u8] = b"sk-live-0123456789abcdef/+=?";
    const OTHER: &[u8] = b"zz-other-secret-42";

    fn set() -> SecretSet {
        SecretSet::new([("API_TOKEN", TOKEN), ("OTHER_TOKEN", OTHER)]).unwrap()
    }

    fn percent_all(data: &[u8]) -> String {
        data.iter().map(|b| format!("%{b:02X}")).collect()
    }

    fn percent_some(data: &[u8]) -> String {
        data.iter()
            .enumerate()
            .map(|(i, &b)| {
                if i % 3 == 0 {
                    format!("%{b:02x}")
                } else {
                    (b as char).to_string()
                }
            })
            .collect()
    }

    fn wrap(text: &str, cols: usize, eol: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        chars
            .chunks(cols)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(eol)
    }

    fn json_escape_all(data: &[u8]) -> String {
        data.iter().map(|b| format!("\\u{:04x}", b)).collect()
    }

    fn mixed_case_hex(data: &[u8]) -> String {
        hex::encode(data)
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }

    /// Every form a secret can travel in, each embedded in other text. Each row names its form.
    fn forms_table(token: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
        let mut blob = b"ab".to_vec();
        blob.extend_from_slice(token);
        blob.extend_from_slice(b"trailing bytes of a larger blob, long enough to wrap");
        let b64 = STANDARD.encode(&blob);
        let rows: Vec<(&'static str, String)> = vec![
            ("raw", String::from_utf8_lossy(token).into_owned()),
            ("hex lower", hex::encode(token)),
            ("hex upper", hex::encode_upper(token)),
            ("hex mixed case", mixed_case_hex(token)),
            ("hex wrapped LF", wrap(&hex::encode(token), 16, "\n")),
            ("base64 std padded", STANDARD.encode(token)),
            ("base64 std unpadded", STANDARD_NO_PAD.encode(token)),
            ("base64 url padded", URL_SAFE.encode(token)),
            ("base64 url unpadded", URL_SAFE_NO_PAD.encode(token)),
            ("base64 inside a blob", b64.clone()),
            ("base64 MIME 76 CRLF", wrap(&b64, 76, "\r\n")),
            ("base64 wrapped 10 LF", wrap(&b64, 10, "\n")),
            ("base64 wrapped, indented", wrap(&b64, 12, "\n    ")),
            ("percent, every byte", percent_all(token)),
            ("percent, partial", percent_some(token)),
            ("percent, double", percent_all(token).replace('%', "%25")),
            ("percent, triple", percent_all(token).replace('%', "%2525")),
            (
                "json slash escape",
                String::from_utf8_lossy(token).replace('/', "\\/"),
            ),
            ("json unicode escapes", json_escape_all(token)),
            ("json escaped newlines in base64", wrap(&b64, 20, "\\n")),
            (
                "percent-encoded json escape",
                String::from_utf8_lossy(token).replace('/', "%5C%2F"),
            ),
            (
                "after a percent sign",
                format!("%{}", String::from_utf8_lossy(token)),
            ),
            (
                "hex after a percent sign",
                format!("%{}", hex::encode(token)),
            ),
            (
                "after a backslash",
                format!("\\{}", String::from_utf8_lossy(token)),
            ),
            (
                "wrapped hex after a percent sign",
                format!("%{}", wrap(&hex::encode(token), 10, "\n")),
            ),
            (
                "json-escaped percent",
                percent_all(token).replace('%', "\\u0025"),
            ),
        ];
        rows.into_iter()
            .map(|(name, form)| {
                let mut text = b"{\"q\":1, \"x\": \"".to_vec();
                text.extend(form.as_bytes());
                text.extend(b"\", \"y\": 2}");
                (name, text)
            })
            .collect()
    }

    /// Every form is found by the scanner, and only the secret it belongs to.
    /// Credential shapes built at run time, so no source file holds one.
    fn credential(prefix: &str, body: &str, n: usize) -> String {
        format!("{prefix}{}", &body.repeat(n.div_ceil(body.len()))[..n])
    }

    #[test]
    fn credential_formats_table() {
        let pem = |kind: &str| format!("x\n-----BEGIN {kind}-----\nMIIB...\n");
        let found: Vec<(String, Option<&str>)> = vec![
            (
                pem("OPENSSH PRIVATE KEY"),
                Some("PEM or OpenSSH private key"),
            ),
            (pem("RSA PRIVATE KEY"), Some("PEM or OpenSSH private key")),
            (pem("EC PRIVATE KEY"), Some("PEM or OpenSSH private key")),
            (pem("PRIVATE KEY"), Some("PEM or OpenSSH private key")),
            (
                pem("ENCRYPTED PRIVATE KEY"),
                Some("PEM or OpenSSH private key"),
            ),
            (
                pem("PGP PRIVATE KEY BLOCK"),
                Some("PEM or OpenSSH private key"),
            ),
            (pem("CERTIFICATE"), None),
            (pem("PUBLIC KEY"), None),
            (
                format!("key = \"{}\"", credential("AKIA", "Q7XJ4ZK2", 16)),
                Some("AWS access key ID"),
            ),
            (
                credential("ASIA", "Q7XJ4ZK2", 16),
                Some("AWS temporary access key ID"),
            ),
            (credential("AKIA", "Q7XJ4ZK2", 15), None),
            (credential("AKIA", "Q7XJ4ZK2", 17), None),
            (format!("X{}", credential("AKIA", "Q7XJ4ZK2", 16)), None),
            (
                credential("ghp_", "aB3dE5gH7j", 36),
                Some("GitHub personal access token"),
            ),
            (
                credential("ghs_", "aB3dE5gH7j", 36),
                Some("GitHub server-to-server token"),
            ),
            (credential("ghp_", "aB3dE5gH7j", 20), None),
            (
                credential("github_pat_", "11AB_cd3", 82),
                Some("GitHub fine-grained token"),
            ),
            (
                credential("sk-ant-api03-", "Zx9-_aQ2", 93),
                Some("Anthropic API key"),
            ),
            (credential("sk-ant-", "Zx9", 10), None),
            (
                credential("sk-proj-", "Zx9-_aQ2", 48),
                Some("OpenAI API key"),
            ),
            (credential("AIza", "Sy_B-9xQ", 35), Some("Google API key")),
            (
                "ordinary text about AKIA and ghp_ prefixes".to_string(),
                None,
            ),
            // An escape does not hide one: the shared normaliser undoes it first.
            (
                credential("gh%70_", "aB3dE5gH7j", 36),
                Some("GitHub personal access token"),
            ),
        ];
        for (text, want) in found {
            assert_eq!(find_credential(text.as_bytes()), want, "{text:?}");
        }
    }

    #[test]
    fn scanner_finds_every_form() {
        let s = set();
        for (name, text) in forms_table(TOKEN) {
            assert_eq!(s.find_in(&text, None), Some("API_TOKEN"), "{name}");
            assert_eq!(s.find_in(&text, Some("API_TOKEN")), None, "{name}");
        }
        for (name, text) in forms_table(OTHER) {
            assert_eq!(s.find_in(&text, None), Some("OTHER_TOKEN"), "{name}");
        }
    }

    /// Near misses and ordinary text are not secrets.
    #[test]
    fn scanner_ignores_near_misses() {
        let s = set();
        let cases: &[&[u8]] = &[
            b"nothing secret here",
            b"sk-live-0123456789abcde",
            b"zz-other-secret-4",
            b"zz-other-secret-4%",
            b"%%%%\\\\\\u12\r\n\r\n",
            b"736b2d6c6976652d30313233343536",
        ];
        for case in cases {
            assert_eq!(
                s.find_in(case, None),
                None,
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    /// The scrubber removes every form the scanner finds, and leaves the rest unchanged.
    #[test]
    fn scrubber_removes_every_form() {
        let s = set();
        for token in [TOKEN, OTHER] {
            for (name, text) in forms_table(token) {
                let out = s.scrub(&text);
                assert_eq!(
                    s.find_in(&out, None),
                    None,
                    "{name}: {}",
                    String::from_utf8_lossy(&out)
                );
                let text_s = String::from_utf8_lossy(&out);
                assert!(
                    text_s.starts_with("{\"q\":1, \"x\": \""),
                    "{name}: {text_s}"
                );
                assert!(text_s.ends_with("\", \"y\": 2}"), "{name}: {text_s}");
                assert!(text_s.contains("[REDACTED]"), "{name}: {text_s}");
            }
        }
    }

    /// The normaliser's table: what each wrapping becomes.
    #[test]
    fn normaliser_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"plain", b"plain"),
            (b"a%2Db", b"a-b"),
            (b"a%252Db", b"a-b"),
            (b"a%25252db", b"a-b"),
            (b"100%", b"100%"),
            (b"%zz%4", b"%zz%4"),
            (b"a\\/b", b"a/b"),
            (b"\\u0041\\u00e9", "A\u{e9}".as_bytes()),
            (b"\\ud83d", b"\\ud83d"),
            (b"\\\\u0041", b"\\u0041"),
            (b"ab\r\ncd\n  ef", b"abcdef"),
            (b"ab\\ncd", b"abcd"),
            (b"\\u00252D", b"-"),
            (b"%5C%2F", b"/"),
            (b"a\\qb", b"a\\qb"),
            (b"tail\\", b"tail\\"),
        ];
        for (input, want) in cases {
            assert_eq!(
                &normalise(input)[..],
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(SecretSet::new([("T", &b"short"[..])]).is_err());
    }

    fn stream(s: &SecretSet, parts: &[&[u8]]) -> Vec<u8> {
        let mut sc = s.scrubber();
        let mut out = Vec::new();
        for p in parts {
            out.extend(sc.push(p).unwrap());
        }
        out.extend(sc.finish());
        out
    }

    /// However the stream is cut, no secret form survives and other bytes are unchanged.
    #[test]
    fn scrubber_handles_every_split() {
        let s = set();
        let mut text = b"before ".to_vec();
        text.extend(TOKEN);
        text.extend(b" mid ");
        text.extend(hex::encode(TOKEN).as_bytes());
        text.extend(b" sk-live-0 not a token %41 ");
        text.extend(percent_all(OTHER).replace('%', "%25").as_bytes());
        text.extend(b" end\\/");
        let want = b"before [REDACTED] mid [REDACTED] sk-live-0 not a token %41 [REDACTED] end\\/"
            .to_vec();
        assert_eq!(s.scrub(&text), want);
        for cut in 0..text.len() {
            for cut2 in (cut..text.len()).step_by(3) {
                let out = stream(&s, &[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(out, want, "cuts {cut} {cut2}");
            }
        }
    }

    /// Every form, cut at every place, is scrubbed.
    #[test]
    fn scrubber_handles_every_form_at_every_split() {
        let s = set();
        for (name, text) in forms_table(TOKEN) {
            let want = s.scrub(&text);
            for cut in 0..text.len() {
                let out = stream(&s, &[&text[..cut], &text[cut..]]);
                assert_eq!(out, want, "{name}, cut {cut}");
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
        text.extend(percent_all(TOKEN).as_bytes());
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
                let mut out = sc.push_bytes(text.slice(..cut)).unwrap().to_vec();
                out.extend(sc.push_bytes(text.slice(cut..cut2)).unwrap());
                out.extend(sc.push_bytes(text.slice(cut2..)).unwrap());
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
        let out = sc.push_bytes(chunk.clone()).unwrap();
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(out.len(), chunk.len());
        assert!(sc.finish().is_empty());
        assert!(!sc.found());
    }

    /// Long clean runs with secrets far apart: what the automaton skips is still scrubbed.
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
                out.extend(sc.push_bytes(Bytes::copy_from_slice(chunk)).unwrap());
            }
            out.extend(sc.finish());
            assert!(sc.found());
            assert_eq!(out.len(), 300_000 + 2 * REDACTED.len(), "{chunk_len}");
            assert_eq!(s.find_in(&out, None), None, "{chunk_len}");
        }
    }

    #[test]
    fn scrubber_only_holds_possible_prefixes() {
        let mut sc = set().scrubber();
        assert_eq!(sc.push(b"hello world").unwrap(), b"hello world");
        assert_eq!(sc.push(b"data: sk-li").unwrap(), b"data: ");
        assert_eq!(sc.finish(), b"sk-li");
    }

    /// Found by the `normaliser` fuzz target: `%8d` swallows the `d` that starts a wrapped
    /// base64 form. Scrubbed whole, and the same however the stream is cut.
    #[test]
    fn escape_before_a_wrapped_form() {
        let s = SecretSet::new([("B", &b"7e57ab1e-d00d/+=?%\\x"[..])]).unwrap();
        let text = b"%8dlNTdhYjFlLWQwMG\n\nQvKz0_JVx4%";
        let whole = s.scrub(text);
        assert_eq!(whole, b"%8[REDACTED]%");
        for cut in 0..text.len() {
            assert_eq!(
                stream(&s, &[&text[..cut], &text[cut..]]),
                whole,
                "cut {cut}"
            );
        }
    }

    /// Found by the `normaliser` fuzz target: a stream must not restart inside a `\n` escape
    /// whose line break was dropped.
    #[test]
    fn no_restart_inside_a_dropped_escape() {
        let s = SecretSet::new([("B", &b"7e57ab1e-d00d/+=?%\\x"[..])]).unwrap();
        let text = b"\nRF\n]\\n2\\nu1n2fimwutzdawzc8rpt8lxh/\nRff\nf\\/";
        let whole = s.scrub(text);
        for cut in 0..text.len() {
            assert_eq!(
                stream(&s, &[&text[..cut], &text[cut..]]),
                whole,
                "cut {cut}"
            );
        }
    }

    /// A stream of escapes that never completes is cut, not held without bound.
    #[test]
    fn endless_escapes_are_refused() {
        let mut sc = set().scrubber();
        assert_eq!(sc.push(b"%").unwrap(), b"");
        let mut result = Ok(Vec::new());
        let chain = b"25".repeat(512);
        for _ in 0..(MAX_HELD_BYTES / chain.len() + 2) {
            result = sc.push(&chain);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(SecretError::Unscannable)));
        // Line breaks and indentation alone are bounded and pass.
        let mut sc = set().scrubber();
        for _ in 0..10_000 {
            sc.push(b"\n   ").unwrap();
        }
        sc.finish();
    }
}
