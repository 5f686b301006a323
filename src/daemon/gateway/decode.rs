//! Content-decoding of request bodies for secret scanning: a compressed body must not hide a
//! token. Known encodings are decoded with a size cap (no decompression bombs); anything else
//! is reported so the request can be refused rather than passed unread.

use std::io::Read;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot inspect a body with content-encoding {0:?}")]
    Unsupported(String),
    #[error("the body is not valid {0}")]
    Corrupt(String),
    #[error("the decoded body is larger than the scanning limit")]
    TooLarge,
}

/// Decodes `body` per its `Content-Encoding` value (`None` or `identity`: unchanged).
pub fn decode_body(
    encoding: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<Option<Vec<u8>>, DecodeError> {
    let encoding = match encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => return Ok(None),
        Some(e) if e.is_empty() || e == "identity" => return Ok(None),
        Some(e) => e,
    };
    let reader: Box<dyn Read + '_> = match encoding.as_str() {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(body)),
        "deflate" if body.first().is_some_and(|b| b & 0x0f == 8) => {
            Box::new(flate2::read::ZlibDecoder::new(body))
        }
        // Some clients send raw deflate despite RFC 9110 asking for zlib.
        "deflate" => Box::new(flate2::read::DeflateDecoder::new(body)),
        "zstd" => Box::new(
            zstd::stream::read::Decoder::new(body)
                .map_err(|_| DecodeError::Corrupt(encoding.clone()))?,
        ),
        _ => return Err(DecodeError::Unsupported(encoding)),
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Corrupt(encoding))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
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

    #[test]
    fn table() {
        let text = b"token=sk-secret-value".to_vec();
        let decoded = Ok(Some(text.clone()));
        type Case = (
            Option<&'static str>,
            Vec<u8>,
            Result<Option<Vec<u8>>, DecodeError>,
        );
        let cases: Vec<Case> = vec![
            (None, text.clone(), Ok(None)),
            (Some("identity"), text.clone(), Ok(None)),
            (Some("gzip"), gzip(&text), decoded.clone()),
            (Some(" GZIP "), gzip(&text), decoded.clone()),
            (Some("x-gzip"), gzip(&text), decoded.clone()),
            (Some("deflate"), zlib(&text), decoded.clone()),
            (Some("deflate"), raw_deflate(&text), decoded.clone()),
            (
                Some("zstd"),
                zstd::encode_all(&text[..], 3).unwrap(),
                decoded.clone(),
            ),
            (
                Some("br"),
                text.clone(),
                Err(DecodeError::Unsupported("br".into())),
            ),
            (
                Some("gzip, gzip"),
                gzip(&gzip(&text)),
                Err(DecodeError::Unsupported("gzip, gzip".into())),
            ),
            (
                Some("gzip"),
                b"not gzip".to_vec(),
                Err(DecodeError::Corrupt("gzip".into())),
            ),
            (
                Some("gzip"),
                gzip(&vec![b'a'; 1000]),
                Err(DecodeError::TooLarge),
            ),
        ];
        for (encoding, body, want) in cases {
            assert_eq!(decode_body(encoding, &body, 100), want, "{encoding:?}");
        }
    }
}
