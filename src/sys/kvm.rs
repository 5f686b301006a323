//! Probing `/dev/kvm`: can we open it, and what API version does it report.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The KVM device node.
pub const DEV_KVM: &str = "/dev/kvm";

/// `KVM_GET_API_VERSION` = `_IO(KVMIO, 0x00)` with `KVMIO` = 0xAE.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// Opens `path` read-write (as libkrun does) and returns `KVM_GET_API_VERSION`.
pub fn api_version(path: &Path) -> io::Result<i32> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    // SAFETY: `file` is an open descriptor for the lifetime of the call; KVM_GET_API_VERSION
    // takes no argument and writes no memory. On another device it just fails with ENOTTY.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_kvm_device_is_an_error() {
        assert!(api_version(Path::new("/dev/null")).is_err());
        assert!(api_version(Path::new("/nonexistent/kvm")).is_err());
    }
}
