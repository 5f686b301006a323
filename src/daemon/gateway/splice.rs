//! Byte splicing for allowed, non-route CONNECT tunnels, after the ClientHello check.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::sni::{MAX_CLIENT_HELLO, SniParse, parse_client_hello};

const BUF_SIZE: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum HelloError {
    /// The client closed or went quiet before a full ClientHello.
    Closed,
    /// The first bytes are not a TLS ClientHello.
    NotTls,
    /// The ClientHello hides its real server name (ECH).
    Encrypted,
}

/// Reads the client's first bytes until they hold a complete ClientHello. Returns those bytes
/// (to be replayed upstream) and the SNI.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    client: &mut R,
    idle: Duration,
) -> Result<(Vec<u8>, Option<String>), HelloError> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout(idle, client.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(HelloError::Closed),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match parse_client_hello(&buf) {
            SniParse::Incomplete if buf.len() < MAX_CLIENT_HELLO => continue,
            SniParse::Incomplete | SniParse::NotTls => return Err(HelloError::NotTls),
            SniParse::Encrypted => return Err(HelloError::Encrypted),
            SniParse::Done(sni) => return Ok((buf, sni)),
        }
    }
}

/// Copies bytes both ways until both sides finished or nothing moved for `idle`, counting
/// (bytes client→upstream, bytes upstream→client) into `counts` as they move (so they are
/// known even if the pump is cut off).
pub async fn pump<A, B>(mut client: A, mut upstream: B, idle: Duration, counts: &mut (u64, u64))
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut up_buf = vec![0u8; BUF_SIZE];
    let mut down_buf = vec![0u8; BUF_SIZE];
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        tokio::select! {
            r = client.read(&mut up_buf), if client_open => {
                if !forward(r, &up_buf, &mut upstream, &mut client_open, &mut counts.0).await {
                    break;
                }
            }
            r = upstream.read(&mut down_buf), if upstream_open => {
                if !forward(r, &down_buf, &mut client, &mut upstream_open, &mut counts.1).await {
                    break;
                }
            }
            () = tokio::time::sleep(idle) => break,
        }
    }
}

/// One direction's step of [`pump`]: what a read from one side gave (`read`, into `buf`) goes
/// to the other side (`to`). At the end of the reading side, `to` is shut down for writing and
/// `open` cleared; otherwise the bytes are written and counted. `false`: `to` failed, stop.
async fn forward<W: AsyncWrite + Unpin>(
    read: std::io::Result<usize>,
    buf: &[u8],
    to: &mut W,
    open: &mut bool,
    count: &mut u64,
) -> bool {
    match read {
        Ok(0) | Err(_) => {
            *open = false;
            let _ = to.shutdown().await;
            true
        }
        Ok(n) => {
            let sent = to.write_all(&buf[..n]).await.is_ok();
            if sent {
                *count += n as u64;
            }
            sent
        }
    }
}
