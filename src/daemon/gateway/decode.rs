//! Content and transfer codings: a compressed body must not carry a token past the scanner or
//! the scrubber. The gateway decodes every coding a message declares, on every
//! `Content-Encoding` and `Transfer-Encoding` line, stacked in any order (gzip, deflate as
//! zlib or raw, zstd), and refuses a message with any other coding rather than pass it
//! unread. Bodies that declare nothing but start like gzip, zlib or zstd are sniffed and
//! decoded for scanning too.
//!
//! [`Decoder`] is push-based and streams: each step yields at most [`STEP_OUT`] bytes, so a
//! decompression bomb costs time, not memory. It is fed attacker-controlled bytes: every length
//! is checked and nothing panics (the `decoders` fuzz target).

use http::HeaderMap;
use http::header::{self, HeaderValue};

/// Most output one decoding step produces.
pub const STEP_OUT: usize = 64 * 1024;
/// Most bytes of gzip header (with its optional name and comment) the decoder waits for.
const MAX_GZIP_HEADER: usize = 64 * 1024;
/// How many undeclared layers (a sniffed gzip inside a sniffed gzip…) are opened for scanning.
pub const MAX_SNIFF_DEPTH: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// zlib (RFC 9110's `deflate`) or, as some clients send, raw deflate.
    Deflate,
    Zstd,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Zstd => "zstd",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "the body's content-encoding or transfer-encoding {0:?} is not one the gateway can read; send it uncompressed or as gzip, deflate or zstd"
    )]
    Unsupported(String),
    #[error("the body is not valid {0}")]
    Corrupt(&'static str),
    #[error("the {0} body ends before its stream does")]
    Truncated(&'static str),
    #[error("the decoded body is larger than the gateway's scanning limit; send less at once")]
    TooLarge,
    #[error("the gateway's memory for buffered bodies is spent; retry shortly")]
    Busy,
}

/// The codings applied to a message body, in the order they were applied: every
/// `Content-Encoding` line, then every `Transfer-Encoding` line except `chunked` (which the
/// HTTP layer already removed).
pub fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, DecodeError> {
    let mut out = content_codings(headers)?;
    out.extend(transfer_codings(headers)?);
    Ok(out)
}

/// The `Content-Encoding` codings alone (end to end: forwarded as they are).
pub fn content_codings(headers: &HeaderMap) -> Result<Vec<Coding>, DecodeError> {
    parse_list(headers.get_all(header::CONTENT_ENCODING).iter(), false)
}

/// The `Transfer-Encoding` codings other than `chunked` (hop by hop: undone by the gateway).
pub fn transfer_codings(headers: &HeaderMap) -> Result<Vec<Coding>, DecodeError> {
    parse_list(headers.get_all(header::TRANSFER_ENCODING).iter(), true)
}

fn parse_list<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
    transfer: bool,
) -> Result<Vec<Coding>, DecodeError> {
    let mut out = Vec::new();
    for value in values {
        let text = String::from_utf8_lossy(value.as_bytes());
        for item in text.split(',') {
            // Parameters (`gzip;q=1`) do not change the coding.
            let name = item
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let coding = match name.as_str() {
                "" | "identity" => continue,
                "chunked" if transfer => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "zstd" => Coding::Zstd,
                _ => return Err(DecodeError::Unsupported(name)),
            };
            out.push(coding);
        }
    }
    Ok(out)
}

/// The coding a body's first bytes announce, for bodies that declare none. At most 4 bytes
/// are looked at; fewer may not decide.
pub fn sniff(head: &[u8]) -> Option<Coding> {
    match head {
        [0x1f, 0x8b, 0x08, ..] => Some(Coding::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Coding::Zstd),
        [cmf, flg, ..] if is_zlib_header(*cmf, *flg) => Some(Coding::Deflate),
        _ => None,
    }
}

/// Whether more bytes could still make `head` a compressed stream's start (so sniffing must
/// wait for them).
pub fn may_become_compressed(head: &[u8]) -> bool {
    match head {
        [] => true,
        [0x1f] | [0x1f, 0x8b] => true,
        [0x28] | [0x28, 0xb5] | [0x28, 0xb5, 0x2f] => true,
        [cmf] => cmf & 0x0f == 8 && cmf >> 4 <= 7,
        _ => false,
    }
}

fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

/// Decodes a complete body, reserving memory for the output through `grow`.
pub fn decode_all(
    applied: &[Coding],
    body: &[u8],
    limit: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    let mut d = Decoder::new(applied);
    d.push(body);
    let mut out = Vec::new();
    while let Some(piece) = d.pull()? {
        if out.len() + piece.len() > limit {
            return Err(DecodeError::TooLarge);
        }
        if !grow(piece.len()) {
            return Err(DecodeError::Busy);
        }
        out.extend_from_slice(&piece);
    }
    d.end()?;
    Ok(out)
}

/// Decodes what it can of a sniffed body: a client can read the part before a corruption, so
/// the scanner must too. Only the limit and the budget are errors.
pub fn decode_lenient(
    coding: Coding,
    body: &[u8],
    limit: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    let mut d = Decoder::new(&[coding]);
    d.push(body);
    let mut out = Vec::new();
    loop {
        match d.pull() {
            Ok(Some(piece)) => {
                if out.len() + piece.len() > limit {
                    return Err(DecodeError::TooLarge);
                }
                if !grow(piece.len()) {
                    return Err(DecodeError::Busy);
                }
                out.extend_from_slice(&piece);
            }
            Ok(None) | Err(_) => return Ok(out),
        }
    }
}

/// A stack of codings being undone as input arrives.
pub struct Decoder {
    /// Outermost coding (the last applied) first.
    stages: Vec<Stage>,
    /// Input not yet returned, when there is no coding to undo.
    plain: Vec<u8>,
}

impl Decoder {
    /// `applied`: the codings in the order they were applied.
    pub fn new(applied: &[Coding]) -> Decoder {
        Decoder {
            stages: applied.iter().rev().map(|&c| Stage::new(c)).collect(),
            plain: Vec::new(),
        }
    }

    pub fn push(&mut self, input: &[u8]) {
        match self.stages.first_mut() {
            Some(s) => s.feed(input),
            None => self.plain.extend_from_slice(input),
        }
    }

    /// The next decoded piece (at most [`STEP_OUT`] bytes); `None` when more input is needed.
    pub fn pull(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        let n = self.stages.len();
        if n == 0 {
            return Ok((!self.plain.is_empty()).then(|| std::mem::take(&mut self.plain)));
        }
        'drain: loop {
            // Later stages first, so what sits between stages stays small.
            for i in (0..n).rev() {
                if let Some(out) = self.stages[i].step()? {
                    if i + 1 == n {
                        return Ok(Some(out));
                    }
                    self.stages[i + 1].feed(&out);
                    continue 'drain;
                }
            }
            return Ok(None);
        }
    }

    /// After the last input and a `pull` that returned `None`: whether every stream ended.
    pub fn end(&self) -> Result<(), DecodeError> {
        self.stages.iter().try_for_each(Stage::end)
    }
}

struct Stage {
    kind: Kind,
    input: Vec<u8>,
    /// Bytes of `input` already consumed.
    at: usize,
    saw_input: bool,
    /// The last step filled its output: the codec may hold more even without new input.
    full: bool,
}

enum Kind {
    Gzip {
        state: GzState,
        inflate: flate2::Decompress,
    },
    /// Zlib or raw deflate, decided by the first two bytes.
    Deflate {
        inflate: Option<flate2::Decompress>,
        ended: bool,
    },
    Zstd {
        // Boxed: the zstd context is large and this enum lives in every stage.
        decoder: Box<zstd::stream::raw::Decoder<'static>>,
        frame_done: bool,
    },
    /// The zstd context could not be created (out of memory): every input is refused.
    Broken,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum GzState {
    Header,
    Body,
    Trailer,
    /// Between members: the end, or another member.
    Done,
}

impl Stage {
    fn new(coding: Coding) -> Stage {
        let kind = match coding {
            Coding::Gzip => Kind::Gzip {
                state: GzState::Header,
                inflate: flate2::Decompress::new(false),
            },
            Coding::Deflate => Kind::Deflate {
                inflate: None,
                ended: false,
            },
            Coding::Zstd => match zstd::stream::raw::Decoder::new() {
                Ok(d) => Kind::Zstd {
                    decoder: Box::new(d),
                    frame_done: false,
                },
                Err(_) => Kind::Broken,
            },
        };
        Stage {
            kind,
            input: Vec::new(),
            at: 0,
            saw_input: false,
            full: false,
        }
    }

    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Gzip { .. } => "gzip",
            Kind::Deflate { .. } => "deflate",
            Kind::Zstd { .. } | Kind::Broken => "zstd",
        }
    }

    fn feed(&mut self, input: &[u8]) {
        if self.at > 0 && self.at == self.input.len() {
            self.input.clear();
            self.at = 0;
        } else if self.at > 64 * 1024 && self.at * 2 > self.input.len() {
            self.input.drain(..self.at);
            self.at = 0;
        }
        self.saw_input |= !input.is_empty();
        self.input.extend_from_slice(input);
    }

    fn step(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        let name = self.name();
        let corrupt = |_| DecodeError::Corrupt(name);
        loop {
            let input = &self.input[self.at..];
            if input.is_empty() && !self.full {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(STEP_OUT);
            let consumed = match &mut self.kind {
                Kind::Broken => return Err(DecodeError::Corrupt(name)),
                Kind::Deflate { inflate, ended } => {
                    if *ended {
                        if input.is_empty() {
                            self.full = false;
                            return Ok(None);
                        }
                        return Err(DecodeError::Corrupt(name));
                    }
                    let inflate = match inflate {
                        Some(i) => i,
                        None => {
                            let [cmf, flg, ..] = input else {
                                return Ok(None);
                            };
                            inflate.insert(flate2::Decompress::new(is_zlib_header(*cmf, *flg)))
                        }
                    };
                    let before = inflate.total_in();
                    let status = inflate
                        .decompress_vec(input, &mut out, flate2::FlushDecompress::None)
                        .map_err(corrupt)?;
                    *ended = status == flate2::Status::StreamEnd;
                    (inflate.total_in() - before) as usize
                }
                Kind::Gzip { state, inflate } => match state {
                    GzState::Header => match gzip_header_len(input)? {
                        None if input.len() > MAX_GZIP_HEADER => {
                            return Err(DecodeError::Corrupt(name));
                        }
                        None => return Ok(None),
                        Some(len) => {
                            inflate.reset(false);
                            *state = GzState::Body;
                            len
                        }
                    },
                    GzState::Body => {
                        let before = inflate.total_in();
                        let status = inflate
                            .decompress_vec(input, &mut out, flate2::FlushDecompress::None)
                            .map_err(corrupt)?;
                        if status == flate2::Status::StreamEnd {
                            *state = GzState::Trailer;
                        }
                        (inflate.total_in() - before) as usize
                    }
                    // CRC-32 and size: the decoded bytes are scanned whatever they say.
                    GzState::Trailer if input.len() < 8 => {
                        self.full = false;
                        return Ok(None);
                    }
                    GzState::Trailer => {
                        *state = GzState::Done;
                        8
                    }
                    GzState::Done if input.is_empty() => {
                        self.full = false;
                        return Ok(None);
                    }
                    GzState::Done if input[0] == 0x1f => {
                        // Another member follows.
                        *state = GzState::Header;
                        continue;
                    }
                    GzState::Done => return Err(DecodeError::Corrupt(name)),
                },
                Kind::Zstd {
                    decoder,
                    frame_done,
                } => {
                    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                    let mut inb = InBuffer::around(input);
                    let mut outb = OutBuffer::around(&mut out);
                    let hint = decoder
                        .run(&mut inb, &mut outb)
                        .map_err(|_| DecodeError::Corrupt(name))?;
                    // A call that moved nothing does not change where the frame is (after
                    // its end, zstd already hints at the next frame's header).
                    if inb.pos() > 0 || outb.pos() > 0 {
                        *frame_done = hint == 0;
                    }
                    inb.pos()
                }
            };
            self.at += consumed;
            self.full = out.len() == out.capacity();
            if !out.is_empty() {
                return Ok(Some(out));
            }
            if consumed == 0 {
                // No progress: the codec needs more input.
                self.full = false;
                return Ok(None);
            }
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        let name = self.name();
        let clean = match &self.kind {
            _ if !self.saw_input => true,
            Kind::Gzip { state, .. } => *state == GzState::Done,
            Kind::Deflate { ended, .. } => *ended,
            Kind::Zstd { frame_done, .. } => *frame_done,
            Kind::Broken => false,
        };
        if clean && self.at == self.input.len() {
            Ok(())
        } else {
            Err(DecodeError::Truncated(name))
        }
    }
}

/// The length of the gzip member header at the start of `b` (RFC 1952); `None`: incomplete.
fn gzip_header_len(b: &[u8]) -> Result<Option<usize>, DecodeError> {
    let bad = Err(DecodeError::Corrupt("gzip"));
    for (i, want) in [0x1f, 0x8b, 0x08].into_iter().enumerate() {
        match b.get(i) {
            Some(&got) if got != want => return bad,
            None => return Ok(None),
            Some(_) => {}
        }
    }
    let Some(&flags) = b.get(3) else {
        return Ok(None);
    };
    if flags & 0xe0 != 0 {
        return bad;
    }
    let mut i = 10;
    if flags & 0x04 != 0 {
        let Some(len) = b.get(i..i + 2) else {
            return Ok(None);
        };
        i += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [0x08, 0x10] {
        if flags & flag != 0 {
            let Some(rest) = b.get(i..) else {
                return Ok(None);
            };
            match memchr::memchr(0, rest) {
                Some(nul) => i += nul + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 0x02 != 0 {
        i += 2;
    }
    Ok((b.len() >= i).then_some(i))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gzip_named(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::GzBuilder::new()
            .filename("name.txt")
            .comment("a comment")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn codings_table() {
        use Coding::*;
        let unsupported = |s: &str| Err(DecodeError::Unsupported(s.into()));
        type Case = (
            Vec<(&'static str, &'static str)>,
            Result<Vec<Coding>, DecodeError>,
        );
        let cases: Vec<Case> = vec![
            (vec![], Ok(vec![])),
            (vec![("content-encoding", "identity")], Ok(vec![])),
            (vec![("content-encoding", " GZIP ")], Ok(vec![Gzip])),
            (vec![("content-encoding", "x-gzip")], Ok(vec![Gzip])),
            (
                vec![("content-encoding", "gzip, zstd")],
                Ok(vec![Gzip, Zstd]),
            ),
            // Several lines: every one counts, in order.
            (
                vec![
                    ("content-encoding", "identity"),
                    ("content-encoding", "gzip"),
                ],
                Ok(vec![Gzip]),
            ),
            (
                vec![
                    ("content-encoding", "deflate"),
                    ("content-encoding", "gzip"),
                ],
                Ok(vec![Deflate, Gzip]),
            ),
            // Transfer codings other than chunked are undone too, after the content codings.
            (vec![("transfer-encoding", "gzip, chunked")], Ok(vec![Gzip])),
            (
                vec![
                    ("transfer-encoding", "zstd"),
                    ("transfer-encoding", "chunked"),
                ],
                Ok(vec![Zstd]),
            ),
            (
                vec![
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-encoding", "deflate"),
                ],
                Ok(vec![Deflate, Gzip]),
            ),
            (vec![("content-encoding", "br")], unsupported("br")),
            (
                vec![("content-encoding", "gzip, compress")],
                unsupported("compress"),
            ),
            (
                vec![("transfer-encoding", "br, chunked")],
                unsupported("br"),
            ),
            (
                vec![("content-encoding", "chunked")],
                unsupported("chunked"),
            ),
            (vec![("content-encoding", "gzip;q=1")], Ok(vec![Gzip])),
        ];
        for (lines, want) in cases {
            assert_eq!(codings(&headers(&lines)), want, "{lines:?}");
        }
    }

    #[test]
    fn sniff_table() {
        let text = b"a plain text body".to_vec();
        let cases: Vec<(Vec<u8>, Option<Coding>)> = vec![
            (gzip(&text), Some(Coding::Gzip)),
            (zlib(&text), Some(Coding::Deflate)),
            (zstd(&text), Some(Coding::Zstd)),
            (text.clone(), None),
            (b"x".to_vec(), None),
            (b"".to_vec(), None),
            (b"{\"json\": 1}".to_vec(), None),
            (vec![0x1f, 0x8b], None),
        ];
        for (body, want) in cases {
            assert_eq!(sniff(&body), want, "{:?}", &body[..body.len().min(4)]);
        }
        let waits: &[(&[u8], bool)] = &[
            (b"", true),
            (&[0x1f], true),
            (&[0x1f, 0x8b], true),
            (&[0x1f, 0x00], false),
            (&[0x28, 0xb5, 0x2f], true),
            (&[0x78], true),
            (b"x^", false),
            (b"d", false),
            (b":\n", false),
        ];
        for (head, want) in waits {
            assert_eq!(may_become_compressed(head), *want, "{head:?}");
        }
    }

    fn never_busy(_: usize) -> bool {
        true
    }

    #[test]
    fn decode_table() {
        use Coding::*;
        let text = b"token=sk-secret-value and more text to compress".repeat(20);
        let ok = Ok(text.clone());
        let mut two = gzip(&text[..100]);
        two.extend(gzip(&text[100..]));
        type Case = (
            &'static str,
            Vec<Coding>,
            Vec<u8>,
            Result<Vec<u8>, DecodeError>,
        );
        let cases: Vec<Case> = vec![
            ("none", vec![], text.clone(), ok.clone()),
            ("gzip", vec![Gzip], gzip(&text), ok.clone()),
            (
                "gzip with name, comment, extra",
                vec![Gzip],
                gzip_named(&text),
                ok.clone(),
            ),
            ("gzip, two members", vec![Gzip], two, ok.clone()),
            ("zlib", vec![Deflate], zlib(&text), ok.clone()),
            ("raw deflate", vec![Deflate], raw_deflate(&text), ok.clone()),
            ("zstd", vec![Zstd], zstd(&text), ok.clone()),
            (
                "gzip then gzip",
                vec![Gzip, Gzip],
                gzip(&gzip(&text)),
                ok.clone(),
            ),
            (
                "deflate then zstd then gzip",
                vec![Deflate, Zstd, Gzip],
                gzip(&zstd(&zlib(&text))),
                ok.clone(),
            ),
            ("empty gzip body", vec![Gzip], vec![], Ok(vec![])),
            (
                "not gzip",
                vec![Gzip],
                b"not gzip".to_vec(),
                Err(DecodeError::Corrupt("gzip")),
            ),
            (
                "truncated gzip",
                vec![Gzip],
                gzip(&text)[..30].to_vec(),
                Err(DecodeError::Truncated("gzip")),
            ),
            (
                "gzip, trailing garbage",
                vec![Gzip],
                [gzip(&text), b"junk".to_vec()].concat(),
                Err(DecodeError::Corrupt("gzip")),
            ),
            (
                "truncated zstd",
                vec![Zstd],
                zstd(&text)[..10].to_vec(),
                Err(DecodeError::Truncated("zstd")),
            ),
            (
                "zlib, trailing garbage",
                vec![Deflate],
                [zlib(&text), b"x".to_vec()].concat(),
                Err(DecodeError::Corrupt("deflate")),
            ),
            (
                "bomb",
                vec![Gzip],
                gzip(&vec![b'a'; 5000]),
                Err(DecodeError::TooLarge),
            ),
        ];
        for (name, applied, body, want) in cases {
            assert_eq!(
                decode_all(&applied, &body, 4096, &mut never_busy),
                want,
                "{name}"
            );
            // The same, fed one byte at a time.
            let mut d = Decoder::new(&applied);
            let mut out = Vec::new();
            let mut got = Ok(());
            for b in &body {
                d.push(std::slice::from_ref(b));
                loop {
                    match d.pull() {
                        Ok(Some(piece)) => out.extend(piece),
                        Ok(None) => break,
                        Err(e) => {
                            got = Err(e);
                            break;
                        }
                    }
                }
                if got.is_err() {
                    break;
                }
            }
            let got = got.and_then(|()| d.end()).map(|()| out);
            match &want {
                Err(DecodeError::TooLarge) => {
                    assert!(got.is_ok(), "{name}: streaming has no limit")
                }
                want => assert_eq!(&got, want, "{name}, byte by byte"),
            }
        }
    }

    /// A decompression bomb streams in bounded steps.
    #[test]
    fn steps_are_bounded() {
        let bomb = zstd(&vec![0u8; 50 << 20]);
        let mut d = Decoder::new(&[Coding::Zstd]);
        d.push(&bomb);
        let mut total = 0;
        while let Some(piece) = d.pull().unwrap() {
            assert!(piece.len() <= STEP_OUT);
            total += piece.len();
        }
        d.end().unwrap();
        assert_eq!(total, 50 << 20);
    }

    #[test]
    fn lenient_decoding_keeps_the_readable_prefix() {
        let text = b"secret-prefix-".repeat(100);
        let cut = gzip(&text);
        let cut = &cut[..cut.len() - 12];
        let got = decode_lenient(Coding::Gzip, cut, 1 << 20, &mut never_busy).unwrap();
        assert!(
            got.starts_with(b"secret-prefix-secret-prefix-"),
            "{}",
            got.len()
        );
        let mut budget = 10usize;
        let spend = &mut |n: usize| {
            budget = budget.saturating_sub(n);
            budget > 0
        };
        assert_eq!(
            decode_lenient(Coding::Gzip, &gzip(&text), 1 << 20, spend),
            Err(DecodeError::Busy)
        );
    }
}
