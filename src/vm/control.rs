//! The control socket between the parent and its `__vmm` child.
//!
//! Parent → child: the [`VmConfig`](super::config::VmConfig) as one frame (u32 little-endian
//! length, then JSON). Child → parent: [`LISTENERS`] carrying the endpoint listener sockets
//! (`SCM_RIGHTS`), once the root is mounted and provisioned. Parent → child: [`GO`] once every
//! endpoint's upstream is there (the bundle is up). Child → parent: either [`FAILED`] followed by
//! a one-line message (setup failed, nothing was started), or [`ENTERING`] right before
//! `krun_start_enter`, after which the rest of the stream is libkrun's own log text.

use std::io::{self, Read, Write};

/// Child → parent: the endpoint listeners (possibly none) ride on this byte.
pub const LISTENERS: u8 = b'L';
/// Parent → child: the upstreams are there, boot.
pub const GO: u8 = b'G';
/// Child → parent: configuration done, and `krun_start_enter` is not called (the config's
/// `stop_before_enter`): the child ends.
pub const NOT_ENTERING: u8 = b'N';
/// Child → parent: configuration done, calling `krun_start_enter` now.
pub const ENTERING: u8 = b'E';
/// Child → parent: setup failed; a UTF-8 message follows until end of stream.
pub const FAILED: u8 = b'X';

/// Largest config frame accepted (a guest environment far beyond anything reasonable).
const MAX_FRAME: u32 = 16 << 20;

pub fn write_frame(mut w: impl Write, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "config too large"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(data)?;
    w.flush()
}

pub fn read_frame(mut r: impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "config frame too large",
        ));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_truncation_is_an_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{\"a\":1}").unwrap();
        assert_eq!(read_frame(&buf[..]).unwrap(), b"{\"a\":1}");
        assert!(read_frame(&buf[..buf.len() - 1]).is_err());
        assert!(read_frame(&[0xff, 0xff, 0xff, 0xff][..]).is_err());
    }
}
