//! The one safe wrapper around libkrun's C API: nothing else in the crate calls `krun_*`.
//!
//! A [`KrunContext`] owns one libkrun context and frees it on drop. Every call is checked: a
//! negative return is `-errno`, turned into an `io::Error` whose message names the call.
//! Invariants kept here so callers cannot get them wrong:
//! - the guest environment is always an explicit list (a NULL list makes libkrun copy the whole
//!   host environment into the guest);
//! - TSI can only be enabled for `AF_INET`/`AF_INET6` (`HIJACK_INET`), never for unix sockets;
//! - string arrays are handed over padded to libkrun's `MAX_ARGS` pointers, because libkrun
//!   builds a slice of that length from the pointer before looking for the terminating NULL.

use std::ffi::{CStr, CString, c_char, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ::krun as libkrun_sys;

/// libkrun reads string arrays through a slice of this many pointers (`MAX_ARGS` in its source).
const LIBKRUN_MAX_ARGS: usize = 4096;

/// TSI feature bit that hijacks `AF_INET`/`AF_INET6` sockets (`TsiFlags::HIJACK_INET` in libkrun).
/// The unix-socket bit (`HIJACK_UNIX`, `1 << 1`) is deliberately not representable here.
const TSI_HIJACK_INET: u32 = 1 << 0;

/// The SONAME libkrun `dlopen`s for the guest kernel.
pub const LIBKRUNFW_SONAME: &str = "libkrunfw.so.5";

/// The libkrun log levels krbottle uses (`krun_init_log`; libkrun also has 1 error, 3 info,
/// 4 debug).
#[derive(Clone, Copy, Debug)]
pub enum LogLevel {
    /// Warnings and errors: what the parent shows and classifies a VMM failure by.
    Warn = 2,
}

/// Turns a libkrun return value into a `Result`, naming the call in the error.
fn check(call: &'static str, ret: i32) -> io::Result<i32> {
    if ret < 0 {
        let os = io::Error::from_raw_os_error(-ret);
        Err(io::Error::new(os.kind(), format!("{call} failed: {os}")))
    } else {
        Ok(ret)
    }
}

fn cstring(what: &'static str, bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

fn path_cstring(what: &'static str, path: &Path) -> io::Result<CString> {
    cstring(what, path.as_os_str().as_bytes())
}

/// One libkrun VM context, freed on drop unless it was consumed by [`KrunContext::start_enter`].
#[derive(Debug)]
pub struct KrunContext {
    id: u32,
}

impl KrunContext {
    /// Creates a context. libkrun looks for `libkrunfw` here: preload it first if it lives
    /// somewhere the loader would not look (see [`preload_libkrunfw`]).
    pub fn new() -> io::Result<Self> {
        let id = check("krun_create_ctx", libkrun_sys::krun_create_ctx())?;
        Ok(Self { id: id as u32 })
    }

    pub fn set_vm_config(&self, vcpus: u8, ram_mib: u32) -> io::Result<()> {
        check(
            "krun_set_vm_config",
            libkrun_sys::krun_set_vm_config(self.id, vcpus, ram_mib),
        )?;
        Ok(())
    }

    /// Shares `path` as the guest's root filesystem (virtio-fs tag `/dev/root`).
    pub fn set_root(&self, path: &Path) -> io::Result<()> {
        let c_path = path_cstring("root path", path)?;
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call; libkrun
        // copies it into an owned `String`.
        let ret = unsafe { libkrun_sys::krun_set_root(self.id, c_path.as_ptr()) };
        check("krun_set_root", ret)?;
        Ok(())
    }

    /// Adds a virtio-fs device with `tag` sharing the host directory `path`.
    pub fn add_virtiofs(&self, tag: &str, path: &Path, read_only: bool) -> io::Result<()> {
        let c_tag = cstring("virtio-fs tag", tag.as_bytes())?;
        let c_path = path_cstring("shared directory", path)?;
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; libkrun
        // copies them. shm_size 0 means "no DAX window", semantics 0 is the default.
        let ret = unsafe {
            libkrun_sys::krun_add_virtiofs4(
                self.id,
                c_tag.as_ptr(),
                c_path.as_ptr(),
                0,
                read_only,
                0,
            )
        };
        check("krun_add_virtiofs4", ret)?;
        Ok(())
    }

    /// Sets the environment passed on the kernel command line: always an explicit list.
    pub fn set_env(&self, env: &[String]) -> io::Result<()> {
        if env.len() >= LIBKRUN_MAX_ARGS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many environment entries",
            ));
        }
        let owned = env
            .iter()
            .map(|e| cstring("environment entry", e.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut ptrs: Vec<*const c_char> = vec![std::ptr::null(); LIBKRUN_MAX_ARGS];
        for (slot, s) in ptrs.iter_mut().zip(&owned) {
            *slot = s.as_ptr();
        }
        // SAFETY: `ptrs` holds LIBKRUN_MAX_ARGS pointers (libkrun reads that many), the used
        // ones point to NUL-terminated strings in `owned`, the rest are NULL, and at least one
        // NULL terminates the list. All of it outlives the call; libkrun copies the strings.
        let ret = unsafe { libkrun_sys::krun_set_env(self.id, ptrs.as_ptr()) };
        check("krun_set_env", ret)?;
        Ok(())
    }

    /// Adds a read-only virtual file at `path` in the virtio-fs device `fs_tag`. The data must
    /// live as long as the VM, hence `'static` (leak it).
    pub fn add_overlay_file(
        &self,
        fs_tag: &str,
        path: &str,
        data: &'static [u8],
        mode: u32,
    ) -> io::Result<()> {
        let c_tag = cstring("virtio-fs tag", fs_tag.as_bytes())?;
        let c_path = cstring("overlay file path", path.as_bytes())?;
        // SAFETY: tag and path are valid NUL-terminated strings for the call (libkrun copies
        // them); `data` is valid for `data.len()` bytes for the rest of the process, which is
        // what libkrun requires of the payload.
        let ret = unsafe {
            libkrun_sys::krun_fs_add_overlay_file(
                self.id,
                c_tag.as_ptr(),
                c_path.as_ptr(),
                data.as_ptr(),
                data.len(),
                mode,
                false,
            )
        };
        check("krun_fs_add_overlay_file", ret)?;
        Ok(())
    }

    /// Replaces the implicit vsock with one whose TSI hijacks only inet sockets.
    pub fn enable_tsi_inet_only(&self) -> io::Result<()> {
        check(
            "krun_disable_implicit_vsock",
            libkrun_sys::krun_disable_implicit_vsock(self.id),
        )?;
        check(
            "krun_add_vsock",
            libkrun_sys::krun_add_vsock(self.id, TSI_HIJACK_INET),
        )?;
        Ok(())
    }

    /// Replaces the implicit console with a virtio console on the given descriptors. libkrun
    /// makes it a terminal console when they are TTYs, plain streams otherwise.
    pub fn set_console(
        &self,
        input: BorrowedFd<'_>,
        output: BorrowedFd<'_>,
        error: BorrowedFd<'_>,
    ) -> io::Result<()> {
        check(
            "krun_disable_implicit_console",
            libkrun_sys::krun_disable_implicit_console(self.id),
        )?;
        // SAFETY: the three descriptors are open (borrowed) now; the caller keeps them open
        // until the VM exits because `start_enter` never returns.
        let ret = unsafe {
            libkrun_sys::krun_add_virtio_console_default(
                self.id,
                input.as_raw_fd(),
                output.as_raw_fd(),
                error.as_raw_fd(),
            )
        };
        check("krun_add_virtio_console_default", ret)?;
        Ok(())
    }

    /// Starts the VM. On success this never returns: libkrun `_exit`s with the guest's exit
    /// code. What comes back is the reason the VM could not start.
    pub fn start_enter(self) -> io::Error {
        let id = self.id;
        // The context is consumed by libkrun from here on; do not free it again.
        std::mem::forget(self);
        match check("krun_start_enter", libkrun_sys::krun_start_enter(id)) {
            Err(err) => err,
            Ok(_) => io::Error::other("krun_start_enter returned without running the VM"),
        }
    }
}

impl Drop for KrunContext {
    fn drop(&mut self) {
        // Nothing useful to do if it fails: the id came from krun_create_ctx.
        let _ = libkrun_sys::krun_free_ctx(self.id);
    }
}

/// Sends libkrun's own log lines at `level` and above to `target` (e.g. a pipe the parent reads).
pub fn init_log(target: OwnedFd, level: LogLevel) -> io::Result<()> {
    let fd = target.into_raw_fd();
    // SAFETY: `fd` is an open descriptor whose ownership we hand to libkrun (it wraps it in a
    // `File`); it is not 0/1/2 because it came from an `OwnedFd` we created. Style 2 = never
    // colour, option 1 = ignore RUST_LOG from the environment.
    let ret = unsafe { libkrun_sys::krun_init_log(fd, level as u32, 2, 1) };
    check("krun_init_log", ret)?;
    Ok(())
}

/// A loaded `libkrunfw`, kept loaded for the life of the process.
#[derive(Debug)]
pub struct Libkrunfw {
    handle: *mut c_void,
}

impl Libkrunfw {
    /// Loads `libkrunfw` from `path`, or by its SONAME through the usual loader search (the
    /// binary's RUNPATH, then the system library path). Because glibc matches an already-loaded
    /// SONAME, loading it here before [`KrunContext::new`] makes libkrun use this copy.
    pub fn load(path: Option<&Path>) -> io::Result<Self> {
        let name = match path {
            Some(p) => path_cstring("libkrunfw path", p)?,
            None => cstring("libkrunfw name", LIBKRUNFW_SONAME.as_bytes())?,
        };
        // SAFETY: `name` is a valid NUL-terminated string. Loading libkrunfw runs no
        // initialisers with preconditions (it is a data blob with two accessor functions).
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns NULL or a valid NUL-terminated string owned by libc,
            // which we copy before any other dl* call.
            let msg = unsafe {
                let e = libc::dlerror();
                if e.is_null() {
                    "unknown error".to_owned()
                } else {
                    CStr::from_ptr(e).to_string_lossy().into_owned()
                }
            };
            return Err(io::Error::new(io::ErrorKind::NotFound, msg));
        }
        Ok(Self { handle })
    }

    /// The library's version number (`krunfw_get_version`), e.g. 5.
    pub fn version(&self) -> io::Result<u32> {
        // SAFETY: `handle` is a live handle from dlopen (never closed); the symbol name is a
        // valid C string.
        let sym = unsafe { libc::dlsym(self.handle, c"krunfw_get_version".as_ptr()) };
        if sym.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "krunfw_get_version not found in libkrunfw",
            ));
        }
        // SAFETY: libkrunfw exports `int krunfw_get_version(void)`; the pointer came from dlsym
        // for that name and the library stays loaded.
        let version = unsafe {
            let f: extern "C" fn() -> i32 = std::mem::transmute(sym);
            f()
        };
        u32::try_from(version)
            .map_err(|_| io::Error::other(format!("libkrunfw reported version {version}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_returns_name_the_call() {
        let err = check("krun_set_root", -libc::ENOENT).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().starts_with("krun_set_root failed:"),
            "{err}"
        );
        assert_eq!(check("krun_create_ctx", 3).unwrap(), 3);
    }

    #[test]
    fn context_calls_succeed_and_reject_nul() {
        let ctx = KrunContext::new().unwrap();
        ctx.set_vm_config(1, 256).unwrap();
        ctx.set_root(Path::new("/")).unwrap();
        ctx.set_env(&["A=1".to_owned()]).unwrap();
        let err = ctx.set_env(&["A=\0".to_owned()]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        ctx.enable_tsi_inet_only().unwrap();
        // A second vsock is refused by libkrun: proves the call reached it.
        let err = check(
            "krun_add_vsock",
            libkrun_sys::krun_add_vsock(ctx.id, TSI_HIJACK_INET),
        );
        assert!(err.is_err());
        ctx.add_overlay_file("/dev/root", "/x.json", b"{}", 0o100444)
            .unwrap();
        assert!(
            ctx.add_overlay_file("/nope", "/x.json", b"{}", 0o100444)
                .is_err()
        );
    }
}
