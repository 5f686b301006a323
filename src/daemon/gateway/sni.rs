//! A small TLS ClientHello reader: the server name (SNI) a client asks for, from the bytes it
//! sends first. Only reads; never answers. Handles a ClientHello split over several records.
//! The input is attacker-controlled: every length is checked, nothing panics.

/// Largest ClientHello we wait for (post-quantum key shares make them a few KiB).
pub const MAX_CLIENT_HELLO: usize = 32 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum SniParse {
    /// More bytes are needed to finish the ClientHello.
    Incomplete,
    /// A complete ClientHello; `None` when it has no server_name extension.
    Done(Option<String>),
    /// A complete ClientHello offering Encrypted Client Hello: its SNI is only an outer name
    /// and the real server name is hidden, so it cannot be checked.
    Encrypted,
    /// Not a TLS ClientHello, or a malformed one.
    NotTls,
}

/// The `encrypted_client_hello` extension type (RFC 9849).
const EXT_ECH: usize = 0xfe0d;

/// Reads the SNI host name from the start of a TLS connection.
pub fn parse_client_hello(buf: &[u8]) -> SniParse {
    // Reassemble the handshake message from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return if buf.len() >= MAX_CLIENT_HELLO {
                SniParse::NotTls
            } else {
                SniParse::Incomplete
            };
        }
        if rest[0] != 0x16 || rest[1] != 0x03 {
            return SniParse::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 + 2048 {
            return SniParse::NotTls;
        }
        if rest.len() < 5 + len {
            return if buf.len() >= MAX_CLIENT_HELLO {
                SniParse::NotTls
            } else {
                SniParse::Incomplete
            };
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            if handshake[0] != 0x01 {
                return SniParse::NotTls;
            }
            let body_len = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if body_len > MAX_CLIENT_HELLO {
                return SniParse::NotTls;
            }
            if handshake.len() >= 4 + body_len {
                return match server_name(&handshake[4..4 + body_len]) {
                    Some((_, true)) => SniParse::Encrypted,
                    Some((sni, false)) => SniParse::Done(sni),
                    None => SniParse::NotTls,
                };
            }
        }
    }
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// The SNI (`None`: well-formed without one) and whether ECH is offered; `None`: malformed.
fn server_name(body: &[u8]) -> Option<(Option<String>, bool)> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    if r.0.is_empty() {
        return Some((None, false));
    }
    let mut exts = Reader(r.vec16()?);
    let mut found = None;
    let mut ech = false;
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        if ty == EXT_ECH {
            ech = true;
        }
        if ty != 0 {
            continue;
        }
        if found.is_some() {
            return None; // two server_name extensions
        }
        let mut list = Reader(Reader(data).vec16()?);
        let mut name = None;
        while !list.0.is_empty() {
            let kind = list.u8()?;
            let value = list.vec16()?;
            if kind == 0 {
                if name.is_some() {
                    return None; // two host names
                }
                let s = std::str::from_utf8(value).ok()?;
                if s.is_empty() || !s.is_ascii() {
                    return None;
                }
                name = Some(s.to_string());
            }
        }
        found = Some(name?);
    }
    Some((found, ech))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal ClientHello with the given server_name extension bodies.
    fn hello(names: &[&[u8]]) -> Vec<u8> {
        hello_with(names, &[])
    }

    fn hello_with(names: &[&[u8]], extra_ext: &[u8]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut exts = Vec::new();
        // An unrelated extension first (supported_versions).
        exts.extend([0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        exts.extend(extra_ext);
        for n in names {
            let mut list = vec![0u8];
            list.extend((n.len() as u16).to_be_bytes());
            list.extend(*n);
            let mut ext = (list.len() as u16).to_be_bytes().to_vec();
            ext.extend(list);
            exts.extend([0, 0]);
            exts.extend((ext.len() as u16).to_be_bytes());
            exts.extend(ext);
        }
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1u8];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        record(&hs)
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut r = vec![0x16, 0x03, 0x01];
        r.extend((payload.len() as u16).to_be_bytes());
        r.extend(payload);
        r
    }

    #[test]
    fn reads_sni() {
        let h = hello(&[b"example.com"]);
        assert_eq!(
            parse_client_hello(&h),
            SniParse::Done(Some("example.com".into()))
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let h = hello(&[b"example.com"]);
        for n in 0..h.len() {
            assert_eq!(
                parse_client_hello(&h[..n]),
                SniParse::Incomplete,
                "prefix {n}"
            );
        }
    }

    #[test]
    fn split_over_two_records() {
        let h = hello(&[b"example.com"]);
        let payload = &h[5..];
        let (a, b) = payload.split_at(20);
        let mut two = record(a);
        two.extend(record(b));
        assert_eq!(
            parse_client_hello(&two),
            SniParse::Done(Some("example.com".into()))
        );
    }

    /// Corrupting any single byte of a valid ClientHello never panics, and a complete parse is
    /// unchanged by trailing bytes (the `client_hello_sni` fuzz target's invariant).
    #[test]
    fn single_byte_corruptions() {
        let h = hello(&[b"example.com"]);
        for i in 0..h.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut bad = h.clone();
                bad[i] = v;
                let first = parse_client_hello(&bad);
                if let SniParse::Done(_) = first {
                    bad.extend_from_slice(b"trailing");
                    assert_eq!(parse_client_hello(&bad), first, "byte {i} = {v}");
                }
            }
        }
    }

    #[test]
    fn table() {
        let cases: &[(Vec<u8>, SniParse)] = &[
            (hello(&[]), SniParse::Done(None)),
            (
                hello_with(&[b"a.com"], &[0xfe, 0x0d, 0, 2, 1, 2]),
                SniParse::Encrypted,
            ),
            (
                hello_with(&[b"a.com"], &[0xfe, 0x0d, 0, 9, 1]),
                SniParse::NotTls,
            ),
            (hello(&[b"a.com", b"b.com"]), SniParse::NotTls),
            (hello(&[b""]), SniParse::NotTls),
            (hello(&["bü.com".as_bytes()]), SniParse::NotTls),
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), SniParse::NotTls),
            (vec![0x16, 0x03, 0x01, 0x00, 0x00], SniParse::NotTls),
            (record(&[2, 0, 0, 0]), SniParse::NotTls),
            (record(&[1, 0, 0, 3, 1, 2, 3]), SniParse::NotTls),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_client_hello(input), want, "input {input:?}");
        }
    }
}
