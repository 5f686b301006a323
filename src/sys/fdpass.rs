//! Passing open descriptors between processes over a unix socket (`SCM_RIGHTS`).
//!
//! Used to hand sockets created inside one network namespace to a process in another: a socket
//! stays bound to the namespace it was created in, whoever holds it.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most descriptors one message may carry (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 64;

/// Sends one `tag` byte carrying `fds`.
pub fn send_fds(sock: impl AsFd, tag: u8, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "descriptors do not fit the control buffer",
        ));
    }
    let sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&[tag])],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != 1 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "tag byte not sent",
        ));
    }
    Ok(())
}

/// Receives one byte and the descriptors that came with it. `None` at end of stream.
pub fn recv_fds(sock: impl AsFd) -> io::Result<Option<(u8, Vec<OwnedFd>)>> {
    let mut byte = [0u8; 1];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.bytes == 0 {
        return Ok(None);
    }
    Ok(Some((byte[0], fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType};

    #[test]
    fn descriptors_arrive_usable() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        send_fds(&a, b'L', &[r.as_fd()]).unwrap();
        send_fds(&a, b'E', &[]).unwrap();
        drop(a);
        let (tag, fds) = recv_fds(&b).unwrap().unwrap();
        assert_eq!((tag, fds.len()), (b'L', 1));
        rustix::io::write(&w, b"x").unwrap();
        let mut buf = [0u8; 1];
        rustix::io::read(&fds[0], &mut buf).unwrap();
        assert_eq!(&buf, b"x");
        let (tag, fds) = recv_fds(&b).unwrap().unwrap();
        assert_eq!((tag, fds.len()), (b'E', 0));
        assert!(recv_fds(&b).unwrap().is_none());
    }
}
